// Matrix products y = x . W^T: the driver (threading, scratch, activation
// quantisation, implementation choice), the portable scalar path, and the
// double-precision reference.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/blocks.h"
#include "quant/matmul_dnnl.h"
#include "quant/matmul_isa.h"
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

// Per-thread scratch that only ever grows (no allocation once warm); Slot
// tells apart buffers that are live at the same time.
template <class T, int Slot = 0>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
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
    default: {
      // low-bit blocks: dequantise the blocks covering [c0, c0 + n), then copy
      const size_t be = block_elems(t), b0 = c0 / be, b1 = (c0 + n + be - 1) / be;
      float* tmp = scratch<float, 3>((b1 - b0) * be);
      dequantize_low_bit(t, row + b0 * block_bytes(t), tmp, (b1 - b0) * be);
      std::memcpy(out, tmp + (c0 - b0 * be), n * sizeof(float));
      return;
    }
  }
}

// ---- scalar implementation ------------------------------------------------------------

// One weight row . x with the scalar kernels (f32 / f16 / bf16 weights).
float row_dot_scalar(DType t, const uint8_t* row, const float* x, size_t n, float* tmp) {
  const simd::Kernels& kk = simd::scalar_kernels();
  switch (t) {
    case DType::f32: return kk.dot(reinterpret_cast<const float*>(row), x, n);
    case DType::f16: return kk.dot_f16(x, reinterpret_cast<const uint16_t*>(row), n);
    case DType::bf16:
      kk.bf16_to_f32(reinterpret_cast<const uint16_t*>(row), tmp, n);
      return kk.dot(tmp, x, n);
    default: break;  // q8_0 and the low-bit types take quantised activations
  }
  return 0.0f;
}

// One q8_0 weight row . quantised activations: exact int32 block dots, scaled
// and summed in float (the same arithmetic as the SIMD tiles).
float row_dot_q8_scalar(const BlockQ8_0* w, const detail::BlockQ8x* xq, size_t nb) {
  float acc = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    int32_t s = 0;
    for (size_t j = 0; j < kQ8_0Block; ++j) s += int32_t(w[b].qs[j]) * int32_t(xq[b].qs[j]);
    acc += float(s) * (simd::f16_to_f32(w[b].d) * xq[b].d);
  }
  return acc;
}

// q8_0 weights: x quantised per 32-block into per-thread scratch, n_tokens * n/32 blocks.
const detail::BlockQ8x* quantize_tokens(const float* x, size_t n, size_t n_tokens, bool parallel) {
  const size_t nb = n / kQ8_0Block;
  detail::BlockQ8x* buf = scratch<detail::BlockQ8x>(n_tokens * nb);
  const auto nt = static_cast<long long>(n_tokens);
#pragma omp parallel for schedule(static) if (parallel && n_tokens >= 8)
  for (long long t = 0; t < nt; ++t) detail::quantize_activations(x + size_t(t) * n, buf + size_t(t) * nb, n);
  return buf;
}

// Work below this many multiply-adds runs on the calling thread.
constexpr size_t kParallelMinMacs = size_t(1) << 17;

// Low-bit weights: the activations quantised per block for the weight type
// (quant::quantize_acts) into per-thread scratch, then block dots per (row,
// token), kBlockDotTokens tokens a call where the ISA has such a dot, in tiles
// of kLowBitRows rows x kLowBitTokens tokens (a tile's weight rows stay in
// L1/L2 while its tokens' activations stream past).
constexpr size_t kLowBitRows = 16;
constexpr size_t kLowBitTokens = 32;

