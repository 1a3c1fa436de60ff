// ggml's 4/5/6-bit block layouts (bit-compatible with ggml-common.h), their
// dequantisation and reference quantisers, the int8 activation blocks they
// are multiplied with, and the scalar block dot products every SIMD kernel is
// checked against. Values are `d * q` (+ `m` for the _1 types, - `dmin * m`
// for the K-quants with mins); all scales are fp16 unless noted.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/quant.h"

namespace defkv::quant {

constexpr size_t kQK = 32;    // legacy block
constexpr size_t kQK_K = 256;  // K-quant super-block

// Q4_0: x[j] = d * ((qs[j] & 15) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8), j < 16.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);
// Q4_1: as Q4_0 without the -8 offset, plus m.
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);
// Q5_0: the fifth bit of value j is bit j of the little-endian u32 qh;
// x = d * (q5 - 16).
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);
// Q5_1: as Q5_0 without the -16 offset, plus m.
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

// Q4_K: 8 sub-blocks of 32; sub-block j has 6-bit scale sc_j and min m_j
// packed in scales[12] (see k4_scale_min); x = d * sc_j * q - dmin * m_j.
// Values 64c + l and 64c + 32 + l (l < 32) are the low and high nibble of qs[32c + l].
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);
// Q5_K: Q4_K plus a fifth bit: value 64c + l takes bit 2c of qh[l], value
// 64c + 32 + l bit 2c + 1.
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 176);
// Q6_K: 16 sub-blocks of 16 with int8 scales; x = d * scales[k] * (q6 - 32).
// In half h (128 values, ql + 64h, qh + 32h), for l < 32: value l is ql[l]
// low nibble + qh[l] bits 0-1, l + 32 ql[l + 32] low + bits 2-3, l + 64 ql[l]
// high + bits 4-5, l + 96 ql[l + 32] high + bits 6-7.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210);

// The 6-bit scale and min of sub-block j < 8 of a Q4_K / Q5_K block.
inline void k4_scale_min(size_t j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Row conversion for the low-bit types (n a multiple of block_elems(t)).
// Dequantisation is ggml's dequantize_row_* (same float operations).
void dequantize_low_bit(DType t, const void* row, float* y, size_t n);
void quantize_low_bit(DType t, const float* x, void* row, size_t n);

// ---- activations ----------------------------------------------------------------------
// Activations of a low-bit product, quantised per block as ggml pairs them:
//   legacy types: ActQ8 per 32 values (ggml's Q8_0 / Q8_1 with an fp32 d):
//     d = amax / 127, q = nearest(x / d), s = d * sum(q) (used by _1 types);
//   K-quants: ActQ8K per 256 values (ggml's Q8_K): d = max / -127 with max the
//     value of largest magnitude, q = min(127, nearest(x / d)), bsums[k] = the
//     sum of q over values 16k .. 16k + 15.
struct ActQ8 {
  float d, s;
  int8_t qs[kQK];
};
struct ActQ8K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
// The activation block type of weight type t: bytes per block and values per block.
size_t act_block_bytes(DType t);
// Quantises n values (n % block_elems(t) == 0) into act blocks for weight type t.
void quantize_acts(DType t, const float* x, void* acts, size_t n);

// One weight row (nb blocks of type t) . quantised activations (nb act blocks),
// with exact int32 sums inside each block (scalar reference for every kernel).
float block_dot_ref(DType t, const void* row, const void* acts, size_t nb);

}  // namespace defkv::quant
