// Kernel table selection: once, on first use.
#include <cstdlib>
#include <cstring>

#include "simd/kernels_scalar.h"
#include "simd/simd.h"

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

const Kernels& scalar_kernels() { return scalar::table(); }

size_t available_kernels(const Kernels** out, size_t max) {
  size_t n = 0;
  if (n < max) out[n++] = &scalar::table();
  return n;
}

const Kernels& k() {
  static const Kernels* const active = [] {
    return &scalar::table();
  }();
  return *active;
}

}  // namespace defkv::simd
