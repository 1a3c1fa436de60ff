// Packed Q4_0 (quant::Packed) on AVX-512 VNNI. Layout (kPackRows = 16 rows
// per group, nb = cols/32; rows past W.rows zero with zero scales):
//   qs[g][b][k][r][i] = q(16g + r, 32b + 4k + i) | q(16g + r, 32b + 16 + 4k + i) << 4
//                       (k < 4; q = the stored 4-bit level 0..15)      (256 B per g, b)
//   d [g][b][r]       = fp16 scale of row 16g + r, block b              (32 B per g, b)
// A micro-kernel computes G groups x T tokens: per block, int32 accumulators
// start at -8 * sum(x_q) (the level offset) and take 8 vpdpbusd (unsigned
// levels x broadcast int8 activations), then one fma adds dot * d_w * d_x.
// Decode (T = 1): the low nibbles (v & 0x0F) and the high ones in place
// (v & 0xF0, 16 x the level) feed two accumulators, so the unpack is one and
// per nibble; the dot is lo + hi / 16 exactly. Batches shift the high nibble
// down instead (one accumulator: the 2 x 6 tile has no registers for two).
// The activations are those of the packed q8_0 kernel (PackedActs: per
// 32-block, d = amax/127, nearest even; corr = -128 * sum(q), so -8 * sum(q)
// is corr / 16 exactly), the same as matmul()'s for q4_0.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/blocks.h"
#include "quant/matmul_isa.h"

namespace defkv::quant::detail {
namespace {

constexpr size_t kQ4GroupBytes = 256;

template <int G, int T>
void q4_0_micro(const uint8_t* qs, const uint16_t* d, size_t nb, const PackedActs& x, size_t t, size_t cols,
                float* y, size_t ldy, __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) acc[g][u] = _mm512_setzero_ps();
  constexpr bool kSplit = T == 1;
  const __m512i low4 = _mm512_set1_epi8(0x0F), high4 = _mm512_set1_epi8(char(0xF0));
  for (size_t b = 0; b < nb; ++b) {
    __m512i ia[G][T], ih[G][T];
    for (int u = 0; u < T; ++u) {
      const __m512i c = _mm512_set1_epi32(x.corr[(t + size_t(u)) * nb + b] / 16);
      for (int g = 0; g < G; ++g) {
        ia[g][u] = c;
        ih[g][u] = _mm512_setzero_si512();
      }
    }
    const uint8_t* wb = qs + b * kQ4GroupBytes;
    if constexpr (T == 1) {
      // 4 blocks ahead into L2, as the q8_0 kernel (docs/tuning.md)
      for (int g = 0; g < G; ++g)
        for (int l = 0; l < 4; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(wb + size_t(g) * nb * kQ4GroupBytes + 1024 + size_t(l) * 64),
                       _MM_HINT_T1);
    }
    for (int k = 0; k < 4; ++k) {
      __m512i lo[G], hi[G];
      for (int g = 0; g < G; ++g) {
        const __m512i v = _mm512_loadu_si512(wb + size_t(g) * nb * kQ4GroupBytes + size_t(k) * 64);
        lo[g] = _mm512_and_si512(v, low4);
        if constexpr (kSplit) hi[g] = _mm512_and_si512(v, high4);
        else hi[g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      }
      for (int u = 0; u < T; ++u) {
        const int8_t* xq = x.qs + (t + size_t(u)) * cols + b * kQ4_0Cols + size_t(k) * 4;
        int32_t a, c;
        std::memcpy(&a, xq, 4);
        std::memcpy(&c, xq + 16, 4);
        const __m512i xa = _mm512_set1_epi32(a), xc = _mm512_set1_epi32(c);
        for (int g = 0; g < G; ++g) {
          ia[g][u] = _mm512_dpbusd_epi32(ia[g][u], lo[g], xa);
          if constexpr (kSplit) ih[g][u] = _mm512_dpbusd_epi32(ih[g][u], hi[g], xc);
          else ia[g][u] = _mm512_dpbusd_epi32(ia[g][u], hi[g], xc);
        }
      }
    }
    for (int g = 0; g < G; ++g) {
      const __m512 dw = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + (size_t(g) * nb + b) * kPackRows)));
      for (int u = 0; u < T; ++u)
        acc[g][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(kSplit ? _mm512_add_epi32(ia[g][u], _mm512_srai_epi32(ih[g][u], 4)) : ia[g][u]),
                                    _mm512_mul_ps(dw, _mm512_set1_ps(x.d[(t + size_t(u)) * nb + b])), acc[g][u]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) {
      float* yp = y + size_t(u) * ldy + size_t(g) * kPackRows;
      if (g == G - 1 && last_mask != 0xFFFF) _mm512_mask_storeu_ps(yp, last_mask, acc[g][u]);
      else _mm512_storeu_ps(yp, acc[g][u]);
    }
}

// Batches: 2 groups x 6 tokens (as the q8_0 kernel); decode: 4 groups x 1 token.
constexpr int kMaxT = 6;
using Micro = void (*)(const uint8_t*, const uint16_t*, size_t, const PackedActs&, size_t, size_t, float*, size_t,
                       __mmask16);
const Micro kG2[kMaxT] = {&q4_0_micro<2, 1>, &q4_0_micro<2, 2>, &q4_0_micro<2, 3>,
                          &q4_0_micro<2, 4>, &q4_0_micro<2, 5>, &q4_0_micro<2, 6>};
const Micro kG1[kMaxT] = {&q4_0_micro<1, 1>, &q4_0_micro<1, 2>, &q4_0_micro<1, 3>,
                          &q4_0_micro<1, 4>, &q4_0_micro<1, 5>, &q4_0_micro<1, 6>};

}  // namespace

void avx512vnni_packed_q4_0_tile(const uint8_t* qs, const uint16_t* d, size_t rows, size_t nb, const PackedActs& x,
                                 float* y, size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1) {
  const size_t cols = nb * kQ4_0Cols;
  auto mask_for = [&](size_t g_last) -> __mmask16 {
    const size_t left = rows - g_last * kPackRows;
    return left >= kPackRows ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  const size_t gq = nb * kQ4GroupBytes, gd = nb * kPackRows;
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxT) ? size_t(kMaxT) : t1 - t;
    size_t g = g0;
    if (tt == 1)
      for (; g + 4 <= g1; g += 4)
        q4_0_micro<4, 1>(qs + g * gq, d + g * gd, nb, x, t, cols, y + t * ldy + g * kPackRows, ldy, mask_for(g + 3));
    for (; g + 2 <= g1; g += 2)
      kG2[tt - 1](qs + g * gq, d + g * gd, nb, x, t, cols, y + t * ldy + g * kPackRows, ldy, mask_for(g + 1));
    for (; g < g1; ++g)
      kG1[tt - 1](qs + g * gq, d + g * gd, nb, x, t, cols, y + t * ldy + g * kPackRows, ldy, mask_for(g));
    t += tt;
  }
}

}  // namespace defkv::quant::detail
