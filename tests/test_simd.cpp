// SIMD kernels: every ISA table this machine can run is compared against the
// scalar reference (sizes 0..3*lanes+1 plus a few model sizes, misaligned
// starts); the scalar reference itself is checked against closed forms; the
// fp16/bf16 conversions against independent formulas.
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "simd/simd.h"

using namespace defkv;
using simd::Kernels;

namespace {

// ---- tolerances (named per numeric format / operation) -----------------------
// Reductions re-associated into vector lanes and several accumulators: the
// classic bound |err| <= gamma_m * sum|terms| with m terms per partial sum plus
// the final tree. m <= n/4 + 32 covers any layout with >= 4 independent lanes.
constexpr double kF32Eps = FLT_EPSILON;
double reduction_tol(size_t n, double sum_abs) {
  return (double(n) / 4.0 + 32.0) * kF32Eps * sum_abs + 1e-30;
}
// Element-wise ops that may use FMA instead of mul+add: one extra rounding.
constexpr double kFmaRelTol = 2.0 * kF32Eps;
// Vector exp (xsimd / polynomial) relative error, generous.
constexpr double kExpRelTol = 8.0 * kF32Eps;
// rmsnorm: reduction error feeds a sqrt and a product.
constexpr double kRmsNormRelTol = 16.0 * kF32Eps;
// Average pooling: an f32 sum of k terms and a multiply by 1/k, against the
// double oracle: |err| <= (k + 1) * eps * sum|terms| / k.
double pool_tol(size_t k, double window_abs_sum) {
  return (double(k) + 1.0) * kF32Eps * window_abs_sum / double(k) + 1e-38;
}
// Window logits: any f32 order of d products (FMA or not) is within
// d * eps * sum|q_e k_e| of the exact dot, so two of them within twice that.
double logits_tol(size_t d, double mag) { return 2.0 * double(d) * kF32Eps * mag + 1e-30; }

constexpr size_t kMaxLanes = 16;  // AVX-512 floats
std::vector<size_t> test_sizes() {
  std::vector<size_t> s;
  for (size_t n = 0; n <= 3 * kMaxLanes + 1; ++n) s.push_back(n);
  for (size_t n : {size_t(64), size_t(100), size_t(172), size_t(5632)}) s.push_back(n);
  return s;
}
constexpr size_t kMaxOffset = 3;  // misalign starts by 0..3 floats

std::vector<const Kernels*> tables() {
  const Kernels* t[8];
  const size_t n = simd::available_kernels(t, 8);
  return std::vector<const Kernels*>(t, t + n);
}

std::vector<float> randv(size_t n, std::mt19937& rng, float lo = -2.0f, float hi = 2.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<uint16_t> rand_f16(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = simd::f32_to_f16(d(rng));
  return v;
}

bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

bool f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }

// Independent fp16 decoder: (-1)^s * (1.m) * 2^(e-15), subnormal m * 2^-24.
double f16_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v;
  if (e == 0) v = std::ldexp(double(m), -24);
  else if (e == 31) v = m ? std::numeric_limits<double>::quiet_NaN() : INFINITY;
  else v = std::ldexp(1.0 + m / 1024.0, e - 15);
  return s ? -v : v;
}

// Independent f32 -> f16 by nearest-value search over the (monotonic) positive
// half patterns 0x0000..0x7bff; ties to the even pattern; >= 65520 -> inf.
uint16_t f16_nearest(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(double(f));
  if (a >= 65520.0) return sign | 0x7c00;
  uint32_t lo = 0, hi = 0x7bff;  // largest h with value(h) <= a
  while (lo < hi) {
    const uint32_t mid = (lo + hi + 1) / 2;
    if (f16_value(uint16_t(mid)) <= a) lo = mid; else hi = mid - 1;
  }
  const double v0 = f16_value(uint16_t(lo));
  const double v1 = lo == 0x7bff ? 65536.0 : f16_value(uint16_t(lo + 1));
  const double d0 = a - v0, d1 = v1 - a;
  uint32_t h = lo;
  if (d1 < d0 || (d1 == d0 && (lo & 1))) h = lo + 1;
  return uint16_t(sign | h);
}

// Independent f32 -> bf16: nearest of the two truncation neighbours, ties even.
uint16_t bf16_nearest(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t t = x & 0xffff0000u;
  const double a = std::fabs(double(f));
  const double v0 = std::fabs(double(std::bit_cast<float>(t)));
  // next pattern up in magnitude; past the largest finite one it is 2^128,
  // the value IEEE rounding compares against before overflowing to inf
  const uint32_t up = t + 0x10000u;
  const double v1 = (up & 0x7fffffffu) == 0x7f800000u ? std::ldexp(1.0, 128)
                                                       : std::fabs(double(std::bit_cast<float>(up)));
  const double d0 = a - v0, d1 = v1 - a;
  uint32_t h = t >> 16;
  if (d1 < d0 || (d1 == d0 && (h & 1))) h += 1;
  return uint16_t(h);
}

// Floats around every fp16 rounding decision: midpoints and their neighbours,
// subnormal and overflow boundaries, plus random values.
std::vector<float> tricky_f16_inputs() {
  std::vector<float> v;
  auto add_around = [&](float f) {
    v.push_back(f);
    v.push_back(std::nextafter(f, INFINITY));
    v.push_back(std::nextafter(f, -INFINITY));
  };
  for (uint32_t h = 0; h < 0x7bff; h += 7) {
    const double mid = 0.5 * (f16_value(uint16_t(h)) + f16_value(uint16_t(h + 1)));
    add_around(float(mid));  // exact: 12 significant bits
    add_around(float(f16_value(uint16_t(h))));
  }
  for (uint32_t h : {0x0000u, 0x0001u, 0x0002u, 0x0003u, 0x03feu, 0x03ffu, 0x0400u, 0x0401u, 0x7bfeu}) {
    const double mid = 0.5 * (f16_value(uint16_t(h)) + f16_value(uint16_t(h + 1)));
    add_around(float(mid));
  }
  for (float f : {65504.0f, 65519.0f, 65520.0f, 65536.0f, 1e10f, 0x1p-25f, 0x1p-24f, 0x1p-26f,
                  3.0f * 0x1p-26f, 0x1p-14f, 1e-30f, FLT_MIN, FLT_TRUE_MIN, FLT_MAX, 1.0f, 0.1f})
    add_around(f);
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  for (int i = 0; i < 20000; ++i) {
    const float f = std::bit_cast<float>(bits(rng));
    if (std::isfinite(f)) v.push_back(f);
  }
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  v.push_back(INFINITY);
  v.push_back(-INFINITY);
  return v;
}

}  // namespace

