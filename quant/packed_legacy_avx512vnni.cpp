// Packed Q4_0, Q4_1, Q5_0 and Q5_1 (quant::Packed) on AVX-512 VNNI; layout in
// packed_legacy.h. A micro-kernel computes G groups x T tokens, one zmm lane
// per row: per 32-column block, int32 accumulators start at -offset * sum(x_q)
// (the level offset: 8 for Q4_0, 16 for Q5_0, none for the _1 types) and take
// 8 vpdpbusd (unsigned levels x broadcast int8 activations), then one fma adds
// dot * d_w * d_x; the _1 types add their min term m_w * d_x * sum(x_q) with a
// second fma. Q5's fifth bits are 64-bit byte masks: one masked vpaddb adds 16
// to the levels whose bit is set.
// Decode (T = 1): low and high nibbles feed two accumulators (two dependency
// chains); Q4's high nibbles are taken in place (v & 0xF0, 16 x the level), so
// the unpack is one and per nibble and the dot is lo + hi / 16 exactly.
// Batches shift the high nibble down instead (one accumulator: the 2 x 6 tile
// has no registers for two).
// The activations are those of the packed q8_0 kernel (PackedActs: per
// 32-block, d = amax/127, nearest even; corr = -128 * sum(q), so -offset *
// sum(q) is corr * offset / 128 exactly), the same as matmul()'s.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/packed_legacy.h"

namespace defkv::quant::detail {
namespace {

constexpr size_t kQsBytes = 256;  // qs bytes per (group, block)

// A type's level offset, fifth-bit plane and min term.
template <int Offset, bool Five, bool Min>
struct LegacyTraits {
  static constexpr int kOffset = Offset;
  static constexpr bool kFive = Five, kMin = Min;
};
using Q4_0L = LegacyTraits<8, false, false>;
using Q4_1L = LegacyTraits<0, false, true>;
using Q5_0L = LegacyTraits<16, true, false>;
using Q5_1L = LegacyTraits<0, true, true>;

// w: the planes at the micro-kernel's first group; groups are nb blocks apart.
template <class L, int G, int T>
void legacy_micro(const LegacyPlanes& w, size_t nb, const PackedActs& x, size_t t, size_t cols, float* y,
                  size_t ldy, __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < T; ++u) acc[g][u] = _mm512_setzero_ps();
  constexpr bool kSplit = T == 1;
  // Q4 decode keeps the high nibble in place (16 x the level)
  constexpr bool kInPlace = kSplit && !L::kFive;
  const __m512i low4 = _mm512_set1_epi8(0x0F), high4 = _mm512_set1_epi8(char(0xF0));
  const __m512i bit4 = _mm512_set1_epi8(0x10);
  for (size_t b = 0; b < nb; ++b) {
    __m512i ia[G][T], ih[G][T];
    for (int u = 0; u < T; ++u) {
      const __m512i c = L::kOffset != 0 ? _mm512_set1_epi32(x.corr[(t + size_t(u)) * nb + b] / (128 / L::kOffset))
                                        : _mm512_setzero_si512();
      for (int g = 0; g < G; ++g) {
        ia[g][u] = c;
        ih[g][u] = _mm512_setzero_si512();
      }
    }
    const uint8_t* wb = w.qs + b * kQsBytes;
    const uint64_t* hb = L::kFive ? w.qh + b * 8 : nullptr;
    if constexpr (T == 1) {
      // 4 blocks ahead into L2, as the q8_0 kernel (docs/tuning.md)
      for (int g = 0; g < G; ++g) {
        for (int l = 0; l < 4; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(wb + size_t(g) * nb * kQsBytes + 1024 + size_t(l) * 64),
                       _MM_HINT_T1);
        if constexpr (L::kFive)
          _mm_prefetch(reinterpret_cast<const char*>(hb + size_t(g) * nb * 8 + 32), _MM_HINT_T1);
      }
    }
    for (int k = 0; k < 4; ++k) {
      __m512i lo[G], hi[G];
      for (int g = 0; g < G; ++g) {
        const __m512i v = _mm512_loadu_si512(wb + size_t(g) * nb * kQsBytes + size_t(k) * 64);
        lo[g] = _mm512_and_si512(v, low4);
        if constexpr (kInPlace) hi[g] = _mm512_and_si512(v, high4);
        else hi[g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        if constexpr (L::kFive) {
          const uint64_t* h = hb + size_t(g) * nb * 8 + 2 * k;
          lo[g] = _mm512_mask_add_epi8(lo[g], __mmask64(h[0]), lo[g], bit4);
          hi[g] = _mm512_mask_add_epi8(hi[g], __mmask64(h[1]), hi[g], bit4);
        }
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
      const size_t tile = size_t(g) * nb + b;
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.d + tile * kPackRows)));
      for (int u = 0; u < T; ++u) {
        __m512i dot = ia[g][u];
        if constexpr (kInPlace) dot = _mm512_add_epi32(dot, _mm512_srai_epi32(ih[g][u], 4));
        else if constexpr (kSplit) dot = _mm512_add_epi32(dot, ih[g][u]);
        acc[g][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(x.d[(t + size_t(u)) * nb + b])),
                                    acc[g][u]);
      }
      if constexpr (L::kMin) {
        const __m512 mw =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.m + tile * kPackRows)));
        for (int u = 0; u < T; ++u) {
          // the activation block's d * sum(q), as ActQ8::s
          const size_t i = (t + size_t(u)) * nb + b;
          const float s = x.d[i] * float(-x.corr[i] / 128);
          acc[g][u] = _mm512_fmadd_ps(mw, _mm512_set1_ps(s), acc[g][u]);
        }
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

