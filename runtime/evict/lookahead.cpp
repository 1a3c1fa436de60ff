// Lookahead scores (lookahead.h): W queries x (one chunk + a pooling margin)
// entries per head and round, with the window-scoring kernels; the arrivals'
// normaliser update reuses the row's softmax.
#include "runtime/evict/lookahead.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <limits>

#include "simd/simd.h"

namespace defkv::evict {

void lookahead_scores(const LookaheadQueries& lq, uint32_t hk, const float* k, const int32_t* pos,
                      uint32_t n, uint32_t first, uint32_t arrive_begin, uint32_t arrive_end, Policy policy,
                      uint32_t kernel, float* out, std::vector<float>& scratch) {
  if (lq.n_head_kv == 0 || lq.n_head % lq.n_head_kv != 0 || hk >= lq.n_head_kv)
    throw std::invalid_argument("lookahead_scores: bad head geometry");
  if (kernel == 0 || kernel % 2 == 0)
    throw std::invalid_argument("lookahead_scores: pooling kernel must be odd, got " + std::to_string(kernel));
  if (!(first <= arrive_begin && arrive_begin <= arrive_end && arrive_end <= n))
    throw std::invalid_argument("lookahead_scores: need first <= arrive_begin <= arrive_end <= n");
  const auto& K = simd::k();
  const uint32_t G = lq.n_head / lq.n_head_kv, d = lq.head_dim, half = kernel / 2, nq = lq.n_query;
  const bool use_max = traits(policy).defensive;
  const uint32_t m = n - first;
  std::fill(out, out + m, 0.0f);
  if (m == 0 || nq == 0) return;
  // Only entries [lo, n) reach a scored entry through the pooling.
  const uint32_t lo = first > half ? first - half : 0, nn = n - lo;
  const uint32_t rows = G * nq;
  const size_t panels = size_t((nn + 15) / 16) * 16 * d;
  scratch.resize(size_t(rows) * nn + 2 * size_t(nn) + panels);
  float* a = scratch.data();                   // [rows, nn] logits, then attention
  float* pooled = a + size_t(rows) * nn;       // [nn]
  float* acc = pooled + nn;                    // [nn]
  float* pan = acc + nn;
  const float scale = 1.0f / std::sqrt(float(d));
  K.window_logits(lq.q + size_t(hk) * G * nq * d, rows, k + size_t(lo) * d, nn, d, a, nn, pan);
  std::fill(acc, acc + nn, 0.0f);
  for (uint32_t r = 0; r < rows; ++r) {
    const uint32_t h = hk * G + r / nq, i = r % nq;
    float* x = a + size_t(r) * nn;
    // Causal: entries after the query's position get nothing.
    const uint32_t valid = uint32_t(std::upper_bound(pos + lo, pos + n, lq.q_pos[i]) - (pos + lo));
    float mx = -std::numeric_limits<float>::infinity();
    for (uint32_t j = 0; j < valid; ++j) mx = std::max(mx, x[j] * scale);
    // exp(s - lse) = softmax(s) * sum exp(s - max) * exp(max - lse)
    const float z = K.window_softmax(x, nn, valid, scale);
    if (!(z > 0)) continue;  // no key at or before the query: nothing to add
    float& lse = lq.lse[size_t(h) * nq + i];
    const uint32_t ab = arrive_begin - lo, ae = std::min(arrive_end - lo, valid);
    if (ae > ab) {  // lse <- log(exp(lse) + sum_arrivals exp(s)); the arrivals' exp-sum is z e^mx times their softmax share
      const double mass = double(K.reduce_sum(x + ab, ae - ab)) * z;
      const double a = double(lse), b = double(mx) + std::log(mass), m2 = std::max(a, b);
      if (mass > 0) lse = float(m2 + std::log(std::exp(a - m2) + std::exp(b - m2)));
    }
    K.scale(x, z * std::exp(mx - lse), nn);
    K.avg_pool(x, pooled, nn, kernel);
    if (use_max) K.max_inplace(acc, pooled, nn);
    else K.add_inplace(acc, pooled, nn);
  }
  const float norm = use_max ? 1.0f : 1.0f / float(rows);
  for (uint32_t t = 0; t < m; ++t) out[t] = acc[first - lo + t] * norm;
}

}  // namespace defkv::evict
