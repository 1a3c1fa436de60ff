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

}  // namespace

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

Context::Context(const model::Model& model, const ContextParams& params)
    : model_(model), params_(params), plan_(plan_context(model.config(), params)) {
  const model::Config& mc = model.config();
  const ContextParams& p = params_;
  const uint32_t L = mc.n_layer, Hkv = mc.n_head_kv, H = mc.n_head, d = mc.head_dim;
  n_ctx_ = plan_.n_ctx;
  schedule_ = plan_.schedule;
  budgeted_ = plan_.budgeted;
  budget_ = plan_.budget;
  chunk_ = plan_.chunk;
  slack_ = plan_.slack;
  window_ = plan_.window;
  n_aux_ = plan_.n_aux;
  const bool bounded = plan_.bounded;
  const kv::CacheConfig& cc = plan_.cache;
  cache_ = std::make_unique<kv::KvCache>(cc);
  if (p.kv_mem_bytes && cache_->bytes_reserved() > uint64_t(*p.kv_mem_bytes))
    throw std::logic_error("context: KV pool of " + std::to_string(cache_->bytes_reserved()) +
                           " bytes exceeds kv_mem_bytes " + std::to_string(*p.kv_mem_bytes) +
                           " (per-entry size estimate is off)");

  ws_ = std::make_unique<model::Workspace>(mc, chunk_, n_ctx_, p.n_threads, p.page_tokens, n_aux_);
  ws_->reserve_runs(size_t(cc.capacity_entries / p.page_tokens) + Hkv);
  pos_buf_.resize(chunk_);
  logits_.resize(mc.n_vocab);

  // Bounded decoding defers the value norms of single tokens and computes
  // them batched before the next round (or when the stash is full): one W_o
  // pass per token for the norms alone would cost more than the rest of the
  // token's attention at long context. 64 tokens bound the stash's memory.
  const uint32_t stash = bounded ? std::min<uint32_t>(slack_, 64) : 0;
  recorder_ = std::make_unique<LayerRecorder>(model, budgeted_ ? window_ : 0, n_aux_ > kAuxValueNorm, stash, chunk_,
                                              ws_->n_threads());
  if (budgeted_) {
    // Eviction scratch for an average layer; grows only for layer-adaptive
    // distributions that concentrate entries.
    const size_t layer_entries = size_t(cc.capacity_entries / L);
    q_win_pos_.resize(window_);
    lanes_.resize(std::max<uint32_t>(ws_->n_threads(), 1));
    for (EvictLane& lane : lanes_) {
      lane.q_win.resize(size_t(H) * window_ * d);
      lane.k.resize(layer_entries * d);
      lane.pos.resize(layer_entries);
      lane.aux.resize(layer_entries * std::max<uint32_t>(n_aux_, 1));
      lane.vnorm.resize(layer_entries);
      lane.view.heads.resize(Hkv);
    }
    scores_.resize(L);
    keep_.resize(L);
  }
  stats_.kv_bytes_reserved = cache_->bytes_reserved();
}

Stats Context::stats() const {
  Stats s = stats_;
  s.kv_bytes_in_use = cache_->bytes_in_use();
  s.kv_bytes_reserved = cache_->bytes_reserved();
  return s;
}

void Context::reset() {
  cache_->clear();
  recorder_->clear();
  n_past_ = 0;
  prompt_len_ = 0;
  oneshot_done_ = false;
  if (params_.kv_ratio) budget_ = 0;
  stats_ = Stats{};
  stats_.kv_bytes_reserved = cache_->bytes_reserved();
}

