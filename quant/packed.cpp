// Load-time packed weights (quant::Packed): the choice of packing, the f16
// packing, the activation quantisation and the threading. The 32-block types
// are packed in packed_legacy.cpp, the K-quants in packed_q4k.cpp; the
// kernels are in matmul_avx512vnni.cpp (q8_0), packed_legacy_avx512vnni.cpp,
// packed_q4k_avx512vnni.cpp and packed_f16*_avx512.cpp.
#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/matmul_isa.h"
#include "quant/packed_legacy.h"
#include "quant/packed_q4k.h"
#include "quant/quant.h"
#include "simd/simd.h"

namespace defkv::quant {

namespace {

bool packed_kernel_available() {
#if DEFKV_SIMD_X86
  // follows the kernel table, so DEFKV_FORCE_SCALAR disables packing
  return simd::k().isa == simd::Isa::avx512 && simd::cpu_features().avx512_vnni;
#else
  return false;
#endif
}

size_t n_groups(size_t rows) { return (rows + detail::kPackRows - 1) / detail::kPackRows; }

template <class T, int Slot>
T* grow_scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Work below this many multiply-adds runs on the calling thread (as matmul()).
constexpr size_t kParallelMinMacs = size_t(1) << 17;
// Up to kFewTokens tokens (decode): row chunks of kDecodeGroups groups, split
// statically (each thread streams one contiguous range of the weights).
// More tokens: work items of kBatchGroups groups x up to kTokenBlock tokens,
// handed out dynamically.
constexpr size_t kFewTokens = 4;
constexpr size_t kDecodeGroups = 4;
// One batch work item = one micro-kernel column (2 groups = 32 rows, whose
// weights stay in L2: 70 KB at 2048 cols, 191 KB at 5632) x a token block of
// at most kTokenBlock tokens, cut into equal blocks (a multiple of the 6-token
// micro tile) so no short last block idles a thread. 2 x 192 was the fastest
// split measured; q8_0 batches stay on the int8 kernel at every size (bf16
// through oneDNN was about half as fast) (docs/tuning.md).
constexpr size_t kBatchGroups = 2;
constexpr size_t kTokenBlock = 192;
constexpr size_t kMicroTokens = 6;  // the batch micro-kernel's token tile (matmul_avx512vnni.cpp)

}  // namespace

namespace {

bool f16_kernel_available() {
#if DEFKV_SIMD_X86
  return simd::k().isa == simd::Isa::avx512;  // AVX-512 F/BW/DQ/VL + F16C; not under DEFKV_FORCE_SCALAR
#else
  return false;
#endif
}

// The bf16 batch kernel (vdpbf16ps) for f16 batches.
bool bf16_kernel_available() {
#if DEFKV_SIMD_X86
  return f16_kernel_available() && simd::cpu_features().avx512_bf16;
#else
  return false;
#endif
}

bool kernel_available(DType t) {
  switch (t) {
    case DType::q8_0:
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1:
    case DType::q4_K:
    case DType::q5_K:
    case DType::q6_K: return packed_kernel_available();  // all on AVX-512 VNNI
    case DType::f16:
    case DType::bf16: return f16_kernel_available();
    default: return false;
  }
}

// A plain 64-byte-aligned allocation: huge pages (MADV_HUGEPAGE) were not
// clearly better for decode (docs/tuning.md).
std::shared_ptr<const uint8_t> aligned_buffer(size_t bytes, uint8_t** out) {
  auto* buf = static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  if (buf == nullptr) throw std::bad_alloc();
  *out = buf;
  return std::shared_ptr<const uint8_t>(buf, [](const uint8_t* q) { std::free(const_cast<uint8_t*>(q)); });
}

size_t n_panels_f16(size_t rows) { return (rows + detail::kPackRowsF16 - 1) / detail::kPackRowsF16; }

// f16 / bf16: w[panel, col, 16] = W[16 panel + lane, col] (zero past W.rows).
void pack_f16(const Matrix& w, Packed& p) {
  const size_t P = n_panels_f16(w.rows), n = w.cols;
  const size_t bytes = P * n * detail::kPackRowsF16 * sizeof(uint16_t);
  uint8_t* buf = nullptr;
  p.data = aligned_buffer(bytes, &buf);
  p.bytes = bytes;
  auto* dst = reinterpret_cast<uint16_t*>(buf);
  const auto* src = static_cast<const uint16_t*>(w.data);
  const auto np = static_cast<long long>(P);
#pragma omp parallel for schedule(static)
  for (long long pi = 0; pi < np; ++pi) {
    uint16_t* panel = dst + size_t(pi) * n * detail::kPackRowsF16;
    for (size_t lane = 0; lane < detail::kPackRowsF16; ++lane) {
      const size_t row = size_t(pi) * detail::kPackRowsF16 + lane;
      const uint16_t* wr = row < w.rows ? src + row * n : nullptr;
      for (size_t c = 0; c < n; ++c) panel[c * detail::kPackRowsF16 + lane] = wr ? wr[c] : uint16_t(0);
    }
  }
}

}  // namespace

Packed pack_for_gemm(const Matrix& w) {
  Packed p;
  p.source = w;
  if (w.rows == 0 || w.cols == 0 || !kernel_available(w.type)) return p;
  if (w.data == nullptr) throw std::invalid_argument("pack_for_gemm: weight matrix has no data");
  (void)row_bytes(w.type, w.cols);  // validates block alignment
  if (detail::is_legacy_packed(w.type)) {
    uint8_t* buf = nullptr;
    p.bytes = detail::legacy_packed_bytes(w.type, w.rows, w.cols);
    p.data = aligned_buffer(p.bytes, &buf);
    detail::pack_legacy(w, buf);
  } else if (w.type == DType::q4_K || w.type == DType::q5_K || w.type == DType::q6_K) {
    uint8_t* buf = nullptr;
    p.bytes = detail::k_packed_bytes(w.type, w.rows, w.cols);
    p.data = aligned_buffer(p.bytes, &buf);
    detail::pack_k(w, buf);
  } else {
    pack_f16(w, p);
  }
  return p;
}

Packed pack_for_gemm(const Matrix& w, bool release_source) {
  Packed p = pack_for_gemm(w);
  if (release_source && p.packed()) p.source_released_bytes = release_source_pages(w);
  return p;
}

size_t release_source_pages(const Matrix& w) {
#if defined(__linux__)
  if (w.data == nullptr || w.rows == 0) return 0;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(w.data);
  const uintptr_t end = begin + w.rows * row_bytes(w.type, w.cols);
  const uintptr_t lo = (begin + page - 1) / page * page, hi = end / page * page;
  if (hi <= lo) return 0;
  // Only a read-only private file mapping refaults the same bytes from the
  // file: anything else (heap, writable or anonymous mappings) would read
  // back zeros, so it is left alone.
  std::FILE* maps = std::fopen("/proc/self/maps", "r");
  if (maps == nullptr) return 0;
  bool safe = false;
  char line[512];
  while (std::fgets(line, sizeof line, maps) != nullptr) {
    unsigned long long a = 0, b = 0, off = 0, inode = 0;
    char perms[8] = {};
    unsigned dev_major = 0, dev_minor = 0;
    if (std::sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &a, &b, perms, &off, &dev_major, &dev_minor,
                    &inode) != 7)
      continue;
    if (a <= lo && hi <= b) {
      safe = perms[0] == 'r' && perms[1] != 'w' && perms[3] == 'p' && inode != 0;
      break;
    }
  }
  std::fclose(maps);
  if (!safe) return 0;
  if (::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) != 0) return 0;
  return hi - lo;
