// Weight formats and matrix products: dtype helpers, ggml-compatible Q8_0
// quantisation, row conversions, and every matmul path against matmul_ref
// (double accumulation) with tolerances derived from the formats.
#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include "quant/quant.h"
#include "simd/simd.h"

using namespace defkv;
using quant::DType;

namespace {

constexpr DType kAllTypes[] = {DType::f32, DType::f16, DType::bf16, DType::q8_0};

// ---- tolerances ---------------------------------------------------------------
constexpr double kF32Eps = FLT_EPSILON;
// fp16 has an 11-bit significand: a stored scale is within 2^-11 relative.
constexpr double kF16RelErr = 0x1p-11;
// Float accumulation re-associated over lanes/accumulators/blocks (see test_simd).
double reduction_tol(size_t n, double sum_abs) {
  return (double(n) / 4.0 + 32.0) * kF32Eps * sum_abs + 1e-30;
}
// Q8_0 element error: |x - d16*round(x/d)| <= d/2 + 127*|d - d16| with d = amax/127.
constexpr double kQ8ErrPerScale = 0.5 + 127.0 * kF16RelErr;

std::vector<float> randv(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A weight matrix owning its bytes.
struct OwnedMatrix {
  std::vector<uint8_t> bytes;
  quant::Matrix m;
};
OwnedMatrix make_matrix(DType t, size_t rows, size_t cols, std::mt19937& rng) {
  OwnedMatrix o;
  const size_t rb = quant::row_bytes(t, cols);
  o.bytes.resize(rows * rb + 1);
  const auto src = randv(rows * cols, rng, 0.5f);
  for (size_t r = 0; r < rows; ++r) quant::from_f32(t, src.data() + r * cols, o.bytes.data() + r * rb, cols);
  o.m = {t, o.bytes.data(), rows, cols};
  return o;
}

// Independent dequantised copy of W (row-major doubles) from the stored bytes.
std::vector<double> dequant_all(const quant::Matrix& w) {
  std::vector<double> out(w.rows * w.cols);
  const size_t rb = quant::row_bytes(w.type, w.cols);
  for (size_t r = 0; r < w.rows; ++r) {
    const uint8_t* row = static_cast<const uint8_t*>(w.data) + r * rb;
    for (size_t c = 0; c < w.cols; ++c) {
      double v = 0;
      switch (w.type) {
        case DType::f32: { float f; std::memcpy(&f, row + 4 * c, 4); v = f; break; }
        case DType::f16: { uint16_t h; std::memcpy(&h, row + 2 * c, 2); v = simd::f16_to_f32(h); break; }
        case DType::bf16: { uint16_t h; std::memcpy(&h, row + 2 * c, 2); v = std::bit_cast<float>(uint32_t(h) << 16); break; }
        case DType::q8_0: {
          const uint8_t* blk = row + (c / 32) * 34;
          uint16_t d; std::memcpy(&d, blk, 2);
          v = double(simd::f16_to_f32(d)) * double(int8_t(blk[2 + c % 32]));
          break;
        }
      }
      out[r * w.cols + c] = v;
    }
  }
  return out;
}

// bf16 has an 8-bit significand: rounding to nearest moves a value by at most
// 2^-8 relative (oneDNN's bf16 matmul rounds x to bf16).
constexpr double kBf16RelErr = 0x1p-8;

// Tolerance for one output y[t, r] of a fast matmul relative to the exact
// product: float accumulation, plus (q8_0 SIMD) per-block activation
// quantisation error sum_j |w_j| * amax_x(block)/127 * kQ8ErrPerScale, plus
// (onednn, bf16 weights) bf16 rounding of the activations.
double matmul_tol(DType t, const double* w_row, const float* x, size_t n, bool bf16_activations) {
  double sum_abs = 0, quant_err = 0;
  for (size_t c = 0; c < n; ++c) sum_abs += std::fabs(w_row[c] * x[c]);
  if (bf16_activations && t == DType::bf16) quant_err += kBf16RelErr * sum_abs;
  if (t == DType::q8_0) {
    for (size_t b = 0; b < n / 32; ++b) {
      double amax = 0, wabs = 0;
      for (size_t j = 0; j < 32; ++j) {
        amax = std::max(amax, std::fabs(double(x[b * 32 + j])));
        wabs += std::fabs(w_row[b * 32 + j]);
      }
      quant_err += wabs * amax / 127.0 * kQ8ErrPerScale;
    }
    // the int8 products are exact; block sums and scales round in float
    sum_abs *= 1.0 + 4 * kF16RelErr;
  }
  return reduction_tol(n, sum_abs) + quant_err * 1.0001;
}

}  // namespace

// ---- dtype helpers --------------------------------------------------------------

TEST_CASE("dtype helpers follow ggml's ids and layouts", "[quant][dtype]") {
  CHECK(uint32_t(DType::f32) == 0);
  CHECK(uint32_t(DType::f16) == 1);
  CHECK(uint32_t(DType::q8_0) == 8);
  CHECK(uint32_t(DType::bf16) == 30);
  for (DType t : kAllTypes) {
    DType back{};
    REQUIRE(quant::parse_dtype(quant::dtype_name(t), &back));
    CHECK(back == t);
  }
  DType dummy = DType::f16;
  CHECK_FALSE(quant::parse_dtype("q2_K", &dummy));
  CHECK_FALSE(quant::parse_dtype("", &dummy));
  CHECK(dummy == DType::f16);
  CHECK(quant::block_elems(DType::q8_0) == 32);
  CHECK(quant::block_bytes(DType::q8_0) == 34);
  CHECK(quant::block_elems(DType::bf16) == 1);
  CHECK(quant::block_bytes(DType::bf16) == 2);
  CHECK(quant::row_bytes(DType::f32, 10) == 40);
  CHECK(quant::row_bytes(DType::f16, 10) == 20);
  CHECK(quant::row_bytes(DType::q8_0, 4096) == 4096 / 32 * 34);
  CHECK_THROWS(quant::row_bytes(DType::q8_0, 33));
  CHECK_THROWS(quant::block_bytes(DType(10)));  // q2_K: not read
}

// ---- row conversions ---------------------------------------------------------------

TEST_CASE("q8_0 quantisation matches ggml quantize_row_q8_0_ref", "[quant][q8_0]") {
  // A hand-checked block: x = j - 16 -> amax 16, d = 16/127, q = round((j-16)*127/16)
  std::vector<float> x(32);
  for (size_t j = 0; j < 32; ++j) x[j] = float(int(j) - 16);
  quant::BlockQ8_0 b{};
  quant::from_f32(DType::q8_0, x.data(), &b, 32);
  CHECK(b.d == simd::f32_to_f16(16.0f / 127.0f));
  CHECK(b.qs[0] == -127);
  CHECK(b.qs[16] == 0);
  CHECK(b.qs[31] == int8_t(std::lround(15.0 * 127.0 / 16.0)));  // 119.06 -> 119
  CHECK(b.qs[24] == 64);                                         // 8*127/16 = 63.5 -> away from zero
  CHECK(b.qs[8] == -64);

  // all-zero block: d = 0, q = 0
  std::vector<float> z(32, 0.0f);
  quant::from_f32(DType::q8_0, z.data(), &b, 32);
  CHECK(b.d == 0);
  for (int8_t q : b.qs) CHECK(q == 0);

  // random rows: the ggml algorithm restated, and the round-trip bound
  std::mt19937 rng(42);
  for (size_t n : {size_t(32), size_t(64), size_t(4096)}) {
    const auto v = randv(n, rng, 3.0f);
    std::vector<quant::BlockQ8_0> blocks(n / 32);
    quant::from_f32(DType::q8_0, v.data(), blocks.data(), n);
    std::vector<float> back(n);
    quant::to_f32(DType::q8_0, blocks.data(), back.data(), n);
    size_t bad_bits = 0, bad_err = 0;
    for (size_t blk = 0; blk < n / 32; ++blk) {
      float amax = 0;
      for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[blk * 32 + j]));
      const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
      bad_bits += blocks[blk].d != simd::f32_to_f16(d);
      for (size_t j = 0; j < 32; ++j) {
        bad_bits += blocks[blk].qs[j] != int8_t(std::roundf(v[blk * 32 + j] * id));
        const double deq = double(simd::f16_to_f32(blocks[blk].d)) * blocks[blk].qs[j];
        bad_err += back[blk * 32 + j] != float(deq);
        bad_err += std::fabs(deq - v[blk * 32 + j]) > kQ8ErrPerScale * d;
      }
    }
    CHECK(bad_bits == 0);
    CHECK(bad_err == 0);
  }
}

