// Streaming-read kernels for the memory-bandwidth probe (`defkv bench
// --membw`). Each reads n_bytes at p once, front to back, and returns the sum
// of the buffer's little-endian 64-bit words modulo 2^64 (a trailing partial
// word is zero-padded), so the loads cannot be optimised away and every
// variant returns the same checksum as the scalar reference.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace defkv::simd {

// Scalar reference (and portable fallback): eight independent accumulators
// so the loads are not serialised behind one add chain.
inline uint64_t stream_read_scalar(const void* p, size_t n_bytes) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  const size_t n_words = n_bytes / 8;
  uint64_t a[8] = {};
  size_t i = 0;
  for (; i + 8 <= n_words; i += 8)
    for (size_t j = 0; j < 8; ++j) {
      uint64_t w;
      std::memcpy(&w, b + (i + j) * 8, 8);
      a[j] += w;
    }
  for (; i < n_words; ++i) {
    uint64_t w;
    std::memcpy(&w, b + i * 8, 8);
    a[0] += w;
  }
  if (size_t tail = n_bytes % 8) {
    uint64_t w = 0;
    std::memcpy(&w, b + n_words * 8, tail);
    a[0] += w;
  }
  uint64_t s = 0;
  for (uint64_t v : a) s += v;
  return s;
}

#if defined(__x86_64__)
#define DEFKV_SIMD_HAVE_STREAM_READ_AVX512 1
// AVX-512F: eight independent 512-bit accumulators (8 cache lines in flight
// per iteration). Call only when the CPU and OS support AVX-512F. Any
// alignment; 64-byte aligned buffers read fastest.
uint64_t stream_read_avx512(const void* p, size_t n_bytes);
#endif

}  // namespace defkv::simd
