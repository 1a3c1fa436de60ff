// Small helpers for the CLI commands that drive the C API (run, bench):
// owning handles, status -> exception, and peak RSS for the reports.
#pragma once

#include <sys/resource.h>

#include <stdexcept>
#include <string>

#include "runtime/api/defkv.h"

namespace defkv::cli {

// Peak resident set size of this process in MiB.
inline double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Throws the library's message for a failed call, prefixed by `what` failed
// and the status name when `what` is given.
inline void check(defkv_status s, const defkv_context* ctx = nullptr, const char* what = nullptr) {
  if (s == DEFKV_OK) return;
  if (what == nullptr) throw std::runtime_error(defkv_last_error(ctx));
  throw std::runtime_error(std::string(what) + ": " + defkv_status_name(s) + ": " + defkv_last_error(ctx));
}

// Owning wrappers (the library's handles are freed on every path).
struct ModelHandle {
  defkv_model* m = nullptr;
  ModelHandle() = default;
  ModelHandle(const ModelHandle&) = delete;
  ModelHandle& operator=(const ModelHandle&) = delete;
  ~ModelHandle() {
    if (m) defkv_model_free(m);
  }
};
struct ContextHandle {
  defkv_context* c = nullptr;
  ContextHandle() = default;
  ContextHandle(const ContextHandle&) = delete;
  ContextHandle& operator=(const ContextHandle&) = delete;
  ~ContextHandle() {
    if (c) defkv_context_free(c);
  }
};

}  // namespace defkv::cli
