// Out-of-line scalar conversions (simd.h); the bodies are in convert_inline.h.
#include "simd/convert_inline.h"
#include "simd/simd.h"

namespace defkv::simd {

float f16_to_f32(uint16_t h) { return detail::f16_to_f32_inline(h); }
uint16_t f32_to_f16(float f) { return detail::f32_to_f16_inline(f); }
float bf16_to_f32(uint16_t h) { return detail::bf16_to_f32_inline(h); }
uint16_t f32_to_bf16(float f) { return detail::f32_to_bf16_inline(f); }

}  // namespace defkv::simd
