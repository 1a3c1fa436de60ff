// Planning: a context's parameters resolved against a model into the sizes
// everything is allocated with, once, before anything is allocated. A pure
// function of (model config, params), tested on its own (test_engine
// "[plan]").
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <vector>

#include "runtime/engine/params.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"

namespace defkv::engine {

// Prefill chunk without a bounded budget: large batches prefill fastest, and
// memory is n_ctx per head anyway.
constexpr uint32_t kFullCacheChunkTokens = 256;

// Default bounded chunk for a largest budget of b_max tokens per head: a
// third of it in multiples of 64, between min_chunk = max(64, 2 * window) and
// 256. Every round scores every entry, so on long prompts fewer, larger rounds
// cost less; resident KV stays within budget + a third.
uint32_t bounded_chunk_tokens(uint64_t b_max, uint32_t min_chunk);

// Aux floats stored with every KV entry (the cache appends them with the
// entry; the engine fills them in its layer observer).
enum AuxSlot : uint32_t {
  kAuxValueNorm = 0,  // value-projection L1 norm (docs/eviction.md, step 3)
  kAuxLookahead = 1,  // bounded: the entry's lookahead score (lookahead.h)
};

struct Plan {
  uint32_t n_ctx = 0;          // positions [0, n_ctx)
  Schedule schedule = Schedule::oneshot;
  bool budgeted = false;       // a budget was requested: eviction enabled
  bool bounded = false;        // budgeted and the bounded schedule
  uint32_t budget = 0;         // tokens per head; 0 until the first prompt fixes a kv_ratio budget
  uint32_t budget_max = 0;     // the largest budget the pool must hold (kv_ratio: of an n_ctx prompt)
  uint32_t chunk = 0;          // prefill tokens per forward pass
  uint32_t slack = 0;          // bounded decoding: tokens between eviction rounds
  uint32_t window = 0;         // observation window (queries kept for a round)
  uint32_t n_aux = 0;          // aux floats per KV entry (AuxSlot)
  bool value_norms = false;    // kAuxValueNorm is filled
  bool lookahead = false;      // bounded and a scored policy: interim rounds use a Lookahead
  kv::CacheConfig cache;       // the pool, capacity_entries included
  // Sliding-window layers (window_layers.cpp): layer_window[l] > 0 for a layer whose
  // window is shorter than n_ctx (it keeps only what its window still sees,
  // outside the budget); evict_layers: the others, which budgets count and
  // eviction rounds score, ascending.
  std::vector<uint32_t> layer_window;  // [n_layer]
  std::vector<uint32_t> evict_layers;
  // Bounded: entries per head may reach budget + max(chunk, slack) before a
  // round brings them back (the ceiling the pool is sized for).
  uint64_t ceiling_tokens() const { return uint64_t(budget) + (chunk > slack ? chunk : slack); }
};

// Pool entries the sliding-window layers need for batches of up to max_batch
// tokens: per head, window + page_tokens - 1 kept between batches plus the
// batch, plus a page for a partly filled first page (window_layers.cpp).
uint64_t window_pool_entries(const model::Config& mc, const std::vector<uint32_t>& window, uint32_t n_ctx,
                             uint32_t page_tokens, uint32_t max_batch);

// Validates the parameters (validate_params, then the ones that depend on
// the model: a kv_mem_bytes budget must fit) and computes the plan. Throws
// ParamError / std::invalid_argument with a message naming the parameter.
Plan plan_context(const model::Config& mc, const ContextParams& p);

// Memory this process may use: physical RAM, or the cgroup's memory.max when
// that is lower; 0 when unknown.
uint64_t usable_memory_bytes();

// Memory this process can still take without swapping or being killed:
// MemAvailable (/proc/meminfo; it counts reclaimable page cache), or what the
// cgroup's memory.max leaves above memory.current when that is lower;
// nullopt when neither is known.
std::optional<uint64_t> available_memory_bytes();

// A context or model that cannot fit in memory: the message gives the bytes
// it needs and the bytes there are.
struct ResourceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace defkv::engine
