// Exact IEEE fp16 / bf16 <-> fp32 conversions (round to nearest, ties to even;
// subnormals, infinities and NaNs preserved), inline for the scalar kernels.
// Not for per-ISA translation units (they call the out-of-line simd::f16_to_f32
// etc. so nothing compiled with ISA flags is shared).
#pragma once

#include <bit>
#include <cstdint>

namespace defkv::simd::detail {

inline float f16_to_f32_inline(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in fp32
    const float mag = float(man) * 0x1p-24f;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(mag) | sign);
  }
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t f32_to_f16_inline(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    if (ax == 0x7f800000u) return sign | 0x7c00u;
    // NaN: keep it quiet, keep the top payload bits
    return uint16_t(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  if (ax < 0x38800000u) {
    // below the smallest normal half (2^-14): result is subnormal or zero
    if (ax < 0x33000000u) return sign;  // < 2^-25 (a tie at 2^-25 rounds to 0 too)
    const uint32_t e = ax >> 23;        // 102..112
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;    // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
  }
  // normal: rebias exponent (127 -> 15); a carry out of the mantissa bumps the
  // exponent, up to infinity (0x7c00) for values >= 65520
  uint32_t r = (ax - 0x38000000u) >> 13;
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  if (r >= 0x7c00u) r = 0x7c00u;
  return uint16_t(sign | r);
}

inline float bf16_to_f32_inline(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

inline uint16_t f32_to_bf16_inline(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace defkv::simd::detail