// ---- dispatch ----------------------------------------------------------------

TEST_CASE("available tables start with scalar and k() is the best one", "[simd][dispatch]") {
  const auto ts = tables();
  REQUIRE(!ts.empty());
  CHECK(ts.front() == &simd::scalar_kernels());
  CHECK(ts.front()->isa == simd::Isa::scalar);
  const char* force = std::getenv("DEFKV_FORCE_SCALAR");
  if (force && std::string(force) == "1") CHECK(simd::k().isa == simd::Isa::scalar);
  else CHECK(&simd::k() == ts.back());
  for (const Kernels* t : ts) {
    INFO(simd::isa_name(t->isa));
    CHECK(std::string(simd::isa_name(t->isa)) != "unknown");
    // every slot filled
    CHECK(t->dot); CHECK(t->dot_f16); CHECK(t->axpy); CHECK(t->axpy_f16); CHECK(t->scale);
    CHECK(t->rmsnorm); CHECK(t->softmax); CHECK(t->silu_mul); CHECK(t->max_inplace);
    CHECK(t->add_inplace); CHECK(t->reduce_max); CHECK(t->reduce_sum); CHECK(t->reduce_abs_sum);
    CHECK(t->f16_to_f32); CHECK(t->f32_to_f16); CHECK(t->bf16_to_f32); CHECK(t->f32_to_bf16);
    CHECK(t->window_logits); CHECK(t->window_logits_packed); CHECK(t->window_softmax); CHECK(t->avg_pool);
    CHECK(t->pool_rescale_max); CHECK(t->clamp_min); CHECK(t->vnorm_weight);
    CHECK(t->attn_softmax_step); CHECK(t->attn_accumulate);
  }
}

// ---- scalar reference vs closed forms ---------------------------------------

TEST_CASE("scalar reference matches closed forms", "[simd][scalar]") {
  const Kernels& s = simd::scalar_kernels();
  const size_t n = 1000;
  std::vector<float> a(n), b(n);
  for (size_t i = 0; i < n; ++i) { a[i] = float(i + 1); b[i] = 1.0f / 1024.0f; }
  // sum_{i=1}^{n} i / 1024 exactly representable
  CHECK(s.dot(a.data(), b.data(), n) == float(n * (n + 1) / 2) / 1024.0f);
  CHECK(s.reduce_sum(a.data(), n) == float(n * (n + 1) / 2));
  for (auto& x : a) x = -x;
  CHECK(s.reduce_abs_sum(a.data(), n) == float(n * (n + 1) / 2));
  CHECK(s.reduce_max(a.data(), n) == -1.0f);
  CHECK(s.reduce_max(a.data(), 0) == -INFINITY);
  CHECK(s.reduce_sum(a.data(), 0) == 0.0f);

  // softmax of [0, ln2, ln4] = [1,2,4]/7; returns sum exp(x - max) = 7/4
  std::vector<float> sm = {0.0f, std::log(2.0f), std::log(4.0f)};
  const float z = s.softmax(sm.data(), 3);
  CHECK(z == Approx(1.75f).epsilon(1e-6));
  CHECK(sm[0] == Approx(1.0 / 7).epsilon(1e-6));
  CHECK(sm[1] == Approx(2.0 / 7).epsilon(1e-6));
  CHECK(sm[2] == Approx(4.0 / 7).epsilon(1e-6));
  // shift invariance with huge inputs (stability)
  std::vector<float> big = {1000.0f, 1000.0f};
  CHECK(s.softmax(big.data(), 2) == 2.0f);
  CHECK(big[0] == 0.5f);

  // rmsnorm of constant c is sign(c) * w / sqrt(1 + eps/c^2)
  std::vector<float> x(64, -3.0f), w(64, 2.0f), out(64);
  s.rmsnorm(out.data(), x.data(), w.data(), 64, 0.0f);
  for (float o : out) CHECK(o == Approx(-2.0f).epsilon(1e-6));

  // silu(0) = 0; silu(x) * 1 = x * sigmoid(x)
  std::vector<float> g = {0.0f, 1.0f, -1.0f, 20.0f}, up = {5.0f, 1.0f, 2.0f, 1.0f};
  s.silu_mul(g.data(), up.data(), 4);
  CHECK(g[0] == 0.0f);
  CHECK(g[1] == Approx(1.0 / (1.0 + std::exp(-1.0))).epsilon(1e-6));
  CHECK(g[2] == Approx(-2.0 / (1.0 + std::exp(1.0))).epsilon(1e-6));
  CHECK(g[3] == Approx(20.0).epsilon(1e-6));

  std::vector<float> y = {1.0f, 2.0f}, xv = {3.0f, 4.0f};
  s.axpy(0.5f, xv.data(), y.data(), 2);
  CHECK(y == std::vector<float>{2.5f, 4.0f});
  s.scale(y.data(), 2.0f, 2);
  CHECK(y == std::vector<float>{5.0f, 8.0f});
  s.max_inplace(y.data(), std::vector<float>{6.0f, 1.0f}.data(), 2);
  CHECK(y == std::vector<float>{6.0f, 8.0f});
  s.add_inplace(y.data(), std::vector<float>{1.0f, -8.0f}.data(), 2);
  CHECK(y == std::vector<float>{7.0f, 0.0f});
}

// ---- conversions -------------------------------------------------------------

TEST_CASE("f16_to_f32 is exact on all 65536 patterns", "[simd][convert]") {
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = uint16_t(h);
  size_t bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const double want = f16_value(uint16_t(h));
    const float got = simd::f16_to_f32(uint16_t(h));
    if (std::isnan(want)) { bad += !std::isnan(got); continue; }
    bad += !(double(got) == want && std::signbit(got) == bool(h & 0x8000));
    // round trip of every non-NaN pattern is the identity
    bad += simd::f32_to_f16(got) != h;
  }
  CHECK(bad == 0);
  for (const Kernels* t : tables()) {
    INFO(simd::isa_name(t->isa));
    std::vector<float> out(65536 + 4);
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      t->f16_to_f32(all.data(), out.data() + off, 65536);
      size_t mism = 0;
      for (uint32_t h = 0; h < 65536; ++h) mism += !same_float(out[off + h], simd::f16_to_f32(uint16_t(h)));
      CHECK(mism == 0);
    }
  }
}

