// int8 block dot products for the x86 q8_0 tiles (see Q8Tile in matmul_tile.h).
// Sign trick: w.x = |w| . (x * sign(w)), an unsigned x signed product as the
// instructions require; |w|, |x| <= 127 so no lane saturates.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace defkv::quant::detail {
namespace {

struct Q8OpsBase256 {
  using I = __m256i;
  using F = __m256;
  static F zero() { return _mm256_setzero_ps(); }
  static I load(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I abs(I w) { return _mm256_sign_epi8(w, w); }
  static float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
  static F fma(F a, float s, F acc) { return _mm256_fmadd_ps(a, _mm256_set1_ps(s), acc); }
  static float hsum(F v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
};

// AVX2: maddubs (u8 x s8 -> pairs of i16) then madd with ones (-> i32).
struct Q8OpsMaddubs : Q8OpsBase256 {
  static F block_dot(I wa, I w, const int8_t* x) {
    const __m256i xs = _mm256_sign_epi8(load(x), w);
    const __m256i p16 = _mm256_maddubs_epi16(wa, xs);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
  }
};

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
// AVX-512 VNNI: vpdpbusd does u8 x s8 -> i32 in one instruction.
struct Q8OpsVnni : Q8OpsBase256 {
  static F block_dot(I wa, I w, const int8_t* x) {
    const __m256i xs = _mm256_sign_epi8(load(x), w);
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wa, xs));
  }
};
#endif

}  // namespace
}  // namespace defkv::quant::detail
