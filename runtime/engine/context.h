// Inference context: one sequence's KV cache, scratch, KV-budget schedule and
// generation loop over a shared, immutable model::Model.
//
// KV budget (at most one form; none = full cache, no eviction):
//   budget_tokens  entries per (layer, KV head) on average, i.e. "tokens per
//                  head"; head- and layer-adaptive policies distribute
//                  budget_tokens * n_head_kv * n_layer entries unevenly.
//   kv_ratio       fraction of the prompt KEPT (paper style "cache size":
//                  0.2 keeps 20 %, i.e. kvpress compression_ratio 0.8). The
//                  budget is fixed at the first eval(), when the prompt length
//                  T is known: budget_tokens = floor(T * kv_ratio).
//   kv_mem_bytes   a ceiling on the KV pool's bytes; the budget is the largest
//                  number of tokens per head whose pool (see below) fits,
//                  computed from the cache's real page size (padded q8_0
//                  rows, aligned page sections, aux floats), so the pool's
//                  bytes_reserved() never exceed it.
// A budget must be >= window + n_sink (the observation window and the sinks
// are always kept), else the constructor (or, for kv_ratio, the first eval)
// throws std::invalid_argument.
//
// Schedules (eviction.md "Schedules"):
//   oneshot  the paper's: prefill the whole prompt, compress once to the
//            budget, then decode with no further eviction. Pool: n_ctx per head.
//   bounded  (default when a budget is set) chunked prefill; after each chunk
//            the cache is evicted back to the budget if it exceeds it; during
//            decoding, once the cache holds budget + decode_slack tokens per
//            head it is evicted back to the budget. The pool is sized once:
//            (budget + max(chunk, slack) + page_tokens) tokens per head, so
//            resident KV never exceeds budget + one chunk for any length.
// Without a budget the pool holds n_ctx tokens per head.
//
// Scoring for an eviction round uses the post-RoPE queries of the newest
// `window` positions (recorded by the model into a ring) and, for the
// value-weighted policies, value norms stored per entry in aux slot 0 at
// append time. With evict::Params::running_max the defensive max of earlier
// rounds is kept per entry in aux slot 1.
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

#include "runtime/evict/evict.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"

namespace defkv::engine {

// A saved state that does not fit this context (other model geometry or KV parameters).
struct StateMismatch : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule { oneshot, bounded };
const char* schedule_name(Schedule s);
bool parse_schedule(std::string_view s, Schedule* out);

struct ContextParams {
  uint32_t n_threads = 0;  // 0: OpenMP default (omp_get_max_threads)
  uint32_t n_ctx = 0;      // positions [0, n_ctx); 0: the model's context_length (2048 if unknown)

  // KV budget, at most one set (see the file comment). Signed so that a zero
  // or negative request is reported instead of wrapping.
  std::optional<int64_t> budget_tokens;
  std::optional<double> kv_ratio;
  std::optional<int64_t> kv_mem_bytes;

  quant::DType kv_type = quant::DType::f16;  // f16 | f32 | q8_0
  // Policy and its parameters. Without a budget no eviction happens whatever
  // the policy; Policy::full with a budget is rejected (it never evicts).
  evict::Params evict;
  std::optional<Schedule> schedule;  // unset: bounded when a budget is set
  // Prefill chunk (tokens per forward call). 0: bounded, a third of the
  // largest budget rounded down to a multiple of 64, between max(64,
  // 2*window) and 256 (a kv_mem budget: max(64, 2*window)); each round
  // scores a fresh window and evicts about one chunk, and resident KV stays
  // within budget + a third. Otherwise 256 (faster prefill, memory is n_ctx
  // anyway).
  uint32_t chunk_tokens = 0;
  // Bounded decoding evicts every decode_slack tokens. 0: = window, so each
  // round's observation window is exactly the tokens decoded since the last.
  uint32_t decode_slack = 0;
  uint32_t page_tokens = 16;  // KV pool page size in entries

