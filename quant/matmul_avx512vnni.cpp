// AVX-512 VNNI q8_0 tile (compiled with the AVX-512 flags plus -mavx512vnni;
// called only when cpu_features().avx512_vnni).
#include <cstring>
#include <limits>

#include "quant/matmul_tile.h"
#include "quant/q8_ops_x86.h"
#include "quant/block_dot_x86.h"

namespace defkv::quant::detail {

// Low-bit block dots with vpdpbusd / vpdpwssd (256-bit, AVX-512 VL).
BlockDot avx512vnni_low_bit_dot(DType t) { return x86_block_dot<DotOpsVnni, BlockDot>(t); }
BlockDotTokens avx512vnni_low_bit_dot_tokens(DType t) { return x86_block_dot<DotOpsVnni, BlockDotTokens>(t); }

void avx512vnni_q8_tile(const Matrix& w, const BlockQ8x* xq, float* y, size_t ldy, size_t r0,
                        size_t r1, size_t t0, size_t t1) {
  Q8Tile<Q8OpsVnni, 4, 4>::tile(w, xq, y, ldy, r0, r1, t0, t1);
}

}  // namespace defkv::quant::detail

// ---- packed q8_0 (quant::Packed) ------------------------------------------------------
// A micro-kernel computes G groups of 16 rows x T tokens: per 32-column block,
// G*T int32 accumulators start at the activation correction -128*sum(x_q) and
// take 8 vpdpbusd (u8 weights + 128 x s8 activations, 4 columns broadcast per
// step), so they hold the exact integer block dots; then one fma per
// accumulator adds dot * (d_w * d_x) to a float accumulator (lane = row).
namespace defkv::quant::detail {
namespace {

constexpr size_t kGroupBytes = kPackRows * kQ8_0Block;  // 512 quant bytes per (group, block)
// Decode prefetch distance per group stream (2 blocks): the best of the
// distances and group counts tried; into L2 (T1), which beat L1 (T0) at the
// same distance in every alternated run (docs/tuning.md).
constexpr size_t kPrefetchBytes = 1024;

template <int G, int T>
void packed_micro(const uint8_t* qs, const uint16_t* d, size_t nb, const PackedActs& x,
                  size_t t, size_t cols, float* y, size_t ldy, __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) acc[g][u] = _mm512_setzero_ps();
  const int8_t* xq[T];
  const float* xd[T];
  const int32_t* xc[T];
  for (int u = 0; u < T; ++u) {
    xq[u] = x.qs + (t + size_t(u)) * cols;
    xd[u] = x.d + (t + size_t(u)) * nb;
    xc[u] = x.corr + (t + size_t(u)) * nb;
  }
  for (size_t b = 0; b < nb; ++b) {
    __m512i ia[G][T];
    for (int u = 0; u < T; ++u) {
      const __m512i c = _mm512_set1_epi32(xc[u][b]);
      for (int g = 0; g < G; ++g) ia[g][u] = c;
    }
    const uint8_t* wb = qs + b * kGroupBytes;
    if constexpr (T <= 2) {
      // decode is a pure stream: prefetch kPrefetchBytes ahead in each group
      // (the groups are nb*512 bytes apart, and the hardware prefetcher stops
      // at every 4 KiB page)
      for (int g = 0; g < G; ++g)
        for (int l = 0; l < 8; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(wb + size_t(g) * nb * kGroupBytes +
                                                     kPrefetchBytes + size_t(l) * 64),
                       _MM_HINT_T1);
    }
    for (int k4 = 0; k4 < 8; ++k4) {
      __m512i wv[G];
      for (int g = 0; g < G; ++g)
        wv[g] = _mm512_loadu_si512(wb + size_t(g) * nb * kGroupBytes + size_t(k4) * 64);
      for (int u = 0; u < T; ++u) {
        // one 32-bit load broadcast (vpbroadcastd from memory)
        int32_t xv;
        std::memcpy(&xv, xq[u] + b * kQ8_0Block + size_t(k4) * 4, 4);
        const __m512i xb = _mm512_set1_epi32(xv);
        for (int g = 0; g < G; ++g) ia[g][u] = _mm512_dpbusd_epi32(ia[g][u], wv[g], xb);
      }
    }
    for (int g = 0; g < G; ++g) {
      const __m512 dw = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + (size_t(g) * nb + b) * kPackRows)));
      for (int u = 0; u < T; ++u)
        acc[g][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[g][u]),
                                    _mm512_mul_ps(dw, _mm512_set1_ps(xd[u][b])), acc[g][u]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) {
      float* yp = y + size_t(u) * ldy + size_t(g) * kPackRows;
      if (g == G - 1 && last_mask != 0xFFFF) _mm512_mask_storeu_ps(yp, last_mask, acc[g][u]);
      else _mm512_storeu_ps(yp, acc[g][u]);
    }
}

