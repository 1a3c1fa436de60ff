// The C API (defkv.h) over the engine: handle registry, error strings,
// exception-to-status mapping, pending-token bookkeeping, streaming UTF-8,
// cancellation and the versioned, checksummed state format.
#include "runtime/api/defkv.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/api/internal.h"
#include "runtime/engine/context.h"
#include "runtime/engine/generate.h"
#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"
#include "runtime/text/chat_template.h"
#include "runtime/text/sampler.h"
#include "runtime/text/tokenizer.h"

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

// Writes s plus a NUL into buf, or reports the size needed.
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

namespace {

void check_cancel(const defkv_context* c) {
  if (c->cancel.load(std::memory_order_relaxed)) throw model::Cancelled("cancelled");
}

}  // namespace

// ===========================================================================

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

// ---- contexts ----

}  // extern "C"

namespace {

defkv_context_params default_params() {
  defkv_context_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.kv_policy = DEFKV_POLICY_DEFENSIVEKV;
  p.kv_schedule = DEFKV_SCHEDULE_DEFAULT;
  p.kv_type = DEFKV_KV_F16;
  const text::SamplerParams sp;
  p.temperature = sp.temperature;
  p.top_k = sp.top_k;
  p.top_p = sp.top_p;
  p.min_p = sp.min_p;
  p.repeat_penalty = sp.repeat_penalty;
  p.repeat_last_n = sp.repeat_last_n;
  p.seed = sp.seed;
  const evict::Params ep;
  p.kv_pool = ep.kernel;
  p.kv_sinks = -1;  // the engine's default
  return p;
}

// defkv_kv_policy <-> evict::Policy (names and traits: evict::policies()).
constexpr std::pair<int32_t, evict::Policy> kApiPolicies[] = {
    {DEFKV_POLICY_DEFENSIVEKV, evict::Policy::defensivekv}, {DEFKV_POLICY_LAYER_DEFENSIVEKV, evict::Policy::layer_defensivekv},
    {DEFKV_POLICY_CRITICALKV, evict::Policy::criticalkv},   {DEFKV_POLICY_ADAKV, evict::Policy::adakv},
    {DEFKV_POLICY_SNAPKV, evict::Policy::snapkv},           {DEFKV_POLICY_STREAMING, evict::Policy::streaming}};

bool api_policy(int32_t v, evict::Policy* out) {
  for (const auto& [api, pol] : kApiPolicies)
    if (api == v) { *out = pol; return true; }
  return false;
}

evict::Policy api_to_policy(int32_t v, const char* field) {
  evict::Policy p;
  if (!api_policy(v, &p)) raise(DEFKV_ERR_INVALID_ARGUMENT, std::string("unknown ") + field + " " + std::to_string(v));
  return p;
}

int32_t policy_to_api(evict::Policy p) {
  for (const auto& [api, pol] : kApiPolicies)
    if (pol == p) return api;
  return -1;
}

// The caller's struct, which must have this header's layout.
defkv_context_params read_params(const defkv_context_params* params) {
  if (!params) return default_params();
  if (params->struct_size != sizeof(defkv_context_params))
    raise(DEFKV_ERR_INVALID_ARGUMENT,
          "params->struct_size = " + std::to_string(params->struct_size) + ", this library's defkv_context_params has " +
              std::to_string(sizeof(defkv_context_params)) +
              " bytes (initialise params with defkv_context_params_init; a program built against the header of "
              "another ABI version must be rebuilt, this library has ABI " + std::to_string(DEFKV_ABI_VERSION) + ")");
  return *params;
}

}  // namespace

