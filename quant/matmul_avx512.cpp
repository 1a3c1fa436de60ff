// AVX-512 matmul tiles (compiled with -mavx512f -mavx512bw -mavx512dq
// -mavx512vl -mf16c -mfma). The q8_0 tile uses VNNI (matmul_avx512vnni.cpp)
// when the CPU has it, else AVX2-style maddubs.
#include "simd/half_avx512.h"
#include "quant/matmul_tile.h"
#include "quant/q8_ops_x86.h"
#include "quant/block_dot_x86.h"

namespace defkv::quant::detail {

namespace {

// 16 zmm rows -> one zmm of row sums (replaces xsimd 8.1's haddp, whose
// AVX-512 version returns the sums in the wrong lanes).
template <>
struct HaddP<simd::detail::Avx512> {
  using B = xsimd::batch<float, simd::detail::Avx512>;
  static B run(const B* rows) {
    __m512 s[8], u[4];
    // [r.q0 r.q1 | r'.q0 r'.q1] + [r.q2 r.q3 | r'.q2 r'.q3] -> 8 partials of r, r'
    for (int i = 0; i < 8; ++i) {
      const __m512 a = rows[2 * i], b = rows[2 * i + 1];
      s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    // quarter j of u[i] = 4 partials of row 4i + j
    for (int i = 0; i < 4; ++i) {
      const __m512 a = s[2 * i], b = s[2 * i + 1];
      u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    // quarter j: [2 partials of row j, of row 4+j] and [.. row 8+j, row 12+j]
    const __m512 v0 = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 v1 = _mm512_add_ps(_mm512_shuffle_ps(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
    // lane 4j + m = sum of row 4m + j
    const __m512 w = _mm512_add_ps(_mm512_shuffle_ps(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_ps(v0, v1, _MM_SHUFFLE(3, 1, 3, 1)));
    // lane k = sum of row k: row k = 4m + j sits in lane 4j + m
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return B(_mm512_permutexvar_ps(idx, w));
  }
};

}  // namespace

void avx512vnni_q8_tile(const Matrix& w, const BlockQ8x* xq, float* y, size_t ldy, size_t r0,
                        size_t r1, size_t t0, size_t t1);
BlockDot avx512vnni_low_bit_dot(DType t);
BlockDotTokens avx512vnni_low_bit_dot_tokens(DType t);

// 32 zmm registers: 4x4 accumulators.
const MatmulTiles& avx512_tiles() {
  static const MatmulTiles t{
      simd::cpu_features().avx512_vnni ? "avx512-vnni" : "avx512",
      &float_tile<simd::detail::Avx512, 4, 4>,
      simd::cpu_features().avx512_vnni ? &avx512vnni_q8_tile : &Q8Tile<Q8OpsMaddubs, 4, 4>::tile,
      simd::cpu_features().avx512_vnni ? &avx512vnni_low_bit_dot : &x86_block_dot<DotOpsAvx2, BlockDot>,
      simd::cpu_features().avx512_vnni ? &avx512vnni_low_bit_dot_tokens : &x86_block_dot<DotOpsAvx2, BlockDotTokens>};
  return t;
}

}  // namespace defkv::quant::detail
