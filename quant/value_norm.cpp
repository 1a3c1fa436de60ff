// Per-head value-projection L1 norms: driver (checks, scratch, threads) and
// the f32 kernels (scalar; per-ISA clones of the dot and token-lane paths).
#include "quant/value_norm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "simd/simd.h"

namespace defkv::quant {
namespace {

// Rows of W converted per step (the token-lane register block).
constexpr size_t kRowBlock = 4;
// Tokens per vector (one zmm of f32; two ymm / four xmm in narrower clones).
constexpr size_t kLanes = 16;
// From this many tokens on, tokens go into vector lanes (below: dot products).
constexpr size_t kLaneMinTokens = 6;
// Multiply-adds below which one thread does the work.
constexpr size_t kParallelMinMacs = size_t(1) << 17;

// Not under ThreadSanitizer: GCC instruments the ifunc resolver that
// target_clones generates, and the dynamic loader runs it before the TSan
// runtime is initialised (the library segfaults at load).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define DEFKV_VN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DEFKV_VN_CLONES
#endif

// kLanes floats as one vector (GCC/Clang vector extension: one zmm in the
// AVX-512 clone, split into narrower registers elsewhere). The helpers are
// always inlined into the clones, so the vector ABI of the default target
// (which -Wpsabi warns about) never applies.
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(float))));
#pragma GCC diagnostic ignored "-Wpsabi"
__attribute__((always_inline)) inline Vec load(const float* p) {
  Vec x;
  std::memcpy(&x, p, sizeof x);
  return x;
}
__attribute__((always_inline)) inline void store(float* p, Vec x) { std::memcpy(p, &x, sizeof x); }
__attribute__((always_inline)) inline Vec vabs(Vec x) { return (Vec)((VecI)x & 0x7fffffff); }

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

const uint8_t* row_ptr(const Matrix& w, size_t r) {
  return static_cast<const uint8_t*>(w.data) + r * row_bytes(w.type, w.cols);
}

// Row r of W as f32: the row itself for f32, else converted into buf[cols].
// Inlined into each clone, so the q8_0 loop is vectorised per ISA.
__attribute__((always_inline)) inline const float* row_f32(const Matrix& w, size_t r, float* buf, const simd::Kernels& K) {
  const uint8_t* row = row_ptr(w, r);
  switch (w.type) {
    case DType::f32: return reinterpret_cast<const float*>(row);
    case DType::f16: K.f16_to_f32(reinterpret_cast<const uint16_t*>(row), buf, w.cols); return buf;
    case DType::bf16: K.bf16_to_f32(reinterpret_cast<const uint16_t*>(row), buf, w.cols); return buf;
    case DType::q8_0: {
      // Scales of up to kChunk blocks converted in one call, then the quants.
      const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
      const size_t nb = w.cols / kQ8_0Block;
      constexpr size_t kChunk = 64;
      uint16_t dh[kChunk];
      float df[kChunk];
      for (size_t i0 = 0; i0 < nb; i0 += kChunk) {
        const size_t m = std::min(kChunk, nb - i0);
        for (size_t i = 0; i < m; ++i) dh[i] = b[i0 + i].d;
        K.f16_to_f32(dh, df, m);
        for (size_t i = 0; i < m; ++i) {
          const float d = df[i];
          const int8_t* q = b[i0 + i].qs;
          float* y = buf + (i0 + i) * kQ8_0Block;
          for (size_t j = 0; j < kQ8_0Block; ++j) y[j] = d * float(q[j]);
        }
      }
      return buf;
    }
    default:
      // low-bit blocks (W_o in its own type): ggml's dequantisation of the row
      to_f32(w.type, row, buf, w.cols);
      return buf;
  }
}

struct Shape {
  size_t H, G, d, n_tokens, ldv, ldp;  // ldp: token stride of part ([H, ldp])
};

