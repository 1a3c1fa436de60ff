// Load-time packed 32-block weights (internal to quant/): Q8_0, Q4_0, Q4_1,
// Q5_0 and Q5_1 share one layout of separate planes. Rows are in groups of
// kPackRows = 16; nb = cols / 32; every plane is indexed [group][block]:
//   qs  Q8_0: [8][16 rows][4] u8 = q + 128 of column 4k + i       (512 B per g, b)
//       Q4_x / Q5_x: [4][16 rows][4], byte (k, r, i) = level of column 4k + i
//       | level of column 16 + 4k + i << 4 (the low 4 bits of Q5_x) (256 B)
//   qh  Q5_x only: 8 u64 masks, bit 4r + i of mask 2k = the fifth bit of
//       row r, column 4k + i, of mask 2k + 1 of column 16 + 4k + i (64 B)
//   d   [16 rows] fp16 block scales                                 (32 B)
//   m   Q4_1 / Q5_1 only: [16 rows] fp16 block mins                 (32 B)
// Rows past W.rows (last group) are zero with zero scales and mins. The size
// is the original tensor's (plus < 16 rows of padding).
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"
#include "quant/matmul_isa.h"

namespace defkv::quant::detail {

// The planes of one packed matrix (qh, m null where the type has none).
struct LegacyPlanes {
  const uint8_t* qs;
  const uint64_t* qh;
  const uint16_t* d;
  const uint16_t* m;
};

// True for the types packed this way.
bool is_legacy_packed(DType t);
// Bytes of the packed copy of a [rows, cols] matrix of type t.
size_t legacy_packed_bytes(DType t, size_t rows, size_t cols);
// The planes inside a packed copy of `rows` rows and nb blocks per row.
LegacyPlanes legacy_planes(DType t, const uint8_t* base, size_t rows, size_t nb);
// Writes the packed copy of w into out (legacy_packed_bytes, 64-byte aligned).
void pack_legacy(const Matrix& w, uint8_t* out);

// y[t*ldy + r] for rows of groups [g0, g1) (clipped to rows), tokens [t0, t1),
// with the packed q8_0 activations (packed_legacy_avx512vnni.cpp).
void avx512vnni_packed_q4_0_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1);
void avx512vnni_packed_q4_1_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1);
void avx512vnni_packed_q5_0_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1);
void avx512vnni_packed_q5_1_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1);

}  // namespace defkv::quant::detail