TEST_CASE("f32_to_f16 rounds to nearest even (tricky values)", "[simd][convert]") {
  const auto in = tricky_f16_inputs();
  size_t bad = 0;
  std::vector<uint16_t> want(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    want[i] = f16_nearest(in[i]);
    const uint16_t got = simd::f32_to_f16(in[i]);
    if (got != want[i]) {
      if (bad < 5) UNSCOPED_INFO("f=" << in[i] << " got " << got << " want " << want[i]);
      ++bad;
    }
  }
  CHECK(bad == 0);
  // NaN stays NaN (sign kept), inf stays inf
  CHECK(f16_is_nan(simd::f32_to_f16(NAN)));
  CHECK(f16_is_nan(simd::f32_to_f16(std::bit_cast<float>(0x7f800001u))));  // signalling, low payload
  CHECK(f16_is_nan(simd::f32_to_f16(std::bit_cast<float>(0xffc00000u))));
  CHECK(simd::f32_to_f16(INFINITY) == 0x7c00);
  CHECK(simd::f32_to_f16(-INFINITY) == 0xfc00);
  CHECK(simd::f32_to_f16(-0.0f) == 0x8000);

  std::vector<float> nan_in = {NAN, std::bit_cast<float>(0x7f800001u), std::bit_cast<float>(0xff800123u)};
  for (const Kernels* t : tables()) {
    INFO(simd::isa_name(t->isa));
    std::vector<uint16_t> out(in.size() + 4);
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      t->f32_to_f16(in.data(), out.data() + off, in.size());
      size_t mism = 0;
      for (size_t i = 0; i < in.size(); ++i) mism += out[off + i] != want[i];
      CHECK(mism == 0);
    }
    uint16_t hn[3];
    t->f32_to_f16(nan_in.data(), hn, 3);
    for (uint16_t h : hn) CHECK(f16_is_nan(h));
  }
}

TEST_CASE("bf16 conversions: exact widening, nearest-even narrowing", "[simd][convert]") {
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = uint16_t(h);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = simd::bf16_to_f32(uint16_t(h));
    // widening is the top half of the float pattern
    REQUIRE(std::bit_cast<uint32_t>(f) == (h << 16));
  }
  std::vector<float> in;
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  for (int i = 0; i < 50000; ++i) {
    const uint32_t b = bits(rng);
    in.push_back(std::bit_cast<float>(b));
    in.push_back(std::bit_cast<float>((b & 0xffff0000u) | 0x8000u));  // exact tie
    in.push_back(std::bit_cast<float>((b & 0xffff0000u) | 0x7fffu));
    in.push_back(std::bit_cast<float>((b & 0xffff0000u) | 0x8001u));
  }
  in.push_back(FLT_MAX);
  in.push_back(std::bit_cast<float>(0x7f7f8000u));  // tie just below inf: rounds to inf
  std::vector<float> finite;
  for (float f : in) if (std::isfinite(f)) finite.push_back(f);
  size_t bad = 0;
  for (float f : finite) bad += simd::f32_to_bf16(f) != bf16_nearest(f);
  CHECK(bad == 0);
  CHECK(simd::f32_to_bf16(std::bit_cast<float>(0x7f7f8000u)) == 0x7f80);
  CHECK(simd::f32_to_bf16(INFINITY) == 0x7f80);
  CHECK(bf16_is_nan(simd::f32_to_bf16(std::bit_cast<float>(0x7f800001u))));
  CHECK(bf16_is_nan(simd::f32_to_bf16(NAN)));

  for (const Kernels* t : tables()) {
    INFO(simd::isa_name(t->isa));
    std::vector<float> wide(65536 + 4);
    std::vector<uint16_t> narrow(in.size() + 4);
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      t->bf16_to_f32(all.data(), wide.data() + off, 65536);
      size_t mism = 0;
      for (uint32_t h = 0; h < 65536; ++h) mism += std::bit_cast<uint32_t>(wide[off + h]) != (h << 16);
      CHECK(mism == 0);
      t->f32_to_bf16(in.data(), narrow.data() + off, in.size());
      mism = 0;
      for (size_t i = 0; i < in.size(); ++i) {
        const uint16_t want = simd::f32_to_bf16(in[i]);
        mism += bf16_is_nan(want) ? !bf16_is_nan(narrow[off + i]) : narrow[off + i] != want;
      }
      CHECK(mism == 0);
    }
  }
}

TEST_CASE("vector f32_to_f16 matches scalar on a sweep of all float patterns", "[simd][convert]") {
  std::vector<float> in;
  for (uint64_t b = 0; b < (1ull << 32); b += 4099) in.push_back(std::bit_cast<float>(uint32_t(b)));
  std::vector<uint16_t> want(in.size()), got(in.size());
  simd::scalar_kernels().f32_to_f16(in.data(), want.data(), in.size());
  for (const Kernels* t : tables()) {
    INFO(simd::isa_name(t->isa));
    t->f32_to_f16(in.data(), got.data(), in.size());
    size_t mism = 0;
    for (size_t i = 0; i < in.size(); ++i)
      mism += f16_is_nan(want[i]) ? !f16_is_nan(got[i]) : got[i] != want[i];
    CHECK(mism == 0);
  }
}

// ---- every ISA table vs the scalar reference --------------------------------