extern "C" {

void defkv_context_params_init(defkv_context_params* p) {
  if (p) *p = default_params();
}

defkv_status defkv_context_create(defkv_model* model, const defkv_context_params* params, defkv_context** out) {
  DEFKV_CHECK_MODEL(model);
  return guarded(nullptr, __func__, DEFKV_ERR_INVALID_ARGUMENT, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    const defkv_context_params p = read_params(params);
    engine::ContextParams cp;
    cp.n_threads = p.n_threads;
    cp.n_ctx = p.n_ctx;
    if (p.kv_budget_tokens != 0) cp.budget_tokens = p.kv_budget_tokens;
    if (p.kv_ratio != 0) cp.kv_ratio = p.kv_ratio;
    if (p.kv_mem_bytes != 0) cp.kv_mem_bytes = p.kv_mem_bytes;
    cp.evict.policy = api_to_policy(p.kv_policy, "kv_policy");
    switch (p.kv_schedule) {
      case DEFKV_SCHEDULE_DEFAULT: break;
      case DEFKV_SCHEDULE_BOUNDED: cp.schedule = engine::Schedule::bounded; break;
      case DEFKV_SCHEDULE_ONESHOT: cp.schedule = engine::Schedule::oneshot; break;
      default: raise(DEFKV_ERR_INVALID_ARGUMENT, "unknown kv_schedule " + std::to_string(p.kv_schedule));
    }
    switch (p.kv_type) {
      case DEFKV_KV_F16: cp.kv_type = quant::DType::f16; break;
      case DEFKV_KV_F32: cp.kv_type = quant::DType::f32; break;
      case DEFKV_KV_Q8_0: cp.kv_type = quant::DType::q8_0; break;
      default: raise(DEFKV_ERR_INVALID_ARGUMENT, "unknown kv_type " + std::to_string(p.kv_type));
    }
    cp.chunk_tokens = p.prefill_chunk_tokens;
    if (p.kv_window) cp.evict.window = p.kv_window;
    if (p.kv_sinks >= 0) cp.evict.n_sink = uint32_t(p.kv_sinks);
    if (p.kv_pool) cp.evict.kernel = p.kv_pool;
    text::SamplerParams sp;
    sp.temperature = p.temperature;
    sp.top_k = p.top_k;
    sp.top_p = p.top_p;
    sp.min_p = p.min_p;
    sp.repeat_penalty = p.repeat_penalty;
    sp.repeat_last_n = p.repeat_last_n;
    sp.seed = p.seed;

    auto c = std::make_unique<defkv_context>();
    c->model = model->impl;
    c->sampler = std::make_unique<text::Sampler>(sp);
    c->ctx = std::make_unique<engine::Context>(*c->model->model, cp);
    c->ctx->set_cancel_flag(&c->cancel);
    c->params = p;
    defkv_context* raw = c.release();
    reg_add(raw, Kind::context);
    *out = raw;
    return DEFKV_OK;
  });
}

defkv_status defkv_context_free(defkv_context* ctx) {
  DEFKV_CHECK_CTX(ctx);
  if (ctx->busy.load())
    return fail(nullptr, DEFKV_ERR_BUSY, "defkv_context_free: a call on this context is running");
  if (!reg_remove(ctx, Kind::context))
    return fail(nullptr, DEFKV_ERR_INVALID_HANDLE, "defkv_context_free: not a live context handle (freed twice?)");
  delete ctx;
  return DEFKV_OK;
}

defkv_status defkv_reset(defkv_context* ctx) {
  DEFKV_CHECK_CTX(ctx);
  return guarded(ctx, __func__, DEFKV_ERR_INTERNAL, [&] {
    BusyGuard busy(ctx);
    ctx->ctx->reset();
    ctx->sampler->reset();
    ctx->pending = -1;
    ctx->have_logits = false;
    ctx->last_stop = DEFKV_STOP_NONE;
    ctx->sampled = -1;
    return DEFKV_OK;
  });
}

defkv_status defkv_n_past(const defkv_context* ctx, uint32_t* out) {
  DEFKV_CHECK_CTX(ctx);
  defkv_context* c = const_cast<defkv_context*>(ctx);
  return guarded(c, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    BusyGuard busy(c);
    *out = c->ctx->n_past();
    return DEFKV_OK;
  });
}