// Scalar path (DEFKV_FORCE_SCALAR): part[h*ldp + t] += sum_r |W_h[r] . v[t, h/G]|.
void rows_scalar(const Matrix& w, size_t r0, size_t r1, const float* v, const Shape& s, float* buf,
                 float* part) {
  const simd::Kernels& K = simd::k();
  for (size_t r = r0; r < r1; ++r) {
    const float* wr = row_f32(w, r, buf, K);
    for (size_t h = 0; h < s.H; ++h) {
      const float* wh = wr + h * s.d;
      for (size_t t = 0; t < s.n_tokens; ++t) {
        const float* vt = v + t * s.ldv + (h / s.G) * s.d;
        float acc = 0.0f;
        for (size_t c = 0; c < s.d; ++c) acc += wh[c] * vt[c];
        part[h * s.ldp + t] += std::fabs(acc);
      }
    }
  }
}

// Few tokens: one d-long dot per (row, head, token), vectorised along d.
DEFKV_VN_CLONES
void rows_dot(const Matrix& w, size_t r0, size_t r1, const float* v, const Shape& s, float* buf,
              float* part) {
  const simd::Kernels& K = simd::k();
  const size_t d = s.d, dv = d / kLanes * kLanes;
  for (size_t r = r0; r < r1; ++r) {
    const float* wr = row_f32(w, r, buf, K);
    for (size_t h = 0; h < s.H; ++h) {
      const float* wh = wr + h * d;
      for (size_t t = 0; t < s.n_tokens; ++t) {
        const float* vt = v + t * s.ldv + (h / s.G) * d;
        Vec acc = Vec{};
        for (size_t c = 0; c < dv; c += kLanes) acc += load(wh + c) * load(vt + c);
        float y = 0.0f;
        for (size_t i = 0; i < kLanes; ++i) y += acc[i];
        for (size_t c = dv; c < d; ++c) y += wh[c] * vt[c];
        part[h * s.ldp + t] += std::fabs(y);
      }
    }
  }
}

// Many tokens: vt [Hkv, d, ldp] (tokens zero-padded to ldp, a multiple of
// kLanes); R rows x 4 token vectors per register block when Wide (AVX-512:
// 4R + 4 of its 32 zmm registers), else R rows x 2. Every path adds the same
// products in the same order, so the result does not depend on the width.
// (Always inlined, so it is compiled inside each clone of rows_lanes.)
template <size_t R, bool Wide>
__attribute__((always_inline)) inline void block_lanes(const float* const* wr, const float* vt, const Shape& s, float* part) {
  const size_t d = s.d, ldp = s.ldp;
  for (size_t h = 0; h < s.H; ++h) {
    const float* vh = vt + (h / s.G) * d * ldp;  // [d, ldp]
    float* ph = part + h * ldp;                  // [ldp]
    size_t t = 0;
    for (; Wide && t + 4 * kLanes <= ldp; t += 4 * kLanes) {  // half the vt reads per MAC
      Vec acc[4][R];
      for (size_t i = 0; i < R; ++i) acc[0][i] = acc[1][i] = acc[2][i] = acc[3][i] = Vec{};
      for (size_t c = 0; c < d; ++c) {
        const float* vc = vh + c * ldp + t;
        const Vec b0 = load(vc), b1 = load(vc + kLanes), b2 = load(vc + 2 * kLanes), b3 = load(vc + 3 * kLanes);
        for (size_t i = 0; i < R; ++i) {
          const float a = wr[i][h * d + c];
          acc[0][i] += a * b0;
          acc[1][i] += a * b1;
          acc[2][i] += a * b2;
          acc[3][i] += a * b3;
        }
      }
      for (size_t j = 0; j < 4; ++j) {
        Vec sj = load(ph + t + j * kLanes);
        for (size_t i = 0; i < R; ++i) sj += vabs(acc[j][i]);
        store(ph + t + j * kLanes, sj);
      }
    }
    for (; t + 2 * kLanes <= ldp; t += 2 * kLanes) {
      Vec acc0[R], acc1[R];
      for (size_t i = 0; i < R; ++i) acc0[i] = acc1[i] = Vec{};
      for (size_t c = 0; c < d; ++c) {
        const Vec b0 = load(vh + c * ldp + t), b1 = load(vh + c * ldp + t + kLanes);
        for (size_t i = 0; i < R; ++i) {
          const float a = wr[i][h * d + c];
          acc0[i] += a * b0;
          acc1[i] += a * b1;
        }
      }
      Vec s0 = load(ph + t), s1 = load(ph + t + kLanes);
      for (size_t i = 0; i < R; ++i) {
        s0 += vabs(acc0[i]);
        s1 += vabs(acc1[i]);
      }
      store(ph + t, s0);
      store(ph + t + kLanes, s1);
    }
    for (; t < ldp; t += kLanes) {
      Vec acc[R];
      for (size_t i = 0; i < R; ++i) acc[i] = Vec{};
      for (size_t c = 0; c < d; ++c) {
        const Vec b = load(vh + c * ldp + t);
        for (size_t i = 0; i < R; ++i) acc[i] += wr[i][h * d + c] * b;
      }
      Vec s0 = load(ph + t);
      for (size_t i = 0; i < R; ++i) s0 += vabs(acc[i]);
      store(ph + t, s0);
    }
  }
}

