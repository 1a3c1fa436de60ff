// Packed Q4_K and Q6_K (quant::Packed) on AVX-512 VNNI. Q4_K: G groups of 16 rows x T
// tokens per micro-kernel, one zmm lane per row. Per 32-column sub-block j the
// 4-bit quants (unsigned 0..15) take 8 vpdpbusd against broadcast int8
// activations (exact int32 sub-block dots), which are scaled by the rows'
// 6-bit scales (vpmulld) into one int32 sum per super-block; the mins term
// sum_j m_j * (sum of the activations of sub-block j) is an int32 sum too.
// Per super-block: y += d_w * d_x * sum - dmin_w * d_x * minsum (the
// arithmetic of block_dot_ref for Q4_K, up to float rounding).
// Layout: see packed_q4k.h.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/packed_q4k.h"

namespace defkv::quant::detail {
namespace {

template <int G, int T>
void q4k_micro(const uint8_t* w, size_t nsb, const ActQ8K* const* x, float* y, size_t ldy, __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) acc[g][u] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (size_t sb = 0; sb < nsb; ++sb) {
    __m512i isum[G][T], msum[G][T];
    for (int g = 0; g < G; ++g)
      for (int u = 0; u < T; ++u) isum[g][u] = msum[g][u] = _mm512_setzero_si512();
    const uint8_t* wb[G];
    for (int g = 0; g < G; ++g) wb[g] = w + (size_t(g) * nsb + sb) * kQ4KPackedBytes;
    if constexpr (T == 1) {
      // decode streams the weights: fetch the next super-block of each group
      for (int g = 0; g < G; ++g)
        for (size_t l = 0; l < kQ4KPackedBytes; l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(wb[g] + kQ4KPackedBytes + l), _MM_HINT_T0);
    }
    for (int j = 0; j < 8; ++j) {
      __m512i idot[G][T];
      for (int g = 0; g < G; ++g)
        for (int u = 0; u < T; ++u) idot[g][u] = _mm512_setzero_si512();
      for (int k = 0; k < 4; ++k) {
        __m512i lo[G], hi[G];
        for (int g = 0; g < G; ++g) {
          const __m512i v = _mm512_loadu_si512(wb[g] + size_t(j) * 256 + size_t(k) * 64);
          lo[g] = _mm512_and_si512(v, low4);
          hi[g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
        for (int u = 0; u < T; ++u) {
          const int8_t* xq = x[u][sb].qs + 32 * j + 4 * k;
          int32_t a, b;
          std::memcpy(&a, xq, 4);
          std::memcpy(&b, xq + 16, 4);
          const __m512i xa = _mm512_set1_epi32(a), xb = _mm512_set1_epi32(b);
          for (int g = 0; g < G; ++g) {
            idot[g][u] = _mm512_dpbusd_epi32(idot[g][u], lo[g], xa);
            idot[g][u] = _mm512_dpbusd_epi32(idot[g][u], hi[g], xb);
          }
        }
      }
      for (int g = 0; g < G; ++g) {
        const __m512i sc = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[g] + kQ4KScalesOffset + size_t(j) * 16)));
        const __m512i mn = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[g] + kQ4KMinsOffset + size_t(j) * 16)));
        for (int u = 0; u < T; ++u) {
          isum[g][u] = _mm512_add_epi32(isum[g][u], _mm512_mullo_epi32(idot[g][u], sc));
          const int32_t bs = int32_t(x[u][sb].bsums[2 * j]) + int32_t(x[u][sb].bsums[2 * j + 1]);
          msum[g][u] = _mm512_add_epi32(msum[g][u], _mm512_mullo_epi32(mn, _mm512_set1_epi32(bs)));
        }
      }
    }
    for (int g = 0; g < G; ++g) {
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[g] + kQ4KDOffset)));
      const __m512 dmin =
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[g] + kQ4KDminOffset)));
      for (int u = 0; u < T; ++u) {
        const __m512 dx = _mm512_set1_ps(x[u][sb].d);
        acc[g][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[g][u]), _mm512_mul_ps(d, dx), acc[g][u]);
        acc[g][u] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[g][u]), _mm512_mul_ps(dmin, dx), acc[g][u]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) {
      float* yp = y + size_t(u) * ldy + size_t(g) * kPackRows;
      if (g == G - 1 && last_mask != 0xFFFF) _mm512_mask_storeu_ps(yp, last_mask, acc[g][u]);
      else _mm512_storeu_ps(yp, acc[g][u]);
    }
}

