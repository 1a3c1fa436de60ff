// AArch64 NEON matmul tiles (baseline AArch64: NEON, fp16 conversion).
#include <arm_neon.h>

#include <cstring>

#include "simd/half_neon.h"
#include "quant/blocks.h"
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

// ---- low-bit block dots (baseline AArch64: widening int8 multiplies) ------------------
// The arithmetic of block_dot_ref: exact int32 sums per block, then float.
// |products| <= 63 * 127, two per i16 lane, so nothing saturates.

// sum of w[i] * x[i] over 16 int8 lanes, as 4 int32 partial sums
inline int32x4_t dot16(int8x16_t w, const int8_t* x) {
  const int8x16_t xv = vld1q_s8(x);
  int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(xv));
  p = vmlal_high_s8(p, w, xv);
  return vpaddlq_s16(p);
}

float h2f_neon(uint16_t h) {
  __fp16 f;
  std::memcpy(&f, &h, 2);
  return float(f);
}

float neon_dot_q4_0(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ4_0*>(row);
  const auto* a = static_cast<const ActQ8*>(acts);
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  const int8x16_t eight = vdupq_n_s8(8);
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    const uint8x16_t v = vld1q_u8(w[i].qs);
    const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), eight);
    const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), eight);
    const int32_t s = vaddvq_s32(vaddq_s32(dot16(lo, a[i].qs), dot16(hi, a[i].qs + 16)));
    acc += float(s) * (h2f_neon(w[i].d) * a[i].d);
  }
  return acc;
}

float neon_dot_q4_K(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ4_K*>(row);
  const auto* a = static_cast<const ActQ8K*>(acts);
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    int32_t sum_q = 0, sum_m = 0;
    for (size_t c = 0; c < 4; ++c) {
      const uint8x16_t q0 = vld1q_u8(w[i].qs + 32 * c), q1 = vld1q_u8(w[i].qs + 32 * c + 16);
      const int8_t* x = a[i].qs + 64 * c;
      const int32_t s_lo = vaddvq_s32(vaddq_s32(dot16(vreinterpretq_s8_u8(vandq_u8(q0, m4)), x),
                                                dot16(vreinterpretq_s8_u8(vandq_u8(q1, m4)), x + 16)));
      const int32_t s_hi = vaddvq_s32(vaddq_s32(dot16(vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), x + 32),
                                                dot16(vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), x + 48)));
      for (size_t h = 0; h < 2; ++h) {
        uint8_t sc, m;
        k4_scale_min(2 * c + h, w[i].scales, &sc, &m);
        sum_q += int32_t(sc) * (h ? s_hi : s_lo);
        sum_m += int32_t(m) * (a[i].bsums[4 * c + 2 * h] + a[i].bsums[4 * c + 2 * h + 1]);
      }
    }
    acc += h2f_neon(w[i].d) * a[i].d * float(sum_q) - h2f_neon(w[i].dmin) * a[i].d * float(sum_m);
  }
  return acc;
}

float neon_dot_q6_K(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ6_K*>(row);
  const auto* a = static_cast<const ActQ8K*>(acts);
  const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    int32_t total = 0;
    for (size_t h = 0; h < 2; ++h) {
      const uint8_t* ql = w[i].ql + 64 * h;
      const uint8_t* qh = w[i].qh + 32 * h;
      const int8_t* sc = w[i].scales + 8 * h;
      const int8_t* x = a[i].qs + 128 * h;
      for (size_t half = 0; half < 2; ++half) {  // values l in [16 half, 16 half + 16)
        const uint8x16_t l0 = vld1q_u8(ql + 16 * half), l1 = vld1q_u8(ql + 32 + 16 * half);
        const uint8x16_t hb = vld1q_u8(qh + 16 * half);
        const uint8x16_t q[4] = {
            vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(hb, m3), 4)),
            vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4)),
            vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4)),
            vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4)),
        };
        for (size_t g = 0; g < 4; ++g) {
          const int32_t s = vaddvq_s32(dot16(vreinterpretq_s8_u8(q[g]), x + 32 * g + 16 * half));
          total += int32_t(sc[2 * g + half]) * s;
        }
      }
    }
    // levels are stored + 32: subtract 32 * sum_k sc_k * (sum of x over sub-block k)
    int32_t corr = 0;
    for (size_t k = 0; k < 16; ++k) corr += int32_t(w[i].scales[k]) * a[i].bsums[k];
    acc += h2f_neon(w[i].d) * a[i].d * float(total - 32 * corr);
  }
  return acc;
}

BlockDot neon_low_bit_dot(DType t) {
  switch (t) {
    case DType::q4_0: return &neon_dot_q4_0;
    case DType::q4_K: return &neon_dot_q4_K;
    case DType::q6_K: return &neon_dot_q6_K;
    default: return nullptr;  // the scalar block dots
  }
}

}  // namespace

// 32 q registers: 4x4 accumulators.
const MatmulTiles& neon_tiles() {
  static const MatmulTiles t{"neon", &float_tile<simd::detail::Neon, 4, 4>,
                             &Q8Tile<Q8OpsNeon, 4, 4>::tile, &neon_low_bit_dot};
  return t;
}

}  // namespace defkv::quant::detail
