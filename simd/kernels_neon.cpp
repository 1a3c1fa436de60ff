// AArch64 Advanced SIMD kernel table (NEON and fp16 conversion are baseline on
// AArch64, so no extra flags).
#include <arm_neon.h>

#define DEFKV_XSIMD_TU 1
#include "simd/kernels_isa.h"
#include "simd/kernels_xsimd.h"
#include "simd/half_neon.h"

namespace defkv::simd::detail {

const Kernels& neon_table() {
  static const Kernels t = XKernels<Neon>::table(Isa::neon);
  return t;
}

}  // namespace defkv::simd::detail