  // ---- bounded-schedule options (defaults = the faithful schedule above) ----
  // Policy for the INTERIM eviction rounds of a prefill: every round of an
  // eval()/eval_all_logits() call except the one after its last chunk (whose
  // observation window is the tail of the fed text, e.g. the question).
  // Decoding rounds and that last round use evict.policy. Unset: evict.policy
  // everywhere. Example: defensivekv with interim_policy = criticalkv keeps
  // entries by their mean attention while the window is arbitrary context and
  // applies the worst-case (defensive) score only when it sees the prompt's
  // end (docs/eval/RESULTS.md, "Bounded schedule: interim policy"). Must be a
  // scored policy (not full/streaming); ignored by the oneshot schedule.
  std::optional<evict::Policy> interim_policy;
  // With evict.running_max: each round multiplies the stored worst case by
  // this factor before combining it with the new window's max (1: the plain
  // running max; 0 < decay < 1 lets stale maxima fade). Must be in (0, 1].
  float running_max_decay = 1.0f;
  // Bounded: score each round with every query fed since the previous round
  // (up to max(chunk, slack) of them), not only the newest `window`: the query
  // ring grows to that length and the round scores in passes of `window`
  // queries (pass k: the queries k windows back, over the entries before
  // them), combining an entry's passes by max for the defensive policies
  // (their worst case over more queries) and by mean otherwise. With the
  // default chunk = 2*window, half of a prompt's queries are otherwise never
  // observed. Costs one scoring pass per extra window per round.
  bool score_all_queries = false;
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
  // As above, stopping (StopReason::eos) at every token for which is_end is
  // true, e.g. text::Tokenizer::is_eog (EOS, EOT, <|im_end|>, ...).
  GenerateResult generate(std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                          const std::function<bool(int32_t)>& is_end,
                          const std::function<bool(int32_t)>& on_token = {});

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
  const Stats& stats() const;  // refreshes the KV byte counters

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
  void save_state(std::vector<uint8_t>& out) const;
  // Validates `data` completely, then replaces the state. Throws StateMismatch
  // when it was saved by a context with another geometry/KV parameters and
  // std::runtime_error when malformed; the context is unchanged on a throw.
  void load_state(std::span<const uint8_t> data);

 private:
  struct EvictLane;
  struct EvictRound;
  void prefill(std::span<const int32_t> tokens, float* all_logits);
  void run_batch(const int32_t* tokens, uint32_t n, float* logits, bool all, const model::ForwardHooks& hooks);
  bool over(uint64_t per_head_tokens) const;  // live entries > per_head * Hkv * L
  void evict_now(bool interim = false);
  void finish_oneshot();
  // Gathers, scores (and, unless layer-wise, selects) layer l of an eviction
  // round in `lane`; touches only lane, scores_[l], new_max_[l] and keep_[l].
  void score_round_layer(uint32_t l, EvictLane& lane, const EvictRound& round);
  void score_passes(uint32_t layer, EvictLane& lane, const EvictRound& round);
  void fix_ratio_budget(uint32_t prompt_tokens);
  void note_usage();
  // Lookahead (runtime/engine/lookahead.cpp).
  void init_lookahead();
  void probe_lookahead(std::span<const int32_t> tokens);
  void lookahead_layer(uint32_t l, EvictLane& lane, const EvictRound& round);
  // Computes the value norms of the decode tokens whose aux[0] is pending
  // (stashed values, see ForwardHooks::v_stash), batched, and writes them
  // into the cache. Logically const: the norms are what forward() would have
  // appended.
  void flush_value_norms() const;

  const model::Model& model_;
  ContextParams params_;
  uint32_t n_ctx_ = 0;
  Schedule schedule_ = Schedule::oneshot;
  bool budgeted_ = false;       // a budget was requested (eviction enabled)
  uint32_t budget_ = 0;         // tokens per head (0 until fixed for kv_ratio)
  uint32_t chunk_ = 0;
  uint32_t slack_ = 0;
  uint32_t window_ = 0;
  uint32_t ring_len_ = 0;       // query ring length: window, or more with score_all_queries
  uint32_t last_round_end_ = 0; // n_past() at the end of the last eviction round
  uint32_t n_aux_ = 0;
  bool oneshot_done_ = false;  // the oneshot round completed (a cancelled one is retried)
  uint32_t n_past_ = 0;
  uint32_t prompt_len_ = 0;     // T of the first eval (oneshot ratio budget)

  std::unique_ptr<kv::KvCache> cache_;
  std::unique_ptr<model::Workspace> ws_;
  model::ForwardHooks hooks_;
  std::vector<float> q_ring_;      // [n_layer, n_head, ring_len, head_dim]
  std::vector<int32_t> q_ring_pos_;// [ring_len]
  std::vector<int32_t> pos_buf_;   // [chunk] positions of one batch
  std::vector<float> logits_;      // [n_vocab]
  // Deferred decode value norms (bounded schedule): the f32 values of the
  // last n_pending_ decoded tokens, whose cache entries are the newest of every
  // head and carry aux[0] = NaN until flush_value_norms().
  std::vector<float> v_stash_;          // [n_layer, stash_cap_, n_head_kv * head_dim]
  mutable std::vector<float> stash_norms_;  // [stash_cap_, n_head_kv] scratch
  uint32_t stash_cap_ = 0;              // tokens; 0: norms computed per forward
  mutable uint32_t n_pending_ = 0;

