// The int8 block dots of every matmul implementation on arbitrary bit patterns:
//  - random bytes for every quant, fifth-bit and scale field (so every level,
//    including the extremes, and every packed-scale bit occurs), fp16 scales
//    of both signs, activations at full scale (+-127) and random ones;
//  - each implementation against the scalar reference quant::block_dot_ref
//    (q8_0: against the scalar implementation's exact int32 block sums);
//  - batches (where an ISA dots a row with several tokens per call) give each
//    token the same bits as that token alone;
//  - a NaN or Inf activation: NaN outputs for its token on every implementation
//    and low-bit type, the batch's other tokens unchanged;
//  - which implementation matmul() runs (DEFKV_EXPECT_MATMUL, set by
//    scripts/test.d/neon.sh for its qemu CPU models, so a run on a core
//    without the dot product cannot silently test the dot-product path, or
//    the reverse).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "quant/blocks.h"
#include "quant/quant.h"
#include "simd/simd.h"

using namespace defkv;
using quant::DType;

namespace {

std::vector<quant::MatmulImpl> impls() {
  quant::MatmulImpl out[8];
  return std::vector<quant::MatmulImpl>(out, out + quant::available_matmul_impls(out, 8));
}

// A fp16 scale in +-[2^-9, 2^-4] (finite products for any quants).
uint16_t rand_scale(std::mt19937& rng) {
  std::uniform_real_distribution<float> mag(-9.0f, -4.0f);
  const float s = std::exp2(mag(rng)) * (rng() & 1 ? -1.0f : 1.0f);
  return simd::f32_to_f16(s);
}

// rows x cols of type t with every byte random, then the fp16 scale fields set
// to finite values.
std::vector<uint8_t> random_blocks(DType t, size_t rows, size_t cols, std::mt19937& rng) {
  std::vector<uint8_t> bytes(rows * quant::row_bytes(t, cols));
  for (auto& b : bytes) b = uint8_t(rng());
  const size_t bb = quant::block_bytes(t), n = bytes.size() / bb;
  for (size_t i = 0; i < n; ++i) {
    uint8_t* p = bytes.data() + i * bb;
    auto set = [&](auto* blk) {
      blk->d = rand_scale(rng);
      if constexpr (requires { blk->m; }) blk->m = rand_scale(rng);
      if constexpr (requires { blk->dmin; }) blk->dmin = rand_scale(rng);
    };
    switch (t) {
      case DType::q8_0: set(reinterpret_cast<quant::BlockQ8_0*>(p)); break;
      case DType::q4_0: set(reinterpret_cast<quant::BlockQ4_0*>(p)); break;
      case DType::q4_1: set(reinterpret_cast<quant::BlockQ4_1*>(p)); break;
      case DType::q5_0: set(reinterpret_cast<quant::BlockQ5_0*>(p)); break;
      case DType::q5_1: set(reinterpret_cast<quant::BlockQ5_1*>(p)); break;
      case DType::q4_K: set(reinterpret_cast<quant::BlockQ4_K*>(p)); break;
      case DType::q5_K: set(reinterpret_cast<quant::BlockQ5_K*>(p)); break;
      case DType::q6_K: set(reinterpret_cast<quant::BlockQ6_K*>(p)); break;
      default: FAIL("unexpected type");
    }
  }
  return bytes;
}

// Tokens: 0 all +-1 (every activation quant +-127), 1 +-1 with zeros, the
// rest normal.
std::vector<float> tokens(size_t n_tok, size_t cols, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.5f);
  std::vector<float> x(n_tok * cols);
  for (size_t t = 0; t < n_tok; ++t)
    for (size_t c = 0; c < cols; ++c) {
      float& v = x[t * cols + c];
      if (t == 0) v = rng() & 1 ? 1.0f : -1.0f;
      else if (t == 1) v = rng() % 3 == 0 ? 0.0f : (rng() & 1 ? 2.0f : -2.0f);
      else v = nd(rng);
    }
  return x;
}

}  // namespace

