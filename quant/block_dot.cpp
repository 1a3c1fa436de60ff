// Activation quantisation for the low-bit products and the scalar block dot
// products (the reference every SIMD kernel is tested against). Integer sums
// are exact; the float combination per block is d_w * d_x * isum (+ min terms).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "quant/blocks.h"
#include "simd/simd.h"

namespace defkv::quant {

namespace {

float h2f(uint16_t h) { return simd::f16_to_f32(h); }

// nearest integer, ties to even (|v| <= 2^22)
int nearest(float v) { return int((v + 12582912.0f) - 12582912.0f); }

// A block holding NaN or Inf gets scale NaN and zero quants: its products
// stay NaN (as the float product would) instead of becoming finite numbers.
bool finite_block(const float* x, size_t n) {
  bool ok = true;
  for (size_t j = 0; j < n; ++j) ok = ok && std::fabs(x[j]) <= 3.4028235e38f;  // false for NaN and Inf
  return ok;
}

void quant_act_q8(const float* x, ActQ8* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK) {
    if (!finite_block(x, kQK)) {
      std::memset(y[i].qs, 0, sizeof y[i].qs);
      y[i].d = y[i].s = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    float amax = 0.0f;
    for (size_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (size_t j = 0; j < kQK; ++j) {
      y[i].qs[j] = int8_t(nearest(x[j] * id));
      sum += y[i].qs[j];
    }
    y[i].d = d;
    y[i].s = d * float(sum);
  }
}

void quant_act_q8k(const float* x, ActQ8K* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK_K) {
    if (!finite_block(x, kQK_K)) {
      std::memset(&y[i], 0, sizeof(ActQ8K));
      y[i].d = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    float amax = 0.0f, mx = 0.0f;
    for (size_t j = 0; j < kQK_K; ++j)
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        mx = x[j];
      }
    if (amax == 0.0f) {
      std::memset(&y[i], 0, sizeof(ActQ8K));
      continue;
    }
    const float iscale = -127.0f / mx;
    for (size_t j = 0; j < kQK_K; ++j) y[i].qs[j] = int8_t(std::min(127, nearest(iscale * x[j])));
    for (size_t k = 0; k < kQK_K / 16; ++k) {
      int s = 0;
      for (size_t j = 0; j < 16; ++j) s += y[i].qs[16 * k + j];
      y[i].bsums[k] = int16_t(s);
    }
    y[i].d = 1.0f / iscale;
  }
}

bool is_k(DType t) { return t == DType::q4_K || t == DType::q5_K || t == DType::q6_K; }

// ---- scalar block dots --------------------------------------------------------------------

float dot_q4_0(const BlockQ4_0* w, const ActQ8* a, size_t nb) {
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    int s = 0;
    for (size_t j = 0; j < kQK / 2; ++j)
      s += ((w[i].qs[j] & 0xF) - 8) * a[i].qs[j] + ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
    acc += float(s) * (h2f(w[i].d) * a[i].d);
  }
  return acc;
}

float dot_q4_1(const BlockQ4_1* w, const ActQ8* a, size_t nb) {
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    int s = 0;
    for (size_t j = 0; j < kQK / 2; ++j) s += (w[i].qs[j] & 0xF) * a[i].qs[j] + (w[i].qs[j] >> 4) * a[i].qs[j + 16];
    acc += float(s) * (h2f(w[i].d) * a[i].d) + h2f(w[i].m) * a[i].s;
  }
  return acc;
}

template <class B, bool kMin>
float dot_q5(const B* w, const ActQ8* a, size_t nb) {
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    uint32_t qh;
    std::memcpy(&qh, w[i].qh, 4);
    const int off = kMin ? 0 : 16;
    int s = 0;
    for (size_t j = 0; j < kQK / 2; ++j) {
      const int q0 = ((w[i].qs[j] & 0xF) | int(((qh >> j) & 1) << 4)) - off;
      const int q1 = ((w[i].qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4)) - off;
      s += q0 * a[i].qs[j] + q1 * a[i].qs[j + 16];
    }
    acc += float(s) * (h2f(w[i].d) * a[i].d);
    if constexpr (kMin) acc += h2f(w[i].m) * a[i].s;
  }
  return acc;
}

