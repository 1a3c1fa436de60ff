// Eviction policy: decides which KV entries to keep. Pure functions over
// views of the cache; knows nothing of the model or of cache storage.
// Specification: docs/eviction.md (the algorithm, with the reference's parameters).
//
// Heads may hold different numbers of entries (head-wise budgets) and layers
// may differ (layer-wise budgets). Within a head, entries are in ascending
// position order. The observation window is the W newest positions; those
// entries are present in every head and always kept.
//
// ---------------------------------------------------------------------------
// How to call it (per eviction round):
//
//   evict::Scratch scratch;                       // reuse: no allocation after warm-up
//   evict::Budget b = evict::oneshot_budget(T, r, n_head_kv, n_layer);   // or
//   evict::Budget b = evict::entries_budget(budget_tokens, n_head_kv, n_layer);
//   std::vector<std::vector<float>> scores;       // [n_head_kv][n_h]
//   std::vector<std::vector<uint8_t>> keep;       // [n_head_kv][n_h], 1 = keep
//   evict::score_layer(view, params, b, scratch, scores);
//   evict::select_keep(params, b, view.n_window, scores, scratch, keep);
//
// For Policy::layer_defensivekv score every layer first, then call
// select_keep_layers() once with all layers' scores ([n_layer][n_head_kv][n_h]);
// it also accepts every other policy (then it selects layer by layer).
//
// Which scorer each policy uses (docs/eviction.md steps 1-4):
//   full, streaming     no scoring (scores are sized and zero-filled)
//   snapkv, adakv       SnapKV mean aggregation
//   criticalkv          SnapKV mean aggregation * value-norm weight + stage 1
//   defensivekv,        defensive aggregation (pool+rescale, max over group and
//   layer_defensivekv   window, mean floor) * value-norm weight + stage 1
// In every scored policy the n_window newest entries of each head get the
// layer's maximum score.
//
// Budgets (struct Budget, all in entries, i.e. (token, KV head) pairs):
//   per_head   snapkv: each head keeps its top per_head; adakv: safeguard base
//              (each head first keeps its top int(per_head * ada_floor)
//              non-window entries); streaming: entries kept per head.
//   per_layer  adakv / criticalkv / defensivekv: one top-per_layer over all
//              heads of the layer.
//   total      layer_defensivekv: one top-total over all heads of all layers.
//   keep_ratio (1 - r) used by the CriticalKV stage-1 cap.
// With equal-length heads of T entries, oneshot_budget(T, r, ...) gives the
// reference's numbers exactly: per_head = int(T(1-r)), per_layer =
// int(T(1-r) Hkv), total = per_layer * L (what the test vectors use; the
// kvpress code computes int(T(1-r) Hkv L), which can differ by a few entries),
// keep_ratio = 1 - r.
//
// Generalisation to heads of different lengths n_h (bounded schedule):
//   - budgets stay in entries: entries_budget(B, Hkv, L) gives per_head = B,
//     per_layer = B*Hkv, total = B*Hkv*L (B = budget in entries per head on
//     average) and keep_ratio = -1, meaning "derive per head":
//     keep_ratio_h = min(1, B / n_h).
//   - stage-1 cap of head h: max(0, trunc((n_h - W) * keep_ratio_h - W)),
//     i.e. the paper's int((T-W)(1-r)) - W with the head's own n_h and
//     r = 1 - B/n_h (= B*(n_h-W)/n_h - W: about the budget minus two windows).
//   - the adakv safeguard forces int(B * ada_floor) non-window entries per
//     head (fewer if the head holds fewer).
//   - window: the n_window newest entries of every head are always kept, so
//     the effective budgets are at least n_window per head (per_head),
//     n_window*Hkv per layer, n_window*Hkv*L in total. A head with n_h <=
//     per_head (snapkv) keeps everything; a layer whose entries all fit in
//     per_layer keeps everything.
//   - defensive mean floor: the sum of a head's worst-case scores over its
//     N_h = n_h - W resident non-window entries, divided by
//     max(N_h, n_seen - W) when the view says how many positions the
//     sequence has seen (LayerView::n_seen): the evicted entries count as 0
//     (they scored lowest, and their attention cannot be computed any more),
//     so a round over survivors + a new chunk floors at one shot's level
//     instead of at the mean of the high scorers. With nothing evicted the
//     two denominators are equal (the one-shot rule).
//   - pooling runs along a head's entries in cache order (neighbours are the
//     nearest surviving entries, not positions +-2); value-norm weights are
//     normalised over the heads that hold the same position (matched by pos).
//   - streaming keeps per head the first min(n_sink, per_head) entries and the
//     most recent per_head - that; it does NOT force the window (StreamingLLM
//     semantics), so pass per_head >= n_sink + W if the window must survive.
//
// Numerics: logits as one f32 product per KV group ([G*W, d] x [n, d]^T,
// window_logits below: single-threaded, allocation-free after warm-up); the
// window softmax, pooling, defensive rescale + max, mean aggregation, mean
// floor and value-norm weighting are simd kernel-table entries (per ISA, with
// scalar references; DEFKV_FORCE_SCALAR=1 runs the references). On the test vectors every
// intermediate agrees with the numpy reference within 1e-5 relative (attention
// weights below 1e-6 within 1e-11 absolute: their relative error is the f32
// rounding of the logits) and every keep mask exactly. Selection is linear:
// std::nth_element on a copy of the scores to find the cut value, then one
// pass (ties at the cut are broken towards the lower entry index,
// deterministically); no sort. Stage 1 needs its cumulative sum in sorted
// order: nth_element picks the top `cap`, then only the prefix the sum walks
// through is ordered, in doubling chunks (O(n + cap log(count) + count log
// count) for `count` marked entries).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace defkv::evict {

