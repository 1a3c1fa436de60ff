// Register-blocked matmul micro-kernels, written once and instantiated per ISA.
// Include ONLY from a per-ISA translation unit, after the matching
// simd/half_<isa>.h. Everything is in an anonymous namespace so that each TU
// keeps its own copy (nothing compiled for one ISA can be linked into another).
//
// A micro-kernel computes an R x T block of outputs (R weight rows, T tokens),
// loading each weight vector once for T tokens and each activation vector once
// for R rows: R*T independent accumulators.
#pragma once

#include <xsimd/xsimd.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "quant/matmul_isa.h"
#include "simd/simd.h"

namespace defkv::simd::detail {
template <class A>
struct Half;  // simd/half_<isa>.h
}  // namespace defkv::simd::detail

namespace defkv::quant::detail {
namespace {

inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

// Transpose-reduce: lane k of the result = sum of the lanes of rows[k], for
// B::size rows. xsimd::haddp by default; an ISA file may specialise this
// before instantiating the tiles (xsimd 8.1's AVX-512 haddp mixes lanes up).
template <class A>
struct HaddP {
  static xsimd::batch<float, A> run(const xsimd::batch<float, A>* rows) { return xsimd::haddp(rows); }
};

// ---- float weights (f32 / f16 / bf16) ------------------------------------------------

template <class A, DType kType>
struct WeightLoad;
template <class A>
struct WeightLoad<A, DType::f32> {
  static constexpr size_t kElemBytes = 4;
  static xsimd::batch<float, A> load(const uint8_t* row, size_t i) {
    return xsimd::batch<float, A>::load_unaligned(reinterpret_cast<const float*>(row) + i);
  }
};
template <class A>
struct WeightLoad<A, DType::f16> {
  static constexpr size_t kElemBytes = 2;
  static xsimd::batch<float, A> load(const uint8_t* row, size_t i) {
    return simd::detail::Half<A>::load_f16(reinterpret_cast<const uint16_t*>(row) + i);
  }
};
template <class A>
struct WeightLoad<A, DType::bf16> {
  static constexpr size_t kElemBytes = 2;
  static xsimd::batch<float, A> load(const uint8_t* row, size_t i) {
    return simd::detail::Half<A>::load_bf16(reinterpret_cast<const uint16_t*>(row) + i);
  }
};

template <class A, DType kType, int kMaxR, int kMaxT>
struct FloatTile {
  using B = xsimd::batch<float, A>;
  using W = WeightLoad<A, kType>;
  static constexpr size_t L = B::size;

