// Parameter validation and planning (params.h, plan.h).
#include "runtime/engine/plan.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>

namespace defkv::engine {
namespace {

uint64_t round_up(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }

// Bytes of one KV pool page for this configuration, as the cache lays it out
// (a one-page cache is built and asked).
uint64_t kv_page_bytes(kv::CacheConfig cc) {
  cc.capacity_entries = cc.page_tokens;
  return kv::KvCache(cc).page_bytes();
}

uint64_t min_budget(const ContextParams& p) { return uint64_t(p.evict.window) + p.evict.n_sink; }

}  // namespace

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::oneshot: return "oneshot";
    case Schedule::bounded: return "bounded";
  }
  return "?";
}

bool parse_schedule(std::string_view s, Schedule* out) {
  if (s == "oneshot") { *out = Schedule::oneshot; return true; }
  if (s == "bounded") { *out = Schedule::bounded; return true; }
  return false;
}

void validate_params(const ContextParams& p) {
  if (p.kv_type != quant::DType::f16 && p.kv_type != quant::DType::f32 && p.kv_type != quant::DType::q8_0)
    throw ParamError("kv_type", std::string("is not a supported KV type (") + quant::dtype_name(p.kv_type) +
                                    "; use f16, f32 or q8_0)");
  if (p.page_tokens == 0) throw ParamError("page_tokens", "must be > 0");
  const int n_forms = int(p.budget_tokens.has_value()) + int(p.kv_ratio.has_value()) + int(p.kv_mem_bytes.has_value());
  if (n_forms > 1)
    throw std::invalid_argument("context: set at most one KV budget form (budget_tokens, kv_ratio or kv_mem_bytes)");
  if (n_forms == 1) {
    if (p.evict.policy == evict::Policy::full)
      throw ParamError("evict.policy", "'full' never evicts; drop the KV budget or choose an eviction policy");
    if (p.evict.window == 0) throw ParamError("evict.window", "(the observation window) must be > 0");
    if (p.evict.kernel == 0 || p.evict.kernel % 2 == 0)
      throw ParamError("evict.kernel", "(the pooling kernel) must be odd and > 0 (got " + std::to_string(p.evict.kernel) + ")");
  }
  if (p.budget_tokens) {
    if (*p.budget_tokens <= 0)
      throw ParamError("budget_tokens", "must be a positive number of tokens (got " + std::to_string(*p.budget_tokens) + ")");
    if (uint64_t(*p.budget_tokens) < min_budget(p))
      throw ParamError("budget_tokens", std::to_string(*p.budget_tokens) + " is smaller than window + sinks = " +
                                            std::to_string(min_budget(p)) + " (always kept)");
  } else if (p.kv_ratio) {
    const double r = *p.kv_ratio;
    if (!(r > 0.0 && r <= 1.0))
      throw ParamError("kv_ratio", "is the fraction of the prompt kept and must be in (0, 1] (got " + std::to_string(r) + ")");
  } else if (p.kv_mem_bytes) {
    if (*p.kv_mem_bytes <= 0)
      throw ParamError("kv_mem_bytes", "must be positive (got " + std::to_string(*p.kv_mem_bytes) + ")");
  }
}

uint32_t ratio_budget(const ContextParams& p, uint32_t prompt_tokens) {
  const uint64_t b = uint64_t(std::floor(double(prompt_tokens) * *p.kv_ratio));
  if (b < min_budget(p))
    throw ParamError("kv_ratio", std::to_string(*p.kv_ratio) + " of a " + std::to_string(prompt_tokens) +
                                     "-token prompt gives a budget of " + std::to_string(b) +
                                     " tokens, below window + sinks = " + std::to_string(min_budget(p)));
  return uint32_t(b);
}

uint32_t bounded_chunk_tokens(uint64_t b_max, uint32_t min_chunk) {
  return uint32_t(std::clamp<uint64_t>(b_max / 3 / 64 * 64, min_chunk, std::max<uint32_t>(min_chunk, 256)));
}

