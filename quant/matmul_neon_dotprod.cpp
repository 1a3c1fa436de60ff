// AArch64 NEON int8 tiles on the ARMv8.2 dot product (sdot), compiled with
// -march=armv8.2-a+dotprod and chosen at run time (HWCAP_ASIMDDP, see
// simd::cpu_features). Float weights use the baseline NEON tiles.
#include "quant/block_dot_neon.h"
#include "quant/matmul_tile.h"

#if !defined(__ARM_FEATURE_DOTPROD)
#error "matmul_neon_dotprod.cpp needs -march=armv8.2-a+dotprod"
#endif

namespace defkv::quant::detail {

const MatmulTiles& neon_dotprod_tiles() {
  static const MatmulTiles t{"neon_dotprod", neon_tiles().float_tile, &Q8Tile<Q8OpsNeon<Sdot>, 4, 4>::tile,
                             &neon_block_dot<Sdot, BlockDot>, &neon_block_dot<Sdot, BlockDotTokens>};
  return t;
}

}  // namespace defkv::quant::detail