// Q4_K / Q5_K: sum_j sc_j * (q . x over sub-block j) scaled by d * d_x, minus
// dmin * d_x * sum_j m_j * (sum of x over sub-block j, from bsums).
template <bool k5, class B>
float dot_k45(const B* w, const ActQ8K* a, size_t nb) {
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    int32_t sum_q = 0, sum_m = 0;
    for (size_t c = 0; c < 4; ++c) {
      for (size_t h = 0; h < 2; ++h) {
        const size_t j = 2 * c + h;
        uint8_t sc, m;
        k4_scale_min(j, w[i].scales, &sc, &m);
        int32_t s = 0;
        for (size_t l = 0; l < 32; ++l) {
          const uint8_t byte = w[i].qs[32 * c + l];
          int q = h ? byte >> 4 : byte & 0xF;
          if constexpr (k5) q |= ((w[i].qh[l] >> j) & 1) << 4;
          s += q * a[i].qs[32 * j + l];
        }
        sum_q += int32_t(sc) * s;
        sum_m += int32_t(m) * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
      }
    }
    acc += h2f(w[i].d) * a[i].d * float(sum_q) - h2f(w[i].dmin) * a[i].d * float(sum_m);
  }
  return acc;
}

float dot_q6_K(const BlockQ6_K* w, const ActQ8K* a, size_t nb) {
  float acc = 0.0f;
  for (size_t i = 0; i < nb; ++i) {
    int32_t total = 0;
    for (size_t h = 0; h < 2; ++h) {
      const uint8_t* ql = w[i].ql + 64 * h;
      const uint8_t* qh = w[i].qh + 32 * h;
      const int8_t* sc = w[i].scales + 8 * h;
      const int8_t* x = a[i].qs + 128 * h;
      int32_t s[8] = {};
      for (size_t l = 0; l < 32; ++l) {
        const size_t is = l / 16;
        s[is + 0] += (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32) * x[l];
        s[is + 2] += (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * x[l + 32];
        s[is + 4] += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * x[l + 64];
        s[is + 6] += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * x[l + 96];
      }
      for (size_t k = 0; k < 8; ++k) total += int32_t(sc[k]) * s[k];
    }
    acc += h2f(w[i].d) * a[i].d * float(total);
  }
  return acc;
}

}  // namespace

size_t act_block_bytes(DType t) {
  if (is_k(t)) return sizeof(ActQ8K);
  if (is_low_bit(t)) return sizeof(ActQ8);
  throw std::runtime_error(std::string("act_block_bytes: not a low-bit type: ") + dtype_name(t));
}

void quantize_acts(DType t, const float* x, void* acts, size_t n) {
  if (is_k(t)) return quant_act_q8k(x, static_cast<ActQ8K*>(acts), n / kQK_K);
  if (is_low_bit(t)) return quant_act_q8(x, static_cast<ActQ8*>(acts), n / kQK);
  throw std::runtime_error(std::string("quantize_acts: not a low-bit type: ") + dtype_name(t));
}

float block_dot_ref(DType t, const void* row, const void* acts, size_t nb) {
  const auto* a8 = static_cast<const ActQ8*>(acts);
  const auto* ak = static_cast<const ActQ8K*>(acts);
  switch (t) {
    case DType::q4_0: return dot_q4_0(static_cast<const BlockQ4_0*>(row), a8, nb);
    case DType::q4_1: return dot_q4_1(static_cast<const BlockQ4_1*>(row), a8, nb);
    case DType::q5_0: return dot_q5<BlockQ5_0, false>(static_cast<const BlockQ5_0*>(row), a8, nb);
    case DType::q5_1: return dot_q5<BlockQ5_1, true>(static_cast<const BlockQ5_1*>(row), a8, nb);
    case DType::q4_K: return dot_k45<false>(static_cast<const BlockQ4_K*>(row), ak, nb);
    case DType::q5_K: return dot_k45<true>(static_cast<const BlockQ5_K*>(row), ak, nb);
    case DType::q6_K: return dot_q6_K(static_cast<const BlockQ6_K*>(row), ak, nb);
    default: break;
  }
  throw std::runtime_error(std::string("block_dot_ref: not a low-bit type: ") + dtype_name(t));
}

}  // namespace defkv::quant
