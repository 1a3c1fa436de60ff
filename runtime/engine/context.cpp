// The schedule (docs/eviction.md, "Schedules"): chunked prefill, decode
// steps, and when an eviction round runs. What a round does is
// evict_round.cpp; what forward() records for it is recorder.cpp.
#include "runtime/engine/context.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

namespace defkv::engine {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Index of the first NaN or infinity in x[0, n), else n. Reads the exponent
// bits, so it holds under any floating-point flags; one pass over the logits
// costs a few microseconds against a forward pass of milliseconds.
size_t first_non_finite(const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, sizeof b);
    if ((b & 0x7f800000u) == 0x7f800000u) return i;
  }
  return n;
}

}  // namespace

Context::Context(const model::Model& model, const ContextParams& params)
    : model_(model), params_(params), plan_(plan_context(model.config(), params)), budget_(plan_.budget) {
  const model::Config& mc = model.config();
  const kv::CacheConfig& cc = plan_.cache;
  // The pool is written in full at creation: one larger than memory would
  // get the process killed rather than fail, so it is refused here.
  // So are the RoPE tables (cos and sin for every position).
  const uint64_t kv_bytes = kv::KvCache::pool_bytes(cc), mem = usable_memory_bytes();
  const uint64_t rope_bytes = 2ull * plan_.n_ctx * (mc.n_rot / 2) * sizeof(float);
  const std::string sizes = "(n_ctx = " + std::to_string(plan_.n_ctx) + ": KV pool of " + std::to_string(kv_bytes) +
                            " bytes for " + std::to_string(cc.capacity_entries) + " entries of " +
                            std::to_string(mc.n_layer) + " layers x " + std::to_string(mc.n_head_kv) +
                            " KV heads, RoPE tables of " + std::to_string(rope_bytes) + " bytes)";
  const uint64_t need = kv_bytes + rope_bytes;
  if (mem && (need > mem || kv_bytes == UINT64_MAX))
    throw ResourceError("context: needs " + std::to_string(need) + " bytes " + sizes + ", more than the " +
                        std::to_string(mem) + " bytes of memory here; lower n_ctx (or set a KV budget)");
  try {
    cache_ = std::make_unique<kv::KvCache>(cc);
  } catch (const std::bad_alloc&) {
    throw ResourceError("context: allocating " + std::to_string(need) + " bytes " + sizes +
                        " failed; lower n_ctx (or set a KV budget)");
  }
  if (params_.kv_mem_bytes && cache_->bytes_reserved() > uint64_t(*params_.kv_mem_bytes))
    throw std::logic_error("context: KV pool of " + std::to_string(cache_->bytes_reserved()) +
                           " bytes exceeds kv_mem_bytes " + std::to_string(*params_.kv_mem_bytes) +
                           " (per-entry size estimate is off)");
  try {
    ws_ = std::make_unique<model::Workspace>(mc, plan_.chunk, plan_.n_ctx, params_.n_threads, cc.page_tokens,
                                             plan_.n_aux);
  } catch (const std::bad_alloc&) {
    throw ResourceError("context: allocating the model's scratch for batches of " + std::to_string(plan_.chunk) +
                        " tokens " + sizes + " failed; lower the prefill chunk or n_ctx");
  }
  ws_->reserve_runs(size_t(cc.capacity_entries / cc.page_tokens) + mc.n_head_kv);
  pos_buf_.resize(plan_.chunk);
  logits_.resize(mc.n_vocab);
  // Bounded decoding defers the value norms of single tokens and computes
  // them batched before the next round (or when the stash is full): one W_o
  // pass per token for the norms alone would cost more than the rest of the
  // token's attention at long context. 64 tokens bound the stash's memory.
  const uint32_t stash = plan_.bounded ? std::min<uint32_t>(plan_.slack, 64) : 0;
  recorder_ = std::make_unique<LayerRecorder>(model, plan_.budgeted ? plan_.window : 0, plan_.value_norms,
                                              stash, plan_.chunk, ws_->n_threads());
  if (plan_.evict_layers.size() < mc.n_layer) trim_keep_.resize(size_t(cc.capacity_entries));
  if (plan_.budgeted)
    round_ = std::make_unique<EvictRound>(mc, plan_.window, plan_.n_aux, plan_.value_norms, ws_->n_threads(),
                                          size_t(cc.capacity_entries / mc.n_layer));
  if (plan_.lookahead)
    lookahead_ = std::make_unique<Lookahead>(model, params_.evict, cc.page_tokens, plan_.chunk, ws_->n_threads());
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
  if (lookahead_) lookahead_->clear();
  n_past_ = 0;
  prompt_len_ = 0;
  oneshot_done_ = false;
  if (params_.kv_ratio) budget_ = 0;
  stats_ = Stats{};
  stats_.kv_bytes_reserved = cache_->bytes_reserved();
}

