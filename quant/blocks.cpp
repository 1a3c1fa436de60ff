// Low-bit block rows: dequantisation (all types) and the legacy reference
// quantisers (Q4_0, Q4_1, Q5_0, Q5_1); the K-quant quantisers are in
// quantize_k.cpp. Same float operations as ggml's *_ref / dequantize_row_*,
// so the bytes and values match llama.cpp's.
#include <cfloat>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "quant/blocks.h"
#include "simd/simd.h"

namespace defkv::quant {

void quantize_k_row(DType t, const float* x, void* row, size_t n);  // quantize_k.cpp

namespace {

float h2f(uint16_t h) { return simd::f16_to_f32(h); }
uint16_t f2h(float f) { return simd::f32_to_f16(f); }

uint32_t load_qh(const uint8_t* qh) {
  uint32_t v;
  std::memcpy(&v, qh, 4);
  return v;
}

void deq_q4_0(const BlockQ4_0* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    for (size_t j = 0; j < kQK / 2; ++j) {
      y[j] = float((x[i].qs[j] & 0xF) - 8) * d;
      y[j + kQK / 2] = float((x[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void deq_q4_1(const BlockQ4_1* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d), m = h2f(x[i].m);
    for (size_t j = 0; j < kQK / 2; ++j) {
      y[j] = float(x[i].qs[j] & 0xF) * d + m;
      y[j + kQK / 2] = float(x[i].qs[j] >> 4) * d + m;
    }
  }
}

template <class B, bool kMin>
void deq_q5(const B* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    const uint32_t qh = load_qh(x[i].qh);
    for (size_t j = 0; j < kQK / 2; ++j) {
      const int h0 = int((qh >> j) << 4) & 0x10, h1 = int(qh >> (j + 12)) & 0x10;
      const int q0 = (x[i].qs[j] & 0xF) | h0, q1 = (x[i].qs[j] >> 4) | h1;
      if constexpr (kMin) {
        const float m = h2f(x[i].m);
        y[j] = float(q0) * d + m;
        y[j + kQK / 2] = float(q1) * d + m;
      } else {
        y[j] = float(q0 - 16) * d;
        y[j + kQK / 2] = float(q1 - 16) * d;
      }
    }
  }
}

void deq_q4_K(const BlockQ4_K* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
    const uint8_t* q = x[i].qs;
    for (size_t c = 0; c < 4; ++c, q += 32) {
      uint8_t sc, m;
      k4_scale_min(2 * c, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      k4_scale_min(2 * c + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (size_t l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
      for (size_t l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
    }
  }
}

void deq_q5_K(const BlockQ5_K* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    uint8_t u1 = 1, u2 = 2;
    for (size_t c = 0; c < 4; ++c, ql += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t sc, m;
      k4_scale_min(2 * c, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      k4_scale_min(2 * c + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (size_t l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (size_t l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
  }
}

void deq_q6_K(const BlockQ6_K* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (size_t h = 0; h < 2; ++h, y += 128, ql += 64, qh += 32, sc += 8) {
      for (size_t l = 0; l < 32; ++l) {
        const size_t is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * float(sc[is + 0]) * float(q1);
        y[l + 32] = d * float(sc[is + 2]) * float(q2);
        y[l + 64] = d * float(sc[is + 4]) * float(q3);
        y[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
    }
  }
}

// ---- legacy reference quantisers ------------------------------------------------------

// The value of largest magnitude (first one on ties), as ggml's loops find it.
float signed_absmax(const float* x, size_t n) {
  float amax = 0.0f, max = 0.0f;
  for (size_t j = 0; j < n; ++j)
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  return max;
}

void min_max(const float* x, size_t n, float* mn, float* mx) {
  *mn = FLT_MAX;
  *mx = -FLT_MAX;
  for (size_t j = 0; j < n; ++j) {
    if (x[j] < *mn) *mn = x[j];
    if (x[j] > *mx) *mx = x[j];
  }
}

void quant_q4_0(const float* x, BlockQ4_0* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK) {
    const float d = signed_absmax(x, kQK) / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    for (size_t j = 0; j < kQK / 2; ++j) {
      const uint8_t a = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
      const uint8_t b = uint8_t(std::min(15, int(int8_t(x[j + kQK / 2] * id + 8.5f))));
      y[i].qs[j] = uint8_t(a | (b << 4));
    }
  }
}

void quant_q4_1(const float* x, BlockQ4_1* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK) {
    float mn, mx;
    min_max(x, kQK, &mn, &mx);
    const float d = (mx - mn) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    y[i].m = f2h(mn);
    for (size_t j = 0; j < kQK / 2; ++j) {
      const uint8_t a = uint8_t(std::min(15, int(int8_t((x[j] - mn) * id + 0.5f))));
      const uint8_t b = uint8_t(std::min(15, int(int8_t((x[j + kQK / 2] - mn) * id + 0.5f))));
      y[i].qs[j] = uint8_t(a | (b << 4));
    }
  }
}

void quant_q5_0(const float* x, BlockQ5_0* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK) {
    const float d = signed_absmax(x, kQK) / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    uint32_t qh = 0;
    for (size_t j = 0; j < kQK / 2; ++j) {
      const uint8_t a = uint8_t(std::min(31, int(int8_t(x[j] * id + 16.5f))));
      const uint8_t b = uint8_t(std::min(31, int(int8_t(x[j + kQK / 2] * id + 16.5f))));
      y[i].qs[j] = uint8_t((a & 0xF) | ((b & 0xF) << 4));
      qh |= uint32_t((a & 0x10u) >> 4) << j;
      qh |= uint32_t((b & 0x10u) >> 4) << (j + kQK / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void quant_q5_1(const float* x, BlockQ5_1* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK) {
    float mn, mx;
    min_max(x, kQK, &mn, &mx);
    const float d = (mx - mn) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    y[i].m = f2h(mn);
    uint32_t qh = 0;
    for (size_t j = 0; j < kQK / 2; ++j) {
      const auto a = uint8_t((x[j] - mn) * id + 0.5f);
      const auto b = uint8_t((x[j + kQK / 2] - mn) * id + 0.5f);
      y[i].qs[j] = uint8_t((a & 0xF) | ((b & 0xF) << 4));
      qh |= uint32_t((a & 0x10u) >> 4) << j;
      qh |= uint32_t((b & 0x10u) >> 4) << (j + kQK / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

}  // namespace

void dequantize_low_bit(DType t, const void* row, float* y, size_t n) {
  const size_t nb = n / block_elems(t);
  switch (t) {
    case DType::q4_0: return deq_q4_0(static_cast<const BlockQ4_0*>(row), y, nb);
    case DType::q4_1: return deq_q4_1(static_cast<const BlockQ4_1*>(row), y, nb);
    case DType::q5_0: return deq_q5<BlockQ5_0, false>(static_cast<const BlockQ5_0*>(row), y, nb);
    case DType::q5_1: return deq_q5<BlockQ5_1, true>(static_cast<const BlockQ5_1*>(row), y, nb);
    case DType::q4_K: return deq_q4_K(static_cast<const BlockQ4_K*>(row), y, nb);
    case DType::q5_K: return deq_q5_K(static_cast<const BlockQ5_K*>(row), y, nb);
    case DType::q6_K: return deq_q6_K(static_cast<const BlockQ6_K*>(row), y, nb);
    default: break;
  }
  throw std::runtime_error(std::string("dequantize_low_bit: not a low-bit type: ") + dtype_name(t));
}

void quantize_low_bit(DType t, const float* x, void* row, size_t n) {
  const size_t nb = n / block_elems(t);
  switch (t) {
    case DType::q4_0: return quant_q4_0(x, static_cast<BlockQ4_0*>(row), nb);
    case DType::q4_1: return quant_q4_1(x, static_cast<BlockQ4_1*>(row), nb);
    case DType::q5_0: return quant_q5_0(x, static_cast<BlockQ5_0*>(row), nb);
    case DType::q5_1: return quant_q5_1(x, static_cast<BlockQ5_1*>(row), nb);
    case DType::q4_K:
    case DType::q5_K:
    case DType::q6_K: return quantize_k_row(t, x, row, n);
    default: break;
  }
  throw std::runtime_error(std::string("quantize_low_bit: not a low-bit type: ") + dtype_name(t));
}

}  // namespace defkv::quant
