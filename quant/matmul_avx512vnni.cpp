// AVX-512 VNNI q8_0 tile (compiled with the AVX-512 flags plus -mavx512vnni;
// called only when cpu_features().avx512_vnni).
#include "quant/matmul_tile.h"
#include "quant/q8_ops_x86.h"

namespace defkv::quant::detail {

void avx512vnni_q8_tile(const Matrix& w, const BlockQ8x* xq, float* y, size_t ldy, size_t r0,
                        size_t r1, size_t t0, size_t t1) {
  Q8Tile<Q8OpsVnni, 4, 4>::tile(w, xq, y, ldy, r0, r1, t0, t1);
}

}  // namespace defkv::quant::detail
