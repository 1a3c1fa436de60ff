#include "tools/membw.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "simd/membw.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace defkv::tools {

namespace {

using ReadFn = uint64_t (*)(const void*, size_t);

uint64_t read_scalar(const void* p, size_t n) { return simd::stream_read_scalar(p, n); }

ReadFn pick_kernel(bool force_scalar, std::string* name) {
  const char* e = std::getenv("DEFKV_FORCE_SCALAR");
  const bool forced = force_scalar || (e != nullptr && std::strcmp(e, "0") != 0 && *e);
#if defined(DEFKV_SIMD_HAVE_STREAM_READ_AVX512)
  // __builtin_cpu_supports checks CPUID and the OS's XSAVE state (XCR0).
  if (!forced && __builtin_cpu_supports("avx512f")) {
    *name = "avx512";
    return simd::stream_read_avx512;
  }
#endif
  (void)forced;
  *name = "scalar";
  return read_scalar;
}

struct FreeDeleter {
  void operator()(unsigned char* p) const { std::free(p); }
};

}  // namespace

MembwResult measure_read_bandwidth(const MembwOptions& opts) {
  if (opts.size_bytes < 4096) throw std::invalid_argument("membw: buffer must be >= 4096 bytes");
  if (opts.n_runs < 1) throw std::invalid_argument("membw: runs must be >= 1");
  MembwResult res;
  ReadFn read = pick_kernel(opts.force_scalar, &res.kernel);
#ifdef _OPENMP
  const int nt = opts.n_threads > 0 ? opts.n_threads : omp_get_max_threads();
#else
  const int nt = 1;
#endif
  res.n_threads = nt;
  // Each thread owns a contiguous, 4 KiB-aligned slice.
  const size_t slice = (opts.size_bytes / size_t(nt)) / 4096 * 4096;
  if (slice == 0) throw std::invalid_argument("membw: buffer too small for the thread count");
  const size_t total = slice * size_t(nt);
  res.size_bytes = total;
  // 2 MiB alignment so huge pages (if requested) cover the whole buffer.
  const size_t align = size_t(2) << 20;
  std::unique_ptr<unsigned char, FreeDeleter> buf(
      static_cast<unsigned char*>(std::aligned_alloc(align, (total + align - 1) / align * align)));
  if (!buf) throw std::runtime_error("membw: cannot allocate " + std::to_string(total) + " bytes");
  unsigned char* base = buf.get();
  if (opts.huge_pages)
    res.huge_pages = ::madvise(base, (total + align - 1) / align * align, MADV_HUGEPAGE) == 0;

  std::vector<uint64_t> sums(size_t(nt) * 8, 0);  // padded: one cache line per thread
  double t_start = 0, t_end = 0;
  bool mismatch = false;  // a run read different data (exceptions cannot leave the region)
  auto now = [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    unsigned char* mine = base + size_t(tid) * slice;
    // First touch by the reading thread; a pattern so the checksum is not 0.
    uint64_t* w = reinterpret_cast<uint64_t*>(mine);
    for (size_t i = 0; i < slice / 8; ++i) w[i] = (size_t(tid) * slice / 8 + i) * 0x9E3779B97F4A7C15ULL;
    for (int run = 0; run < opts.n_runs + 1; ++run) {  // run 0 is a warm-up
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
      t_start = now();
#ifdef _OPENMP
#pragma omp barrier
#endif
      sums[size_t(tid) * 8] = read(mine, slice);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
      {
        t_end = now();
        uint64_t c = 0;
        for (int t = 0; t < nt; ++t) c += sums[size_t(t) * 8];
        if (run == 0) {
          res.checksum = c;
        } else {
          if (c != res.checksum) mismatch = true;
          const double s = t_end - t_start;
          res.run_gbps.push_back(double(total) / s / 1e9);
          if (res.best_seconds == 0 || s < res.best_seconds) res.best_seconds = s;
        }
      }
    }
  }
  if (mismatch) throw std::runtime_error("membw: checksums differ between runs (memory error?)");
  double sum = 0;
  for (double g : res.run_gbps) sum += g;
  res.mean_gbps = sum / double(res.run_gbps.size());
  res.best_gbps = double(total) / res.best_seconds / 1e9;
  return res;
}

}  // namespace defkv::tools
