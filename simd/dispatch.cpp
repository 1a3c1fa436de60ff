// CPU feature detection and kernel table selection, once, on first use.
#include <cstdlib>
#include <cstring>

#include "simd/kernels_isa.h"
#include "simd/kernels_scalar.h"
#include "simd/simd.h"

#if DEFKV_SIMD_X86
#include <cpuid.h>
#endif
#if DEFKV_SIMD_NEON && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace defkv::simd {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "unknown";
}

namespace {

#if DEFKV_SIMD_X86
uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if DEFKV_SIMD_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12),
             f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31), avx512vnni = c & (1u << 11);
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  if (a >= 1) __cpuid_count(7, 1, a1, b1, c1, d1);
  const bool avxvnni = a1 & (1u << 4), avx512bf16 = a1 & (1u << 5);
  f.avx2 = os_ymm && avx2 && fma && f16c;
  f.avx512 = f.avx2 && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  f.avx512_vnni = f.avx512 && avx512vnni;
  f.avx512_bf16 = f.avx512 && avx512bf16;
  f.avx_vnni = f.avx2 && avxvnni;
#endif
#if DEFKV_SIMD_NEON
  f.neon = true;
#if defined(__linux__) && defined(HWCAP_ASIMDDP)
  f.neon_dotprod = getauxval(AT_HWCAP) & HWCAP_ASIMDDP;
#endif
#endif
  return f;
}

bool force_scalar() {
  const char* v = std::getenv("DEFKV_FORCE_SCALAR");
  return v && std::strcmp(v, "1") == 0;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

const Kernels& scalar_kernels() { return scalar::table(); }

size_t available_kernels(const Kernels** out, size_t max) {
  size_t n = 0;
  auto add = [&](const Kernels& t) {
    if (n < max) out[n++] = &t;
  };
  add(scalar::table());
  [[maybe_unused]] const CpuFeatures& f = cpu_features();
#if DEFKV_SIMD_X86
  if (f.avx2) add(detail::avx2_table());
  if (f.avx512) add(detail::avx512_table());
#endif
#if DEFKV_SIMD_NEON
  if (f.neon) add(detail::neon_table());
#endif
  return n;
}

const Kernels& k() {
  static const Kernels* const active = [] {
    if (force_scalar()) return &scalar::table();
    const Kernels* all[8];
    const size_t n = available_kernels(all, 8);
    return all[n - 1];  // best last
  }();
  return *active;
}

}  // namespace defkv::simd
