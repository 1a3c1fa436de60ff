// AVX-512 kernel table (compiled with -mavx512f -mavx512bw -mavx512dq
// -mavx512vl -mf16c -mfma).
#include <immintrin.h>

#define DEFKV_XSIMD_TU 1
#include "simd/kernels_isa.h"
#include "simd/kernels_xsimd.h"
#include "simd/half_avx512.h"

namespace defkv::simd::detail {

const Kernels& avx512_table() {
  static const Kernels t = XKernels<Avx512>::table(Isa::avx512);
  return t;
}

}  // namespace defkv::simd::detail
