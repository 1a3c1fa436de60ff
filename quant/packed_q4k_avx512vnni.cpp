// Packed Q4_K and Q6_K (quant::Packed) on AVX-512 VNNI. Q4_K: G groups of 16 rows x T
// tokens per micro-kernel, one zmm lane per row. Per 32-column sub-block j the
// 4-bit quants take 8 vpdpbusd against broadcast int8 activations: the low
// nibbles (v & 0x0F) and the high nibbles in place (v & 0xF0, i.e. 16 x the
// quant) go to two int32 dots, so the unpack is one and per nibble and the two
// dependency chains alternate; dot_j = lo + hi / 16 exactly. The dots are
// scaled by the rows' 6-bit scales (vpmulld) into one int32 sum per
// super-block; the mins term sum_j m_j * (sum of the activations of sub-block
// j) takes 4 vpdpwssd (min pairs x block-sum pairs). Per super-block:
// y += d_w * d_x * sum - dmin_w * d_x * minsum (the arithmetic of
// block_dot_ref for Q4_K, up to float rounding). Layout: see packed_q4k.h.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "quant/packed_q4k.h"

namespace defkv::quant::detail {
namespace {

// Decode streams every group's weights once: at sub-block j each group
// prefetches the cache lines [n * j, n * (j + 1)) of the super-block
// kPrefetchAhead after the current one (n = an eighth of a super-block's
// lines, rounded up; the last step runs a few lines into the next one, which
// is harmless), so the prefetches spread over the super-block instead of
// queueing up at its start. Into L2 (T1): more misses in flight than the L1
// fill buffers allow; two ahead into L2 was faster than one ahead into L1
// (docs/tuning.md).
constexpr size_t kPrefetchAhead = 2;
template <size_t Bytes>
inline void prefetch_step(const uint8_t* cur, int j) {
  constexpr size_t per_step = (Bytes / 64 + 7) / 8;
  const uint8_t* p = cur + kPrefetchAhead * Bytes + size_t(j) * per_step * 64;
  for (size_t l = 0; l < per_step; ++l) _mm_prefetch(reinterpret_cast<const char*>(p + l * 64), _MM_HINT_T1);
}

// The block sums of sub-blocks 2p and 2p + 1 (32 activations each) as an i16 pair.
inline int32_t q4k_bsum_pair(const ActQ8K& a, int p) {
  const int s0 = int(a.bsums[4 * p]) + int(a.bsums[4 * p + 1]);
  const int s1 = int(a.bsums[4 * p + 2]) + int(a.bsums[4 * p + 3]);
  return int32_t(uint32_t(uint16_t(s0)) | (uint32_t(uint16_t(s1)) << 16));
}

// Offsets in the packed super-block of a Q4_K / Q5_K group (packed_q4k.h).
struct Q4KLayout {
  static constexpr bool kFive = false;
  static constexpr size_t kBytes = kQ4KPackedBytes, kScales = kQ4KScalesOffset, kMins = kQ4KMinsOffset,
                          kD = kQ4KDOffset, kDmin = kQ4KDminOffset;
};
struct Q5KLayout {
  static constexpr bool kFive = true;
  static constexpr size_t kBytes = kQ5KPackedBytes, kScales = kQ5KScalesOffset, kMins = kQ5KMinsOffset,
                          kD = kQ5KDOffset, kDmin = kQ5KDminOffset;
};

// (a & 0x0F) | top for every byte, top holding bits 4-7 only (vpternlogd "c ? a : b").
inline __m512i merge_low_nibble(__m512i a, __m512i top, __m512i low4) {
  return _mm512_ternarylogic_epi32(a, top, low4, 0xE4);
}

// Q5_K batches of many tokens first unpack their groups' quants to bytes,
// once per work item (kQ45KUnpackedBytes per group and super-block:
// [j][k][lo, hi][64], 0..31), so the token tiles load them instead of
// rebuilding them every 3 tokens, and one accumulator per token takes both
// halves.
constexpr size_t kQ45KUnpackedBytes = 8 * 4 * 2 * 64;
constexpr size_t kUnpackMinTokens = 12;

// The low- and high-column quant vectors (0..31) of step k of sub-block j of
// a packed Q5_K super-block.
inline void q5k_quants(const uint8_t* wb, int j, int k, __m512i* lo, __m512i* hi) {
  const __m512i low4 = _mm512_set1_epi8(0x0F), bit4 = _mm512_set1_epi8(0x10);
  const __m512i v = _mm512_loadu_si512(wb + size_t(j) * 256 + size_t(k) * 64);
  const __m512i s = _mm512_srli_epi16(_mm512_loadu_si512(wb + kQ5KQhOffset + size_t(j) * 64), unsigned(k));
  *lo = merge_low_nibble(v, _mm512_and_si512(_mm512_slli_epi16(s, 4), bit4), low4);
  *hi = merge_low_nibble(_mm512_srli_epi16(v, 4), _mm512_and_si512(s, bit4), low4);
}

void q5k_unpack(const uint8_t* w, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i)
    for (int j = 0; j < 8; ++j)
      for (int k = 0; k < 4; ++k) {
        __m512i lo, hi;
        q5k_quants(w + i * kQ5KPackedBytes, j, k, &lo, &hi);
        uint8_t* o = out + i * kQ45KUnpackedBytes + size_t(j * 4 + k) * 128;
        _mm512_storeu_si512(o, lo);
        _mm512_storeu_si512(o + 64, hi);
      }
}

// up: the groups' unpacked quants when kU (same group and super-block order as w).
template <class L, int G, int T, bool kU>
void q4k_micro(const uint8_t* w, const uint8_t* up, size_t nsb, const ActQ8K* const* x, float* y, size_t ldy,
               __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) acc[g][u] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi8(0x0F), high4 = _mm512_set1_epi8(char(0xF0));
  const __m512i bit4 = _mm512_set1_epi8(0x10);
  for (size_t sb = 0; sb < nsb; ++sb) {
    __m512i isum[G][T];
    for (int g = 0; g < G; ++g)
      for (int u = 0; u < T; ++u) isum[g][u] = _mm512_setzero_si512();
    const uint8_t* wb[G];
    for (int g = 0; g < G; ++g) wb[g] = w + (size_t(g) * nsb + sb) * L::kBytes;
    for (int j = 0; j < 8; ++j) {
      if constexpr (T == 1)
        for (int g = 0; g < G; ++g) prefetch_step<L::kBytes>(wb[g], j);
      __m512i dlo[G][T], dhi[G][T];
      for (int g = 0; g < G; ++g)
        for (int u = 0; u < T; ++u) dlo[g][u] = dhi[g][u] = _mm512_setzero_si512();
      __m512i qh[G];
      if constexpr (L::kFive && !kU)
        for (int g = 0; g < G; ++g) qh[g] = _mm512_loadu_si512(wb[g] + kQ5KQhOffset + size_t(j) * 64);
      for (int k = 0; k < 4; ++k) {
        __m512i lo[G], hi[G];
        for (int g = 0; g < G; ++g) {
          if constexpr (kU) {
            const uint8_t* q = up + (size_t(g) * nsb + sb) * kQ45KUnpackedBytes + size_t(j * 4 + k) * 128;
            lo[g] = _mm512_loadu_si512(q);
            hi[g] = _mm512_loadu_si512(q + 64);
            continue;
          }
          const __m512i v = _mm512_loadu_si512(wb[g] + size_t(j) * 256 + size_t(k) * 64);
          if constexpr (L::kFive) {
            // fifth bits: bit k of a qh byte for the low nibble's column, bit 4 + k for the high one's
            const __m512i s = _mm512_srli_epi16(qh[g], unsigned(k));
            lo[g] = merge_low_nibble(v, _mm512_and_si512(_mm512_slli_epi16(s, 4), bit4), low4);
            hi[g] = merge_low_nibble(_mm512_srli_epi16(v, 4), _mm512_and_si512(s, bit4), low4);
          } else {
            lo[g] = _mm512_and_si512(v, low4);
            hi[g] = _mm512_and_si512(v, high4);
          }
        }
        for (int u = 0; u < T; ++u) {
          const int8_t* xq = x[u][sb].qs + 32 * j + 4 * k;
          int32_t a, b;
          std::memcpy(&a, xq, 4);
          std::memcpy(&b, xq + 16, 4);
          const __m512i xa = _mm512_set1_epi32(a), xb = _mm512_set1_epi32(b);
          for (int g = 0; g < G; ++g) {
            dlo[g][u] = _mm512_dpbusd_epi32(dlo[g][u], lo[g], xa);
            if constexpr (kU) dlo[g][u] = _mm512_dpbusd_epi32(dlo[g][u], hi[g], xb);
            else dhi[g][u] = _mm512_dpbusd_epi32(dhi[g][u], hi[g], xb);
          }
        }
      }
      for (int g = 0; g < G; ++g) {
        const __m512i sc = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[g] + L::kScales + size_t(j) * 16)));
        for (int u = 0; u < T; ++u) {
          // Q4_K's high nibbles were taken in place (16 x the quant)
          const __m512i dot =
              kU ? dlo[g][u] : _mm512_add_epi32(dlo[g][u], L::kFive ? dhi[g][u] : _mm512_srai_epi32(dhi[g][u], 4));
          isum[g][u] = _mm512_add_epi32(isum[g][u], _mm512_mullo_epi32(dot, sc));
        }
      }
    }
    __m512i msum[G][T];
    for (int g = 0; g < G; ++g)
      for (int u = 0; u < T; ++u) msum[g][u] = _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {
      __m512i bs[T];
      for (int u = 0; u < T; ++u) bs[u] = _mm512_set1_epi32(q4k_bsum_pair(x[u][sb], p));
      for (int g = 0; g < G; ++g) {
        // (m_2p, m_2p+1) of each row as an i16 pair in one dword
        const __m512i mn = _mm512_cvtepu8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[g] + L::kMins + size_t(p) * 32)));
        for (int u = 0; u < T; ++u) msum[g][u] = _mm512_dpwssd_epi32(msum[g][u], mn, bs[u]);
      }
    }
    for (int g = 0; g < G; ++g) {
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[g] + L::kD)));
      const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[g] + L::kDmin)));
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

