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

  // ---- eviction scoring ----------------------------------------------------

  // Window logits. Keys are packed into panels of kNr = 16 keys, [n_panel][d]
  // [16] (zero-padded; the layout window_logits_scratch() sizes), then a block
  // of kMr queries x kNr keys is kMr * V vector accumulators (V = 16 / L),
  // each output summed along d in order. kMr keeps the accumulators plus V
  // key vectors and a broadcast within the register file (32 zmm: 8 x 1;
  // 16 ymm: 6 x 2; 32 NEON q: 6 x 4) (docs/tuning.md).
  static constexpr size_t kNr = 16;
  static constexpr size_t V = kNr / L;
  static_assert(V * L == kNr, "panel width must be a multiple of the lanes");
  static constexpr size_t kMr = L >= 16 ? 8 : 6;

  // R queries qb[R, d] against one panel kp[d][kNr]; the first nc of the kNr
  // results of row r go to o + r * ldo. Full panels store straight from the
  // accumulators (kept in registers); the last, partial one goes via tmp.
  template <size_t R, bool Full>
  static void logits_panel(const float* qb, size_t d, const float* kp, float* o, size_t ldo,
                           size_t nc) {
    B acc[R][V];
#pragma GCC unroll 16
    for (size_t r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (size_t v = 0; v < V; ++v) acc[r][v] = B(0.0f);
    for (size_t e = 0; e < d; ++e) {
      B kv[V];
#pragma GCC unroll 16
      for (size_t v = 0; v < V; ++v) kv[v] = B::load_unaligned(kp + e * kNr + v * L);
#pragma GCC unroll 16
      for (size_t r = 0; r < R; ++r) {
        const B qe(qb[r * d + e]);
#pragma GCC unroll 16
        for (size_t v = 0; v < V; ++v) acc[r][v] = xsimd::fma(qe, kv[v], acc[r][v]);
      }
    }
    if constexpr (Full) {
#pragma GCC unroll 16
      for (size_t r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (size_t v = 0; v < V; ++v) acc[r][v].store_unaligned(o + r * ldo + v * L);
    } else {
      alignas(64) float tmp[kNr];
      for (size_t r = 0; r < R; ++r) {
        for (size_t v = 0; v < V; ++v) acc[r][v].store_aligned(tmp + v * L);
        for (size_t c = 0; c < nc; ++c) o[r * ldo + c] = tmp[c];
      }
    }
  }

  // R queries (rows r0..r0+R) against every panel.
  template <size_t R>
  static void logits_block(const float* q, size_t r0, const float* panels, size_t n, size_t d,
                           float* out, size_t ldo) {
    const size_t n_full = n / kNr;
    const float* qb = q + r0 * d;  // [R, d]
    float* o = out + r0 * ldo;
    for (size_t p = 0; p < n_full; ++p)
      logits_panel<R, true>(qb, d, panels + p * d * kNr, o + p * kNr, ldo, kNr);
    if (n % kNr)
      logits_panel<R, false>(qb, d, panels + n_full * d * kNr, o + n_full * kNr, ldo, n % kNr);
  }

  static void window_logits_packed(const float* q, size_t m, const float* panels, size_t n,
                                   size_t d, float* out, size_t ldo) {
    if (m == 0 || n == 0) return;
    if (d == 0) {
      for (size_t r = 0; r < m; ++r)
        for (size_t j = 0; j < n; ++j) out[r * ldo + j] = 0.0f;
      return;
    }
    size_t r0 = 0;
    for (; r0 + kMr <= m; r0 += kMr) logits_block<kMr>(q, r0, panels, n, d, out, ldo);
    if (m - r0 >= 4) { logits_block<4>(q, r0, panels, n, d, out, ldo); r0 += 4; }
    if (m - r0 >= 2) { logits_block<2>(q, r0, panels, n, d, out, ldo); r0 += 2; }
    if (m - r0 >= 1) logits_block<1>(q, r0, panels, n, d, out, ldo);
  }

  static void window_logits(const float* q, size_t m, const float* k, size_t n, size_t d,
                            float* out, size_t ldo, float* panels) {
    if (m == 0 || n == 0) return;
    if (d > 0) simd::pack_window_keys(k, n, d, panels);
    window_logits_packed(q, m, panels, n, d, out, ldo);
  }

  static float window_softmax(float* x, size_t n, size_t n_valid, float scale_by) {
    const size_t c = n_valid;
    for (size_t i = c; i < n; ++i) x[i] = 0.0f;
    if (c == 0) return 0.0f;
    const float m = reduce_max(x, c) * scale_by;  // scale_by > 0: max commutes
    if (m == -INFINITY) {
      for (size_t i = 0; i < c; ++i) x[i] = 0.0f;
      return 0.0f;
    }
    const B vm(m), vs(scale_by);
    B s0(0.0f), s1(0.0f);
    size_t i = 0;
    for (; i + 2 * L <= c; i += 2 * L) {
      const B e0 = xsimd::exp(B::load_unaligned(x + i) * vs - vm);
      const B e1 = xsimd::exp(B::load_unaligned(x + i + L) * vs - vm);
      e0.store_unaligned(x + i);
      e1.store_unaligned(x + i + L);
      s0 += e0;
      s1 += e1;
    }
    for (; i + L <= c; i += L) {
      const B e0 = xsimd::exp(B::load_unaligned(x + i) * vs - vm);
      e0.store_unaligned(x + i);
      s0 += e0;
    }
    float sum = hsum(s0 + s1);
    for (; i < c; ++i) {
      x[i] = std::exp(x[i] * scale_by - m);
      sum += x[i];
    }
    scale(x, 1.0f / sum, c);
    return sum;
  }

  // Pooling with the sums the defensive rescale needs: out = avg_pool(x, k),
  // *sum_x = sum x, *sum_out = sum out. Interior outputs (all k inputs inside
  // x) are k shifted vector loads; the k/2 outputs at each edge are scalar.
  static void pool_sums(const float* x, float* out, size_t n, size_t k, float* sum_x,
                        float* sum_out) {
    const size_t pad = k / 2;
    const float inv_k = 1.0f / float(k);
    auto edge = [&](size_t i) {
      const size_t lo = i >= pad ? i - pad : 0;
      const size_t hi = i + pad < n ? i + pad : n - 1;
      float acc = 0.0f;
      for (size_t j = lo; j <= hi; ++j) acc += x[j];
      return acc * inv_k;
    };
    float sx = 0.0f, so = 0.0f;
    size_t i = 0;
    const size_t lo_end = pad < n ? pad : n;
    for (; i < lo_end; ++i) {
      out[i] = edge(i);
      so += out[i];
      sx += x[i];
    }
    const size_t hi_start = n > pad ? n - pad : n;  // first i with i + pad >= n
    B bsx(0.0f), bso(0.0f);
    const B vinv(inv_k);
    if (hi_start > i) {
      for (; i + L <= hi_start; i += L) {
        const float* base = x + i - pad;
        B acc = B::load_unaligned(base);
        for (size_t t = 1; t < k; ++t) acc += B::load_unaligned(base + t);
        const B o = acc * vinv;
        o.store_unaligned(out + i);
        bso += o;
        bsx += B::load_unaligned(x + i);
      }
      for (; i < hi_start; ++i) {
        out[i] = edge(i);
        so += out[i];
        sx += x[i];
      }
    }
    for (; i < n; ++i) {
      out[i] = edge(i);
      so += out[i];
      sx += x[i];
    }
    if (sum_x) *sum_x = sx + hsum(bsx);
    if (sum_out) *sum_out = so + hsum(bso);
  }

  static void avg_pool(const float* x, float* out, size_t n, size_t k) {
    pool_sums(x, out, n, k, nullptr, nullptr);
  }

  static void pool_rescale_max(const float* x, float* tmp, float* acc, size_t n, size_t k) {
    float mass = 0.0f, pooled_mass = 0.0f;
    pool_sums(x, tmp, n, k, &mass, &pooled_mass);
    const float f = pooled_mass > 0.0f ? mass / pooled_mass : 1.0f;
    const B vf(f);
    size_t i = 0;
    for (; i + L <= n; i += L) {
      const B p = B::load_unaligned(tmp + i) * vf, a = B::load_unaligned(acc + i);
      p.store_unaligned(tmp + i);
      xsimd::select(a < p, p, a).store_unaligned(acc + i);
    }
    for (; i < n; ++i) {
      tmp[i] *= f;
      acc[i] = acc[i] < tmp[i] ? tmp[i] : acc[i];
    }
  }

  static void clamp_min(float* x, float lo, size_t n) {
    const B vlo(lo);
    size_t i = 0;
    for (; i + L <= n; i += L) {
      const B a = B::load_unaligned(x + i);
      xsimd::select(a < vlo, vlo, a).store_unaligned(x + i);
    }
    for (; i < n; ++i) x[i] = x[i] < lo ? lo : x[i];
  }

  // IEEE division (xsimd 8.1 divides on neon64 by a refined reciprocal
  // estimate, a few ulp off; AArch64 has a real vector divide).
  static B div_exact(B a, B b) {
#if defined(__aarch64__)
    if constexpr (L == 4) return B(vdivq_f32(a, b));
#endif
    return a / b;
  }

  static void vnorm_weight(float* x, float* w_out, const float* num, const float* den, size_t n) {
    const B zero(0.0f);
    size_t i = 0;
    for (; i + L <= n; i += L) {
      const B dv = B::load_unaligned(den + i);
      const B w = xsimd::select(dv > zero, div_exact(B::load_unaligned(num + i), dv), zero);
      (B::load_unaligned(x + i) * w).store_unaligned(x + i);
      if (w_out) w.store_unaligned(w_out + i);
    }
    for (; i < n; ++i) {
      const float w = den[i] > 0.0f ? num[i] / den[i] : 0.0f;
      x[i] *= w;
      if (w_out) w_out[i] = w;
    }
  }

  // ---- blocked attention ----------------------------------------------------

  // L rows at a time, all vertical: the max, the exponentials and the sums
  // run along the keys of a column of rows; tail rows use the scalar formulas.
  static void attn_softmax_step(float* st, size_t n, size_t m, size_t ldst, float* row_max,
                                float* row_sum, float* corr) {
    const B ninf(-INFINITY), zero(0.0f), one(1.0f);
    size_t r = 0;
    for (; r + L <= m; r += L) {
      const B old = B::load_unaligned(row_max + r);
      B mx = old;
      for (size_t j = 0; j < n; ++j) mx = xsimd::max(mx, B::load_unaligned(st + j * ldst + r));
      const auto dead = mx == ninf;  // every entry so far masked
      const B ms = xsimd::select(dead, zero, mx);  // exp(-inf - 0) = 0 for those
      const B c = xsimd::select(dead, one, xsimd::exp(old - ms));
      B sum(0.0f);
      for (size_t j = 0; j < n; ++j) {
        const B e = xsimd::exp(B::load_unaligned(st + j * ldst + r) - ms);
        e.store_unaligned(st + j * ldst + r);
        sum += e;
      }
      c.store_unaligned(corr + r);
      xsimd::fma(B::load_unaligned(row_sum + r), c, sum).store_unaligned(row_sum + r);
      mx.store_unaligned(row_max + r);
    }
    for (; r < m; ++r) {
      float mx = row_max[r];
      for (size_t j = 0; j < n; ++j) mx = mx < st[j * ldst + r] ? st[j * ldst + r] : mx;
      if (mx == -INFINITY) {
        for (size_t j = 0; j < n; ++j) st[j * ldst + r] = 0.0f;
        corr[r] = 1.0f;
        continue;
      }
      const float c = std::exp(row_max[r] - mx);
      float sum = 0.0f;
      for (size_t j = 0; j < n; ++j) {
        float& x = st[j * ldst + r];
        x = std::exp(x - mx);
        sum += x;
      }
      corr[r] = c;
      row_sum[r] = row_sum[r] * c + sum;
      row_max[r] = mx;
    }
  }

  // Register block of attn_accumulate: R rows x T vectors of columns from c0;
  // kPvR * kPvT accumulators + kPvT value vectors + a broadcast fit the
  // register file (32 zmm: 6 x 4; 16 ymm: 4 x 2; 32 NEON q: 6 x 4).
  static constexpr size_t kPvT = L == 8 ? 2 : 4;
  static constexpr size_t kPvR = L == 8 ? 4 : 6;

  template <size_t R, size_t T>
  static void pv_tile(const float* pt, size_t n, size_t ldpt, const float* v, size_t ldv,
                      const float* corr, float* o, size_t ldo, size_t c0) {
    B acc[R][T];
#pragma GCC unroll 8
    for (size_t r = 0; r < R; ++r) {
      const B cr(corr ? corr[r] : 1.0f);
#pragma GCC unroll 8
      for (size_t t = 0; t < T; ++t) acc[r][t] = B::load_unaligned(o + r * ldo + c0 + t * L) * cr;
    }
    for (size_t j = 0; j < n; ++j) {
      B vj[T];
#pragma GCC unroll 8
      for (size_t t = 0; t < T; ++t) vj[t] = B::load_unaligned(v + j * ldv + c0 + t * L);
#pragma GCC unroll 8
      for (size_t r = 0; r < R; ++r) {
        const B pr(pt[j * ldpt + r]);
#pragma GCC unroll 8
        for (size_t t = 0; t < T; ++t) acc[r][t] = xsimd::fma(pr, vj[t], acc[r][t]);
      }
    }
#pragma GCC unroll 8
    for (size_t r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (size_t t = 0; t < T; ++t) acc[r][t].store_unaligned(o + r * ldo + c0 + t * L);
  }

  // R rows over all columns: full tiles, single vectors, then scalar columns.
  template <size_t R>
  static void pv_rows(const float* pt, size_t n, size_t ldpt, const float* v, size_t ldv, size_t d,
                      const float* corr, float* o, size_t ldo) {
    size_t c0 = 0;
    for (; c0 + kPvT * L <= d; c0 += kPvT * L) pv_tile<R, kPvT>(pt, n, ldpt, v, ldv, corr, o, ldo, c0);
    for (; c0 + L <= d; c0 += L) pv_tile<R, 1>(pt, n, ldpt, v, ldv, corr, o, ldo, c0);
    for (size_t r = 0; r < R; ++r)
      for (size_t c = c0; c < d; ++c) {
        float acc = (corr ? corr[r] : 1.0f) * o[r * ldo + c];
        for (size_t j = 0; j < n; ++j) acc = std::fma(pt[j * ldpt + r], v[j * ldv + c], acc);
        o[r * ldo + c] = acc;
      }
  }

  static void attn_accumulate(const float* pt, size_t m, size_t n, size_t ldpt, const float* v,
                              size_t ldv, size_t d, const float* corr, float* o, size_t ldo) {
    size_t r0 = 0;
    const auto cr = [&](size_t r) { return corr ? corr + r : nullptr; };
    for (; r0 + kPvR <= m; r0 += kPvR)
      pv_rows<kPvR>(pt + r0, n, ldpt, v, ldv, d, cr(r0), o + r0 * ldo, ldo);
    if (m - r0 >= 4) { pv_rows<4>(pt + r0, n, ldpt, v, ldv, d, cr(r0), o + r0 * ldo, ldo); r0 += 4; }
    if (m - r0 >= 2) { pv_rows<2>(pt + r0, n, ldpt, v, ldv, d, cr(r0), o + r0 * ldo, ldo); r0 += 2; }
    if (m - r0 >= 1) pv_rows<1>(pt + r0, n, ldpt, v, ldv, d, cr(r0), o + r0 * ldo, ldo);
  }

  static Kernels table(Isa isa) {
    Kernels t{};
    t.isa = isa;
    t.dot = dot; t.dot_f16 = dot_f16; t.axpy = axpy; t.axpy_f16 = axpy_f16; t.scale = scale;
    t.rmsnorm = rmsnorm; t.softmax = softmax; t.silu_mul = silu_mul;
    t.max_inplace = max_inplace; t.add_inplace = add_inplace; t.reduce_max = reduce_max;
    t.reduce_sum = reduce_sum; t.reduce_abs_sum = reduce_abs_sum;
    t.f16_to_f32 = f16_to_f32; t.f32_to_f16 = f32_to_f16;
    t.bf16_to_f32 = bf16_to_f32; t.f32_to_bf16 = f32_to_bf16;
    t.window_logits = window_logits; t.window_logits_packed = window_logits_packed;
    t.window_softmax = window_softmax; t.avg_pool = avg_pool;
    t.pool_rescale_max = pool_rescale_max; t.clamp_min = clamp_min;
    t.vnorm_weight = vnorm_weight;
    t.attn_softmax_step = attn_softmax_step; t.attn_accumulate = attn_accumulate;
    return t;
  }
};

}  // namespace defkv::simd::detail
