// x86 block dots for the low-bit types (256-bit integer vectors), one weight
// row . quantised activations, the same arithmetic as block_dot_ref (exact
// int32 sums per block, float per block). Written once over an Ops policy:
//   Ops::dot(u8 w, s8 x)        -> i32x8 whose lanes sum to w.x (4 products a lane)
//   Ops::madd_acc(acc, p16, s16) -> acc + pairwise i16 products (scales folded in)
// AVX2: maddubs + madd; AVX-512 VNNI (VL): vpdpbusd / vpdpwssd.
// Include only from a translation unit compiled with the matching flags.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

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
// Signed w . x via |w| . (x * sign(w)) (u8 x s8 as the instructions need; |w| <= 16).
template <class Ops>
inline __m256i signed_dot(__m256i w, __m256i x) {
  return Ops::dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

// ---- legacy 32-blocks x ActQ8 ---------------------------------------------------------

template <class Ops>
float dot_q4_0(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ4_0*>(row);
  const auto* a = static_cast<const ActQ8*>(acts);
  __m256 acc = _mm256_setzero_ps();
  for (size_t i = 0; i < nb; ++i) {
    const __m256i q = _mm256_sub_epi8(nibbles32(w[i].qs), _mm256_set1_epi8(8));
    const __m256i p = signed_dot<Ops>(q, load256(a[i].qs));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(w[i].d) * a[i].d), acc);
  }
  return hsum_f(acc);
}

template <class Ops>
float dot_q4_1(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ4_1*>(row);
  const auto* a = static_cast<const ActQ8*>(acts);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    const __m256i p = Ops::dot(nibbles32(w[i].qs), load256(a[i].qs));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(w[i].d) * a[i].d), acc);
    mins += h2f(w[i].m) * a[i].s;
  }
  return hsum_f(acc) + mins;
}

template <class Ops>
float dot_q5_0(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ5_0*>(row);
  const auto* a = static_cast<const ActQ8*>(acts);
  __m256 acc = _mm256_setzero_ps();
  for (size_t i = 0; i < nb; ++i) {
    const __m256i q5 = _mm256_or_si256(nibbles32(w[i].qs), fifth_bits(w[i].qh));
    const __m256i p = signed_dot<Ops>(_mm256_sub_epi8(q5, _mm256_set1_epi8(16)), load256(a[i].qs));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(w[i].d) * a[i].d), acc);
  }
  return hsum_f(acc);
}

template <class Ops>
float dot_q5_1(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ5_1*>(row);
  const auto* a = static_cast<const ActQ8*>(acts);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    const __m256i q5 = _mm256_or_si256(nibbles32(w[i].qs), fifth_bits(w[i].qh));
    const __m256i p = Ops::dot(q5, load256(a[i].qs));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(w[i].d) * a[i].d), acc);
    mins += h2f(w[i].m) * a[i].s;
  }
  return hsum_f(acc) + mins;
}

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

// sum_j m_j * (bsums[2j] + bsums[2j + 1])
inline int32_t k4_min_sum(const uint8_t* mins8, const int16_t* bsums) {
  const __m256i pairs = _mm256_madd_epi16(load256(bsums), _mm256_set1_epi16(1));
  const __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mins8)));
  return hsum_i(_mm256_mullo_epi32(pairs, m));
}

template <class Ops, bool k5>
float dot_k45(const void* row, const void* acts, size_t nb) {
  using B = std::conditional_t<k5, BlockQ5_K, BlockQ4_K>;
  const auto* w = static_cast<const B*>(row);
  const auto* a = static_cast<const ActQ8K*>(acts);
  const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  float acc_min = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    alignas(16) uint8_t sm[16];
    k4_unpack_scales(w[i].scales, sm);
    __m256i isum = _mm256_setzero_si256();
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
      const __m256i plo = _mm256_maddubs_epi16(lo, load256(a[i].qs + 64 * c));
      const __m256i phi = _mm256_maddubs_epi16(hi, load256(a[i].qs + 64 * c + 32));
      isum = Ops::madd_acc(isum, plo, _mm256_set1_epi16(sm[2 * c]));
      isum = Ops::madd_acc(isum, phi, _mm256_set1_epi16(sm[2 * c + 1]));
    }
    const float dx = a[i].d;
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(w[i].d) * dx), acc);
    acc_min += h2f(w[i].dmin) * dx * float(k4_min_sum(sm + 8, a[i].bsums));
  }
  return hsum_f(acc) - acc_min;
}

// Q6_K: sum_k sc_k * (q . x - 32 * bsums_k) with q in [0, 63] unsigned.
template <class Ops>
float dot_q6_K(const void* row, const void* acts, size_t nb) {
  const auto* w = static_cast<const BlockQ6_K*>(row);
  const auto* a = static_cast<const ActQ8K*>(acts);
  const __m256i low4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
  __m256 acc = _mm256_setzero_ps();
  for (size_t i = 0; i < nb; ++i) {
    __m256i isum = _mm256_setzero_si256();
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
        const __m256i p = _mm256_maddubs_epi16(q[g], load256(a[i].qs + 128 * hh + 32 * g));
        const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * g + 1]), _mm_set1_epi16(sc[2 * g]));
        isum = Ops::madd_acc(isum, p, s);
      }
    }
    // - 32 * sum_k sc_k * bsums_k
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i].scales)));
    const __m256i corr = _mm256_madd_epi16(load256(a[i].bsums), sc16);
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(corr, 5));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(w[i].d) * a[i].d), acc);
  }
  return hsum_f(acc);
}

template <class Ops>
BlockDot low_bit_dot_x86(DType t) {
  switch (t) {
    case DType::q4_0: return &dot_q4_0<Ops>;
    case DType::q4_1: return &dot_q4_1<Ops>;
    case DType::q5_0: return &dot_q5_0<Ops>;
    case DType::q5_1: return &dot_q5_1<Ops>;
    case DType::q4_K: return &dot_k45<Ops, false>;
    case DType::q5_K: return &dot_k45<Ops, true>;
    case DType::q6_K: return &dot_q6_K<Ops>;
    default: return nullptr;
  }
}

}  // namespace
}  // namespace defkv::quant::detail