// ---------------------------------------------------------------------------
// Prefill and decode

std::span<const float> Context::eval(std::span<const int32_t> tokens) {
  const auto t0 = Clock::now();
  prefill(tokens, nullptr);
  stats_.prompt_tokens += tokens.size();
  stats_.prompt_seconds += seconds_since(t0);
  return {logits_.data(), logits_.size()};
}

void Context::eval_all_logits(std::span<const int32_t> tokens, float* logits) {
  if (!logits) throw std::invalid_argument("context: eval_all_logits: null output");
  const auto t0 = Clock::now();
  prefill(tokens, logits);
  stats_.prompt_tokens += tokens.size();
  stats_.prompt_seconds += seconds_since(t0);
}

// Chunks of plan_.chunk tokens. Bounded: a round after every chunk that left
// the cache over budget (an interim round unless it was the last chunk).
// Oneshot: one round once the first prompt is complete.
void Context::prefill(std::span<const int32_t> tokens, float* all_logits) {
  if (tokens.empty()) throw std::invalid_argument("context: eval: no tokens");
  if (uint64_t(n_past_) + tokens.size() > plan_.n_ctx)
    throw std::length_error("context: " + std::to_string(tokens.size()) + " tokens at position " +
                            std::to_string(n_past_) + " exceed n_ctx = " + std::to_string(plan_.n_ctx));
  if (plan_.budgeted && params_.kv_ratio && budget_ == 0) {
    budget_ = ratio_budget(params_, uint32_t(tokens.size()));
    prompt_len_ = uint32_t(tokens.size());
  }
  finish_oneshot();     // a oneshot round cancelled during the previous call
  flush_value_norms();  // pending entries must stay the newest of their heads
  if (prompt_len_ == 0) prompt_len_ = uint32_t(tokens.size());
  // A prefill with interim rounds probes its tail first; the lookahead
  // serves this call's interim rounds only.
  struct Deactivate {
    Lookahead* la;
    ~Deactivate() { if (la) la->deactivate(); }
  } deactivate{lookahead_.get()};
  if (lookahead_) {
    lookahead_->note_tokens(n_past_, tokens);
    if (tokens.size() > plan_.chunk) lookahead_->probe(*ws_, n_past_, tokens, cancel_);
  }
  const uint32_t V = model_.config().n_vocab, chunk = plan_.chunk;
  for (size_t off = 0; off < tokens.size(); off += chunk) {
    const uint32_t n = uint32_t(std::min<size_t>(chunk, tokens.size() - off));
    check_cancel();
    make_room(n, /*interim=*/true);
    const bool last = off + n == tokens.size();
    float* out = all_logits ? all_logits + off * V : (last ? logits_.data() : nullptr);
    run_batch(tokens.data() + off, n, out, all_logits != nullptr, /*defer=*/false);
    if (plan_.bounded && over(budget_)) evict_now(/*interim=*/!last);
    if (progress_) progress_(off + n, tokens.size());
  }
  finish_oneshot();
  if (all_logits)  // keep logits() consistent with eval()
    std::memcpy(logits_.data(), all_logits + (tokens.size() - 1) * V, V * sizeof(float));
}

// One token. Bounded: a round once the cache holds budget + slack tokens per
// head, so each decode round's window is the tokens decoded since the last.
std::span<const float> Context::step(int32_t token) {
  if (n_past_ >= plan_.n_ctx)
    throw std::length_error("context: full (n_ctx = " + std::to_string(plan_.n_ctx) + " positions)");
  const auto t0 = Clock::now();
  finish_oneshot();
  if (lookahead_) lookahead_->note_tokens(n_past_, {&token, 1});
  make_room(1, /*interim=*/false);  // an eval() may have ended between rounds
  if (recorder_->stash_full()) flush_value_norms();
  run_batch(&token, 1, logits_.data(), false, /*defer=*/true);  // the norm may wait (recorder.h)
  if (plan_.bounded && over(uint64_t(budget_) + plan_.slack - 1)) evict_now();
  stats_.decode_tokens += 1;
  stats_.decode_seconds += seconds_since(t0);
  return {logits_.data(), logits_.size()};
}

