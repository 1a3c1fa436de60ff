// Inference context: chunked prefill, decode, KV-budget schedules.
#include "runtime/engine/context.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace defkv::engine {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::invalid_argument bad(const std::string& msg) { return std::invalid_argument("context: " + msg); }

bool needs_value_norms(evict::Policy p) {
  return p == evict::Policy::criticalkv || p == evict::Policy::defensivekv ||
         p == evict::Policy::layer_defensivekv;
}
bool is_defensive(evict::Policy p) {
  return p == evict::Policy::defensivekv || p == evict::Policy::layer_defensivekv;
}

uint64_t round_up(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }

// Bytes of one KV pool page for this configuration, as the cache lays it out
// (a one-page cache is built and asked; construction time only).
uint64_t kv_page_bytes(kv::CacheConfig cc) {
  cc.capacity_entries = cc.page_tokens;
  return kv::KvCache(cc).page_bytes();
}

}  // namespace

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::oneshot: return "oneshot";
    case Schedule::bounded: return "bounded";
  }
  return "?";
}

bool parse_schedule(std::string_view s, Schedule* out) {
  if (s == "oneshot") { *out = Schedule::oneshot; return true; }
  if (s == "bounded") { *out = Schedule::bounded; return true; }
  return false;
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::n_predict: return "n_predict";
    case StopReason::eos: return "eos";
    case StopReason::callback: return "callback";
    case StopReason::context_full: return "context_full";
  }
  return "?";
}

// ----------------------------------------------------------------------------