enum class Policy { full, streaming, snapkv, adakv, criticalkv, defensivekv, layer_defensivekv };

// One row per policy (runtime/evict/policy.cpp): the single table of names
// and of what callers need to know about a policy.
struct PolicyTraits {
  Policy policy;
  const char* name;  // "full", ..., "layer-defensivekv" (CLI and report spelling)
  bool scored;       // window-attention scores (not full / streaming)
  bool value_norms;  // weights scores by each entry's value-projection norm (KV aux slot)
  bool defensive;    // defensive aggregation (worst case + mean floor) instead of SnapKV's mean
  bool layer_wise;   // one selection over all layers (select_keep_layers)
};
std::span<const PolicyTraits> policies();  // every policy, in enum order
const PolicyTraits& traits(Policy p);
const char* policy_name(Policy p);  // traits(p).name
// Accepts the table's names and "layer_defensivekv". False if unknown.
bool parse_policy(std::string_view s, Policy* out);

struct Params {
  Policy policy = Policy::defensivekv;
  uint32_t window = 32;        // W: observation window (queries), always kept
  uint32_t kernel = 5;         // k: avg-pooling kernel
  uint32_t n_sink = 4;         // streaming: first tokens always kept
  float critical_mass = 0.9f;  // CriticalKV stage 1
  float ada_floor = 0.2f;      // AdaKV per-head safeguard fraction
};

// One KV head's live entries (f32 copies), ascending positions.
struct HeadView {
  uint32_t n = 0;
  const float* k = nullptr;       // [n, head_dim] post-RoPE keys
  const int32_t* pos = nullptr;   // [n] absolute positions
  const float* vnorm = nullptr;   // [n] value-projection L1 norm, mean over the group
                                  // (docs/eviction.md step 3, before normalisation); may be
                                  // null for policies that do not use it
};

// One layer's scoring input.
struct LayerView {
  uint32_t n_head = 0, n_head_kv = 0, head_dim = 0;
  uint32_t n_window = 0;            // W actually available (<= Params::window)
  const float* q_window = nullptr;  // [n_head, n_window, head_dim] post-RoPE
  const int32_t* q_pos = nullptr;   // [n_window] positions of those queries
  std::vector<HeadView> heads;      // [n_head_kv]
  // Positions the sequence has seen (fed so far), evicted ones included; set
  // by the caller that knows the sequence (the engine: n_past). The defensive
  // mean floor divides by the non-window positions seen, max(N_h, n_seen - W),
  // so evicted entries count as 0 (see the header comment). 0: the heads hold
  // every position seen (nothing evicted), and the floor divides by N_h.
  uint32_t n_seen = 0;
};

// Budgets in entries; see the header comment.
struct Budget {
  uint32_t per_head = 0;    // entries per KV head
  uint64_t per_layer = 0;   // entries per layer (head-adaptive policies)
  uint64_t total = 0;       // entries over all layers (layer_defensivekv)
  double keep_ratio = -1;   // 1 - r for the stage-1 cap; < 0: min(1, per_head / n_h)
};
// The reference's one-shot budgets for T tokens per head and ratio r in [0, 1).
Budget oneshot_budget(uint32_t n_tokens, double compression_ratio, uint32_t n_head_kv,
                      uint32_t n_layer);
