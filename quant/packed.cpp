// Load-time packed q8_0 weights (quant::Packed): the portable packing, the
// activation quantisation and the threading; the kernel is in
// matmul_avx512vnni.cpp. Layout (kPackRows = 16 rows per group, nb = cols/32):
//   qs[g][b][k4][r][j] = uint8(W[16g + r, 32b + 4k4 + j] + 128)   (512 B per g, b)
//   d [g][b][r]        = fp16 scale of W[16g + r] block b         (32 B per g, b)
// Rows past W.rows (last group) are zero weights with zero scales.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/matmul_isa.h"
#include "quant/quant.h"
#include "simd/simd.h"

namespace defkv::quant {

namespace {

bool packed_kernel_available() {
#if DEFKV_SIMD_X86
  // follows the kernel table, so DEFKV_FORCE_SCALAR disables packing
  return simd::k().isa == simd::Isa::avx512 && simd::cpu_features().avx512_vnni;
#else
  return false;
#endif
}

size_t n_groups(size_t rows) { return (rows + detail::kPackRows - 1) / detail::kPackRows; }

template <class T, int Slot>
T* grow_scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Work below this many multiply-adds runs on the calling thread (as matmul()).
constexpr size_t kParallelMinMacs = size_t(1) << 17;
// Up to this many tokens: row chunks of kDecodeGroups groups; more tokens:
// tiles of kBatchGroups groups x kTokenBlock tokens.
constexpr size_t kFewTokens = 4;
constexpr size_t kDecodeGroups = 4;
constexpr size_t kBatchGroups = 4;
constexpr size_t kTokenBlock = 48;

}  // namespace

Packed pack_for_gemm(const Matrix& w) {
  Packed p;
  p.source = w;
  if (w.type != DType::q8_0 || w.rows == 0 || w.cols == 0 || !packed_kernel_available()) return p;
  if (w.data == nullptr) throw std::invalid_argument("pack_for_gemm: weight matrix has no data");
  const size_t nb = w.cols / kQ8_0Block, G = n_groups(w.rows);
  const size_t rb = row_bytes(w.type, w.cols);
  const size_t qs_bytes = G * nb * detail::kPackRows * kQ8_0Block;
  const size_t bytes = qs_bytes + G * nb * detail::kPackRows * sizeof(uint16_t);
  auto* buf = static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  if (buf == nullptr) throw std::bad_alloc();
  p.data = std::shared_ptr<const uint8_t>(buf, [](const uint8_t* q) { std::free(const_cast<uint8_t*>(q)); });
  p.bytes = bytes;
  auto* d = reinterpret_cast<uint16_t*>(buf + qs_bytes);
  const auto* src = static_cast<const uint8_t*>(w.data);
  const auto ng = static_cast<long long>(G);
#pragma omp parallel for schedule(static)
  for (long long gi = 0; gi < ng; ++gi) {
    const size_t g = size_t(gi);
    for (size_t r = 0; r < detail::kPackRows; ++r) {
      const size_t row = g * detail::kPackRows + r;
      const auto* blocks = row < w.rows ? reinterpret_cast<const BlockQ8_0*>(src + row * rb) : nullptr;
      for (size_t b = 0; b < nb; ++b) {
        uint8_t* q = buf + (g * nb + b) * detail::kPackRows * kQ8_0Block;
        for (size_t k4 = 0; k4 < kQ8_0Block / 4; ++k4)
          for (size_t j = 0; j < 4; ++j)
            q[(k4 * detail::kPackRows + r) * 4 + j] =
                blocks ? uint8_t(int(blocks[b].qs[k4 * 4 + j]) + 128) : uint8_t(128);
        d[(g * nb + b) * detail::kPackRows + r] = blocks ? blocks[b].d : uint16_t(0);
      }
    }
  }
  return p;
}

void matmul_packed(const Packed& p, const float* x, float* y, size_t n_tokens, size_t ldy) {
  const Matrix& w = p.source;
  if (!p.packed() || !packed_kernel_available()) return matmul(w, x, y, n_tokens, ldy);
  if (n_tokens == 0 || w.rows == 0) return;
  if (x == nullptr || y == nullptr)
    throw std::invalid_argument("matmul_packed: null activation or output pointer");
  if (n_tokens > 1 && ldy < w.rows)
    throw std::invalid_argument("matmul_packed: ldy " + std::to_string(ldy) +
                                " smaller than the number of rows " + std::to_string(w.rows));
#if DEFKV_SIMD_X86
  const size_t n = w.cols, nb = n / kQ8_0Block, G = n_groups(w.rows);
  const bool parallel = w.rows * n * n_tokens >= kParallelMinMacs;
  // activations: the same per-block quantisation as matmul(), split into
  // quants / scales / vpdpbusd correction -128 * sum(q)
  auto* xq = grow_scratch<int8_t, 0>(n_tokens * n);
  auto* xd = grow_scratch<float, 1>(n_tokens * nb);
  auto* xc = grow_scratch<int32_t, 2>(n_tokens * nb);
  const auto nt = static_cast<long long>(n_tokens);
#pragma omp parallel for schedule(static) if (parallel && n_tokens >= 8)
  for (long long ti = 0; ti < nt; ++ti) {
    const size_t t = size_t(ti);
    detail::BlockQ8x blk;
    for (size_t b = 0; b < nb; ++b) {
      detail::quantize_activations(x + t * n + b * kQ8_0Block, &blk, kQ8_0Block);
      int32_t s = 0;
      for (size_t j = 0; j < kQ8_0Block; ++j) s += blk.qs[j];
      std::memcpy(xq + t * n + b * kQ8_0Block, blk.qs, kQ8_0Block);
      xd[t * nb + b] = blk.d;
      xc[t * nb + b] = -128 * s;
    }
  }
  const detail::PackedActs acts{xq, xd, xc};
  const uint8_t* qs = p.data.get();
  const auto* d = reinterpret_cast<const uint16_t*>(qs + G * nb * detail::kPackRows * kQ8_0Block);
  if (n_tokens <= kFewTokens) {
    const auto n_chunks = static_cast<long long>((G + kDecodeGroups - 1) / kDecodeGroups);
#pragma omp parallel for schedule(static) if (parallel)
    for (long long c = 0; c < n_chunks; ++c) {
      const size_t g0 = size_t(c) * kDecodeGroups;
      detail::avx512vnni_packed_q8_tile(qs, d, w.rows, nb, acts, y, ldy, g0,
                                        std::min(G, g0 + kDecodeGroups), 0, n_tokens);
    }
  } else {
    const auto n_gb = static_cast<long long>((G + kBatchGroups - 1) / kBatchGroups);
    const auto n_tb = static_cast<long long>((n_tokens + kTokenBlock - 1) / kTokenBlock);
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
    for (long long tb = 0; tb < n_tb; ++tb)
      for (long long gb = 0; gb < n_gb; ++gb) {
        const size_t g0 = size_t(gb) * kBatchGroups, t0 = size_t(tb) * kTokenBlock;
        detail::avx512vnni_packed_q8_tile(qs, d, w.rows, nb, acts, y, ldy, g0,
                                          std::min(G, g0 + kBatchGroups), t0,
                                          std::min(n_tokens, t0 + kTokenBlock));
      }
  }
#endif
}

}  // namespace defkv::quant
