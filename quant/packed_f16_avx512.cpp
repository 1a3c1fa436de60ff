// AVX-512 kernels for packed f16 / bf16 weights (quant::Packed, see
// packed.cpp for the layout): panels of 16 rows, one 32-byte vector of 16
// fp16 (or bf16) per column (lane = row). One vcvtph2ps (bf16: a widening
// shift) feeds 16 rows' FMAs against one broadcast activation; no horizontal
// sums. Compiled with the AVX-512 flags; called only when
// simd::k().isa == avx512.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "quant/matmul_isa.h"

namespace defkv::quant::detail {
namespace {

constexpr size_t kPanelHalves = kPackRowsF16;  // fp16 per column of a panel
// Decode prefetch distance per panel stream, into L2 as the q8_0 kernel
// (512-2048 B within noise; 4 panel streams fastest; docs/tuning.md).
constexpr size_t kF16PrefetchBytes = 1024;

// One column of a panel as 16 floats (exact for both types).
template <bool BF16>
inline __m512 load_col(const uint16_t* p) {
  const __m256i h = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  if constexpr (BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  else return _mm512_cvtph_ps(h);
}

inline void store_rows(float* y, __m512 v, __mmask16 mask) {
  if (mask == 0xFFFF) _mm512_storeu_ps(y, v);
  else _mm512_mask_storeu_ps(y, mask, v);
}

// One token, P panels at once (P streams, cols*32 bytes apart), 8/P
// accumulators per panel over column phases so the FMA latency is hidden.
template <bool BF16, int P>
void decode_panels(const uint16_t* w, size_t cols, const float* x, float* y, __mmask16 last_mask) {
  constexpr int A = 8 / P;  // accumulators per panel
  const size_t panel = cols * kPanelHalves;
  __m512 acc[P][A];
  for (int p = 0; p < P; ++p)
    for (int a = 0; a < A; ++a) acc[p][a] = _mm512_setzero_ps();
  size_t c = 0;
  for (; c + 4 <= cols; c += 4) {  // 4 columns = one 128-byte pair of lines per panel
    for (int p = 0; p < P; ++p) {
      const uint16_t* wc = w + size_t(p) * panel + c * kPanelHalves;
      if (c % 8 == 0)
        for (int l = 0; l < 4; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(wc) + kF16PrefetchBytes + l * 64, _MM_HINT_T1);
      for (int j = 0; j < 4; ++j)
        acc[p][j % A] = _mm512_fmadd_ps(load_col<BF16>(wc + size_t(j) * kPanelHalves), _mm512_set1_ps(x[c + size_t(j)]), acc[p][j % A]);
    }
  }
  for (; c < cols; ++c)
    for (int p = 0; p < P; ++p)
      acc[p][0] = _mm512_fmadd_ps(load_col<BF16>(w + size_t(p) * panel + c * kPanelHalves), _mm512_set1_ps(x[c]), acc[p][0]);
  for (int p = 0; p < P; ++p) {
    __m512 s = acc[p][0];
    for (int a = 1; a < A; ++a) s = _mm512_add_ps(s, acc[p][a]);
    store_rows(y + size_t(p) * kPackRowsF16, s, p == P - 1 ? last_mask : 0xFFFF);
  }
}

// G panels x T tokens: G*T accumulators, per column G conversions and T
// broadcasts for G*T FMAs (2 x 12 = 24 accumulators fills the register file).
template <bool BF16, int G, int T>
void batch_micro(const uint16_t* w, size_t cols, const float* x, size_t ldx, float* y, size_t ldy,
                 __mmask16 last_mask) {
  __m512 acc[G][T];
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < T; ++t) acc[g][t] = _mm512_setzero_ps();
  const size_t panel = cols * kPanelHalves;
  for (size_t c = 0; c < cols; ++c) {
    __m512 wv[G];
    for (int g = 0; g < G; ++g) wv[g] = load_col<BF16>(w + size_t(g) * panel + c * kPanelHalves);
    for (int t = 0; t < T; ++t) {
      const __m512 xb = _mm512_set1_ps(x[size_t(t) * ldx + c]);
      for (int g = 0; g < G; ++g) acc[g][t] = _mm512_fmadd_ps(wv[g], xb, acc[g][t]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < T; ++t)
      store_rows(y + size_t(t) * ldy + size_t(g) * kPackRowsF16, acc[g][t], g == G - 1 ? last_mask : 0xFFFF);
}

constexpr int kMaxT = 12;
using BatchMicro = void (*)(const uint16_t*, size_t, const float*, size_t, float*, size_t, __mmask16);
template <bool BF16, int T>
void fill_t(BatchMicro (&g1)[kMaxT], BatchMicro (&g2)[kMaxT]) {
  g1[T - 1] = &batch_micro<BF16, 1, T>;
  g2[T - 1] = &batch_micro<BF16, 2, T>;
  if constexpr (T > 1) fill_t<BF16, T - 1>(g1, g2);
}

template <bool BF16>
struct Tables {
  BatchMicro g1[kMaxT], g2[kMaxT];
  Tables() { fill_t<BF16, kMaxT>(g1, g2); }
};
template <bool BF16>
const Tables<BF16>& tables() {
  static const Tables<BF16> t;
  return t;
}

template <bool BF16>
void packed_tile(const uint16_t* w, size_t rows, size_t cols, const float* x, float* y, size_t ldy, size_t p0,
                 size_t p1, size_t t0, size_t t1) {
  const size_t panel = cols * kPanelHalves;
  auto mask_for = [&](size_t p_last) -> __mmask16 {
    const size_t left = rows - p_last * kPackRowsF16;
    return left >= kPackRowsF16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  };
  if (t1 - t0 == 1) {
    size_t p = p0;
    for (; p + 4 <= p1; p += 4)
      decode_panels<BF16, 4>(w + p * panel, cols, x + t0 * cols, y + t0 * ldy + p * kPackRowsF16, mask_for(p + 3));
    for (; p + 2 <= p1; p += 2)
      decode_panels<BF16, 2>(w + p * panel, cols, x + t0 * cols, y + t0 * ldy + p * kPackRowsF16, mask_for(p + 1));
    for (; p < p1; ++p)
      decode_panels<BF16, 1>(w + p * panel, cols, x + t0 * cols, y + t0 * ldy + p * kPackRowsF16, mask_for(p));
    return;
  }
  const Tables<BF16>& tab = tables<BF16>();
  for (size_t t = t0; t < t1;) {
    const size_t tt = t1 - t >= size_t(kMaxT) ? size_t(kMaxT) : t1 - t;
    size_t p = p0;
    for (; p + 2 <= p1; p += 2)
      tab.g2[tt - 1](w + p * panel, cols, x + t * cols, cols, y + t * ldy + p * kPackRowsF16, ldy, mask_for(p + 1));
    for (; p < p1; ++p)
      tab.g1[tt - 1](w + p * panel, cols, x + t * cols, cols, y + t * ldy + p * kPackRowsF16, ldy, mask_for(p));
    t += tt;
  }
}

}  // namespace

void avx512_packed_f16_tile(const uint16_t* w, bool is_bf16, size_t rows, size_t cols, const float* x, float* y,
                            size_t ldy, size_t p0, size_t p1, size_t t0, size_t t1) {
  if (is_bf16) packed_tile<true>(w, rows, cols, x, y, ldy, p0, p1, t0, t1);
  else packed_tile<false>(w, rows, cols, x, y, ldy, p0, p1, t0, t1);
}

}  // namespace defkv::quant::detail