// Batches: 2 groups x 6 tokens (as the q8_0 kernel); decode: 4 groups x 1 token.
constexpr int kMaxT = 6;
using Micro = void (*)(const LegacyPlanes&, size_t, const PackedActs&, size_t, size_t, float*, size_t, __mmask16);

template <class L>
void legacy_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y, size_t ldy, size_t g0,
                 size_t g1, size_t t0, size_t t1) {
  static const Micro kG2[kMaxT] = {&legacy_micro<L, 2, 1>, &legacy_micro<L, 2, 2>, &legacy_micro<L, 2, 3>,
                                   &legacy_micro<L, 2, 4>, &legacy_micro<L, 2, 5>, &legacy_micro<L, 2, 6>};
  static const Micro kG1[kMaxT] = {&legacy_micro<L, 1, 1>, &legacy_micro<L, 1, 2>, &legacy_micro<L, 1, 3>,
                                   &legacy_micro<L, 1, 4>, &legacy_micro<L, 1, 5>, &legacy_micro<L, 1, 6>};
  const size_t cols = nb * kQ4_0Cols;
  auto mask_for = [&](size_t g_last) -> __mmask16 {
    const size_t left = rows - g_last * kPackRows;
    return left >= kPackRows ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  auto at = [&](size_t g) {
    const size_t tile = g * nb;
    return LegacyPlanes{w.qs + tile * kQsBytes, L::kFive ? w.qh + tile * 8 : nullptr, w.d + tile * kPackRows,
                        L::kMin ? w.m + tile * kPackRows : nullptr};
  };
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxT) ? size_t(kMaxT) : t1 - t;
    size_t g = g0;
    if (tt == 1)
      for (; g + 4 <= g1; g += 4)
        legacy_micro<L, 4, 1>(at(g), nb, x, t, cols, y + t * ldy + g * kPackRows, ldy, mask_for(g + 3));
    for (; g + 2 <= g1; g += 2)
      kG2[tt - 1](at(g), nb, x, t, cols, y + t * ldy + g * kPackRows, ldy, mask_for(g + 1));
    for (; g < g1; ++g) kG1[tt - 1](at(g), nb, x, t, cols, y + t * ldy + g * kPackRows, ldy, mask_for(g));
    t += tt;
  }
}

}  // namespace

void avx512vnni_packed_q4_0_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1) {
  legacy_tile<Q4_0L>(w, rows, nb, x, y, ldy, g0, g1, t0, t1);
}
void avx512vnni_packed_q4_1_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1) {
  legacy_tile<Q4_1L>(w, rows, nb, x, y, ldy, g0, g1, t0, t1);
}
void avx512vnni_packed_q5_0_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1) {
  legacy_tile<Q5_0L>(w, rows, nb, x, y, ldy, g0, g1, t0, t1);
}
void avx512vnni_packed_q5_1_tile(const LegacyPlanes& w, size_t rows, size_t nb, const PackedActs& x, float* y,
                                 size_t ldy, size_t g0, size_t g1, size_t t0, size_t t1) {
  legacy_tile<Q5_1L>(w, rows, nb, x, y, ldy, g0, g1, t0, t1);
}

}  // namespace defkv::quant::detail
