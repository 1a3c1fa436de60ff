// Context parameters: the KV budget, its schedule and the eviction policy,
// and the one place they are validated (validate_params, plan.h's
// plan_context). Front-ends (the C API, the CLI) pass the messages through,
// spelling ParamError::field their own way.
//
// KV budget (at most one form; none = full cache, no eviction):
//   budget_tokens  entries per (layer, KV head) on average, i.e. "tokens per
//                  head"; head- and layer-adaptive policies distribute
//                  budget_tokens * n_head_kv * n_layer entries unevenly.
//   kv_ratio       fraction of the prompt KEPT (paper style "cache size":
//                  0.2 keeps 20 %, i.e. kvpress compression_ratio 0.8). The
//                  budget is fixed at the first eval(), when the prompt length
//                  T is known: budget_tokens = floor(T * kv_ratio).
//   kv_mem_bytes   a ceiling on the KV pool's bytes; the budget is the largest
//                  number of tokens per head whose pool (see below) fits,
//                  computed from the cache's real page size (padded q8_0
//                  rows, aligned page sections, aux floats), so the pool's
//                  bytes_reserved() never exceed it.
// A budget must be >= window + n_sink (the observation window and the sinks
// are always kept), else the constructor (or, for kv_ratio, the first eval)
// throws std::invalid_argument.
//
// Schedules (docs/eviction.md "Schedules"):
//   oneshot  the paper's: prefill the whole prompt, compress once to the
//            budget, then decode with no further eviction. Pool: n_ctx per head.
//   bounded  (default when a budget is set) chunked prefill; after each chunk
//            the cache is evicted back to the budget if it exceeds it; during
//            decoding, once the cache holds budget + decode_slack tokens per
//            head it is evicted back to the budget. The pool is sized once:
//            (budget + max(chunk, slack) + page_tokens) tokens per head, so
//            resident KV never exceeds budget + one chunk for any length.
//            The interim rounds of a prefill (every round of an eval() call
//            but the one after its last chunk, whose window is the fed text's
//            tail, e.g. the question) rank entries by a lookahead of that
//            tail (lookahead.h); that last round and decoding rounds score
//            with evict.policy's window.
// Without a budget the pool holds n_ctx tokens per head.
//
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "quant/quant.h"
#include "runtime/evict/evict.h"

namespace defkv::engine {

enum class Schedule { oneshot, bounded };
const char* schedule_name(Schedule s);
bool parse_schedule(std::string_view s, Schedule* out);

struct ContextParams {
  uint32_t n_threads = 0;  // 0: OpenMP default (omp_get_max_threads)
  uint32_t n_ctx = 0;      // positions [0, n_ctx); 0: the model's context_length (2048 if unknown)

  // KV budget, at most one set (see the file comment). Signed so that a zero
  // or negative request is reported instead of wrapping.
  std::optional<int64_t> budget_tokens;
  std::optional<double> kv_ratio;
  std::optional<int64_t> kv_mem_bytes;

  quant::DType kv_type = quant::DType::f16;  // f16 | f32 | q8_0
  // Policy and its parameters. Without a budget no eviction happens whatever
  // the policy; Policy::full with a budget is rejected (it never evicts).
  evict::Params evict;
  std::optional<Schedule> schedule;  // unset: bounded when a budget is set
  // Prefill chunk (tokens per forward call); 0: the default (plan.h,
  // default_chunk_tokens).
  uint32_t chunk_tokens = 0;
  // Bounded decoding evicts every decode_slack tokens. 0: = window, so each
  // round's observation window is exactly the tokens decoded since the last.
  uint32_t decode_slack = 0;
  uint32_t page_tokens = 16;  // KV pool page size in entries
};

// A parameter out of range. `field` is the ContextParams member at fault
// ("budget_tokens", "evict.kernel", "chunk_tokens", ...), `rest` the message
// after it; what() is "context: <field> <rest>". The C API and the CLI catch
// it to name their own spelling of the field (kv_budget_tokens, --kv-budget).
struct ParamError : std::invalid_argument {
  ParamError(std::string field_, std::string rest_)
      : std::invalid_argument("context: " + field_ + " " + rest_), field(std::move(field_)), rest(std::move(rest_)) {}
  std::string field;
  std::string rest;
};

// Checks everything that does not depend on the model (the KV type, the
// budget form and its range, the policy, window and pooling kernel); throws ParamError (std::invalid_argument for a combination of
// fields). plan_context() calls it first.
void validate_params(const ContextParams& p);

// The budget in tokens per head that kv_ratio gives for a prompt of
// prompt_tokens tokens, checked against window + sinks (ParamError on
// "kv_ratio" otherwise).
uint32_t ratio_budget(const ContextParams& p, uint32_t prompt_tokens);

}  // namespace defkv::engine
