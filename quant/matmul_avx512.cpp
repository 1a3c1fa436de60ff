// AVX-512 matmul tiles (compiled with -mavx512f -mavx512bw -mavx512dq
// -mavx512vl -mf16c -mfma). The q8_0 tile uses VNNI (matmul_avx512vnni.cpp)
// when the CPU has it, else AVX2-style maddubs.
#include "simd/half_avx512.h"
#include "quant/matmul_tile.h"
#include "quant/q8_ops_x86.h"

namespace defkv::quant::detail {

void avx512vnni_q8_tile(const Matrix& w, const BlockQ8x* xq, float* y, size_t ldy, size_t r0,
                        size_t r1, size_t t0, size_t t1);

// 32 zmm registers: 4x4 accumulators.
const MatmulTiles& avx512_tiles() {
  static const MatmulTiles t{
      simd::cpu_features().avx512_vnni ? "avx512-vnni" : "avx512",
      &float_tile<simd::detail::Avx512, 4, 4>,
      simd::cpu_features().avx512_vnni ? &avx512vnni_q8_tile : &Q8Tile<Q8OpsMaddubs, 4, 4>::tile};
  return t;
}

}  // namespace defkv::quant::detail
