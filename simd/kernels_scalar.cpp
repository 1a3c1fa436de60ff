// Scalar reference kernels: fallback table and test oracle.
#include "simd/kernels_scalar.h"

#include "simd/convert_inline.h"

#include <cmath>
#include <limits>

namespace defkv::simd::scalar {

float dot(const float* a, const float* b, size_t n) {
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) acc += double(a[i]) * double(b[i]);
  return float(acc);
}

float dot_f16(const float* a, const uint16_t* b, size_t n) {
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) acc += double(a[i]) * double(detail::f16_to_f32_inline(b[i]));
  return float(acc);
}

void axpy(float alpha, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void axpy_f16(float alpha, const uint16_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += alpha * detail::f16_to_f32_inline(x[i]);
}

void scale(float* x, float alpha, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] *= alpha;
}

void rmsnorm(float* out, const float* x, const float* w, size_t n, float eps) {
  if (n == 0) return;
  double ss = 0.0;
  for (size_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float inv_rms = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * inv_rms * w[i];
}

float softmax(float* x, size_t n) {
  if (n == 0) return 0.0f;
  const float m = reduce_max(x, n);
  if (m == -std::numeric_limits<float>::infinity()) {
    for (size_t i = 0; i < n; ++i) x[i] = 0.0f;  // everything masked: all zero, no NaN
    return 0.0f;
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
  return float(sum);
}

void silu_mul(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void max_inplace(float* acc, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] = acc[i] < x[i] ? x[i] : acc[i];
}

void add_inplace(float* acc, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] += x[i];
}

float reduce_max(const float* x, size_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) m = m < x[i] ? x[i] : m;
  return m;
}

float reduce_sum(const float* x, size_t n) {
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) acc += x[i];
  return float(acc);
}

float reduce_abs_sum(const float* x, size_t n) {
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) acc += std::fabs(x[i]);
  return float(acc);
}

void f16_to_f32(const uint16_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = detail::f16_to_f32_inline(x[i]);
}
void f32_to_f16(const float* x, uint16_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = detail::f32_to_f16_inline(x[i]);
}
void bf16_to_f32(const uint16_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = detail::bf16_to_f32_inline(x[i]);
}
void f32_to_bf16(const float* x, uint16_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = detail::f32_to_bf16_inline(x[i]);
}

// ---- eviction scoring ------------------------------------------------------

// One f32 accumulator per output, summed along e in order (the vector kernels
// sum in the same order, with FMA); four keys at a time only for independent
// dependency chains, which does not change any output.
void window_logits(const float* q, size_t m, const float* k, size_t n, size_t d, float* out,
                   size_t ldo, float* /*panels*/) {
  for (size_t r = 0; r < m; ++r) {
    const float* qr = q + r * d;
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const float *k0 = k + j * d, *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
      for (size_t e = 0; e < d; ++e) {
        a0 += qr[e] * k0[e];
        a1 += qr[e] * k1[e];
        a2 += qr[e] * k2[e];
        a3 += qr[e] * k3[e];
      }
      float* o = out + r * ldo + j;
      o[0] = a0; o[1] = a1; o[2] = a2; o[3] = a3;
    }
    for (; j < n; ++j) {
      float acc = 0.0f;
      for (size_t e = 0; e < d; ++e) acc += qr[e] * k[j * d + e];
      out[r * ldo + j] = acc;
    }
  }
}

// Reads key j, dim e from its panel slot; the same in-order sums.
void window_logits_packed(const float* q, size_t m, const float* panels, size_t n, size_t d,
                          float* out, size_t ldo) {
  for (size_t r = 0; r < m; ++r)
    for (size_t j = 0; j < n; ++j) {
      const float* kp = panels + (j / 16) * d * 16 + j % 16;  // kp[e * 16] = k[j, e]
      float acc = 0.0f;
      for (size_t e = 0; e < d; ++e) acc += q[r * d + e] * kp[e * 16];
      out[r * ldo + j] = acc;
    }
}

float window_softmax(float* x, size_t n, size_t n_valid, float scale) {
  for (size_t i = 0; i < n_valid; ++i) x[i] *= scale;
  const float z = n_valid > 0 ? softmax(x, n_valid) : 0.0f;
  for (size_t i = n_valid; i < n; ++i) x[i] = 0.0f;
  return z;
}