TEST_CASE("kernels match the scalar reference over sizes and misalignments", "[simd][kernels]") {
  const Kernels& ref = simd::scalar_kernels();
  std::mt19937 rng(1234);
  for (const Kernels* t : tables()) {
    if (t->isa == simd::Isa::scalar) continue;  // the oracle itself: closed-form tests above
    const Kernels& kk = *t;
    INFO("isa " << simd::isa_name(kk.isa));
    for (size_t n : test_sizes()) {
      for (size_t off = 0; off <= kMaxOffset; ++off) {
        INFO("n " << n << " offset " << off);
        const auto a_buf = randv(n + off, rng), b_buf = randv(n + off, rng);
        const float* a = a_buf.data() + off;
        const float* b = b_buf.data() + off;
        const auto h_buf = rand_f16(n + off, rng);
        const uint16_t* h = h_buf.data() + off;

        double sab = 0, shb = 0, sa = 0;
        for (size_t i = 0; i < n; ++i) {
          sab += std::fabs(double(a[i]) * b[i]);
          shb += std::fabs(double(a[i]) * simd::f16_to_f32(h[i]));
          sa += std::fabs(a[i]);
        }
        CHECK(std::fabs(double(kk.dot(a, b, n)) - ref.dot(a, b, n)) <= reduction_tol(n, sab));
        CHECK(std::fabs(double(kk.dot_f16(a, h, n)) - ref.dot_f16(a, h, n)) <= reduction_tol(n, shb));
        CHECK(std::fabs(double(kk.reduce_sum(a, n)) - ref.reduce_sum(a, n)) <= reduction_tol(n, sa));
        CHECK(std::fabs(double(kk.reduce_abs_sum(a, n)) - ref.reduce_abs_sum(a, n)) <= reduction_tol(n, sa));
        CHECK(same_float(kk.reduce_max(a, n), ref.reduce_max(a, n)));

        // element-wise ops on misaligned outputs
        std::vector<float> y1(b_buf), y2(b_buf);
        kk.axpy(0.37f, a, y1.data() + off, n);
        ref.axpy(0.37f, a, y2.data() + off, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i)
          bad += std::fabs(double(y1[off + i]) - y2[off + i]) >
                 kFmaRelTol * (std::fabs(0.37 * a[i]) + std::fabs(b[i]));
        CHECK(bad == 0);

        y1 = b_buf; y2 = b_buf;
        kk.axpy_f16(-1.5f, h, y1.data() + off, n);
        ref.axpy_f16(-1.5f, h, y2.data() + off, n);
        bad = 0;
        for (size_t i = 0; i < n; ++i)
          bad += std::fabs(double(y1[off + i]) - y2[off + i]) >
                 kFmaRelTol * (std::fabs(1.5 * simd::f16_to_f32(h[i])) + std::fabs(b[i]));
        CHECK(bad == 0);

        y1 = a_buf; y2 = a_buf;
        kk.scale(y1.data() + off, 0.731f, n);
        ref.scale(y2.data() + off, 0.731f, n);
        CHECK(y1 == y2);

        y1 = a_buf; y2 = a_buf;
        kk.max_inplace(y1.data() + off, b, n);
        ref.max_inplace(y2.data() + off, b, n);
        CHECK(y1 == y2);

        y1 = a_buf; y2 = a_buf;
        kk.add_inplace(y1.data() + off, b, n);
        ref.add_inplace(y2.data() + off, b, n);
        CHECK(y1 == y2);

        // rmsnorm, out-of-place and in place
        std::vector<float> o1(n + off), o2(n + off);
        kk.rmsnorm(o1.data() + off, a, b, n, 1e-5f);
        ref.rmsnorm(o2.data() + off, a, b, n, 1e-5f);
        bad = 0;
        for (size_t i = off; i < n + off; ++i)
          bad += std::fabs(double(o1[i]) - o2[i]) > kRmsNormRelTol * std::fabs(o2[i]) + 1e-30;
        CHECK(bad == 0);
        y1 = a_buf;
        kk.rmsnorm(y1.data() + off, y1.data() + off, b, n, 1e-5f);
        bad = 0;
        for (size_t i = off; i < n + off; ++i)
          bad += std::fabs(double(y1[i]) - o2[i]) > kRmsNormRelTol * std::fabs(o2[i]) + 1e-30;
        CHECK(bad == 0);

        // softmax over a wide range of logits
        const auto l_buf = randv(n + off, rng, -30.0f, 30.0f);
        y1 = l_buf; y2 = l_buf;
        const float z1 = kk.softmax(y1.data() + off, n);
        const float z2 = ref.softmax(y2.data() + off, n);
        CHECK(std::fabs(double(z1) - z2) <= kExpRelTol * z2 + reduction_tol(n, z2));
        bad = 0;
        for (size_t i = off; i < n + off; ++i)
          bad += std::fabs(double(y1[i]) - y2[i]) > (2 * kExpRelTol + reduction_tol(n, 1.0)) * y2[i] + 1e-38;
        CHECK(bad == 0);

        // silu_mul
        const auto g_buf = randv(n + off, rng, -20.0f, 20.0f);
        y1 = g_buf; y2 = g_buf;
        kk.silu_mul(y1.data() + off, b, n);
        ref.silu_mul(y2.data() + off, b, n);
        bad = 0;
        for (size_t i = off; i < n + off; ++i)
          bad += std::fabs(double(y1[i]) - y2[i]) > kExpRelTol * std::fabs(y2[i]) + 1e-38;
        CHECK(bad == 0);

        // conversions at this size/offset
        std::vector<float> c1(n + off), c2(n + off);
        std::vector<uint16_t> u1(n + off), u2(n + off);
        kk.f16_to_f32(h, c1.data() + off, n);
        ref.f16_to_f32(h, c2.data() + off, n);
        CHECK(c1 == c2);
        kk.f32_to_f16(a, u1.data() + off, n);
        ref.f32_to_f16(a, u2.data() + off, n);
        CHECK(u1 == u2);
        kk.bf16_to_f32(h, c1.data() + off, n);
        ref.bf16_to_f32(h, c2.data() + off, n);
        CHECK(c1 == c2);
        kk.f32_to_bf16(a, u1.data() + off, n);
        ref.f32_to_bf16(a, u2.data() + off, n);
        CHECK(u1 == u2);
      }
    }
  }
}

TEST_CASE("reductions handle special values like the reference", "[simd][kernels]") {
  for (const Kernels* t : tables()) {
    INFO(simd::isa_name(t->isa));
    for (size_t n : {size_t(1), size_t(7), size_t(33), size_t(100)}) {
      std::vector<float> x(n, -1e30f);
      x[n / 2] = -INFINITY;
      CHECK(t->reduce_max(x.data(), n) == (n == 1 ? -INFINITY : -1e30f));
      x.assign(n, -INFINITY);
      CHECK(t->reduce_max(x.data(), n) == -INFINITY);
      // softmax with -inf entries (masked logits) gives exact zeros there
      std::vector<float> l(n, -INFINITY);
      l[n - 1] = 3.0f;
      const float z = t->softmax(l.data(), n);
      CHECK(z == 1.0f);
      CHECK(l[n - 1] == 1.0f);
      for (size_t i = 0; i + 1 < n; ++i) CHECK(l[i] == 0.0f);
    }
    CHECK(t->reduce_max(nullptr, 0) == -INFINITY);
    CHECK(t->reduce_sum(nullptr, 0) == 0.0f);
    CHECK(t->dot(nullptr, nullptr, 0) == 0.0f);
    CHECK(t->softmax(nullptr, 0) == 0.0f);
  }
}

