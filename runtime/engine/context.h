// Inference context: one sequence's KV cache and its schedule over a shared,
// immutable model::Model. The pieces, each in its own file:
//   params.h / plan.h   parameters, their validation, and the sizes they
//                       resolve to (a pure function of model config + params)
//   recorder.h          the layer observer forward() calls: the query window
//                       and the entries' value norms eviction needs
//   evict_round.h       one eviction round (gather, score, select, retain)
//   generate.h          the generation loop (sampling + decode steps)
//   context.cpp         the schedule: chunked prefill, decode steps, when a
//                       round runs (docs/eviction.md, "Schedules")
//   context_state.cpp   cancellation rollback and state save/restore
//
// Memory: everything (KV pool, model scratch, query ring, logits) is
// allocated at construction; eviction scratch is reserved for the average
// layer and grows only if a layer-adaptive policy concentrates more entries
// in one layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/engine/evict_round.h"
#include "runtime/engine/params.h"
#include "runtime/engine/plan.h"
#include "runtime/engine/recorder.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"

namespace defkv::engine {

// A saved state that does not fit this context (other model geometry or KV parameters).
struct StateMismatch : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The model produced a NaN or an infinity among the logits of `position`
// (weights that overflow, or hold NaN/Inf). The batch that produced it is
// rolled back: the context is as it was before that batch (earlier chunks of
// a prompt stay), with no logits to sample from.
struct NumericError : std::runtime_error {
  NumericError(const std::string& what, uint32_t pos) : std::runtime_error(what), position(pos) {}
  uint32_t position;
};

struct Stats {
  uint64_t prompt_tokens = 0;
  double prompt_seconds = 0;     // eval() time, eviction included
  uint64_t decode_tokens = 0;
  double decode_seconds = 0;     // step() time, eviction included
  uint32_t evict_rounds = 0;
  double evict_seconds = 0;      // gather + scoring + selection + retain
  size_t kv_bytes_reserved = 0;  // KV pool, allocated once
  size_t kv_bytes_in_use = 0;    // pages holding live entries now
  size_t kv_bytes_peak = 0;      // max of kv_bytes_in_use seen after any append
  uint64_t kv_entries_peak = 0;  // max live entries (all layers and heads)
  double prompt_tok_per_s() const { return prompt_seconds > 0 ? double(prompt_tokens) / prompt_seconds : 0; }
  double decode_tok_per_s() const { return decode_seconds > 0 ? double(decode_tokens) / decode_seconds : 0; }
};

class Context {
 public:
  // Validates the parameters (plan_context: std::invalid_argument with a
  // clear message) and allocates everything. The model must outlive the
  // context.
  Context(const model::Model& model, const ContextParams& params);
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Feeds tokens at positions n_past() .. (chunked prefill, with the
  // schedule's evictions). Returns the logits after the last token
  // [n_vocab], valid until the next call. Throws std::length_error when the
  // tokens would go beyond n_ctx (nothing is evaluated then).
  std::span<const float> eval(std::span<const int32_t> tokens);
  // Like eval() but writes the logits of every token: logits [n, n_vocab].
  void eval_all_logits(std::span<const int32_t> tokens, float* logits);
  // One decode step. Returns logits [n_vocab].
  std::span<const float> step(int32_t token);

  // Empties the cache; the next eval() starts at position 0 (a kv_ratio
  // budget is recomputed from the next prompt).
  void reset();

  uint32_t n_past() const { return n_past_; }
  uint32_t n_ctx() const { return plan_.n_ctx; }
  uint32_t n_vocab() const { return model_.config().n_vocab; }
  // Effective budget in tokens per head; 0 when there is none (full cache) or
  // when a kv_ratio budget is not yet fixed.
  uint32_t budget_tokens() const { return budget_; }
  bool has_budget() const { return plan_.budgeted; }
  Schedule schedule() const { return plan_.schedule; }
  uint32_t chunk_tokens() const { return plan_.chunk; }
  uint32_t decode_slack() const { return plan_.slack; }
  const ContextParams& params() const { return params_; }
  const Plan& plan() const { return plan_; }
  const model::Model& model() const { return model_; }
  // Read-only view of the cache, for introspection (sizes, positions, bytes).
  const kv::KvCache& cache() const { return *cache_; }
  // The last prefill's lookahead probe (lookahead.h), null when the plan has
  // none; introspection.
  const Lookahead* lookahead() const { return lookahead_.get(); }
  Stats stats() const;  // with the KV byte counters of now
  // The logits of the last evaluated token [n_vocab] (as eval()/step() returned).
  std::span<const float> logits() const { return {logits_.data(), logits_.size()}; }

  // ---- embedding-API support (runtime/engine/context_state.cpp) ----
  // Cancellation: once *flag is true, eval()/step() stop at the next check
  // (between prefill chunks, between layers of a forward pass and of an
  // eviction round) and throw model::Cancelled. The batch being evaluated is
  // rolled back (cache, query ring and n_past() as before it); chunks and
  // eviction rounds already done are kept, so the context stays usable.
  // Null disables. The flag must outlive the context (or be reset to null).
  void set_cancel_flag(const std::atomic<bool>* flag);
  // Throws model::Cancelled when the flag is set.
  void check_cancel() const;
  // Called after each prefill chunk with (tokens done, tokens total) of the
  // running eval(); may throw (e.g. model::Cancelled) to stop it.
  void set_progress(std::function<void(uint64_t done, uint64_t total)> fn);
  // Diagnosis hook, called for every layer of every eviction round
  // (evict_round.h); with an observer a round scores its layers on one
  // thread, with the same result. Not called when unset (no cost).
  using RoundObservation = engine::RoundObservation;
  void set_round_observer(RoundObserver fn);
  // Appends the conversation state: counters, budget, query ring, logits and
  // every cache entry as stored (rows, original position, aux) per head.
  // Pending value norms are computed first (a state holds none).
  void save_state(std::vector<uint8_t>& out);
  // Validates `data` completely, then replaces the state. Throws StateMismatch
  // when it was saved by a context with another geometry/KV parameters and
  // std::runtime_error when malformed; the context is unchanged on a throw.
  void load_state(std::span<const uint8_t> data);

 private:
  void prefill(std::span<const int32_t> tokens, float* all_logits);
  // One forward() over n tokens at n_past(); defer: a decode token whose
  // value norm may wait in the recorder's stash.
  void run_batch(const int32_t* tokens, uint32_t n, float* logits, bool all, bool defer);
  bool over(uint64_t per_head_tokens) const;  // budgeted entries > per_head * Hkv * (budgeted layers)
  // Sliding-window layers (window_layers.cpp): entries of the other layers,
  // and dropping what no later query of a windowed layer can see.
  uint64_t budgeted_entries() const;
  void trim_windows();
  std::vector<uint8_t> trim_keep_;  // keep mask of one windowed head
  // Bounded: a round first if n more tokens would pass the ceiling.
  void make_room(uint32_t n_tokens, bool interim);
  void evict_now(bool interim = false);
  void finish_oneshot();
  void note_usage();
  // Computes the value norms the recorder holds pending, into the cache.
  void flush_value_norms() { recorder_->flush(*cache_); }
  void rollback_batch(uint32_t first_pos, uint32_t n);  // undo a forward cancelled midway

  const model::Model& model_;
  const ContextParams params_;
  const Plan plan_;
  uint32_t budget_ = 0;         // tokens per head (0 until fixed for kv_ratio)
  uint32_t n_past_ = 0;
  uint32_t prompt_len_ = 0;     // T of the first eval (oneshot ratio budget)
  bool oneshot_done_ = false;   // the oneshot round completed (a cancelled one is retried)

  std::unique_ptr<kv::KvCache> cache_;
  std::unique_ptr<model::Workspace> ws_;
  std::unique_ptr<LayerRecorder> recorder_;  // the layer observer (recorder.h)
  std::unique_ptr<EvictRound> round_;        // null without a budget
  std::unique_ptr<Lookahead> lookahead_;     // bounded with a scored policy (lookahead.h)
  std::vector<int32_t> pos_buf_;   // [chunk] positions of one batch
  std::vector<float> logits_;      // [n_vocab]
  Stats stats_;

  const std::atomic<bool>* cancel_ = nullptr;
  std::function<void(uint64_t, uint64_t)> progress_;
  RoundObserver observer_;
};

}  // namespace defkv::engine