DEFKV_VN_CLONES
void rows_lanes(const Matrix& w, size_t r0, size_t r1, const float* vt, const Shape& s, float* buf,
                float* part) {
  const simd::Kernels& K = simd::k();
  const bool wide = K.isa == simd::Isa::avx512;  // 32 vector registers of 16 floats
  const float* wr[kRowBlock];
  size_t r = r0;
  for (; r + kRowBlock <= r1; r += kRowBlock) {
    for (size_t i = 0; i < kRowBlock; ++i) wr[i] = row_f32(w, r + i, buf + i * w.cols, K);
    if (wide)
      block_lanes<kRowBlock, true>(wr, vt, s, part);
    else
      block_lanes<kRowBlock, false>(wr, vt, s, part);
  }
  for (; r < r1; ++r) {
    wr[0] = row_f32(w, r, buf, K);
    block_lanes<1, false>(wr, vt, s, part);
  }
}

void check(const Matrix& w, size_t n_head_kv, size_t head_dim, const float* v, size_t ldv,
           size_t n_tokens, const float* l1, size_t ldl1) {
  (void)row_bytes(w.type, w.cols);  // validates dtype and block alignment
  if (head_dim == 0 || w.cols % head_dim != 0)
    throw std::invalid_argument("value_proj_l1: head_dim " + std::to_string(head_dim) +
                                " does not divide the matrix columns " + std::to_string(w.cols));
  const size_t H = w.cols / head_dim;
  if (n_head_kv == 0 || H % n_head_kv != 0)
    throw std::invalid_argument("value_proj_l1: n_head_kv " + std::to_string(n_head_kv) +
                                " does not divide the " + std::to_string(H) + " heads");
  if (n_tokens == 0) return;
  if (ldv < n_head_kv * head_dim || ldl1 < H)
    throw std::invalid_argument("value_proj_l1: row stride of v (" + std::to_string(ldv) + ") or l1 (" +
                                std::to_string(ldl1) + ") too small");
  if (!v || !l1 || (!w.data && w.rows > 0))
    throw std::invalid_argument("value_proj_l1: null weights, values or output");
}

}  // namespace

void value_proj_l1_reserve(ValueNormScratch& s, size_t rows, size_t cols, size_t n_head_kv,
                           size_t head_dim, size_t max_tokens, size_t n_threads) {
  (void)rows;
  if (head_dim == 0 || cols % head_dim != 0) return;  // value_proj_l1 will reject it
  const size_t H = cols / head_dim, ldp = round_up(std::max<size_t>(max_tokens, 1), kLanes);
  n_threads = std::max<size_t>(n_threads, 1);
  if (s.rows.size() < n_threads * kRowBlock * cols) s.rows.resize(n_threads * kRowBlock * cols);
  if (s.vt.size() < n_head_kv * head_dim * ldp) s.vt.resize(n_head_kv * head_dim * ldp);
  if (s.part.size() < n_threads * H * ldp) s.part.resize(n_threads * H * ldp);
  if (s.l1.size() < max_tokens * H) s.l1.resize(max_tokens * H);
}

