// The vector kernels, written once against xsimd and instantiated per ISA.
// Include ONLY from a per-ISA translation unit (kernels_avx2.cpp, ...), which
// is compiled with that ISA's flags and must first specialise
// defkv::simd::detail::Half<Arch> (fp16/bf16 <-> fp32 loads/stores, not in
// xsimd 8.1):
//   static xsimd::batch<float, A> load_f16(const uint16_t* p);   // B::size halves
//   static void store_f16(uint16_t* p, xsimd::batch<float, A> v); // round to nearest even
//   static xsimd::batch<float, A> load_bf16(const uint16_t* p);
//   static void store_bf16(uint16_t* p, xsimd::batch<float, A> v); // RNE, NaN stays NaN
// XKernels<A> is instantiated in exactly one TU per Arch, so no code compiled
// for one ISA can be picked by the linker for another; keep std:: templates
// out of these TUs for the same reason. Tails (n % lanes) use the scalar
// formulas.
#pragma once

#include <xsimd/xsimd.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "simd/simd.h"

#ifndef DEFKV_XSIMD_TU
#error "kernels_xsimd.h is only for per-ISA translation units"
#endif

namespace defkv::simd::detail {

template <class A>
struct Half;

template <class A>
struct XKernels {
  using B = xsimd::batch<float, A>;
  static constexpr size_t L = B::size;
  using H = Half<A>;

  static float hsum(B v) { return xsimd::hadd(v); }
  static float hmax(B v) {
    alignas(64) float t[L];
    v.store_aligned(t);
    float m = t[0];
    for (size_t i = 1; i < L; ++i) m = m < t[i] ? t[i] : m;
    return m;
  }

  // Four independent accumulators over 4*L elements, then L at a time.
  template <class Load>
  static float dot_impl(const float* a, Load load_b, size_t n) {
    B s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
    size_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      s0 = xsimd::fma(B::load_unaligned(a + i), load_b(i), s0);
      s1 = xsimd::fma(B::load_unaligned(a + i + L), load_b(i + L), s1);
      s2 = xsimd::fma(B::load_unaligned(a + i + 2 * L), load_b(i + 2 * L), s2);
      s3 = xsimd::fma(B::load_unaligned(a + i + 3 * L), load_b(i + 3 * L), s3);
    }
    for (; i + L <= n; i += L) s0 = xsimd::fma(B::load_unaligned(a + i), load_b(i), s0);
    return hsum((s0 + s1) + (s2 + s3));
  }

  static float dot(const float* a, const float* b, size_t n) {
    float r = dot_impl(a, [b](size_t i) { return B::load_unaligned(b + i); }, n);
    for (size_t i = n - n % L; i < n; ++i) r += a[i] * b[i];
    return r;
  }

  static float dot_f16(const float* a, const uint16_t* b, size_t n) {
    float r = dot_impl(a, [b](size_t i) { return H::load_f16(b + i); }, n);
    for (size_t i = n - n % L; i < n; ++i) r += a[i] * simd::f16_to_f32(b[i]);
    return r;
  }