Context::Context(const model::Model& model, const ContextParams& params) : model_(model), params_(params) {
  const model::Config& mc = model.config();
  const ContextParams& p = params_;
  const uint32_t L = mc.n_layer, Hkv = mc.n_head_kv, H = mc.n_head, d = mc.head_dim;
  const uint64_t HL = uint64_t(Hkv) * L;

  n_ctx_ = p.n_ctx ? p.n_ctx : (mc.n_ctx_train ? mc.n_ctx_train : 2048);
  if (p.kv_type != quant::DType::f16 && p.kv_type != quant::DType::f32 && p.kv_type != quant::DType::q8_0)
    throw bad(std::string("unsupported KV type ") + quant::dtype_name(p.kv_type) + " (use f16, f32 or q8_0)");
  if (p.page_tokens == 0) throw bad("page_tokens must be > 0");

  const int n_forms = int(p.budget_tokens.has_value()) + int(p.kv_ratio.has_value()) + int(p.kv_mem_bytes.has_value());
  if (n_forms > 1) throw bad("set at most one KV budget form (budget_tokens, kv_ratio or kv_mem_bytes)");
  budgeted_ = n_forms == 1;
  window_ = p.evict.window;
  const uint64_t min_budget = uint64_t(p.evict.window) + p.evict.n_sink;
  if (budgeted_) {
    if (p.evict.policy == evict::Policy::full)
      throw bad("policy 'full' never evicts; drop the KV budget or choose an eviction policy");
    if (p.evict.window == 0) throw bad("the observation window must be > 0");
    if (p.evict.kernel == 0 || p.evict.kernel % 2 == 0)
      throw bad("the pooling kernel must be odd and > 0 (got " + std::to_string(p.evict.kernel) + ")");
  }
  schedule_ = p.schedule.value_or(budgeted_ ? Schedule::bounded : Schedule::oneshot);
  const bool bounded = budgeted_ && schedule_ == Schedule::bounded;
  chunk_ = p.chunk_tokens ? p.chunk_tokens : (bounded ? std::max<uint32_t>(64, 2 * window_) : 256);
  slack_ = p.decode_slack ? p.decode_slack : std::max<uint32_t>(window_, 1);
  uint64_t over_budget = std::max(chunk_, slack_);  // tokens per head above the budget (bounded)
  // Default bounded chunk for a largest budget of b_max tokens per head: a
  // third of it in multiples of 64, between max(64, 2W) and 256 tokens. Every
  // round scores every entry, so on long prompts fewer, larger rounds cost
  // less (TinyLlama, 4k prompt, 20 %: eviction took 9.4 % of the prefill with
  // 64-token chunks); resident KV stays within budget + a third.
  const uint32_t min_chunk = chunk_;
  auto default_chunk = [&](uint64_t b_max) {
    return uint32_t(std::clamp<uint64_t>(b_max / 3 / 64 * 64, min_chunk, std::max<uint32_t>(min_chunk, 256)));
  };

  if (p.interim_policy) {
    const evict::Policy ip = *p.interim_policy;
    if (ip == evict::Policy::full || ip == evict::Policy::streaming)
      throw bad(std::string("interim_policy must be a scored policy (got ") + evict::policy_name(ip) + ")");
  }
  if (!(p.running_max_decay > 0.0f && p.running_max_decay <= 1.0f))
    throw bad("running_max_decay must be in (0, 1] (got " + std::to_string(p.running_max_decay) + ")");

  n_aux_ = 0;
  if (budgeted_ && (needs_value_norms(p.evict.policy) ||
                    (bounded && p.interim_policy && needs_value_norms(*p.interim_policy))))
    n_aux_ = 1;
  if (budgeted_ && p.evict.running_max && is_defensive(p.evict.policy)) n_aux_ = 2;
  has_vnorm_ = n_aux_ >= 1;
  has_rmax_ = n_aux_ >= 2;
  lookahead_ = bounded && p.evict.policy != evict::Policy::streaming;  // streaming scores nothing
  if (lookahead_) la_slot_ = n_aux_++;  // the entry's lookahead score
  kv::CacheConfig cc;
  cc.n_layer = L;
  cc.n_head_kv = Hkv;
  cc.head_dim = d;
  cc.type = p.kv_type;
  cc.page_tokens = p.page_tokens;
  cc.n_aux = n_aux_;

  // Budget in tokens per head.
  if (p.budget_tokens) {
    if (*p.budget_tokens <= 0)
      throw bad("the KV budget must be a positive number of tokens (got " + std::to_string(*p.budget_tokens) + ")");
    if (uint64_t(*p.budget_tokens) < min_budget)
      throw bad("a KV budget of " + std::to_string(*p.budget_tokens) + " tokens is smaller than window + sinks = " +
                std::to_string(min_budget) + " (always kept)");
    budget_ = uint32_t(std::min<int64_t>(*p.budget_tokens, n_ctx_));
  } else if (p.kv_ratio) {
    const double r = *p.kv_ratio;
    if (!(r > 0.0 && r <= 1.0))
      throw bad("kv_ratio is the fraction of the prompt kept and must be in (0, 1] (got " + std::to_string(r) + ")");
    budget_ = 0;  // fixed by the first eval()
  } else if (p.kv_mem_bytes) {
    if (*p.kv_mem_bytes <= 0)
      throw bad("kv_mem_bytes must be positive (got " + std::to_string(*p.kv_mem_bytes) + ")");
    // The pool is whole pages of the cache's own layout (rows padded to the
    // q8_0 block, each section of a page aligned), so the budget comes from
    // the real page size, not a per-entry estimate: the largest per_head
    // (below) whose round_up(per_head * HL, page) entries fit in whole pages.
    const uint64_t page_bytes = kv_page_bytes(cc);
    const uint64_t pages = uint64_t(*p.kv_mem_bytes) / page_bytes;
    const uint64_t fit = pages * p.page_tokens / HL;  // tokens per head the pages hold
    const uint64_t per_token = (page_bytes * HL + p.page_tokens - 1) / p.page_tokens;  // for the message
    int64_t b = int64_t(fit) - int64_t((bounded ? over_budget : 0) + p.page_tokens);
    if (bounded && p.chunk_tokens == 0)  // the largest b whose default chunk still fits
      for (b = int64_t(fit) - int64_t(p.page_tokens) - 1; b > 0; --b)
        if (uint64_t(b) + std::max<uint64_t>(default_chunk(uint64_t(b)), slack_) + p.page_tokens <= fit) break;
    if (b < int64_t(min_budget))
      throw bad("kv_mem_bytes " + std::to_string(*p.kv_mem_bytes) + " holds " + std::to_string(std::max<int64_t>(b, 0)) +
                " tokens per head after the chunk/slack/page reserve, below window + sinks = " +
                std::to_string(min_budget) + " (one token costs " + std::to_string(per_token) + " bytes)");
    if (!bounded && fit < uint64_t(n_ctx_) + p.page_tokens)
      throw bad("kv_mem_bytes with the oneshot schedule must hold the full n_ctx = " + std::to_string(n_ctx_) +
                " tokens per head (the paper's schedule prefills everything); use the bounded schedule");
    budget_ = uint32_t(std::min<int64_t>(b, n_ctx_));
  }

  if (bounded && p.chunk_tokens == 0) {
    chunk_ = default_chunk(p.kv_ratio ? uint64_t(std::ceil(double(n_ctx_) * *p.kv_ratio)) : budget_);
    over_budget = std::max(chunk_, slack_);
  }

  // Pool size (tokens per head), fixed for the context's lifetime.
  uint64_t per_head;
  if (bounded) {
    const uint64_t b_max = p.kv_ratio ? uint64_t(std::ceil(double(n_ctx_) * *p.kv_ratio)) : budget_;
    per_head = std::min<uint64_t>(b_max + over_budget, n_ctx_) + p.page_tokens;
  } else {
    per_head = uint64_t(n_ctx_) + p.page_tokens;
  }
  cc.capacity_entries = round_up(per_head * HL, p.page_tokens);
  cache_ = std::make_unique<kv::KvCache>(cc);
  if (p.kv_mem_bytes && cache_->bytes_reserved() > uint64_t(*p.kv_mem_bytes))
    throw std::logic_error("context: KV pool of " + std::to_string(cache_->bytes_reserved()) +
                           " bytes exceeds kv_mem_bytes " + std::to_string(*p.kv_mem_bytes) +
                           " (per-entry size estimate is off)");

  ws_ = std::make_unique<model::Workspace>(mc, chunk_, n_ctx_, p.n_threads, p.page_tokens, n_aux_);
  ws_->reserve_runs(size_t(cc.capacity_entries / p.page_tokens) + Hkv);
  pos_buf_.resize(chunk_);
  logits_.resize(mc.n_vocab);

  if (budgeted_) {
    ring_len_ = window_;
    if (bounded && p.score_all_queries)  // every query since the last round, whole windows
      ring_len_ = uint32_t(round_up(std::max<uint64_t>(over_budget, window_), window_));
    q_ring_.assign(size_t(L) * H * ring_len_ * d, 0.0f);
    q_ring_pos_.assign(ring_len_, -1);
    hooks_.q_ring = q_ring_.data();
    hooks_.q_ring_pos = q_ring_pos_.data();
    hooks_.q_ring_len = ring_len_;
    hooks_.aux_value_norm = has_vnorm_;
    // Bounded decoding defers the value norms of single tokens and computes
    // them batched before the next round (or when the stash is full): one
    // W_o pass per token for the norms alone would cost more than the rest
    // of the token's attention at long context.
    if (bounded && has_vnorm_) {
      stash_cap_ = std::min<uint32_t>(slack_, 64);
      v_stash_.assign(size_t(L) * stash_cap_ * Hkv * d, 0.0f);
      stash_norms_.assign(size_t(stash_cap_) * Hkv, 0.0f);
    }
    // Eviction scratch for an average layer; grows only for layer-adaptive
    // distributions that concentrate entries.
    const size_t layer_entries = size_t(std::min<uint64_t>(per_head * Hkv, cc.capacity_entries));
    q_win_pos_.resize(window_);
    lanes_.resize(std::max<uint32_t>(ws_->n_threads(), 1));
    for (EvictLane& lane : lanes_) {
      lane.q_win.resize(size_t(H) * window_ * d);
      lane.k.resize(layer_entries * d);
      lane.pos.resize(layer_entries);
      lane.aux.resize(layer_entries * std::max<uint32_t>(n_aux_, 1));
      lane.vnorm.resize(layer_entries);
      lane.prev.resize(layer_entries);
      lane.view.heads.resize(Hkv);
    }
    scores_.resize(L);
    new_max_.resize(L);
    if (lookahead_) init_lookahead();
    keep_.resize(L);
  }
  stats_.kv_bytes_reserved = cache_->bytes_reserved();
}

