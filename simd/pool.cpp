// Position-wise helpers that are not per-ISA: rotary embedding, 1-D average
// pooling (checked, then the table kernel), the logits scratch size.
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

void avg_pool1d(const float* x, float* out, size_t n, size_t k) {
  if (k == 0 || k % 2 == 0)
    throw std::invalid_argument("avg_pool1d: kernel size must be odd, got " + std::to_string(k));
  simd::k().avg_pool(x, out, n, k);
}

size_t window_logits_scratch(size_t n, size_t d) {
  return (n + 15) / 16 * 16 * d;  // [ceil(n/16)][d][16], see kernels_xsimd.h
}

}  // namespace defkv::simd
