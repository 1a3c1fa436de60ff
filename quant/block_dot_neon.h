// NEON block dots for q8_0 and every low-bit type, written once over a 16-lane
// int8 dot step and instantiated in each NEON translation unit:
//   Widen (ARMv8.0, matmul_neon.cpp): vmull_s8 / vmlal_high_s8 into i16 lanes,
//     pairwise-added into i32;
//   Sdot (ARMv8.2 dotprod, matmul_neon_dotprod.cpp): vdotq_s32.
// The arithmetic is block_dot_ref's: exact int32 sums per block (sub-block for
// the K-quants), then the float scales. Include ONLY from those two files:
// everything is in an anonymous namespace, so code compiled with +dotprod is
// never linked into the baseline path. Activation quants are in [-127, 127]
// (quant::quantize_acts, detail::quantize_activations never give -128).
#pragma once

#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "quant/block_dot_tokens.h"
#include "quant/blocks.h"
#include "quant/matmul_isa.h"

namespace defkv::quant::detail {
namespace {

// acc + w . x over 16 int8 lanes, as 4 int32 partial sums.
struct Widen {
  // two products per i16 lane: |w| <= 128 and |x| <= 127, so |sum| <= 32512
  static int32x4_t acc(int32x4_t a, int8x16_t w, int8x16_t x) {
    int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    p = vmlal_high_s8(p, w, x);
    return vpadalq_s16(a, p);
  }
};
#if defined(__ARM_FEATURE_DOTPROD)
struct Sdot {
  static int32x4_t acc(int32x4_t a, int8x16_t w, int8x16_t x) { return vdotq_s32(a, w, x); }
};
#endif

inline float h2f(uint16_t h) {
  __fp16 f;
  std::memcpy(&f, &h, 2);
  return float(f);
}
inline int8x16_t s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }

// w0 . x[0..16) + w1 . x[16..32) as 4 int32 partial sums
template <class D>
int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t* x) {
  return D::acc(D::acc(vdupq_n_s32(0), w0, vld1q_s8(x)), w1, vld1q_s8(x + 16));
}

// ---- q8_0 (the Q8Tile ops of quant/matmul_tile.h) ------------------------------------
template <class D>
struct Q8OpsNeon {
  struct I {
    int8x16_t lo, hi;
  };
  using F = float32x4_t;
  static F zero() { return vdupq_n_f32(0.0f); }
  static I load(const int8_t* p) { return I{vld1q_s8(p), vld1q_s8(p + 16)}; }
  static I abs(I w) { return w; }  // signed x signed products: no sign trick needed
  static float half_to_float(uint16_t h) { return h2f(h); }
  static F block_dot(I, I w, const int8_t* x) { return vcvtq_f32_s32(dot32<D>(w.lo, w.hi, x)); }
  static F fma(F a, float s, F acc) { return vfmaq_n_f32(acc, a, s); }
  static float hsum(F v) { return vaddvq_f32(v); }
};

// ---- low-bit types ---------------------------------------------------------------------
// Kernels K::dot<N> (quant/block_dot_tokens.h): the weights are unpacked once
// per block for the N tokens; each token's arithmetic is the same for every N.

// 16 bytes: byte k is 0x10 when bit k of the 16-bit word bits is set (the fifth
// bits of Q5_0 / Q5_1: vtst against a per-lane bit mask, no lookup table).
inline uint8x16_t fifth_bits(uint32_t bits) {
  static constexpr uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t b = vcombine_u8(vdup_n_u8(uint8_t(bits)), vdup_n_u8(uint8_t(bits >> 8)));
  return vandq_u8(vtstq_u8(b, vld1q_u8(kBit)), vdupq_n_u8(0x10));
}