void matmul_low_bit(detail::BlockDot dot, detail::BlockDotTokens dot_tokens, const Matrix& w, const float* x,
                    float* y, size_t n_tokens, size_t ldy) {
  const size_t n = w.cols, nb = n / block_elems(w.type), ab = nb * act_block_bytes(w.type);
  const size_t rb = row_bytes(w.type, n);
  const bool parallel = w.rows * n * n_tokens >= kParallelMinMacs;
  uint8_t* acts = scratch<uint8_t, 4>(n_tokens * ab);
  const auto nt = static_cast<long long>(n_tokens);
#pragma omp parallel for schedule(static) if (parallel && n_tokens >= 8)
  for (long long t = 0; t < nt; ++t) quantize_acts(w.type, x + size_t(t) * n, acts + size_t(t) * ab, n);
  const auto* base = static_cast<const uint8_t*>(w.data);
  const auto n_rb = static_cast<long long>((w.rows + kLowBitRows - 1) / kLowBitRows);
  const auto n_tb = static_cast<long long>((n_tokens + kLowBitTokens - 1) / kLowBitTokens);
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
  for (long long tb = 0; tb < n_tb; ++tb) {
    for (long long rbk = 0; rbk < n_rb; ++rbk) {
      const size_t r0 = size_t(rbk) * kLowBitRows, r1 = std::min(w.rows, r0 + kLowBitRows);
      const size_t t0 = size_t(tb) * kLowBitTokens, t1 = std::min(n_tokens, t0 + kLowBitTokens);
      for (size_t r = r0; r < r1; ++r) {
        size_t t = t0;
        constexpr size_t kT = detail::kBlockDotTokens;
        for (; dot_tokens != nullptr && t + kT <= t1; t += kT) {
          float out[kT];
          dot_tokens(base + r * rb, acts + t * ab, ab, nb, out);
          for (size_t k = 0; k < kT; ++k) y[(t + k) * ldy + r] = out[k];
        }
        for (; t < t1; ++t) y[t * ldy + r] = dot(base + r * rb, acts + t * ab, nb);
      }
    }
  }
}

float (*ref_dot_for(DType t))(const void*, const void*, size_t) {
  switch (t) {
#define DEFKV_REF_DOT(T) \
  case DType::T: return [](const void* r, const void* a, size_t nb) { return block_dot_ref(DType::T, r, a, nb); };
    DEFKV_REF_DOT(q4_0)
    DEFKV_REF_DOT(q4_1)
    DEFKV_REF_DOT(q5_0)
    DEFKV_REF_DOT(q5_1)
    DEFKV_REF_DOT(q4_K)
    DEFKV_REF_DOT(q5_K)
    DEFKV_REF_DOT(q6_K)
#undef DEFKV_REF_DOT
    default: return nullptr;
  }
}

