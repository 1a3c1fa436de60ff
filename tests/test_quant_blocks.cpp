// Low-bit weight types (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K):
//  - dequantisation of hand-built blocks against values computed here from the
//    chosen levels and scales (independently of the library's bit unpacking);
//  - the reference quantisers against llama-quantize's own files in
//    ../shared/testdata/archs (quant-llama-F32.gguf -> quant-llama-Q*.gguf),
//    block by block;
//  - the scalar block dots against a double dot of the dequantised operands,
//    every matmul implementation against the scalar one, matmul_ref against a
//    double product of to_f32 rows, get_row and matmul_cols on block types;
//  - bad input: block misalignment, unknown ids, truncated data.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "quant/blocks.h"
#include "quant/quant.h"
#if defined(__x86_64__)
#include "quant/packed_q4k.h"
#endif
#include "runtime/gguf/gguf.h"
#include "simd/simd.h"

using namespace defkv;
using quant::DType;

namespace {

constexpr DType kLowBit[] = {DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1,
                             DType::q4_K, DType::q5_K, DType::q6_K};

std::string archs(const std::string& f) {
  const char* e = std::getenv("DEFKV_ARCH_VECTORS");
  if (e && *e) return std::string(e) + "/" + f;
  const char* s = std::getenv("DEFKV_SHARED");
  return (s && *s ? std::string(s) : std::string("../shared")) + "/testdata/archs/" + f;
}

uint16_t h(float f) { return simd::f32_to_f16(f); }
float hf(uint16_t v) { return simd::f16_to_f32(v); }

std::vector<float> randv(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Packs 6-bit scales / mins of the 8 sub-blocks into Q4_K / Q5_K's 12 bytes
// (ggml-common.h: bytes 0-3 = sc0-3 | hi2(sc4-7) << 6, 4-7 = m0-3 | hi2(m4-7)
// << 6, 8-11 = lo4(sc4-7) | lo4(m4-7) << 4).
void pack_k_scales(const int* sc, const int* m, uint8_t* out) {
  for (int j = 0; j < 4; ++j) {
    out[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = uint8_t(m[j] | ((m[j + 4] >> 4) << 6));
    out[j + 8] = uint8_t((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
}

}  // namespace

TEST_CASE("low-bit type ids, block sizes and names follow ggml", "[quant][blocks]") {
  const std::map<DType, std::tuple<uint32_t, size_t, size_t, const char*>> want = {
      {DType::q4_0, {2, 32, 18, "q4_0"}},   {DType::q4_1, {3, 32, 20, "q4_1"}},
      {DType::q5_0, {6, 32, 22, "q5_0"}},   {DType::q5_1, {7, 32, 24, "q5_1"}},
      {DType::q4_K, {12, 256, 144, "q4_K"}}, {DType::q5_K, {13, 256, 176, "q5_K"}},
      {DType::q6_K, {14, 256, 210, "q6_K"}}};
  for (const auto& [t, w] : want) {
    CHECK(uint32_t(t) == std::get<0>(w));
    CHECK(quant::block_elems(t) == std::get<1>(w));
    CHECK(quant::block_bytes(t) == std::get<2>(w));
    CHECK(std::string(quant::dtype_name(t)) == std::get<3>(w));
    DType parsed;
    CHECK(quant::parse_dtype(std::get<3>(w), &parsed));
    CHECK(parsed == t);
    CHECK(quant::supported_weight_type(std::get<0>(w)));
    CHECK(quant::is_low_bit(t));
  }
  for (uint32_t unsupported : {9u, 10u, 11u, 15u, 16u, 99u}) CHECK_FALSE(quant::supported_weight_type(unsupported));
  CHECK_FALSE(quant::is_low_bit(DType::q8_0));
}

TEST_CASE("hand-built legacy blocks dequantise to d*(q-offset) (+m)", "[quant][blocks]") {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> lv4(0, 15), lv5(0, 31);
  int L[32];
  const float d = 0.375f, m = -1.25f;  // exact in fp16
  SECTION("q4_0 / q4_1") {
    for (int& l : L) l = lv4(rng);
    quant::BlockQ4_0 b0{};
    quant::BlockQ4_1 b1{};
    b0.d = b1.d = h(d);
    b1.m = h(m);
    for (int j = 0; j < 16; ++j) b0.qs[j] = b1.qs[j] = uint8_t(L[j] | (L[j + 16] << 4));
    float y0[32], y1[32];
    quant::to_f32(DType::q4_0, &b0, y0, 32);
    quant::to_f32(DType::q4_1, &b1, y1, 32);
    for (int j = 0; j < 32; ++j) {
      CHECK(y0[j] == d * float(L[j] - 8));
      CHECK(y1[j] == d * float(L[j]) + m);
    }
  }
  SECTION("q5_0 / q5_1") {
    for (int& l : L) l = lv5(rng);
    quant::BlockQ5_0 b0{};
    quant::BlockQ5_1 b1{};
    b0.d = b1.d = h(d);
    b1.m = h(m);
    uint32_t qh = 0;
    for (int j = 0; j < 32; ++j) qh |= uint32_t(L[j] >> 4) << j;
    for (int k = 0; k < 4; ++k) b0.qh[k] = b1.qh[k] = uint8_t(qh >> (8 * k));
    for (int j = 0; j < 16; ++j) b0.qs[j] = b1.qs[j] = uint8_t((L[j] & 15) | ((L[j + 16] & 15) << 4));
    float y0[32], y1[32];
    quant::to_f32(DType::q5_0, &b0, y0, 32);
    quant::to_f32(DType::q5_1, &b1, y1, 32);
    for (int j = 0; j < 32; ++j) {
      CHECK(y0[j] == d * float(L[j] - 16));
      CHECK(y1[j] == d * float(L[j]) + m);
    }
  }
}

TEST_CASE("hand-built K-quant blocks dequantise to d*sc*q - dmin*m", "[quant][blocks]") {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> six(0, 63), lv4(0, 15), lv5(0, 31), lv6(0, 63), sc8(-128, 127);
  const float d = 0.0625f, dmin = 0.03125f;
  int sc[8], mn[8], L[256];
  for (int j = 0; j < 8; ++j) {
    sc[j] = six(rng);
    mn[j] = six(rng);
  }
  sc[5] = 63;  // both high bits set in the packed layout
  mn[6] = 48;
  SECTION("q4_K") {
    for (int& l : L) l = lv4(rng);
    quant::BlockQ4_K b{};
    b.d = h(d);
    b.dmin = h(dmin);
    pack_k_scales(sc, mn, b.scales);
    // value 64c + l: low nibble of qs[32c + l]; 64c + 32 + l: high nibble
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    float y[256];
    quant::to_f32(DType::q4_K, &b, y, 256);
    for (int i = 0; i < 256; ++i) {
      const int j = i / 32;
      CHECK(y[i] == Approx(d * sc[j] * L[i] - dmin * mn[j]).margin(1e-6));
    }
  }
  SECTION("q5_K") {
    for (int& l : L) l = lv5(rng);
    quant::BlockQ5_K b{};
    b.d = h(d);
    b.dmin = h(dmin);
    pack_k_scales(sc, mn, b.scales);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        b.qs[32 * c + l] = uint8_t((L[64 * c + l] & 15) | ((L[64 * c + 32 + l] & 15) << 4));
        b.qh[l] |= uint8_t(((L[64 * c + l] >> 4) << (2 * c)) | ((L[64 * c + 32 + l] >> 4) << (2 * c + 1)));
      }
    float y[256];
    quant::to_f32(DType::q5_K, &b, y, 256);
    for (int i = 0; i < 256; ++i) {
      const int j = i / 32;
      CHECK(y[i] == Approx(d * sc[j] * L[i] - dmin * mn[j]).margin(1e-6));
    }
  }
  SECTION("q6_K") {
    for (int& l : L) l = lv6(rng);
    int s16[16];
    for (int& s : s16) s = sc8(rng);
    quant::BlockQ6_K b{};
    b.d = h(d);
    for (int k = 0; k < 16; ++k) b.scales[k] = int8_t(s16[k]);
    for (int hh = 0; hh < 2; ++hh)
      for (int l = 0; l < 32; ++l) {
        const int* q = L + 128 * hh;
        b.ql[64 * hh + l] = uint8_t((q[l] & 15) | ((q[l + 64] & 15) << 4));
        b.ql[64 * hh + l + 32] = uint8_t((q[l + 32] & 15) | ((q[l + 96] & 15) << 4));
        b.qh[32 * hh + l] = uint8_t((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
      }
    float y[256];
    quant::to_f32(DType::q6_K, &b, y, 256);
    for (int i = 0; i < 256; ++i) CHECK(y[i] == Approx(d * s16[i / 16] * (L[i] - 32)).margin(1e-6));
  }
}

TEST_CASE("quantise -> dequantise stays within the type's step", "[quant][blocks]") {
  std::mt19937 rng(11);
  const size_t n = 1024;
  const auto x = randv(n, rng);
  for (DType t : kLowBit) {
    DYNAMIC_SECTION(quant::dtype_name(t)) {
      std::vector<uint8_t> row(quant::row_bytes(t, n));
      std::vector<float> y(n);
      quant::from_f32(t, x.data(), row.data(), n);
      quant::to_f32(t, row.data(), y.data(), n);
      // Per 32 values: levels over the block's range; allow 1 step (the search
      // may trade a value's error for the block's) plus fp16 scale rounding.
      const double levels = t == DType::q4_0 || t == DType::q4_1 || t == DType::q4_K ? 15
                            : t == DType::q6_K                                        ? 63
                                                                                      : 31;
      for (size_t b = 0; b < n; b += 32) {
        float lo = x[b], hi = x[b];
        for (size_t j = b; j < b + 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
        const double step = 2.0 * std::max(std::fabs(lo), std::fabs(hi)) / levels;
        for (size_t j = b; j < b + 32; ++j) CHECK(std::fabs(double(y[j]) - x[j]) <= 1.5 * step);
      }
    }
  }
}

TEST_CASE("reference quantisers reproduce llama-quantize's blocks", "[quant][blocks][archs]") {
  const std::string src_path = archs("quant-llama-F32.gguf");
  REQUIRE(std::filesystem::exists(src_path));
  auto src = gguf::File::open(src_path);
  for (const char* file : {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K"}) {
    DYNAMIC_SECTION(file) {
      auto q = gguf::File::open(archs(std::string("quant-llama-") + file + ".gguf"));
      size_t n_checked = 0;
      for (const gguf::TensorInfo& t : q->tensors()) {
        if (!quant::is_low_bit(DType(t.type))) continue;
        const gguf::TensorInfo& s = src->tensor(t.name);
        REQUIRE(s.type == 0);
        const size_t cols = t.ne[0], rows = t.n_elements / cols, rb = quant::row_bytes(DType(t.type), cols);
        std::vector<uint8_t> mine(rb);
        size_t rows_differ = 0;
        for (size_t r = 0; r < rows; ++r) {
          quant::from_f32(DType(t.type), reinterpret_cast<const float*>(s.data) + r * cols, mine.data(), cols);
          rows_differ += std::memcmp(mine.data(), t.data + r * rb, rb) != 0;
        }
        INFO(t.name << " " << quant::dtype_name(DType(t.type)) << ": " << rows_differ << " of " << rows
                    << " rows differ");
        CHECK(rows_differ == 0);
        ++n_checked;
      }
      CHECK(n_checked >= 15);
    }
  }
}

TEST_CASE("llama-quantize files dequantise close to their F32 source", "[quant][blocks][archs]") {
  const std::string src_path = archs("quant-llama-F32.gguf");
  REQUIRE(std::filesystem::exists(src_path));
  auto src = gguf::File::open(src_path);
  auto q = gguf::File::open(archs("quant-llama-Q4_K_M.gguf"));
  for (const gguf::TensorInfo& t : q->tensors()) {
    if (!quant::is_low_bit(DType(t.type))) continue;
    const size_t cols = t.ne[0], rows = t.n_elements / cols;
    const auto* x = reinterpret_cast<const float*>(src->tensor(t.name).data);
    std::vector<float> y(cols);
    double err2 = 0, x2 = 0;
    for (size_t r = 0; r < rows; ++r) {
      quant::get_row({DType(t.type), t.data, rows, cols}, r, y.data());
      for (size_t c = 0; c < cols; ++c) {
        err2 += std::pow(double(y[c]) - x[r * cols + c], 2);
        x2 += std::pow(double(x[r * cols + c]), 2);
      }
    }
    INFO(t.name);
    // 4-bit: relative RMS error ~ 1/(sqrt(12) * 7.5) ~ 4 %; a layout slip is ~100 %
    CHECK(std::sqrt(err2 / x2) < (t.type == uint32_t(DType::q6_K) ? 0.02 : 0.08));
  }
}

TEST_CASE("scalar block dots equal a double dot of the dequantised operands", "[quant][blocks]") {
  std::mt19937 rng(17);
  const size_t n = 512;
  for (DType t : kLowBit) {
    DYNAMIC_SECTION(quant::dtype_name(t)) {
      const auto w = randv(n, rng, 0.3f), x = randv(n, rng, 2.0f);
      std::vector<uint8_t> row(quant::row_bytes(t, n));
      quant::from_f32(t, w.data(), row.data(), n);
      std::vector<float> wd(n);
      quant::to_f32(t, row.data(), wd.data(), n);
      const size_t nb = n / quant::block_elems(t);
      std::vector<uint8_t> acts(nb * quant::act_block_bytes(t));
      quant::quantize_acts(t, x.data(), acts.data(), n);
      // the activations as the dot sees them: d * q per block
      std::vector<double> xd(n);
      const bool k = quant::block_elems(t) == 256;
      for (size_t i = 0; i < n; ++i) {
        if (k) {
          const auto& a = reinterpret_cast<const quant::ActQ8K*>(acts.data())[i / 256];
          xd[i] = double(a.d) * a.qs[i % 256];
        } else {
          const auto& a = reinterpret_cast<const quant::ActQ8*>(acts.data())[i / 32];
          xd[i] = double(a.d) * a.qs[i % 32];
        }
        CHECK(std::fabs(xd[i] - x[i]) <= std::fabs(x[i]) / 127.0 + 0.06);  // a half step of amax/127
      }
      double want = 0, mag = 0;
      for (size_t i = 0; i < n; ++i) {
        want += double(wd[i]) * xd[i];
        mag += std::fabs(double(wd[i]) * xd[i]);
      }
      const float got = quant::block_dot_ref(t, row.data(), acts.data(), nb);
      CHECK(std::fabs(got - want) <= 1e-5 * mag);
    }
  }
}

TEST_CASE("every matmul implementation agrees with the scalar one on low-bit weights", "[quant][blocks][matmul]") {
  std::mt19937 rng(23);
  quant::MatmulImpl impls[8];
  const size_t n_impls = quant::available_matmul_impls(impls, 8);
  const size_t rows = 37, cols = 512;
  for (DType t : kLowBit) {
    const auto wsrc = randv(rows * cols, rng, 0.2f);
    const size_t rb = quant::row_bytes(t, cols);
    std::vector<uint8_t> wb(rows * rb);
    for (size_t r = 0; r < rows; ++r) quant::from_f32(t, wsrc.data() + r * cols, wb.data() + r * rb, cols);
    const quant::Matrix w{t, wb.data(), rows, cols};
    for (size_t n_tok : {1u, 3u, 40u}) {
      const auto x = randv(n_tok * cols, rng);
      std::vector<float> want(n_tok * rows), ref(n_tok * rows);
      quant::matmul_impl(quant::MatmulImpl::scalar, w, x.data(), want.data(), n_tok, rows);
      quant::matmul_ref(w, x.data(), ref.data(), n_tok, rows);
      // scalar vs the double product of exact weights: the activation rounding only
      double mag = 0;
      for (size_t i = 0; i < cols; ++i) mag += std::fabs(x[i]);
      for (size_t i = 0; i < want.size(); ++i) CHECK(std::fabs(want[i] - ref[i]) <= 0.02 * std::sqrt(double(cols)));
      for (size_t k = 0; k < n_impls; ++k) {
        if (impls[k] == quant::MatmulImpl::scalar) continue;
        std::vector<float> got(n_tok * rows);
        quant::matmul_impl(impls[k], w, x.data(), got.data(), n_tok, rows);
        float worst = 0;
        for (size_t i = 0; i < got.size(); ++i)
          worst = std::max(worst, std::fabs(got[i] - want[i]) / (1.0f + std::fabs(want[i])));
        INFO(quant::dtype_name(t) << " " << quant::matmul_impl_name(impls[k]) << " tokens " << n_tok);
        CHECK(worst <= 1e-4f);
      }
      // matmul() itself and matmul_packed (a packed copy where this CPU has the kernel)
      std::vector<float> got(n_tok * rows);
      quant::matmul(w, x.data(), got.data(), n_tok, rows);
      for (size_t i = 0; i < got.size(); ++i) CHECK(std::fabs(got[i] - want[i]) <= 1e-4f * (1 + std::fabs(want[i])));
      const quant::Packed p = quant::pack_for_gemm(w);
      if (p.packed()) {
        // a re-laid-out copy of about the source's size (16-row groups, +64 B per 16 blocks)
        const size_t groups = (rows + 15) / 16, src_per_group = 16 * rb;
        CHECK(p.bytes <= groups * src_per_group * 1.03);
      }
      quant::matmul_packed(p, x.data(), got.data(), n_tok, rows);
      for (size_t i = 0; i < got.size(); ++i) CHECK(std::fabs(got[i] - want[i]) <= 1e-4f * (1 + std::fabs(want[i])));
      // two products sharing x in one parallel region (q/k/v, gate/up)
      std::vector<float> got2(n_tok * (rows + 3), -7.0f);
      const quant::PackedProduct prods[2] = {{&p, got.data(), rows}, {&p, got2.data(), rows + 3}};
      std::fill(got.begin(), got.end(), -7.0f);
      quant::matmul_packed_multi(prods, 2, x.data(), n_tok);
      for (size_t t = 0; t < n_tok; ++t)
        for (size_t r = 0; r < rows; ++r) {
          const float w0 = want[t * rows + r];
          CHECK(std::fabs(got[t * rows + r] - w0) <= 1e-4f * (1 + std::fabs(w0)));
          CHECK(std::fabs(got2[t * (rows + 3) + r] - w0) <= 1e-4f * (1 + std::fabs(w0)));
        }
    }
  }
}

TEST_CASE("matmul_packed_multi shares the activations across Q4_K, Q5_K and Q6_K (and the 32-block types)", "[quant][blocks][matmul]") {
  std::mt19937 rng(31);
  const size_t cols = 512;
  for (auto types : {std::vector<DType>{DType::q4_K, DType::q6_K, DType::q4_K},
                     std::vector<DType>{DType::q5_K, DType::q4_K, DType::q6_K},
                     std::vector<DType>{DType::q8_0, DType::q4_0},
                     std::vector<DType>{DType::q5_1, DType::q4_1, DType::q5_0, DType::q4_0},
                     std::vector<DType>{DType::q4_K, DType::q8_0}}) {
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<quant::Packed> packs;
    std::vector<size_t> rows;
    for (size_t i = 0; i < types.size(); ++i) {
      rows.push_back(16 * (i + 1) + 5);
      const auto w = randv(rows[i] * cols, rng, 0.3f);
      const size_t rb = quant::row_bytes(types[i], cols);
      bytes.emplace_back(rows[i] * rb);
      for (size_t r = 0; r < rows[i]; ++r) quant::from_f32(types[i], w.data() + r * cols, bytes.back().data() + r * rb, cols);
    }
    for (size_t i = 0; i < types.size(); ++i) packs.push_back(quant::pack_for_gemm({types[i], bytes[i].data(), rows[i], cols}));
    for (size_t n_tok : {1u, 9u}) {
      const auto x = randv(n_tok * cols, rng);
      std::vector<std::vector<float>> got(types.size()), want(types.size());
      std::vector<quant::PackedProduct> prods;
      for (size_t i = 0; i < types.size(); ++i) {
        got[i].assign(n_tok * rows[i], 0.0f);
        want[i].assign(n_tok * rows[i], 0.0f);
        prods.push_back({&packs[i], got[i].data(), rows[i]});
        quant::matmul_impl(quant::MatmulImpl::scalar, packs[i].source, x.data(), want[i].data(), n_tok, rows[i]);
      }
      quant::matmul_packed_multi(prods.data(), prods.size(), x.data(), n_tok);
      for (size_t i = 0; i < types.size(); ++i)
        for (size_t k = 0; k < got[i].size(); ++k) {
          INFO(quant::dtype_name(types[i]) << " tokens " << n_tok);
          CHECK(std::fabs(got[i][k] - want[i][k]) <= 1e-4f * (1 + std::fabs(want[i][k])));
        }
    }
  }
}

#if defined(__x86_64__)
TEST_CASE("the AVX-512 Q8_K activation quantiser equals quantize_acts bit for bit", "[quant][blocks]") {
  if (!simd::cpu_features().avx512) {
    WARN("no AVX-512: the vectorised quantiser is not run here");
    return;
  }
  std::mt19937 rng(41);
  const size_t nb = 12;
  auto x = randv(nb * quant::kQK_K, rng, 3.0f);
  // block 1: the largest magnitude twice, negative first (the first one sets the sign)
  x[256 + 10] = -9.5f;
  x[256 + 200] = 9.5f;
  // block 2: values on rounding ties (x * iscale = k + 0.5 for the scale -127 / 127)
  for (size_t j = 0; j < quant::kQK_K; ++j) x[512 + j] = float(int(j % 64) - 32) + 0.5f;
  x[512] = 127.0f;
  // block 3 all zero, block 4 with a NaN, block 5 with an Inf
  std::fill(x.begin() + 768, x.begin() + 1024, 0.0f);
  x[1024 + 77] = std::numeric_limits<float>::quiet_NaN();
  x[1280 + 3] = -std::numeric_limits<float>::infinity();
  std::vector<quant::ActQ8K> want(nb), got(nb);
  quant::quantize_acts(DType::q4_K, x.data(), want.data(), x.size());
  quant::detail::avx512_quantize_q8k(x.data(), got.data(), nb);
  for (size_t i = 0; i < nb; ++i) {
    INFO("block " << i);
    if (std::isnan(want[i].d)) CHECK(std::isnan(got[i].d));
    else CHECK(got[i].d == want[i].d);
    CHECK(std::memcmp(got[i].qs, want[i].qs, sizeof got[i].qs) == 0);
    CHECK(std::memcmp(got[i].bsums, want[i].bsums, sizeof got[i].bsums) == 0);
  }
  CHECK(want[1].d > 0.0f);  // the first of the two 9.5s was negative
}
#endif

TEST_CASE("matmul_ref, get_row and matmul_cols read low-bit rows exactly", "[quant][blocks]") {
  std::mt19937 rng(29);
  const size_t rows = 5, cols = 512;
  for (DType t : kLowBit) {
    DYNAMIC_SECTION(quant::dtype_name(t)) {
      const auto wsrc = randv(rows * cols, rng);
      const size_t rb = quant::row_bytes(t, cols);
      std::vector<uint8_t> wb(rows * rb);
      for (size_t r = 0; r < rows; ++r) quant::from_f32(t, wsrc.data() + r * cols, wb.data() + r * rb, cols);
      const quant::Matrix w{t, wb.data(), rows, cols};
      std::vector<float> wd(rows * cols);
      for (size_t r = 0; r < rows; ++r) quant::to_f32(t, wb.data() + r * rb, wd.data() + r * cols, cols);
      std::vector<float> row(cols);
      quant::get_row(w, 3, row.data());
      CHECK(std::memcmp(row.data(), wd.data() + 3 * cols, cols * sizeof(float)) == 0);
      const auto x = randv(cols, rng);
      std::vector<float> y(rows);
      quant::matmul_ref(w, x.data(), y.data(), 1, rows);
      for (size_t r = 0; r < rows; ++r) {
        double s = 0, mag = 0;
        for (size_t c = 0; c < cols; ++c) s += double(wd[r * cols + c]) * x[c], mag += std::fabs(double(wd[r * cols + c]) * x[c]);
        CHECK(std::fabs(y[r] - s) <= 1e-6 * mag);
      }
      // an unaligned column slice (one head of W_o, say): cols [77, 77 + 100)
      std::vector<float> ys(rows);
      quant::matmul_cols(w, 77, 100, x.data(), ys.data(), 1, rows);
      for (size_t r = 0; r < rows; ++r) {
        double s = 0, mag = 0;
        for (size_t c = 0; c < 100; ++c) s += double(wd[r * cols + 77 + c]) * x[c], mag += std::fabs(double(wd[r * cols + 77 + c]) * x[c]);
        CHECK(std::fabs(ys[r] - s) <= 1e-5 * mag + 1e-6);
      }
    }
  }
}

TEST_CASE("low-bit bad input gives errors naming the type", "[quant][blocks][errors]") {
  CHECK_THROWS_WITH(quant::row_bytes(DType::q4_K, 100), Catch::Contains("q4_K") && Catch::Contains("256"));
  CHECK_THROWS_WITH(quant::row_bytes(DType::q5_0, 48), Catch::Contains("q5_0") && Catch::Contains("32"));
  CHECK_THROWS_WITH(quant::block_elems(DType(10)), Catch::Contains("10"));
  float x[256] = {};
  std::vector<uint8_t> buf(1024);
  CHECK_THROWS(quant::from_f32(DType::q6_K, x, buf.data(), 200));
  CHECK_THROWS(quant::to_f32(DType::q4_0, buf.data(), x, 33));
  const quant::Matrix bad{DType::q4_K, buf.data(), 2, 300};
  CHECK_THROWS_WITH(quant::matmul(bad, x, x, 1, 2), Catch::Contains("q4_K"));
}

TEST_CASE("GGUF reader rejects misaligned, unknown and truncated block tensors", "[quant][blocks][errors]") {
  std::vector<uint8_t> data(2 * 144, 0);
  auto file_with = [&](uint32_t type, uint64_t ne0) {
    gguf::Writer w;
    w.set_string("general.architecture", "llama");
    w.add_tensor("blk.0.attn_q.weight", uint32_t(DType::q4_K), {256, 2}, data.data(), data.size());
    std::vector<uint8_t> bytes = w.to_bytes();
    // patch the tensor info: name, n_dims (u32), ne[0] (u64), ne[1], type (u32)
    const std::string name = "blk.0.attn_q.weight";
    const auto it = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
    REQUIRE(it != bytes.end());
    const size_t at = size_t(it - bytes.begin()) + name.size() + 4;
    std::memcpy(&bytes[at], &ne0, 8);
    std::memcpy(&bytes[at + 16], &type, 4);
    return bytes;
  };
  {
    auto b = file_with(uint32_t(DType::q4_K), 256);
    CHECK_NOTHROW(gguf::File::from_buffer(b.data(), b.size()));
    // truncated: the last block is cut short
    CHECK_THROWS_WITH(gguf::File::from_buffer(b.data(), b.size() - 10),
                      Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("outside the file"));
  }
  {
    auto b = file_with(uint32_t(DType::q4_K), 100);
    CHECK_THROWS_WITH(gguf::File::from_buffer(b.data(), b.size()),
                      Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("q4_K") &&
                          Catch::Contains("not a multiple of the block size 256"));
  }
  {
    auto b = file_with(99, 256);
    CHECK_THROWS_WITH(gguf::File::from_buffer(b.data(), b.size()),
                      Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("type 99"));
  }
  {
    auto b = file_with(10, 256);  // q2_K: a known ggml type this runtime does not read
    CHECK_THROWS_WITH(gguf::File::from_buffer(b.data(), b.size()),
                      Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("q2_K"));
  }
}

TEST_CASE("a NaN or Inf activation makes the low-bit block dot NaN, not a finite number", "[quant][blocks]") {
  // Found by tests/fuzz/fuzz_model: the activation quantisation converted
  // NaN to int (undefined) and so turned it into a finite value, hiding it
  // from the engine's non-finite logits check.
  std::mt19937 rng(5);
  const size_t n = 512;
  for (DType t : kLowBit) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      INFO(quant::dtype_name(t) << " " << bad);
      const auto w = randv(n, rng, 0.3f);
      auto x = randv(n, rng, 2.0f);
      x[300] = bad;
      std::vector<uint8_t> row(quant::row_bytes(t, n));
      quant::from_f32(t, w.data(), row.data(), n);
      const size_t nb = n / quant::block_elems(t);
      std::vector<uint8_t> acts(nb * quant::act_block_bytes(t));
      quant::quantize_acts(t, x.data(), acts.data(), n);
      CHECK(std::isnan(quant::block_dot_ref(t, row.data(), acts.data(), nb)));
    }
  }
}
