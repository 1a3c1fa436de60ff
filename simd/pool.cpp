// Position-wise helpers that are not per-ISA: rotary embedding, GELU and
// soft-capping (tanh-based, rare enough not to need vector kernels), 1-D
// average pooling (checked, then the table kernel), the logits scratch size.
#include <cmath>
#include <stdexcept>
#include <string>

#include "simd/simd.h"

namespace defkv::simd {

void rope(float* x, size_t n_rot, const float* cos, const float* sin, bool neox) {
  const size_t half = n_rot / 2;
  if (neox) {
    for (size_t i = 0; i < half; ++i) {
      const float x0 = x[i], x1 = x[i + half];
      x[i] = x0 * cos[i] - x1 * sin[i];
      x[i + half] = x0 * sin[i] + x1 * cos[i];
    }
  } else {
    for (size_t i = 0; i < half; ++i) {
      const float x0 = x[2 * i], x1 = x[2 * i + 1];
      x[2 * i] = x0 * cos[i] - x1 * sin[i];
      x[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
    }
  }
}

void gelu_tanh_mul(float* gate, const float* up, size_t n) {
  const float c = 0.7978845608028654f;  // sqrt(2/pi)
  for (size_t i = 0; i < n; ++i) {
    const float x = gate[i];
    gate[i] = 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x))) * up[i];
  }
}

void softcap(float* x, size_t n, float cap) {
  const float inv = 1.0f / cap;
  for (size_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inv);
}

void avg_pool1d(const float* x, float* out, size_t n, size_t k) {
  if (k == 0 || k % 2 == 0)
    throw std::invalid_argument("avg_pool1d: kernel size must be odd, got " + std::to_string(k));
  simd::k().avg_pool(x, out, n, k);
}

size_t window_logits_scratch(size_t n, size_t d) {
  return (n + 15) / 16 * 16 * d;  // [ceil(n/16)][d][16], see kernels_xsimd.h
}

void pack_window_keys(const float* k, size_t n, size_t d, float* panels) {
  constexpr size_t kNr = 16;
  const size_t n_panel = (n + kNr - 1) / kNr;
  for (size_t p = 0; p < n_panel; ++p) {
    float* dst = panels + p * d * kNr;  // [d][kNr]
    const size_t j0 = p * kNr, nc = n - j0 < kNr ? n - j0 : kNr;
    for (size_t c = 0; c < kNr; ++c) {
      if (c < nc) {
        const float* src = k + (j0 + c) * d;
        for (size_t e = 0; e < d; ++e) dst[e * kNr + c] = src[e];
      } else {
        for (size_t e = 0; e < d; ++e) dst[e * kNr + c] = 0.0f;
      }
    }
  }
}

}  // namespace defkv::simd