// Q4_K batches: 2 groups x 3 tokens (6 each of float accumulators, int sums
// and the two int dots: 24 zmm, plus 4 weight vectors and broadcasts; the
// mins term reuses the dots' registers after the sub-blocks). Decode: 4
// groups x 1 token (four independent weight streams).
constexpr int kMaxT = 3;
using Micro = void (*)(const uint8_t*, const uint8_t*, size_t, const ActQ8K* const*, float*, size_t, __mmask16);

template <class L>
void q45k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy, size_t g0,
               size_t g1, size_t t0, size_t t1) {
  static const Micro two[kMaxT] = {&q4k_micro<L, 2, 1, false>, &q4k_micro<L, 2, 2, false>, &q4k_micro<L, 2, 3, false>};
  static const Micro one[kMaxT] = {&q4k_micro<L, 1, 1, false>, &q4k_micro<L, 1, 2, false>, &q4k_micro<L, 1, 3, false>};
  auto mask_for = [&](size_t g_last) -> __mmask16 {
    const size_t left = rows - g_last * kPackRows;
    return left >= kPackRows ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  const size_t gstride = nsb * L::kBytes, ustride = nsb * kQ45KUnpackedBytes;
  const Micro* two_t = two;
  const Micro* one_t = one;
  const uint8_t* ub = nullptr;
  // Q5_K only: Q4_K's in-place nibbles cost less than loading twice the bytes
  // (bench_gemm, docs/quantized-weights.md)
  if constexpr (L::kFive) {
    static const Micro two_u[kMaxT] = {&q4k_micro<L, 2, 1, true>, &q4k_micro<L, 2, 2, true>, &q4k_micro<L, 2, 3, true>};
    static const Micro one_u[kMaxT] = {&q4k_micro<L, 1, 1, true>, &q4k_micro<L, 1, 2, true>, &q4k_micro<L, 1, 3, true>};
    if (t1 - t0 >= kUnpackMinTokens) {
      // the calling thread's scratch (one work item's groups at a time)
      thread_local std::vector<uint8_t> buf;
      if (buf.size() < (g1 - g0) * ustride) buf.resize((g1 - g0) * ustride);
      q5k_unpack(w + g0 * gstride, (g1 - g0) * nsb, buf.data());
      ub = buf.data();
      two_t = two_u;
      one_t = one_u;
    }
  }
  const bool unpack = ub != nullptr;
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxT) ? size_t(kMaxT) : t1 - t;
    const ActQ8K* xs[kMaxT];
    for (size_t u = 0; u < tt; ++u) xs[u] = x + (t + u) * nsb;
    size_t g = g0;
    if (tt == 1 && !unpack)
      for (; g + 4 <= g1; g += 4)
        q4k_micro<L, 4, 1, false>(w + g * gstride, nullptr, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g + 3));
    for (; g + 2 <= g1; g += 2)
      two_t[tt - 1](w + g * gstride, unpack ? ub + (g - g0) * ustride : nullptr, nsb, xs, y + t * ldy + g * kPackRows,
                    ldy, mask_for(g + 1));
    for (; g < g1; ++g)
      one_t[tt - 1](w + g * gstride, unpack ? ub + (g - g0) * ustride : nullptr, nsb, xs, y + t * ldy + g * kPackRows,
                    ldy, mask_for(g));
    t += tt;
  }
}

}  // namespace

