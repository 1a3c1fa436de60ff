// The C API's library-wide parts: the handle registry, the thread's and the
// contexts' error strings and the exception-to-status mapping every call
// runs under (internal.h declares them for the other files: model.cpp,
// text.cpp, context.cpp, generate.cpp, state.cpp), the output-buffer
// helpers, and defkv_version, defkv_status_name and defkv_last_error.
#include "runtime/api/defkv.h"

#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "runtime/api/internal.h"
#include "runtime/engine/context.h"
#include "runtime/gguf/gguf.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"

#ifndef DEFKV_VERSION
#define DEFKV_VERSION DEFKV_VERSION_STRING
#endif

using namespace defkv;
using namespace defkv::api;

namespace {

thread_local std::string tl_error;

std::mutex g_reg_mutex;
std::unordered_map<const void*, Kind>& registry() {
  static auto* r = new std::unordered_map<const void*, Kind>();  // never destroyed (safe at exit)
  return *r;
}

// The defkv_context_params field of an engine::ContextParams member (ParamError::field).
std::string api_field(const std::string& f) {
  static const std::pair<const char*, const char*> names[] = {
      {"budget_tokens", "kv_budget_tokens"}, {"kv_ratio", "kv_ratio"},       {"kv_mem_bytes", "kv_mem_bytes"},
      {"kv_type", "kv_type"},                {"evict.policy", "kv_policy"},  {"evict.window", "kv_window"},
      {"evict.kernel", "kv_pool"},           {"evict.n_sink", "kv_sinks"},
      {"chunk_tokens", "prefill_chunk_tokens"}};
  for (const auto& [engine_name, api_name] : names)
    if (f == engine_name) return api_name;
  return f;
}

}  // namespace

namespace defkv::api {

void reg_add(const void* p, Kind k) {
  std::lock_guard<std::mutex> lk(g_reg_mutex);
  registry()[p] = k;
}
bool reg_has(const void* p, Kind k) {
  if (p == nullptr) return false;
  std::lock_guard<std::mutex> lk(g_reg_mutex);
  auto it = registry().find(p);
  return it != registry().end() && it->second == k;
}
bool reg_remove(const void* p, Kind k) {
  std::lock_guard<std::mutex> lk(g_reg_mutex);
  auto it = registry().find(p);
  if (it == registry().end() || it->second != k) return false;
  registry().erase(it);
  return true;
}

defkv_status fail(defkv_context* c, defkv_status s, std::string msg) {
  tl_error = msg;
  if (c) c->last_error = std::move(msg);
  return s;
}

defkv_status invalid_handle(const defkv_model* m, const char* fn) {
  return fail(nullptr, DEFKV_ERR_INVALID_HANDLE,
              std::string(fn) + ": " + (m ? "not a live model handle" : "model is NULL"));
}

defkv_status invalid_handle(const defkv_context* c, const char* fn) {
  return fail(nullptr, DEFKV_ERR_INVALID_HANDLE,
              std::string(fn) + ": " + (c ? "not a live context handle" : "context is NULL"));
}

defkv_status fail_current_exception(defkv_context* c, const char* fn, defkv_status runtime_status) {
  const std::string where = std::string(fn) + ": ";
  try {
    throw;
  } catch (const ApiError& e) {
    // BUSY: another thread owns the context (and its error string).
    return fail(e.status == DEFKV_ERR_BUSY ? nullptr : c, e.status, where + e.msg);
  } catch (const model::Cancelled& e) {
    return fail(c, DEFKV_ERR_CANCELLED, where + e.what());
  } catch (const engine::ParamError& e) {
    return fail(c, DEFKV_ERR_INVALID_ARGUMENT, where + api_field(e.field) + " " + e.rest);
  } catch (const engine::StateMismatch& e) {
    return fail(c, DEFKV_ERR_MISMATCH, where + e.what());
  } catch (const engine::NumericError& e) {
    return fail(c, DEFKV_ERR_NUMERIC, where + e.what());
  } catch (const engine::ResourceError& e) {
    return fail(c, DEFKV_ERR_OUT_OF_MEMORY, where + e.what());
  } catch (const gguf::Error& e) {
    return fail(c, DEFKV_ERR_FORMAT, where + e.what());
  } catch (const kv::CacheFull& e) {
    return fail(c, DEFKV_ERR_CONTEXT_FULL, where + e.what());
  } catch (const std::length_error& e) {
    return fail(c, DEFKV_ERR_CONTEXT_FULL, where + e.what());
  } catch (const std::invalid_argument& e) {
    return fail(c, DEFKV_ERR_INVALID_ARGUMENT, where + e.what());
  } catch (const std::out_of_range& e) {
    return fail(c, DEFKV_ERR_INVALID_ARGUMENT, where + e.what());
  } catch (const std::bad_alloc&) {
    return fail(c, DEFKV_ERR_OUT_OF_MEMORY, where + "out of memory");
  } catch (const std::logic_error& e) {
    return fail(c, DEFKV_ERR_INTERNAL, where + "internal error: " + e.what());
  } catch (const std::exception& e) {
    return fail(c, runtime_status, where + e.what());
  } catch (...) {
    return fail(c, DEFKV_ERR_INTERNAL, where + "unknown exception");
  }
}

defkv_status put_string(const std::string& s, char* buf, size_t capacity, size_t* out_len) {
  if (!out_len) raise(DEFKV_ERR_INVALID_ARGUMENT, "out_len is NULL");
  *out_len = s.size();
  if (capacity < s.size() + 1) {
    raise(DEFKV_ERR_BUFFER_TOO_SMALL, "buffer of " + std::to_string(capacity) + " bytes, " +
                                          std::to_string(s.size() + 1) + " needed (NUL included)");
  }
  if (!buf) raise(DEFKV_ERR_INVALID_ARGUMENT, "buf is NULL");
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  return DEFKV_OK;
}

void check_tokens(const ModelImpl& m, const int32_t* tokens, size_t n) {
  if (n && !tokens) raise(DEFKV_ERR_INVALID_ARGUMENT, "tokens is NULL");
  const uint32_t V = m.model->config().n_vocab;
  for (size_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || uint32_t(tokens[i]) >= V)
      raise(DEFKV_ERR_INVALID_ARGUMENT, "token " + std::to_string(i) + " = " + std::to_string(tokens[i]) +
                                            " is outside the vocabulary [0, " + std::to_string(V) + ")");
}

}  // namespace defkv::api

