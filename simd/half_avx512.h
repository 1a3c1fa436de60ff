// fp16 / bf16 <-> fp32 vector loads and stores for xsimd batches, AVX-512.
// Shared by simd/ and quant/ translation units compiled with the same flags
// (and only those: an inline function built for one ISA must never be linked
// into code that runs on another).
#pragma once

#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__) || !defined(__F16C__)
#error "half_avx512.h: include only from TUs built with the avx512 flags"
#endif

#include <immintrin.h>

#include <cstdint>
#include <xsimd/xsimd.hpp>

namespace defkv::simd::detail {

template <class A>
struct Half;

using Avx512 = xsimd::avx512bw;

template <>
struct Half<Avx512> {
  using B = xsimd::batch<float, Avx512>;
  static B load_f16(const uint16_t* p) {
    return B(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  }
  static void store_f16(uint16_t* p, B v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(__m512(v), _MM_FROUND_TO_NEAREST_INT));
  }
  static B load_bf16(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return B(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  static void store_bf16(uint16_t* p, B v) {
    const __m512 f = __m512(v);
    const __m512i x = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __m512i nan = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), r, nan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
};

}  // namespace defkv::simd::detail