TEST_CASE("f32/f16/bf16 rows convert element-wise", "[quant][convert]") {
  std::mt19937 rng(9);
  for (size_t n : {size_t(0), size_t(1), size_t(17), size_t(1000)}) {
    const auto v = randv(n, rng, 100.0f);
    std::vector<float> back(n);
    std::vector<uint8_t> row(quant::row_bytes(DType::f32, n) + 1);

    quant::from_f32(DType::f32, v.data(), row.data(), n);
    quant::to_f32(DType::f32, row.data(), back.data(), n);
    CHECK(back == v);

    quant::from_f32(DType::f16, v.data(), row.data(), n);
    quant::to_f32(DType::f16, row.data(), back.data(), n);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      uint16_t h; std::memcpy(&h, row.data() + 2 * i, 2);
      bad += h != simd::f32_to_f16(v[i]);
      bad += back[i] != simd::f16_to_f32(h);
    }
    CHECK(bad == 0);

    quant::from_f32(DType::bf16, v.data(), row.data(), n);
    quant::to_f32(DType::bf16, row.data(), back.data(), n);
    bad = 0;
    for (size_t i = 0; i < n; ++i) {
      uint16_t h; std::memcpy(&h, row.data() + 2 * i, 2);
      bad += h != simd::f32_to_bf16(v[i]);
      bad += std::bit_cast<uint32_t>(back[i]) != uint32_t(h) << 16;
    }
    CHECK(bad == 0);
  }
  std::vector<float> x(33);
  std::vector<uint8_t> row(64);
  CHECK_THROWS(quant::from_f32(DType::q8_0, x.data(), row.data(), 33));
}

TEST_CASE("get_row dequantises one row", "[quant][get_row]") {
  std::mt19937 rng(10);
  for (DType t : kAllTypes) {
    INFO(quant::dtype_name(t));
    auto w = make_matrix(t, 7, 96, rng);
    const auto ref = dequant_all(w.m);
    std::vector<float> out(96);
    for (size_t r = 0; r < 7; ++r) {
      quant::get_row(w.m, r, out.data());
      size_t bad = 0;
      for (size_t c = 0; c < 96; ++c) bad += double(out[c]) != ref[r * 96 + c];
      CHECK(bad == 0);
    }
    CHECK_THROWS(quant::get_row(w.m, 7, out.data()));
  }
}

// ---- matrix products -----------------------------------------------------------------

TEST_CASE("matmul_ref is the exact product of the stored weights", "[quant][matmul]") {
  std::mt19937 rng(20);
  for (DType t : kAllTypes) {
    INFO(quant::dtype_name(t));
    auto w = make_matrix(t, 5, 64, rng);
    const auto W = dequant_all(w.m);
    const auto x = randv(3 * 64, rng);
    std::vector<float> y(3 * 6, -7.0f);
    quant::matmul_ref(w.m, x.data(), y.data(), 3, 6);
    for (size_t tk = 0; tk < 3; ++tk) {
      for (size_t r = 0; r < 5; ++r) {
        double acc = 0;
        for (size_t c = 0; c < 64; ++c) acc += W[r * 64 + c] * x[tk * 64 + c];
        CHECK(y[tk * 6 + r] == float(acc));
      }
      CHECK(y[tk * 6 + 5] == -7.0f);  // padding column untouched
    }
  }
}

std::vector<quant::MatmulImpl> impls() {
  quant::MatmulImpl out[8];
  const size_t n = quant::available_matmul_impls(out, 8);
  return std::vector<quant::MatmulImpl>(out, out + n);
}