TEST_CASE("every implementation's block dots equal block_dot_ref on random bit patterns", "[quant][blocks][matmul]") {
  std::mt19937 rng(43);
  const auto all = impls();
  const size_t rows = 21, cols = 768;  // 21: a partial row tile; 768: 3 super-blocks, 24 blocks
  for (DType t : {DType::q8_0, DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1, DType::q4_K, DType::q5_K,
                  DType::q6_K}) {
    const std::vector<uint8_t> wb = random_blocks(t, rows, cols, rng);
    const quant::Matrix w{t, wb.data(), rows, cols};
    const size_t rb = quant::row_bytes(t, cols);
    std::vector<float> wd(rows * cols);
    for (size_t r = 0; r < rows; ++r) quant::to_f32(t, wb.data() + r * rb, wd.data() + r * cols, cols);
    for (size_t n_tok : {1u, 2u, 5u, 37u}) {
      const auto x = tokens(n_tok, cols, rng);
      std::vector<float> want(n_tok * rows);
      // |w| . |x| per output: the size of the float rounding of any summation order
      std::vector<double> mag(n_tok * rows);
      for (size_t tk = 0; tk < n_tok; ++tk)
        for (size_t r = 0; r < rows; ++r)
          for (size_t c = 0; c < cols; ++c) mag[tk * rows + r] += std::fabs(double(wd[r * cols + c]) * x[tk * cols + c]);
      if (quant::is_low_bit(t)) {
        const size_t nb = cols / quant::block_elems(t);
        std::vector<uint8_t> acts(nb * quant::act_block_bytes(t));
        for (size_t tk = 0; tk < n_tok; ++tk) {
          quant::quantize_acts(t, x.data() + tk * cols, acts.data(), cols);
          for (size_t r = 0; r < rows; ++r)
            want[tk * rows + r] = quant::block_dot_ref(t, wb.data() + r * rb, acts.data(), nb);
        }
      } else {
        quant::matmul_impl(quant::MatmulImpl::scalar, w, x.data(), want.data(), n_tok, rows);
      }
      for (quant::MatmulImpl impl : all) {
        std::vector<float> got(n_tok * rows, -7.0f);
        quant::matmul_impl(impl, w, x.data(), got.data(), n_tok, rows);
        size_t bad = 0;
        for (size_t i = 0; i < got.size(); ++i) bad += !(std::fabs(double(got[i]) - want[i]) <= 2e-6 * mag[i]);
        INFO(quant::dtype_name(t) << " " << quant::matmul_impl_name(impl) << " tokens " << n_tok << ": " << bad
                                  << " of " << got.size() << " outputs differ");
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE("every implementation's batched low-bit products equal its one-token products bit for bit",
          "[quant][blocks][matmul]") {
  // Block dots over several tokens per call unpack each weight block once for
  // all of them; each token's integer sums and float accumulation order must
  // stay those of the one-token dot.
  std::mt19937 rng(59);
  const size_t rows = 21, cols = 768;
  for (DType t : {DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1, DType::q4_K, DType::q5_K, DType::q6_K}) {
    const auto wb = random_blocks(t, rows, cols, rng);
    const quant::Matrix w{t, wb.data(), rows, cols};
    const size_t n_tok = 11;  // two 4-token calls and a remainder of 3
    const auto x = tokens(n_tok, cols, rng);
    for (quant::MatmulImpl impl : impls()) {
      std::vector<float> batch(n_tok * rows, -7.0f), single(n_tok * rows, -7.0f);
      quant::matmul_impl(impl, w, x.data(), batch.data(), n_tok, rows);
      for (size_t tk = 0; tk < n_tok; ++tk)
        quant::matmul_impl(impl, w, x.data() + tk * cols, single.data() + tk * rows, 1, rows);
      size_t differ = 0;
      for (size_t i = 0; i < batch.size(); ++i) differ += std::memcmp(&batch[i], &single[i], sizeof(float)) != 0;
      INFO(quant::dtype_name(t) << " " << quant::matmul_impl_name(impl) << ": " << differ << " of " << batch.size()
                                << " outputs differ");
      CHECK(differ == 0);
    }
  }
}

TEST_CASE("matmul runs the implementation DEFKV_EXPECT_MATMUL names", "[quant][blocks][matmul][dispatch]") {
  const char* expect = std::getenv("DEFKV_EXPECT_MATMUL");
  if (expect == nullptr || *expect == '\0') return;  // set by the cross-build runs only
  const auto all = impls();
  std::string names;
  for (auto impl : all) names += std::string(" ") + quant::matmul_impl_name(impl);
  INFO("available:" << names);
  // the best SIMD implementation (listed last before onednn) is the one matmul() picks
  std::vector<quant::MatmulImpl> simd_impls;
  for (auto impl : all)
    if (impl != quant::MatmulImpl::onednn) simd_impls.push_back(impl);
  REQUIRE(!simd_impls.empty());
  const quant::MatmulImpl best = simd_impls.back();
  CHECK(std::string(quant::matmul_impl_name(best)) == expect);
  // matmul() gives that implementation's bits (q8_0 and q4_K weights)
  std::mt19937 rng(47);
  for (DType t : {DType::q8_0, DType::q4_K}) {
    const size_t rows = 16, cols = 512;
    const auto wb = random_blocks(t, rows, cols, rng);
    const quant::Matrix w{t, wb.data(), rows, cols};
    const auto x = tokens(3, cols, rng);
    std::vector<float> a(3 * rows), b(3 * rows);
    quant::matmul(w, x.data(), a.data(), 3, rows);
    quant::matmul_impl(best, w, x.data(), b.data(), 3, rows);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  }
  WARN("matmul() runs " << quant::matmul_impl_name(best) << " (available:" << names << ")");
}

TEST_CASE("a NaN or Inf activation makes its token's low-bit products NaN on every implementation", "[quant][blocks][nonfinite]") {
  std::mt19937 rng(53);
  const size_t rows = 19, cols = 512;
  for (DType t : {DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1, DType::q4_K, DType::q5_K, DType::q6_K}) {
    const auto wb = random_blocks(t, rows, cols, rng);
    const quant::Matrix w{t, wb.data(), rows, cols};
    // 5 tokens: one 4-token call and a single-token remainder where the ISA
    // has a 4-token dot; the bad token in each position
    const size_t n_tok = 5;
    const auto clean = tokens(n_tok, cols, rng);
    for (quant::MatmulImpl impl : impls()) {
      std::vector<float> want(n_tok * rows);
      quant::matmul_impl(impl, w, clean.data(), want.data(), n_tok, rows);
      for (size_t bad_tok = 0; bad_tok < n_tok; ++bad_tok)
        for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
          auto x = clean;
          x[bad_tok * cols + 300] = bad;
          std::vector<float> got(n_tok * rows);
          quant::matmul_impl(impl, w, x.data(), got.data(), n_tok, rows);
          size_t finite_in_bad = 0, changed = 0;
          for (size_t tk = 0; tk < n_tok; ++tk)
            for (size_t r = 0; r < rows; ++r) {
              const float v = got[tk * rows + r];
              if (tk == bad_tok) finite_in_bad += !std::isnan(v);
              else changed += !(v == want[tk * rows + r]);
            }
          INFO(quant::dtype_name(t) << " " << quant::matmul_impl_name(impl) << " bad token " << bad_tok << " " << bad);
          CHECK(finite_in_bad == 0);
          CHECK(changed == 0);
        }
    }
  }
}
