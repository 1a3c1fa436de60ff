// Load-time packed K-quant weights (internal to quant/).
//
// Q4_K: rows in groups of
// kPackRows = 16, and per (group, 256-column super-block) kQ4KPackedBytes:
//   qs   [8 sub-blocks][4][16 rows][4]  one byte holds two quants: low nibble
//        W[r, 32j + 4k + i], high nibble W[r, 32j + 16 + 4k + i] (2048 B)
//   sc   [8][16] u8  6-bit scales of sub-block j, row r    (128 B)
//   mn   [4][16 rows][2] u8  6-bit mins of sub-blocks 2p, 2p + 1 (128 B)
//   d    [16] fp16, dmin [16] fp16                         (64 B)
// 2368 B per 16 x 256 weights, the size of the 16 original Q4_K blocks (+64 B).
// Rows past W.rows are zero (zero scales).
//
// Q5_K: the Q4_K layout with the fifth bits after the nibbles, kQ5KPackedBytes:
//   qs   as Q4_K (the low 4 bits)                           (2048 B)
//   qh   [8 sub-blocks][16 rows][4]  bit k: the fifth bit of column 32j + 4k + i,
//        bit 4 + k: of column 32j + 16 + 4k + i (k < 4)    (512 B)
//   sc, mn, d, dmin as Q4_K                                 (320 B)
// 2880 B per 16 x 256 weights (16 Q5_K blocks: 2816 B).
//
// Q6_K: the same groups; per (group, super-block) kQ6KPackedBytes:
//   nib  [8 chunks of 32 cols][4][16 rows][4]  low 4 bits: low nibble column
//        32j + 4k + i, high nibble 32j + 16 + 4k + i           (2048 B)
//   hb   [8][2][16][4]  top 2 bits: zmm h holds columns 32j + 16h + 4s + i
//        (s < 4) in bits 2s, 2s + 1                             (1024 B)
//   scp  [8][16 rows][2] int8  the scales of the 16-column sub-blocks 2j, 2j + 1 (256 B)
//   d    [16] fp16, then 32 B of padding (64-byte multiple)
// 3392 B per 16 x 256 weights (16 Q6_K blocks: 3360 B). Quants are 0..63;
// the -32 is applied through the activation block sums.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"
#include "quant/matmul_isa.h"

namespace defkv::quant::detail {

constexpr size_t kQ4KQsBytes = 2048;
constexpr size_t kQ4KScalesOffset = kQ4KQsBytes;
constexpr size_t kQ4KMinsOffset = kQ4KScalesOffset + 128;
constexpr size_t kQ4KDOffset = kQ4KMinsOffset + 128;
constexpr size_t kQ4KDminOffset = kQ4KDOffset + 32;
constexpr size_t kQ4KPackedBytes = kQ4KDminOffset + 32;
static_assert(kQ4KPackedBytes % 64 == 0);

constexpr size_t kQ5KQhOffset = kQ4KQsBytes;
constexpr size_t kQ5KScalesOffset = kQ5KQhOffset + 512;
constexpr size_t kQ5KMinsOffset = kQ5KScalesOffset + 128;
constexpr size_t kQ5KDOffset = kQ5KMinsOffset + 128;
constexpr size_t kQ5KDminOffset = kQ5KDOffset + 32;
constexpr size_t kQ5KPackedBytes = kQ5KDminOffset + 32;
static_assert(kQ5KPackedBytes % 64 == 0);

constexpr size_t kQ6KHbOffset = 2048;
constexpr size_t kQ6KScalesOffset = kQ6KHbOffset + 1024;
constexpr size_t kQ6KDOffset = kQ6KScalesOffset + 256;
constexpr size_t kQ6KPackedBytes = kQ6KDOffset + 64;
static_assert(kQ6KPackedBytes % 64 == 0);

// Bytes of the packed copy of a [rows, cols] Q4_K / Q5_K / Q6_K matrix.
size_t k_packed_bytes(DType t, size_t rows, size_t cols);
// Writes the packed copy of w (Q4_K / Q5_K / Q6_K) into out (k_packed_bytes, 64-byte aligned).
void pack_k(const Matrix& w, uint8_t* out);

// y[t*ldy + r] for rows of groups [g0, g1) (clipped to rows), tokens [t0, t1);
// x: Q8_K activations [n_tokens, nsb]. packed_q4k_avx512vnni.cpp.
void avx512vnni_packed_q6k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1);
void avx512vnni_packed_q5k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1);
void avx512vnni_packed_q4k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1);

// quantize_acts for the K-quants (Q8_K blocks), bit-identical, with AVX-512
// (packed_q4k_avx512vnni.cpp; only where simd::cpu_features().avx512).
void avx512_quantize_q8k(const float* x, ActQ8K* y, size_t nb);

}  // namespace defkv::quant::detail