TEST_CASE("available matmul implementations", "[quant][matmul]") {
  const auto all = impls();
  REQUIRE(!all.empty());
  CHECK(all.front() == quant::MatmulImpl::scalar);
  for (auto impl : all) CHECK(std::string(quant::matmul_impl_name(impl)) != "unknown");
  // every SIMD kernel table has matching matmul tiles
  const simd::Kernels* tabs[8];
  const size_t nt = simd::available_kernels(tabs, 8);
  for (size_t i = 1; i < nt; ++i) {
    const std::string isa = simd::isa_name(tabs[i]->isa);
    bool found = false;
    for (auto impl : all) found |= isa == quant::matmul_impl_name(impl);
    CHECK(found);
  }
  // an implementation this machine lacks is refused, not silently replaced
  float v = 1.0f;
  const quant::Matrix one{DType::f32, &v, 1, 1};
  for (auto impl : {quant::MatmulImpl::avx2, quant::MatmulImpl::avx512, quant::MatmulImpl::neon,
                    quant::MatmulImpl::neon_dotprod})
    if (std::find(all.begin(), all.end(), impl) == all.end())
      CHECK_THROWS(quant::matmul_impl(impl, one, &v, &v, 1, 1));
}

TEST_CASE("matmul matches matmul_ref for every implementation, dtype, shape and batch", "[quant][matmul]") {
  std::mt19937 rng(21);
  struct Shape { size_t rows, cols; };
  // 300 rows: more than one 256-row block on the onednn f16 path
  const Shape shapes[] = {{1, 32}, {3, 64}, {17, 96}, {33, 256}, {67, 512}, {300, 64}, {5, 5632}};
  const auto all = impls();
  const bool has_onednn = std::find(all.begin(), all.end(), quant::MatmulImpl::onednn) != all.end();
  for (DType t : kAllTypes) {
    for (const Shape s : shapes) {
      auto w = make_matrix(t, s.rows, s.cols, rng);
      const auto W = dequant_all(w.m);
      for (size_t n_tokens : {size_t(1), size_t(2), size_t(5), size_t(7), size_t(40), size_t(70)}) {
        if (s.cols >= 5632 && n_tokens > 7) continue;
        const size_t ldy = s.rows + (n_tokens % 2);  // exercise ldy > rows
        const auto x = randv(n_tokens * s.cols, rng);
        std::vector<float> yr(n_tokens * ldy, NAN);
        quant::matmul_ref(w.m, x.data(), yr.data(), n_tokens, ldy);
        for (int which = -1; which < int(all.size()); ++which) {
        INFO(quant::dtype_name(t) << " rows " << s.rows << " cols " << s.cols << " tokens " << n_tokens
             << " impl " << (which < 0 ? "auto" : quant::matmul_impl_name(all[size_t(which)])));
        std::vector<float> y(n_tokens * ldy, NAN);
        if (which < 0) quant::matmul(w.m, x.data(), y.data(), n_tokens, ldy);
        else quant::matmul_impl(all[size_t(which)], w.m, x.data(), y.data(), n_tokens, ldy);
        size_t bad = 0;
        double worst = 0;
        for (size_t tk = 0; tk < n_tokens; ++tk) {
          for (size_t r = 0; r < s.rows; ++r) {
            // "auto" may pick any available implementation, so it gets the loosest bound
            const bool bf16_act = which < 0 ? has_onednn : all[size_t(which)] == quant::MatmulImpl::onednn;
            const double tol = matmul_tol(t, &W[r * s.cols], &x[tk * s.cols], s.cols, bf16_act);
            const double err = std::fabs(double(y[tk * ldy + r]) - yr[tk * ldy + r]);
            bad += !(err <= tol);
            worst = std::max(worst, err / tol);
          }
          if (ldy > s.rows) CHECK(std::isnan(y[tk * ldy + s.rows]));  // padding untouched
        }
        INFO("worst err/tol " << worst);
        CHECK(bad == 0);
        }
      }
    }
  }
}

