// Per-head value-projection L1 norms (DefensiveKV eviction, docs/eviction.md step 3):
//
//   l1[t, h] = sum_{r < E} | sum_{c < d} W[r, h*d + c] * v[t, (h/G)*d + c] |
//
// for an output projection W = W_o [E, H*d] (any quant::DType) and values
// v [n_tokens, Hkv*d] (f32), G = H / Hkv query heads per KV head. One call costs
// E*H*d*n_tokens multiply-adds (the work of one W_o matmul on the batch) plus
// one conversion of W to f32, row by row, never the whole matrix at once.
//
// Threads with OpenMP over rows of W (contiguous row ranges, one per thread,
// partial sums added in thread order: the result does not depend on timing).
// Two f32 paths, compiled per ISA (target_clones on x86-64 GCC):
//   - few tokens (decode): per row and head, d-long dot products;
//   - many tokens (prefill): tokens in vector lanes (v transposed once per
//     call to [Hkv, d, tokens]), 4 rows x 64 tokens per register block (then
//     32 and 16 for the tail), |y| accumulated lane-wise (no horizontal sums
//     in the inner loop).
// DEFKV_FORCE_SCALAR (simd::k().isa == scalar) selects a plain scalar loop.
// Accumulation is in f32 with the exact dequantised weights (no activation
// quantisation), so the result differs from a double reference only by float
// rounding: |err| <= ~(d + E) * 2^-24 * sum_r sum_c |W[r, h*d+c]| |v[c]|.
#pragma once

#include <cstddef>
#include <vector>

#include "quant/quant.h"

namespace defkv::quant {

// Grow-only scratch for value_proj_l1 (no allocation once it has seen the
// largest call; reserve it up front to avoid even the first one).
struct ValueNormScratch {
  std::vector<float> rows;  // [n_threads, kRowBlock, cols] f32 rows of W
  std::vector<float> vt;    // [Hkv, d, tokens_pad] transposed values (token-lane path)
  std::vector<float> part;  // [n_threads, H, tokens_pad] per-thread partial norms
  std::vector<float> l1;    // [tokens, H] per-query-head norms (value_norms)
  size_t bytes() const {
    return (rows.capacity() + vt.capacity() + part.capacity() + l1.capacity()) * sizeof(float);
  }
};

// Sizes `s` for calls with W of shape [rows, cols], n_head_kv KV heads of
// head_dim, up to max_tokens tokens and n_threads OpenMP threads.
void value_proj_l1_reserve(ValueNormScratch& s, size_t rows, size_t cols, size_t n_head_kv,
                           size_t head_dim, size_t max_tokens, size_t n_threads);

// l1[t*ldl1 + h] for t < n_tokens, h < H = w.cols / head_dim (see the file comment).
//   w: [E, H*d] ; v: [n_tokens, Hkv*d] with row stride ldv (>= Hkv*d) ;
//   l1: [n_tokens, H] with row stride ldl1 (>= H).
// Requirements: head_dim > 0 divides w.cols, n_head_kv divides H. Threads with
// omp_get_max_threads(); call from outside a parallel region.
void value_proj_l1(const Matrix& w, size_t n_head_kv, size_t head_dim, const float* v, size_t ldv,
                   size_t n_tokens, float* l1, size_t ldl1, ValueNormScratch& s);

// The norms eviction stores per KV entry (docs/eviction.md, step 3): the
// mean over the G query heads of each KV head's group,
//   out[t, hk] = (1/G) * sum_{g < G} l1[t, hk*G + g]
// with l1 from one value_proj_l1 call on W_o. The callers' single entry point.
//   wo: [E, H*d] (attn_output.weight) ; v: [n_tokens, Hkv*d] ; out: [n_tokens, Hkv].
void value_norms(const Matrix& wo, size_t n_head_kv, size_t head_dim, const float* v, size_t n_tokens, float* out,
                 ValueNormScratch& s);

}  // namespace defkv::quant
