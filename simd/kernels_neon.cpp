// AArch64 Advanced SIMD kernel table (NEON and fp16 conversion are baseline on
// AArch64, so no extra flags).
#include <arm_neon.h>

#define DEFKV_XSIMD_TU 1
#include "simd/kernels_isa.h"
#include "simd/kernels_xsimd.h"

namespace defkv::simd::detail {

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

const Kernels& neon_table() {
  static const Kernels t = XKernels<Neon>::table(Isa::neon);
  return t;
}

}  // namespace defkv::simd::detail