#else
  (void)w;
  return 0;
#endif
}

namespace {

// Activations of one product set, quantised once for every q8_0 matrix
// sharing them (per 32-block, as matmul()), split into quants / scales /
// vpdpbusd correction -128 * sum(q). The scratch is the calling thread's.
struct ActsScratch {
  int8_t* qs;     // [n_tokens, n]
  float* d;       // [n_tokens, n/32]
  int32_t* corr;  // [n_tokens, n/32]
  detail::PackedActs view() const { return {qs, d, corr}; }
};
ActsScratch packed_acts_scratch(size_t n, size_t n_tokens) {
  const size_t nb = n / kQ8_0Block;
  return {grow_scratch<int8_t, 0>(n_tokens * n), grow_scratch<float, 1>(n_tokens * nb),
          grow_scratch<int32_t, 2>(n_tokens * nb)};
}

// Quantises token t of x [n_tokens, n] into acts.
void quantize_token(const float* x, size_t n, size_t t, const ActsScratch& acts) {
  const size_t nb = n / kQ8_0Block;
  int8_t* xq = acts.qs + t * n;
  float* xd = acts.d + t * nb;
  int32_t* xc = acts.corr + t * nb;
#if DEFKV_SIMD_X86
  // only reached with the packed kernel, i.e. on AVX-512 VNNI
  detail::avx512vnni_quantize_packed_acts(x + t * n, n, xq, xd, xc);
#else
  detail::BlockQ8x blk;
  for (size_t b = 0; b < nb; ++b) {
    detail::quantize_activations(x + t * n + b * kQ8_0Block, &blk, kQ8_0Block);
    int32_t s = 0;
    for (size_t j = 0; j < kQ8_0Block; ++j) s += blk.qs[j];
    std::memcpy(xq + b * kQ8_0Block, blk.qs, kQ8_0Block);
    xd[b] = blk.d;
    xc[b] = -128 * s;
  }
#endif
}

// f16 batches: tiles of kF16BatchPanels panels x kF16TokenBlock tokens, the
// packed 2-panel x 12-token register tile (packed_f16_avx512.cpp) rather than
// matmul()'s oneDNN f32 path (f16 widened to f32 in 256-row blocks; oneDNN
// 2.6 has no f16 matmul without AVX512-FP16), which it beats (docs/tuning.md).
constexpr size_t kF16DecodePanels = 4;
constexpr size_t kF16BatchPanels = 4;
constexpr size_t kF16TokenBlock = 48;
// From kPackedBf16MinTokens tokens, f16 batches run the AVX512-BF16 kernel
// instead (weights and activations rounded to bf16; docs/tuning.md for the
// speed and the logit differences): work items of kBf16Panels panels x up to
// kBf16TokenBlock tokens, each converting its panels' weights once.
constexpr size_t kBf16Panels = 4;
constexpr size_t kBf16TokenBlock = 256;

// f16 activations for the bf16 kernel: [n_tokens, ldxb] bf16, rows padded
// with zeros to a multiple of 32 columns.
struct Bf16Acts {
  const uint16_t* xb = nullptr;
  size_t ldxb = 0;
};

// One packed product's work split into row units (groups or panels) for the
// shared parallel loop.
struct Job {
  const Packed* p;
  float* y;
  size_t ldy;
  size_t units;      // row units (groups of 16 rows)
  size_t per_chunk;  // units per work item
  size_t chunks;     // work items per token block
  // The row units [*u0, *u1) of work item `chunk`.
  void units_of(size_t chunk, size_t* u0, size_t* u1) const {
    *u0 = chunk * per_chunk;
    *u1 = std::min(units, *u0 + per_chunk);
  }
};

void run_chunk(const Job& j, const detail::PackedActs& acts, const ActQ8K* acts_k, const float* x,
               const Bf16Acts& xb, size_t chunk, size_t t0, size_t t1, const detail::Bf16Next& next) {
#if DEFKV_SIMD_X86
  const Matrix& w = j.p->source;
  size_t u0 = 0, u1 = 0;
  j.units_of(chunk, &u0, &u1);
  if (w.type == DType::q6_K) {
    detail::avx512vnni_packed_q6k_tile(j.p->data.get(), w.rows, w.cols / kQK_K, acts_k, j.y, j.ldy, u0, u1, t0, t1);
  } else if (w.type == DType::q5_K) {
    detail::avx512vnni_packed_q5k_tile(j.p->data.get(), w.rows, w.cols / kQK_K, acts_k, j.y, j.ldy, u0, u1, t0, t1);
  } else if (w.type == DType::q4_K) {
    detail::avx512vnni_packed_q4k_tile(j.p->data.get(), w.rows, w.cols / kQK_K, acts_k, j.y, j.ldy, u0, u1, t0, t1);
  } else if (detail::is_legacy_packed(w.type)) {
    const size_t nb = w.cols / kQK;
    const detail::LegacyPlanes pl = detail::legacy_planes(w.type, j.p->data.get(), w.rows, nb);
    switch (w.type) {
      case DType::q8_0: detail::avx512vnni_packed_q8_tile(pl.qs, pl.d, w.rows, nb, acts, j.y, j.ldy, u0, u1, t0, t1); break;
      case DType::q4_0: detail::avx512vnni_packed_q4_0_tile(pl, w.rows, nb, acts, j.y, j.ldy, u0, u1, t0, t1); break;
      case DType::q4_1: detail::avx512vnni_packed_q4_1_tile(pl, w.rows, nb, acts, j.y, j.ldy, u0, u1, t0, t1); break;
      case DType::q5_0: detail::avx512vnni_packed_q5_0_tile(pl, w.rows, nb, acts, j.y, j.ldy, u0, u1, t0, t1); break;
      default: detail::avx512vnni_packed_q5_1_tile(pl, w.rows, nb, acts, j.y, j.ldy, u0, u1, t0, t1); break;
    }
  } else if (xb.xb != nullptr) {
    detail::avx512bf16_packed_tile(reinterpret_cast<const uint16_t*>(j.p->data.get()), w.type == DType::bf16,
                                   w.rows, w.cols, xb.xb, xb.ldxb, j.y, j.ldy, u0, u1, t0, t1, next);
  } else {
    detail::avx512_packed_f16_tile(reinterpret_cast<const uint16_t*>(j.p->data.get()), w.type == DType::bf16,
                                   w.rows, w.cols, x, j.y, j.ldy, u0, u1, t0, t1);
  }
#else
  (void)j, (void)acts, (void)acts_k, (void)x, (void)xb, (void)chunk, (void)t0, (void)t1, (void)next;
#endif
}

// Packed types that share one activation format can share one quantisation
// (e.g. a Q4_K_M layer's q/k in Q4_K and v in Q6_K).
int act_kind(DType t) {
  switch (t) {
    case DType::q8_0:
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1: return 0;  // PackedActs (per 32-block)
    case DType::q4_K:
    case DType::q5_K:
    case DType::q6_K: return 1;  // Q8_K super-blocks
    default: return 2;  // f16 / bf16: the f32 activations themselves
  }
}

// Runs every job (all packed, same activation kind and cols) over all tokens in ONE
// OpenMP parallel loop: work items = token blocks x (chunks of job 0, job 1, ...).
void run_jobs(Job* jobs, size_t n_jobs, const float* x, size_t n_tokens, bool parallel) {
  const Matrix& w0 = jobs[0].p->source;
  const bool q4k = w0.type == DType::q4_K || w0.type == DType::q5_K || w0.type == DType::q6_K;  // Q8_K activations
  // the K-quants are scheduled as q8_0 (groups of 16 rows, int8 activations)
  const bool q8 = detail::is_legacy_packed(w0.type) || q4k;
  const bool few = n_tokens <= (q8 ? kFewTokens : size_t(1));
  const bool bf16 = !q8 && n_tokens >= kPackedBf16MinTokens && bf16_kernel_available();
  size_t token_block = few ? n_tokens : (q8 ? kTokenBlock : bf16 ? kBf16TokenBlock : kF16TokenBlock);
  if ((q8 || bf16) && !few) {
    // equal blocks, rounded up to whole micro tiles
    const size_t n_blocks = (n_tokens + token_block - 1) / token_block;
    const size_t micro = bf16 ? detail::kBf16MicroTokens : kMicroTokens;
    token_block = ((n_tokens + n_blocks - 1) / n_blocks + micro - 1) / micro * micro;
  }
  size_t per_tb = 0;
  for (size_t i = 0; i < n_jobs; ++i) {
    Job& j = jobs[i];
    j.units = q8 ? n_groups(j.p->source.rows) : n_panels_f16(j.p->source.rows);
    j.per_chunk = q8 ? (few ? kDecodeGroups : kBatchGroups)
                     : (few ? kF16DecodePanels : bf16 ? kBf16Panels : kF16BatchPanels);
    j.chunks = (j.units + j.per_chunk - 1) / j.per_chunk;
    per_tb += j.chunks;
  }
  const ActsScratch scratch = q8 && !q4k ? packed_acts_scratch(w0.cols, n_tokens) : ActsScratch{};
  const detail::PackedActs acts = scratch.view();
  // q4_K: Q8_K activation super-blocks [n_tokens, cols/256]
  const size_t nsb = w0.cols / kQK_K;
  ActQ8K* acts_k = q4k ? grow_scratch<ActQ8K, 3>(n_tokens * nsb) : nullptr;
  Bf16Acts xb;
  if (bf16) {
    xb.ldxb = (w0.cols + 31) / 32 * 32;
    xb.xb = grow_scratch<uint16_t, 4>(n_tokens * xb.ldxb);
  }
  auto quantize = [&](size_t t) {
    if (bf16) {
      auto* row = const_cast<uint16_t*>(xb.xb) + t * xb.ldxb;
      simd::k().f32_to_bf16(x + t * w0.cols, row, w0.cols);
      std::fill(row + w0.cols, row + xb.ldxb, uint16_t(0));
    } else if (q4k) {
#if DEFKV_SIMD_X86
      // only reached with the packed kernel, i.e. on AVX-512 VNNI
      detail::avx512_quantize_q8k(x + t * w0.cols, acts_k + t * nsb, nsb);
#else
      quantize_acts(w0.type, x + t * w0.cols, acts_k + t * nsb, w0.cols);
#endif
    } else {
      quantize_token(x, w0.cols, t, scratch);
    }
  };
  const size_t n_tb = (n_tokens + token_block - 1) / token_block;
  const auto n_items = static_cast<long long>(n_tb * per_tb);
  auto locate = [&](long long it, size_t& i, size_t& c) {
    c = size_t(it) % per_tb, i = 0;
    while (c >= jobs[i].chunks) c -= jobs[i++].chunks;
  };
  auto run_item = [&](long long it) {
    size_t i = 0, c = 0;
    locate(it, i, c);
    detail::Bf16Next next;
    // items go out one at a time in order, so a thread's next one is most
    // likely this one plus the number of threads
    const long long it_next = it + (omp_in_parallel() ? omp_get_num_threads() : 1);
    if (bf16 && it_next < n_items) {
      size_t ni = 0, nc = 0;
      locate(it_next, ni, nc);
      const Job& nj = jobs[ni];
      next.w = reinterpret_cast<const uint16_t*>(nj.p->data.get());
      next.cols = nj.p->source.cols;
      nj.units_of(nc, &next.p0, &next.p1);
    }
    const size_t t0 = size_t(it) / per_tb * token_block;
    run_chunk(jobs[i], acts, acts_k, x, xb, c, t0, std::min(n_tokens, t0 + token_block), next);
  };
  const auto nt = static_cast<long long>(n_tokens);
  if ((q8 || bf16) && !few) {
    // q8_0 and bf16 batches: the activation quantisation and the products in one
    // parallel region (one fork/join per call); items of ~10-100 us handed out
    // one at a time: on a shared machine a thread that loses its core no
    // longer holds back half of the work (a static split waits for it)
#pragma omp parallel if (parallel)
    {
#pragma omp for schedule(static)
      for (long long t = 0; t < nt; ++t) quantize(size_t(t));
      // (implicit barrier: every token is quantised before any product)
#pragma omp for schedule(dynamic, 1)
      for (long long it = 0; it < n_items; ++it) run_item(it);
    }
  } else {
    if (q8)
      for (size_t t = 0; t < n_tokens; ++t) quantize(t);
#pragma omp parallel for schedule(static) if (parallel)
    for (long long it = 0; it < n_items; ++it) run_item(it);
  }
}

void check_packed_call(const Matrix& w, const float* x, const float* y, size_t n_tokens, size_t ldy) {
  if (x == nullptr || y == nullptr)
    throw std::invalid_argument("matmul_packed: null activation or output pointer");
  if (n_tokens > 1 && ldy < w.rows)
    throw std::invalid_argument("matmul_packed: ldy " + std::to_string(ldy) +
                                " smaller than the number of rows " + std::to_string(w.rows));
}

}  // namespace