const Stats& Context::stats() const {
  stats_.kv_bytes_in_use = cache_->bytes_in_use();
  stats_.kv_bytes_reserved = cache_->bytes_reserved();
  return stats_;
}

void Context::reset() {
  cache_->clear();
  n_pending_ = 0;
  n_past_ = 0;
  last_round_end_ = 0;
  prompt_len_ = 0;
  oneshot_done_ = false;
  sink_tokens_.clear();
  la_active_ = false;
  if (params_.kv_ratio) budget_ = 0;
  std::fill(q_ring_pos_.begin(), q_ring_pos_.end(), -1);
  stats_ = Stats{};
  stats_.kv_bytes_reserved = cache_->bytes_reserved();
}

bool Context::over(uint64_t per_head_tokens) const {
  const model::Config& mc = model_.config();
  return cache_->entries() > per_head_tokens * mc.n_head_kv * mc.n_layer;
}

void Context::note_usage() {
  const size_t b = cache_->bytes_in_use();
  stats_.kv_bytes_peak = std::max(stats_.kv_bytes_peak, b);
  stats_.kv_entries_peak = std::max(stats_.kv_entries_peak, cache_->entries());
}

void Context::fix_ratio_budget(uint32_t prompt_tokens) {
  const uint64_t min_budget = uint64_t(params_.evict.window) + params_.evict.n_sink;
  const uint64_t b = uint64_t(std::floor(double(prompt_tokens) * *params_.kv_ratio));
  if (b < min_budget)
    throw bad("kv_ratio " + std::to_string(*params_.kv_ratio) + " of a " + std::to_string(prompt_tokens) +
              "-token prompt gives a budget of " + std::to_string(b) + " tokens, below window + sinks = " +
              std::to_string(min_budget));
  budget_ = uint32_t(b);
}