defkv_status defkv_n_ctx(const defkv_context* ctx, uint32_t* out) {
  DEFKV_CHECK_CTX(ctx);
  defkv_context* c = const_cast<defkv_context*>(ctx);
  if (!out) return fail(c, DEFKV_ERR_INVALID_ARGUMENT, "defkv_n_ctx: out is NULL");
  *out = c->ctx->n_ctx();
  return DEFKV_OK;
}

// ---- evaluation and generation ----

defkv_status defkv_eval(defkv_context* ctx, const int32_t* tokens, size_t n_tokens, defkv_progress_fn progress,
                        void* user) {
  DEFKV_CHECK_CTX(ctx);
  return guarded(ctx, __func__, DEFKV_ERR_INTERNAL, [&] {
    BusyGuard busy(ctx);
    ctx->cancel.store(false);
    check_tokens(*ctx->model, tokens, n_tokens);
    std::vector<int32_t> all;
    all.reserve(n_tokens + 1);
    const bool had_pending = ctx->pending >= 0;
    if (had_pending) all.push_back(ctx->pending);
    all.insert(all.end(), tokens, tokens + n_tokens);
    if (all.empty()) raise(DEFKV_ERR_INVALID_ARGUMENT, "no tokens to evaluate");
    engine::Context& e = *ctx->ctx;
    if (uint64_t(e.n_past()) + all.size() > e.n_ctx())
      raise(DEFKV_ERR_CONTEXT_FULL, std::to_string(all.size()) + " tokens at position " + std::to_string(e.n_past()) +
                                        " exceed n_ctx = " + std::to_string(e.n_ctx()));
    const uint32_t past0 = e.n_past();
    const size_t skip = had_pending ? 1 : 0;  // the pending token is already in the sampler history
    // So is a token defkv_sample returned, when it is fed first.
    const size_t no_accept = skip + ((!had_pending && ctx->sampled >= 0 && tokens[0] == ctx->sampled) ? 1 : 0);
    ctx->sampled = -1;
    auto account = [&](size_t done) {
      for (size_t i = no_accept; i < done; ++i) ctx->sampler->accept(all[i]);
      if (done > 0) ctx->pending = -1;
      ctx->have_logits = done == all.size();
    };
    e.set_progress([&](uint64_t done, uint64_t total) {
      if (progress && progress(done - std::min<uint64_t>(done, skip), total - skip, user))
        throw model::Cancelled("cancelled by the progress callback");
    });
    try {
      e.eval(all);
    } catch (...) {
      e.set_progress({});
      account(e.n_past() - past0);
      throw;
    }
    e.set_progress({});
    account(all.size());
    return DEFKV_OK;
  });
}

