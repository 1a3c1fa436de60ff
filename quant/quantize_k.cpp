// K-quant reference quantisers (Q4_K, Q5_K, Q6_K): the search ggml's
// quantize_row_q{4,5,6}_K_ref runs (what llama-quantize writes without an
// importance matrix), with the same float operations in the same order so the
// blocks come out byte-identical. Floating-point contraction into FMAs would
// change roundings (and so bytes) on targets that have FMA: it is disabled here.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/blocks.h"
#include "simd/simd.h"

namespace defkv::quant {

namespace {

constexpr float kGroupMaxEps = 1e-15f;

// Round to nearest (ties to even) for |f| <= 2^22, as ggml's nearest_int.
int nearest_int(float f) {
  const float v = f + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Scale and min of a sub-block of n values on levels [0, nmax], weighted
// least squares over a grid of nstep + 1 candidate scales (ggml's make_qkx2_quants).
float qkx2(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
           float rmin, float rdelta, int nstep) {
  float mn = x[0], mx = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < mn) mn = x[i];
    if (x[i] > mx) mx = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (mn > 0) mn = 0;
  if (mx == mn) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -mn;
    return 0.0f;
  }
  float iscale = nmax / (mx - mn);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - mn));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + mn - x[i];
    diff = diff * diff;
    best_error += w[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (mx - mn);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - mn));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = uint8_t(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = diff * diff;
        cur_error += w[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        mn = this_min;
      }
    }
  }
  *the_min = -mn;
  return scale;
}

// Symmetric scale of n values on levels [-nmax, nmax - 1] weighted by x^2
// (ggml's make_qx_quants with rmse_type 1, no importance weights). L = level + nmax.
float qx(int n, int nmax, const float* x, int8_t* L) {
  float mx = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      mx = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  float iscale = -nmax / mx;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / mx;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = int8_t(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q4_K / Q5_K (nmax 15 / 31): 6-bit sub-block scales and mins, then the
// quants requantised with the stored (fp16-rounded) scales. Writes d, dmin,
// scales[12] and the levels L[256].
void k_scales(const float* x, int nmax, float rmin, float rdelta, int nstep, uint16_t* d_out,
              uint16_t* dmin_out, uint8_t* scales, uint8_t* L) {
  float mins[8], sc[8], weights[32];
  uint8_t Laux[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    sc[j] = qkx2(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep);
    if (sc[j] > max_scale) max_scale = sc[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < 8; ++j) {
    uint8_t ls = uint8_t(nearest_int(inv_scale * sc[j]));
    uint8_t lm = uint8_t(nearest_int(inv_min * mins[j]));
    ls = std::min<uint8_t>(63, ls);
    lm = std::min<uint8_t>(63, lm);
    if (j < 4) {
      scales[j] = ls;
      scales[j + 4] = lm;
    } else {
      scales[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
      scales[j - 4] |= uint8_t((ls >> 4) << 6);
      scales[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  *d_out = simd::f32_to_f16(max_scale / 63.f);
  *dmin_out = simd::f32_to_f16(max_min / 63.f);
  const float d = simd::f16_to_f32(*d_out), dmin = simd::f16_to_f32(*dmin_out);
  for (int j = 0; j < 8; ++j) {
    uint8_t s, m;
    k4_scale_min(size_t(j), scales, &s, &m);
    const float dj = d * s;
    if (!dj) continue;
    const float dm = dmin * m;
    for (int ii = 0; ii < 32; ++ii) {
      const int l = nearest_int((x[32 * j + ii] + dm) / dj);
      L[32 * j + ii] = uint8_t(std::max(0, std::min(nmax, l)));
    }
  }
}

void quant_q4_K(const float* x, BlockQ4_K* y, size_t nb) {
  uint8_t L[kQK_K];
  for (size_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(y[i].scales, 0, sizeof y[i].scales);
    k_scales(x, 15, -1.f, 0.1f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
    uint8_t* q = y[i].qs;
    for (size_t j = 0; j < kQK_K; j += 64, q += 32)
      for (size_t l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
  }
}

void quant_q5_K(const float* x, BlockQ5_K* y, size_t nb) {
  uint8_t L[kQK_K];
  for (size_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(y[i].scales, 0, sizeof y[i].scales);
    k_scales(x, 31, -0.5f, 0.1f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
    uint8_t* qh = y[i].qh;
    uint8_t* ql = y[i].qs;
    std::memset(qh, 0, kQK_K / 8);
    uint8_t m1 = 1, m2 = 2;
    for (size_t n = 0; n < kQK_K; n += 64, ql += 32) {
      for (size_t j = 0; j < 32; ++j) {
        int l1 = L[n + j], l2 = L[n + j + 32];
        if (l1 > 15) {
          l1 -= 16;
          qh[j] |= m1;
        }
        if (l2 > 15) {
          l2 -= 16;
          qh[j] |= m2;
        }
        ql[j] = uint8_t(l1 | (l2 << 4));
      }
      m1 = uint8_t(m1 << 2);
      m2 = uint8_t(m2 << 2);
    }
  }
}

void quant_q6_K(const float* x, BlockQ6_K* y, size_t nb) {
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  for (size_t i = 0; i < nb; ++i, x += kQK_K) {
    float max_scale = 0, max_abs_scale = 0;
    for (size_t ib = 0; ib < kQK_K / 16; ++ib) {
      const float s = qx(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = s;
      if (std::fabs(s) > max_abs_scale) {
        max_abs_scale = std::fabs(s);
        max_scale = s;
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      y[i].d = simd::f32_to_f16(0.f);
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = simd::f32_to_f16(1 / iscale);
    for (size_t ib = 0; ib < kQK_K / 16; ++ib)
      y[i].scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
    const float d16 = simd::f16_to_f32(y[i].d);
    for (size_t j = 0; j < kQK_K / 16; ++j) {
      const float d = d16 * y[i].scales[j];
      if (!d) continue;
      for (size_t ii = 0; ii < 16; ++ii) {
        const int l = nearest_int(x[16 * j + ii] / d);
        L[16 * j + ii] = int8_t(std::max(-32, std::min(31, l)) + 32);
      }
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (size_t j = 0; j < kQK_K; j += 128, ql += 64, qh += 32) {
      for (size_t l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
        ql[l] = uint8_t(q1 | (q3 << 4));
        ql[l + 32] = uint8_t(q2 | (q4 << 4));
        qh[l] = uint8_t((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                        ((L[j + l + 96] >> 4) << 6));
      }
    }
  }
}

}  // namespace

void quantize_k_row(DType t, const float* x, void* row, size_t n) {
  const size_t nb = n / kQK_K;
  switch (t) {
    case DType::q4_K: return quant_q4_K(x, static_cast<BlockQ4_K*>(row), nb);
    case DType::q5_K: return quant_q5_K(x, static_cast<BlockQ5_K*>(row), nb);
    case DType::q6_K: return quant_q6_K(x, static_cast<BlockQ6_K*>(row), nb);
    default: return;
  }
}

}  // namespace defkv::quant
