// AVX-512F streaming read for the memory-bandwidth probe, with software
// prefetch as the decode kernels stream their weights. Compiled with
// -mavx512f into its own static library (simd/meson.build); called only
// after a run-time CPU check (tools/membw.cpp).
#include "simd/membw.h"

#include <immintrin.h>

namespace defkv::simd {

namespace {
// 1 KiB ahead into L2, as the decode kernels read: the probe should see the
// bandwidth they can reach (docs/tuning.md).
constexpr size_t kPrefetchBytes = 1024;
}  // namespace

uint64_t stream_read_avx512(const void* p, size_t n_bytes) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  const size_t n_vec = n_bytes / 64;
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  __m512i a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  size_t i = 0;
  for (; i + 8 <= n_vec; i += 8) {
    const unsigned char* q = b + i * 64;
    for (int l = 0; l < 8; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchBytes + l * 64), _MM_HINT_T1);
    a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(q + 0 * 64));
    a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(q + 1 * 64));
    a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(q + 2 * 64));
    a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(q + 3 * 64));
    a4 = _mm512_add_epi64(a4, _mm512_loadu_si512(q + 4 * 64));
    a5 = _mm512_add_epi64(a5, _mm512_loadu_si512(q + 5 * 64));
    a6 = _mm512_add_epi64(a6, _mm512_loadu_si512(q + 6 * 64));
    a7 = _mm512_add_epi64(a7, _mm512_loadu_si512(q + 7 * 64));
  }
  for (; i < n_vec; ++i) a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(b + i * 64));
  a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
  a4 = _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7));
  // Horizontal sum in unsigned arithmetic: GCC's _mm512_reduce_add_epi64 adds
  // the lanes as signed long long, where the wrap-around is undefined.
  alignas(64) uint64_t lane[8];
  _mm512_store_si512(lane, _mm512_add_epi64(a0, a4));
  uint64_t s = 0;
  for (uint64_t v : lane) s += v;
  // The last (n_bytes % 64) bytes: the scalar reference's word sum.
  return s + stream_read_scalar(b + n_vec * 64, n_bytes - n_vec * 64);
}

}  // namespace defkv::simd