void Context::run_batch(const int32_t* tokens, uint32_t n, float* logits, bool all, bool defer) {
  const uint32_t first = n_past_;
  for (uint32_t i = 0; i < n; ++i) pos_buf_[i] = int32_t(first + i);
  model::ForwardHooks hooks;
  hooks.observer = plan_.budgeted ? recorder_.get() : nullptr;
  hooks.cancel = cancel_;
  recorder_->defer_next(defer);
  recorder_->save_ring(first, n);
  try {
    model_.forward(tokens, pos_buf_.data(), n, *cache_, *ws_, hooks, logits, all);
  } catch (const model::Cancelled&) {
    rollback_batch(first, n);  // cache and query ring as before this batch
    throw;
  }
  if (logits) {  // rows: every token's (all) or the last token's
    const size_t V = model_.config().n_vocab, rows = all ? n : 1;
    for (size_t r = 0; r < rows; ++r) {
      const float* row = logits + r * V;
      const size_t i = first_non_finite(row, V);
      if (i == V) continue;
      const uint32_t pos = first + uint32_t(all ? r : n - 1);
      rollback_batch(first, n);
      throw NumericError("non-finite logits (" + std::string(row[i] != row[i] ? "NaN" : "Inf") + " for token id " +
                             std::to_string(i) + ") at position " + std::to_string(pos) + " (input token " +
                             std::to_string(tokens[pos - first]) +
                             "): the model's weights hold or produce NaN/Inf; the batch was not kept",
                         pos);
    }
  }
  recorder_->commit_batch();
  n_past_ += n;
  trim_windows();
  note_usage();
}

// ---------------------------------------------------------------------------
// When a round runs

bool Context::over(uint64_t per_head_tokens) const {
  const model::Config& mc = model_.config();
  return budgeted_entries() > per_head_tokens * mc.n_head_kv * plan_.evict_layers.size();
}

// Bounded: the pool holds budget + max(chunk, slack) tokens per head (the
// ceiling, plan.h). A batch of n tokens that would go past it is preceded by
// a round.
void Context::make_room(uint32_t n_tokens, bool interim) {
  if (!plan_.bounded) return;
  const model::Config& mc = model_.config();
  const uint64_t HL = uint64_t(mc.n_head_kv) * plan_.evict_layers.size();
  const uint64_t ceiling = uint64_t(budget_) + std::max(plan_.chunk, plan_.slack);
  if (budgeted_entries() + uint64_t(n_tokens) * HL > ceiling * HL && over(budget_)) evict_now(interim);
}

// The oneshot compression is due once the first prompt has been fed
// completely; if that round was cancelled, the next eval()/step() runs it
// before anything else.
void Context::finish_oneshot() {
  if (!plan_.budgeted || plan_.schedule != Schedule::oneshot || oneshot_done_) return;
  if (prompt_len_ == 0 || n_past_ < prompt_len_) return;  // the prompt is not complete yet
  if (over(budget_)) evict_now();  // a cancel leaves oneshot_done_ false
  oneshot_done_ = true;
}

void Context::evict_now(bool interim) {
  const auto t0 = Clock::now();
  flush_value_norms();
  const model::Config& mc = model_.config();
  RoundSpec spec;
  // Interim prefill rounds rank by the prefill's lookahead when it has one.
  if (interim && lookahead_ && lookahead_->active()) spec.lookahead = lookahead_.get();
  spec.params = params_.evict;
  spec.n_past = n_past_;
  spec.n_window = std::min<uint32_t>(plan_.window, n_past_);
  spec.index = stats_.evict_rounds;
  const uint32_t n_evict = uint32_t(plan_.evict_layers.size());  // windowed layers are outside the budget
  spec.budget = plan_.schedule == Schedule::oneshot && params_.kv_ratio
                    ? evict::oneshot_budget(prompt_len_, 1.0 - *params_.kv_ratio, mc.n_head_kv, n_evict)
                    : evict::entries_budget(budget_, mc.n_head_kv, n_evict);
  spec.layers = &plan_.evict_layers;
  round_->run(*cache_, *recorder_, spec, [this] { check_cancel(); }, observer_);
  if (spec.lookahead) lookahead_->scored_until(n_past_);
  stats_.evict_rounds += 1;
  stats_.evict_seconds += seconds_since(t0);
}

void Context::note_usage() {
  stats_.kv_bytes_peak = std::max(stats_.kv_bytes_peak, cache_->bytes_in_use());
  stats_.kv_entries_peak = std::max(stats_.kv_entries_peak, cache_->entries());
}

}  // namespace defkv::engine
