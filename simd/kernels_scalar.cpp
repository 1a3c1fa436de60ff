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

const Kernels& table() {
  static const Kernels t{
      Isa::scalar, dot,       dot_f16,     axpy,        axpy_f16,    scale,
      rmsnorm,     softmax,   silu_mul,    max_inplace, add_inplace, reduce_max,
      reduce_sum,  reduce_abs_sum, f16_to_f32, f32_to_f16, bf16_to_f32, f32_to_bf16,
  };
  return t;
}

}  // namespace defkv::simd::scalar