void matmul_packed(const Packed& p, const float* x, float* y, size_t n_tokens, size_t ldy) {
  const Matrix& w = p.source;
  if (!p.packed() || !kernel_available(w.type)) return matmul(w, x, y, n_tokens, ldy);
  if (n_tokens == 0 || w.rows == 0) return;
  check_packed_call(w, x, y, n_tokens, ldy);
  Job job{&p, y, ldy, 0, 0, 0};
  run_jobs(&job, 1, x, n_tokens, w.rows * w.cols * n_tokens >= kParallelMinMacs);
}

void matmul_packed_multi(const PackedProduct* products, size_t n_products, const float* x,
                         size_t n_tokens) {
  if (n_products == 0 || n_tokens == 0) return;
  constexpr size_t kMaxJobs = 8;
  const Matrix& w0 = products[0].w->source;
  bool shared = n_products <= kMaxJobs;
  size_t macs = 0;
  for (size_t i = 0; i < n_products; ++i) {
    const Matrix& w = products[i].w->source;
    if (w.cols != w0.cols)
      throw std::invalid_argument("matmul_packed_multi: matrices with different column counts (" +
                                  std::to_string(w0.cols) + " and " + std::to_string(w.cols) + ")");
    shared = shared && products[i].w->packed() && act_kind(w.type) == act_kind(w0.type) &&
             kernel_available(w.type) && w.rows != 0;
    macs += w.rows * w.cols * n_tokens;
  }
  if (!shared) {
    for (size_t i = 0; i < n_products; ++i)
      matmul_packed(*products[i].w, x, products[i].y, n_tokens, products[i].ldy);
    return;
  }
  Job jobs[kMaxJobs];
  for (size_t i = 0; i < n_products; ++i) {
    check_packed_call(products[i].w->source, x, products[i].y, n_tokens, products[i].ldy);
    jobs[i] = Job{products[i].w, products[i].y, products[i].ldy, 0, 0, 0};
  }
  run_jobs(jobs, n_products, x, n_tokens, macs >= kParallelMinMacs);
}

}  // namespace defkv::quant
