// The load-time packed kernels (quant::matmul_packed) against the scalar block
// dots quant::block_dot_ref, output by output: every packed low-bit type, row
// counts that are not a multiple of the 16-row groups, odd numbers of blocks
// per row, every batch size up to past the 6-token register tile, random block
// bytes (every bit pattern of the quants, scales and fifth bits) and edge
// blocks (all quant bits set, all clear, the largest 6-bit scales and mins),
// activations with an all-zero block, a block at +-amax and rounding ties.
// Without a packed kernel on this CPU, matmul_packed is matmul() and the same
// checks cover that path.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#include "quant/blocks.h"
#include "quant/quant.h"

using namespace defkv;
using quant::DType;

namespace {

// Byte offsets of a block's fp16 scale fields (d, then m / dmin where present).
std::vector<size_t> scale_offsets(DType t) {
  switch (t) {
    case DType::q4_1:
    case DType::q5_1:
    case DType::q4_K:
    case DType::q5_K: return {0, 2};
    case DType::q6_K: return {offsetof(quant::BlockQ6_K, d)};
    default: return {0};
  }
}

// rows x cols weights of type t: random bytes with fp16 scales of 0.008 ..
// 0.016 and either sign (finite products); row 0 has every quant and
// sub-scale byte 0xFF, row 1 every one 0x00 (scales kept finite).
std::vector<uint8_t> random_weights(DType t, size_t rows, size_t cols, std::mt19937& rng) {
  const size_t bb = quant::block_bytes(t), nblk = rows * cols / quant::block_elems(t), per_row = nblk / rows;
  std::vector<uint8_t> w(nblk * bb);
  for (auto& v : w) v = uint8_t(rng());
  std::fill(w.begin(), w.begin() + ptrdiff_t(per_row * bb), uint8_t(0xFF));
  if (rows > 1) std::fill(w.begin() + ptrdiff_t(per_row * bb), w.begin() + ptrdiff_t(2 * per_row * bb), uint8_t(0));
  for (size_t i = 0; i < nblk; ++i)
    for (size_t off : scale_offsets(t)) {
      const uint16_t h = uint16_t(0x2000 + rng() % 0x400) | uint16_t(rng() % 2 ? 0x8000 : 0);
      std::memcpy(w.data() + i * bb + off, &h, 2);
    }
  return w;
}

std::vector<float> activations(size_t n_tok, size_t cols, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n_tok * cols);
  for (auto& v : x) v = nd(rng);
  // token 0: first 32-block zero; last token: a block of +-1 (q = +-127) and
  // a block on rounding ties (amax 127 -> d = 1, x = k + 0.5)
  std::fill(x.begin(), x.begin() + 32, 0.0f);
  float* last = x.data() + (n_tok - 1) * cols;
  if (cols >= 64) {
    for (size_t j = 0; j < 32; ++j) last[j] = j % 3 ? 1.0f : -1.0f;
    for (size_t j = 0; j < 32; ++j) last[32 + j] = float(int(j) - 16) + 0.5f;
    last[32] = 127.0f;
  }
  return x;
}

}  // namespace

TEST_CASE("packed kernels equal the scalar block dots output by output", "[quant][blocks][matmul][packed]") {
  std::mt19937 rng(101);
  for (DType t : {DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1, DType::q4_K, DType::q5_K, DType::q6_K}) {
    const size_t be = quant::block_elems(t);
    // odd block counts: 7 or 1 32-blocks, 3 or 1 super-blocks
    for (size_t nb : {be == 32 ? size_t(7) : size_t(3), size_t(1)}) {
      const size_t cols = nb * be;
      for (size_t rows : {size_t(37), size_t(1), size_t(16), size_t(70)}) {
        const auto wb = random_weights(t, rows, cols, rng);
        const quant::Matrix w{t, wb.data(), rows, cols};
        const quant::Packed p = quant::pack_for_gemm(w);
        const size_t rb = quant::row_bytes(t, cols);
        for (size_t n_tok : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 13u, 40u}) {
          const auto x = activations(n_tok, cols, rng);
          std::vector<uint8_t> acts(n_tok * nb * quant::act_block_bytes(t));
          for (size_t u = 0; u < n_tok; ++u)
            quant::quantize_acts(t, x.data() + u * cols, acts.data() + u * nb * quant::act_block_bytes(t), cols);
          std::vector<float> got(n_tok * rows, -7.0f);
          quant::matmul_packed(p, x.data(), got.data(), n_tok, rows);
          size_t bad = 0;
          float worst = 0;
          for (size_t u = 0; u < n_tok; ++u)
            for (size_t r = 0; r < rows; ++r) {
              const uint8_t* a = acts.data() + u * nb * quant::act_block_bytes(t);
              const float want = quant::block_dot_ref(t, wb.data() + r * rb, a, nb);
              // the float sums differ in order: relative to the blocks' magnitudes
              float mag = 1.0f;
              for (size_t b = 0; b < nb; ++b)
                mag += std::fabs(quant::block_dot_ref(t, wb.data() + r * rb + b * quant::block_bytes(t),
                                                      a + b * quant::act_block_bytes(t), 1));
              const float err = std::fabs(got[u * rows + r] - want) / mag;
              worst = std::max(worst, err);
              bad += !(err <= 2e-6f);
            }
          INFO(quant::dtype_name(t) << " packed " << p.packed() << " rows " << rows << " cols " << cols
                                    << " tokens " << n_tok << " worst relative error " << worst);
          CHECK(bad == 0);
        }
      }
    }
  }
}