// Legacy 32-blocks against ActQ8. Values j and j + 16 of a block are the low
// and high nibble of qs[j], plus (kBits5) the fifth bits j and j + 16 of qh;
// kOffset is subtracted (8 for Q4_0, 16 for Q5_0, 0 for the _1 types, whose
// min term is m * the block's activation sum s).
template <class D, class B, bool kBits5, int kOffset, bool kMin>
struct Legacy {
  template <size_t N>
  static void dot(const void* row, const void* acts, size_t stride, size_t nb, float* out) {
    const auto* w = static_cast<const B*>(row);
    const ActQ8* a[N];
    token_acts(acts, stride, a);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t off = vdupq_n_s8(kOffset);
    float32x4_t acc[N];
    float acc_m[N];
    for (size_t k = 0; k < N; ++k) acc[k] = vdupq_n_f32(0.0f), acc_m[k] = 0.0f;
    for (size_t i = 0; i < nb; ++i) {
      const uint8x16_t v = vld1q_u8(w[i].qs);
      uint8x16_t lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
      if constexpr (kBits5) {
        uint32_t qh;
        std::memcpy(&qh, w[i].qh, 4);
        lo = vorrq_u8(lo, fifth_bits(qh));
        hi = vorrq_u8(hi, fifth_bits(qh >> 16));
      }
      int8x16_t l = s8(lo), u = s8(hi);
      if constexpr (kOffset != 0) {
        l = vsubq_s8(l, off);
        u = vsubq_s8(u, off);
      }
      const float dw = h2f(w[i].d);
      for (size_t k = 0; k < N; ++k) {
        acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(dot32<D>(l, u, a[k][i].qs)), dw * a[k][i].d);
        if constexpr (kMin) acc_m[k] += h2f(w[i].m) * a[k][i].s;
      }
    }
    for (size_t k = 0; k < N; ++k) out[k] = vaddvq_f32(acc[k]) + acc_m[k];
  }
};

// Q4_K / Q5_K against ActQ8K: per 64 values c, sub-block 2c is the low nibbles
// of qs[32c .. 32c + 32), sub-block 2c + 1 the high nibbles; Q5_K's fifth bits
// are bits 2c and 2c + 1 of qh[l], moved to bit 4 after qh is shifted right by 2c.
template <class D, bool k5, class B>
struct K45 {
  template <size_t N>
  static void dot(const void* row, const void* acts, size_t stride, size_t nb, float* out) {
    const auto* w = static_cast<const B*>(row);
    const ActQ8K* a[N];
    token_acts(acts, stride, a);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), b4 = vdupq_n_u8(0x10);
    float acc[N] = {};
    for (size_t i = 0; i < nb; ++i) {
      uint8_t sc[8], mn[8];
      for (size_t j = 0; j < 8; ++j) k4_scale_min(j, w[i].scales, &sc[j], &mn[j]);
      uint8x16_t h0 = vdupq_n_u8(0), h1 = vdupq_n_u8(0);
      if constexpr (k5) {
        h0 = vld1q_u8(w[i].qh);
        h1 = vld1q_u8(w[i].qh + 16);
      }
      int32x4_t sum_q[N];  // lanes: partial sums of sc_j * (q . x)
      for (size_t k = 0; k < N; ++k) sum_q[k] = vdupq_n_s32(0);
      for (size_t c = 0; c < 4; ++c) {
        const uint8x16_t q0 = vld1q_u8(w[i].qs + 32 * c), q1 = vld1q_u8(w[i].qs + 32 * c + 16);
        uint8x16_t l0 = vandq_u8(q0, m4), l1 = vandq_u8(q1, m4), u0 = vshrq_n_u8(q0, 4), u1 = vshrq_n_u8(q1, 4);
        if constexpr (k5) {
          l0 = vorrq_u8(l0, vandq_u8(vshlq_n_u8(h0, 4), b4));
          l1 = vorrq_u8(l1, vandq_u8(vshlq_n_u8(h1, 4), b4));
          u0 = vorrq_u8(u0, vandq_u8(vshlq_n_u8(h0, 3), b4));
          u1 = vorrq_u8(u1, vandq_u8(vshlq_n_u8(h1, 3), b4));
          h0 = vshrq_n_u8(h0, 2);
          h1 = vshrq_n_u8(h1, 2);
        }
        for (size_t k = 0; k < N; ++k) {
          const int8_t* x = a[k][i].qs + 64 * c;
          sum_q[k] = vmlaq_n_s32(sum_q[k], dot32<D>(s8(l0), s8(l1), x), sc[2 * c]);
          sum_q[k] = vmlaq_n_s32(sum_q[k], dot32<D>(s8(u0), s8(u1), x + 32), sc[2 * c + 1]);
        }
      }
      const float d = h2f(w[i].d), dmin = h2f(w[i].dmin);
      for (size_t k = 0; k < N; ++k) {
        int32_t sum_m = 0;
        for (size_t j = 0; j < 8; ++j) sum_m += int32_t(mn[j]) * (a[k][i].bsums[2 * j] + a[k][i].bsums[2 * j + 1]);
        // one explicit fma and no product beside an add, so the compiler has no
        // contraction to choose and every N gives each token the same bits
        const float dx = a[k][i].d;
        acc[k] += std::fma(d * dx, float(vaddvq_s32(sum_q[k])), -(dmin * dx * float(sum_m)));
      }
    }
    for (size_t k = 0; k < N; ++k) out[k] = acc[k];
  }
};

