// AArch64 NEON matmul tiles for the baseline ARMv8.0 core (Cortex-A53 / A72
// class): float tiles, and int8 block dots by widening multiplies.
#include "simd/half_neon.h"
#include "quant/block_dot_neon.h"
#include "quant/matmul_tile.h"

namespace defkv::quant::detail {

// 32 q registers: 4x4 accumulators.
const MatmulTiles& neon_tiles() {
  static const MatmulTiles t{"neon", &float_tile<simd::detail::Neon, 4, 4>,
                             &Q8Tile<Q8OpsNeon<Widen>, 4, 4>::tile, &neon_block_dot<Widen, BlockDot>,
                             &neon_block_dot<Widen, BlockDotTokens>};
  return t;
}

}  // namespace defkv::quant::detail