defkv_status defkv_generate(defkv_context* ctx, uint32_t n_predict, defkv_token_fn on_token, void* user,
                            uint32_t* n_generated) {
  DEFKV_CHECK_CTX(ctx);
  if (n_generated) *n_generated = 0;
  return guarded(ctx, __func__, DEFKV_ERR_INTERNAL, [&] {
    BusyGuard busy(ctx);
    ctx->cancel.store(false);
    if (!ctx->have_logits && ctx->pending < 0)
      raise(DEFKV_ERR_BAD_STATE, "nothing to continue from: evaluate a prompt with defkv_eval first");
    engine::Context& e = *ctx->ctx;
    text::StreamDecoder dec(*ctx->model->tok, false);
    uint32_t count = 0;
    ctx->sampled = -1;
    auto on_tok = [&](int32_t tok) {
      ++count;
      if (n_generated) *n_generated = count;
      const std::string piece = dec.push(tok);
      return !(on_token && on_token(tok, piece.c_str(), piece.size(), user));
    };
    auto flush = [&] {
      const std::string rest = dec.flush();
      if (!rest.empty() && on_token) on_token(-1, rest.c_str(), rest.size(), user);
    };
    // The loop leaves the last sampled token pending (not fed); the logits
    // are the ones to sample from exactly when no token is pending.
    engine::StopReason stop;
    try {
      const text::Tokenizer& tok = *ctx->model->tok;
      stop = engine::generate(e, *ctx->sampler, n_predict, [&tok](int32_t t) { return tok.is_eog(t); }, ctx->pending,
                              on_tok)
                 .stop;
    } catch (const model::Cancelled&) {
      ctx->have_logits = ctx->pending < 0;
      ctx->last_stop = DEFKV_STOP_CANCELLED;
      flush();
      throw;
    } catch (const engine::NumericError&) {
      ctx->pending = -1;  // the token whose step failed is dropped, and there are no logits
      ctx->have_logits = false;
      ctx->last_stop = DEFKV_STOP_ERROR;
      flush();
      throw;
    } catch (...) {
      ctx->have_logits = ctx->pending < 0;
      ctx->last_stop = DEFKV_STOP_ERROR;
      flush();
      throw;
    }
    ctx->have_logits = ctx->pending < 0;
    flush();
    switch (stop) {
      case engine::StopReason::n_predict: ctx->last_stop = DEFKV_STOP_N_PREDICT; break;
      case engine::StopReason::eos: ctx->last_stop = DEFKV_STOP_EOS; break;
      case engine::StopReason::callback: ctx->last_stop = DEFKV_STOP_CALLBACK; break;
      case engine::StopReason::context_full:
        ctx->last_stop = DEFKV_STOP_CONTEXT_FULL;
        return fail(ctx, DEFKV_ERR_CONTEXT_FULL,
                    "defkv_generate: the context is full (n_ctx = " + std::to_string(e.n_ctx()) + ")");
    }
    return DEFKV_OK;
  });
}

defkv_status defkv_decode(defkv_context* ctx, int32_t token) {
  DEFKV_CHECK_CTX(ctx);
  return guarded(ctx, __func__, DEFKV_ERR_INTERNAL, [&] {
    BusyGuard busy(ctx);
    ctx->cancel.store(false);
    check_tokens(*ctx->model, &token, 1);
    engine::Context& e = *ctx->ctx;
    const uint32_t need = ctx->pending >= 0 ? 2 : 1;
    if (uint64_t(e.n_past()) + need > e.n_ctx())
      raise(DEFKV_ERR_CONTEXT_FULL, std::to_string(need) + " token(s) at position " + std::to_string(e.n_past()) +
                                        " exceed n_ctx = " + std::to_string(e.n_ctx()));
    // The pending token, then `token`: each as one decode step. A step that
    // was cancelled after its forward pass (in the eviction round) still fed it.
    auto feed = [&](int32_t t) {
      const uint32_t past0 = e.n_past();
      try {
        e.step(t);
      } catch (const engine::NumericError&) {
        ctx->have_logits = false;  // the step overwrote the logits, and was rolled back
        throw;
      } catch (...) {
        if (e.n_past() > past0) ctx->have_logits = true;
        throw;
      }
      ctx->have_logits = true;
    };
    if (ctx->pending >= 0) {
      const int32_t t = ctx->pending;
      check_cancel(ctx);
      try {
        feed(t);
      } catch (const engine::NumericError&) {
        ctx->pending = -1;  // dropped: feeding it again would fail again
        throw;
      } catch (...) {
        if (ctx->have_logits) ctx->pending = -1;
        throw;
      }
      ctx->pending = -1;
    }
    check_cancel(ctx);
    const bool in_history = ctx->sampled >= 0 && token == ctx->sampled;  // defkv_sample recorded it
    ctx->sampled = -1;
    const uint32_t past0 = e.n_past();
    try {
      feed(token);
    } catch (...) {
      if (e.n_past() > past0 && !in_history) ctx->sampler->accept(token);
      throw;
    }
    if (!in_history) ctx->sampler->accept(token);
    return DEFKV_OK;
  });
}

