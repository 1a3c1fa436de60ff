// AArch64 NEON matmul tiles (baseline AArch64: NEON, fp16 conversion).
#include <arm_neon.h>

#include <cstring>

#include "simd/half_neon.h"
#include "quant/matmul_tile.h"

namespace defkv::quant::detail {
namespace {

// int8 block dot with widening multiplies (vmull_s8 / vmlal_high_s8): each
// i16 lane holds two products, |sum| <= 2*127*127, then pairwise into i32.
struct Q8OpsNeon {
  struct I {
    int8x16_t lo, hi;
  };
  using F = float32x4_t;
  static F zero() { return vdupq_n_f32(0.0f); }
  static I load(const int8_t* p) { return I{vld1q_s8(p), vld1q_s8(p + 16)}; }
  static I abs(I w) { return w; }  // signed x signed products: no sign trick needed
  static float half_to_float(uint16_t h) {
    __fp16 f;
    std::memcpy(&f, &h, 2);
    return float(f);
  }
  static F block_dot(I, I w, const int8_t* x) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    int16x8_t p0 = vmull_s8(vget_low_s8(w.lo), vget_low_s8(x0));
    p0 = vmlal_high_s8(p0, w.lo, x0);
    int16x8_t p1 = vmull_s8(vget_low_s8(w.hi), vget_low_s8(x1));
    p1 = vmlal_high_s8(p1, w.hi, x1);
    return vcvtq_f32_s32(vpadalq_s16(vpaddlq_s16(p0), p1));
  }
  static F fma(F a, float s, F acc) { return vfmaq_n_f32(acc, a, s); }
  static float hsum(F v) { return vaddvq_f32(v); }
};

}  // namespace

// 32 q registers: 4x4 accumulators.
const MatmulTiles& neon_tiles() {
  static const MatmulTiles t{"neon", &float_tile<simd::detail::Neon, 4, 4>,
                             &Q8Tile<Q8OpsNeon, 4, 4>::tile, nullptr};
  return t;
}

}  // namespace defkv::quant::detail
