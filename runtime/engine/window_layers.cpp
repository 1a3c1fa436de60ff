// Sliding-window layers (model::Layer::window > 0, e.g. gemma2's even layers;
// a window of n_ctx or more is no window for the cache, Plan::layer_window):
// a query at position q sees a key at p only when q - p < window, and every
// later query is at n_past() or beyond, so entries at p <= n_past() - window
// are dead. They are dropped lazily, once a head holds window + page_tokens
// entries (one retain frees at least a page), so a windowed layer never
// holds more than window + page_tokens - 1 entries between batches, whatever
// the budget (none included); the pool reserves that plus one batch per head
// (window_pool_entries). KV budgets, --kv-mem and the layer-wise
// (Layer-DefensiveKV) allocation apply to the other layers only
// (Plan::evict_layers): windowed layers are never scored.
#include <cstdint>

#include "runtime/engine/context.h"

namespace defkv::engine {

uint64_t Context::budgeted_entries() const {
  if (plan_.evict_layers.size() == model_.config().n_layer) return cache_->entries();
  uint64_t n = 0;
  for (uint32_t l : plan_.evict_layers)
    for (uint32_t h = 0; h < model_.config().n_head_kv; ++h) n += cache_->size(l, h);
  return n;
}

void Context::trim_windows() {
  const model::Config& mc = model_.config();
  if (plan_.evict_layers.size() == mc.n_layer) return;
  for (uint32_t l = 0; l < mc.n_layer; ++l) {
    const int64_t w = plan_.layer_window[l];
    if (w == 0) continue;
    for (uint32_t h = 0; h < mc.n_head_kv; ++h) {
      const uint32_t n = cache_->size(l, h);
      if (n < w + plan_.cache.page_tokens) continue;
      uint32_t i = 0;
      for (const kv::Run& r : cache_->runs(l, h))
        for (uint32_t e = 0; e < r.n; ++e, ++i) trim_keep_[i] = int64_t(n_past_) - r.pos[e] < w;
      cache_->retain(l, h, trim_keep_.data());
    }
  }
}

}  // namespace defkv::engine