  static void axpy(float alpha, const float* x, float* y, size_t n) {
    const B va(alpha);
    size_t i = 0;
    for (; i + L <= n; i += L)
      xsimd::fma(va, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += alpha * x[i];
  }

  static void axpy_f16(float alpha, const uint16_t* x, float* y, size_t n) {
    const B va(alpha);
    size_t i = 0;
    for (; i + L <= n; i += L)
      xsimd::fma(va, H::load_f16(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += alpha * simd::f16_to_f32(x[i]);
  }

  static void scale(float* x, float alpha, size_t n) {
    const B va(alpha);
    size_t i = 0;
    for (; i + L <= n; i += L) (B::load_unaligned(x + i) * va).store_unaligned(x + i);
    for (; i < n; ++i) x[i] *= alpha;
  }

  static float sum_squares(const float* x, size_t n) {
    float r = dot_impl(x, [x](size_t i) { return B::load_unaligned(x + i); }, n);
    for (size_t i = n - n % L; i < n; ++i) r += x[i] * x[i];
    return r;
  }

  static void rmsnorm(float* out, const float* x, const float* w, size_t n, float eps) {
    if (n == 0) return;
    const float ss = sum_squares(x, n);
    const float inv_rms = 1.0f / std::sqrt(ss / float(n) + eps);
    const B vi(inv_rms);
    size_t i = 0;
    for (; i + L <= n; i += L)
      (B::load_unaligned(x + i) * vi * B::load_unaligned(w + i)).store_unaligned(out + i);
    for (; i < n; ++i) out[i] = x[i] * inv_rms * w[i];
  }

  static float reduce_max(const float* x, size_t n) {
    const float ninf = -INFINITY;
    B m0(ninf), m1(ninf);
    size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const B a = B::load_unaligned(x + i), b = B::load_unaligned(x + i + L);
      m0 = xsimd::select(m0 < a, a, m0);
      m1 = xsimd::select(m1 < b, b, m1);
    }
    for (; i + L <= n; i += L) {
      const B a = B::load_unaligned(x + i);
      m0 = xsimd::select(m0 < a, a, m0);
    }
    m0 = xsimd::select(m0 < m1, m1, m0);
    float m = hmax(m0);
    for (; i < n; ++i) m = m < x[i] ? x[i] : m;
    return m;
  }

  static float softmax(float* x, size_t n) {
    if (n == 0) return 0.0f;
    const float m = reduce_max(x, n);
    if (m == -INFINITY) {
      for (size_t i = 0; i < n; ++i) x[i] = 0.0f;
      return 0.0f;
    }
    const B vm(m);
    B s0(0.0f), s1(0.0f);
    size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const B e0 = xsimd::exp(B::load_unaligned(x + i) - vm);
      const B e1 = xsimd::exp(B::load_unaligned(x + i + L) - vm);
      e0.store_unaligned(x + i);
      e1.store_unaligned(x + i + L);
      s0 += e0;
      s1 += e1;
    }
    for (; i + L <= n; i += L) {
      const B e0 = xsimd::exp(B::load_unaligned(x + i) - vm);
      e0.store_unaligned(x + i);
      s0 += e0;
    }
    float sum = hsum(s0 + s1);
    for (; i < n; ++i) {
      x[i] = std::exp(x[i] - m);
      sum += x[i];
    }
    scale(x, 1.0f / sum, n);
    return sum;
  }

  static void silu_mul(float* gate, const float* up, size_t n) {
    const B one(1.0f);
    size_t i = 0;
    for (; i + L <= n; i += L) {
      const B g = B::load_unaligned(gate + i);
      (g / (one + xsimd::exp(-g)) * B::load_unaligned(up + i)).store_unaligned(gate + i);
    }
    for (; i < n; ++i) {
      const float g = gate[i];
      gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }

  static void max_inplace(float* acc, const float* x, size_t n) {
    size_t i = 0;
    for (; i + L <= n; i += L) {
      const B a = B::load_unaligned(acc + i), b = B::load_unaligned(x + i);
      xsimd::select(a < b, b, a).store_unaligned(acc + i);
    }
    for (; i < n; ++i) acc[i] = acc[i] < x[i] ? x[i] : acc[i];
  }

  static void add_inplace(float* acc, const float* x, size_t n) {
    size_t i = 0;
    for (; i + L <= n; i += L) (B::load_unaligned(acc + i) + B::load_unaligned(x + i)).store_unaligned(acc + i);
    for (; i < n; ++i) acc[i] += x[i];
  }

  template <class F>
  static float sum_impl(const float* x, size_t n, F f) {
    B s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
    size_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      s0 += f(B::load_unaligned(x + i));
      s1 += f(B::load_unaligned(x + i + L));
      s2 += f(B::load_unaligned(x + i + 2 * L));
      s3 += f(B::load_unaligned(x + i + 3 * L));
    }
    for (; i + L <= n; i += L) s0 += f(B::load_unaligned(x + i));
    return hsum((s0 + s1) + (s2 + s3));
  }

  static float reduce_sum(const float* x, size_t n) {
    float r = sum_impl(x, n, [](B v) { return v; });
    for (size_t i = n - n % L; i < n; ++i) r += x[i];
    return r;
  }

  static float reduce_abs_sum(const float* x, size_t n) {
    float r = sum_impl(x, n, [](B v) { return xsimd::abs(v); });
    for (size_t i = n - n % L; i < n; ++i) r += std::fabs(x[i]);
    return r;
  }

  static void f16_to_f32(const uint16_t* x, float* y, size_t n) {
    size_t i = 0;
    for (; i + L <= n; i += L) H::load_f16(x + i).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = simd::f16_to_f32(x[i]);
  }
  static void f32_to_f16(const float* x, uint16_t* y, size_t n) {
    size_t i = 0;
    for (; i + L <= n; i += L) H::store_f16(y + i, B::load_unaligned(x + i));
    for (; i < n; ++i) y[i] = simd::f32_to_f16(x[i]);
  }
  static void bf16_to_f32(const uint16_t* x, float* y, size_t n) {
    size_t i = 0;
    for (; i + L <= n; i += L) H::load_bf16(x + i).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = simd::bf16_to_f32(x[i]);
  }
  static void f32_to_bf16(const float* x, uint16_t* y, size_t n) {
    size_t i = 0;
    for (; i + L <= n; i += L) H::store_bf16(y + i, B::load_unaligned(x + i));
    for (; i < n; ++i) y[i] = simd::f32_to_bf16(x[i]);
  }

  static Kernels table(Isa isa) {
    return Kernels{isa,        dot,        dot_f16,     axpy,        axpy_f16,    scale,
                   rmsnorm,    softmax,    silu_mul,    max_inplace, add_inplace, reduce_max,
                   reduce_sum, reduce_abs_sum, f16_to_f32, f32_to_f16, bf16_to_f32, f32_to_bf16};
  }
};

}  // namespace defkv::simd::detail
