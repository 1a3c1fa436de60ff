// quant::value_proj_l1 (per-head value-projection L1 norms) against a scalar
// double-precision reference written here: every weight dtype, odd shapes,
// G = 1 and G > 1, 1..70 tokens (both the dot and the token-lane paths),
// strided inputs/outputs, thread counts 1..3, and no allocation once warm.
#include <catch2/catch.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "quant/quant.h"
#include "quant/value_norm.h"
#include "simd/simd.h"
#include "tests/alloc_counter.h"

using namespace defkv;

namespace {

// Unit roundoff of f32.
constexpr double kU = 1.0 / double(1u << 24);

struct Weights {
  quant::Matrix m;
  std::vector<uint8_t> bytes;
  std::vector<double> w;  // [rows, cols] the stored values, decoded independently
};

double decode(quant::DType t, const uint8_t* row, size_t c) {
  switch (t) {
    case quant::DType::f32: return reinterpret_cast<const float*>(row)[c];
    case quant::DType::f16: return simd::f16_to_f32(reinterpret_cast<const uint16_t*>(row)[c]);
    case quant::DType::bf16: return simd::bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[c]);
    case quant::DType::q8_0: {
      const auto& b = reinterpret_cast<const quant::BlockQ8_0*>(row)[c / quant::kQ8_0Block];
      return double(simd::f16_to_f32(b.d)) * double(b.qs[c % quant::kQ8_0Block]);
    }
    default: return 0;  // low-bit types are decoded whole rows at a time (random_weights)
  }
}

Weights random_weights(quant::DType t, size_t rows, size_t cols, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Weights W;
  const size_t rb = quant::row_bytes(t, cols);
  W.bytes.resize(rows * rb);
  std::vector<float> row(cols);
  for (size_t r = 0; r < rows; ++r) {
    for (float& x : row) x = nd(rng);
    quant::from_f32(t, row.data(), W.bytes.data() + r * rb, cols);
  }
  W.m = {t, W.bytes.data(), rows, cols};
  W.w.resize(rows * cols);
  if (quant::is_low_bit(t)) {
    // low-bit blocks: to_f32 (checked against hand-built blocks in test_quant_blocks)
    std::vector<float> deq(cols);
    for (size_t r = 0; r < rows; ++r) {
      quant::to_f32(t, W.bytes.data() + r * rb, deq.data(), cols);
      for (size_t c = 0; c < cols; ++c) W.w[r * cols + c] = deq[c];
    }
    return W;
  }
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) W.w[r * cols + c] = decode(t, W.bytes.data() + r * rb, c);
  return W;
}

// ref[t, h] = sum_r |sum_c W[r, h*d+c] v[t, (h/G)*d+c]|, mag[t, h] = sum_r sum_c |W||v| (error scale).
void reference(const Weights& W, size_t Hkv, size_t d, const std::vector<float>& v, size_t ldv, size_t T,
               std::vector<double>& ref, std::vector<double>& mag) {
  const size_t E = W.m.rows, cols = W.m.cols, H = cols / d, G = H / Hkv;
  ref.assign(T * H, 0.0);
  mag.assign(T * H, 0.0);
  for (size_t t = 0; t < T; ++t)
    for (size_t h = 0; h < H; ++h)
      for (size_t r = 0; r < E; ++r) {
        double y = 0, a = 0;
        for (size_t c = 0; c < d; ++c) {
          const double p = W.w[r * cols + h * d + c] * double(v[t * ldv + (h / G) * d + c]);
          y += p;
          a += std::fabs(p);
        }
        ref[t * H + h] += std::fabs(y);
        mag[t * H + h] += a;
      }
}

struct Shape {
  size_t E, H, Hkv, d;
};

}  // namespace

TEST_CASE("value_proj_l1 matches a double reference (all dtypes, odd shapes, GQA)", "[value_norm]") {
  // cols = H*d must be a multiple of 32 for q8_0; d = 48 puts head slices
  // across q8_0 block boundaries; E odd exercises row-block tails.
  const Shape shapes[] = {{37, 4, 4, 8}, {45, 6, 2, 16}, {33, 2, 1, 48}, {70, 8, 2, 20}, {129, 4, 1, 64}};
  const size_t token_counts[] = {1, 2, 5, 6, 7, 16, 17, 33, 70, 100};
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  quant::ValueNormScratch scratch;
  for (quant::DType t : {quant::DType::f32, quant::DType::f16, quant::DType::bf16, quant::DType::q8_0}) {
    for (const Shape& s : shapes) {
      REQUIRE((s.H * s.d) % quant::block_elems(t) == 0);
      const Weights W = random_weights(t, s.E, s.H * s.d, rng);
      for (size_t T : token_counts) {
        const size_t ldv = s.Hkv * s.d + 3, ldl1 = s.H + 2;  // strided rows
        std::vector<float> v(T * ldv);
        for (float& x : v) x = nd(rng);
        std::vector<double> ref, mag;
        reference(W, s.Hkv, s.d, v, ldv, T, ref, mag);
        for (int n_threads : {1, 2, 3}) {
          omp_set_num_threads(n_threads);
          std::vector<float> got(T * ldl1, -1.0f);
          quant::value_proj_l1(W.m, s.Hkv, s.d, v.data(), ldv, T, got.data(), ldl1, scratch);
          // Float rounding of a d-term dot and an E-term sum (worst case, see value_norm.h).
          const double tol = double(s.d + s.E) * kU;
          double worst = 0;
          for (size_t tt = 0; tt < T; ++tt)
            for (size_t h = 0; h < s.H; ++h) {
              const double e = std::fabs(double(got[tt * ldl1 + h]) - ref[tt * s.H + h]);
              worst = std::max(worst, e / mag[tt * s.H + h]);
            }
          INFO(quant::dtype_name(t) << " E " << s.E << " H " << s.H << " Hkv " << s.Hkv << " d " << s.d << " tokens "
                                    << T << " threads " << n_threads << ": max err / magnitude " << worst);
          CHECK(worst <= tol);
          for (size_t tt = 0; tt < T; ++tt)  // padding columns untouched
            CHECK(got[tt * ldl1 + s.H] == -1.0f);
        }
      }
    }
  }
  omp_set_num_threads(omp_get_num_procs());
}

