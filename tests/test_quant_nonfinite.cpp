// Non-finite values and the quantisers. Activations, through every int8
// product path: a token whose activations hold NaN or Inf gets NaN outputs
// (as the float product would), never finite numbers, and the other tokens of
// the batch are unaffected (converting NaN to int while quantising is
// undefined behaviour and would hide the NaN from the engine's non-finite
// logits check). Row quantisation (weights, q8_0 KV rows): q8_0 keeps the
// NaN visible, the low-bit types refuse.
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include <catch2/catch.hpp>

#include "quant/quant.h"

using namespace defkv;
using quant::DType;

namespace {

constexpr size_t kRows = 37, kCols = 512;

std::vector<float> randv(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<uint8_t> make_weights(DType t, std::mt19937& rng) {
  const size_t rb = quant::row_bytes(t, kCols);
  std::vector<uint8_t> bytes(kRows * rb);
  const auto src = randv(kRows * kCols, rng, 0.5f);
  for (size_t r = 0; r < kRows; ++r) quant::from_f32(t, src.data() + r * kCols, bytes.data() + r * rb, kCols);
  return bytes;
}

// y of the clean batch and of the batch with x[bad_token, col] = bad, by one path.
template <class Product>
void check_path(const char* path, size_t n_tokens, Product&& product, std::mt19937& rng) {
  const auto clean = randv(n_tokens * kCols, rng, 2.0f);
  std::vector<float> yc(n_tokens * kRows);
  product(clean.data(), yc.data(), n_tokens);
  const size_t bad_token = n_tokens / 2;
  // a column inside a block (not its first element), and one in the last block
  for (size_t col : {size_t(300), kCols - 1}) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      INFO(path << ": tokens " << n_tokens << ", x[" << bad_token << ", " << col << "] = " << bad);
      auto x = clean;
      x[bad_token * kCols + col] = bad;
      std::vector<float> y(n_tokens * kRows);
      product(x.data(), y.data(), n_tokens);
      size_t finite_in_bad = 0, changed_in_clean = 0;
      for (size_t t = 0; t < n_tokens; ++t)
        for (size_t r = 0; r < kRows; ++r) {
          const float v = y[t * kRows + r], c = yc[t * kRows + r];
          if (t == bad_token) finite_in_bad += !std::isnan(v);
          else changed_in_clean += !(v == c);
        }
      CHECK(finite_in_bad == 0);
      CHECK(changed_in_clean == 0);
    }
  }
}

}  // namespace

TEST_CASE("a NaN or Inf activation makes its token's int8 products NaN on every path", "[quant][nonfinite]") {
  std::mt19937 rng(16);
  quant::MatmulImpl impls[8];
  const size_t n_impls = quant::available_matmul_impls(impls, 8);
  // 1 token (decode), 5 (a tile with a tail), 40 (threaded batch quantisation)
  for (size_t n_tokens : {size_t(1), size_t(5), size_t(40)}) {
    // q8_0 weights on every implementation (onednn hands q8_0 to the SIMD tiles)
    const auto q8 = make_weights(DType::q8_0, rng);
    const quant::Matrix w8{DType::q8_0, q8.data(), kRows, kCols};
    for (size_t i = 0; i < n_impls; ++i)
      check_path(quant::matmul_impl_name(impls[i]), n_tokens,
                 [&](const float* x, float* y, size_t n) { quant::matmul_impl(impls[i], w8, x, y, n, kRows); },
                 rng);
    // the load-time packed layouts (the 32-block types share the packed q8_0
    // activations, the K-quants take Q8_K ones) and matmul() where a type is not packed
    for (DType t : {DType::q8_0, DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1, DType::q4_K, DType::q5_K,
                    DType::q6_K}) {
      const auto bytes = make_weights(t, rng);
      const quant::Matrix w{t, bytes.data(), kRows, kCols};
      const quant::Packed p = quant::pack_for_gemm(w);
      check_path(quant::dtype_name(t), n_tokens,
                 [&](const float* x, float* y, size_t n) { quant::matmul_packed(p, x, y, n, kRows); }, rng);
      check_path("matmul", n_tokens, [&](const float* x, float* y, size_t n) { quant::matmul(w, x, y, n, kRows); },
                 rng);
    }
  }
}

TEST_CASE("quantising NaN or Inf: q8_0 stores a NaN block, the low-bit types refuse naming the index",
          "[quant][nonfinite]") {
  std::mt19937 rng(17);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    INFO(bad);
    auto x = randv(kCols, rng, 1.0f);
    x[300] = bad;
    // q8_0 (the KV cache's q8_0 rows): block 9 dequantises to NaN, the others as without it
    std::vector<uint8_t> row(quant::row_bytes(DType::q8_0, kCols)), clean_row(row.size());
    quant::from_f32(DType::q8_0, x.data(), row.data(), kCols);
    auto clean = x;
    clean[300] = 0.0f;
    quant::from_f32(DType::q8_0, clean.data(), clean_row.data(), kCols);
    std::vector<float> y(kCols), yc(kCols);
    quant::to_f32(DType::q8_0, row.data(), y.data(), kCols);
    quant::to_f32(DType::q8_0, clean_row.data(), yc.data(), kCols);
    size_t nan_in_block = 0, changed_elsewhere = 0;
    for (size_t i = 0; i < kCols; ++i) {
      if (i / 32 == 300 / 32) nan_in_block += std::isnan(y[i]);
      else changed_elsewhere += !(y[i] == yc[i]);
    }
    CHECK(nan_in_block == 32);
    CHECK(changed_elsewhere == 0);
    for (DType t : {DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1, DType::q4_K, DType::q5_K, DType::q6_K}) {
      INFO(quant::dtype_name(t));
      std::vector<uint8_t> r(quant::row_bytes(t, kCols));
      CHECK_THROWS_AS(quant::from_f32(t, x.data(), r.data(), kCols), std::invalid_argument);
      CHECK_THROWS_WITH(quant::from_f32(t, x.data(), r.data(), kCols), Catch::Contains("at index 300"));
    }
  }
  // the float formats represent them
  std::vector<float> x(64, std::numeric_limits<float>::quiet_NaN()), y(64);
  std::vector<uint8_t> row(quant::row_bytes(DType::f16, 64));
  quant::from_f32(DType::f16, x.data(), row.data(), 64);
  quant::to_f32(DType::f16, row.data(), y.data(), 64);
  CHECK(std::isnan(y[13]));
}
