// The engine's layer observer (recorder.h).
#include "runtime/engine/recorder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "runtime/engine/plan.h"

namespace defkv::engine {

LayerRecorder::LayerRecorder(const model::Model& m, uint32_t window, bool value_norms, uint32_t stash_tokens,
                             uint32_t max_batch, uint32_t n_threads)
    : model_(m),
      n_head_(m.config().n_head),
      n_head_kv_(m.config().n_head_kv),
      head_dim_(m.config().head_dim),
      window_(window),
      max_batch_(max_batch),
      value_norms_(value_norms),
      stash_cap_(value_norms ? stash_tokens : 0) {
  const model::Config& c = m.config();
  const size_t L = c.n_layer, kv_dim = size_t(n_head_kv_) * head_dim_;
  ring_.assign(L * n_head_ * window_ * head_dim_, 0.0f);
  ring_pos_.assign(window_, -1);
  ring_save_.reserve(ring_.size());  // save_ring() never allocates
  ring_save_pos_.reserve(window_);
  if (value_norms_) {
    stash_.assign(L * stash_cap_ * kv_dim, 0.0f);
    const size_t max_tokens = std::max(max_batch_, stash_cap_);
    norms_.assign(max_tokens * n_head_kv_, 0.0f);
    quant::value_proj_l1_reserve(scratch_, c.n_embd, size_t(n_head_) * head_dim_, n_head_kv_, head_dim_, max_tokens,
                                 n_threads);
  }
}

void LayerRecorder::on_layer(const model::LayerTensors& t) {
  const size_t d = head_dim_, H = n_head_, Hkv = n_head_kv_;
  if (window_) {  // post-RoPE queries of the newest positions
    for (uint32_t i = 0; i < t.n_tokens; ++i) {
      const size_t slot = size_t(t.pos[i]) % window_;
      for (size_t h = 0; h < H; ++h)
        std::memcpy(ring_.data() + ((t.layer * H + h) * window_ + slot) * d, t.q + (i * H + h) * d, d * sizeof(float));
      if (t.layer == 0) ring_pos_[slot] = t.pos[i];
    }
  }
  if (!value_norms_) return;
  if (t.n_aux <= kAuxValueNorm) throw std::logic_error("engine: value norms need a cache with an aux slot");
  if (defer_) {  // the decode token's values wait in the stash; its norm is pending (NaN)
    const size_t kv_dim = Hkv * d;
    std::memcpy(stash_.data() + (size_t(t.layer) * stash_cap_ + n_pending_) * kv_dim, t.v,
                size_t(t.n_tokens) * kv_dim * sizeof(float));
    for (size_t i = 0; i < size_t(t.n_tokens) * Hkv; ++i)
      t.aux[i * t.n_aux + kAuxValueNorm] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  quant::value_norms(model_.layer(t.layer).wo, Hkv, d, t.v, t.n_tokens, norms_.data(), scratch_);
  for (size_t i = 0; i < size_t(t.n_tokens) * Hkv; ++i) t.aux[i * t.n_aux + kAuxValueNorm] = norms_[i];
}

void LayerRecorder::commit_batch() {
  if (defer_) n_pending_ += 1;
  defer_ = false;
}

void LayerRecorder::flush(kv::KvCache& cache) {
  if (n_pending_ == 0) return;
  const uint32_t Hkv = n_head_kv_, n = n_pending_, L = model_.config().n_layer;
  const size_t kv_dim = size_t(Hkv) * head_dim_;
  const uint32_t n_aux = cache.config().n_aux;
  for (uint32_t l = 0; l < L; ++l) {
    const float* v = stash_.data() + size_t(l) * stash_cap_ * kv_dim;  // [n, Hkv * d]
    for (uint32_t t0 = 0; t0 < n; t0 += max_batch_) {  // the batches forward() would run
      const uint32_t m = std::min(max_batch_, n - t0);
      quant::value_norms(model_.layer(l).wo, Hkv, head_dim_, v + size_t(t0) * kv_dim, m,
                         norms_.data() + size_t(t0) * Hkv, scratch_);
    }
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const uint32_t size = cache.size(l, hk);
      if (size < n) throw std::logic_error("engine: fewer entries than pending value norms");
      for (uint32_t i = 0; i < n; ++i) {
        float* a = cache.aux(l, hk, size - n + i);
        if (n_aux <= kAuxValueNorm || !std::isnan(a[kAuxValueNorm]))
          throw std::logic_error("engine: pending value norm already set");
        a[kAuxValueNorm] = norms_[size_t(i) * Hkv + hk];
      }
    }
  }
  n_pending_ = 0;
}

void LayerRecorder::clear() {
  std::fill(ring_pos_.begin(), ring_pos_.end(), -1);
  n_pending_ = 0;
  defer_ = false;
}

void LayerRecorder::set_ring(std::span<const int32_t> pos, std::span<const float> q) {
  if (pos.size() != ring_pos_.size() || q.size() != ring_.size())
    throw std::logic_error("engine: query ring of another size");
  std::copy(pos.begin(), pos.end(), ring_pos_.begin());
  std::copy(q.begin(), q.end(), ring_.begin());
}

// Slot s = pos % window of every (layer, head) is overwritten by a forward
// over that position; keep the min(n, window) slots it touches.
void LayerRecorder::save_ring(uint32_t first, uint32_t n) {
  if (!window_) return;
  const size_t W = window_, d = head_dim_, LH = ring_.size() / (W * d);
  const uint32_t m = uint32_t(std::min<size_t>(n, W));
  ring_save_.resize(size_t(m) * LH * d);
  ring_save_pos_.resize(m);
  for (uint32_t i = 0; i < m; ++i) {
    const size_t s = (size_t(first) + i) % W;
    ring_save_pos_[i] = ring_pos_[s];
    for (size_t lh = 0; lh < LH; ++lh)
      std::memcpy(ring_save_.data() + (size_t(i) * LH + lh) * d, ring_.data() + (lh * W + s) * d, d * sizeof(float));
  }
}

void LayerRecorder::restore_ring(uint32_t first, uint32_t n) {
  if (!window_) return;
  const size_t W = window_, d = head_dim_, LH = ring_.size() / (W * d);
  const uint32_t m = uint32_t(std::min<size_t>(n, W));
  for (uint32_t i = 0; i < m; ++i) {
    const size_t s = (size_t(first) + i) % W;
    ring_pos_[s] = ring_save_pos_[i];
    for (size_t lh = 0; lh < LH; ++lh)
      std::memcpy(ring_.data() + (lh * W + s) * d, ring_save_.data() + (size_t(i) * LH + lh) * d, d * sizeof(float));
  }
  defer_ = false;
}

}  // namespace defkv::engine
