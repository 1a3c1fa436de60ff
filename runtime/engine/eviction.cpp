// One eviction round over every layer: gather each head's live entries,
// score them with the window queries (runtime/evict) and select, layers in
// parallel; then retain.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include "runtime/engine/context.h"

namespace defkv::engine {

void Context::evict_now(bool interim) {
  const auto t0 = std::chrono::steady_clock::now();
  flush_value_norms();
  const model::Config& mc = model_.config();
  const uint32_t L = mc.n_layer, Hkv = mc.n_head_kv, W = window_;
  EvictRound rd;
  // Interim prefill rounds may use another policy (ContextParams::interim_policy).
  rd.interim = interim && params_.interim_policy.has_value() && schedule_ == Schedule::bounded;
  rd.ep = params_.evict;
  if (rd.interim) rd.ep.policy = *params_.interim_policy;
  rd.layerwise = evict::traits(rd.ep.policy).layer_wise;
  const uint32_t n_window = rd.n_window = std::min<uint32_t>(W, n_past_);
  if (schedule_ == Schedule::oneshot && params_.kv_ratio)
    rd.budget = evict::oneshot_budget(prompt_len_, 1.0 - *params_.kv_ratio, Hkv, L);
  else
    rd.budget = evict::entries_budget(budget_, Hkv, L);

  // Window positions, ascending.
  for (uint32_t i = 0; i < n_window; ++i) {
    const int32_t p = int32_t(n_past_ - n_window + i);
    if (!recorder_->holds(p))
      throw std::logic_error("context: query ring does not hold position " + std::to_string(p));
    q_win_pos_[i] = p;
  }

  // Score (and select) the layers in parallel, one per thread at a time: a
  // layer's result does not depend on the thread that scores it. A round
  // observer runs on one thread. Nothing is evicted until every layer is
  // scored, so a cancel leaves the cache as it was.
  const bool serial = observer_ != nullptr;
  const int n_thr = serial ? 1 : int(std::min<size_t>(lanes_.size(), L));
  std::exception_ptr error;
  bool failed = false;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_thr) if (n_thr > 1)
  for (uint32_t l = 0; l < L; ++l) {
    bool stop;
#pragma omp atomic read
    stop = failed;
    if (stop) continue;
    try {
      check_cancel();
      score_round_layer(l, lanes_[size_t(n_thr > 1 ? omp_get_thread_num() : 0)], rd);
    } catch (...) {
#pragma omp critical(defkv_evict_error)
      if (!error) error = std::current_exception();
#pragma omp atomic write
      failed = true;
    }
  }
  if (error) std::rethrow_exception(error);

  if (rd.layerwise) evict::select_keep_layers(rd.ep, rd.budget, n_window, scores_, lanes_[0].scratch, keep_);
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t hk = 0; hk < Hkv; ++hk) cache_->retain(l, hk, keep_[l][hk].data());
  stats_.evict_rounds += 1;
  stats_.evict_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Context::score_round_layer(uint32_t l, EvictLane& lane, const EvictRound& rd) {
  const model::Config& mc = model_.config();
  const uint32_t H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim;
  const uint32_t n_window = rd.n_window;
  evict::LayerView& view = lane.view;
  view.n_head = H;
  view.n_head_kv = Hkv;
  view.head_dim = d;
  view.n_window = n_window;
  view.q_window = lane.q_win.data();
  view.q_pos = q_win_pos_.data();
  view.heads.resize(Hkv);
  // Window queries of layer l: [H, n_window, d], ordered by position.
  for (uint32_t h = 0; h < H; ++h)
    for (uint32_t i = 0; i < n_window; ++i)
      std::memcpy(lane.q_win.data() + (size_t(h) * n_window + i) * d, recorder_->query(l, h, q_win_pos_[i]),
                  d * sizeof(float));
  size_t total = 0;
  for (uint32_t hk = 0; hk < Hkv; ++hk) total += cache_->size(l, hk);
  if (lane.pos.size() < total) {  // layer-adaptive budgets can concentrate entries
    lane.k.resize(total * d);
    lane.pos.resize(total);
    lane.aux.resize(total * std::max<uint32_t>(n_aux_, 1));
    lane.vnorm.resize(total);
  }
  size_t off = 0;
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    const uint32_t n = cache_->size(l, hk);
    cache_->gather(l, hk, lane.k.data() + off * d, nullptr, lane.pos.data() + off,
                   n_aux_ ? lane.aux.data() + off * n_aux_ : nullptr);
    evict::HeadView& hv = view.heads[hk];
    hv.n = n;
    hv.k = lane.k.data() + off * d;
    hv.pos = lane.pos.data() + off;
    hv.vnorm = nullptr;
    if (n_aux_ >= 1) {
      for (uint32_t i = 0; i < n; ++i) lane.vnorm[off + i] = lane.aux[(off + i) * n_aux_];
      hv.vnorm = lane.vnorm.data() + off;
    }
    off += n;
  }
  evict::score_layer(view, rd.ep, rd.budget, lane.scratch, scores_[l]);
  if (observer_) {
    RoundObservation ob;
    ob.round = stats_.evict_rounds;
    ob.layer = l;
    ob.interim = rd.interim;
    ob.policy = rd.ep.policy;
    ob.view = &view;
    ob.scores = &scores_[l];
    observer_(ob);
  }
  if (!rd.layerwise) evict::select_keep(rd.ep, rd.budget, n_window, scores_[l], lane.scratch, keep_[l]);
}

}  // namespace defkv::engine