uint64_t window_pool_entries(const model::Config& mc, const std::vector<uint32_t>& window, uint32_t n_ctx,
                             uint32_t page_tokens, uint32_t max_batch) {
  const uint64_t P = page_tokens;
  uint64_t n = 0;
  for (uint32_t w : window)
    if (w > 0) n += uint64_t(mc.n_head_kv) * (std::min<uint64_t>(w + P + max_batch, n_ctx) + P);
  return round_up(n, P);
}

Plan plan_context(const model::Config& mc, const ContextParams& p) {
  validate_params(p);
  Plan pl;
  pl.n_ctx = p.n_ctx ? p.n_ctx : (mc.n_ctx_train ? mc.n_ctx_train : 2048);
  // Budgets apply to the layers without a sliding window (or with one that
  // spans the whole context); windowed layers have a fixed share of the pool.
  pl.layer_window.assign(mc.n_layer, 0);
  for (uint32_t l = 0; l < mc.n_layer; ++l) {
    const uint32_t w = l < mc.layer_window.size() ? mc.layer_window[l] : 0;
    if (w > 0 && w < pl.n_ctx) pl.layer_window[l] = w;
    else pl.evict_layers.push_back(l);
  }
  const uint64_t HL = uint64_t(mc.n_head_kv) * pl.evict_layers.size();  // budgeted (layer, head) pairs
  const uint64_t HLd = std::max<uint64_t>(HL, 1);                        // as a divisor
  pl.budgeted = p.budget_tokens || p.kv_ratio || p.kv_mem_bytes;
  pl.window = p.evict.window;
  pl.schedule = p.schedule.value_or(pl.budgeted ? Schedule::bounded : Schedule::oneshot);
  pl.bounded = pl.budgeted && pl.schedule == Schedule::bounded;
  const uint32_t min_chunk = pl.bounded ? std::max<uint32_t>(64, 2 * pl.window) : kFullCacheChunkTokens;
  // No forward pass holds more than n_ctx tokens: a larger chunk would only
  // size the scratch for batches that cannot occur.
  pl.chunk = p.chunk_tokens ? std::min(p.chunk_tokens, pl.n_ctx) : min_chunk;
  pl.slack = p.decode_slack ? p.decode_slack : std::max<uint32_t>(pl.window, 1);

  pl.value_norms = pl.budgeted && evict::traits(p.evict.policy).value_norms;
  pl.lookahead = pl.bounded && evict::traits(p.evict.policy).scored;
  pl.n_aux = pl.lookahead ? kAuxLookahead + 1 : pl.value_norms ? kAuxValueNorm + 1 : 0;
  kv::CacheConfig& cc = pl.cache;
  cc.n_layer = mc.n_layer;
  cc.n_head_kv = mc.n_head_kv;
  cc.head_dim = mc.head_dim;
  cc.type = p.kv_type;
  cc.page_tokens = p.page_tokens;
  cc.n_aux = pl.n_aux;

  // Budget in tokens per head.
  if (p.budget_tokens) {
    pl.budget = uint32_t(std::min<int64_t>(*p.budget_tokens, pl.n_ctx));
  } else if (p.kv_ratio) {
    pl.budget = 0;  // fixed by the first prompt (ratio_budget)
  } else if (p.kv_mem_bytes) {
    // The pool is whole pages of the cache's own layout (rows padded to the
    // q8_0 block, each section of a page aligned), so the budget comes from
    // the real page size, not a per-entry estimate: the largest budget b
    // whose pool (b + max(chunk, slack) + page, below) fits in whole pages.
    // Sliding-window layers first take their share for batches of `chunk`
    // tokens; the rest holds fit(chunk) tokens per head of the other layers.
    const uint64_t page_bytes = kv_page_bytes(cc);
    const uint64_t all_pages = uint64_t(*p.kv_mem_bytes) / page_bytes;
    const auto fit_for = [&](uint32_t chunk) -> uint64_t {
      const uint64_t swa_pages = window_pool_entries(mc, pl.layer_window, pl.n_ctx, p.page_tokens, chunk) / p.page_tokens;
      return all_pages > swa_pages ? (all_pages - swa_pages) * p.page_tokens / HLd : 0;
    };
    if (fit_for(pl.chunk) == 0)
      throw ParamError("kv_mem_bytes", std::to_string(*p.kv_mem_bytes) + " does not cover the sliding-window layers' " +
                                           std::to_string(window_pool_entries(mc, pl.layer_window, pl.n_ctx, p.page_tokens, pl.chunk) /
                                                          p.page_tokens * page_bytes) + " bytes");
    const uint64_t fit = fit_for(pl.chunk);  // tokens per head the pages hold
    const uint64_t per_token = (page_bytes * HLd + p.page_tokens - 1) / p.page_tokens;  // for the message
    int64_t b = int64_t(fit) - int64_t((pl.bounded ? std::max(pl.chunk, pl.slack) : 0) + p.page_tokens);
    if (pl.bounded && p.chunk_tokens == 0)  // the largest b whose default chunk still fits
      for (b = int64_t(fit) - int64_t(p.page_tokens) - 1; b > 0; --b) {
        const uint32_t c = bounded_chunk_tokens(uint64_t(b), min_chunk);
        if (uint64_t(b) + std::max<uint64_t>(c, pl.slack) + p.page_tokens <= fit_for(c)) break;
      }
    if (b < int64_t(min_budget(p)))
      throw ParamError("kv_mem_bytes", std::to_string(*p.kv_mem_bytes) + " holds " + std::to_string(std::max<int64_t>(b, 0)) +
                                           " tokens per head after the chunk/slack/page reserve, below window + sinks = " +
                                           std::to_string(min_budget(p)) + " (one token costs " +
                                           std::to_string(per_token) + " bytes)");
    if (!pl.bounded && fit < uint64_t(pl.n_ctx) + p.page_tokens)
      throw ParamError("kv_mem_bytes", "with the oneshot schedule must hold the full n_ctx = " + std::to_string(pl.n_ctx) +
                                           " tokens per head (the paper's schedule prefills everything); use the "
                                           "bounded schedule");
    pl.budget = uint32_t(std::min<int64_t>(b, pl.n_ctx));
  }
  pl.budget_max = p.kv_ratio ? uint32_t(std::ceil(double(pl.n_ctx) * *p.kv_ratio)) : pl.budget;
  if (pl.bounded && p.chunk_tokens == 0) pl.chunk = bounded_chunk_tokens(pl.budget_max, min_chunk);

  // Pool size (tokens per head), fixed for the context's lifetime: the
  // bounded ceiling, else every position; plus one page of slack for the
  // page rounding of each head.
  const uint64_t per_head = pl.bounded ? std::min<uint64_t>(uint64_t(pl.budget_max) + std::max(pl.chunk, pl.slack), pl.n_ctx)
                                       : uint64_t(pl.n_ctx);
  cc.capacity_entries = round_up((per_head + p.page_tokens) * HL, p.page_tokens) +
                        window_pool_entries(mc, pl.layer_window, pl.n_ctx, p.page_tokens, pl.chunk);
  return pl;
}

uint64_t usable_memory_bytes() {
  uint64_t ram = 0;
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) ram = uint64_t(pages) * uint64_t(page);
  std::ifstream in("/sys/fs/cgroup/memory.max");  // cgroup v2; "max" when unlimited
  uint64_t limit = 0;
  if (in >> limit && limit > 0 && (ram == 0 || limit < ram)) ram = limit;
  return ram;
}

std::optional<uint64_t> available_memory_bytes() {
  std::optional<uint64_t> avail;
  std::ifstream meminfo("/proc/meminfo");
  std::string key, rest;
  uint64_t kib = 0;
  while (meminfo >> key >> kib && std::getline(meminfo, rest))
    if (key == "MemAvailable:") {
      avail = kib * 1024;
      break;
    }
  std::ifstream max("/sys/fs/cgroup/memory.max"), current("/sys/fs/cgroup/memory.current");
  uint64_t limit = 0, used = 0;
  if (max >> limit && current >> used) {  // "max" (unlimited) fails to parse
    const uint64_t left = limit > used ? limit - used : 0;
    if (!avail || left < *avail) avail = left;
  }
  return avail;
}

}  // namespace defkv::engine