// ---- gelu / soft-cap ----------------------------------------------------------

TEST_CASE("gelu_tanh_mul and softcap follow their double-precision formulas", "[simd][gelu]") {
  std::vector<float> g = {0.0f, 1.0f, -1.0f, 3.5f, -6.0f, 0.25f}, up = {5.0f, 1.0f, 2.0f, -1.0f, 1.0f, 4.0f};
  const auto g0 = g;
  simd::gelu_tanh_mul(g.data(), up.data(), g.size());
  for (size_t i = 0; i < g.size(); ++i) {
    const double x = g0[i];
    const double want = 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))) * up[i];
    CHECK(g[i] == Approx(want).margin(1e-6).epsilon(1e-6));
  }
  CHECK(g[1] == Approx(0.841192).epsilon(1e-5));  // gelu_tanh(1), not erf-GELU's 0.841345
  std::vector<float> x = {0.0f, 10.0f, -40.0f, 1e6f, -std::numeric_limits<float>::infinity()};
  const auto x0 = x;
  simd::softcap(x.data(), x.size(), 20.0f);
  for (size_t i = 0; i + 1 < x.size(); ++i) CHECK(x[i] == Approx(20.0 * std::tanh(double(x0[i]) / 20.0)).epsilon(1e-6));
  CHECK(x.back() == -20.0f);
}

// ---- rope / pooling -----------------------------------------------------------

TEST_CASE("rope rotates pairs (normal and neox) like the complex product", "[simd][rope]") {
  std::mt19937 rng(5);
  for (size_t head_dim : {size_t(8), size_t(64)}) {
    for (size_t n_rot : {head_dim, head_dim / 2}) {
      const auto x0 = randv(head_dim, rng);
      std::vector<float> c(n_rot / 2), s(n_rot / 2);
      for (size_t i = 0; i < n_rot / 2; ++i) {
        const double th = 7.0 * std::pow(10000.0, -2.0 * double(i) / double(n_rot));
        c[i] = float(std::cos(th));
        s[i] = float(std::sin(th));
      }
      for (bool neox : {false, true}) {
        INFO("head_dim " << head_dim << " n_rot " << n_rot << " neox " << neox);
        auto x = x0;
        simd::rope(x.data(), n_rot, c.data(), s.data(), neox);
        for (size_t i = 0; i < n_rot / 2; ++i) {
          const size_t i0 = neox ? i : 2 * i, i1 = neox ? i + n_rot / 2 : 2 * i + 1;
          // (x0 + i x1) * (c + i s)
          const double re = double(x0[i0]) * c[i] - double(x0[i1]) * s[i];
          const double im = double(x0[i0]) * s[i] + double(x0[i1]) * c[i];
          CHECK(x[i0] == Approx(re).margin(1e-6));
          CHECK(x[i1] == Approx(im).margin(1e-6));
        }
        for (size_t i = n_rot; i < head_dim; ++i) CHECK(x[i] == x0[i]);  // pass-through dims
      }
    }
  }
}

TEST_CASE("avg_pool1d is zero-padded mean with count_include_pad", "[simd][pool]") {
  std::vector<float> x = {1, 2, 3, 4, 5};
  std::vector<float> out(5);
  simd::avg_pool1d(x.data(), out.data(), 5, 3);
  const std::vector<float> want3 = {3.0f / 3, 6.0f / 3, 9.0f / 3, 12.0f / 3, 9.0f / 3};
  for (size_t i = 0; i < 5; ++i) CHECK(out[i] == Approx(want3[i]).epsilon(1e-6));
  simd::avg_pool1d(x.data(), out.data(), 5, 1);
  CHECK(out == x);
  simd::avg_pool1d(x.data(), out.data(), 5, 7);  // wider than the input
  const std::vector<float> want7 = {10.0f / 7, 15.0f / 7, 15.0f / 7, 15.0f / 7, 14.0f / 7};
  for (size_t i = 0; i < 5; ++i) CHECK(out[i] == Approx(want7[i]).epsilon(1e-6));
  std::mt19937 rng(3);
  for (size_t n : {size_t(1), size_t(2), size_t(17), size_t(1000)}) {
    for (size_t k : {size_t(3), size_t(5), size_t(7), size_t(31)}) {
      const auto v = randv(n, rng);
      std::vector<float> o(n);
      simd::avg_pool1d(v.data(), o.data(), n, k);
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) {
        double acc = 0;
        for (long j = long(i) - long(k / 2); j <= long(i) + long(k / 2); ++j)
          if (j >= 0 && j < long(n)) acc += v[size_t(j)];
        bad += std::fabs(o[i] - acc / double(k)) > 1e-5;
      }
      CHECK(bad == 0);
    }
  }
  CHECK_THROWS(simd::avg_pool1d(x.data(), out.data(), 5, 4));
}

// ---- eviction scoring kernels ---------------------------------------------------

namespace {

// Oracle for pooling: zero-padded window sum in double, / k.
double pool_oracle(const float* x, size_t n, size_t k, size_t i, double* abs_sum = nullptr) {
  double acc = 0, a = 0;
  for (long j = long(i) - long(k / 2); j <= long(i) + long(k / 2); ++j)
    if (j >= 0 && j < long(n)) { acc += x[size_t(j)]; a += std::fabs(x[size_t(j)]); }
  if (abs_sum) *abs_sum = a;
  return acc / double(k);
}

}  // namespace

