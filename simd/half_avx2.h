// fp16 / bf16 <-> fp32 vector loads and stores for xsimd batches, AVX2 + F16C.
// Shared by simd/ and quant/ translation units compiled with the same flags
// (and only those: an inline function built for one ISA must never be linked
// into code that runs on another).
#pragma once

#if !defined(__AVX2__) || !defined(__F16C__) || !defined(__FMA__) || defined(__AVX512F__)
#error "half_avx2.h: include only from TUs built with exactly -mavx2 -mfma -mf16c"
#endif

#include <immintrin.h>

#include <cstdint>
#include <xsimd/xsimd.hpp>

namespace defkv::simd::detail {

template <class A>
struct Half;

using Avx2 = xsimd::fma3<xsimd::avx2>;

template <>
struct Half<Avx2> {
  using B = xsimd::batch<float, Avx2>;
  static B load_f16(const uint16_t* p) {
    return B(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void store_f16(uint16_t* p, B v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(__m256(v), _MM_FROUND_TO_NEAREST_INT));
  }
  static B load_bf16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return B(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  static void store_bf16(uint16_t* p, B v) {
    const __m256 f = __m256(v);
    const __m256i x = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
};

}  // namespace defkv::simd::detail
