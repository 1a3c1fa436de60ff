// oneDNN matmul path (see matmul_dnnl.h): y[M,N] = x[M,K] . W^T, with W
// [N,K] row-major viewed as a K x N matrix with strides {1, K}.
//   f32 weights : f32 x f32 -> f32, weights used in place
//   bf16 weights: activations rounded to bf16 (RNE), bf16 x bf16 -> f32
//                 (native vdpbf16ps where the CPU has it), weights in place
//   f16 weights : oneDNN 2.6 has no f16 matmul without AVX512-FP16, so blocks
//                 of kF16ChunkRows rows are widened exactly to f32 into a
//                 per-thread scratch and multiplied as f32 (bounded scratch,
//                 no per-call copy of the whole matrix)
//   q8_0        : declined
#include "quant/matmul_dnnl.h"

#if DEFKV_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <vector>

#include "simd/simd.h"
#endif

namespace defkv::quant::detail {

#if !DEFKV_HAVE_DNNL
bool dnnl_available() { return false; }
bool dnnl_preferred(const Matrix&, size_t) { return false; }
bool dnnl_matmul(const Matrix&, const float*, float*, size_t, size_t) { return false; }
#else

namespace {

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// Set once a dtype's primitive could not be created on this CPU.
std::atomic<bool> g_f32_unsupported{false};
std::atomic<bool> g_bf16_unsupported{false};

template <class T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace

bool dnnl_available() { return true; }

// Where oneDNN beat the SIMD tiles in one-off timings (AVX-512 + BF16 host,
// 1 thread, 64x64 .. 4096x4096 weights; numbers in the simd/quant report):
// from 32 tokens everywhere, from 16 tokens once there are >= 256 rows.
// q8_0 never goes to oneDNN.
constexpr size_t kDnnlMinTokens = 32;
constexpr size_t kDnnlMinTokensManyRows = 16;
constexpr size_t kDnnlManyRows = 256;

bool dnnl_preferred(const Matrix& w, size_t n_tokens) {
  if (n_tokens < kDnnlMinTokens && !(n_tokens >= kDnnlMinTokensManyRows && w.rows >= kDnnlManyRows))
    return false;
  switch (w.type) {
    case DType::bf16: return !g_bf16_unsupported.load();
    case DType::f32:
    case DType::f16: return !g_f32_unsupported.load();
    default: return false;  // q8_0 and the low-bit types stay on the int8 kernels
  }
  return false;
}

namespace {

// Rows of an f16 matrix widened per oneDNN call (scratch = rows * K floats).
constexpr size_t kF16ChunkRows = 256;

using dt = dnnl::memory::data_type;
using dims = dnnl::memory::dims;

// y[M, N] (row stride ldy) = src[M, K] . wei[K, N] (wei strides {1, K}).
// Returns false if oneDNN cannot build this primitive on this CPU.
bool run(dt src_t, const void* src, dt wei_t, const void* wei, float* y, size_t M, size_t K,
         size_t N, size_t ldy) {
  const auto m = dnnl::memory::dim(M), k = dnnl::memory::dim(K), n = dnnl::memory::dim(N),
             ld = dnnl::memory::dim(ldy);
  dnnl::memory::desc src_md(dims{m, k}, src_t, dims{k, 1});
  dnnl::memory::desc wei_md(dims{k, n}, wei_t, dims{1, k});
  dnnl::memory::desc dst_md(dims{m, n}, dt::f32, dims{ld, 1});
  dnnl::matmul prim;
  try {
    // oneDNN's primitive cache makes re-creating a seen shape cheap.
    prim = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, dst_md), engine()));
  } catch (const dnnl::error&) {
    return false;
  }
  thread_local dnnl::stream stream(engine());
  dnnl::memory src_m(src_md, engine(), const_cast<void*>(src));
  dnnl::memory wei_m(wei_md, engine(), const_cast<void*>(wei));
  dnnl::memory dst_m(dst_md, engine(), y);
  prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DST, dst_m}});
  stream.wait();
  return true;
}

}  // namespace

bool dnnl_matmul(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy) {
  if (w.type != DType::f32 && w.type != DType::f16 && w.type != DType::bf16) return false;
  std::atomic<bool>& unsupported = w.type == DType::bf16 ? g_bf16_unsupported : g_f32_unsupported;
  if (unsupported.load()) return false;
  const size_t K = w.cols, N = w.rows, ld = n_tokens > 1 ? ldy : w.rows;
  bool ok = true;
  switch (w.type) {
    case DType::f32:
      ok = run(dt::f32, x, dt::f32, w.data, y, n_tokens, K, N, ld);
      break;
    case DType::bf16: {
      thread_local std::vector<uint16_t> xb;
      uint16_t* p = grow(xb, n_tokens * K);
      simd::k().f32_to_bf16(x, p, n_tokens * K);
      ok = run(dt::bf16, p, dt::bf16, w.data, y, n_tokens, K, N, ld);
      break;
    }
    case DType::f16: {
      thread_local std::vector<float> wf;
      float* buf = grow(wf, kF16ChunkRows * K);
      const auto* h = static_cast<const uint16_t*>(w.data);
      for (size_t r0 = 0; r0 < N && ok; r0 += kF16ChunkRows) {
        const size_t nr = std::min(kF16ChunkRows, N - r0);
        simd::k().f16_to_f32(h + r0 * K, buf, nr * K);
        ok = run(dt::f32, x, dt::f32, buf, y + r0, n_tokens, K, nr, ld);
      }
      break;
    }
    default: return false;
  }
  if (!ok) unsupported.store(true);
  return ok;
}

#endif

}  // namespace defkv::quant::detail
