// The generation loop: sample from the context's logits, feed the token as a
// decode step, repeat. The C API (defkv_generate), hence the CLI, and the
// tests all run this one loop.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/text/sampler.h"

namespace defkv::engine {

enum class StopReason { n_predict, eos, callback, context_full };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int32_t> tokens;  // tokens sampled by this call (EOS included if sampled)
  StopReason stop = StopReason::n_predict;
};

using TokenFn = std::function<bool(int32_t)>;

// Samples up to n_predict tokens. `pending` is a token sampled earlier and
// not fed yet (-1: none, then ctx.logits() are sampled from first); it is fed
// as a decode step before the next sample. The last token sampled is left in
// `pending`, not fed (its logits are only needed to continue). on_token (may
// be empty) sees each token as it is sampled; returning false stops. Stops
// (StopReason::eos) after reporting a token for which is_end is true (e.g.
// text::Tokenizer::is_eog: EOS, EOT, <|im_end|>, ...), and when the context
// is full (a pending token has no position left). Cancellation (ctx's flag)
// throws model::Cancelled; `pending` then tells whether the token was fed.
GenerateResult generate(Context& ctx, text::Sampler& sampler, uint32_t n_predict, const TokenFn& is_end,
                        int32_t& pending, const TokenFn& on_token = {});

// eval(prompt) (its tokens enter the sampler's history), then generate().
GenerateResult generate(Context& ctx, std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                        const TokenFn& is_end, const TokenFn& on_token = {});
// The same, ending at the token `eos` (< 0: none).
GenerateResult generate(Context& ctx, std::span<const int32_t> prompt, uint32_t n_predict, text::Sampler& sampler,
                        int32_t eos, const TokenFn& on_token = {});

}  // namespace defkv::engine