TEST_CASE("scalar scoring kernels match closed forms", "[simd][scalar][scoring]") {
  const Kernels& s = simd::scalar_kernels();
  // window softmax: scale 0.5 of [0, 2 ln2, 4 ln2, junk] over 3 valid = [1,2,4]/7, then 0
  std::vector<float> row = {0.0f, 2 * std::log(2.0f), 4 * std::log(2.0f), 123.0f};
  CHECK(s.window_softmax(row.data(), 4, 3, 0.5f) == Approx(1.75f).epsilon(1e-6));
  CHECK(row[0] == Approx(1.0 / 7).epsilon(1e-6));
  CHECK(row[1] == Approx(2.0 / 7).epsilon(1e-6));
  CHECK(row[2] == Approx(4.0 / 7).epsilon(1e-6));
  CHECK(row[3] == 0.0f);
  row = {5.0f, 6.0f};
  CHECK(s.window_softmax(row.data(), 2, 0, 1.0f) == 0.0f);
  CHECK(row == std::vector<float>{0.0f, 0.0f});

  // pooling: [1..5], k = 3 -> [3, 6, 9, 12, 9] / 3
  std::vector<float> x = {1, 2, 3, 4, 5}, out(5), tmp(5);
  s.avg_pool(x.data(), out.data(), 5, 3);
  const std::vector<float> want3 = {1.0f, 2.0f, 3.0f, 4.0f, 3.0f};
  for (size_t i = 0; i < 5; ++i) CHECK(out[i] == Approx(want3[i]).epsilon(1e-7));
  // pool + rescale: sum x = 15, sum pooled = 13, so p * 15/13; max with acc
  std::vector<float> acc = {0.0f, 100.0f, 0.0f, 0.0f, -1.0f};
  s.pool_rescale_max(x.data(), tmp.data(), acc.data(), 5, 3);
  for (size_t i = 0; i < 5; ++i) CHECK(tmp[i] == Approx(want3[i] * 15.0 / 13.0).epsilon(1e-6));
  CHECK(acc[1] == 100.0f);
  CHECK(acc[0] == tmp[0]);
  CHECK(acc[4] == tmp[4]);
  // all-zero row: nothing to rescale, stays zero
  std::vector<float> z(5, 0.0f), acc0(5, -INFINITY);
  s.pool_rescale_max(z.data(), tmp.data(), acc0.data(), 5, 5);
  CHECK(acc0 == z);

  std::vector<float> c = {-1.0f, 0.5f, 2.0f};
  s.clamp_min(c.data(), 0.75f, 3);
  CHECK(c == std::vector<float>{0.75f, 0.75f, 2.0f});

  std::vector<float> sc = {2.0f, 2.0f, 2.0f}, w(3), num = {1.0f, 3.0f, 5.0f}, den = {4.0f, 0.0f, -1.0f};
  s.vnorm_weight(sc.data(), w.data(), num.data(), den.data(), 3);
  CHECK(w == std::vector<float>{0.25f, 0.0f, 0.0f});
  CHECK(sc == std::vector<float>{0.5f, 0.0f, 0.0f});

  // logits: q = [1 2; 3 4], k = [1 0; 0 1; 1 1] -> [1 2 3; 3 4 7], ldo 4 keeps column 3
  std::vector<float> q = {1, 2, 3, 4}, kk = {1, 0, 0, 1, 1, 1}, lo(8, -7.0f);
  s.window_logits(q.data(), 2, kk.data(), 3, 2, lo.data(), 4, nullptr);
  CHECK(lo == std::vector<float>{1, 2, 3, -7, 3, 4, 7, -7});
  CHECK(simd::window_logits_scratch(0, 64) == 0);
  CHECK(simd::window_logits_scratch(1, 64) == 16 * 64);
  CHECK(simd::window_logits_scratch(17, 8) == 32 * 8);
}

TEST_CASE("scoring kernels match the scalar reference over sizes and misalignments",
          "[simd][kernels][scoring]") {
  const Kernels& ref = simd::scalar_kernels();
  std::mt19937 rng(4321);
  for (const Kernels* t : tables()) {
    const Kernels& kk = *t;
    INFO("isa " << simd::isa_name(kk.isa));
    for (size_t n : test_sizes()) {
      for (size_t off = 0; off <= kMaxOffset; ++off) {
        INFO("n " << n << " offset " << off);
        // window softmax over a causal prefix, logits scaled like 1/sqrt(64)
        for (size_t n_valid : {size_t(0), n / 3, n}) {
          INFO("n_valid " << n_valid);
          const auto l_buf = randv(n + off, rng, -60.0f, 60.0f);
          std::vector<float> y1(l_buf), y2(l_buf);
          const float z1 = kk.window_softmax(y1.data() + off, n, n_valid, 0.125f);
          const float z2 = ref.window_softmax(y2.data() + off, n, n_valid, 0.125f);
          CHECK(std::fabs(double(z1) - z2) <= kExpRelTol * z2 + reduction_tol(n, z2));
          size_t bad = 0;
          for (size_t i = off; i < off + n_valid; ++i)
            bad += std::fabs(double(y1[i]) - y2[i]) >
                   (2 * kExpRelTol + reduction_tol(n, 1.0)) * y2[i] + 1e-38;
          for (size_t i = off + n_valid; i < off + n; ++i) bad += y1[i] != 0.0f;
          for (size_t i = 0; i < off; ++i) bad += y1[i] != l_buf[i];  // before the start untouched
          CHECK(bad == 0);
        }
        // pooling and the defensive rescale + max, attention-like inputs
        const auto a_buf = randv(n + off, rng, 0.0f, 1.0f);
        const float* a = a_buf.data() + off;
        for (size_t k : {size_t(1), size_t(3), size_t(5), size_t(7)}) {
          INFO("k " << k);
          std::vector<float> p1(n + off), p2(n + off);
          kk.avg_pool(a, p1.data() + off, n, k);
          ref.avg_pool(a, p2.data() + off, n, k);
          size_t bad = 0;
          double mass = 0, pmass = 0;
          for (size_t i = 0; i < n; ++i) {
            double w = 0;
            const double o = pool_oracle(a, n, k, i, &w);
            bad += std::fabs(p1[off + i] - o) > pool_tol(k, w);
            bad += std::fabs(p2[off + i] - o) > pool_tol(k, w);
            mass += a[i];
            pmass += o;
          }
          CHECK(bad == 0);
          // rescale factor sum x / sum pooled: two reductions of n positive terms
          const double f_rel = 2.0 * reduction_tol(n, 1.0) + 4.0 * kF32Eps;
          const auto acc_buf = randv(n + off, rng, 0.0f, 0.5f);
          std::vector<float> t1(n + off), t2(n + off), m1(acc_buf), m2(acc_buf);
          kk.pool_rescale_max(a, t1.data() + off, m1.data() + off, n, k);
          ref.pool_rescale_max(a, t2.data() + off, m2.data() + off, n, k);
          bad = 0;
          for (size_t i = 0; i < n; ++i) {
            double w = 0;
            const double want = pool_oracle(a, n, k, i, &w) * (pmass > 0 ? mass / pmass : 1.0);
            const double tol = pool_tol(k, w) * 2.0 + f_rel * std::fabs(want);
            bad += std::fabs(t1[off + i] - want) > tol;
            bad += std::fabs(t2[off + i] - want) > tol;
            bad += m1[off + i] != std::max(acc_buf[off + i], t1[off + i]);
            bad += m2[off + i] != std::max(acc_buf[off + i], t2[off + i]);
          }
          CHECK(bad == 0);
        }
        // mean floor and value-norm weights: element-wise, exact
        {
          const auto x_buf = randv(n + off, rng);
          std::vector<float> c1(x_buf), c2(x_buf);
          kk.clamp_min(c1.data() + off, 0.3f, n);
          ref.clamp_min(c2.data() + off, 0.3f, n);
          CHECK(c1 == c2);
          auto num = randv(n + off, rng, 0.1f, 3.0f), den = randv(n + off, rng, -1.0f, 5.0f);
          for (size_t i = 0; i < den.size(); i += 5) den[i] = 0.0f;
          std::vector<float> s1(x_buf), s2(x_buf), w1(n + off, -1.0f), w2(n + off, -1.0f);
          kk.vnorm_weight(s1.data() + off, w1.data() + off, num.data() + off, den.data() + off, n);
          ref.vnorm_weight(s2.data() + off, w2.data() + off, num.data() + off, den.data() + off, n);
          CHECK(s1 == s2);
          CHECK(w1 == w2);
          std::vector<float> s3(x_buf);
          kk.vnorm_weight(s3.data() + off, nullptr, num.data() + off, den.data() + off, n);
          CHECK(s3 == s2);
        }
      }
    }
  }
}