// The oneshot compression is due after the first prompt has been fed
// completely; if that round was cancelled (prefill() threw from evict_now),
// the next eval()/step() runs it before anything else.
void Context::finish_oneshot() {
  if (!budgeted_ || schedule_ != Schedule::oneshot || oneshot_done_) return;
  if (prompt_len_ == 0 || n_past_ < prompt_len_) return;  // the prompt is not complete yet
  if (over(budget_)) evict_now();
  oneshot_done_ = true;
}

void Context::run_batch(const int32_t* tokens, uint32_t n, float* logits, bool all,
                        const model::ForwardHooks& hooks) {
  const uint32_t first = n_past_;
  for (uint32_t i = 0; i < n; ++i) pos_buf_[i] = int32_t(first + i);
  if (hooks.cancel) save_ring(first, n);
  try {
    model_.forward(tokens, pos_buf_.data(), n, *cache_, *ws_, hooks, logits, all);
  } catch (const model::Cancelled&) {
    rollback_batch(first, n);  // cache and query ring as before this batch
    throw;
  }
  n_past_ += n;
  note_usage();
}

void Context::prefill(std::span<const int32_t> tokens, float* all_logits) {
  if (tokens.empty()) throw bad("eval: no tokens");
  if (uint64_t(n_past_) + tokens.size() > n_ctx_)
    throw std::length_error("context: " + std::to_string(tokens.size()) + " tokens at position " +
                            std::to_string(n_past_) + " exceed n_ctx = " + std::to_string(n_ctx_));
  if (budgeted_ && params_.kv_ratio && budget_ == 0) {
    fix_ratio_budget(uint32_t(tokens.size()));
    prompt_len_ = uint32_t(tokens.size());
  }
  finish_oneshot();  // a oneshot round cancelled during the previous call
  flush_value_norms();  // pending entries must stay the newest of their heads
  if (prompt_len_ == 0) prompt_len_ = uint32_t(tokens.size());
  const bool bounded = budgeted_ && schedule_ == Schedule::bounded;
  const uint64_t ceiling = uint64_t(budget_) + std::max(chunk_, slack_);
  const uint32_t V = model_.config().n_vocab;
  for (size_t i = 0; n_past_ + i < params_.evict.n_sink && i < tokens.size(); ++i)
    if (sink_tokens_.size() == n_past_ + i) sink_tokens_.push_back(tokens[i]);
  // The lookahead is for this call's interim rounds only.
  struct LaOff { bool& a; ~LaOff() { a = false; } } la_off{la_active_};
  if (bounded && lookahead_ && tokens.size() > chunk_) probe_lookahead(tokens);
  for (size_t off = 0; off < tokens.size(); off += chunk_) {
    const uint32_t n = uint32_t(std::min<size_t>(chunk_, tokens.size() - off));
    check_cancel();
    if (bounded) {
      const model::Config& mc = model_.config();
      const uint64_t HL = uint64_t(mc.n_head_kv) * mc.n_layer;
      if (cache_->entries() + uint64_t(n) * HL > ceiling * HL && over(budget_)) evict_now(true);
    }
    const bool last = off + n == tokens.size();
    float* out = all_logits ? all_logits + off * V : (last ? logits_.data() : nullptr);
    run_batch(tokens.data() + off, n, out, all_logits != nullptr, hooks_);
    if (bounded && over(budget_)) evict_now(!last);
    if (progress_) progress_(off + n, tokens.size());
  }
  if (budgeted_ && schedule_ == Schedule::oneshot && !oneshot_done_) {
    if (over(budget_)) evict_now();  // a cancel leaves oneshot_done_ false: retried by the next call
    oneshot_done_ = true;
  }
  if (all_logits) {  // keep logits() consistent with eval()
    std::memcpy(logits_.data(), all_logits + (tokens.size() - 1) * V, V * sizeof(float));
  }
}

