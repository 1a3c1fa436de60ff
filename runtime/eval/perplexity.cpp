// Teacher-forced perplexity with the cache policy active during the forward pass.
#include <cmath>
#include <stdexcept>
#include <string>

#include "runtime/eval/eval.h"

namespace defkv::eval {

std::vector<TextRange> ppl_windows(size_t n_text, const PplSpec& spec) {
  if (spec.ctx_tokens < 2) throw std::invalid_argument("ppl: the window (--ctx) must hold at least 2 tokens");
  if (spec.prefix_tokens + 1 >= spec.ctx_tokens)
    throw std::invalid_argument("ppl: the prefix (" + std::to_string(spec.prefix_tokens) +
                                ") leaves nothing to score in a " + std::to_string(spec.ctx_tokens) +
                                "-token window");
  const size_t step = spec.ctx_tokens - 1;  // text tokens per window (BOS added)
  // A window of n tokens (BOS included) scores n - 1 - P targets: it needs
  // at least P + 1 text tokens.
  const size_t min_text = size_t(spec.prefix_tokens) + 1;
  std::vector<TextRange> out;
  for (size_t b = 0; b < n_text; b += step) {
    const size_t e = std::min(n_text, b + step);
    if (e - b < min_text) break;
    out.push_back({b, e});
    if (spec.max_windows && out.size() == spec.max_windows) break;
  }
  if (out.empty())
    throw std::invalid_argument("ppl: the text has " + std::to_string(n_text) + " tokens, too short to score " +
                                "anything after a prefix of " + std::to_string(spec.prefix_tokens) +
                                " tokens (needs at least " + std::to_string(min_text) + ")");
  return out;
}

PplResult perplexity(const model::Model& model, std::span<const int32_t> text, int32_t bos, const PplSpec& spec,
                     const engine::ContextParams& params, const Progress& progress) {
  const std::vector<TextRange> wins = ppl_windows(text.size(), spec);
  const bool budgeted = params.budget_tokens || params.kv_ratio || params.kv_mem_bytes;
  if (budgeted && params.schedule == engine::Schedule::oneshot && spec.prefix_tokens == 0)
    throw std::invalid_argument("ppl: the oneshot schedule compresses after a prefix; set --prefix N > 0");
  engine::ContextParams p = params;
  p.n_ctx = spec.ctx_tokens;
  engine::Context ctx(model, p);
  const size_t V = ctx.n_vocab();
  std::vector<float> logits(size_t(spec.ctx_tokens) * V);
  std::vector<int32_t> win;
  PplResult res;
  double sum = 0;
  for (size_t k = 0; k < wins.size(); ++k) {
    win.assign(1, bos);
    win.insert(win.end(), text.begin() + ptrdiff_t(wins[k].begin), text.begin() + ptrdiff_t(wins[k].end));
    const size_t P = spec.prefix_tokens;
    ctx.reset();
    if (P == 0) {
      ctx.eval_all_logits(win, logits.data());
    } else {
      ctx.eval(std::span<const int32_t>(win).first(P));
      ctx.eval_all_logits(std::span<const int32_t>(win).subspan(P), logits.data());
    }
    // Row r is the prediction after win[P + r]; score targets win[t], t >= max(P, 0) + 1.
    const size_t first = P;
    for (size_t t = first + 1; t < win.size(); ++t) {
      sum += nll(std::span<const float>(logits.data() + (t - 1 - first) * V, V), win[t]);
      ++res.targets;
    }
    res.kv_entries = ctx.cache().entries();
    if (progress) progress(k + 1, wins.size());
  }
  res.windows = wins.size();
  res.mean_nll = sum / double(res.targets);
  res.ppl = std::exp(res.mean_nll);
  res.budget_tokens = ctx.budget_tokens();
  return res;
}

}  // namespace defkv::eval