  // Eviction scratch. A round scores its layers in parallel, one layer per
  // thread at a time; each thread gathers and scores in its own lane.
  struct EvictLane {
    std::vector<float> q_win;       // [n_head, window, head_dim] ordered by position
    std::vector<float> k;           // [entries of one layer, head_dim]
    std::vector<int32_t> pos;       // [entries of one layer]
    std::vector<float> aux;         // [entries of one layer, n_aux]
    std::vector<float> vnorm;       // [entries of one layer]
    std::vector<float> prev;        // [entries of one layer]
    evict::Scratch scratch;
    evict::LayerView view;
  };
  std::vector<EvictLane> lanes_;             // [n_threads]
  // What one eviction round does, fixed by evict_now() before its layers run.
  struct EvictRound {
    evict::Params ep;         // the policy of this round (interim or not)
    evict::Budget budget;
    uint32_t n_window = 0;    // window queries (min(window, n_past))
    uint32_t n_pass = 1;      // scoring passes (score_all_queries: > 1)
    bool interim = false;     // scored with interim_policy
    bool defensive = false;   // defensivekv / layer-defensivekv
    bool layerwise = false;   // one selection over all layers
    bool want_max = false;    // the running max is kept (aux[1])
    bool lookahead = false;   // interim round ranked by the stored lookahead scores
  };
  std::vector<int32_t> q_win_pos_;           // [window] this round's window positions
  std::vector<std::vector<float>> pass_scores_;   // [n_head_kv][n_h] one extra pass (score_all_queries)
  std::vector<std::vector<float>> pass_max_;      // [n_head_kv][n_h] its defensive max
  std::vector<std::vector<float>> pass_count_;    // [n_head_kv][n_h] passes combined (mean)
  evict::LayerView pass_view_;               // truncated heads of one extra pass
  std::vector<std::vector<std::vector<float>>> scores_;   // [n_layer][n_head_kv][n_h]
  std::vector<std::vector<std::vector<float>>> new_max_;  // [n_layer][n_head_kv][n_h]
  std::vector<std::vector<std::vector<uint8_t>>> keep_;   // [n_layer][n_head_kv][n_h]

  mutable Stats stats_;

  // Lookahead: before a bounded prefill that will have interim rounds, the
  // last `window` tokens of the fed text are run once at their true
  // positions over the sinks only (a scratch cache), and their queries score
  // every entry once with a fixed normaliser (evict/lookahead.h), stored in
  // aux slot la_slot_. Interim rounds rank by that score.
  bool has_vnorm_ = false;             // aux[0] holds value norms
  bool has_rmax_ = false;              // aux[1] holds the running max
  bool lookahead_ = false;             // the mechanism is on (bounded schedule)
  bool la_active_ = false;             // this prefill has probe queries
  uint32_t la_slot_ = 0;               // aux slot of the lookahead score
  int64_t la_from_ = 0;                // entries at positions >= this are (re)scored next round
  uint32_t la_n_query_ = 0;
  std::unique_ptr<kv::KvCache> la_cache_;  // sinks + probe tokens
  std::vector<float> la_ring_;         // [n_layer, n_head, window, head_dim] probe query ring
  std::vector<int32_t> la_ring_pos_;   // [window]
  std::vector<float> la_q_;            // [n_layer, n_head, n_query, head_dim] by position
  std::vector<int32_t> la_q_pos_;      // [n_query]
  std::vector<float> la_lse_;          // [n_layer, n_head, n_query]
  std::vector<int32_t> sink_tokens_;   // the first n_sink tokens of the sequence
  std::vector<int32_t> la_tok_, la_pos_;  // probe batch

  // Embedding-API support (context_state.cpp).
  void save_ring(uint32_t first_pos, uint32_t n);   // before a forward over [first_pos, first_pos + n)
  void rollback_batch(uint32_t first_pos, uint32_t n);  // undo a forward cancelled midway
  void check_cancel() const;                        // throws model::Cancelled when requested
  const std::atomic<bool>* cancel_ = nullptr;
  std::function<void(uint64_t, uint64_t)> progress_;
  std::function<void(const RoundObservation&)> observer_;
  std::vector<float> ring_save_;        // [n_layer, n_head, min(n, window), head_dim]
  std::vector<int32_t> ring_save_pos_;  // [min(n, window)]
};

}  // namespace defkv::engine
