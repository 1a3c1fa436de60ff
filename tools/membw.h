// Memory read-bandwidth probe (`defkv bench --membw`): the ceiling that
// decode speed is compared against (decode reads every weight once per token).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace defkv::tools {

struct MembwOptions {
  size_t size_bytes = size_t(1) << 30;  // much larger than the last-level cache
  int n_threads = 0;                    // 0: OpenMP default (all cores)
  int n_runs = 5;                       // the best run is reported
  bool force_scalar = false;            // also forced by DEFKV_FORCE_SCALAR=1
  // Ask for transparent huge pages (madvise MADV_HUGEPAGE) on the buffer:
  // fewer TLB misses and no prefetcher stop at 4 KiB page boundaries. Model
  // weights are a file mapping (4 KiB pages), so the default is off.
  bool huge_pages = false;
};

struct MembwResult {
  double best_gbps = 0;        // 1e9 bytes per second, best run
  double mean_gbps = 0;
  double best_seconds = 0;
  size_t size_bytes = 0;
  int n_threads = 0;
  std::string kernel;          // "avx512" | "scalar"
  bool huge_pages = false;     // MADV_HUGEPAGE was requested and accepted
  uint64_t checksum = 0;       // sum of the buffer's 64-bit words (all runs agree)
  std::vector<double> run_gbps;
};

// Allocates and first-touches the buffer (each thread its own slice), then
// times n_runs streaming reads of the whole buffer by all threads between two
// barriers. Throws std::invalid_argument / std::runtime_error.
MembwResult measure_read_bandwidth(const MembwOptions& opts);

}  // namespace defkv::tools
