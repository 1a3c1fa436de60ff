// Quality evaluation of KV-cache policies on top of runtime/engine:
// teacher-forced perplexity, KL divergence to the full cache (the paper's
// one-shot "quality loss" protocol), needle-in-a-haystack retrieval, and the
// aggregation behind `defkv eval sweep` (summary table, needle grid).
//
// Pure library: no printing, no exit(); errors are std::invalid_argument
// (bad options, texts too short) or std::runtime_error (files, JSONL), with
// messages naming the problem. Progress is reported through a callback.
//
// Window protocol (kld), with T = prefix_tokens, C = cont_tokens,
// S = stride_tokens and the text tokenized ONCE (BOS first, BOS then dropped
// so `text` below holds only the N text tokens):
//   window i = [BOS] + text[i*S, i*S + T+C-1)        (T+C tokens)
//   windows while they fit: i*S + T+C-1 <= N, i.e.
//   n_windows = N >= T+C-1 ? (N - (T+C-1)) / S + 1 : 0.
//   Run: reset; eval(window[0, T)) (the schedule's evictions happen here:
//   oneshot compresses once after the prefill, bounded evicts chunk by
//   chunk); then eval_all_logits(window[T, T+C)) with that cache (the new
//   tokens are kept; bounded may still evict between chunks of C). The C
//   rows of logits are the C "predictions" of the window: row j is the
//   next-token distribution after token window[T+j].
//   KL is per prediction  KL(P_full || P_policy) = sum_v p_full(v) (log
//   p_full(v) - log p_policy(v)), computed in double from the two logit rows;
//   mean and 99th percentile over all C * n_windows predictions; top1 is the
//   fraction of predictions whose argmax agrees (ties: lowest index).
//   The C-1 rows with an in-window target (row j predicts window[T+j+1])
//   also give perplexities of both runs over the same targets.
//
// Perplexity protocol (ppl), with L = ctx_tokens and P = prefix_tokens:
//   window k = [BOS] + text[k*(L-1), k*(L-1) + L-1), non-overlapping; the
//   last window may be shorter (it is used if it has more than P+1 tokens).
//   P = 0: eval_all_logits(window) (the bounded schedule evicts as it goes);
//          targets window[1..n).
//   P > 0: eval(window[0, P)) (oneshot compresses here), then
//          eval_all_logits(window[P, n)); targets window[P+1..n), i.e. only
//          predictions made after the compression point are scored.
//   ppl = exp(mean NLL) over all targets of all windows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <istream>
#include <span>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"

namespace defkv::eval {

// done, total (units depend on the caller: windows, tasks).
using Progress = std::function<void(size_t done, size_t total)>;

// ---------------------------------------------------------------------------
// Metrics over logit rows (n_vocab floats each), computed in double.

// -log softmax(logits)[target].
double nll(std::span<const float> logits, int32_t target);
// KL(P || Q) with P = softmax(p_logits), Q = softmax(q_logits). Identical
// rows give exactly 0; tiny negative round-off is clamped to 0.
double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits);
// q-quantile (q in [0, 1]) with linear interpolation between order
// statistics (numpy's default): x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] - x[floor(h)]),
// h = q * (n - 1). Throws on an empty input.
double quantile(std::vector<double> values, double q);

// ---------------------------------------------------------------------------
// Text.

// Reads a whole text file; throws std::runtime_error when it cannot be read
// or is empty.
std::string read_text_file(const std::string& path);
// Tokenizes with BOS first (the model's add_bos is ignored: BOS is always
// put first) and returns the text tokens WITHOUT the BOS. Throws when the
// text yields no tokens.
std::vector<int32_t> tokenize_text(const text::Tokenizer& tok, std::string_view text);

// ---------------------------------------------------------------------------
// KL divergence to the full cache (one-shot protocol, see the file comment).

struct WindowSpec {
  uint32_t prefix_tokens = 0;  // T: prefilled (and compressed) tokens, BOS included
  uint32_t cont_tokens = 0;    // C: teacher-forced tokens scored
  uint32_t stride_tokens = 0;  // S: text offset between windows
  size_t max_windows = 0;      // 0: all that fit
  uint32_t window_tokens() const { return prefix_tokens + cont_tokens; }  // T + C (BOS included)
};