// Pooled value at i in double (the oracle's precision).
static double pool_at(const float* x, size_t n, size_t k, size_t i) {
  const size_t pad = k / 2;
  const size_t lo = i >= pad ? i - pad : 0;
  const size_t hi = i + pad < n ? i + pad : n - 1;  // inclusive
  double acc = 0.0;
  for (size_t j = lo; j <= hi; ++j) acc += x[j];
  return acc / double(k);
}

void avg_pool(const float* x, float* out, size_t n, size_t k) {
  for (size_t i = 0; i < n; ++i) out[i] = float(pool_at(x, n, k, i));
}

void pool_rescale_max(const float* x, float* tmp, float* acc, size_t n, size_t k) {
  double mass = 0.0, pooled_mass = 0.0;
  for (size_t i = 0; i < n; ++i) {
    mass += x[i];
    pooled_mass += pool_at(x, n, k, i);
  }
  const double f = pooled_mass > 0.0 ? mass / pooled_mass : 1.0;
  for (size_t i = 0; i < n; ++i) {
    tmp[i] = float(pool_at(x, n, k, i) * f);
    acc[i] = acc[i] < tmp[i] ? tmp[i] : acc[i];
  }
}

void clamp_min(float* x, float lo, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = x[i] < lo ? lo : x[i];
}

void vnorm_weight(float* x, float* w_out, const float* num, const float* den, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float w = den[i] > 0.0f ? num[i] / den[i] : 0.0f;
    x[i] *= w;
    if (w_out) w_out[i] = w;
  }
}

// Online-softmax step over key-major logits; the row sum in double.
void attn_softmax_step(float* st, size_t n, size_t m, size_t ldst, float* row_max, float* row_sum,
                       float* corr) {
  for (size_t r = 0; r < m; ++r) {
    float mx = row_max[r];
    for (size_t j = 0; j < n; ++j) mx = mx < st[j * ldst + r] ? st[j * ldst + r] : mx;
    if (mx == -std::numeric_limits<float>::infinity()) {
      for (size_t j = 0; j < n; ++j) st[j * ldst + r] = 0.0f;
      corr[r] = 1.0f;
      continue;
    }
    const float c = std::exp(row_max[r] - mx);
    double sum = 0.0;
    for (size_t j = 0; j < n; ++j) {
      float& x = st[j * ldst + r];
      x = std::exp(x - mx);
      sum += x;
    }
    corr[r] = c;
    row_sum[r] = float(double(row_sum[r]) * c + sum);
    row_max[r] = mx;
  }
}

// P.V with each output summed in double.
void attn_accumulate(const float* pt, size_t m, size_t n, size_t ldpt, const float* v, size_t ldv,
                     size_t d, const float* corr, float* o, size_t ldo) {
  for (size_t r = 0; r < m; ++r)
    for (size_t c = 0; c < d; ++c) {
      double acc = double(corr ? corr[r] : 1.0f) * double(o[r * ldo + c]);
      for (size_t j = 0; j < n; ++j) acc += double(pt[j * ldpt + r]) * double(v[j * ldv + c]);
      o[r * ldo + c] = float(acc);
    }
}

const Kernels& table() {
  static const Kernels t = [] {
    Kernels k{};
    k.isa = Isa::scalar;
    k.dot = dot; k.dot_f16 = dot_f16; k.axpy = axpy; k.axpy_f16 = axpy_f16; k.scale = scale;
    k.rmsnorm = rmsnorm; k.softmax = softmax; k.silu_mul = silu_mul;
    k.max_inplace = max_inplace; k.add_inplace = add_inplace; k.reduce_max = reduce_max;
    k.reduce_sum = reduce_sum; k.reduce_abs_sum = reduce_abs_sum;
    k.f16_to_f32 = f16_to_f32; k.f32_to_f16 = f32_to_f16;
    k.bf16_to_f32 = bf16_to_f32; k.f32_to_bf16 = f32_to_bf16;
    k.window_logits = window_logits; k.window_logits_packed = window_logits_packed;
    k.window_softmax = window_softmax; k.avg_pool = avg_pool;
    k.pool_rescale_max = pool_rescale_max; k.clamp_min = clamp_min;
    k.vnorm_weight = vnorm_weight;
    k.attn_softmax_step = attn_softmax_step; k.attn_accumulate = attn_accumulate;
    return k;
  }();
  return t;
}

}  // namespace defkv::simd::scalar