TEST_CASE("value_proj_l1 reads W_o in the low-bit types (double reference)", "[value_norm]") {
  struct Shape {
    size_t E, H, Hkv, d;
  };
  // H * d a multiple of 256 (K-quant super-blocks); heads cut through blocks
  const Shape shapes[] = {{37, 4, 2, 64}, {45, 8, 2, 32}, {19, 6, 3, 128}};
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  quant::ValueNormScratch scratch;
  for (quant::DType t : {quant::DType::q4_0, quant::DType::q4_1, quant::DType::q5_0, quant::DType::q5_1,
                         quant::DType::q4_K, quant::DType::q5_K, quant::DType::q6_K}) {
    for (const Shape& s : shapes) {
      const Weights W = random_weights(t, s.E, s.H * s.d, rng);
      for (size_t T : {size_t(1), size_t(7), size_t(70)}) {
        const size_t ldv = s.Hkv * s.d, ldl1 = s.H;
        std::vector<float> v(T * ldv);
        for (float& x : v) x = nd(rng);
        std::vector<double> ref, mag;
        reference(W, s.Hkv, s.d, v, ldv, T, ref, mag);
        std::vector<float> got(T * ldl1);
        quant::value_proj_l1(W.m, s.Hkv, s.d, v.data(), ldv, T, got.data(), ldl1, scratch);
        double worst = 0;
        for (size_t i = 0; i < T * s.H; ++i) worst = std::max(worst, std::fabs(double(got[i]) - ref[i]) / mag[i]);
        INFO(quant::dtype_name(t) << " E " << s.E << " H " << s.H << " d " << s.d << " tokens " << T);
        CHECK(worst <= double(s.d + s.E) * kU);
      }
    }
  }
}

TEST_CASE("value_proj_l1: G > 1 heads of one KV head see the same values", "[value_norm]") {
  // Heads h and h' of one group use the same v, so with equal W slices they must
  // give equal norms; with W_o slices that differ, the norms must differ.
  const size_t E = 24, d = 8, H = 4, Hkv = 2, T = 9;
  std::vector<float> w(E * H * d), v(T * Hkv * d);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (size_t r = 0; r < E; ++r)
    for (size_t c = 0; c < d; ++c) {
      const float a = nd(rng), b = nd(rng);
      w[r * H * d + 0 * d + c] = w[r * H * d + 1 * d + c] = a;  // heads 0, 1 (KV head 0): equal
      w[r * H * d + 2 * d + c] = b;                              // heads 2, 3 (KV head 1): differ
      w[r * H * d + 3 * d + c] = -2.0f * b;
    }
  for (float& x : v) x = nd(rng);
  quant::Matrix m{quant::DType::f32, w.data(), E, H * d};
  std::vector<float> l1(T * H);
  quant::ValueNormScratch s;
  quant::value_proj_l1(m, Hkv, d, v.data(), Hkv * d, T, l1.data(), H, s);
  for (size_t t = 0; t < T; ++t) {
    CHECK(l1[t * H + 0] == Approx(l1[t * H + 1]).epsilon(1e-6));
    CHECK(l1[t * H + 3] == Approx(2.0f * l1[t * H + 2]).epsilon(1e-5));
    CHECK(l1[t * H + 0] > 0.0f);
  }
}

TEST_CASE("value_proj_l1 does not allocate once warm and rejects bad shapes", "[value_norm]") {
  const size_t E = 64, d = 16, H = 4, Hkv = 2;
  std::mt19937 rng(5);
  const Weights W = random_weights(quant::DType::q8_0, E, H * d, rng);
  std::vector<float> v(64 * Hkv * d, 0.5f), l1(64 * H);
  quant::ValueNormScratch s;
  quant::value_proj_l1_reserve(s, E, H * d, Hkv, d, 64, size_t(omp_get_max_threads()));
  {
    const uint64_t before = g_allocs.load();
    for (size_t T : {1, 7, 64}) quant::value_proj_l1(W.m, Hkv, d, v.data(), Hkv * d, T, l1.data(), H, s);
    CHECK(g_allocs.load() - before == 0);
  }
  CHECK_THROWS_AS(quant::value_proj_l1(W.m, Hkv, 24, v.data(), Hkv * d, 1, l1.data(), H, s), std::invalid_argument);
  CHECK_THROWS_AS(quant::value_proj_l1(W.m, 3, d, v.data(), Hkv * d, 1, l1.data(), H, s), std::invalid_argument);
  CHECK_THROWS_AS(quant::value_proj_l1(W.m, Hkv, d, v.data(), Hkv * d - 1, 2, l1.data(), H, s),
                  std::invalid_argument);
}