// Q6_K against ActQ8K: quants stored + 32 (0..63, so the unsigned values are
// valid int8); the offset is taken off at the end as 32 * sum_k scales[k] * bsums[k].
template <class D>
struct Q6K {
  template <size_t N>
  static void dot(const void* row, const void* acts, size_t stride, size_t nb, float* out) {
    const auto* w = static_cast<const BlockQ6_K*>(row);
    const ActQ8K* a[N];
    token_acts(acts, stride, a);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    float acc[N] = {};
    for (size_t i = 0; i < nb; ++i) {
      int32x4_t total[N];  // lanes: partial sums of scales_k * (q . x)
      for (size_t k = 0; k < N; ++k) total[k] = vdupq_n_s32(0);
      for (size_t h = 0; h < 2; ++h) {
        const uint8_t* ql = w[i].ql + 64 * h;
        const uint8_t* qh = w[i].qh + 32 * h;
        const int8_t* sc = w[i].scales + 8 * h;
        for (size_t half = 0; half < 2; ++half) {  // values l in [16 half, 16 half + 16)
          const uint8x16_t l0 = vld1q_u8(ql + 16 * half), l1 = vld1q_u8(ql + 32 + 16 * half);
          const uint8x16_t hb = vld1q_u8(qh + 16 * half);
          const uint8x16_t q[4] = {
              vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(hb, m3), 4)),
              vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4)),
              vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4)),
              vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4)),
          };
          for (size_t k = 0; k < N; ++k) {
            const int8_t* x = a[k][i].qs + 128 * h + 16 * half;
            for (size_t g = 0; g < 4; ++g)
              total[k] = vmlaq_n_s32(total[k], D::acc(vdupq_n_s32(0), s8(q[g]), vld1q_s8(x + 32 * g)), sc[2 * g + half]);
          }
        }
      }
      const float d = h2f(w[i].d);
      for (size_t k = 0; k < N; ++k) {
        int32_t corr = 0;
        for (size_t j = 0; j < 16; ++j) corr += int32_t(w[i].scales[j]) * a[k][i].bsums[j];
        acc[k] += d * a[k][i].d * float(vaddvq_s32(total[k]) - 32 * corr);
      }
    }
    for (size_t k = 0; k < N; ++k) out[k] = acc[k];
  }
};

// The kernel of type t as F (BlockDot or BlockDotTokens) with dot step D.
template <class D, class F>
F neon_block_dot(DType t) {
  return low_bit_block_dot<Legacy, K45, Q6K, D, F>(t);
}

}  // namespace
}  // namespace defkv::quant::detail
