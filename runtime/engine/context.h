// Inference context: one sequence's KV cache, scratch, KV-budget schedule and
// generation loop over a shared, immutable model::Model.
//
// Parameters, budgets and schedules: runtime/engine/params.h; how they are
// resolved into sizes: runtime/engine/plan.h.
//
// Scoring for an eviction round uses the post-RoPE queries of the newest
// `window` positions and, for the value-weighted policies, value norms stored
// per entry in aux slot kAuxValueNorm; the engine's layer observer records
// both during forward() (recorder.h).
//
// Memory: everything (KV pool, model scratch, ring, logits) is allocated at
// construction; eviction scratch is reserved for the average layer and grows
// only if a layer-adaptive policy concentrates more entries in one layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "runtime/engine/params.h"
#include "runtime/engine/plan.h"
#include "runtime/engine/recorder.h"
#include "runtime/evict/evict.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"

namespace defkv::engine {

// A saved state that does not fit this context (other model geometry or KV parameters).
struct StateMismatch : std::runtime_error {
  using std::runtime_error::runtime_error;
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

enum class StopReason { n_predict, eos, callback, context_full };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated tokens (the prompt excluded; EOS included if sampled)
  StopReason stop = StopReason::n_predict;
};

class Context {
 public:
  // Validates the parameters (std::invalid_argument with a clear message) and
  // allocates everything. The model must outlive the context.
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

  // eval(prompt), then up to n_predict sampled tokens. on_token (may be
  // empty) sees each token as it is sampled; returning false stops. Stops at
  // `eos` (>= 0) after reporting it, and when the context is full. The prompt
  // tokens are fed to the sampler's repetition history.
  GenerateResult generate(std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                          int32_t eos, const std::function<bool(int32_t)>& on_token = {});

  // Empties the cache; the next eval() starts at position 0 (a kv_ratio
  // budget is recomputed from the next prompt).
  void reset();

  uint32_t n_past() const { return n_past_; }
  uint32_t n_ctx() const { return n_ctx_; }
  uint32_t n_vocab() const { return model_.config().n_vocab; }
  // Effective budget in tokens per head; 0 when there is none (full cache) or
  // when a kv_ratio budget is not yet fixed.
  uint32_t budget_tokens() const { return budget_; }
  bool has_budget() const { return budgeted_; }
  Schedule schedule() const { return schedule_; }
  uint32_t chunk_tokens() const { return chunk_; }
  uint32_t decode_slack() const { return slack_; }
  const ContextParams& params() const { return params_; }
  const model::Model& model() const { return model_; }
  // Read-only view of the cache, for introspection (sizes, positions, bytes).
  const kv::KvCache& cache() const { return *cache_; }
  Stats stats() const;  // with the KV byte counters of now

  // ---- embedding-API support (runtime/engine/context_state.cpp) ----
  // Cancellation: once *flag is true, eval()/step() stop at the next check
  // (between prefill chunks, between layers of a forward pass and of an
  // eviction round) and throw model::Cancelled. The batch being evaluated is
  // rolled back (cache, query ring and n_past() as before it); chunks and
  // eviction rounds already done are kept, so the context stays usable.
  // Null disables. The flag must outlive the context (or be reset to null).
  void set_cancel_flag(const std::atomic<bool>* flag);
  // Called after each prefill chunk with (tokens done, tokens total) of the
  // running eval(); may throw (e.g. model::Cancelled) to stop it.
  void set_progress(std::function<void(uint64_t done, uint64_t total)> fn);
  // Diagnosis hook: called for every layer of every eviction round right after
  // that layer is scored (before selection/retain), in layer order: with an
  // observer set, a round scores its layers on one thread (otherwise they run
  // in parallel, with the same result). The pointers are valid only during
  // the call. Not called when unset (no cost).
  struct RoundObservation {
    uint32_t round = 0;          // stats().evict_rounds before this round
    uint32_t layer = 0;
    bool interim = false;        // scored with ContextParams::interim_policy
    evict::Policy policy = evict::Policy::full;  // the policy that scored it
    const evict::LayerView* view = nullptr;      // heads' positions and keys
    const std::vector<std::vector<float>>* scores = nullptr;  // [n_head_kv][n_h]
  };
  void set_round_observer(std::function<void(const RoundObservation&)> fn);
  // The logits of the last evaluated token [n_vocab] (as eval()/step() returned).
  std::span<const float> logits() const { return {logits_.data(), logits_.size()}; }
  // Appends the conversation state: counters, budget, query ring, logits and
  // every cache entry as stored (rows, original position, aux) per head.
  // Pending value norms are computed first (a state holds none).
  void save_state(std::vector<uint8_t>& out);
  // Validates `data` completely, then replaces the state. Throws StateMismatch
  // when it was saved by a context with another geometry/KV parameters and
  // std::runtime_error when malformed; the context is unchanged on a throw.
  void load_state(std::span<const uint8_t> data);

