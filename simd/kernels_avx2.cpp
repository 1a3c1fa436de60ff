// AVX2 + FMA + F16C kernel table (compiled with -mavx2 -mfma -mf16c).
#include <immintrin.h>

#define DEFKV_XSIMD_TU 1
#include "simd/kernels_isa.h"
#include "simd/kernels_xsimd.h"
#include "simd/half_avx2.h"

namespace defkv::simd::detail {

const Kernels& avx2_table() {
  static const Kernels t = XKernels<Avx2>::table(Isa::avx2);
  return t;
}

}  // namespace defkv::simd::detail