TEST_CASE("q8_0: every implementation quantises activations the same way", "[quant][matmul][q8_0]") {
  // With identical int8 activations the implementations differ only by float
  // accumulation order, far below the activation quantisation error.
  std::mt19937 rng(24);
  const auto all = impls();
  for (size_t cols : {size_t(64), size_t(1024)}) {
    auto w = make_matrix(DType::q8_0, 37, cols, rng);
    const auto W = dequant_all(w.m);
    for (size_t n_tokens : {size_t(1), size_t(6), size_t(40)}) {
      const auto x = randv(n_tokens * cols, rng);
      std::vector<float> ys(n_tokens * 37);
      quant::matmul_impl(quant::MatmulImpl::scalar, w.m, x.data(), ys.data(), n_tokens, 37);
      for (auto impl : all) {
        INFO("cols " << cols << " tokens " << n_tokens << " impl " << quant::matmul_impl_name(impl));
        std::vector<float> y(n_tokens * 37);
        quant::matmul_impl(impl, w.m, x.data(), y.data(), n_tokens, 37);
        size_t bad = 0;
        for (size_t tk = 0; tk < n_tokens; ++tk)
          for (size_t r = 0; r < 37; ++r) {
            double sabs = 0;
            for (size_t c = 0; c < cols; ++c) sabs += std::fabs(W[r * cols + c] * x[tk * cols + c]);
            // both sides' rounding, on products of values within 1 quantum of x
            bad += !(std::fabs(y[tk * 37 + r] - ys[tk * 37 + r]) <= 2.0 * reduction_tol(cols, 1.1 * sabs));
          }
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE("matmul_cols multiplies a column slice (any alignment)", "[quant][matmul]") {
  std::mt19937 rng(22);
  struct Case { size_t rows, cols, col0, n, n_tokens; };
  std::vector<Case> cases;
  for (size_t n_tokens : {size_t(1), size_t(9)})
    for (auto [col0, n] : {std::pair<size_t, size_t>{0, 8}, {8, 8}, {24, 16}, {120, 8}, {3, 61},
                           {0, 128}, {64, 64}, {5, 0}})
      cases.push_back({19, 128, col0, n, n_tokens});
  cases.push_back({300, 128, 40, 8, 100});  // big enough to run threaded
  for (DType t : kAllTypes) {
    for (const Case& cs : cases) {
      auto w = make_matrix(t, cs.rows, cs.cols, rng);
      const auto W = dequant_all(w.m);
      INFO(quant::dtype_name(t) << " rows " << cs.rows << " col0 " << cs.col0 << " n " << cs.n
           << " tokens " << cs.n_tokens);
      const size_t ldy = cs.rows + 2;
      const auto x = randv(cs.n_tokens * cs.n, rng);
      std::vector<float> y(cs.n_tokens * ldy, NAN);
      quant::matmul_cols(w.m, cs.col0, cs.n, x.data(), y.data(), cs.n_tokens, ldy);
      size_t bad = 0, touched = 0;
      for (size_t tk = 0; tk < cs.n_tokens; ++tk) {
        for (size_t r = 0; r < cs.rows; ++r) {
          double acc = 0, sabs = 0;
          for (size_t c = 0; c < cs.n; ++c) {
            const double p = W[r * cs.cols + cs.col0 + c] * x[tk * cs.n + c];
            acc += p;
            sabs += std::fabs(p);
          }
          // accumulated in order over the slice: gamma_n bound
          bad += !(std::fabs(y[tk * ldy + r] - acc) <= (double(cs.n) + 2.0) * kF32Eps * sabs + 1e-30);
        }
        touched += !std::isnan(y[tk * ldy + cs.rows]) + !std::isnan(y[tk * ldy + cs.rows + 1]);
      }
      CHECK(bad == 0);
      CHECK(touched == 0);  // padding past the rows untouched
    }
    auto w = make_matrix(t, 19, 128, rng);
    std::vector<float> x(16), y(19);
    CHECK_THROWS(quant::matmul_cols(w.m, 120, 16, x.data(), y.data(), 1, 19));
    CHECK_THROWS(quant::matmul_cols(w.m, 129, 0, x.data(), y.data(), 1, 19));
  }
}

TEST_CASE("matmul rejects bad arguments", "[quant][matmul]") {
  std::mt19937 rng(23);
  auto w = make_matrix(DType::f32, 4, 32, rng);
  std::vector<float> x(64), y(8);
  CHECK_THROWS(quant::matmul(w.m, x.data(), y.data(), 2, 3));  // ldy < rows
  quant::Matrix bad = w.m;
  bad.type = DType::q8_0;
  bad.cols = 33;
  CHECK_THROWS(quant::matmul(bad, x.data(), y.data(), 1, 4));
  bad = w.m;
  bad.data = nullptr;
  CHECK_THROWS(quant::matmul(bad, x.data(), y.data(), 1, 4));
  quant::matmul(w.m, x.data(), y.data(), 0, 4);  // no tokens: no-op
}

// ---- load-time packed weights ----------------------------------------------------

namespace {
bool expect_packing(DType t = DType::q8_0) {
  if (t == DType::f16 || t == DType::bf16) return simd::k().isa == simd::Isa::avx512;
  if (t != DType::q8_0) return false;
  return simd::k().isa == simd::Isa::avx512 &&
         simd::cpu_features().avx512_vnni;
}
// True when a packed f16 product of n_tokens runs the bf16 kernel (see quant::Packed).
bool bf16_batch(size_t n_tokens) {
  return expect_packing(DType::f16) && simd::cpu_features().avx512_bf16 && n_tokens >= quant::kPackedBf16MinTokens;
}
// Error bound of that kernel against the exact product: the weight and the
// activation each move by <= 2^-8 relative when rounded to bf16.
double bf16_rounding_tol(const double* w_row, const float* x, size_t n) {
  double sum_abs = 0;
  for (size_t c = 0; c < n; ++c) sum_abs += std::fabs(w_row[c] * x[c]);
  return (2 * kBf16RelErr + kBf16RelErr * kBf16RelErr) * sum_abs;
}
}  // namespace

TEST_CASE("pack_for_gemm: packed q8_0 matmul matches matmul_ref and the scalar path", "[quant][packed]") {
  std::mt19937 rng(31);
  struct Shape { size_t rows, cols; };
  // odd rows: partial last 16-row group; 1..3 groups leftover after 4-group chunks
  const Shape shapes[] = {{1, 32}, {3, 64}, {17, 96}, {33, 256}, {67, 512}, {300, 64}, {5, 5632}, {130, 2048}};
  for (const Shape s : shapes) {
    auto w = make_matrix(DType::q8_0, s.rows, s.cols, rng);
    const auto W = dequant_all(w.m);
    const quant::Packed p = quant::pack_for_gemm(w.m);
    CHECK(p.packed() == expect_packing());
    if (p.packed()) CHECK(p.bytes == (s.rows + 15) / 16 * 16 * quant::row_bytes(DType::q8_0, s.cols));
    else CHECK(p.bytes == 0);
    for (size_t n_tokens : {size_t(1), size_t(2), size_t(3), size_t(4), size_t(5), size_t(6), size_t(7),
                            size_t(13), size_t(49), size_t(70)}) {
      if (s.cols >= 2048 && n_tokens > 13 && n_tokens != 49) continue;
      const size_t ldy = s.rows + (n_tokens % 2);  // exercise ldy > rows
      const auto x = randv(n_tokens * s.cols, rng);
      std::vector<float> yr(n_tokens * ldy, NAN), ys(n_tokens * ldy, NAN), y(n_tokens * ldy, NAN);
      quant::matmul_ref(w.m, x.data(), yr.data(), n_tokens, ldy);
      quant::matmul_impl(quant::MatmulImpl::scalar, w.m, x.data(), ys.data(), n_tokens, ldy);
      quant::matmul_packed(p, x.data(), y.data(), n_tokens, ldy);
      INFO("rows " << s.rows << " cols " << s.cols << " tokens " << n_tokens);
      size_t bad_ref = 0, bad_scalar = 0;
      double worst = 0;
      for (size_t tk = 0; tk < n_tokens; ++tk) {
        for (size_t r = 0; r < s.rows; ++r) {
          const double tol = matmul_tol(DType::q8_0, &W[r * s.cols], &x[tk * s.cols], s.cols, false);
          const double err = std::fabs(double(y[tk * ldy + r]) - yr[tk * ldy + r]);
          bad_ref += !(err <= tol);
          worst = std::max(worst, err / tol);
          double sabs = 0;
          for (size_t c = 0; c < s.cols; ++c) sabs += std::fabs(W[r * s.cols + c] * x[tk * s.cols + c]);
          // same int8 activations: only float accumulation order differs
          bad_scalar += !(std::fabs(y[tk * ldy + r] - ys[tk * ldy + r]) <= 2.0 * reduction_tol(s.cols, 1.1 * sabs));
        }
        if (ldy > s.rows) CHECK(std::isnan(y[tk * ldy + s.rows]));  // padding untouched
      }
      INFO("worst err/tol vs matmul_ref " << worst);
      CHECK(bad_ref == 0);
      CHECK(bad_scalar == 0);
    }
  }
}

TEST_CASE("pack_for_gemm: q8_0 tails (rows, token tiles, token blocks) match the scalar path", "[quant][packed]") {
  // rows around the 16-row group and the 2-group micro column; tokens 1..13
  // (decode chunks, partial 6-token tiles) and batches split into several
  // equal token blocks (> 192 tokens), with ldy > rows
  std::mt19937 rng(38);
  for (size_t rows : {size_t(1), size_t(15), size_t(16), size_t(31), size_t(33), size_t(47), size_t(100)}) {
    const size_t cols = 64;
    auto w = make_matrix(DType::q8_0, rows, cols, rng);
    const auto W = dequant_all(w.m);
    const quant::Packed p = quant::pack_for_gemm(w.m);
    std::vector<size_t> token_counts;
    for (size_t n = 1; n <= 13; ++n) token_counts.push_back(n);
    for (size_t n : {size_t(191), size_t(193), size_t(389)}) token_counts.push_back(n);
    for (size_t n_tokens : token_counts) {
      const size_t ldy = rows + 3;
      const auto x = randv(n_tokens * cols, rng);
      std::vector<float> ys(n_tokens * ldy, NAN), y(n_tokens * ldy, NAN);
      quant::matmul_impl(quant::MatmulImpl::scalar, w.m, x.data(), ys.data(), n_tokens, ldy);
      quant::matmul_packed(p, x.data(), y.data(), n_tokens, ldy);
      INFO("rows " << rows << " tokens " << n_tokens);
      size_t bad = 0, touched = 0;
      for (size_t tk = 0; tk < n_tokens; ++tk) {
        for (size_t r = 0; r < rows; ++r) {
          double sabs = 0;
          for (size_t c = 0; c < cols; ++c) sabs += std::fabs(W[r * cols + c] * x[tk * cols + c]);
          bad += !(std::fabs(y[tk * ldy + r] - ys[tk * ldy + r]) <= 2.0 * reduction_tol(cols, 1.1 * sabs));
        }
        for (size_t r = rows; r < ldy; ++r) touched += !std::isnan(y[tk * ldy + r]);
      }
      CHECK(bad == 0);
      CHECK(touched == 0);  // padding past rows untouched
    }
  }
}

TEST_CASE("pack_for_gemm: activations are quantised bit-exactly as documented", "[quant][packed]") {
  // W row r selects column r (q = 1, d = 1): y[t, r] = q_x[t, r] * d_x[t, r/32]
  // exactly, with d_x = amax/127 and q_x = round-half-even(x / d_x) computed
  // here independently (ties included: a block with amax 127 has d_x = 1).
  const size_t n = 64, nb = n / 32;
  std::vector<quant::BlockQ8_0> blocks(n * nb);
  for (size_t r = 0; r < n; ++r)
    for (size_t b = 0; b < nb; ++b) {
      quant::BlockQ8_0& blk = blocks[r * nb + b];
      blk.d = simd::f32_to_f16(1.0f);
      std::memset(blk.qs, 0, sizeof blk.qs);
      if (b == r / 32) blk.qs[r % 32] = 1;
    }
  const quant::Matrix m{DType::q8_0, blocks.data(), n, n};
  const quant::Packed p = quant::pack_for_gemm(m);
  std::mt19937 rng(39);
  for (size_t n_tokens : {size_t(1), size_t(5), size_t(13), size_t(200)}) {
    auto x = randv(n_tokens * n, rng);
    for (size_t tk = 0; tk < n_tokens; ++tk) {
      float* xt = &x[tk * n];
      switch (tk % 4) {
        case 0:  // halves: round half to even
          for (size_t j = 0; j < 32; ++j) xt[j] = (j % 2 ? -1.0f : 1.0f) * (float(j) + 0.5f);
          xt[31] = 127.0f;
          break;
        case 1: std::fill(xt, xt + 32, 0.0f); break;  // zero block: d = 0
        case 2: xt[7] = -1e3f; break;                  // one large value
        default: break;
      }
    }
    std::vector<float> y(n_tokens * n), ys(n_tokens * n);
    quant::matmul_packed(p, x.data(), y.data(), n_tokens, n);
    quant::matmul_impl(quant::MatmulImpl::scalar, m, x.data(), ys.data(), n_tokens, n);
    size_t bad = 0, bad_scalar = 0;
    for (size_t tk = 0; tk < n_tokens; ++tk)
      for (size_t b = 0; b < nb; ++b) {
        float amax = 0.0f;
        for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[tk * n + b * 32 + j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        for (size_t j = 0; j < 32; ++j) {
          const float q = std::nearbyint(x[tk * n + b * 32 + j] * id);  // default mode: half to even
          const float expect = q * d;
          bad += std::memcmp(&y[tk * n + b * 32 + j], &expect, sizeof expect) != 0 &&
                 !(expect == 0.0f && y[tk * n + b * 32 + j] == 0.0f);
          bad_scalar += y[tk * n + b * 32 + j] != ys[tk * n + b * 32 + j];
        }
      }
    INFO("tokens " << n_tokens);
    CHECK(bad == 0);
    CHECK(bad_scalar == 0);
  }
}

TEST_CASE("pack_for_gemm: int8 extremes (-128, 127) and zero scales", "[quant][packed]") {
  // GGUF files may hold -128 (ggml's quantiser never writes it): the unsigned
  // offset must still give exact block dots.
  std::mt19937 rng(32);
  const size_t rows = 19, cols = 128, nb = cols / 32;
  std::vector<quant::BlockQ8_0> blocks(rows * nb);
  std::uniform_int_distribution<int> q(-128, 127);
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i].d = i % 7 == 3 ? 0 : simd::f32_to_f16(0.01f * float(1 + i % 5));
    for (size_t j = 0; j < 32; ++j) blocks[i].qs[j] = int8_t(i % 3 == 0 ? (j % 2 ? 127 : -128) : q(rng));
  }
  const quant::Matrix m{DType::q8_0, blocks.data(), rows, cols};
  const auto W = dequant_all(m);
  const quant::Packed p = quant::pack_for_gemm(m);
  for (size_t n_tokens : {size_t(1), size_t(9)}) {
    auto x = randv(n_tokens * cols, rng);
    for (size_t c = 0; c < 32; ++c) x[c] = c % 2 ? 3.0f : -3.0f;  // saturated block against +-127/-128
    std::vector<float> yr(n_tokens * rows), y(n_tokens * rows);
    quant::matmul_ref(m, x.data(), yr.data(), n_tokens, rows);
    quant::matmul_packed(p, x.data(), y.data(), n_tokens, rows);
    size_t bad = 0;
    for (size_t tk = 0; tk < n_tokens; ++tk)
      for (size_t r = 0; r < rows; ++r)
        bad += !(std::fabs(double(y[tk * rows + r]) - yr[tk * rows + r]) <=
                 matmul_tol(DType::q8_0, &W[r * cols], &x[tk * cols], cols, false));
    CHECK(bad == 0);
  }
}

TEST_CASE("pack_for_gemm: other dtypes are not copied and fall back to matmul", "[quant][packed]") {
  std::mt19937 rng(33);
  for (DType t : {DType::f32}) {
    auto w = make_matrix(t, 21, 64, rng);
    const quant::Packed p = quant::pack_for_gemm(w.m);
    CHECK_FALSE(p.packed());
    CHECK(p.bytes == 0);
    const auto x = randv(3 * 64, rng);
    std::vector<float> y1(3 * 21), y2(3 * 21);
    quant::matmul(w.m, x.data(), y1.data(), 3, 21);
    quant::matmul_packed(p, x.data(), y2.data(), 3, 21);
    CHECK(y1 == y2);
  }
  auto w = make_matrix(DType::q8_0, 4, 32, rng);
  const quant::Packed p = quant::pack_for_gemm(w.m);
  std::vector<float> x(64), y(8);
  CHECK_THROWS(quant::matmul_packed(p, x.data(), y.data(), 2, 3));  // ldy < rows
  quant::matmul_packed(p, x.data(), y.data(), 0, 4);                // no tokens: no-op
}

TEST_CASE("pack_for_gemm: packed f16 / bf16 matmul matches matmul_ref", "[quant][packed]") {
  std::mt19937 rng(34);
  struct Shape { size_t rows, cols; };
  // odd rows (partial last 16-row panel, odd panel counts), odd cols (decode tail)
  const Shape shapes[] = {{1, 1}, {3, 7}, {17, 96}, {33, 250}, {67, 513}, {300, 64}, {5, 5632}, {130, 2048}};
  for (DType type : {DType::f16, DType::bf16})
  for (const Shape s : shapes) {
    auto w = make_matrix(type, s.rows, s.cols, rng);
    const auto W = dequant_all(w.m);
    const quant::Packed p = quant::pack_for_gemm(w.m);
    CHECK(p.packed() == expect_packing(type));
    if (p.packed()) CHECK(p.bytes == (s.rows + 15) / 16 * 16 * quant::row_bytes(type, s.cols));
    else CHECK(p.bytes == 0);
    for (size_t n_tokens : {size_t(1), size_t(2), size_t(3), size_t(5), size_t(12), size_t(13), size_t(25),
                            size_t(49), size_t(70)}) {
      if (s.cols >= 2048 && n_tokens > 13 && n_tokens != 49) continue;
      const size_t ldy = s.rows + (n_tokens % 2);  // exercise ldy > rows
      const auto x = randv(n_tokens * s.cols, rng);
      std::vector<float> yr(n_tokens * ldy, NAN), y(n_tokens * ldy, NAN);
      quant::matmul_ref(w.m, x.data(), yr.data(), n_tokens, ldy);
      quant::matmul_packed(p, x.data(), y.data(), n_tokens, ldy);
      INFO(quant::dtype_name(type) << " rows " << s.rows << " cols " << s.cols << " tokens " << n_tokens);
      size_t bad = 0;
      double worst = 0;
      for (size_t tk = 0; tk < n_tokens; ++tk) {
        for (size_t r = 0; r < s.rows; ++r) {
          const double tol = matmul_tol(type, &W[r * s.cols], &x[tk * s.cols], s.cols, false) +
                             (bf16_batch(n_tokens) ? bf16_rounding_tol(&W[r * s.cols], &x[tk * s.cols], s.cols) : 0);
          const double err = std::fabs(double(y[tk * ldy + r]) - yr[tk * ldy + r]);
          bad += !(err <= tol);
          worst = std::max(worst, err / tol);
        }
        if (ldy > s.rows) CHECK(std::isnan(y[tk * ldy + s.rows]));  // padding untouched
      }
      INFO("worst err/tol " << worst);
      CHECK(bad == 0);
    }
  }
}

// Oracle for the bf16 batch kernel: weights and activations rounded to bf16
// by the scalar converter, products summed in double.
TEST_CASE("packed f16 / bf16 batches on AVX512-BF16 equal the bf16-rounded product", "[quant][packed][bf16]") {
  if (!bf16_batch(quant::kPackedBf16MinTokens)) {
    WARN("skipped: no AVX512-BF16 packed kernel on this machine/build");
    return;
  }
  std::mt19937 rng(38);
  struct Shape { size_t rows, cols; };
  // partial last panel and 1-3 panels left after 4-panel tiles; odd cols (a
  // column paired with zeros); cols > 2048 (K-blocks summed in the output)
  const Shape shapes[] = {{1, 1}, {17, 7}, {67, 513}, {300, 64}, {40, 5632}, {130, 2048}, {50, 4097}};
  for (DType type : {DType::f16, DType::bf16})
  for (const Shape s : shapes) {
    auto w = make_matrix(type, s.rows, s.cols, rng);
    const auto W = dequant_all(w.m);
    const quant::Packed p = quant::pack_for_gemm(w.m);
    REQUIRE(p.packed());
    // tokens: the minimum, 6-token tails, more than one token block
    for (size_t n_tokens : {quant::kPackedBf16MinTokens, size_t(23), size_t(70), size_t(300)}) {
      if (s.cols >= 2048 && n_tokens == 300) continue;
      const size_t ldy = s.rows + (n_tokens % 2);
      const auto x = randv(n_tokens * s.cols, rng);
      std::vector<float> y(n_tokens * ldy, NAN);
      quant::matmul_packed(p, x.data(), y.data(), n_tokens, ldy);
      INFO(quant::dtype_name(type) << " rows " << s.rows << " cols " << s.cols << " tokens " << n_tokens);
      size_t bad = 0;
      double worst = 0;
      for (size_t tk = 0; tk < n_tokens; ++tk) {
        for (size_t r = 0; r < s.rows; ++r) {
          double ref = 0, sum_abs = 0;
          for (size_t c = 0; c < s.cols; ++c) {
            const double wb = simd::bf16_to_f32(simd::f32_to_bf16(float(W[r * s.cols + c])));
            const double xb = simd::bf16_to_f32(simd::f32_to_bf16(x[tk * s.cols + c]));
            ref += wb * xb;
            sum_abs += std::fabs(wb * xb);
          }
          const double tol = reduction_tol(s.cols, sum_abs);
          const double err = std::fabs(double(y[tk * ldy + r]) - ref);
          bad += !(err <= tol);
          worst = std::max(worst, err / tol);
        }
        if (ldy > s.rows) CHECK(std::isnan(y[tk * ldy + s.rows]));  // padding untouched
      }
      INFO("worst err/tol " << worst);
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("matmul_packed_multi equals one matmul_packed per product", "[quant][packed]") {
  std::mt19937 rng(35);
  for (DType t : {DType::q8_0, DType::f16, DType::bf16, DType::f32}) {
    const size_t cols = 256;
    auto a = make_matrix(t, 70, cols, rng), b = make_matrix(t, 17, cols, rng), c = make_matrix(t, 33, cols, rng);
    const quant::Packed pa = quant::pack_for_gemm(a.m), pb = quant::pack_for_gemm(b.m), pc = quant::pack_for_gemm(c.m);
    for (size_t n_tokens : {size_t(1), size_t(3), size_t(50), size_t(300)}) {
      INFO(quant::dtype_name(t) << " tokens " << n_tokens);
      const auto x = randv(n_tokens * cols, rng);
      std::vector<float> ya(n_tokens * 71, NAN), yb(n_tokens * 17, NAN), yc(n_tokens * 33, NAN);
      std::vector<float> ya1 = ya, yb1 = yb, yc1 = yc;
      const quant::PackedProduct prods[] = {{&pa, ya.data(), 71}, {&pb, yb.data(), 17}, {&pc, yc.data(), 33}};
      quant::matmul_packed_multi(prods, 3, x.data(), n_tokens);
      quant::matmul_packed(pa, x.data(), ya1.data(), n_tokens, 71);
      quant::matmul_packed(pb, x.data(), yb1.data(), n_tokens, 17);
      quant::matmul_packed(pc, x.data(), yc1.data(), n_tokens, 33);
      // bitwise equal (same kernels, same activations); NaN padding untouched in both
      CHECK(std::memcmp(ya.data(), ya1.data(), ya.size() * sizeof(float)) == 0);
      CHECK(yb == yb1);
      CHECK(yc == yc1);
    }
    auto d = make_matrix(t, 4, 2 * cols, rng);
    const quant::Packed pd = quant::pack_for_gemm(d.m);
    std::vector<float> x(2 * cols), y1(70), y2(4);
    const quant::PackedProduct bad[] = {{&pa, y1.data(), 70}, {&pd, y2.data(), 4}};
    CHECK_THROWS_AS(quant::matmul_packed_multi(bad, 2, x.data(), 1), std::invalid_argument);
  }
}

namespace {
// RssFile of this process in bytes (file-backed resident pages), -1 if unknown.
long long rss_file_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long long kb = -1;
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::sscanf(line, "RssFile: %lld kB", &kb) == 1) break;
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}
}  // namespace

TEST_CASE("pack_for_gemm(w, release_source): file pages leave RSS, heap memory is never touched", "[quant][packed]") {
  std::mt19937 rng(37);
  for (DType t : {DType::q8_0, DType::f16}) {
    INFO(quant::dtype_name(t));
    const size_t rows = 1000, cols = 1024;
    auto w = make_matrix(t, rows, cols, rng);
    const size_t size = rows * quant::row_bytes(t, cols);
    const auto x = randv(3 * cols, rng);
    std::vector<float> y0(3 * rows), y1(3 * rows), row0(cols), row1(cols);
    // heap source: nothing released, bytes unchanged
    {
      const std::vector<uint8_t> before = w.bytes;
      const quant::Packed p = quant::pack_for_gemm(w.m, true);
      CHECK(p.source_released_bytes == 0);
      CHECK(quant::release_source_pages(w.m) == 0);
      CHECK(w.bytes == before);
    }
    // a read-only private file mapping, as the GGUF reader makes (offset 100: unaligned start)
    char path[] = "/tmp/defkv_test_quant_XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    const size_t off = 100;
    std::vector<uint8_t> file(off + size, 0);
    std::memcpy(file.data() + off, w.bytes.data(), size);
    REQUIRE(::write(fd, file.data(), file.size()) == ssize_t(file.size()));
    void* map = ::mmap(nullptr, file.size(), PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    ::unlink(path);
    REQUIRE(map != MAP_FAILED);
    const quant::Matrix m{t, static_cast<const uint8_t*>(map) + off, rows, cols};
    quant::matmul(m, x.data(), y0.data(), 3, rows);  // touches every page
    quant::get_row(m, rows / 2, row0.data());
    const long long rss_before = rss_file_bytes();
    const quant::Packed p = quant::pack_for_gemm(m, true);
    const long long rss_after = rss_file_bytes();
    if (p.packed()) {
      const size_t page = size_t(sysconf(_SC_PAGESIZE));
      // the page-aligned interior: all but the partial first and last pages
      CHECK(p.source_released_bytes >= size - 2 * page);
      CHECK(p.source_released_bytes <= size);
      if (rss_before >= 0) CHECK(rss_before - rss_after >= (long long)(p.source_released_bytes) - (long long)(64 * page));
    } else {
      CHECK(p.source_released_bytes == 0);
    }
    // the packed product and the (refaulted) source still give the same numbers
    quant::matmul_packed(p, x.data(), y1.data(), 3, rows);
    quant::get_row(m, rows / 2, row1.data());
    CHECK(row0 == row1);
    quant::matmul(m, x.data(), y1.data(), 3, rows);
    CHECK(y0 == y1);
    ::munmap(map, file.size());
  }
}

// ---- hidden benchmark (run with: test_quant "[.bench]") ---------------------------
// One TinyLlama-1.1B layer's matrices (E 2048, F 5632, kv 256), back to back:
// matmul(source) vs matmul_packed vs matmul_packed_multi (q/k/v, gate/up).
// Prints ms per layer and the decode weight stream in GB/s.
#include <chrono>
#include <cstdio>
#include <cstdlib>
TEST_CASE("bench: TinyLlama layer, packed vs unpacked", "[.bench]") {
  std::mt19937 rng(36);
  const size_t E = 2048, F = 5632, KV = 256;
  // decode streams kLayers copies (> the last-level cache, as a model does);
  // batches use the first copy
  constexpr size_t kLayers = 6;
  for (DType t : {DType::q8_0, DType::f16}) {
    if (std::getenv("BENCH_TYPE") && std::string(std::getenv("BENCH_TYPE")) != quant::dtype_name(t)) continue;
    const size_t shapes[7][2] = {{E, E}, {KV, E}, {KV, E}, {E, E}, {F, E}, {F, E}, {E, F}};
    std::vector<OwnedMatrix> own;
    for (auto& sh : shapes) own.push_back(make_matrix(t, sh[0], sh[1], rng));
    for (size_t l = 1; l < kLayers; ++l)
      for (size_t i = 0; i < 7; ++i) {
        OwnedMatrix o = own[i];
        o.m.data = o.bytes.data();
        own.push_back(std::move(o));
      }
    std::vector<quant::Packed> ps;
    size_t bytes = 0;
    for (auto& o : own) ps.push_back(quant::pack_for_gemm(o.m));
    for (size_t i = 0; i < 7; ++i) bytes += own[i].m.rows * quant::row_bytes(t, own[i].m.cols);
    for (size_t n_tokens : {size_t(1), size_t(128)}) {
      if (std::getenv("BENCH_TOKENS") && size_t(std::atoi(std::getenv("BENCH_TOKENS"))) != n_tokens) continue;
      const size_t n_layers = n_tokens == 1 ? kLayers : 1;
      const auto x = randv(n_tokens * F, rng);
      std::vector<float> y(n_tokens * F * 3);
      float* yq = y.data();
      float* yk = yq + n_tokens * E;
      float* yv = yk + n_tokens * KV;
      // best single repetition (the machine is shared: the minimum is the least disturbed run)
      auto run = [&](int mode) {
        const int reps = n_tokens == 1 ? 10 : 3;
        double best_s = 1e9;
        for (int r = 0; r < reps; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          for (size_t l = 0; l < n_layers; ++l) {
            const quant::Packed* p = &ps[7 * l];
            if (mode == 0) {
              for (size_t i = 0; i < 7; ++i) quant::matmul(p[i].source, x.data(), y.data(), n_tokens, p[i].source.rows);
            } else if (mode == 1) {
              for (size_t i = 0; i < 7; ++i) quant::matmul_packed(p[i], x.data(), y.data(), n_tokens, p[i].source.rows);
            } else {
              const quant::PackedProduct qkv[] = {{&p[0], yq, E}, {&p[1], yk, KV}, {&p[2], yv, KV}};
              quant::matmul_packed_multi(qkv, 3, x.data(), n_tokens);
              quant::matmul_packed(p[3], x.data(), y.data(), n_tokens, E);
              const quant::PackedProduct gu[] = {{&p[4], yq, F}, {&p[5], yq + n_tokens * F, F}};
              quant::matmul_packed_multi(gu, 2, x.data(), n_tokens);
              quant::matmul_packed(p[6], x.data(), y.data(), n_tokens, E);
            }
          }
          best_s = std::min(best_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(n_layers));
        }
        return best_s;
      };
      run(1);
      double best[3] = {1e9, 1e9, 1e9};
      for (int round = 0; round < 2; ++round)
        for (int mode = 0; mode < 3; ++mode) best[mode] = std::min(best[mode], run(mode));
      const double macs = double(bytes) / double(quant::row_bytes(t, quant::block_elems(t))) * double(quant::block_elems(t));
      std::printf("%s tokens %zu, per layer: unpacked %.3f ms, packed %.3f ms (x%.2f), multi %.3f ms (x%.2f); "
                  "packed %.1f GB/s, %.1f GMAC/s\n",
                  quant::dtype_name(t), n_tokens, best[0] * 1e3, best[1] * 1e3, best[0] / best[1], best[2] * 1e3,
                  best[0] / best[2], double(bytes) / best[1] * 1e-9, macs * double(n_tokens) / best[1] * 1e-9);
    }
  }
}