TEST_CASE("window logits match a double product on every table", "[simd][kernels][scoring]") {
  std::mt19937 rng(77);
  std::vector<size_t> ns;
  for (size_t n = 0; n <= 3 * kMaxLanes + 1; ++n) ns.push_back(n);
  ns.push_back(100);
  for (const Kernels* t : tables()) {
    INFO("isa " << simd::isa_name(t->isa));
    for (size_t d : {size_t(1), size_t(5), size_t(16), size_t(64)}) {
      for (size_t m : {size_t(0), size_t(1), size_t(3), size_t(4), size_t(5), size_t(6),
                       size_t(7), size_t(8), size_t(9), size_t(13), size_t(17), size_t(33)}) {
        for (size_t n : ns) {
          const size_t off = (m + n + d) % (kMaxOffset + 1), pad = n % 3;
          INFO("d " << d << " m " << m << " n " << n << " offset " << off);
          const auto q_buf = randv(m * d + off, rng), k_buf = randv(n * d + off, rng);
          const float* q = q_buf.data() + off;
          const float* k = k_buf.data() + off;
          const size_t ldo = n + pad;
          std::vector<float> out(m * ldo + off, -7.0f);
          const size_t scratch = simd::window_logits_scratch(n, d);
          std::vector<float> panels(scratch + 64 + off, -3.0f);
          t->window_logits(q, m, k, n, d, out.data() + off, ldo, panels.data() + off);
          size_t bad = 0;
          for (size_t r = 0; r < m; ++r) {
            for (size_t j = 0; j < n; ++j) {
              double exact = 0, mag = 0;
              for (size_t e = 0; e < d; ++e) {
                const double p = double(q[r * d + e]) * k[j * d + e];
                exact += p;
                mag += std::fabs(p);
              }
              bad += std::fabs(out[off + r * ldo + j] - exact) > logits_tol(d, mag) / 2.0;
            }
            for (size_t j = n; j < ldo; ++j) bad += out[off + r * ldo + j] != -7.0f;
          }
          for (size_t i = 0; i < off; ++i) bad += out[i] != -7.0f;
          // scratch: nothing written past window_logits_scratch(n, d)
          for (size_t i = off + scratch; i < panels.size(); ++i) bad += panels[i] != -3.0f;
          CHECK(bad == 0);
          // pre-packed keys: same oracle bound; the vector tables give the
          // very same floats (window_logits is pack + packed there)
          std::vector<float> out2(m * ldo + off, -7.0f), panels2(scratch + off, -3.0f);
          simd::pack_window_keys(k, n, d, panels2.data() + off);
          t->window_logits_packed(q, m, panels2.data() + off, n, d, out2.data() + off, ldo);
          bad = 0;
          for (size_t r = 0; r < m; ++r) {
            for (size_t j = 0; j < n; ++j) {
              double exact = 0, mag = 0;
              for (size_t e = 0; e < d; ++e) {
                const double p = double(q[r * d + e]) * k[j * d + e];
                exact += p;
                mag += std::fabs(p);
              }
              bad += std::fabs(out2[off + r * ldo + j] - exact) > logits_tol(d, mag) / 2.0;
            }
            for (size_t j = n; j < ldo; ++j) bad += out2[off + r * ldo + j] != -7.0f;
          }
          if (t->isa != simd::Isa::scalar) bad += out2 != out;
          CHECK(bad == 0);
        }
      }
    }
  }
}