void matmul_scalar(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy) {
  const size_t n = w.cols;
  const auto rows = static_cast<long long>(w.rows);
  const bool parallel = w.rows * n * n_tokens >= kParallelMinMacs;
  if (is_low_bit(w.type)) return matmul_low_bit(ref_dot_for(w.type), nullptr, w, x, y, n_tokens, ldy);
  if (w.type == DType::q8_0) {
    const size_t nb = n / kQ8_0Block;
    const detail::BlockQ8x* xq = quantize_tokens(x, n, n_tokens, parallel);
#pragma omp parallel for schedule(static) if (parallel)
    for (long long r = 0; r < rows; ++r) {
      const auto* wr = reinterpret_cast<const BlockQ8_0*>(row_ptr(w, size_t(r)));
      for (size_t t = 0; t < n_tokens; ++t) y[t * ldy + size_t(r)] = row_dot_q8_scalar(wr, xq + t * nb, nb);
    }
    return;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (long long r = 0; r < rows; ++r) {
    float* tmp = w.type == DType::bf16 ? scratch<float>(n) : nullptr;
    const uint8_t* wr = row_ptr(w, size_t(r));
    for (size_t t = 0; t < n_tokens; ++t)
      y[t * ldy + size_t(r)] = row_dot_scalar(w.type, wr, x + t * n, n, tmp);
  }
}

// ---- SIMD tiles driver ---------------------------------------------------------------------

const detail::MatmulTiles* tiles_for(MatmulImpl impl) {
  switch (impl) {
#if DEFKV_SIMD_X86
    case MatmulImpl::avx2: return simd::cpu_features().avx2 ? &detail::avx2_tiles() : nullptr;
    case MatmulImpl::avx512: return simd::cpu_features().avx512 ? &detail::avx512_tiles() : nullptr;
#endif
#if DEFKV_SIMD_NEON
    case MatmulImpl::neon: return simd::cpu_features().neon ? &detail::neon_tiles() : nullptr;
    case MatmulImpl::neon_dotprod:
      return simd::cpu_features().neon_dotprod ? &detail::neon_dotprod_tiles() : nullptr;
#endif
    default: return nullptr;
  }
}

MatmulImpl best_simd_impl() {
  switch (simd::k().isa) {  // follows the kernel table, so DEFKV_FORCE_SCALAR applies
    case simd::Isa::avx2: return MatmulImpl::avx2;
    case simd::Isa::avx512: return MatmulImpl::avx512;
    case simd::Isa::neon: return simd::cpu_features().neon_dotprod ? MatmulImpl::neon_dotprod : MatmulImpl::neon;
    case simd::Isa::scalar: break;
  }
  return MatmulImpl::scalar;
}

// Batches: output tiles of kRowBlock rows x kTokenBlock tokens (the rows'
// weights stay in L2 while the token block streams past them).
constexpr size_t kRowBlock = 64;
constexpr size_t kTokenBlock = 32;
// Decode (few tokens): rows split into chunks of this many (a multiple of every
// micro-kernel's row count).
constexpr size_t kRowChunk = 16;
constexpr size_t kFewTokens = 4;

void matmul_tiles(const detail::MatmulTiles& mt, const Matrix& w, const float* x, float* y,
                  size_t n_tokens, size_t ldy) {
  const size_t n = w.cols;
  const bool q8 = w.type == DType::q8_0;
  const bool parallel = w.rows * n * n_tokens >= kParallelMinMacs;
  const detail::BlockQ8x* xq = q8 ? quantize_tokens(x, n, n_tokens, parallel) : nullptr;
  auto run = [&](size_t r0, size_t r1, size_t t0, size_t t1) {
    if (q8) mt.q8_tile(w, xq, y, ldy, r0, r1, t0, t1);
    else mt.float_tile(w, x, y, ldy, r0, r1, t0, t1);
  };
  if (n_tokens <= kFewTokens) {
    const auto n_chunks = static_cast<long long>((w.rows + kRowChunk - 1) / kRowChunk);
#pragma omp parallel for schedule(static) if (parallel)
    for (long long c = 0; c < n_chunks; ++c) {
      const size_t r0 = size_t(c) * kRowChunk;
      run(r0, std::min(w.rows, r0 + kRowChunk), 0, n_tokens);
    }
  } else {
    const auto n_rb = static_cast<long long>((w.rows + kRowBlock - 1) / kRowBlock);
    const auto n_tb = static_cast<long long>((n_tokens + kTokenBlock - 1) / kTokenBlock);
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
    for (long long rb = 0; rb < n_rb; ++rb) {
      for (long long tb = 0; tb < n_tb; ++tb) {
        const size_t r0 = size_t(rb) * kRowBlock, t0 = size_t(tb) * kTokenBlock;
        run(r0, std::min(w.rows, r0 + kRowBlock), t0, std::min(n_tokens, t0 + kTokenBlock));
      }
    }
  }
}

void run_impl(MatmulImpl impl, const Matrix& w, const float* x, float* y, size_t n_tokens,
              size_t ldy) {
  if (impl == MatmulImpl::onednn) {
    if (detail::dnnl_matmul(w, x, y, n_tokens, ldy)) return;
    impl = best_simd_impl();
  }
  if (impl == MatmulImpl::scalar) return matmul_scalar(w, x, y, n_tokens, ldy);
  const detail::MatmulTiles* mt = tiles_for(impl);
  if (mt == nullptr)
    throw std::runtime_error(std::string("matmul: implementation ") + matmul_impl_name(impl) +
                             " is not available on this machine/build");
  if (is_low_bit(w.type)) {
    // the ISA's block dot when it has one for this type, else the scalar one
    detail::BlockDot dot = mt->low_bit_dot ? mt->low_bit_dot(w.type) : nullptr;
    detail::BlockDotTokens dot_tokens = dot && mt->low_bit_dot_tokens ? mt->low_bit_dot_tokens(w.type) : nullptr;
    return matmul_low_bit(dot ? dot : ref_dot_for(w.type), dot_tokens, w, x, y, n_tokens, ldy);
  }
  matmul_tiles(*mt, w, x, y, n_tokens, ldy);
}

}  // namespace

