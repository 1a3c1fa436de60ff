// AVX512-BF16 batch kernel for packed f16 / bf16 weights (quant::Packed:
// panels of 16 rows, per column the panel's 16 values, lane = row). A work
// item converts a K-block of its panels to bf16 column pairs in a per-thread
// scratch, w2[panel][pair][lane][2] = (W[row, 2 pair], W[row, 2 pair + 1]),
// so one vdpbf16ps takes 16 rows x 2 columns against one token's broadcast
// bf16 activation pair: twice the multiply-adds of an f32 FMA per
// instruction. The conversion is amortised over the item's tokens; the
// stored weights stay f16 (decode keeps its exact f32 FMA kernel).
// Compiled with the AVX512-BF16 flags; called only when
// simd::cpu_features().avx512_bf16.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "quant/matmul_isa.h"

namespace defkv::quant::detail {
namespace {

constexpr size_t kLanes = kPackRowsF16;
// K-block: columns converted and multiplied per pass (2048 columns of 4
// panels = 256 KiB of bf16 pairs, L2-resident; docs/tuning.md).
constexpr size_t kKBlock = 2048;

inline void store_rows(float* y, __m512 v, __mmask16 mask, bool accumulate) {
  if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y));
  if (mask == 0xFFFF) _mm512_storeu_ps(y, v);
  else _mm512_mask_storeu_ps(y, mask, v);
}

// Interleaves two columns' 16 bf16 (lo = column c, hi = column c + 1) into
// lane pairs: out[2i] = lo[i], out[2i + 1] = hi[i].
inline __m512i interleave_pairs(__m512i lo_hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, lo_hi);
}

// Columns [c0, c0 + n) of one packed panel (src = panel start, `cols`
// columns) as bf16 pairs into dst [ceil(n/2)][32]; an odd last column pairs
// with zeros.
void convert_panel(const uint16_t* src, bool is_bf16, size_t c0, size_t n, uint16_t* dst) {
  const uint16_t* s = src + c0 * kLanes;
  const size_t pairs = n / 2;
  for (size_t p = 0; p < pairs; ++p) {
    const __m512i v = _mm512_loadu_si512(s + 2 * p * kLanes);  // columns c, c + 1 (32-byte aligned)
    __m512i bf;
    if (is_bf16) {
      bf = v;
    } else {
      const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
      const __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
      bf = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
    }
    _mm512_store_si512(dst + p * 2 * kLanes, interleave_pairs(bf));
  }
  if (n % 2 != 0) {
    const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(s + 2 * pairs * kLanes));
    __m512i bf;
    if (is_bf16) {
      bf = _mm512_zextsi256_si512(v);
    } else {
      const __m512 lo = _mm512_cvtph_ps(v);
      bf = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_setzero_ps(), lo));
    }
    _mm512_store_si512(dst + pairs * 2 * kLanes, interleave_pairs(bf));
  }
}

// G panels x T tokens over `pairs` column pairs: G*T accumulators, per pair G
// weight loads and T broadcast activation pairs (memory operands).
//   w: [G][pairs][32] bf16 (panel stride wps), x: T rows of bf16 pairs (ldx
//   pairs apart), y: T rows (ldy apart) of G*16 outputs.
template <int G, int T>
void micro(const uint16_t* w, size_t wps, size_t pairs, const uint32_t* x, size_t ldx, float* y, size_t ldy,
           __mmask16 last_mask, bool accumulate, const char* pf, size_t pf_lines) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < T; ++t) acc[g][t] = _mm512_setzero_ps();
  // pf_lines (<= pairs) lines from pf into L2, spread evenly over the pairs
  size_t pf_acc = 0;
  for (size_t p = 0; p < pairs; ++p) {
    pf_acc += pf_lines;
    if (pf_acc >= pairs) {
      pf_acc -= pairs;
      _mm_prefetch(pf, _MM_HINT_T1);
      pf += 64;
    }
    __m512bh wv[G];
    for (int g = 0; g < G; ++g)
      wv[g] = reinterpret_cast<__m512bh>(_mm512_load_si512(w + size_t(g) * wps + p * 2 * kLanes));
    for (int t = 0; t < T; ++t) {
      const __m512bh xb = reinterpret_cast<__m512bh>(_mm512_set1_epi32(int(x[size_t(t) * ldx + p])));
      for (int g = 0; g < G; ++g) acc[g][t] = _mm512_dpbf16_ps(acc[g][t], wv[g], xb);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < T; ++t)
      store_rows(y + size_t(t) * ldy + size_t(g) * kLanes, acc[g][t], g == G - 1 ? last_mask : 0xFFFF, accumulate);
}

// Register tile: 4 panels x 6 tokens = 24 accumulators + 4 weight vectors
// (fewer loads per vdpbf16ps than 2 x 12; docs/tuning.md).
constexpr int kG = 4;
constexpr int kMaxT = kBf16MicroTokens;
using Micro = void (*)(const uint16_t*, size_t, size_t, const uint32_t*, size_t, float*, size_t, __mmask16, bool,
                       const char*, size_t);
