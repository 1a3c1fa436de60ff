// One eviction round over every layer: gather each head's live entries,
// score them with the window queries (runtime/evict) and select, layers in
// parallel; then update the running maxima and retain.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
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
  const uint32_t L = mc.n_layer, H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim, W = window_;
  EvictRound rd;
  // Interim prefill rounds rank by the lookahead when the prefill has one
  // (context.h); otherwise they may use another policy (interim_policy).
  rd.lookahead = interim && la_active_ && schedule_ == Schedule::bounded;
  rd.interim = interim && !rd.lookahead && params_.interim_policy.has_value() && schedule_ == Schedule::bounded;
  rd.ep = params_.evict;
  if (rd.interim) rd.ep.policy = *params_.interim_policy;
  rd.defensive = rd.ep.policy == evict::Policy::defensivekv || rd.ep.policy == evict::Policy::layer_defensivekv;
  rd.layerwise = rd.ep.policy == evict::Policy::layer_defensivekv;
  rd.want_max = has_rmax_ && rd.defensive;
  const uint32_t n_window = rd.n_window = std::min<uint32_t>(W, n_past_);
  if (schedule_ == Schedule::oneshot && params_.kv_ratio)
    rd.budget = evict::oneshot_budget(prompt_len_, 1.0 - *params_.kv_ratio, Hkv, L);
  else
    rd.budget = evict::entries_budget(budget_, Hkv, L);

  // Window positions, ascending; the ring holds position p in slot p % R.
  const uint32_t R = ring_len_;
  for (uint32_t i = 0; i < n_window; ++i) {
    const int32_t p = int32_t(n_past_ - n_window + i);
    if (q_ring_pos_[size_t(p) % R] != p)
      throw std::logic_error("context: query ring does not hold position " + std::to_string(p));
    q_win_pos_[i] = p;
  }
  // score_all_queries: pass k >= 1 scores with the queries [end_k - W, end_k),
  // end_k = n_past - k*W, over each head's entries before end_k; only whole
  // windows of queries fed since the last round (and still in the ring).
  uint32_t& n_pass = rd.n_pass;
  if (R > W && n_window == W && !rd.lookahead) {
    for (;;) {
      if (uint64_t(n_pass + 1) * W > R) break;
      const uint64_t end = uint64_t(n_past_) - uint64_t(n_pass) * W;
      if (end < W || end - W < last_round_end_) break;
      bool in_ring = true;
      for (uint64_t p = end - W; p < end && in_ring; ++p) in_ring = q_ring_pos_[p % R] == int32_t(p);
      if (!in_ring) break;
      ++n_pass;
    }
  }
  if (n_pass > 1) {
    pass_view_.n_head = H;
    pass_view_.n_head_kv = Hkv;
    pass_view_.head_dim = d;
    pass_view_.n_window = W;
    pass_view_.q_pos = q_win_pos_.data();
    pass_view_.heads.resize(Hkv);
  }

  // Score (and select) the layers in parallel, one per thread at a time: a
  // layer's result does not depend on the thread that scores it. Extra passes
  // (score_all_queries) and a round observer run on one thread. Nothing is
  // evicted until every layer is scored, so a cancel leaves the cache as it was.
  const bool serial = n_pass > 1 || observer_ != nullptr;
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

  const float decay = params_.running_max_decay;
  if (rd.layerwise) evict::select_keep_layers(rd.ep, rd.budget, n_window, scores_, lanes_[0].scratch, keep_);
  for (uint32_t l = 0; l < L; ++l) {
    if (rd.want_max) {
      // new_max already holds max(this window's m, decayed stored m); NaN: not
      // scored this round (window entries), whose stored value stays.
      // Entries of one run are contiguous: [n, n_aux] from its first entry's aux.
      for (uint32_t hk = 0; hk < Hkv; ++hk) {
        const std::vector<float>& nm = new_max_[l][hk];
        uint32_t i = 0;
        for (const kv::Run& r : cache_->runs(l, hk)) {
          float* a = r.n ? cache_->aux(l, hk, i) : nullptr;
          for (uint32_t e = 0; e < r.n; ++e, ++i) {
            if (std::isnan(nm[i])) continue;
            float& m = a[size_t(e) * n_aux_ + 1];
            m = decay < 1.0f ? nm[i] : std::max(m, nm[i]);
          }
        }
      }
    }
    for (uint32_t hk = 0; hk < Hkv; ++hk) cache_->retain(l, hk, keep_[l][hk].data());
  }
  last_round_end_ = n_past_;
  // The newest kernel/2 entries were pooled without their right neighbours.
  if (rd.lookahead) la_from_ = int64_t(n_past_) - int64_t(params_.evict.kernel / 2);
  stats_.evict_rounds += 1;
  stats_.evict_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Context::score_round_layer(uint32_t l, EvictLane& lane, const EvictRound& rd) {
  const model::Config& mc = model_.config();
  const uint32_t H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim, R = ring_len_;
  const uint32_t n_window = rd.n_window;
  const float decay = params_.running_max_decay;
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
    for (uint32_t i = 0; i < n_window; ++i) {
      const size_t slot = size_t(q_win_pos_[i]) % R;
      std::memcpy(lane.q_win.data() + (size_t(h) * n_window + i) * d,
                  q_ring_.data() + ((size_t(l) * H + h) * R + slot) * d, d * sizeof(float));
    }
  size_t total = 0;
  for (uint32_t hk = 0; hk < Hkv; ++hk) total += cache_->size(l, hk);
  if (lane.pos.size() < total) {  // layer-adaptive budgets can concentrate entries
    lane.k.resize(total * d);
    lane.pos.resize(total);
    lane.aux.resize(total * std::max<uint32_t>(n_aux_, 1));
    lane.vnorm.resize(total);
    lane.prev.resize(total);
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
    hv.prev_max = nullptr;
    if (has_vnorm_) {
      for (uint32_t i = 0; i < n; ++i) lane.vnorm[off + i] = lane.aux[(off + i) * n_aux_];
      hv.vnorm = lane.vnorm.data() + off;
    }
    if (rd.want_max) {  // decay < 1: stale maxima fade (running_max_decay)
      for (uint32_t i = 0; i < n; ++i) lane.prev[off + i] = lane.aux[(off + i) * n_aux_ + 1] * decay;
      hv.prev_max = lane.prev.data() + off;
    }
    off += n;
  }
  if (rd.lookahead) {
    lookahead_layer(l, lane, rd);
    if (rd.want_max) {  // not scored by a window: stored maxima stay
      new_max_[l].resize(Hkv);
      for (uint32_t hk = 0; hk < Hkv; ++hk) new_max_[l][hk].assign(view.heads[hk].n, std::nanf(""));
    }
  } else {
    evict::score_layer(view, rd.ep, rd.budget, lane.scratch, scores_[l], nullptr, rd.want_max ? &new_max_[l] : nullptr);
  }
  if (rd.n_pass > 1) {
    score_passes(l, lane, rd);
    // q_win_pos_ now holds older windows: restore this round's window
    for (uint32_t i = 0; i < n_window; ++i) q_win_pos_[i] = int32_t(n_past_ - n_window + i);
  }
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

// Extra scoring passes of one layer (score_all_queries), combined into
// scores_[l] (max for the defensive policies, mean otherwise) and new_max_[l].
// lane.view holds the layer's gathered heads.
void Context::score_passes(uint32_t l, EvictLane& lane, const EvictRound& rd) {
  const bool use_max = rd.defensive, want_max = rd.want_max;
  const model::Config& mc = model_.config();
  const uint32_t H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim, W = window_, R = ring_len_;
  std::vector<std::vector<float>>& sc = scores_[l];
  pass_view_.q_window = lane.q_win.data();
  if (!use_max) {
    pass_count_.resize(Hkv);
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      pass_count_[hk].reserve(lane.pos.size());
      pass_count_[hk].assign(sc[hk].size(), 1.0f);
    }
  }
  for (uint32_t k = 1; k < rd.n_pass; ++k) {
    const int32_t end = int32_t(n_past_ - k * W);  // queries [end - W, end)
    bool ok = true;
    for (uint32_t hk = 0; hk < Hkv && ok; ++hk) {
      const evict::HeadView& hv = lane.view.heads[hk];
      const uint32_t n = uint32_t(std::lower_bound(hv.pos, hv.pos + hv.n, end) - hv.pos);
      // The pass's query positions must be the head's last W entries before end.
      ok = n >= W && hv.pos[n - W] == end - int32_t(W);
      evict::HeadView& pv = pass_view_.heads[hk];
      pv = hv;
      pv.n = n;
    }
    if (!ok) break;
    for (uint32_t i = 0; i < W; ++i) q_win_pos_[i] = end - int32_t(W) + int32_t(i);
    for (uint32_t h = 0; h < H; ++h)
      for (uint32_t i = 0; i < W; ++i)
        std::memcpy(lane.q_win.data() + (size_t(h) * W + i) * d,
                    q_ring_.data() + ((size_t(l) * H + h) * R + size_t(q_win_pos_[i]) % R) * d, d * sizeof(float));
    evict::score_layer(pass_view_, rd.ep, rd.budget, lane.scratch, pass_scores_, nullptr, want_max ? &pass_max_ : nullptr);
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const uint32_t N = pass_view_.heads[hk].n - W;  // scored (non-window) entries of this pass
      float* dst = sc[hk].data();
      const float* src = pass_scores_[hk].data();
      if (use_max) {
        for (uint32_t j = 0; j < N; ++j) dst[j] = std::max(dst[j], src[j]);
      } else {
        for (uint32_t j = 0; j < N; ++j) { dst[j] += src[j]; pass_count_[hk][j] += 1.0f; }
      }
      if (want_max) {
        float* nm = new_max_[l][hk].data();
        const float* pm = pass_max_[hk].data();
        for (uint32_t j = 0; j < N; ++j)
          if (!std::isnan(pm[j]) && (std::isnan(nm[j]) || pm[j] > nm[j])) nm[j] = pm[j];
      }
    }
  }
  if (!use_max)
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const uint32_t n = lane.view.heads[hk].n - W;  // window entries keep the layer maximum
      for (uint32_t j = 0; j < n; ++j) sc[hk][j] /= pass_count_[hk][j];
    }
}

}  // namespace defkv::engine