namespace detail {

void quantize_activations(const float* x, BlockQ8x* xq, size_t n) {
  for (size_t b = 0; b < n / kQ8_0Block; ++b) {
    const float* xb = x + b * kQ8_0Block;
    float amax = 0.0f;
    bool finite = true;
    for (size_t j = 0; j < kQ8_0Block; ++j) {
      const float a = std::fabs(xb[j]);
      finite &= a <= std::numeric_limits<float>::max();  // false for NaN and Inf
      amax = std::max(amax, a);
    }
    if (!finite) {
      // scale NaN, quants 0: the block's products stay NaN, as the float
      // product would (converting NaN to int is undefined, and would make
      // them finite, hidden from the engine's non-finite logits check)
      xq[b].d = std::numeric_limits<float>::quiet_NaN();
      std::memset(xq[b].qs, 0, kQ8_0Block);
      continue;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    xq[b].d = d;
    for (size_t j = 0; j < kQ8_0Block; ++j) {
      // nearest-even via the 1.5*2^23 trick (|v| <= 127, vectorises; no libm call)
      const float v = xb[j] * id;
      const float r = (v + 12582912.0f) - 12582912.0f;
      xq[b].qs[j] = int8_t(int(r));
    }
  }
}

}  // namespace detail

const char* matmul_impl_name(MatmulImpl impl) {
  switch (impl) {
    case MatmulImpl::scalar: return "scalar";
    case MatmulImpl::avx2: return "avx2";
    case MatmulImpl::avx512: return "avx512";
    case MatmulImpl::neon: return "neon";
    case MatmulImpl::neon_dotprod: return "neon_dotprod";
    case MatmulImpl::onednn: return "onednn";
  }
  return "unknown";
}

size_t available_matmul_impls(MatmulImpl* out, size_t max) {
  size_t n = 0;
  for (MatmulImpl impl : {MatmulImpl::scalar, MatmulImpl::avx2, MatmulImpl::avx512, MatmulImpl::neon,
                          MatmulImpl::neon_dotprod, MatmulImpl::onednn}) {
    const bool ok = impl == MatmulImpl::scalar || tiles_for(impl) != nullptr ||
                    (impl == MatmulImpl::onednn && detail::dnnl_available());
    if (ok && n < max) out[n++] = impl;
  }
  return n;
}

void matmul_impl(MatmulImpl impl, const Matrix& w, const float* x, float* y, size_t n_tokens,
                 size_t ldy) {
  check_matmul("matmul", w, w.cols, x, y, n_tokens, ldy);
  if (n_tokens == 0 || w.rows == 0) return;
  run_impl(impl, w, x, y, n_tokens, ldy);
}

void matmul(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy) {
  check_matmul("matmul", w, w.cols, x, y, n_tokens, ldy);
  if (n_tokens == 0 || w.rows == 0) return;
  const MatmulImpl simd_impl = best_simd_impl();
  if (simd_impl != MatmulImpl::scalar && detail::dnnl_preferred(w, n_tokens))
    return run_impl(MatmulImpl::onednn, w, x, y, n_tokens, ldy);
  run_impl(simd_impl, w, x, y, n_tokens, ldy);
}

void matmul_cols(const Matrix& w, size_t col0, size_t n_cols, const float* x, float* y,
                 size_t n_tokens, size_t ldy) {
  check_matmul("matmul_cols", w, n_cols, x, y, n_tokens, ldy);
  if (col0 > w.cols || n_cols > w.cols - col0)
    throw std::out_of_range("matmul_cols: columns [" + std::to_string(col0) + ", " +
                            std::to_string(col0 + n_cols) + ") outside the matrix (cols " +
                            std::to_string(w.cols) + ")");
  if (n_tokens == 0 || w.rows == 0) return;
  const size_t rows = w.rows;
  // The slice transposed, ws_t[c, r] = W[r, col0 + c]: [n_cols, rows], so each
  // token is n_cols axpys along contiguous rows (n_cols may be as small as 8).
  float* ws_t = scratch<float, 1>(n_cols * rows);
  float* tmp = scratch<float, 2>(n_cols);
  for (size_t r = 0; r < rows; ++r) {
    dequant_range(w.type, row_ptr(w, r), col0, n_cols, tmp);
    for (size_t c = 0; c < n_cols; ++c) ws_t[c * rows + r] = tmp[c];
  }
  const simd::Kernels& kk = simd::k();
  const auto nt = static_cast<long long>(n_tokens);
#pragma omp parallel for schedule(static) if (rows * n_cols * n_tokens >= kParallelMinMacs)
  for (long long t = 0; t < nt; ++t) {
    float* yt = y + size_t(t) * ldy;
    const float* xt = x + size_t(t) * n_cols;
    std::fill(yt, yt + rows, 0.0f);
    for (size_t c = 0; c < n_cols; ++c) kk.axpy(xt[c], ws_t + c * rows, yt, rows);
  }
}

void matmul_ref(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy) {
  check_matmul("matmul_ref", w, w.cols, x, y, n_tokens, ldy);
  const size_t n = w.cols;
  std::vector<double> wr(n);
  std::vector<float> wf(is_low_bit(w.type) ? n : 0);
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
        default: break;  // low-bit: whole row below
      }
    }
    if (is_low_bit(w.type)) {
      dequantize_low_bit(w.type, row, wf.data(), n);
      for (size_t c = 0; c < n; ++c) wr[c] = wf[c];
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