 private:
  struct EvictLane;
  struct EvictRound;
  void prefill(std::span<const int32_t> tokens, float* all_logits);
  // One forward() over n tokens at n_past(); defer: a decode token whose
  // value norm may wait in the recorder's stash.
  void run_batch(const int32_t* tokens, uint32_t n, float* logits, bool all, bool defer);
  bool over(uint64_t per_head_tokens) const;  // live entries > per_head * Hkv * L
  void make_room(uint32_t n_tokens, bool interim);
  void evict_now(bool interim = false);
  void finish_oneshot();
  // Gathers, scores (and, unless layer-wise, selects) layer l of an eviction
  // round in `lane`; touches only lane, scores_[l] and keep_[l].
  void score_round_layer(uint32_t l, EvictLane& lane, const EvictRound& round);
  void note_usage();
  // Computes the value norms the recorder holds pending, into the cache.
  void flush_value_norms() { recorder_->flush(*cache_); }

  const model::Model& model_;
  ContextParams params_;
  Plan plan_;
  uint32_t n_ctx_ = 0;
  Schedule schedule_ = Schedule::oneshot;
  bool budgeted_ = false;       // a budget was requested (eviction enabled)
  uint32_t budget_ = 0;         // tokens per head (0 until fixed for kv_ratio)
  uint32_t chunk_ = 0;
  uint32_t slack_ = 0;
  uint32_t window_ = 0;
  uint32_t n_aux_ = 0;
  bool oneshot_done_ = false;  // the oneshot round completed (a cancelled one is retried)
  uint32_t n_past_ = 0;
  uint32_t prompt_len_ = 0;     // T of the first eval (oneshot ratio budget)

  std::unique_ptr<kv::KvCache> cache_;
  std::unique_ptr<model::Workspace> ws_;
  // The layer observer: query window and value norms (recorder.h).
  std::unique_ptr<LayerRecorder> recorder_;
  std::vector<int32_t> pos_buf_;   // [chunk] positions of one batch
  std::vector<float> logits_;      // [n_vocab]

  // Eviction scratch. A round scores its layers in parallel, one layer per
  // thread at a time; each thread gathers and scores in its own lane.
  struct EvictLane {
    std::vector<float> q_win;       // [n_head, window, head_dim] ordered by position
    std::vector<float> k;           // [entries of one layer, head_dim]
    std::vector<int32_t> pos;       // [entries of one layer]
    std::vector<float> aux;         // [entries of one layer, n_aux]
    std::vector<float> vnorm;       // [entries of one layer]
    evict::Scratch scratch;
    evict::LayerView view;
  };
  std::vector<EvictLane> lanes_;             // [n_threads]
  // What one eviction round does, fixed by evict_now() before its layers run.
  struct EvictRound {
    evict::Params ep;         // the policy of this round (interim or not)
    evict::Budget budget;
    uint32_t n_window = 0;    // window queries (min(window, n_past))
    bool interim = false;     // scored with interim_policy
    bool layerwise = false;   // one selection over all layers
  };
  std::vector<int32_t> q_win_pos_;           // [window] this round's window positions
  std::vector<std::vector<std::vector<float>>> scores_;   // [n_layer][n_head_kv][n_h]
  std::vector<std::vector<std::vector<uint8_t>>> keep_;   // [n_layer][n_head_kv][n_h]

  Stats stats_;

  // Embedding-API support (context_state.cpp).
  void rollback_batch(uint32_t first_pos, uint32_t n);  // undo a forward cancelled midway
  void check_cancel() const;                        // throws model::Cancelled when requested
  const std::atomic<bool>* cancel_ = nullptr;
  std::function<void(uint64_t, uint64_t)> progress_;
  std::function<void(const RoundObservation&)> observer_;
};

}  // namespace defkv::engine