// Bounded: the pool holds budget + max(chunk, slack) tokens per head (the
// ceiling). A batch of n tokens that would go past it is preceded by a round.
void Context::make_room(uint32_t n_tokens, bool interim) {
  if (!plan_.bounded) return;
  const model::Config& mc = model_.config();
  const uint64_t HL = uint64_t(mc.n_head_kv) * mc.n_layer;
  const uint64_t ceiling = uint64_t(budget_) + std::max(chunk_, slack_);
  if (cache_->entries() + uint64_t(n_tokens) * HL > ceiling * HL && over(budget_)) evict_now(interim);
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

// The oneshot compression is due after the first prompt has been fed
// completely; if that round was cancelled (prefill() threw from evict_now),
// the next eval()/step() runs it before anything else.
void Context::finish_oneshot() {
  if (!budgeted_ || schedule_ != Schedule::oneshot || oneshot_done_) return;
  if (prompt_len_ == 0 || n_past_ < prompt_len_) return;  // the prompt is not complete yet
  if (over(budget_)) evict_now();
  oneshot_done_ = true;
}

void Context::run_batch(const int32_t* tokens, uint32_t n, float* logits, bool all, bool defer) {
  const uint32_t first = n_past_;
  for (uint32_t i = 0; i < n; ++i) pos_buf_[i] = int32_t(first + i);
  model::ForwardHooks hooks;
  hooks.observer = budgeted_ ? recorder_.get() : nullptr;
  hooks.cancel = cancel_;
  recorder_->defer_next(defer);
  if (cancel_) recorder_->save_ring(first, n);
  try {
    model_.forward(tokens, pos_buf_.data(), n, *cache_, *ws_, hooks, logits, all);
  } catch (const model::Cancelled&) {
    rollback_batch(first, n);  // cache and query ring as before this batch
    throw;
  }
  recorder_->commit_batch();
  n_past_ += n;
  note_usage();
}

void Context::prefill(std::span<const int32_t> tokens, float* all_logits) {
  if (tokens.empty()) throw bad("eval: no tokens");
  if (uint64_t(n_past_) + tokens.size() > n_ctx_)
    throw std::length_error("context: " + std::to_string(tokens.size()) + " tokens at position " +
                            std::to_string(n_past_) + " exceed n_ctx = " + std::to_string(n_ctx_));
  if (budgeted_ && params_.kv_ratio && budget_ == 0) {
    budget_ = ratio_budget(params_, uint32_t(tokens.size()));
    prompt_len_ = uint32_t(tokens.size());
  }
  finish_oneshot();  // a oneshot round cancelled during the previous call
  flush_value_norms();  // pending entries must stay the newest of their heads
  if (prompt_len_ == 0) prompt_len_ = uint32_t(tokens.size());
  const bool bounded = plan_.bounded;
  const uint32_t V = model_.config().n_vocab;
  for (size_t off = 0; off < tokens.size(); off += chunk_) {
    const uint32_t n = uint32_t(std::min<size_t>(chunk_, tokens.size() - off));
    check_cancel();
    make_room(n, /*interim=*/true);
    const bool last = off + n == tokens.size();
    float* out = all_logits ? all_logits + off * V : (last ? logits_.data() : nullptr);
    run_batch(tokens.data() + off, n, out, all_logits != nullptr, /*defer=*/false);
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
  const bool bounded = plan_.bounded;
  make_room(1, /*interim=*/false);  // an eval() may have ended between rounds
  if (recorder_->stash_full()) flush_value_norms();
  run_batch(&token, 1, logits_.data(), false, /*defer=*/true);  // the norm may wait (recorder.h)
  if (bounded && over(uint64_t(budget_) + slack_ - 1)) evict_now();
  stats_.decode_tokens += 1;
  stats_.decode_seconds += seconds_since(t0);
  return {logits_.data(), logits_.size()};
}

GenerateResult Context::generate(std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                                 int32_t eos, const std::function<bool(int32_t)>& on_token) {
  GenerateResult res;
  res.tokens.reserve(n_predict);
  for (int32_t t : prompt) sampler.accept(t);
  std::span<const float> logits = eval(prompt);
  for (uint32_t i = 0; i < n_predict; ++i) {
    const int32_t tok = sampler.sample(logits);
    res.tokens.push_back(tok);
    const bool go_on = on_token ? on_token(tok) : true;
    if (eos >= 0 && tok == eos) { res.stop = StopReason::eos; return res; }
    if (!go_on) { res.stop = StopReason::callback; return res; }
    if (i + 1 == n_predict) break;
    if (n_past_ >= n_ctx_) { res.stop = StopReason::context_full; return res; }
    logits = step(tok);
  }
  res.stop = StopReason::n_predict;
  return res;
}

}  // namespace defkv::engine