// Raises DEFKV_ERR_BAD_STATE unless the context holds the logits of its last
// token (none yet: `what_none`; or the last eval was cancelled short of them).
static void require_logits(const defkv_context* ctx, const char* what_none) {
  if (ctx->have_logits) return;
  raise(DEFKV_ERR_BAD_STATE, ctx->ctx->n_past() == 0
                                 ? std::string(what_none) + ": evaluate a prompt with defkv_eval first"
                                 : std::string("no logits: the last defkv_eval was cancelled before its last token"));
}

defkv_status defkv_sample(defkv_context* ctx, int32_t* out_token) {
  DEFKV_CHECK_CTX(ctx);
  return guarded(ctx, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!out_token) raise(DEFKV_ERR_INVALID_ARGUMENT, "out_token is NULL");
    BusyGuard busy(ctx);
    if (ctx->pending >= 0)
      raise(DEFKV_ERR_BAD_STATE, "a token sampled by defkv_generate is pending: feed it (defkv_decode/defkv_eval) first");
    require_logits(ctx, "nothing to sample from");
    *out_token = ctx->sampler->sample(ctx->ctx->logits());
    ctx->sampled = *out_token;
    return DEFKV_OK;
  });
}

defkv_status defkv_get_logits(const defkv_context* ctx, float* logits, size_t capacity, size_t* n_out) {
  DEFKV_CHECK_CTX(ctx);
  defkv_context* c = const_cast<defkv_context*>(ctx);
  return guarded(c, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!n_out) raise(DEFKV_ERR_INVALID_ARGUMENT, "n_out is NULL");
    BusyGuard busy(c);
    if (c->pending < 0) require_logits(c, "no logits yet");
    const std::span<const float> l = c->ctx->logits();
    *n_out = l.size();
    if (capacity < l.size())
      raise(DEFKV_ERR_BUFFER_TOO_SMALL, "buffer of " + std::to_string(capacity) + " floats, " +
                                            std::to_string(l.size()) + " needed");
    if (!logits) raise(DEFKV_ERR_INVALID_ARGUMENT, "logits is NULL");
    std::memcpy(logits, l.data(), l.size() * sizeof(float));
    return DEFKV_OK;
  });
}

defkv_status defkv_cancel(defkv_context* ctx) {
  DEFKV_CHECK_CTX(ctx);
  ctx->cancel.store(true);
  return DEFKV_OK;
}

// ---- introspection ----

defkv_status defkv_get_kv_stats(const defkv_context* ctx, defkv_kv_stats* out) {
  DEFKV_CHECK_CTX(ctx);
  defkv_context* c = const_cast<defkv_context*>(ctx);
  return guarded(c, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    BusyGuard busy(c);
    const engine::Context& e = *c->ctx;
    const engine::Stats& st = e.stats();
    defkv_kv_stats s{};
    s.bytes_in_use = e.cache().bytes_in_use();
    s.bytes_reserved = e.cache().bytes_reserved();
    s.bytes_peak = st.kv_bytes_peak;
    s.entries = e.cache().entries();
    s.n_layer = e.model().config().n_layer;
    s.n_head_kv = e.model().config().n_head_kv;
    s.n_past = e.n_past();
    s.budget_tokens = e.budget_tokens();
    s.evict_rounds = st.evict_rounds;
    s.pending_token = c->pending >= 0;
    s.prompt_tokens = st.prompt_tokens;
    s.decode_tokens = st.decode_tokens;
    s.prompt_seconds = st.prompt_seconds;
    s.decode_seconds = st.decode_seconds;
    s.evict_seconds = st.evict_seconds;
    *out = s;
    return DEFKV_OK;
  });
}

defkv_status defkv_kv_entries(const defkv_context* ctx, uint32_t* counts, size_t capacity, size_t* n_out) {
  DEFKV_CHECK_CTX(ctx);
  defkv_context* c = const_cast<defkv_context*>(ctx);
  return guarded(c, __func__, DEFKV_ERR_INTERNAL, [&] {
    BusyGuard busy(c);
    const model::Config& mc = c->ctx->model().config();
    std::vector<uint32_t> v(size_t(mc.n_layer) * mc.n_head_kv);
    for (uint32_t l = 0; l < mc.n_layer; ++l)
      for (uint32_t h = 0; h < mc.n_head_kv; ++h) v[size_t(l) * mc.n_head_kv + h] = c->ctx->cache().size(l, h);
    return put_array(v, counts, capacity, n_out);
  });
}

