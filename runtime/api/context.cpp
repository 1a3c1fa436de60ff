// The C API's contexts: parameters (defaults, the policy enum, the struct
// size check), creation on a model, reset and free, and introspection of the
// KV cache and of the settings a context resolved.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"
#include "runtime/api/internal.h"
#include "runtime/engine/context.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"

using namespace defkv;
using namespace defkv::api;

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
  return model_call(model, __func__, DEFKV_ERR_INVALID_ARGUMENT, [&] {
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
  if (!reg_has(ctx, Kind::context)) return invalid_handle(ctx, __func__);
  if (ctx->busy.load())
    return fail(nullptr, DEFKV_ERR_BUSY, "defkv_context_free: a call on this context is running");
  if (!reg_remove(ctx, Kind::context))
    return fail(nullptr, DEFKV_ERR_INVALID_HANDLE, "defkv_context_free: not a live context handle (freed twice?)");
  delete ctx;
  return DEFKV_OK;
}

defkv_status defkv_reset(defkv_context* ctx) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, [&](defkv_context* c) {
    c->ctx->reset();
    c->sampler->reset();
    c->pending = -1;
    c->have_logits = false;
    c->last_stop = DEFKV_STOP_NONE;
    c->sampled = -1;
    return DEFKV_OK;
  });
}

defkv_status defkv_n_past(const defkv_context* ctx, uint32_t* out) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, {out, "out"}, [&](defkv_context* c) {
    *out = c->ctx->n_past();
    return DEFKV_OK;
  });
}

defkv_status defkv_n_ctx(const defkv_context* ctx, uint32_t* out) {
  defkv_context* c = ctx_or_null(ctx);
  if (!c) return invalid_handle(ctx, __func__);
  if (!out) return fail(c, DEFKV_ERR_INVALID_ARGUMENT, "defkv_n_ctx: out is NULL");
  *out = c->ctx->n_ctx();
  return DEFKV_OK;
}

// ---- introspection ----

defkv_status defkv_get_kv_stats(const defkv_context* ctx, defkv_kv_stats* out) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, {out, "out"}, [&](defkv_context* c) {
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
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, [&](defkv_context* c) {
    const model::Config& mc = c->ctx->model().config();
    std::vector<uint32_t> v(size_t(mc.n_layer) * mc.n_head_kv);
    for (uint32_t l = 0; l < mc.n_layer; ++l)
      for (uint32_t h = 0; h < mc.n_head_kv; ++h) v[size_t(l) * mc.n_head_kv + h] = c->ctx->cache().size(l, h);
    return put_array(v, counts, capacity, n_out);
  });
}

defkv_status defkv_kv_positions(const defkv_context* ctx, uint32_t layer, uint32_t head, int32_t* positions,
                                size_t capacity, size_t* n_out) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, [&](defkv_context* c) {
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
  defkv_context* c = ctx_or_null(ctx);
  if (!c) return invalid_handle(ctx, __func__);
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
