// x86 block dots for the low-bit types (256-bit integer vectors), one weight
// row . the quantised activations of 1 or kBlockDotTokens tokens, the same
// arithmetic as block_dot_ref (exact int32 sums per block, float per block).
// Written once over an Ops policy:
//   Ops::dot(u8 w, s8 x)        -> i32x8 whose lanes sum to w.x (4 products a lane)
//   Ops::madd_acc(acc, p16, s16) -> acc + pairwise i16 products (scales folded in)
// AVX2: maddubs + madd; AVX-512 VNNI (VL): vpdpbusd / vpdpwssd.
// Include only from a translation unit compiled with the matching flags.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "quant/block_dot_tokens.h"
#include "quant/blocks.h"
#include "quant/matmul_isa.h"

namespace defkv::quant::detail {
namespace {

struct DotOpsAvx2 {
  static __m256i dot(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }
  static __m256i madd_acc(__m256i acc, __m256i p16, __m256i s16) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, s16));
  }
};

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
struct DotOpsVnni {
  static __m256i dot(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }
  static __m256i madd_acc(__m256i acc, __m256i p16, __m256i s16) { return _mm256_dpwssd_epi32(acc, p16, s16); }
};
#endif

inline float hsum_f(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
inline int32_t hsum_i(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of nibbles -> 32 bytes: value j < 16 the low nibble of byte j, 16 + j the high one.
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}
// Bit j of the 32-bit qh as 0x10 in byte j.
inline __m256i fifth_bits(const uint8_t* qh4) {
  uint32_t qh;
  std::memcpy(&qh, qh4, 4);
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                        3, 3, 3, 3, 3, 3);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int32_t(qh)), shuf);
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// ---- low-bit types ---------------------------------------------------------------------
// Kernels K::dot<N> (quant/block_dot_tokens.h): each weight block is unpacked
// (and its scales decoded) once for the N tokens; each token's arithmetic
// (int32 sums, float accumulation order) is the same for every N, so the
// N-token results equal the one-token ones bit for bit.

// Legacy 32-blocks against ActQ8: nibbles (plus, kBits5, the fifth bits) minus
// kOffset (8 for Q4_0, 16 for Q5_0; 0 for the _1 types, whose min term is
// m * the block's activation sum s). Signed quants use |w| . (x * sign(w)).
template <class Ops, class B, bool kBits5, int kOffset, bool kMin>
struct Legacy {
  template <size_t N>
  static void dot(const void* row, const void* acts, size_t stride, size_t nb, float* out) {
    const auto* w = static_cast<const B*>(row);
    const ActQ8* a[N];
    token_acts(acts, stride, a);
    __m256 acc[N];
    float mins[N];
    for (size_t k = 0; k < N; ++k) acc[k] = _mm256_setzero_ps(), mins[k] = 0.0f;
    for (size_t i = 0; i < nb; ++i) {
      __m256i q = nibbles32(w[i].qs);
      if constexpr (kBits5) q = _mm256_or_si256(q, fifth_bits(w[i].qh));
      if constexpr (kOffset != 0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(kOffset));
      const __m256i u = kOffset != 0 ? _mm256_sign_epi8(q, q) : q;
      const float dw = h2f(w[i].d);
      for (size_t k = 0; k < N; ++k) {
        const __m256i x = load256(a[k][i].qs);
        const __m256i p = Ops::dot(u, kOffset != 0 ? _mm256_sign_epi8(x, q) : x);
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * a[k][i].d), acc[k]);
        if constexpr (kMin) mins[k] += h2f(w[i].m) * a[k][i].s;
      }
    }
    for (size_t k = 0; k < N; ++k) {
      if constexpr (kMin) out[k] = hsum_f(acc[k]) + mins[k];
      else out[k] = hsum_f(acc[k]);
    }
  }
};

// ---- K-quants x ActQ8K ---------------------------------------------------------------

// The 8 six-bit scales (bytes 0-7) and mins (bytes 8-15) of a Q4_K / Q5_K block.
inline void k4_unpack_scales(const uint8_t* s12, uint8_t* out16) {
  uint32_t u[4];
  std::memcpy(u, s12, 12);
  constexpr uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
  const uint32_t m03 = u[1] & k6;
  u[3] = ((u[2] >> 4) & k4) | (((u[1] >> 6) & k2) << 4);  // m4..m7
  u[1] = (u[2] & k4) | (((u[0] >> 6) & k2) << 4);         // sc4..sc7
  u[2] = m03;                                             // m0..m3
  u[0] &= k6;                                             // sc0..sc3
  std::memcpy(out16, u, 16);
}

// sum_j m_j * (bsums[2j] + bsums[2j + 1]); m: the 8 mins as i32 lanes
inline int32_t k4_min_sum(__m256i m, const int16_t* bsums) {
  const __m256i pairs = _mm256_madd_epi16(load256(bsums), _mm256_set1_epi16(1));
  return hsum_i(_mm256_mullo_epi32(pairs, m));
}

