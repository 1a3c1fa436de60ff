// Eviction selection (docs/eviction.md step 4): per-head, head-adaptive and
// layer-adaptive top-k in linear time, streaming, full; budget helpers.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

#include "runtime/evict/evict.h"

namespace defkv::evict {

Budget oneshot_budget(uint32_t n_tokens, double compression_ratio, uint32_t n_head_kv,
                      uint32_t n_layer) {
  if (!(compression_ratio >= 0.0 && compression_ratio < 1.0))
    throw std::invalid_argument("evict::oneshot_budget: compression ratio " +
                                std::to_string(compression_ratio) + " not in [0, 1)");
  const double keep = 1.0 - compression_ratio;
  Budget b;
  b.per_head = uint32_t(double(n_tokens) * keep);                          // int(T(1-r))
  b.per_layer = uint64_t(double(n_tokens) * keep * double(n_head_kv));     // int(T(1-r)Hkv)
  b.total = b.per_layer * n_layer;
  b.keep_ratio = keep;
  return b;
}

Budget entries_budget(uint32_t budget_per_head, uint32_t n_head_kv, uint32_t n_layer) {
  Budget b;
  b.per_head = budget_per_head;
  b.per_layer = uint64_t(budget_per_head) * n_head_kv;
  b.total = b.per_layer * n_layer;
  b.keep_ratio = -1.0;
  return b;
}

namespace {

// Selection key: NaN sorts last.
inline float key(float x) { return x == x ? x : -std::numeric_limits<float>::infinity(); }

// Marks the k highest-scoring candidates, where the candidates are the entries
// j < n of every segment with keep[j] == 0. for_each(fn) calls
// fn(const float* scores, uint8_t* keep, uint32_t n) for every segment, in a
// fixed order. Linear: nth_element on a copy finds the cut value, one pass
// marks; ties at the cut go to the earliest candidates.
template <class ForEach>
void keep_top(ForEach&& for_each, uint64_t k, std::vector<float>& tmp) {
  if (k == 0) return;
  tmp.clear();
  for_each([&](const float* s, uint8_t* keep, uint32_t n) {
    for (uint32_t j = 0; j < n; ++j)
      if (!keep[j]) tmp.push_back(key(s[j]));
  });
  if (k >= tmp.size()) {
    for_each([](const float*, uint8_t* keep, uint32_t n) { std::fill_n(keep, n, uint8_t(1)); });
    return;
  }
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
  const float cut = tmp[k - 1];
  uint64_t n_equal = k - uint64_t(std::count_if(tmp.begin(), tmp.begin() + k,
                                                [cut](float x) { return x > cut; }));
  for_each([&](const float* s, uint8_t* keep, uint32_t n) {
    for (uint32_t j = 0; j < n; ++j) {
      if (keep[j]) continue;
      const float x = key(s[j]);
      if (x > cut || (x == cut && n_equal > 0 && n_equal--)) keep[j] = 1;
    }
  });
}

void check_layer(uint32_t n_window, const std::vector<std::vector<float>>& scores) {
  for (size_t hk = 0; hk < scores.size(); ++hk)
    if (scores[hk].size() < n_window)
      throw std::invalid_argument("evict::select_keep: head " + std::to_string(hk) + " holds " +
                                  std::to_string(scores[hk].size()) +
                                  " entries, fewer than the window " + std::to_string(n_window));
}

void size_keep(const std::vector<std::vector<float>>& scores,
               std::vector<std::vector<uint8_t>>& keep, uint32_t n_window) {
  size_t total = 0;  // reserve the layer total per head (see resize_zero in scoring.cpp)
  for (const auto& s : scores) total += s.size();
  keep.resize(scores.size());
  for (size_t hk = 0; hk < scores.size(); ++hk) {
    const size_t n = scores[hk].size();
    keep[hk].reserve(total);
    keep[hk].assign(n, 0);
    std::fill(keep[hk].begin() + (n - n_window), keep[hk].end(), uint8_t(1));  // window
  }
}

// Candidates of one layer: the non-window entries of every head.
auto layer_segments(const std::vector<std::vector<float>>& scores,
                    std::vector<std::vector<uint8_t>>& keep, uint32_t n_window) {
  return [&scores, &keep, n_window](auto&& fn) {
    for (size_t hk = 0; hk < scores.size(); ++hk)
      fn(scores[hk].data(), keep[hk].data(), uint32_t(scores[hk].size() - n_window));
  };
}

uint64_t window_entries(const std::vector<std::vector<float>>& scores, uint32_t n_window) {
  return uint64_t(scores.size()) * n_window;
}

}  // namespace

void select_keep(const Params& params, const Budget& budget, uint32_t n_window,
                 const std::vector<std::vector<float>>& scores, Scratch& scratch,
                 std::vector<std::vector<uint8_t>>& keep) {
  check_layer(n_window, scores);
  const Policy pol = params.policy;
  if (pol == Policy::full || pol == Policy::streaming) {
    size_keep(scores, keep, 0);
    for (size_t hk = 0; hk < scores.size(); ++hk) {
      auto& m = keep[hk];
      const uint32_t n = uint32_t(m.size());
      if (pol == Policy::full || n <= budget.per_head) {
        std::fill(m.begin(), m.end(), uint8_t(1));
        continue;
      }
      const uint32_t sinks = std::min(params.n_sink, budget.per_head);
      const uint32_t recent = budget.per_head - sinks;
      std::fill_n(m.begin(), sinks, uint8_t(1));
      std::fill(m.end() - recent, m.end(), uint8_t(1));
    }
    return;
  }
  size_keep(scores, keep, n_window);
  if (pol == Policy::snapkv) {
    // Per head: the window plus the top (per_head - W) of the rest.
    const uint32_t k = budget.per_head > n_window ? budget.per_head - n_window : 0;
    for (size_t hk = 0; hk < scores.size(); ++hk) {
      const uint32_t N = uint32_t(scores[hk].size()) - n_window;
      keep_top([&](auto&& fn) { fn(scores[hk].data(), keep[hk].data(), N); }, k, scratch.flat);
    }
    return;
  }
  uint64_t forced = window_entries(scores, n_window);
  if (pol == Policy::adakv) {
    // Safeguard: each head first keeps its top int(per_head * alpha) non-window entries.
    const uint32_t n_safe = uint32_t(double(budget.per_head) * double(params.ada_floor));
    for (size_t hk = 0; hk < scores.size(); ++hk) {
      const uint32_t N = uint32_t(scores[hk].size()) - n_window;
      const uint32_t k = std::min(n_safe, N);
      keep_top([&](auto&& fn) { fn(scores[hk].data(), keep[hk].data(), N); }, k, scratch.flat);
      forced += k;
    }
  }
  // adakv, criticalkv, defensivekv (and layer_defensivekv on one layer).
  const uint64_t k = budget.per_layer > forced ? budget.per_layer - forced : 0;
  keep_top(layer_segments(scores, keep, n_window), k, scratch.flat);
}

void select_keep_layers(const Params& params, const Budget& budget, uint32_t n_window,
                        const std::vector<std::vector<std::vector<float>>>& scores,
                        Scratch& scratch,
                        std::vector<std::vector<std::vector<uint8_t>>>& keep) {
  keep.resize(scores.size());
  if (params.policy != Policy::layer_defensivekv) {
    for (size_t l = 0; l < scores.size(); ++l)
      select_keep(params, budget, n_window, scores[l], scratch, keep[l]);
    return;
  }
  uint64_t forced = 0;
  for (size_t l = 0; l < scores.size(); ++l) {
    check_layer(n_window, scores[l]);
    size_keep(scores[l], keep[l], n_window);
    forced += window_entries(scores[l], n_window);
  }
  const uint64_t k = budget.total > forced ? budget.total - forced : 0;
  keep_top(
      [&](auto&& fn) {
        for (size_t l = 0; l < scores.size(); ++l) layer_segments(scores[l], keep[l], n_window)(fn);
      },
      k, scratch.flat);
}

}  // namespace defkv::evict