// Budgets from a per-head average in entries (bounded schedule).
Budget entries_budget(uint32_t budget_per_head, uint32_t n_head_kv, uint32_t n_layer);

// Reusable buffers. Contents are private to this layer; keep one per thread
// and pass it to every call so buffers only grow during warm-up.
struct Scratch {
  std::vector<float> pooled;   // [n_max] (aggregation)
  std::vector<std::vector<float>> mean, maxv, ave, denom;  // [Hkv][n_h]
  std::vector<float> flat;     // selection candidates
  std::vector<uint32_t> idx;   // stage-1 / selection indices
  std::vector<uint32_t> ptr;   // [Hkv] merge cursors
  // score_layer's window attention runs one KV head per OpenMP thread, each
  // with its own buffers (one thread when called inside a parallel region).
  struct Thread {
    std::vector<float> logits;  // [W, n_max] logits / attention of one query head
    std::vector<float> pooled;  // [n_max]
    std::vector<float> acc;     // [n_max] per-query-head window sum
    std::vector<float> panels;  // window_logits: packed keys [ceil(n/16)][d][16]
  };
  std::vector<Thread> threads;
  std::vector<double> mass;    // [Hkv] window attention mass per KV head
};

// Window logits out[r, j] = q[r, :] . k[j, :] (no 1/sqrt(d) scaling).
// q: [m, d], k: [n, d], out: [m, ldo] (ldo >= n). Single-threaded, by
// simd::k().window_logits (register-blocked per ISA, summed along d in
// order); panels is scratch (grows to simd::window_logits_scratch(n, d) =
// ceil(n/16)*16*d floats, then reused: no allocation).
void window_logits(const float* q, uint32_t m, const float* k, uint32_t n, uint32_t d, float* out,
                   size_t ldo, std::vector<float>& panels);
// Scalar reference of window_logits (same summation order).
void window_logits_ref(const float* q, uint32_t m, const float* k, uint32_t n, uint32_t d,
                       float* out, size_t ldo);

// Intermediates of one score_layer call (filled only when requested; costs a
// copy of the attention). Shapes per KV head use that head's N_h = n_h - W.
struct Introspection {
  std::vector<std::vector<float>> window_attn;  // [n_head][n_window * N_{h/G}] step 1
  float window_bias = 0;                        // mean over h, i of mass on the window
  std::vector<std::vector<float>> snapkv;       // [Hkv][N_h] SnapKV mean aggregation
  std::vector<std::vector<float>> defensive;    // [Hkv][N_h] defensive aggregation
  std::vector<std::vector<float>> vnorm_weight; // [Hkv][N_h] w = n / sum over heads
  std::vector<uint32_t> critical_count;         // [Hkv] stage-1 count (after the cap)
  std::vector<std::vector<float>> final_scores; // [Hkv][n_h] same as the output
};

// Scores one layer for params.policy (see the header comment). scores is
// resized to [n_head_kv][n_h] (capacity reused). Throws std::invalid_argument
// on inconsistent views (window larger than a head, mismatched window
// positions, group size not integral, missing vnorm for criticalkv /
// defensivekv, a head holding more entries than n_seen positions).
void score_layer(const LayerView& view, const Params& params, const Budget& budget,
                 Scratch& scratch, std::vector<std::vector<float>>& scores,
                 Introspection* debug = nullptr);
// Convenience: budget = entries_budget(budget_per_head, n_head_kv, 1).
void score_layer(const LayerView& view, const Params& params, uint32_t budget_per_head,
                 Scratch& scratch, std::vector<std::vector<float>>& scores);

// Keep masks for one layer. scores: [n_head_kv][n_h] from score_layer (for
// full / streaming only the sizes matter). keep is resized to match, 1 = keep.
// layer_defensivekv on a single layer selects with budget.per_layer.
void select_keep(const Params& params, const Budget& budget, uint32_t n_window,
                 const std::vector<std::vector<float>>& scores, Scratch& scratch,
                 std::vector<std::vector<uint8_t>>& keep);
// Keep masks for all layers: scores [n_layer][n_head_kv][n_h]. For
// layer_defensivekv one top-budget.total over everything; other policies select
// each layer on its own.
void select_keep_layers(const Params& params, const Budget& budget, uint32_t n_window,
                        const std::vector<std::vector<std::vector<float>>>& scores,
                        Scratch& scratch,
                        std::vector<std::vector<std::vector<uint8_t>>>& keep);

}  // namespace defkv::evict