// Batches: 2 groups x 3 tokens (6 each of int dot, int sum, min sum and float
// accumulators: 24 zmm, plus 4 weight vectors and broadcasts). Decode: 4
// groups x 1 token (four independent weight streams).
constexpr int kMaxT = 3;
using Micro = void (*)(const uint8_t*, size_t, const ActQ8K* const*, float*, size_t, __mmask16);
const Micro kG2[kMaxT] = {&q4k_micro<2, 1>, &q4k_micro<2, 2>, &q4k_micro<2, 3>};
const Micro kG1[kMaxT] = {&q4k_micro<1, 1>, &q4k_micro<1, 2>, &q4k_micro<1, 3>};

}  // namespace

void avx512vnni_packed_q4k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1) {
  auto mask_for = [&](size_t g_last) -> __mmask16 {
    const size_t left = rows - g_last * kPackRows;
    return left >= kPackRows ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  const size_t gstride = nsb * kQ4KPackedBytes;
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxT) ? size_t(kMaxT) : t1 - t;
    const ActQ8K* xs[kMaxT];
    for (size_t u = 0; u < tt; ++u) xs[u] = x + (t + u) * nsb;
    size_t g = g0;
    if (tt == 1)
      for (; g + 4 <= g1; g += 4) q4k_micro<4, 1>(w + g * gstride, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g + 3));
    for (; g + 2 <= g1; g += 2) kG2[tt - 1](w + g * gstride, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g + 1));
    for (; g < g1; ++g) kG1[tt - 1](w + g * gstride, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g));
    t += tt;
  }
}

}  // namespace defkv::quant::detail