std::span<const float> Context::eval(std::span<const int32_t> tokens) {
  const auto t0 = Clock::now();
  prefill(tokens, nullptr);
  stats_.prompt_tokens += tokens.size();
  stats_.prompt_seconds += seconds_since(t0);
  return {logits_.data(), logits_.size()};
}

void Context::eval_all_logits(std::span<const int32_t> tokens, float* logits) {
  if (!logits) throw bad("eval_all_logits: null output");
  const auto t0 = Clock::now();
  prefill(tokens, logits);
  stats_.prompt_tokens += tokens.size();
  stats_.prompt_seconds += seconds_since(t0);
}

std::span<const float> Context::step(int32_t token) {
  if (n_past_ >= n_ctx_)
    throw std::length_error("context: full (n_ctx = " + std::to_string(n_ctx_) + " positions)");
  const auto t0 = Clock::now();
  finish_oneshot();
  if (n_past_ < params_.evict.n_sink && sink_tokens_.size() == n_past_) sink_tokens_.push_back(token);
  const bool bounded = budgeted_ && schedule_ == Schedule::bounded;
  if (bounded) {
    // Safety net: after an eval() that ended between rounds there may not be
    // room for one more token within the ceiling.
    const model::Config& mc = model_.config();
    const uint64_t HL = uint64_t(mc.n_head_kv) * mc.n_layer;
    const uint64_t ceiling = uint64_t(budget_) + std::max(chunk_, slack_);
    if (cache_->entries() + HL > ceiling * HL && over(budget_)) evict_now();
  }
  if (stash_cap_ == 0) {
    run_batch(&token, 1, logits_.data(), false, hooks_);
  } else {  // the token's value norm is deferred (flush_value_norms)
    if (n_pending_ == stash_cap_) flush_value_norms();
    const size_t kv_dim = size_t(model_.config().n_head_kv) * model_.config().head_dim;
    model::ForwardHooks h = hooks_;
    h.aux_value_norm = false;
    h.v_stash = v_stash_.data() + size_t(n_pending_) * kv_dim;
    h.v_stash_layer_floats = size_t(stash_cap_) * kv_dim;
    run_batch(&token, 1, logits_.data(), false, h);
    n_pending_ += 1;
  }
  if (bounded && over(uint64_t(budget_) + slack_ - 1)) evict_now();
  stats_.decode_tokens += 1;
  stats_.decode_seconds += seconds_since(t0);
  return {logits_.data(), logits_.size()};
}

GenerateResult Context::generate(std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                                 int32_t eos, const std::function<bool(int32_t)>& on_token) {
  return generate(prompt, n_predict, sampler, [eos](int32_t t) { return eos >= 0 && t == eos; }, on_token);
}

GenerateResult Context::generate(std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                                 const std::function<bool(int32_t)>& is_end,
                                 const std::function<bool(int32_t)>& on_token) {
  GenerateResult res;
  res.tokens.reserve(n_predict);
  for (int32_t t : prompt) sampler.accept(t);
  std::span<const float> logits = eval(prompt);
  for (uint32_t i = 0; i < n_predict; ++i) {
    const int32_t tok = sampler.sample(logits);
    res.tokens.push_back(tok);
    const bool go_on = on_token ? on_token(tok) : true;
    if (is_end(tok)) { res.stop = StopReason::eos; return res; }
    if (!go_on) { res.stop = StopReason::callback; return res; }
    if (i + 1 == n_predict) break;
    if (n_past_ >= n_ctx_) { res.stop = StopReason::context_full; return res; }
    logits = step(tok);
  }
  res.stop = StopReason::n_predict;
  return res;
}

void Context::flush_value_norms() const {
  if (n_pending_ == 0) return;
  const model::Config& mc = model_.config();
  const uint32_t Hkv = mc.n_head_kv, n = n_pending_;
  const size_t layer_floats = size_t(stash_cap_) * Hkv * mc.head_dim;
  float* norms = stash_norms_.data();  // [n, Hkv]
  for (uint32_t l = 0; l < mc.n_layer; ++l) {
    model_.value_norms(l, v_stash_.data() + l * layer_floats, n, norms, *ws_);
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const uint32_t size = cache_->size(l, hk);
      if (size < n) throw std::logic_error("context: fewer entries than pending value norms");
      for (uint32_t i = 0; i < n; ++i) {
        float* a = cache_->aux(l, hk, size - n + i);
        if (!std::isnan(a[0])) throw std::logic_error("context: pending value norm already set");
        a[0] = norms[size_t(i) * Hkv + hk];
      }
    }
  }
  n_pending_ = 0;
}

}  // namespace defkv::engine