  // rows w (stride ws bytes), tokens x (stride n floats); y[t*ldy + r]
  template <int R, int T>
  static void micro(const uint8_t* w, size_t ws, const float* x, size_t n, float* y, size_t ldy) {
    B acc[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = B(0.0f);
    size_t i = 0;
    for (; i + L <= n; i += L) {
      if constexpr (T <= 2) {
        // few tokens: a memory stream over R rows of only n * kElemBytes bytes
        // each; the hardware prefetcher restarts at every 4 KiB page, so fetch
        // the next R rows (the next micro-kernel call) at the same offset
        if ((i * W::kElemBytes) % 64 == 0)
          for (int r = 0; r < R; ++r)
            __builtin_prefetch(w + size_t(R + r) * ws + i * W::kElemBytes, 0, 3);
      }
      B xv[T];
      for (int t = 0; t < T; ++t) xv[t] = B::load_unaligned(x + size_t(t) * n + i);
      for (int r = 0; r < R; ++r) {
        const B wv = W::load(w + size_t(r) * ws, i);
        for (int t = 0; t < T; ++t) acc[r][t] = xsimd::fma(wv, xv[t], acc[r][t]);
      }
    }
    if (i < n) {
      // tail: one more vector step on zero-padded copies
      const size_t m = n - i;
      alignas(64) uint8_t wt[R][L * W::kElemBytes];
      alignas(64) float xt[T][L];
      std::memset(wt, 0, sizeof(wt));
      std::memset(xt, 0, sizeof(xt));
      for (int t = 0; t < T; ++t) std::memcpy(xt[t], x + size_t(t) * n + i, m * sizeof(float));
      for (int r = 0; r < R; ++r) std::memcpy(wt[r], w + size_t(r) * ws + i * W::kElemBytes, m * W::kElemBytes);
      for (int r = 0; r < R; ++r) {
        const B wv = W::load(wt[r], 0);
        for (int t = 0; t < T; ++t) acc[r][t] = xsimd::fma(wv, B::load_aligned(xt[t]), acc[r][t]);
      }
    }
    if constexpr (R * T <= 2) {
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[size_t(t) * ldy + size_t(r)] = xsimd::hadd(acc[r][t]);
    } else {
      // transpose-reduce L accumulators at a time: lane k = sum of accumulator k
      constexpr size_t kAcc = size_t(R * T), kChunks = (kAcc + L - 1) / L;
      alignas(64) float sums[kChunks * L];
      for (size_t c = 0; c < kChunks; ++c) {
        B chunk[L];
        for (size_t k = 0; k < L; ++k) {
          const size_t a = c * L + k;
          chunk[k] = a < kAcc ? acc[a / T][a % T] : B(0.0f);
        }
        HaddP<A>::run(chunk).store_aligned(sums + c * L);
      }
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[size_t(t) * ldy + size_t(r)] = sums[r * T + t];
    }
  }

  using Micro = void (*)(const uint8_t*, size_t, const float*, size_t, float*, size_t);
  template <int R, int T>
  static void fill(Micro (&tab)[kMaxR][kMaxT]) {
    tab[R - 1][T - 1] = &micro<R, T>;
    if constexpr (T > 1) fill<R, T - 1>(tab);
    else if constexpr (R > 1) fill<R - 1, kMaxT>(tab);
  }

  static void tile(const Matrix& w, const float* x, float* y, size_t ldy, size_t r0, size_t r1,
                   size_t t0, size_t t1) {
    Micro tab[kMaxR][kMaxT];
    fill<kMaxR, kMaxT>(tab);
    const size_t n = w.cols, ws = n * W::kElemBytes;
    const auto* base = static_cast<const uint8_t*>(w.data);
    for (size_t t = t0; t < t1; t += kMaxT) {
      const size_t tt = min_sz(kMaxT, t1 - t);
      for (size_t r = r0; r < r1; r += kMaxR) {
        const size_t rr = min_sz(kMaxR, r1 - r);
        tab[rr - 1][tt - 1](base + r * ws, ws, x + t * n, n, y + t * ldy + r, ldy);
      }
    }
  }
};

template <class A, int kMaxR, int kMaxT>
void float_tile(const Matrix& w, const float* x, float* y, size_t ldy, size_t r0, size_t r1,
                size_t t0, size_t t1) {
  switch (w.type) {
    case DType::f32: FloatTile<A, DType::f32, kMaxR, kMaxT>::tile(w, x, y, ldy, r0, r1, t0, t1); return;
    case DType::f16: FloatTile<A, DType::f16, kMaxR, kMaxT>::tile(w, x, y, ldy, r0, r1, t0, t1); return;
    case DType::bf16: FloatTile<A, DType::bf16, kMaxR, kMaxT>::tile(w, x, y, ldy, r0, r1, t0, t1); return;
    default: return;  // not a float type; the driver never sends it here
  }
}

// ---- q8_0 weights x int8 activations ----------------------------------------------------
// Ops (per ISA) provides, on a 32-int8 block:
//   using I;                                 // register(s) holding 32 int8
//   using F;                                 // float vector
//   static F zero();
//   static float half_to_float(uint16_t h);   // the block scale
//   static I load(const int8_t* p);
//   static I abs(I w);                        // |w| (w in [-127, 127])
//   static F block_dot(I abs_w, I w, const int8_t* x);  // float vector whose lanes sum to w.x
//   static F fma(F a, float s, F acc);        // acc + a * s
//   static float hsum(F v);
template <class Ops, int kMaxR, int kMaxT>
struct Q8Tile {
  using F = typename Ops::F;

  template <int R, int T>
  static void micro(const BlockQ8_0* w, size_t ws_blocks, const BlockQ8x* x, size_t nb, float* y,
                    size_t ldy) {
    F acc[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = Ops::zero();
    for (size_t b = 0; b < nb; ++b) {
      for (int r = 0; r < R; ++r) {
        const BlockQ8_0& wb = w[size_t(r) * ws_blocks + b];
        const typename Ops::I wq = Ops::load(wb.qs);
        const typename Ops::I wa = Ops::abs(wq);
        const float dw = Ops::half_to_float(wb.d);
        for (int t = 0; t < T; ++t) {
          const BlockQ8x& xb = x[size_t(t) * nb + b];
          acc[r][t] = Ops::fma(Ops::block_dot(wa, wq, xb.qs), dw * xb.d, acc[r][t]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) y[size_t(t) * ldy + size_t(r)] = Ops::hsum(acc[r][t]);
  }

  using Micro = void (*)(const BlockQ8_0*, size_t, const BlockQ8x*, size_t, float*, size_t);
  template <int R, int T>
  static void fill(Micro (&tab)[kMaxR][kMaxT]) {
    tab[R - 1][T - 1] = &micro<R, T>;
    if constexpr (T > 1) fill<R, T - 1>(tab);
    else if constexpr (R > 1) fill<R - 1, kMaxT>(tab);
  }

  static void tile(const Matrix& w, const BlockQ8x* xq, float* y, size_t ldy, size_t r0, size_t r1,
                   size_t t0, size_t t1) {
    Micro tab[kMaxR][kMaxT];
    fill<kMaxR, kMaxT>(tab);
    const size_t nb = w.cols / kQ8_0Block;
    const auto* base = static_cast<const BlockQ8_0*>(w.data);
    for (size_t t = t0; t < t1; t += kMaxT) {
      const size_t tt = min_sz(kMaxT, t1 - t);
      for (size_t r = r0; r < r1; r += kMaxR) {
        const size_t rr = min_sz(kMaxR, r1 - r);
        tab[rr - 1][tt - 1](base + r * nb, nb, xq + t * nb, nb, y + t * ldy + r, ldy);
      }
    }
  }
};

}  // namespace
}  // namespace defkv::quant::detail