template <int G, int T>
void fill(Micro (&tab)[kG][kMaxT]) {
  tab[G - 1][T - 1] = &micro<G, T>;
  if constexpr (T > 1) fill<G, T - 1>(tab);
  else if constexpr (G > 1) fill<G - 1, kMaxT>(tab);
}
struct Tables {
  Micro f[kG][kMaxT];  // [panels - 1][tokens - 1]
  Tables() { fill<kG, kMaxT>(f); }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

// Hands out the 64-byte lines of n equal ranges (base + i * stride, `lines`
// lines each) in contiguous segments of up to per_step lines, for the
// micro-kernels to prefetch into L2 between their products: the packed
// weights the next conversion reads arrive while this K-block is multiplied
// (issued all at once they stall on the full miss queue).
struct Prefetch {
  const char* base = nullptr;
  size_t stride = 0, lines = 0, n = 0, per_step = 0, pos = 0;
  const char* next(size_t& count) {
    const size_t r = lines == 0 ? n : pos / lines;
    if (r >= n) {
      count = 0;
      return nullptr;
    }
    const size_t l = pos % lines;
    count = std::min(per_step, lines - l);
    pos += count;
    return base + r * stride + l * 64;
  }
};

// The lines of the K-block from column c of panels [q0, q1) of a packed
// matrix w with `cols` columns (what convert_panel reads for it).
Prefetch k_block_lines(const uint16_t* w, size_t cols, size_t q0, size_t q1, size_t c) {
  Prefetch pf;
  pf.base = reinterpret_cast<const char*>(w + (q0 * cols + c) * kLanes);
  pf.stride = cols * kLanes * sizeof(uint16_t);
  pf.n = q1 - q0;
  pf.lines = (std::min(kKBlock, cols - c) * kLanes * sizeof(uint16_t) + 63) / 64;
  return pf;
}

// Per-thread 64-byte-aligned scratch that only grows.
uint16_t* scratch(size_t n) {
  struct Buf {
    uint16_t* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf buf;
  if (buf.n < n) {
    auto* q = static_cast<uint16_t*>(std::aligned_alloc(64, (n * sizeof(uint16_t) + 63) / 64 * 64));
    if (q == nullptr) throw std::bad_alloc();
    std::free(buf.p);
    buf.p = q;
    buf.n = n;
  }
  return buf.p;
}

}  // namespace

void avx512bf16_packed_tile(const uint16_t* w, bool is_bf16, size_t rows, size_t cols, const uint16_t* xb,
                            size_t ldxb, float* y, size_t ldy, size_t p0, size_t p1, size_t t0, size_t t1,
                            const Bf16Next& next) {
  const size_t panel = cols * kLanes;
  const size_t np = p1 - p0;
  const size_t kb_pairs = kKBlock / 2;
  uint16_t* w2 = scratch(np * kb_pairs * 2 * kLanes);
  const size_t wps = kb_pairs * 2 * kLanes;  // panel stride in the scratch
  const Tables& tab = tables();
  const auto* x32 = reinterpret_cast<const uint32_t*>(xb);
  const size_t ldx = ldxb / 2;
  for (size_t c0 = 0; c0 < cols; c0 += kKBlock) {
    const size_t n = std::min(kKBlock, cols - c0), pairs = (n + 1) / 2;
    for (size_t i = 0; i < np; ++i) convert_panel(w + (p0 + i) * panel, is_bf16, c0, n, w2 + i * wps);
    const bool accumulate = c0 > 0;
    Prefetch pf;
    if (c0 + kKBlock < cols) pf = k_block_lines(w, cols, p0, p1, c0 + kKBlock);
    else if (next.w != nullptr) pf = k_block_lines(next.w, next.cols, next.p0, next.p1, 0);
    // segments end at range ends: spread the lines over calls - n of them
    const size_t calls = (t1 - t0 + kMaxT - 1) / kMaxT * ((np + kG - 1) / kG);
    const size_t spread = calls > pf.n ? calls - pf.n : 1;
    pf.per_step = std::min(pairs, (pf.lines * pf.n + spread - 1) / spread);
    for (size_t t = t0; t < t1;) {
      const size_t tt = std::min(t1 - t, size_t(kMaxT));
      const uint32_t* xt = x32 + t * ldx + c0 / 2;
      for (size_t p = p0; p < p1;) {
        const size_t g = std::min(p1 - p, size_t(kG));
        const size_t left = rows - (p + g - 1) * kLanes;
        const __mmask16 mask = left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
        size_t pf_lines = 0;
        const char* pf_at = pf.next(pf_lines);
        tab.f[g - 1][tt - 1](w2 + (p - p0) * wps, wps, pairs, xt, ldx, y + t * ldy + p * kLanes, ldy, mask, accumulate,
                             pf_at, pf_lines);
        p += g;
      }
      t += tt;
    }
  }
}

}  // namespace defkv::quant::detail