TEST_CASE("scoring kernels handle masked and degenerate rows", "[simd][kernels][scoring]") {
  for (const Kernels* t : tables()) {
    INFO(simd::isa_name(t->isa));
    for (size_t n : {size_t(1), size_t(7), size_t(33), size_t(100)}) {
      // fully masked row: zeros, normaliser 0
      std::vector<float> l(n, -INFINITY);
      CHECK(t->window_softmax(l.data(), n, n, 0.125f) == 0.0f);
      for (float v : l) CHECK(v == 0.0f);
      // one visible key among -inf: exactly 1
      l.assign(n, -INFINITY);
      l[0] = 3.0f;
      CHECK(t->window_softmax(l.data(), n, n, 0.125f) == 1.0f);
      CHECK(l[0] == 1.0f);
      for (size_t i = 1; i < n; ++i) CHECK(l[i] == 0.0f);
      // pooling wider than the row
      std::vector<float> x(n, 1.0f), o(n), acc(n, 0.0f), tmp(n);
      t->avg_pool(x.data(), o.data(), n, 2 * n + 1);
      for (float v : o) CHECK(v == Approx(double(n) / double(2 * n + 1)).epsilon(1e-6));
      t->pool_rescale_max(x.data(), tmp.data(), acc.data(), n, 2 * n + 1);
      for (float v : acc) CHECK(v == Approx(1.0).epsilon(1e-5));  // mass preserved, all equal
    }
    CHECK(t->window_softmax(nullptr, 0, 0, 1.0f) == 0.0f);
    t->avg_pool(nullptr, nullptr, 0, 5);
    t->pool_rescale_max(nullptr, nullptr, nullptr, 0, 5);
    t->window_logits(nullptr, 0, nullptr, 0, 64, nullptr, 0, nullptr);
  }
}

// ---- blocked attention kernels -----------------------------------------------

TEST_CASE("attention softmax step matches a double online softmax", "[simd][kernels][attention]") {
  std::mt19937 rng(91);
  for (const Kernels* t : tables()) {
    INFO("isa " << simd::isa_name(t->isa));
    REQUIRE(t->attn_softmax_step);
    for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(16), size_t(33), size_t(64)}) {
      for (size_t m : {size_t(1), size_t(5), size_t(16), size_t(17), size_t(40)}) {
        INFO("m " << m << " n " << n);
        const size_t ldst = m + 3;  // key-major: st[j * ldst + r]
        std::vector<float> row_max(m, -INFINITY), row_sum(m, 0.0f), corr(m, -1.0f);
        std::vector<double> ref_max(m, -INFINITY), ref_sum(m, 0.0);
        size_t bad = 0;
        for (int step = 0; step < 3; ++step) {
          auto st = randv(n * ldst, rng, -8.0f, 8.0f);
          for (size_t j = 0; j < n; ++j)
            for (size_t r = 0; r < m; ++r)
              // rows 0 and 3 fully masked in step 0; others: every third entry
              if (((r == 0 || r == 3) && step == 0) || (r + j + size_t(step)) % 3 == 0)
                st[j * ldst + r] = -INFINITY;
          const auto st0 = st;
          t->attn_softmax_step(st.data(), n, m, ldst, row_max.data(), row_sum.data(), corr.data());
          for (size_t r = 0; r < m; ++r) {
            double mx = ref_max[r];
            for (size_t j = 0; j < n; ++j) mx = std::max(mx, double(st0[j * ldst + r]));
            const double c = mx == -INFINITY ? 1.0 : std::exp(ref_max[r] - mx);
            double sum = 0;
            for (size_t j = 0; j < n; ++j) {
              const double x = st0[j * ldst + r];
              const double p = x == -INFINITY ? 0.0 : std::exp(x - mx);
              sum += p;
              bad += !(std::fabs(st[j * ldst + r] - p) <= kExpRelTol * p + 1e-30);
            }
            bad += !(std::fabs(corr[r] - c) <= kExpRelTol * c);
            if (mx != -INFINITY) {
              ref_sum[r] = ref_sum[r] * c + sum;
              ref_max[r] = mx;
            }
            bad += double(row_max[r]) != ref_max[r];
            bad += !(std::fabs(row_sum[r] - ref_sum[r]) <= (double(n) + 8.0) * kExpRelTol * ref_sum[r] + 1e-30);
          }
          for (size_t j = 0; j < n; ++j)
            for (size_t r = m; r < ldst; ++r) bad += st[j * ldst + r] != st0[j * ldst + r];  // padding
        }
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE("attention accumulate matches a double P.V on every table", "[simd][kernels][attention]") {
  std::mt19937 rng(92);
  for (const Kernels* t : tables()) {
    INFO("isa " << simd::isa_name(t->isa));
    REQUIRE(t->attn_accumulate);
    for (size_t d : {size_t(1), size_t(5), size_t(16), size_t(17), size_t(64), size_t(80)}) {
      for (size_t m : {size_t(0), size_t(1), size_t(2), size_t(3), size_t(4), size_t(5), size_t(6),
                       size_t(7), size_t(8), size_t(13), size_t(17)}) {
        for (size_t n : {size_t(0), size_t(1), size_t(5), size_t(16), size_t(33), size_t(64)}) {
          for (bool with_corr : {false, true}) {
            const size_t off = (m + n + d) % (kMaxOffset + 1);
            const size_t ldpt = m + 1, ldv = d + 2, ldo = d + 3;
            INFO("d " << d << " m " << m << " n " << n << " corr " << with_corr << " off " << off);
            const auto p_buf = randv(n * ldpt + off, rng, 0.0f, 1.0f);  // key-major pt[j * ldpt + r]
            const auto v_buf = randv(n * ldv + off, rng);
            const auto c_buf = randv(m + off, rng, 0.0f, 1.0f);
            const float* pt = p_buf.data() + off;
            const float* v = v_buf.data() + off;
            const float* corr = with_corr ? c_buf.data() + off : nullptr;
            auto o_buf = randv(m * ldo + off, rng);
            const auto o0 = o_buf;
            t->attn_accumulate(pt, m, n, ldpt, v, ldv, d, corr, o_buf.data() + off, ldo);
            size_t bad = 0;
            for (size_t r = 0; r < m; ++r) {
              for (size_t c = 0; c < d; ++c) {
                const double cr = corr ? corr[r] : 1.0;
                double exact = cr * o0[off + r * ldo + c], mag = std::fabs(exact);
                for (size_t j = 0; j < n; ++j) {
                  const double x = double(pt[j * ldpt + r]) * v[j * ldv + c];
                  exact += x;
                  mag += std::fabs(x);
                }
                bad += !(std::fabs(o_buf[off + r * ldo + c] - exact) <= logits_tol(n + 2, mag));
              }
              for (size_t c = d; c < ldo && r * ldo + c < m * ldo; ++c)
                bad += o_buf[off + r * ldo + c] != o0[off + r * ldo + c];  // padding untouched
            }
            for (size_t i = 0; i < off; ++i) bad += o_buf[i] != o0[i];
            CHECK(bad == 0);
          }
        }
      }
    }
  }
}