void value_proj_l1(const Matrix& w, size_t n_head_kv, size_t head_dim, const float* v, size_t ldv,
                   size_t n_tokens, float* l1, size_t ldl1, ValueNormScratch& s) {
  check(w, n_head_kv, head_dim, v, ldv, n_tokens, l1, ldl1);
  if (n_tokens == 0) return;
  const size_t E = w.rows, d = head_dim, H = w.cols / d, Hkv = n_head_kv;
  const bool scalar = simd::k().isa == simd::Isa::scalar;
  const bool lanes = !scalar && n_tokens >= kLaneMinTokens;
  Shape sh{H, H / Hkv, d, n_tokens, ldv, lanes ? round_up(n_tokens, kLanes) : n_tokens};

  const size_t macs = E * w.cols * n_tokens;
  const size_t max_threads = size_t(std::max(1, omp_get_max_threads()));
  const size_t n_threads =
      macs < kParallelMinMacs ? 1 : std::max<size_t>(1, std::min(max_threads, E / (2 * kRowBlock)));
  // Reserved for n_tokens (the reserve rounds the lane stride up itself), so
  // s.l1, which value_norms hands in as l1, is never reallocated here.
  value_proj_l1_reserve(s, E, w.cols, Hkv, d, n_tokens, n_threads);  // no-op once warm
  std::fill(s.part.begin(), s.part.begin() + n_threads * H * sh.ldp, 0.0f);

  if (lanes) {  // vt[hk, c, t] = v[t, hk*d + c], zero for padding tokens
    for (size_t hk = 0; hk < Hkv; ++hk)
      for (size_t c = 0; c < d; ++c) {
        float* dst = s.vt.data() + (hk * d + c) * sh.ldp;
        for (size_t t = 0; t < n_tokens; ++t) dst[t] = v[t * ldv + hk * d + c];
        std::fill(dst + n_tokens, dst + sh.ldp, 0.0f);
      }
  }

  // Contiguous row ranges (multiples of kRowBlock), one per thread.
  const size_t per = round_up((E + n_threads - 1) / n_threads, kRowBlock);
#pragma omp parallel num_threads(int(n_threads)) if (n_threads > 1)
  {
    // Range i goes to partial slot i whoever runs it (the runtime may give
    // fewer threads than asked for), so the sums below keep their order.
    const size_t tid = size_t(omp_get_thread_num()), nth = size_t(omp_get_num_threads());
    float* buf = s.rows.data() + tid * kRowBlock * w.cols;
    for (size_t i = tid; i < n_threads; i += nth) {
      const size_t r0 = std::min(E, i * per), r1 = std::min(E, r0 + per);
      float* part = s.part.data() + i * H * sh.ldp;
      if (scalar)
        rows_scalar(w, r0, r1, v, sh, buf, part);
      else if (lanes)
        rows_lanes(w, r0, r1, s.vt.data(), sh, buf, part);
      else
        rows_dot(w, r0, r1, v, sh, buf, part);
    }
  }

  for (size_t t = 0; t < n_tokens; ++t)
    for (size_t h = 0; h < H; ++h) {
      float acc = 0.0f;
      for (size_t i = 0; i < n_threads; ++i) acc += s.part[(i * H + h) * sh.ldp + t];
      l1[t * ldl1 + h] = acc;
    }
}

void value_norms(const Matrix& wo, size_t n_head_kv, size_t head_dim, const float* v, size_t n_tokens, float* out,
                 ValueNormScratch& s) {
  if (head_dim == 0 || wo.cols % head_dim != 0 || n_head_kv == 0)  // value_proj_l1 names the problem
    return value_proj_l1(wo, n_head_kv, head_dim, v, n_head_kv * head_dim, n_tokens, out, n_head_kv, s);
  const size_t H = wo.cols / head_dim, Hkv = n_head_kv, G = H / Hkv;
  if (s.l1.size() < n_tokens * H) s.l1.resize(n_tokens * H);
  float* l1 = s.l1.data();
  value_proj_l1(wo, Hkv, head_dim, v, Hkv * head_dim, n_tokens, l1, H, s);
  const float inv_g = 1.0f / float(G);
  for (size_t t = 0; t < n_tokens; ++t)
    for (size_t hk = 0; hk < Hkv; ++hk) {
      float sum = 0.0f;
      for (size_t g = 0; g < G; ++g) sum += l1[t * H + hk * G + g];
      out[t * Hkv + hk] = sum * inv_g;
    }
}

}  // namespace defkv::quant
