// Matrix products y = x · Wᵀ over the weight formats, plus the scalar reference.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "simd/simd.h"

namespace defkv::quant {

namespace {

const uint8_t* row_ptr(const Matrix& w, size_t r) {
  return static_cast<const uint8_t*>(w.data) + r * row_bytes(w.type, w.cols);
}

void check_matmul(const char* where, const Matrix& w, size_t n_in, const float* x,
                  const float* y, size_t n_tokens, size_t ldy) {
  (void)row_bytes(w.type, w.cols);  // validates dtype and block alignment
  if (n_tokens == 0 || w.rows == 0) return;
  if (w.data == nullptr && w.cols != 0)
    throw std::invalid_argument(std::string(where) + ": weight matrix has no data");
  if ((x == nullptr && n_in != 0) || y == nullptr)
    throw std::invalid_argument(std::string(where) + ": null activation or output pointer");
  if (n_tokens > 1 && ldy < w.rows)
    throw std::invalid_argument(std::string(where) + ": ldy " + std::to_string(ldy) +
                                " smaller than the number of rows " + std::to_string(w.rows));
}

// Per-thread scratch that only ever grows (no allocation once warm).
float* scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// out[c] = W[row, c0 + c] for c < n, any c0 / n (not necessarily block aligned).
void dequant_range(DType t, const uint8_t* row, size_t c0, size_t n, float* out) {
  switch (t) {
    case DType::f32: std::memcpy(out, reinterpret_cast<const float*>(row) + c0, n * sizeof(float)); return;
    case DType::f16: simd::k().f16_to_f32(reinterpret_cast<const uint16_t*>(row) + c0, out, n); return;
    case DType::bf16: simd::k().bf16_to_f32(reinterpret_cast<const uint16_t*>(row) + c0, out, n); return;
    case DType::q8_0: {
      const auto* blocks = reinterpret_cast<const BlockQ8_0*>(row);
      size_t c = 0;
      while (c < n) {
        const size_t col = c0 + c;
        const BlockQ8_0& b = blocks[col / kQ8_0Block];
        const float d = simd::f16_to_f32(b.d);
        const size_t j0 = col % kQ8_0Block;
        const size_t m = std::min(kQ8_0Block - j0, n - c);
        for (size_t j = 0; j < m; ++j) out[c + j] = d * float(b.qs[j0 + j]);
        c += m;
      }
      return;
    }
  }
}

// Simple portable row · x for one weight row (used until per-ISA paths exist).
float row_dot(DType t, const uint8_t* row, const float* x, size_t n, float* tmp) {
  const simd::Kernels& kk = simd::k();
  switch (t) {
    case DType::f32: return kk.dot(reinterpret_cast<const float*>(row), x, n);
    case DType::f16: return kk.dot_f16(x, reinterpret_cast<const uint16_t*>(row), n);
    case DType::bf16:
      kk.bf16_to_f32(reinterpret_cast<const uint16_t*>(row), tmp, n);
      return kk.dot(tmp, x, n);
    case DType::q8_0: {
      const auto* blocks = reinterpret_cast<const BlockQ8_0*>(row);
      float acc = 0.0f;
      for (size_t b = 0; b < n / kQ8_0Block; ++b) {
        const float* xb = x + b * kQ8_0Block;
        float s = 0.0f;
        for (size_t j = 0; j < kQ8_0Block; ++j) s += float(blocks[b].qs[j]) * xb[j];
        acc += simd::f16_to_f32(blocks[b].d) * s;
      }
      return acc;
    }
  }
  return 0.0f;
}

}  // namespace

void matmul(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy) {
  check_matmul("matmul", w, w.cols, x, y, n_tokens, ldy);
  if (n_tokens == 0 || w.rows == 0) return;
  const size_t n = w.cols;
  const auto rows = static_cast<long long>(w.rows);
#pragma omp parallel for schedule(static)
  for (long long r = 0; r < rows; ++r) {
    float* tmp = w.type == DType::bf16 ? scratch(n) : nullptr;
    const uint8_t* wr = row_ptr(w, size_t(r));
    for (size_t t = 0; t < n_tokens; ++t) y[t * ldy + size_t(r)] = row_dot(w.type, wr, x + t * n, n, tmp);
  }
}

void matmul_cols(const Matrix& w, size_t col0, size_t n_cols, const float* x, float* y,
                 size_t n_tokens, size_t ldy) {
  check_matmul("matmul_cols", w, n_cols, x, y, n_tokens, ldy);
  if (col0 > w.cols || n_cols > w.cols - col0)
    throw std::out_of_range("matmul_cols: columns [" + std::to_string(col0) + ", " +
                            std::to_string(col0 + n_cols) + ") outside the matrix (cols " +
                            std::to_string(w.cols) + ")");
  if (n_tokens == 0 || w.rows == 0) return;
  const auto rows = static_cast<long long>(w.rows);
  const bool parallel = w.rows * n_cols * n_tokens >= (1u << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (long long r = 0; r < rows; ++r) {
    float* wc = scratch(n_cols);
    dequant_range(w.type, row_ptr(w, size_t(r)), col0, n_cols, wc);
    for (size_t t = 0; t < n_tokens; ++t)
      y[t * ldy + size_t(r)] = simd::k().dot(wc, x + t * n_cols, n_cols);
  }
}

void matmul_ref(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy) {
  check_matmul("matmul_ref", w, w.cols, x, y, n_tokens, ldy);
  const size_t n = w.cols;
  std::vector<double> wr(n);
  for (size_t r = 0; r < w.rows; ++r) {
    const uint8_t* row = row_ptr(w, r);
    for (size_t c = 0; c < n; ++c) {
      switch (w.type) {
        case DType::f32: wr[c] = reinterpret_cast<const float*>(row)[c]; break;
        case DType::f16: wr[c] = simd::f16_to_f32(reinterpret_cast<const uint16_t*>(row)[c]); break;
        case DType::bf16: wr[c] = simd::bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[c]); break;
        case DType::q8_0: {
          const BlockQ8_0& b = reinterpret_cast<const BlockQ8_0*>(row)[c / kQ8_0Block];
          wr[c] = double(simd::f16_to_f32(b.d)) * double(b.qs[c % kQ8_0Block]);
          break;
        }
      }
    }
    for (size_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * n;
      double acc = 0.0;
      for (size_t c = 0; c < n; ++c) acc += wr[c] * double(xt[c]);
      y[t * ldy + r] = float(acc);
    }
  }
}

}  // namespace defkv::quant
