// What every ISA's low-bit block dots share (block_dot_x86.h, block_dot_neon.h):
// kernels written over the token count, K::dot<N>(row, acts, stride, nb, out)
// with out[k] = row . the act blocks of token k (at acts + k * stride bytes),
// turned into MatmulTiles' one-token BlockDot (N = 1) and BlockDotTokens
// (N = kBlockDotTokens). Everything is in an anonymous namespace and included
// only from an ISA's kernel header, so code compiled with one ISA's flags is
// never linked into another's path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/matmul_isa.h"

namespace defkv::quant::detail {
namespace {

// a[k]: token k's act blocks
template <class A, size_t N>
void token_acts(const void* acts, size_t stride, const A* (&a)[N]) {
  for (size_t k = 0; k < N; ++k) a[k] = reinterpret_cast<const A*>(static_cast<const uint8_t*>(acts) + k * stride);
}

template <class K>
float dot_one(const void* row, const void* acts, size_t nb) {
  float out;
  K::template dot<1>(row, acts, 0, nb, &out);
  return out;
}
template <class K>
void dot_tokens(const void* row, const void* acts, size_t stride, size_t nb, float* out) {
  K::template dot<kBlockDotTokens>(row, acts, stride, nb, out);
}

// The kernel of type t as F (BlockDot: one token, BlockDotTokens:
// kBlockDotTokens), from a family's templates over its dot step D:
//   Legacy<D, Block, fifth bits, offset, has min>, K45<D, Q5_K?, Block>, Q6K<D>.
template <template <class, class, bool, int, bool> class Legacy, template <class, bool, class> class K45,
          template <class> class Q6K, class D, class F>
F low_bit_block_dot(DType t) {
  auto entry = [](auto kernel) -> F {
    using K = decltype(kernel);
    if constexpr (std::is_same_v<F, BlockDot>) return &dot_one<K>;
    else return &dot_tokens<K>;
  };
  switch (t) {
    case DType::q4_0: return entry(Legacy<D, BlockQ4_0, false, 8, false>{});
    case DType::q4_1: return entry(Legacy<D, BlockQ4_1, false, 0, true>{});
    case DType::q5_0: return entry(Legacy<D, BlockQ5_0, true, 16, false>{});
    case DType::q5_1: return entry(Legacy<D, BlockQ5_1, true, 0, true>{});
    case DType::q4_K: return entry(K45<D, false, BlockQ4_K>{});
    case DType::q5_K: return entry(K45<D, true, BlockQ5_K>{});
    case DType::q6_K: return entry(Q6K<D>{});
    default: return nullptr;
  }
}

}  // namespace
}  // namespace defkv::quant::detail