// Validates the spec (T >= 1, C >= 1, S >= 1) and returns how many windows
// fit in n_text tokens (capped by max_windows). Throws std::invalid_argument
// naming the sizes when none fits.
size_t count_windows(size_t n_text, const WindowSpec& spec);
// Window i: out = [bos] + text[i*S, i*S + T+C-1).
void build_window(std::span<const int32_t> text, int32_t bos, const WindowSpec& spec, size_t i,
                  std::vector<int32_t>& out);

// reset(); eval(window[0, prefix)); eval_all_logits(window[prefix, n)) into
// cont_logits [n - prefix, n_vocab].
void teacher_force(engine::Context& ctx, std::span<const int32_t> window, uint32_t prefix_tokens,
                   float* cont_logits);

// Full-cache logits of every window: [n_windows, C, n_vocab]. `base` gives
// threads, KV type and page size; its budget and policy are ignored (no
// eviction); n_ctx is set to T + C.
std::vector<float> kld_reference(const model::Model& model, std::span<const int32_t> text, int32_t bos,
                                 const WindowSpec& spec, const engine::ContextParams& base,
                                 const Progress& progress = {});

struct KldResult {
  size_t windows = 0;
  uint64_t predictions = 0;   // C * windows
  double mean_kl = 0;         // nats
  double p99_kl = 0;
  double max_kl = 0;
  double top1 = 0;            // argmax agreement with the full cache, in [0, 1]
  uint64_t scored_targets = 0;  // (C-1) * windows
  double ppl_full = 0;        // over the in-window targets of the continuation
  double ppl_policy = 0;
  uint32_t budget_tokens = 0;   // the context's effective budget after the last window (0: none)
  uint64_t kv_entries = 0;      // live entries (all layers, heads) at the end of the last window
  std::vector<double> per_token_kl;  // [windows * C] in window order
};

// Runs every window under `params` (n_ctx set to T + C) and compares with
// `reference` (from kld_reference with the same text and spec).
KldResult kld(const model::Model& model, std::span<const int32_t> text, int32_t bos, const WindowSpec& spec,
              const engine::ContextParams& params, std::span<const float> reference,
              const Progress& progress = {});

// Accumulates per-prediction comparisons (exposed for tests and tools).
class KldAccumulator {
 public:
  explicit KldAccumulator(uint32_t n_vocab) : n_vocab_(n_vocab) {}
  // One prediction: reference row and policy row [n_vocab]; target < 0: no
  // target (only KL and top-1).
  void add(const float* ref_logits, const float* policy_logits, int32_t target);
  // windows: stored as is in the result.
  KldResult finish(size_t windows) const;

 private:
  uint32_t n_vocab_;
  std::vector<double> kl_;
  uint64_t agree_ = 0;
  uint64_t n_targets_ = 0;
  double nll_ref_ = 0, nll_pol_ = 0;
};

// ---------------------------------------------------------------------------
// Perplexity (see the file comment).

struct PplSpec {
  uint32_t ctx_tokens = 0;     // L: window length, BOS included (>= 2)
  uint32_t prefix_tokens = 0;  // P: 0, or the compression point (oneshot needs P > 0)
  size_t max_windows = 0;      // 0: all
};

struct PplResult {
  size_t windows = 0;
  uint64_t targets = 0;
  double mean_nll = 0;  // nats per token
  double ppl = 0;       // exp(mean_nll)
  uint32_t budget_tokens = 0;
  uint64_t kv_entries = 0;  // live entries at the end of the last window
};

// Window k's [start, end) in the text tokens for spec (exposed for tests).
struct TextRange { size_t begin = 0, end = 0; };
std::vector<TextRange> ppl_windows(size_t n_text, const PplSpec& spec);

// params.n_ctx is set to ctx_tokens.
PplResult perplexity(const model::Model& model, std::span<const int32_t> text, int32_t bos, const PplSpec& spec,
                     const engine::ContextParams& params, const Progress& progress = {});

