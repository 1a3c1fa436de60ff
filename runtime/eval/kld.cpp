// One-shot KL protocol: windows, teacher forcing, comparison with the full cache.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "runtime/eval/eval.h"
#include "runtime/text/sampler.h"

namespace defkv::eval {

size_t count_windows(size_t n_text, const WindowSpec& spec) {
  if (spec.prefix_tokens < 1) throw std::invalid_argument("kld: the prefix must hold at least 1 token (BOS)");
  if (spec.cont_tokens < 1) throw std::invalid_argument("kld: the continuation must hold at least 1 token");
  if (spec.stride_tokens < 1) throw std::invalid_argument("kld: the stride must be at least 1 token");
  const size_t need = size_t(spec.prefix_tokens) + spec.cont_tokens - 1;  // text tokens per window
  if (n_text < need)
    throw std::invalid_argument("kld: the text has " + std::to_string(n_text) + " tokens but one window needs " +
                                std::to_string(need) + " (prefix " + std::to_string(spec.prefix_tokens) +
                                " + cont " + std::to_string(spec.cont_tokens) +
                                " - 1, BOS added); use a longer text or a smaller --prefix/--cont");
  size_t n = (n_text - need) / spec.stride_tokens + 1;
  if (spec.max_windows) n = std::min(n, spec.max_windows);
  return n;
}

void build_window(std::span<const int32_t> text, int32_t bos, const WindowSpec& spec, size_t i,
                  std::vector<int32_t>& out) {
  const size_t need = size_t(spec.prefix_tokens) + spec.cont_tokens - 1;
  const size_t off = i * spec.stride_tokens;
  if (off + need > text.size())
    throw std::out_of_range("kld: window " + std::to_string(i) + " does not fit in " + std::to_string(text.size()) +
                            " text tokens");
  out.clear();
  out.push_back(bos);
  out.insert(out.end(), text.begin() + ptrdiff_t(off), text.begin() + ptrdiff_t(off + need));
}

void teacher_force(engine::Context& ctx, std::span<const int32_t> window, uint32_t prefix_tokens,
                   float* cont_logits) {
  if (prefix_tokens < 1 || prefix_tokens >= window.size())
    throw std::invalid_argument("teacher_force: the prefix (" + std::to_string(prefix_tokens) +
                                ") must be in [1, window length " + std::to_string(window.size()) + ")");
  ctx.reset();
  ctx.eval(window.first(prefix_tokens));
  ctx.eval_all_logits(window.subspan(prefix_tokens), cont_logits);
}

namespace {

engine::ContextParams with_ctx(engine::ContextParams p, uint32_t n_ctx) {
  p.n_ctx = n_ctx;
  return p;
}

}  // namespace

std::vector<float> kld_reference(const model::Model& model, std::span<const int32_t> text, int32_t bos,
                                 const WindowSpec& spec, const engine::ContextParams& base,
                                 const Progress& progress) {
  const size_t nw = count_windows(text.size(), spec);
  engine::ContextParams p = with_ctx(base, spec.window_tokens());
  p.budget_tokens.reset();
  p.kv_ratio.reset();
  p.kv_mem_bytes.reset();
  p.schedule.reset();
  p.evict.policy = evict::Policy::full;
  engine::Context ctx(model, p);
  const size_t V = ctx.n_vocab(), C = spec.cont_tokens;
  std::vector<float> out(nw * C * V);
  std::vector<int32_t> win;
  for (size_t i = 0; i < nw; ++i) {
    build_window(text, bos, spec, i, win);
    teacher_force(ctx, win, spec.prefix_tokens, out.data() + i * C * V);
    if (progress) progress(i + 1, nw);
  }
  return out;
}

void KldAccumulator::add(const float* ref, const float* pol, int32_t target) {
  std::span<const float> r(ref, n_vocab_), q(pol, n_vocab_);
  kl_.push_back(kl_divergence(r, q));
  if (text::argmax(r) == text::argmax(q)) ++agree_;
  if (target >= 0) {
    nll_ref_ += nll(r, target);
    nll_pol_ += nll(q, target);
    ++n_targets_;
  }
}

KldResult KldAccumulator::finish(size_t windows) const {
  KldResult res;
  res.windows = windows;
  res.predictions = kl_.size();
  if (kl_.empty()) return res;
  double s = 0;
  for (double v : kl_) s += v;
  res.mean_kl = s / double(kl_.size());
  res.p99_kl = quantile(kl_, 0.99);
  res.max_kl = *std::max_element(kl_.begin(), kl_.end());
  res.top1 = double(agree_) / double(kl_.size());
  res.scored_targets = n_targets_;
  if (n_targets_) {
    res.ppl_full = std::exp(nll_ref_ / double(n_targets_));
    res.ppl_policy = std::exp(nll_pol_ / double(n_targets_));
  }
  res.per_token_kl = kl_;
  return res;
}

KldResult kld(const model::Model& model, std::span<const int32_t> text, int32_t bos, const WindowSpec& spec,
              const engine::ContextParams& params, std::span<const float> reference, const Progress& progress) {
  const size_t nw = count_windows(text.size(), spec);
  engine::Context ctx(model, with_ctx(params, spec.window_tokens()));
  const size_t V = ctx.n_vocab(), C = spec.cont_tokens;
  if (reference.size() != nw * C * V)
    throw std::invalid_argument("kld: reference holds " + std::to_string(reference.size()) + " floats, expected " +
                                std::to_string(nw * C * V) + " (windows x cont x n_vocab); same text and spec?");
  std::vector<float> logits(C * V);
  std::vector<int32_t> win;
  KldAccumulator acc{uint32_t(V)};
  uint64_t entries = 0;
  for (size_t i = 0; i < nw; ++i) {
    build_window(text, bos, spec, i, win);
    teacher_force(ctx, win, spec.prefix_tokens, logits.data());
    entries = ctx.cache().entries();
    for (size_t j = 0; j < C; ++j) {
      const size_t t = spec.prefix_tokens + j + 1;  // target position in the window
      acc.add(reference.data() + (i * C + j) * V, logits.data() + j * V, t < win.size() ? win[t] : -1);
    }
    if (progress) progress(i + 1, nw);
  }
  KldResult res = acc.finish(nw);
  res.budget_tokens = ctx.budget_tokens();
  res.kv_entries = entries;
  return res;
}

}  // namespace defkv::eval