using PackedMicro = void (*)(const uint8_t*, const uint16_t*, size_t, const PackedActs&, size_t,
                             size_t, float*, size_t, __mmask16);

// Batches: 2 groups (32 rows) x up to 6 tokens: 12 int32 + 12 float
// accumulators, 2 weight vectors and 1 broadcast (27 of 32 zmm). One token:
// 4 groups (64 rows: 4 independent vpdpbusd chains). 2 x 6 was the fastest
// tile measured; the per-block float scaling (scales differ per block) keeps
// it below pure vpdpbusd throughput (docs/tuning.md).
constexpr int kMaxT = 6;
template <int T>
void fill_t(PackedMicro (&g1)[kMaxT], PackedMicro (&g2)[kMaxT]) {
  g1[T - 1] = &packed_micro<1, T>;
  g2[T - 1] = &packed_micro<2, T>;
  if constexpr (T > 1) fill_t<T - 1>(g1, g2);
}

struct MicroTables {
  PackedMicro g1[kMaxT], g2[kMaxT];
  MicroTables() { fill_t<kMaxT>(g1, g2); }
};
const MicroTables kTables;

}  // namespace

void avx512vnni_packed_q8_tile(const uint8_t* qs, const uint16_t* d, size_t rows, size_t nb,
                               const PackedActs& x, float* y, size_t ldy, size_t g0, size_t g1,
                               size_t t0, size_t t1) {
  const size_t cols = nb * kQ8_0Block;
  auto mask_for = [&](size_t g_last) -> __mmask16 {
    const size_t left = rows - g_last * kPackRows;
    return left >= kPackRows ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxT) ? size_t(kMaxT) : t1 - t;
    size_t g = g0;
    if (tt == 1) {
      for (; g + 4 <= g1; g += 4)
        packed_micro<4, 1>(qs + g * nb * kGroupBytes, d + g * nb * kPackRows, nb, x, t, cols,
                           y + t * ldy + g * kPackRows, ldy, mask_for(g + 3));
    }
    for (; g + 2 <= g1; g += 2)
      kTables.g2[tt - 1](qs + g * nb * kGroupBytes, d + g * nb * kPackRows, nb, x, t, cols,
                         y + t * ldy + g * kPackRows, ldy, mask_for(g + 1));
    for (; g < g1; ++g)
      kTables.g1[tt - 1](qs + g * nb * kGroupBytes, d + g * nb * kPackRows, nb, x, t, cols,
                         y + t * ldy + g * kPackRows, ldy, mask_for(g));
    t += tt;
  }
}

// Activation quantisation for the packed kernels, bit-identical to the
// portable quantize_activations (matmul.cpp): amax of |x| per 32-block,
// d = amax / 127, id = 1 / d (0 if d == 0), q = round-to-nearest-even(x * id)
// (vcvtps2dq under the default rounding mode equals the 1.5*2^23 trick for
// |x * id| <= 127); plus corr = -128 * sum(q). A block holding NaN or Inf
// gets d = NaN, q = 0, corr = 0 as there (its products stay NaN). Vectorised
// because the portable loop was a visible share of a batch product.
void avx512vnni_quantize_packed_acts(const float* x, size_t cols, int8_t* qs, float* d,
                                     int32_t* corr) {
  const size_t nb = cols / kQ8_0Block;
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 flt_max = _mm512_set1_ps(std::numeric_limits<float>::max());
  for (size_t b = 0; b < nb; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + b * kQ8_0Block);
    const __m512 v1 = _mm512_loadu_ps(x + b * kQ8_0Block + 16);
    const __m512 a0 = _mm512_and_ps(v0, abs_mask), a1 = _mm512_and_ps(v1, abs_mask);
    // ordered <=: false for NaN and Inf
    if ((_mm512_cmp_ps_mask(a0, flt_max, _CMP_LE_OQ) & _mm512_cmp_ps_mask(a1, flt_max, _CMP_LE_OQ)) != 0xffff) {
      std::memset(qs + b * kQ8_0Block, 0, kQ8_0Block);
      d[b] = std::numeric_limits<float>::quiet_NaN();
      corr[b] = 0;
      continue;
    }
    const __m512 m = _mm512_max_ps(a0, a1);
    const float amax = _mm512_reduce_max_ps(m);
    const float db = amax / 127.0f;
    const float id = db != 0.0f ? 1.0f / db : 0.0f;
    const __m512 idv = _mm512_set1_ps(id);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kQ8_0Block), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kQ8_0Block + 16), _mm512_cvtepi32_epi8(q1));
    d[b] = db;
    corr[b] = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  }
}

}  // namespace defkv::quant::detail
