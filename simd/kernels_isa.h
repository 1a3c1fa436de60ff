// Per-ISA kernel tables (internal to simd/). Each is defined in its own
// translation unit compiled with that ISA's flags; call only after
// cpu_features() says the CPU and OS support it.
#pragma once

#include "simd/simd.h"

namespace defkv::simd::detail {

#if DEFKV_SIMD_X86
const Kernels& avx2_table();    // kernels_avx2.cpp   (AVX2 + FMA + F16C)
const Kernels& avx512_table();  // kernels_avx512.cpp (AVX-512 F/BW/DQ/VL + F16C + FMA)
#endif
#if DEFKV_SIMD_NEON
const Kernels& neon_table();    // kernels_neon.cpp   (AArch64 Advanced SIMD)
#endif

}  // namespace defkv::simd::detail
