// What eviction needs from each layer of a forward pass, recorded by the
// engine's model::LayerObserver (the model itself knows no policy):
//   - the post-RoPE queries of the newest `window` positions, in a ring per
//     layer and head (an eviction round scores with them);
//   - for the value-weighted policies, each new entry's value-projection norm
//     (docs/eviction.md, step 3) in aux slot kAuxValueNorm. A prefill chunk's
//     norms are computed at once; a decode token's values wait in a stash
//     (its aux slot holds NaN, "pending") and flush() computes the norms of
//     all pending tokens in one pass over W_o, so decoding does not read W_o
//     a second time per token.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "quant/value_norm.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"

namespace defkv::engine {

class LayerRecorder final : public model::LayerObserver {
 public:
  // window: ring length in positions (0: no ring); value_norms: fill
  // kAuxValueNorm (the cache needs n_aux >= 1); stash_tokens: decode tokens
  // whose norms may wait (0: always computed at once); max_batch: tokens per
  // forward(); n_threads: the workspace's threads (scratch sizing).
  LayerRecorder(const model::Model& m, uint32_t window, bool value_norms, uint32_t stash_tokens,
                uint32_t max_batch, uint32_t n_threads);

  // The next forward() is one decode token whose value norm may wait in the
  // stash (the stash must not be full: flush() first).
  void defer_next(bool defer) { defer_ = defer && stash_cap_ > 0; }
  bool stash_full() const { return n_pending_ == stash_cap_; }
  uint32_t pending() const { return n_pending_; }
  // A forward() completed: its deferred token is now pending.
  void commit_batch();
  // Computes the pending norms and writes them into the cache: the pending
  // tokens are the newest entries of every head.
  void flush(kv::KvCache& cache);
  // Nothing recorded (an empty ring, nothing pending).
  void clear();

  void on_layer(const model::LayerTensors& t) override;

  // Query ring: slot pos % window holds position pos (pos -1: empty slot).
  uint32_t window() const { return window_; }
  bool holds(int32_t pos) const { return window_ && ring_pos_[size_t(pos) % window_] == pos; }
  const float* query(uint32_t layer, uint32_t head, int32_t pos) const {  // [head_dim]
    return ring_.data() + ((size_t(layer) * n_head_ + head) * window_ + size_t(pos) % window_) * head_dim_;
  }
  std::span<const int32_t> ring_positions() const { return ring_pos_; }  // [window]
  std::span<const float> ring() const { return ring_; }                  // [n_layer, n_head, window, head_dim]
  void set_ring(std::span<const int32_t> pos, std::span<const float> q);  // sizes as above
  // Cancellation: a forward over [first, first + n) overwrites ring slots;
  // save them before it and restore them after it was cancelled.
  void save_ring(uint32_t first, uint32_t n);
  void restore_ring(uint32_t first, uint32_t n);

 private:
  const model::Model& model_;
  uint32_t n_head_, n_head_kv_, head_dim_, window_, max_batch_;
  bool value_norms_;
  std::vector<float> ring_;          // [n_layer, n_head, window, head_dim]
  std::vector<int32_t> ring_pos_;    // [window]
  std::vector<float> ring_save_;     // [min(n, window), n_layer, n_head, head_dim]
  std::vector<int32_t> ring_save_pos_;  // [min(n, window)]
  std::vector<float> stash_;         // [n_layer, stash_cap, n_head_kv * head_dim]
  uint32_t stash_cap_ = 0, n_pending_ = 0;
  bool defer_ = false;
  std::vector<float> norms_;         // [max(max_batch, stash_cap), n_head_kv]
  quant::ValueNormScratch scratch_;
};

}  // namespace defkv::engine
