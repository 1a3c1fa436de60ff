// AVX2 + FMA + F16C matmul tiles (compiled with -mavx2 -mfma -mf16c).
#include "simd/half_avx2.h"
#include "quant/matmul_tile.h"
#include "quant/q8_ops_x86.h"
#include "quant/block_dot_x86.h"

namespace defkv::quant::detail {

// 16 ymm registers: 4x2 float accumulators, 2x2 int8 blocks.
const MatmulTiles& avx2_tiles() {
  static const MatmulTiles t{"avx2", &float_tile<simd::detail::Avx2, 4, 2>,
                             &Q8Tile<Q8OpsMaddubs, 2, 2>::tile, &x86_block_dot<DotOpsAvx2, BlockDot>,
                             &x86_block_dot<DotOpsAvx2, BlockDotTokens>};
  return t;
}

}  // namespace defkv::quant::detail
