// Scalar reference kernels (defkv::simd::scalar): the fallback table and the
// test oracle for every ISA. Reductions accumulate in double so the oracle is
// more accurate than any vector variant it is compared against.
#pragma once

#include "simd/simd.h"

namespace defkv::simd::scalar {

float dot(const float* a, const float* b, size_t n);
float dot_f16(const float* a, const uint16_t* b, size_t n);
void axpy(float alpha, const float* x, float* y, size_t n);
void axpy_f16(float alpha, const uint16_t* x, float* y, size_t n);
void scale(float* x, float alpha, size_t n);
void rmsnorm(float* out, const float* x, const float* w, size_t n, float eps);
float softmax(float* x, size_t n);
void silu_mul(float* gate, const float* up, size_t n);
void max_inplace(float* acc, const float* x, size_t n);
void add_inplace(float* acc, const float* x, size_t n);
float reduce_max(const float* x, size_t n);
float reduce_sum(const float* x, size_t n);
float reduce_abs_sum(const float* x, size_t n);
void f16_to_f32(const uint16_t* x, float* y, size_t n);
void f32_to_f16(const float* x, uint16_t* y, size_t n);
void bf16_to_f32(const uint16_t* x, float* y, size_t n);
void f32_to_bf16(const float* x, uint16_t* y, size_t n);
void window_logits(const float* q, size_t m, const float* k, size_t n, size_t d, float* out,
                   size_t ldo, float* panels);
void window_logits_packed(const float* q, size_t m, const float* panels, size_t n, size_t d,
                          float* out, size_t ldo);
float window_softmax(float* x, size_t n, size_t n_valid, float scale);
void avg_pool(const float* x, float* out, size_t n, size_t k);
void pool_rescale_max(const float* x, float* tmp, float* acc, size_t n, size_t k);
void clamp_min(float* x, float lo, size_t n);
void vnorm_weight(float* x, float* w_out, const float* num, const float* den, size_t n);
void attn_softmax_step(float* st, size_t n, size_t m, size_t ldst, float* row_max, float* row_sum,
                       float* corr);
void attn_accumulate(const float* pt, size_t m, size_t n, size_t ldpt, const float* v, size_t ldv,
                     size_t d, const float* corr, float* o, size_t ldo);

const Kernels& table();

}  // namespace defkv::simd::scalar