extern "C" {

const char* defkv_version(int* major, int* minor, int* patch) {
  if (major) *major = DEFKV_VERSION_MAJOR;
  if (minor) *minor = DEFKV_VERSION_MINOR;
  if (patch) *patch = DEFKV_VERSION_PATCH;
  return DEFKV_VERSION;
}

int defkv_abi_version(void) { return DEFKV_ABI_VERSION; }

const char* defkv_status_name(defkv_status s) {
  switch (s) {
    case DEFKV_OK: return "DEFKV_OK";
    case DEFKV_ERR_INVALID_ARGUMENT: return "DEFKV_ERR_INVALID_ARGUMENT";
    case DEFKV_ERR_INVALID_HANDLE: return "DEFKV_ERR_INVALID_HANDLE";
    case DEFKV_ERR_BAD_STATE: return "DEFKV_ERR_BAD_STATE";
    case DEFKV_ERR_BUFFER_TOO_SMALL: return "DEFKV_ERR_BUFFER_TOO_SMALL";
    case DEFKV_ERR_IO: return "DEFKV_ERR_IO";
    case DEFKV_ERR_FORMAT: return "DEFKV_ERR_FORMAT";
    case DEFKV_ERR_MISMATCH: return "DEFKV_ERR_MISMATCH";
    case DEFKV_ERR_CONTEXT_FULL: return "DEFKV_ERR_CONTEXT_FULL";
    case DEFKV_ERR_CANCELLED: return "DEFKV_ERR_CANCELLED";
    case DEFKV_ERR_OUT_OF_MEMORY: return "DEFKV_ERR_OUT_OF_MEMORY";
    case DEFKV_ERR_BUSY: return "DEFKV_ERR_BUSY";
    case DEFKV_ERR_INTERNAL: return "DEFKV_ERR_INTERNAL";
    case DEFKV_ERR_NUMERIC: return "DEFKV_ERR_NUMERIC";
  }
  return "unknown status";
}

const char* defkv_last_error(const defkv_context* ctx) {
  if (ctx == nullptr) return tl_error.c_str();
  defkv_context* c = ctx_or_null(ctx);
  if (!c) {
    tl_error = "defkv_last_error: not a live context handle";
    return tl_error.c_str();
  }
  return c->last_error.c_str();
}

}  // extern "C"