// ---------------------------------------------------------------------------
// Needle in a haystack (task format: ../shared/models/needle/README.md).

struct NeedleTask {
  std::string prompt;
  std::string answer;            // expected greedy continuation prefix, e.g. " 02694"
  uint32_t n_ctx_tokens = 0;     // prompt length with BOS as llama.cpp sees it
  uint32_t target_len = 0;       // requested haystack length (the grid's length axis)
  double needle_depth = 0;       // relative depth of the queried needle in [0, 1]
  uint32_t n_needles = 0;
  int64_t seed = 0;
  int64_t needle_token_pos = -1; // first token of the queried needle sentence (-1: unknown)
  size_t line = 0;               // 1-based line in the JSONL file
};

// One JSON object per non-blank line with at least "prompt" (string),
// "answer" (non-empty string), "n_ctx_tokens", "target_len" (positive
// integers) and "needle_depth" (number in [0, 1]); "n_needles" and "seed"
// and "needle_token_pos" are optional. Throws std::runtime_error "<name>:<line>: ..." on malformed
// JSON, missing/mistyped fields, or a file without tasks.
std::vector<NeedleTask> parse_needle_tasks(std::istream& in, const std::string& name);
std::vector<NeedleTask> load_needle_tasks(const std::string& path);

struct NeedleOutcome {
  bool correct = false;
  std::string output;            // greedy continuation (decoded, leading space kept)
  uint32_t prompt_tokens = 0;    // as tokenized here (BOS included)
  uint64_t kv_entries = 0;       // live entries after the prompt (post compression)
  // Fraction of the queried needle's answer-digit entries (digit tokens x
  // layers x KV heads) still in the cache after the prompt; -1 when the
  // digits could not be located (no needle_token_pos, or not found after it).
  double needle_retained = -1;
  std::vector<double> needle_retained_per_layer;  // [n_layer] same share per layer (empty: not located)
};

// Greedy retrieval: reset; generate(prompt, n_predict) with argmax; correct
// when the decoded continuation starts with task.answer.
NeedleOutcome run_needle_task(engine::Context& ctx, const text::Tokenizer& tok, const NeedleTask& task,
                              uint32_t n_predict);

// Depth bins of width 1/n_bins (depth 1.0 goes in the last bin).
uint32_t depth_bin(double depth, uint32_t n_bins);

struct NeedleCell { uint32_t correct = 0, total = 0; };
struct NeedleGrid {
  std::vector<uint32_t> lengths;              // sorted distinct target_len
  uint32_t n_depth_bins = 0;
  std::vector<std::vector<NeedleCell>> cells; // [depth_bin][length index]
  NeedleCell all;
};
NeedleGrid needle_grid(const std::vector<NeedleTask>& tasks, const std::vector<NeedleOutcome>& outcomes,
                       uint32_t n_depth_bins);

// Runs all tasks in one context (n_ctx = longest prompt + n_predict unless
// params.n_ctx is larger).
std::vector<NeedleOutcome> run_needle(const model::Model& model, const text::Tokenizer& tok,
                                      const std::vector<NeedleTask>& tasks, const engine::ContextParams& params,
                                      uint32_t n_predict, const Progress& progress = {});

// ---------------------------------------------------------------------------
// Summary: quality loss relative to the full cache.

// Baselines are every policy other than full, defensivekv and
// layer-defensivekv. For one (schedule, budget) cell: the strongest baseline
// is the one with the smallest loss; ratio = its loss / the defensive
// policy's loss (0 loss with a nonzero baseline: +inf; both 0: NaN).
struct LossRow {
  std::string policy;
  double loss = 0;
};
struct LossSummary {
  std::string strongest_baseline;  // empty when no baseline is present
  double baseline_loss = 0;
  double ratio_defensivekv = 0;        // NaN when defensivekv is absent
  double ratio_layer_defensivekv = 0;  // NaN when layer-defensivekv is absent
};
LossSummary summarize_losses(const std::vector<LossRow>& rows);
bool is_baseline(std::string_view policy);

}  // namespace defkv::eval
