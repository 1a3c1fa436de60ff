// One eviction round over every layer (evict_round.h).
#include "runtime/engine/evict_round.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include "runtime/engine/plan.h"

namespace defkv::engine {

EvictRound::EvictRound(const model::Config& mc, uint32_t window, uint32_t n_aux, bool value_norms, uint32_t n_threads,
                       size_t layer_entries)
    : n_layer_(mc.n_layer), n_head_(mc.n_head), n_head_kv_(mc.n_head_kv), head_dim_(mc.head_dim), n_aux_(n_aux),
      value_norms_(value_norms) {
  const size_t d = head_dim_;
  q_win_pos_.resize(window);
  lanes_.resize(std::max<uint32_t>(n_threads, 1));
  for (Lane& lane : lanes_) {
    lane.q_win.resize(size_t(n_head_) * window * d);
    lane.k.resize(layer_entries * d);
    lane.pos.resize(layer_entries);
    lane.aux.resize(layer_entries * std::max<uint32_t>(n_aux_, 1));
    lane.vnorm.resize(layer_entries);
    lane.view.heads.resize(n_head_kv_);
  }
  scores_.resize(n_layer_);
  keep_.resize(n_layer_);
  for (uint32_t l = 0; l < n_layer_; ++l) all_layers_.push_back(l);
}

void EvictRound::run(kv::KvCache& cache, const LayerRecorder& recorder, const RoundSpec& spec,
                     const std::function<void()>& check_cancel, const RoundObserver& observer) {
  const std::vector<uint32_t>& layers = spec.layers ? *spec.layers : all_layers_;
  const uint32_t L = uint32_t(layers.size()), n_window = spec.n_window;
  // Window positions, ascending.
  for (uint32_t i = 0; i < n_window; ++i) {
    const int32_t p = int32_t(spec.n_past - n_window + i);
    if (!recorder.holds(p)) throw std::logic_error("engine: query ring does not hold position " + std::to_string(p));
    q_win_pos_[i] = p;
  }

  // Score (and select) the layers in parallel, one per thread at a time: a
  // layer's result does not depend on the thread that scores it.
  const int n_thr = observer ? 1 : int(std::min<size_t>(lanes_.size(), L));
  std::exception_ptr error;
  bool failed = false;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_thr) if (n_thr > 1)
  for (uint32_t i = 0; i < L; ++i) {
    const uint32_t l = layers[i];
    bool stop;
#pragma omp atomic read
    stop = failed;
    if (stop) continue;
    try {
      check_cancel();
      score_layer(l, lanes_[size_t(n_thr > 1 ? omp_get_thread_num() : 0)], cache, recorder, spec, observer);
    } catch (...) {
#pragma omp critical(defkv_evict_error)
      if (!error) error = std::current_exception();
#pragma omp atomic write
      failed = true;
    }
  }
  if (error) std::rethrow_exception(error);

  if (evict::traits(spec.params.policy).layer_wise && L == n_layer_) {
    evict::select_keep_layers(spec.params, spec.budget, n_window, scores_, lanes_[0].scratch, keep_);
  } else if (evict::traits(spec.params.policy).layer_wise) {  // vectors swapped in and out: no copy
    scores_sub_.resize(L);
    keep_sub_.resize(L);
    for (uint32_t i = 0; i < L; ++i) std::swap(scores_sub_[i], scores_[layers[i]]);
    evict::select_keep_layers(spec.params, spec.budget, n_window, scores_sub_, lanes_[0].scratch, keep_sub_);
    for (uint32_t i = 0; i < L; ++i) {
      std::swap(scores_sub_[i], scores_[layers[i]]);
      std::swap(keep_sub_[i], keep_[layers[i]]);
    }
  }
  for (uint32_t l : layers)
    for (uint32_t hk = 0; hk < n_head_kv_; ++hk) cache.retain(l, hk, keep_[l][hk].data());
}

void EvictRound::score_layer(uint32_t l, Lane& lane, kv::KvCache& cache, const LayerRecorder& recorder,
                             const RoundSpec& spec, const RoundObserver& observer) {
  const uint32_t H = n_head_, Hkv = n_head_kv_, d = head_dim_, n_window = spec.n_window, n_aux = n_aux_;
  evict::LayerView& view = lane.view;
  view.n_head = H;
  view.n_head_kv = Hkv;
  view.head_dim = d;
  view.n_window = n_window;
  view.q_window = lane.q_win.data();
  view.q_pos = q_win_pos_.data();
  // The sequence's positions are [0, n_past) (every batch is fed at n_past),
  // so n_past of them have been seen, evicted or resident.
  view.n_seen = spec.n_past;
  view.heads.resize(Hkv);
  // Window queries of layer l: [H, n_window, d], ordered by position.
  for (uint32_t h = 0; h < H; ++h)
    for (uint32_t i = 0; i < n_window; ++i)
      std::memcpy(lane.q_win.data() + (size_t(h) * n_window + i) * d, recorder.query(l, h, q_win_pos_[i]),
                  d * sizeof(float));
  size_t total = 0;
  for (uint32_t hk = 0; hk < Hkv; ++hk) total += cache.size(l, hk);
  if (lane.pos.size() < total) {  // layer-adaptive budgets can concentrate entries
    lane.k.resize(total * d);
    lane.pos.resize(total);
    lane.aux.resize(total * std::max<uint32_t>(n_aux, 1));
    lane.vnorm.resize(total);
  }
  const bool vnorm = value_norms_;
  size_t off = 0;
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    const uint32_t n = cache.size(l, hk);
    cache.gather(l, hk, lane.k.data() + off * d, nullptr, lane.pos.data() + off,
                 n_aux ? lane.aux.data() + off * n_aux : nullptr);
    evict::HeadView& hv = view.heads[hk];
    hv.n = n;
    hv.k = lane.k.data() + off * d;
    hv.pos = lane.pos.data() + off;
    hv.vnorm = nullptr;
    if (vnorm) {
      for (uint32_t i = 0; i < n; ++i) lane.vnorm[off + i] = lane.aux[(off + i) * n_aux + kAuxValueNorm];
      hv.vnorm = lane.vnorm.data() + off;
    }
    off += n;
  }
  if (spec.lookahead)
    spec.lookahead->score_layer(l, view, lane.aux.data(), n_aux, kAuxLookahead, spec.params.policy, cache, scores_[l],
                                lane.la_scratch);
  else
    evict::score_layer(view, spec.params, spec.budget, lane.scratch, scores_[l]);
  if (observer) {
    RoundObservation ob;
    ob.round = spec.index;
    ob.layer = l;
    ob.lookahead = spec.lookahead != nullptr;
    ob.policy = spec.params.policy;
    ob.view = &view;
    ob.scores = &scores_[l];
    observer(ob);
  }
  if (!evict::traits(spec.params.policy).layer_wise)
    evict::select_keep(spec.params, spec.budget, n_window, scores_[l], lane.scratch, keep_[l]);
}

}  // namespace defkv::engine
