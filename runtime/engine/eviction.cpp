// One eviction round over every layer: gather each head's live entries,
// score them with the window queries (runtime/evict), select and retain.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "runtime/engine/context.h"

namespace defkv::engine {

void Context::evict_now(bool interim) {
  const auto t0 = std::chrono::steady_clock::now();
  const model::Config& mc = model_.config();
  const uint32_t L = mc.n_layer, H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim, W = window_;
  // Interim prefill rounds may use another policy (ContextParams::interim_policy).
  interim = interim && params_.interim_policy.has_value() && schedule_ == Schedule::bounded;
  evict::Params ep = params_.evict;
  if (interim) ep.policy = *params_.interim_policy;
  const uint32_t n_window = std::min<uint32_t>(W, n_past_);

  evict::Budget budget;
  if (schedule_ == Schedule::oneshot && params_.kv_ratio)
    budget = evict::oneshot_budget(prompt_len_, 1.0 - *params_.kv_ratio, Hkv, L);
  else
    budget = evict::entries_budget(budget_, Hkv, L);

  // Window positions, ascending; the ring holds position p in slot p % W.
  for (uint32_t i = 0; i < n_window; ++i) {
    const int32_t p = int32_t(n_past_ - n_window + i);
    if (q_ring_pos_[size_t(p) % W] != p)
      throw std::logic_error("context: query ring does not hold position " + std::to_string(p));
    q_win_pos_[i] = p;
  }
  view_.n_head = H;
  view_.n_head_kv = Hkv;
  view_.head_dim = d;
  view_.n_window = n_window;
  view_.q_window = q_win_.data();
  view_.q_pos = q_win_pos_.data();
  const bool layerwise = ep.policy == evict::Policy::layer_defensivekv;
  const bool want_max = n_aux_ >= 2 && (ep.policy == evict::Policy::defensivekv ||
                                         ep.policy == evict::Policy::layer_defensivekv);
  const float decay = params_.running_max_decay;

  for (uint32_t l = 0; l < L; ++l) {
    check_cancel();  // layers already evicted stay evicted (still a valid cache)
    // Window queries of layer l: [H, n_window, d], ordered by position.
    for (uint32_t h = 0; h < H; ++h)
      for (uint32_t i = 0; i < n_window; ++i) {
        const size_t slot = size_t(q_win_pos_[i]) % W;
        std::memcpy(q_win_.data() + (size_t(h) * n_window + i) * d,
                    q_ring_.data() + ((size_t(l) * H + h) * W + slot) * d, d * sizeof(float));
      }
    size_t total = 0;
    for (uint32_t hk = 0; hk < Hkv; ++hk) total += cache_->size(l, hk);
    if (g_pos_.size() < total) {  // layer-adaptive budgets can concentrate entries
      g_k_.resize(total * d);
      g_pos_.resize(total);
      g_aux_.resize(total * std::max<uint32_t>(n_aux_, 1));
      g_vnorm_.resize(total);
      g_prev_.resize(total);
    }
    size_t off = 0;
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const uint32_t n = cache_->size(l, hk);
      cache_->gather(l, hk, g_k_.data() + off * d, nullptr, g_pos_.data() + off,
                     n_aux_ ? g_aux_.data() + off * n_aux_ : nullptr);
      evict::HeadView& hv = view_.heads[hk];
      hv.n = n;
      hv.k = g_k_.data() + off * d;
      hv.pos = g_pos_.data() + off;
      hv.vnorm = nullptr;
      hv.prev_max = nullptr;
      if (n_aux_ >= 1) {
        for (uint32_t i = 0; i < n; ++i) g_vnorm_[off + i] = g_aux_[(off + i) * n_aux_];
        hv.vnorm = g_vnorm_.data() + off;
      }
      if (want_max) {  // decay < 1: stale maxima fade (running_max_decay)
        for (uint32_t i = 0; i < n; ++i) g_prev_[off + i] = g_aux_[(off + i) * n_aux_ + 1] * decay;
        hv.prev_max = g_prev_.data() + off;
      }
      off += n;
    }
    evict::score_layer(view_, ep, budget, ev_scratch_, scores_[l], nullptr, want_max ? &new_max_[l] : nullptr);
    if (observer_) {
      RoundObservation ob;
      ob.round = stats_.evict_rounds;
      ob.layer = l;
      ob.interim = interim;
      ob.policy = ep.policy;
      ob.view = &view_;
      ob.scores = &scores_[l];
      observer_(ob);
    }
    if (want_max) {
      // new_max already holds max(this window's m, decayed stored m); NaN: not
      // scored this round (window entries), whose stored value stays.
      for (uint32_t hk = 0; hk < Hkv; ++hk) {
        const std::vector<float>& nm = new_max_[l][hk];
        for (uint32_t i = 0; i < nm.size(); ++i) {
          if (std::isnan(nm[i])) continue;
          float* a = cache_->aux(l, hk, i);
          a[1] = decay < 1.0f ? nm[i] : std::max(a[1], nm[i]);
        }
      }
    }
    if (!layerwise) {
      evict::select_keep(ep, budget, n_window, scores_[l], ev_scratch_, keep_[l]);
      for (uint32_t hk = 0; hk < Hkv; ++hk) cache_->retain(l, hk, keep_[l][hk].data());
    }
  }
  if (layerwise) {
    evict::select_keep_layers(ep, budget, n_window, scores_, ev_scratch_, keep_);
    for (uint32_t l = 0; l < L; ++l)
      for (uint32_t hk = 0; hk < Hkv; ++hk) cache_->retain(l, hk, keep_[l][hk].data());
  }
  stats_.evict_rounds += 1;
  stats_.evict_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace defkv::engine