// ---- packed Q6_K ------------------------------------------------------------------------
// Per 32-column chunk j: quants q = low nibble | top two bits << 4 (0..63,
// unsigned), 4 + 4 vpdpbusd into two int32 dots (the 16-column sub-blocks 2j
// and 2j + 1), scaled by the rows' int8 scales (vpmulld); the -32 offset is
// 32 * sum_k sc_k * bsums_k, one vpdpwssd per chunk (scale pairs x block-sum
// pairs). Per super-block y += d_w * d_x * (isum - 32 * msum), the arithmetic
// of block_dot_ref for Q6_K up to float rounding.
namespace defkv::quant::detail {
namespace {

template <int G, int T>
void q6k_micro(const uint8_t* w, size_t nsb, const ActQ8K* const* x, float* y, size_t ldy, __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) acc[g][u] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi8(0x0F), three = _mm512_set1_epi8(3);
  for (size_t sb = 0; sb < nsb; ++sb) {
    __m512i isum[G][T], msum[G][T];
    for (int g = 0; g < G; ++g)
      for (int u = 0; u < T; ++u) isum[g][u] = msum[g][u] = _mm512_setzero_si512();
    const uint8_t* wb[G];
    for (int g = 0; g < G; ++g) wb[g] = w + (size_t(g) * nsb + sb) * kQ6KPackedBytes;
    if constexpr (T == 1) {
      for (int g = 0; g < G; ++g)
        for (size_t l = 0; l < kQ6KPackedBytes; l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(wb[g] + kQ6KPackedBytes + l), _MM_HINT_T0);
    }
    for (int j = 0; j < 8; ++j) {
      __m512i dlo[G][T], dhi[G][T];
      for (int g = 0; g < G; ++g)
        for (int u = 0; u < T; ++u) dlo[g][u] = dhi[g][u] = _mm512_setzero_si512();
      __m512i h0[G], h1[G];
      for (int g = 0; g < G; ++g) {
        h0[g] = _mm512_loadu_si512(wb[g] + kQ6KHbOffset + size_t(j) * 128);
        h1[g] = _mm512_loadu_si512(wb[g] + kQ6KHbOffset + size_t(j) * 128 + 64);
      }
      for (int k = 0; k < 4; ++k) {
        __m512i qa[G], qb[G];
        for (int g = 0; g < G; ++g) {
          const __m512i v = _mm512_loadu_si512(wb[g] + size_t(j) * 256 + size_t(k) * 64);
          const __m512i ha = _mm512_and_si512(_mm512_srli_epi16(h0[g], unsigned(2 * k)), three);
          const __m512i hb = _mm512_and_si512(_mm512_srli_epi16(h1[g], unsigned(2 * k)), three);
          qa[g] = _mm512_or_si512(_mm512_and_si512(v, low4), _mm512_slli_epi16(ha, 4));
          qb[g] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), low4), _mm512_slli_epi16(hb, 4));
        }
        for (int u = 0; u < T; ++u) {
          const int8_t* xq = x[u][sb].qs + 32 * j + 4 * k;
          int32_t a, b;
          std::memcpy(&a, xq, 4);
          std::memcpy(&b, xq + 16, 4);
          const __m512i xa = _mm512_set1_epi32(a), xb = _mm512_set1_epi32(b);
          for (int g = 0; g < G; ++g) {
            dlo[g][u] = _mm512_dpbusd_epi32(dlo[g][u], qa[g], xa);
            dhi[g][u] = _mm512_dpbusd_epi32(dhi[g][u], qb[g], xb);
          }
        }
      }
      for (int g = 0; g < G; ++g) {
        // (sc_2j, sc_2j+1) of each row as an i16 pair in one dword
        const __m512i s16 = _mm512_cvtepi8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[g] + kQ6KScalesOffset + size_t(j) * 32)));
        const __m512i s_lo = _mm512_srai_epi32(_mm512_slli_epi32(s16, 16), 16), s_hi = _mm512_srai_epi32(s16, 16);
        for (int u = 0; u < T; ++u) {
          isum[g][u] = _mm512_add_epi32(isum[g][u], _mm512_mullo_epi32(dlo[g][u], s_lo));
          isum[g][u] = _mm512_add_epi32(isum[g][u], _mm512_mullo_epi32(dhi[g][u], s_hi));
          const uint32_t bs = uint32_t(uint16_t(x[u][sb].bsums[2 * j])) |
                              (uint32_t(uint16_t(x[u][sb].bsums[2 * j + 1])) << 16);
          msum[g][u] = _mm512_dpwssd_epi32(msum[g][u], s16, _mm512_set1_epi32(int32_t(bs)));
        }
      }
    }
    for (int g = 0; g < G; ++g) {
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[g] + kQ6KDOffset)));
      for (int u = 0; u < T; ++u) {
        const __m512i total = _mm512_sub_epi32(isum[g][u], _mm512_slli_epi32(msum[g][u], 5));
        acc[g][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(d, _mm512_set1_ps(x[u][sb].d)), acc[g][u]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) {
      float* yp = y + size_t(u) * ldy + size_t(g) * kPackRows;
      if (g == G - 1 && last_mask != 0xFFFF) _mm512_mask_storeu_ps(yp, last_mask, acc[g][u]);
      else _mm512_storeu_ps(yp, acc[g][u]);
    }
}

const Micro kQ6G2[kMaxT] = {&q6k_micro<2, 1>, &q6k_micro<2, 2>, &q6k_micro<2, 3>};
const Micro kQ6G1[kMaxT] = {&q6k_micro<1, 1>, &q6k_micro<1, 2>, &q6k_micro<1, 3>};

}  // namespace

void avx512vnni_packed_q6k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1) {
  auto mask_for = [&](size_t g_last) -> __mmask16 {
    const size_t left = rows - g_last * kPackRows;
    return left >= kPackRows ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  const size_t gstride = nsb * kQ6KPackedBytes;
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxT) ? size_t(kMaxT) : t1 - t;
    const ActQ8K* xs[kMaxT];
    for (size_t u = 0; u < tt; ++u) xs[u] = x + (t + u) * nsb;
    size_t g = g0;
    if (tt == 1)
      for (; g + 4 <= g1; g += 4) q6k_micro<4, 1>(w + g * gstride, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g + 3));
    for (; g + 2 <= g1; g += 2) kQ6G2[tt - 1](w + g * gstride, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g + 1));
    for (; g < g1; ++g) kQ6G1[tt - 1](w + g * gstride, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g));
    t += tt;
  }
}

}  // namespace defkv::quant::detail
