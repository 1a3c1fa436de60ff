// Sampling pipeline (one call per generated token):
//   repetition penalty -> top-k -> temperature softmax -> top-p -> min-p -> draw.
// All buffers are sized on the first call; later calls with the same vocabulary
// size do not allocate.
#include "runtime/text/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace defkv::text {

namespace {

// Descending logit / probability; lowest token id first on ties so that the
// order (and hence every truncation) is deterministic.
bool by_value_desc(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) throw std::invalid_argument("argmax: empty logits");
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return int32_t(best);
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {
  if (p_.repeat_last_n < 0) {
    throw std::invalid_argument("sampler: repeat_last_n = " + std::to_string(p_.repeat_last_n) +
                                " (must be >= 0; 0 disables the repetition penalty)");
  }
  if (!(p_.repeat_penalty > 0.0f)) {
    throw std::invalid_argument("sampler: repeat_penalty = " + std::to_string(p_.repeat_penalty) +
                                " (must be > 0; 1 disables it)");
  }
  history_.reserve(size_t(p_.repeat_last_n));
}

void Sampler::reset() {
  history_.clear();
  rng_.seed(p_.seed);
}

void Sampler::accept(int32_t token) {
  const size_t window = size_t(p_.repeat_last_n);
  if (window == 0) return;
  if (history_.size() == window) history_.erase(history_.begin());  // no reallocation
  history_.push_back(token);
}

void Sampler::apply_repetition_penalty(std::span<float> logits) const {
  const float penalty = p_.repeat_penalty;
  if (penalty == 1.0f) return;
  for (size_t i = 0; i < history_.size(); ++i) {
    const int32_t t = history_[i];
    if (t < 0 || size_t(t) >= logits.size()) continue;
    // Each distinct token once, however often it occurs in the window.
    if (std::find(history_.begin(), history_.begin() + std::ptrdiff_t(i), t) !=
        history_.begin() + std::ptrdiff_t(i)) {
      continue;
    }
    float& l = logits[size_t(t)];
    l = l > 0.0f ? l / penalty : l * penalty;
  }
}

int32_t Sampler::sample(std::span<const float> logits) {
  const size_t n_vocab = logits.size();
  if (n_vocab == 0) throw std::invalid_argument("sampler: empty logits");
  if (n_vocab > size_t(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument("sampler: vocabulary too large");
  }

  // 1. Repetition penalty on a copy; NaN never wins.
  work_.assign(logits.begin(), logits.end());
  for (float& l : work_) {
    if (std::isnan(l)) l = -std::numeric_limits<float>::infinity();
  }
  apply_repetition_penalty(work_);

  if (p_.temperature <= 0.0f) {
    const int32_t t = argmax(work_);
    cand_.clear();
    cand_.push_back({1.0f, t});
    accept(t);
    return t;
  }

  // 2. Top-k (sorting the survivors, descending).
  cand_.resize(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i) cand_[i] = {work_[i], int32_t(i)};
  const size_t k = (p_.top_k > 0 && size_t(p_.top_k) < n_vocab) ? size_t(p_.top_k) : n_vocab;
  if (k < n_vocab) {
    std::partial_sort(cand_.begin(), cand_.begin() + std::ptrdiff_t(k), cand_.end(), by_value_desc);
    cand_.resize(k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_value_desc);
  }

  // 3. Temperature softmax (max-subtracted; the max itself maps to exp(0)
  //    so +-inf logits stay well defined).
  const double inv_t = 1.0 / double(p_.temperature);
  const float max_logit = cand_[0].first;
  double sum = 0.0;
  for (auto& c : cand_) {
    const double e = c.first == max_logit ? 1.0 : std::exp((double(c.first) - max_logit) * inv_t);
    c.first = float(e);
    sum += e;
  }
  for (auto& c : cand_) c.first = float(c.first / sum);

  // 4. Top-p: smallest prefix whose mass reaches top_p (at least one token).
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    size_t keep = cand_.size();
    for (size_t i = 0; i < cand_.size(); ++i) {
      cum += cand_[i].first;
      if (cum >= double(p_.top_p)) {
        keep = i + 1;
        break;
      }
    }
    cand_.resize(keep);
  }

  // 5. Min-p: keep p >= min_p * p_max (the list is sorted, so a prefix).
  if (p_.min_p > 0.0f) {
    const double threshold = double(p_.min_p) * cand_[0].first;
    size_t keep = 1;
    while (keep < cand_.size() && double(cand_[keep].first) >= threshold) ++keep;
    cand_.resize(keep);
  }

  // Renormalise what is left.
  double kept = 0.0;
  for (const auto& c : cand_) kept += c.first;
  for (auto& c : cand_) c.first = float(c.first / kept);

  // 6. Draw by inverse CDF.
  const double u = uniform01(rng_);
  double cum = 0.0;
  int32_t chosen = cand_.back().second;
  for (const auto& c : cand_) {
    cum += c.first;
    if (u < cum) {
      chosen = c.second;
      break;
    }
  }
  accept(chosen);
  return chosen;
}

}  // namespace defkv::text