void avx512vnni_packed_q4k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1) {
  q45k_tile<Q4KLayout>(w, rows, nsb, x, y, ldy, g0, g1, t0, t1);
}

void avx512vnni_packed_q5k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1) {
  q45k_tile<Q5KLayout>(w, rows, nsb, x, y, ldy, g0, g1, t0, t1);
}

}  // namespace defkv::quant::detail

// ---- packed Q6_K ------------------------------------------------------------------------
// Per 32-column chunk j: quants q = low nibble | top two bits << 4 (0..63,
// unsigned), 4 + 4 vpdpbusd into two int32 dots (the 16-column sub-blocks 2j
// and 2j + 1), scaled by the rows' int8 scales (vpmulld); the -32 offset is
// 32 * sum_k sc_k * bsums_k, one vpdpwssd per chunk (scale pairs x block-sum
// pairs). Per super-block y += d_w * d_x * (isum - 32 * msum), the arithmetic
// of block_dot_ref for Q6_K up to float rounding. A quant byte is built by
// moving its two top bits to bits 4-5 (one 16-bit shift, and 0x30) and one
// vpternlogd taking bits 0-3 from the nibble vector and bits 4-7 from those.
namespace defkv::quant::detail {
namespace {

// The top-bit field k (bits 2k, 2k + 1 of each byte) moved to bits 4-5, the rest zero.
template <int K>
inline __m512i q6k_top_bits(__m512i h, __m512i mask30) {
  if constexpr (K == 0) return _mm512_and_si512(_mm512_slli_epi16(h, 4), mask30);
  else if constexpr (K == 1) return _mm512_and_si512(_mm512_slli_epi16(h, 2), mask30);
  else if constexpr (K == 2) return _mm512_and_si512(h, mask30);
  else return _mm512_and_si512(_mm512_srli_epi16(h, 2), mask30);
}


// The quant vectors of step K of chunk j of a packed super-block: qa holds
// columns 32j + 4K + i, qb columns 32j + 16 + 4K + i (0..63 each).
template <int K>
inline void q6k_quants(const uint8_t* wb, int j, __m512i h0, __m512i h1, __m512i* qa, __m512i* qb) {
  const __m512i low4 = _mm512_set1_epi8(0x0F), mask30 = _mm512_set1_epi8(0x30);
  const __m512i v = _mm512_loadu_si512(wb + size_t(j) * 256 + size_t(K) * 64);
  *qa = merge_low_nibble(v, q6k_top_bits<K>(h0, mask30), low4);
  *qb = merge_low_nibble(_mm512_srli_epi16(v, 4), q6k_top_bits<K>(h1, mask30), low4);
}

// Batches of many tokens first unpack their groups' quants to bytes, once per
// work item (kQ6KUnpackedBytes per group and super-block: [j][K][qa, qb][64]),
// so the token tiles load them instead of rebuilding them every 6 tokens.
constexpr size_t kQ6KUnpackedBytes = 8 * 4 * 2 * 64;
constexpr size_t kQ6KUnpackMinTokens = 12;

template <int G, int T, int K, bool kU>
inline void q6k_step(const uint8_t* const* wb, const uint8_t* const* ub, const ActQ8K* const* x, size_t sb, int j,
                     const __m512i* h0, const __m512i* h1, __m512i (&dlo)[G][T], __m512i (&dhi)[G][T]) {
  __m512i qa[G], qb[G];
  for (int g = 0; g < G; ++g) {
    if constexpr (kU) {
      const uint8_t* q = ub[g] + size_t(j * 4 + K) * 128;
      qa[g] = _mm512_loadu_si512(q);
      qb[g] = _mm512_loadu_si512(q + 64);
    } else {
      q6k_quants<K>(wb[g], j, h0[g], h1[g], &qa[g], &qb[g]);
    }
  }
  for (int u = 0; u < T; ++u) {
    const int8_t* xq = x[u][sb].qs + 32 * j + 4 * K;
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

// Unpacks groups' packed super-blocks w [n_groups * nsb] into out (kQ6KUnpackedBytes each).
void q6k_unpack(const uint8_t* w, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* wb = w + i * kQ6KPackedBytes;
    uint8_t* o = out + i * kQ6KUnpackedBytes;
    for (int j = 0; j < 8; ++j) {
      const __m512i h0 = _mm512_loadu_si512(wb + kQ6KHbOffset + size_t(j) * 128);
      const __m512i h1 = _mm512_loadu_si512(wb + kQ6KHbOffset + size_t(j) * 128 + 64);
      __m512i q[8];
      q6k_quants<0>(wb, j, h0, h1, &q[0], &q[1]);
      q6k_quants<1>(wb, j, h0, h1, &q[2], &q[3]);
      q6k_quants<2>(wb, j, h0, h1, &q[4], &q[5]);
      q6k_quants<3>(wb, j, h0, h1, &q[6], &q[7]);
      for (int k = 0; k < 8; ++k) _mm512_storeu_si512(o + size_t(j * 8 + k) * 64, q[k]);
    }
  }
}

// u: the groups' unpacked quants when kU (same group and super-block order as w).
template <int G, int T, bool kU>
void q6k_micro(const uint8_t* w, const uint8_t* u, size_t nsb, const ActQ8K* const* x, float* y, size_t ldy,
               __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) acc[g][u] = _mm512_setzero_ps();
  for (size_t sb = 0; sb < nsb; ++sb) {
    __m512i isum[G][T], msum[G][T];
    for (int g = 0; g < G; ++g)
      for (int u = 0; u < T; ++u) isum[g][u] = msum[g][u] = _mm512_setzero_si512();
    const uint8_t* wb[G];
    const uint8_t* ub[G];
    for (int g = 0; g < G; ++g) {
      wb[g] = w + (size_t(g) * nsb + sb) * kQ6KPackedBytes;
      ub[g] = kU ? u + (size_t(g) * nsb + sb) * kQ6KUnpackedBytes : nullptr;
    }
    for (int j = 0; j < 8; ++j) {
      if constexpr (T == 1)
        for (int g = 0; g < G; ++g) prefetch_step<kQ6KPackedBytes>(wb[g], j);
      __m512i dlo[G][T], dhi[G][T];
      for (int g = 0; g < G; ++g)
        for (int u = 0; u < T; ++u) dlo[g][u] = dhi[g][u] = _mm512_setzero_si512();
      __m512i h0[G], h1[G];
      if constexpr (!kU)
        for (int g = 0; g < G; ++g) {
          h0[g] = _mm512_loadu_si512(wb[g] + kQ6KHbOffset + size_t(j) * 128);
          h1[g] = _mm512_loadu_si512(wb[g] + kQ6KHbOffset + size_t(j) * 128 + 64);
        }
      q6k_step<G, T, 0, kU>(wb, ub, x, sb, j, h0, h1, dlo, dhi);
      q6k_step<G, T, 1, kU>(wb, ub, x, sb, j, h0, h1, dlo, dhi);
      q6k_step<G, T, 2, kU>(wb, ub, x, sb, j, h0, h1, dlo, dhi);
      q6k_step<G, T, 3, kU>(wb, ub, x, sb, j, h0, h1, dlo, dhi);
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

// Q6_K batches: 1 group x up to 6 tokens, so each unpacked quant vector serves
// 6 tokens (5 x 6 float, int sum, offset sum and two dot accumulators: 30
// zmm); faster than 2 groups x 3 tokens (docs/tuning.md).
constexpr int kMaxTQ6K = 6;
const Micro kQ6G1[kMaxTQ6K] = {&q6k_micro<1, 1, false>, &q6k_micro<1, 2, false>, &q6k_micro<1, 3, false>,
                                 &q6k_micro<1, 4, false>, &q6k_micro<1, 5, false>, &q6k_micro<1, 6, false>};
const Micro kQ6G1U[kMaxTQ6K] = {&q6k_micro<1, 1, true>, &q6k_micro<1, 2, true>, &q6k_micro<1, 3, true>,
                                  &q6k_micro<1, 4, true>, &q6k_micro<1, 5, true>, &q6k_micro<1, 6, true>};

}  // namespace

void avx512vnni_packed_q6k_tile(const uint8_t* w, size_t rows, size_t nsb, const ActQ8K* x, float* y, size_t ldy,
                                size_t g0, size_t g1, size_t t0, size_t t1) {
  auto mask_for = [&](size_t g_last) -> __mmask16 {
    const size_t left = rows - g_last * kPackRows;
    return left >= kPackRows ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  const size_t gstride = nsb * kQ6KPackedBytes, ustride = nsb * kQ6KUnpackedBytes;
  const bool unpack = t1 - t0 >= kQ6KUnpackMinTokens;
  const uint8_t* u = nullptr;
  if (unpack) {
    // the calling thread's scratch (one work item's groups at a time)
    thread_local std::vector<uint8_t> buf;
    if (buf.size() < (g1 - g0) * ustride) buf.resize((g1 - g0) * ustride);
    q6k_unpack(w + g0 * gstride, (g1 - g0) * nsb, buf.data());
    u = buf.data();
  }
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxTQ6K) ? size_t(kMaxTQ6K) : t1 - t;
    const ActQ8K* xs[kMaxTQ6K];
    for (size_t i = 0; i < tt; ++i) xs[i] = x + (t + i) * nsb;
    size_t g = g0;
    if (tt == 1 && !unpack)
      for (; g + 4 <= g1; g += 4)
        q6k_micro<4, 1, false>(w + g * gstride, nullptr, nsb, xs, y + t * ldy + g * kPackRows, ldy, mask_for(g + 3));
    for (; g < g1; ++g)
      (unpack ? kQ6G1U : kQ6G1)[tt - 1](w + g * gstride, unpack ? u + (g - g0) * ustride : nullptr, nsb, xs,
                                        y + t * ldy + g * kPackRows, ldy, mask_for(g));
    t += tt;
  }
}

}  // namespace defkv::quant::detail

// ---- Q8_K activations -------------------------------------------------------------------
namespace defkv::quant::detail {

// quant_act_q8k (block_dot.cpp) vectorised, bit for bit: mx = the first value
// of largest magnitude, iscale = -127 / mx, q = min(127, round-half-even(iscale
// * x)) (vcvtps2dq under the default rounding mode equals nearest() for
// |v| <= 127), bsums of 16 quants, d = 1 / iscale; a block with NaN or Inf gets
// d = NaN and zero quants, an all-zero block zeros.
void avx512_quantize_q8k(const float* x, ActQ8K* y, size_t nb) {
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 fmax = _mm512_set1_ps(3.4028235e38f);
  for (size_t i = 0; i < nb; ++i, x += kQK_K) {
    __m512 m = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (size_t c = 0; c < kQK_K; c += 16) {
      const __m512 a = _mm512_and_ps(_mm512_loadu_ps(x + c), abs_mask);
      bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);  // NaN or > FLT_MAX
      m = _mm512_max_ps(m, a);
    }
    std::memset(&y[i], 0, sizeof(ActQ8K));
    if (bad != 0) {
      y[i].d = __builtin_nanf("");
      continue;
    }
    const float amax = _mm512_reduce_max_ps(m);
    if (amax == 0.0f) continue;
    float mx = 0.0f;
    const __m512 am = _mm512_set1_ps(amax);
    for (size_t c = 0; c < kQK_K; c += 16) {
      const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_and_ps(_mm512_loadu_ps(x + c), abs_mask), am, _CMP_EQ_OQ);
      if (hit != 0) {
        mx = x[c + size_t(__builtin_ctz(hit))];
        break;
      }
    }
    const float iscale = -127.0f / mx;
    const __m512 is = _mm512_set1_ps(iscale);
    const __m512i q127 = _mm512_set1_epi32(127);
    for (size_t c = 0; c < kQK_K; c += 16) {
      const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(is, _mm512_loadu_ps(x + c))), q127);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].qs + c), _mm512_cvtepi32_epi8(q));
      y[i].bsums[c / 16] = int16_t(_mm512_reduce_add_epi32(q));
    }
    y[i].d = 1.0f / iscale;
  }
}

}  // namespace defkv::quant::detail
