// Per-ISA matmul tiles (internal to quant/). The driver in matmul.cpp owns
// threading, scratch and activation quantisation; an ISA file only computes a
// tile of outputs. Each table is defined in its own translation unit compiled
// with that ISA's flags; use it only after simd::cpu_features() allows it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/quant.h"

namespace defkv::quant::detail {

// One block of quantised activations for the int8 paths: x[j] ~= d * qs[j].
// (Like ggml's block_q8_0 but with an fp32 scale: activations are quantised
// on the fly, never stored.)
struct BlockQ8x {
  float d;
  int8_t qs[kQ8_0Block];
};
static_assert(sizeof(BlockQ8x) == 36);

// Quantise n floats (n % 32 == 0) into n/32 activation blocks: d = amax/127,
// qs = nearest integer of x/d; a block holding NaN or Inf gets d = NaN and
// qs = 0. Portable; defined in matmul.cpp.
void quantize_activations(const float* x, BlockQ8x* xq, size_t n);

// One low-bit weight row (nb blocks) . quantised activations (nb blocks of
// the type's activation format, see quant/blocks.h).
using BlockDot = float (*)(const void* row, const void* acts, size_t nb);
// The same for kBlockDotTokens tokens at once (the row unpacked once):
// out[k] = row . the act blocks at acts + k * stride bytes.
// 4: on AVX2 twice the one-token speed for the K-quants, and 8 gained only
// 0-7 % more (docs/quantized-weights.md).
constexpr size_t kBlockDotTokens = 4;
using BlockDotTokens = void (*)(const void* row, const void* acts, size_t stride, size_t nb, float* out);

struct MatmulTiles {
  const char* name;
  // y[t*ldy + r] = W[r, :] . x[t, :] for r in [r0, r1), t in [t0, t1);
  // W is f32 / f16 / bf16; x rows are W.cols floats apart.
  void (*float_tile)(const Matrix& w, const float* x, float* y, size_t ldy, size_t r0,
                     size_t r1, size_t t0, size_t t1);
  // The same for q8_0 weights against quantised activations (W.cols/32 blocks
  // per token).
  void (*q8_tile)(const Matrix& w, const BlockQ8x* xq, float* y, size_t ldy, size_t r0,
                  size_t r1, size_t t0, size_t t1);
  // This ISA's block dot for a low-bit type, or nullptr (then the scalar one
  // is used). May itself be nullptr.
  BlockDot (*low_bit_dot)(DType t);
  // This ISA's kBlockDotTokens-token block dot for t (batches), or nullptr.
  BlockDotTokens (*low_bit_dot_tokens)(DType t) = nullptr;
};

#if DEFKV_SIMD_X86
const MatmulTiles& avx2_tiles();    // matmul_avx2.cpp   (AVX2 maddubs int8, F16C)
const MatmulTiles& avx512_tiles();  // matmul_avx512.cpp (VNNI vpdpbusd if present, else maddubs)
#endif
#if DEFKV_SIMD_NEON
const MatmulTiles& neon_tiles();          // matmul_neon.cpp (ARMv8.0: widening int8 multiplies)
const MatmulTiles& neon_dotprod_tiles();  // matmul_neon_dotprod.cpp (ARMv8.2 sdot)
#endif

// Packed q8_0 (see quant::Packed): int8 activations split into quants, fp32
// scales and the vpdpbusd offset correction -128 * sum(qs) per block.
struct PackedActs {
  const int8_t* qs;     // [n_tokens, cols]
  const float* d;       // [n_tokens, cols/32]
  const int32_t* corr;  // [n_tokens, cols/32]
};
constexpr size_t kPackRows = 16;
// y[t*ldy + r] for rows of groups [g0, g1) (clipped to rows), tokens [t0, t1).
//   qs: packed quants [groups, nb, 8, 16, 4] u8; d: scales [groups, nb, 16] fp16
void avx512vnni_packed_q8_tile(const uint8_t* qs, const uint16_t* d, size_t rows, size_t nb,
                               const PackedActs& x, float* y, size_t ldy, size_t g0, size_t g1,
                               size_t t0, size_t t1);
// One token's activations [cols] quantised exactly as quantize_activations
// does, split into quants [cols], scales [cols/32] and the vpdpbusd
// correction -128 * sum(q) [cols/32] (matmul_avx512vnni.cpp).
void avx512vnni_quantize_packed_acts(const float* x, size_t cols, int8_t* qs, float* d,
                                     int32_t* corr);

// Columns per block of the packed 4/5-bit types (quant/packed_legacy.h).
constexpr size_t kQ4_0Cols = 32;

// Packed f16 / bf16 (see quant::Packed): panels of kPackRowsF16 rows, per
// column the panel's 16 fp16 (bf16 when is_bf16) values (lane = row):
// w[panel, col, 16], 64-byte aligned.
constexpr size_t kPackRowsF16 = 16;
// y[t*ldy + r] for rows of panels [p0, p1) (clipped to rows), tokens [t0, t1);
// x: [n_tokens, cols] f32; f32 FMAs on the exact weights.
// packed_f16_avx512.cpp (AVX-512 + F16C).
void avx512_packed_f16_tile(const uint16_t* w, bool is_bf16, size_t rows, size_t cols, const float* x, float* y,
                            size_t ldy, size_t p0, size_t p1, size_t t0, size_t t1);
// The same product for batches on AVX512-BF16, weights (f16 panels, or bf16
// panels when is_bf16) and activations rounded to bf16 (RNE), products summed
// in f32 by vdpbf16ps.  packed_f16_bf16_avx512.cpp.
//   xb: [n_tokens, ldxb] bf16, ldxb even, columns [cols, ldxb) zero.
//   next: the panels the calling thread will likely convert next (its next
//   work item); their first K-block is prefetched into L2 during this item's
//   last one (w == nullptr: none).
constexpr size_t kBf16MicroTokens = 6;  // its register tile's token count
struct Bf16Next {
  const uint16_t* w = nullptr;
  size_t cols = 0, p0 = 0, p1 = 0;
};
void avx512bf16_packed_tile(const uint16_t* w, bool is_bf16, size_t rows, size_t cols, const uint16_t* xb,
                            size_t ldxb, float* y, size_t ldy, size_t p0, size_t p1, size_t t0, size_t t1,
                            const Bf16Next& next);

}  // namespace defkv::quant::detail
