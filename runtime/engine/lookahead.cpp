// Lookahead for the bounded schedule's interim prefill rounds (context.h,
// "Lookahead"): a probe of the fed text's last window tokens at their true
// positions over the sinks, and the per-entry scores those queries give.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "runtime/engine/context.h"
#include "runtime/evict/lookahead.h"

namespace defkv::engine {

void Context::init_lookahead() {
  const model::Config& mc = model_.config();
  const uint32_t L = mc.n_layer, H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim, W = window_;
  const uint32_t pt = params_.page_tokens;
  kv::CacheConfig cc;
  cc.n_layer = L;
  cc.n_head_kv = Hkv;
  cc.head_dim = d;
  cc.type = quant::DType::f32;
  cc.page_tokens = pt;
  cc.n_aux = 0;
  // Sinks + probe tokens per head, plus a page of slack for page rounding per head.
  cc.capacity_entries = (uint64_t(params_.evict.n_sink + W + pt) * Hkv * L + pt - 1) / pt * pt;
  la_cache_ = std::make_unique<kv::KvCache>(cc);
  la_ring_.assign(size_t(L) * H * W * d, 0.0f);
  la_ring_pos_.assign(W, -1);
  la_q_.assign(size_t(L) * H * W * d, 0.0f);
  la_q_pos_.assign(W, 0);
  la_lse_.assign(size_t(L) * H * W, 0.0f);
  la_tok_.reserve(params_.evict.n_sink + W);
  la_pos_.reserve(params_.evict.n_sink + W);
  sink_tokens_.reserve(params_.evict.n_sink);
}

void Context::probe_lookahead(std::span<const int32_t> tokens) {
  const model::Config& mc = model_.config();
  const uint32_t L = mc.n_layer, H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim, W = window_;
  const uint32_t G = H / Hkv;
  const uint32_t nq = uint32_t(std::min<size_t>(W, tokens.size()));
  const uint32_t q0 = uint32_t(n_past_ + tokens.size() - nq);
  la_tok_.clear();
  la_pos_.clear();
  for (uint32_t s = 0; s < params_.evict.n_sink && s < q0; ++s) {
    int32_t t;
    if (s >= n_past_) t = tokens[s - n_past_];
    else if (s < sink_tokens_.size()) t = sink_tokens_[s];
    else break;  // not known (e.g. a state loaded from elsewhere): fewer sinks
    la_tok_.push_back(t);
    la_pos_.push_back(int32_t(s));
  }
  for (uint32_t i = 0; i < nq; ++i) {
    la_tok_.push_back(tokens[tokens.size() - nq + i]);
    la_pos_.push_back(int32_t(q0 + i));
  }
  la_cache_->clear();
  std::fill(la_ring_pos_.begin(), la_ring_pos_.end(), -1);
  model::ForwardHooks h;
  h.q_ring = la_ring_.data();
  h.q_ring_pos = la_ring_pos_.data();
  h.q_ring_len = W;
  h.cancel = hooks_.cancel;
  const uint32_t n = uint32_t(la_tok_.size());
  for (uint32_t off = 0; off < n; off += chunk_) {
    const uint32_t m = std::min(chunk_, n - off);
    model_.forward(la_tok_.data() + off, la_pos_.data() + off, m, *la_cache_, *ws_, h, nullptr, false);
  }
  // Probe queries ordered by position, and each one's log-normaliser over
  // the keys it saw (sinks + the probe tokens up to it).
  la_n_query_ = nq;
  for (uint32_t i = 0; i < nq; ++i) {
    la_q_pos_[i] = int32_t(q0 + i);
    if (la_ring_pos_[(q0 + i) % W] != int32_t(q0 + i))
      throw std::logic_error("context: lookahead ring does not hold position " + std::to_string(q0 + i));
  }
  std::vector<float> k(size_t(n) * d);
  std::vector<int32_t> kpos(n);
  const float scale = 1.0f / std::sqrt(float(d));
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const uint32_t nk = la_cache_->size(l, hk);
      la_cache_->gather(l, hk, k.data(), nullptr, kpos.data(), nullptr);
      for (uint32_t g = 0; g < G; ++g) {
        const uint32_t hh = hk * G + g;
        for (uint32_t i = 0; i < nq; ++i) {
          const float* src = la_ring_.data() + ((size_t(l) * H + hh) * W + (q0 + i) % W) * d;
          float* q = la_q_.data() + ((size_t(l) * H + hh) * nq + i) * d;
          std::memcpy(q, src, d * sizeof(float));
          double mx = -std::numeric_limits<double>::infinity(), sum = 0;
          for (uint32_t j = 0; j < nk; ++j) {
            if (kpos[j] > la_q_pos_[i]) continue;
            double s = 0;
            for (uint32_t c = 0; c < d; ++c) s += double(q[c]) * k[size_t(j) * d + c];
            s *= scale;
            if (s > mx) { sum = sum * std::exp(mx - s) + 1.0; mx = s; }
            else sum += std::exp(s - mx);
          }
          la_lse_[(size_t(l) * H + hh) * nq + i] = float(mx + std::log(sum));
        }
      }
    }
  la_from_ = 0;  // every resident entry is scored with these queries
  la_active_ = true;
}

