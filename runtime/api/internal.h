// What the files of the C API share: the handle structs, the handle registry,
// the exception-to-status runner (guarded), the context's busy flag, the
// frames most entry points run in (model_call, context_call) and the
// output-buffer helpers. Internal to libdefkv: users see only defkv.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/api/defkv.h"
#include "runtime/engine/context.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"
#include "runtime/text/tokenizer.h"

namespace defkv::api {

constexpr uint32_t kModelMagic = 0x4d4b5644;    // "DVKM"
constexpr uint32_t kContextMagic = 0x434b5644;  // "DVKC"

// Thrown inside a call to return `status` with `msg`.
struct ApiError {
  defkv_status status;
  std::string msg;
};

[[noreturn]] inline void raise(defkv_status s, std::string msg) { throw ApiError{s, std::move(msg)}; }

struct AlignedFree {
  void operator()(uint8_t* p) const { std::free(p); }
};

struct ModelImpl {
  std::unique_ptr<uint8_t, AlignedFree> owned;  // copy of a caller buffer
  std::unique_ptr<model::Model> model;
  std::unique_ptr<text::Tokenizer> tok;
  uint64_t fingerprint = 0;
};

// FNV-1a 64: the model fingerprint and the state checksum.
inline uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace defkv::api

struct defkv_model {
  uint32_t magic = defkv::api::kModelMagic;
  std::shared_ptr<defkv::api::ModelImpl> impl;
};

struct defkv_context {
  uint32_t magic = defkv::api::kContextMagic;
  std::shared_ptr<defkv::api::ModelImpl> model;
  std::unique_ptr<defkv::engine::Context> ctx;
  std::unique_ptr<defkv::text::Sampler> sampler;
  std::atomic<bool> cancel{false};
  std::atomic<bool> busy{false};
  std::string last_error;
  int32_t pending = -1;      // sampled, not yet evaluated
  bool have_logits = false;  // ctx->logits() belong to position n_past - 1 and were not sampled yet
  defkv_context_params params{};  // as resolved by defkv_context_create (full struct)
  int32_t last_stop = DEFKV_STOP_NONE;
  int32_t sampled = -1;      // returned by defkv_sample, already in the sampler history, not fed yet
};

namespace defkv::api {

// ---------------------------------------------------------------------------
// Handle registry: a handle is only dereferenced after it was found here.

enum class Kind { model, context };
void reg_add(const void* p, Kind k);
bool reg_has(const void* p, Kind k);
bool reg_remove(const void* p, Kind k);

inline defkv_context* ctx_or_null(const defkv_context* c) {
  return reg_has(c, Kind::context) ? const_cast<defkv_context*>(c) : nullptr;
}

// ---------------------------------------------------------------------------
// Errors.

// Records msg as the thread's last error (and c's, when given); returns s.
defkv_status fail(defkv_context* c, defkv_status s, std::string msg);

// DEFKV_ERR_INVALID_HANDLE from fn for a handle that is NULL or not live.
defkv_status invalid_handle(const defkv_model* m, const char* fn);
defkv_status invalid_handle(const defkv_context* c, const char* fn);

// Maps the exception being handled to a status and the message "fn: what",
// recorded through fail. `runtime_status` is the status of a std::exception
// no more specific handler claims. Call only inside a catch block.
defkv_status fail_current_exception(defkv_context* c, const char* fn, defkv_status runtime_status);

// Runs f, mapping every exception to a status and a message.
template <class F>
defkv_status guarded(defkv_context* c, const char* fn, defkv_status runtime_status, F&& f) {
  try {
    return f();
  } catch (...) {
    return fail_current_exception(c, fn, runtime_status);
  }
}

// Holds the context's busy flag for one call.
struct BusyGuard {
  defkv_context* c;
  explicit BusyGuard(defkv_context* ctx) : c(ctx) {
    if (c->busy.exchange(true, std::memory_order_acquire))
      raise(DEFKV_ERR_BUSY, "another call on this context is running");
  }
  ~BusyGuard() { c->busy.store(false, std::memory_order_release); }
};

// The frame of a call on a model: checks the handle, then runs f under guarded.
template <class F>
defkv_status model_call(const defkv_model* model, const char* fn, defkv_status runtime_status, F&& f) {
  if (!reg_has(model, Kind::model)) return invalid_handle(model, fn);
  return guarded(nullptr, fn, runtime_status, std::forward<F>(f));
}

// A pointer argument a context call requires ({nullptr, nullptr}: none).
struct Required {
  const void* p;
  const char* name;
};

// The frame of a call on a context: checks the handle, then, under guarded,
// checks the required argument (before the busy flag, so a NULL argument is
// reported even while another call runs) and runs f(context) holding the
// context's busy flag.
template <class F>
defkv_status context_call(const defkv_context* ctx, const char* fn, defkv_status runtime_status, Required arg,
                          F&& f) {
  defkv_context* c = ctx_or_null(ctx);
  if (!c) return invalid_handle(ctx, fn);
  return guarded(c, fn, runtime_status, [&] {
    if (arg.name && !arg.p) raise(DEFKV_ERR_INVALID_ARGUMENT, std::string(arg.name) + " is NULL");
    BusyGuard busy(c);
    return f(c);
  });
}

template <class F>
defkv_status context_call(const defkv_context* ctx, const char* fn, defkv_status runtime_status, F&& f) {
  return context_call(ctx, fn, runtime_status, Required{nullptr, nullptr}, std::forward<F>(f));
}

// ---------------------------------------------------------------------------
// Arguments and output buffers.

// Writes s plus a NUL into buf, or reports the size needed.
defkv_status put_string(const std::string& s, char* buf, size_t capacity, size_t* out_len);

template <class T>
defkv_status put_array(const std::vector<T>& v, T* buf, size_t capacity, size_t* n_out) {
  if (!n_out) raise(DEFKV_ERR_INVALID_ARGUMENT, "n_out is NULL");
  *n_out = v.size();
  if (capacity < v.size())
    raise(DEFKV_ERR_BUFFER_TOO_SMALL, "buffer of " + std::to_string(capacity) + " elements, " +
                                          std::to_string(v.size()) + " needed");
  if (!buf && !v.empty()) raise(DEFKV_ERR_INVALID_ARGUMENT, "buffer is NULL");
  if (!v.empty()) std::memcpy(buf, v.data(), v.size() * sizeof(T));
  return DEFKV_OK;
}

// Raises DEFKV_ERR_INVALID_ARGUMENT unless tokens[0, n) are all in m's vocabulary.
void check_tokens(const ModelImpl& m, const int32_t* tokens, size_t n);

}  // namespace defkv::api
