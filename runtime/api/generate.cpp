// The C API's evaluation and generation: prompts (defkv_eval), single
// tokens (defkv_decode), the sampling loop (defkv_generate), sampling and
// logits, and cancellation. A token defkv_generate sampled last stays
// pending (not yet fed) and is fed first by the next eval or decode; the
// sampler's history records every token exactly once.
#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"
#include "runtime/api/internal.h"
#include "runtime/engine/context.h"
#include "runtime/engine/generate.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"
#include "runtime/text/tokenizer.h"

using namespace defkv;
using namespace defkv::api;

namespace {

void check_cancel(const defkv_context* c) {
  if (c->cancel.load(std::memory_order_relaxed)) throw model::Cancelled("cancelled");
}

// Raises DEFKV_ERR_BAD_STATE unless the context holds the logits of its last
// token (none yet: `what_none`; or the last eval was cancelled short of them).
void require_logits(const defkv_context* ctx, const char* what_none) {
  if (ctx->have_logits) return;
  raise(DEFKV_ERR_BAD_STATE, ctx->ctx->n_past() == 0
                                 ? std::string(what_none) + ": evaluate a prompt with defkv_eval first"
                                 : std::string("no logits: the last defkv_eval was cancelled before its last token"));
}

}  // namespace

extern "C" {

defkv_status defkv_eval(defkv_context* ctx, const int32_t* tokens, size_t n_tokens, defkv_progress_fn progress,
                        void* user) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, [&](defkv_context* c) {
    c->cancel.store(false);
    check_tokens(*c->model, tokens, n_tokens);
    std::vector<int32_t> all;
    all.reserve(n_tokens + 1);
    const bool had_pending = c->pending >= 0;
    if (had_pending) all.push_back(c->pending);
    all.insert(all.end(), tokens, tokens + n_tokens);
    if (all.empty()) raise(DEFKV_ERR_INVALID_ARGUMENT, "no tokens to evaluate");
    engine::Context& e = *c->ctx;
    if (uint64_t(e.n_past()) + all.size() > e.n_ctx())
      raise(DEFKV_ERR_CONTEXT_FULL, std::to_string(all.size()) + " tokens at position " + std::to_string(e.n_past()) +
                                        " exceed n_ctx = " + std::to_string(e.n_ctx()));
    const uint32_t past0 = e.n_past();
    const size_t skip = had_pending ? 1 : 0;  // the pending token is already in the sampler history
    // So is a token defkv_sample returned, when it is fed first.
    const size_t no_accept = skip + ((!had_pending && c->sampled >= 0 && tokens[0] == c->sampled) ? 1 : 0);
    c->sampled = -1;
    auto account = [&](size_t done) {
      for (size_t i = no_accept; i < done; ++i) c->sampler->accept(all[i]);
      if (done > 0) c->pending = -1;
      c->have_logits = done == all.size();
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
  if (!reg_has(ctx, Kind::context)) return invalid_handle(ctx, __func__);
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
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, [&](defkv_context* c) {
    c->cancel.store(false);
    check_tokens(*c->model, &token, 1);
    engine::Context& e = *c->ctx;
    const uint32_t need = c->pending >= 0 ? 2 : 1;
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
        c->have_logits = false;  // the step overwrote the logits, and was rolled back
        throw;
      } catch (...) {
        if (e.n_past() > past0) c->have_logits = true;
        throw;
      }
      c->have_logits = true;
    };
    if (c->pending >= 0) {
      const int32_t t = c->pending;
      check_cancel(c);
      try {
        feed(t);
      } catch (const engine::NumericError&) {
        c->pending = -1;  // dropped: feeding it again would fail again
        throw;
      } catch (...) {
        if (c->have_logits) c->pending = -1;
        throw;
      }
      c->pending = -1;
    }
    check_cancel(c);
    const bool in_history = c->sampled >= 0 && token == c->sampled;  // defkv_sample recorded it
    c->sampled = -1;
    const uint32_t past0 = e.n_past();
    try {
      feed(token);
    } catch (...) {
      if (e.n_past() > past0 && !in_history) c->sampler->accept(token);
      throw;
    }
    if (!in_history) c->sampler->accept(token);
    return DEFKV_OK;
  });
}

defkv_status defkv_sample(defkv_context* ctx, int32_t* out_token) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, {out_token, "out_token"}, [&](defkv_context* c) {
    if (c->pending >= 0)
      raise(DEFKV_ERR_BAD_STATE, "a token sampled by defkv_generate is pending: feed it (defkv_decode/defkv_eval) first");
    require_logits(c, "nothing to sample from");
    *out_token = c->sampler->sample(c->ctx->logits());
    c->sampled = *out_token;
    return DEFKV_OK;
  });
}

defkv_status defkv_get_logits(const defkv_context* ctx, float* logits, size_t capacity, size_t* n_out) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, {n_out, "n_out"}, [&](defkv_context* c) {
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
  if (!reg_has(ctx, Kind::context)) return invalid_handle(ctx, __func__);
  ctx->cancel.store(true);
  return DEFKV_OK;
}

}  // extern "C"
