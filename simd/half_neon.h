// fp16 / bf16 <-> fp32 vector loads and stores for xsimd batches, AArch64 NEON.
// Shared by simd/ and quant/ translation units compiled with the same flags
// (and only those: an inline function built for one ISA must never be linked
// into code that runs on another).
#pragma once

#if !defined(__aarch64__)
#error "half_neon.h: AArch64 only"
#endif

#include <arm_neon.h>

#include <cstdint>
#include <xsimd/xsimd.hpp>

namespace defkv::simd::detail {

template <class A>
struct Half;

using Neon = xsimd::neon64;

template <>
struct Half<Neon> {
  using B = xsimd::batch<float, Neon>;
  static B load_f16(const uint16_t* p) { return B(vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))); }
  static void store_f16(uint16_t* p, B v) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(float32x4_t(v)))); }
  static B load_bf16(const uint16_t* p) { return B(vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))); }
  static void store_bf16(uint16_t* p, B v) {
    const float32x4_t f = float32x4_t(v);
    const uint32x4_t x = vreinterpretq_u32_f32(f);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(1));
    const uint32x4_t r = vaddq_u32(vaddq_u32(x, vdupq_n_u32(0x7fff)), lsb);
    const uint32x4_t nan = vorrq_u32(x, vdupq_n_u32(0x400000));  // quiet bit: (x>>16)|0x40
    const uint32x4_t is_num = vceqq_f32(f, f);
    vst1_u16(p, vshrn_n_u32(vbslq_u32(is_num, r, nan), 16));
  }
};

}  // namespace defkv::simd::detail
