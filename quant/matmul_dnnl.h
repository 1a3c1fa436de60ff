// oneDNN matmul for large batches (internal to quant/). Without
// DEFKV_HAVE_DNNL these are stubs that decline.
#pragma once

#include <cstddef>

#include "quant/quant.h"

namespace defkv::quant::detail {

bool dnnl_available();
// True where oneDNN was measured faster than the SIMD tiles for this shape.
bool dnnl_preferred(const Matrix& w, size_t n_tokens);
// Computes y = x . W^T with oneDNN; returns false (doing nothing) when the
// dtype is not supported (q8_0) or oneDNN is not built in.
bool dnnl_matmul(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy);

}  // namespace defkv::quant::detail