// Q4_K / Q5_K: per 64 values c, sub-block 2c is the low nibbles of
// qs[32c .. 32c + 32), sub-block 2c + 1 the high ones; Q5_K's fifth bits are
// bits 2c and 2c + 1 of qh[l].
template <class Ops, bool k5, class B>
struct K45 {
  template <size_t N>
  static void dot(const void* row, const void* acts, size_t stride, size_t nb, float* out) {
    const auto* w = static_cast<const B*>(row);
    const ActQ8K* a[N];
    token_acts(acts, stride, a);
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc[N];
    float acc_min[N];
    for (size_t k = 0; k < N; ++k) acc[k] = _mm256_setzero_ps(), acc_min[k] = 0.0f;
    for (size_t i = 0; i < nb; ++i) {
      alignas(16) uint8_t sm[16];
      k4_unpack_scales(w[i].scales, sm);
      __m256i isum[N];
      for (size_t k = 0; k < N; ++k) isum[k] = _mm256_setzero_si256();
      [[maybe_unused]] __m256i qh;
      if constexpr (k5) qh = load256(w[i].qh);
      for (int c = 0; c < 4; ++c) {
        const __m256i q = load256(w[i].qs + 32 * c);
        __m256i lo = _mm256_and_si256(q, low4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
        if constexpr (k5) {
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
        }
        const __m256i slo = _mm256_set1_epi16(sm[2 * c]), shi = _mm256_set1_epi16(sm[2 * c + 1]);
        for (size_t k = 0; k < N; ++k) {
          const __m256i plo = _mm256_maddubs_epi16(lo, load256(a[k][i].qs + 64 * c));
          const __m256i phi = _mm256_maddubs_epi16(hi, load256(a[k][i].qs + 64 * c + 32));
          isum[k] = Ops::madd_acc(isum[k], plo, slo);
          isum[k] = Ops::madd_acc(isum[k], phi, shi);
        }
      }
      const __m256i mins = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8)));
      const float dw = h2f(w[i].d), dmin = h2f(w[i].dmin);
      for (size_t k = 0; k < N; ++k) {
        const float dx = a[k][i].d;
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), _mm256_set1_ps(dw * dx), acc[k]);
        acc_min[k] += dmin * dx * float(k4_min_sum(mins, a[k][i].bsums));
      }
    }
    for (size_t k = 0; k < N; ++k) out[k] = hsum_f(acc[k]) - acc_min[k];
  }
};

// Q6_K: sum_k sc_k * (q . x - 32 * bsums_k) with q in [0, 63] unsigned.
template <class Ops>
struct Q6K {
  template <size_t N>
  static void dot(const void* row, const void* acts, size_t stride, size_t nb, float* out) {
    const auto* w = static_cast<const BlockQ6_K*>(row);
    const ActQ8K* a[N];
    token_acts(acts, stride, a);
    const __m256i low4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    __m256 acc[N];
    for (size_t k = 0; k < N; ++k) acc[k] = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; ++i) {
      __m256i isum[N];
      for (size_t k = 0; k < N; ++k) isum[k] = _mm256_setzero_si256();
      for (int hh = 0; hh < 2; ++hh) {
        const __m256i ql0 = load256(w[i].ql + 64 * hh), ql1 = load256(w[i].ql + 64 * hh + 32);
        const __m256i qh = load256(w[i].qh + 32 * hh);
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, three), 4));
        q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), three), 4));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), three), 4));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), three), 4));
        const int8_t* sc = w[i].scales + 8 * hh;
        for (int g = 0; g < 4; ++g) {
          const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * g + 1]), _mm_set1_epi16(sc[2 * g]));
          for (size_t k = 0; k < N; ++k) {
            const __m256i p = _mm256_maddubs_epi16(q[g], load256(a[k][i].qs + 128 * hh + 32 * g));
            isum[k] = Ops::madd_acc(isum[k], p, s);
          }
        }
      }
      // - 32 * sum_k sc_k * bsums_k
      const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i].scales)));
      const float dw = h2f(w[i].d);
      for (size_t k = 0; k < N; ++k) {
        const __m256i corr = _mm256_madd_epi16(load256(a[k][i].bsums), sc16);
        isum[k] = _mm256_sub_epi32(isum[k], _mm256_slli_epi32(corr, 5));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), _mm256_set1_ps(dw * a[k][i].d), acc[k]);
      }
    }
    for (size_t k = 0; k < N; ++k) out[k] = hsum_f(acc[k]);
  }
};

// The kernel of type t as F (BlockDot or BlockDotTokens) with dot step Ops.
template <class Ops, class F>
F x86_block_dot(DType t) {
  return low_bit_block_dot<Legacy, K45, Q6K, Ops, F>(t);
}

}  // namespace
}  // namespace defkv::quant::detail