// Scores of layer l for a lookahead round: entries at positions >= la_from_
// get their lookahead score (times the value-norm weight for the
// value-weighted policies), stored in aux slot la_slot_; older entries keep
// their stored score. lane.view holds the gathered heads.
void Context::lookahead_layer(uint32_t l, EvictLane& lane, const EvictRound& rd) {
  const model::Config& mc = model_.config();
  const uint32_t H = mc.n_head, Hkv = mc.n_head_kv, d = mc.head_dim, nq = la_n_query_;
  const evict::Policy policy = rd.ep.policy;
  const bool weighted = has_vnorm_ && (policy == evict::Policy::criticalkv ||
                                       policy == evict::Policy::defensivekv ||
                                       policy == evict::Policy::layer_defensivekv);
  evict::LookaheadQueries lq;
  lq.n_head = H;
  lq.n_head_kv = Hkv;
  lq.head_dim = d;
  lq.n_query = nq;
  lq.q = la_q_.data() + size_t(l) * H * nq * d;
  lq.q_pos = la_q_pos_.data();
  lq.lse = la_lse_.data() + size_t(l) * H * nq;
  std::vector<std::vector<float>>& sc = scores_[l];
  sc.resize(Hkv);
  const evict::LayerView& view = lane.view;
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    const evict::HeadView& hv = view.heads[hk];
    const uint32_t first = uint32_t(std::lower_bound(hv.pos, hv.pos + hv.n, la_from_) - hv.pos);
    sc[hk].resize(hv.n);
    evict::lookahead_scores(lq, hk, hv.k, hv.pos, hv.n, first, policy, params_.evict.kernel,
                            sc[hk].data() + first, lane.scratch.flat);
  }
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    const evict::HeadView& hv = view.heads[hk];
    const size_t off = size_t(hv.pos - lane.pos.data());
    const uint32_t first = uint32_t(std::lower_bound(hv.pos, hv.pos + hv.n, la_from_) - hv.pos);
    for (uint32_t j = 0; j < first; ++j) sc[hk][j] = lane.aux[(off + j) * n_aux_ + la_slot_];
    for (uint32_t j = first; j < hv.n; ++j) {
      float s = sc[hk][j];
      if (weighted) {  // w = n[hk, j] / sum over the heads holding the same position
        double sum = 0;
        for (uint32_t h2 = 0; h2 < Hkv; ++h2) {
          const evict::HeadView& o = view.heads[h2];
          const int32_t* it = std::lower_bound(o.pos, o.pos + o.n, hv.pos[j]);
          if (it != o.pos + o.n && *it == hv.pos[j]) sum += o.vnorm[it - o.pos];
        }
        s = sum > 0 ? float(s * hv.vnorm[j] / sum) : 0.0f;
      }
      sc[hk][j] = s;
      cache_->aux(l, hk, j)[la_slot_] = s;
    }
  }
}

}  // namespace defkv::engine
