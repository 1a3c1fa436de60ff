// The generation loop (generate.h).
#include "runtime/engine/generate.h"

namespace defkv::engine {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::n_predict: return "n_predict";
    case StopReason::eos: return "eos";
    case StopReason::callback: return "callback";
    case StopReason::context_full: return "context_full";
  }
  return "?";
}

GenerateResult generate(Context& ctx, text::Sampler& sampler, uint32_t n_predict, const TokenFn& is_end,
                        int32_t& pending, const TokenFn& on_token) {
  GenerateResult res;
  res.tokens.reserve(n_predict);
  while (res.tokens.size() < n_predict) {
    if (pending >= 0) {
      if (ctx.n_past() >= ctx.n_ctx()) {
        res.stop = StopReason::context_full;
        return res;
      }
      ctx.check_cancel();
      const uint32_t past0 = ctx.n_past();
      try {
        ctx.step(pending);
      } catch (...) {
        if (ctx.n_past() > past0) pending = -1;  // fed; cancelled in the eviction round after it
        throw;
      }
      pending = -1;
    }
    ctx.check_cancel();
    const int32_t tok = sampler.sample(ctx.logits());
    pending = tok;
    res.tokens.push_back(tok);
    const bool go_on = on_token ? on_token(tok) : true;
    if (is_end && is_end(tok)) {
      res.stop = StopReason::eos;
      return res;
    }
    if (!go_on) {
      res.stop = StopReason::callback;
      return res;
    }
  }
  res.stop = StopReason::n_predict;
  return res;
}

GenerateResult generate(Context& ctx, std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                        const TokenFn& is_end, const TokenFn& on_token) {
  for (int32_t t : prompt) sampler.accept(t);
  ctx.eval(prompt);
  int32_t pending = -1;
  return generate(ctx, sampler, n_predict, is_end, pending, on_token);
}

GenerateResult generate(Context& ctx, std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                        int32_t eos, const TokenFn& on_token) {
  return generate(ctx, prompt, n_predict, sampler, [eos](int32_t t) { return eos >= 0 && t == eos; }, on_token);
}

}  // namespace defkv::engine