defkv_status defkv_kv_positions(const defkv_context* ctx, uint32_t layer, uint32_t head, int32_t* positions,
                                size_t capacity, size_t* n_out) {
  DEFKV_CHECK_CTX(ctx);
  defkv_context* c = const_cast<defkv_context*>(ctx);
  return guarded(c, __func__, DEFKV_ERR_INTERNAL, [&] {
    BusyGuard busy(c);
    const model::Config& mc = c->ctx->model().config();
    if (layer >= mc.n_layer || head >= mc.n_head_kv)
      raise(DEFKV_ERR_INVALID_ARGUMENT, "layer " + std::to_string(layer) + " head " + std::to_string(head) +
                                            " outside the model's " + std::to_string(mc.n_layer) + " layers x " +
                                            std::to_string(mc.n_head_kv) + " KV heads");
    return put_array(c->ctx->cache().positions(layer, head), positions, capacity, n_out);
  });
}

const char* defkv_kv_policy_name(int32_t policy) {
  evict::Policy p;
  return api_policy(policy, &p) ? evict::policy_name(p) : nullptr;
}

int32_t defkv_kv_policy_from_name(const char* name) {
  evict::Policy p;
  return name && evict::parse_policy(name, &p) ? policy_to_api(p) : -1;
}

const char* defkv_stop_reason_name(int32_t reason) {
  switch (reason) {
    case DEFKV_STOP_NONE: return "none";
    case DEFKV_STOP_N_PREDICT: return "n_predict";
    case DEFKV_STOP_EOS: return "eos";
    case DEFKV_STOP_CALLBACK: return "callback";
    case DEFKV_STOP_CONTEXT_FULL: return "context_full";
    case DEFKV_STOP_CANCELLED: return "cancelled";
    case DEFKV_STOP_ERROR: return "error";
  }
  return "unknown";
}

defkv_status defkv_context_get_info(const defkv_context* ctx, defkv_context_info* out) {
  DEFKV_CHECK_CTX(ctx);
  defkv_context* c = const_cast<defkv_context*>(ctx);
  return guarded(c, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    if (out->struct_size < sizeof(uint32_t))
      raise(DEFKV_ERR_INVALID_ARGUMENT, "out->struct_size = " + std::to_string(out->struct_size) +
                                            " (set it to sizeof(defkv_context_info))");
    BusyGuard busy(c);
    const engine::Context& e = *c->ctx;
    const engine::ContextParams& ep = e.params();
    defkv_context_info i{};
    i.struct_size = uint32_t(std::min<size_t>(out->struct_size, sizeof i));
    i.n_ctx = e.n_ctx();
    i.n_threads = ep.n_threads ? ep.n_threads : uint32_t(omp_get_max_threads());
    i.has_budget = e.has_budget() ? 1 : 0;
    i.kv_policy = c->params.kv_policy;
    i.kv_schedule = e.schedule() == engine::Schedule::bounded ? DEFKV_SCHEDULE_BOUNDED : DEFKV_SCHEDULE_ONESHOT;
    i.kv_type = c->params.kv_type;
    i.kv_window = ep.evict.window;
    i.kv_sinks = ep.evict.n_sink;
    i.kv_pool = ep.evict.kernel;
    i.prefill_chunk_tokens = e.chunk_tokens();
    i.decode_slack_tokens = e.decode_slack();
    i.budget_tokens = e.budget_tokens();
    i.kv_row_bytes = e.cache().row_bytes();
    i.kv_bytes_reserved = e.cache().bytes_reserved();
    i.last_stop_reason = c->last_stop;
    std::memcpy(static_cast<void*>(out), &i, i.struct_size);
    return DEFKV_OK;
  });
}

}  // extern "C"
