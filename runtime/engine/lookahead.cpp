// Lookahead probe and scores (lookahead.h).
#include "runtime/engine/lookahead.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace defkv::engine {

Lookahead::Lookahead(const model::Model& m, const evict::Params& ep, uint32_t page_tokens, uint32_t max_batch,
                     uint32_t n_threads)
    : model_(m),
      n_layer_(m.config().n_layer),
      n_head_(m.config().n_head),
      n_head_kv_(m.config().n_head_kv),
      head_dim_(m.config().head_dim),
      window_(ep.window),
      n_sink_(ep.n_sink),
      kernel_(ep.kernel),
      max_batch_(max_batch) {
  kv::CacheConfig cc;
  cc.n_layer = n_layer_;
  cc.n_head_kv = n_head_kv_;
  cc.head_dim = head_dim_;
  cc.type = quant::DType::f32;
  cc.page_tokens = page_tokens;
  cc.n_aux = 0;
  // Sinks + probe tokens per head, plus a page per head for page rounding.
  const uint64_t per_head = uint64_t(n_sink_) + window_ + page_tokens;
  cc.capacity_entries = (per_head * n_head_kv_ * n_layer_ + page_tokens - 1) / page_tokens * page_tokens;
  cache_ = std::make_unique<kv::KvCache>(cc);
  rec_ = std::make_unique<LayerRecorder>(m, window_, false, 0, max_batch, n_threads);
  sinks_.reserve(n_sink_);
  for (auto* v : {&tok_, &pos_, &next_tok_, &next_pos_}) v->reserve(n_sink_ + window_);
  arrived_.assign(n_layer_, 0);
  q_.assign(size_t(n_layer_) * n_head_ * window_ * head_dim_, 0.0f);
  q_pos_.assign(window_, 0);
  lse_.assign(size_t(n_layer_) * n_head_ * window_, 0.0f);
  lse_run_ = lse_;
  k_.resize(size_t(n_sink_ + window_) * head_dim_);
  kpos_.resize(n_sink_ + window_);
}

void Lookahead::note_tokens(uint32_t first, std::span<const int32_t> tokens) {
  for (size_t i = 0; first + i < n_sink_ && i < tokens.size(); ++i)
    if (sinks_.size() == first + i) sinks_.push_back(tokens[i]);
}

std::span<const float> Lookahead::queries(uint32_t l) const {
  const size_t n = size_t(n_head_) * n_query_ * head_dim_;
  return {q_.data() + l * n, n};
}

std::span<const float> Lookahead::lse(uint32_t l) const {
  const size_t n = size_t(n_head_) * n_query_;
  return {lse_.data() + l * n, n};
}

std::span<const float> Lookahead::running_lse(uint32_t l) const {
  const size_t n = size_t(n_head_) * n_query_;
  return {lse_run_.data() + l * n, n};
}

void Lookahead::probe(model::Workspace& ws, uint32_t n_past, std::span<const int32_t> tokens,
                      const std::atomic<bool>* cancel) {
  active_ = false;
  if (tokens.empty()) return;

  const uint32_t H = n_head_, G = n_head_ / n_head_kv_, d = head_dim_, W = window_;
  const uint32_t nq = uint32_t(std::min<size_t>(W, tokens.size()));
  const uint32_t q0 = uint32_t(n_past + tokens.size() - nq);
  note_tokens(n_past, tokens);
  next_tok_.clear();
  next_pos_.clear();
  // The sinks the sequence has (a state loaded from elsewhere may not tell them).
  for (uint32_t s = 0; s < n_sink_ && s < q0 && s < sinks_.size(); ++s) {
    next_tok_.push_back(sinks_[s]);
    next_pos_.push_back(int32_t(s));
  }
  for (uint32_t i = 0; i < nq; ++i) {
    next_tok_.push_back(tokens[tokens.size() - nq + i]);
    next_pos_.push_back(int32_t(q0 + i));
  }
  // The same probe as the last one, which nothing has ended since (every
  // completed call runs past its tail, so a new call's tail has new
  // positions): the rest of a cancelled prefill.
  if (resumable_ && next_tok_ == tok_ && next_pos_ == pos_) {
    active_ = true;
    return;
  }
  resumable_ = false;
  std::swap(tok_, next_tok_);
  std::swap(pos_, next_pos_);
  ++probes_run_;
  cache_->clear();
  rec_->clear();
  model::ForwardHooks h;
  h.observer = rec_.get();
  h.cancel = cancel;
  const uint32_t n = uint32_t(tok_.size());
  for (uint32_t off = 0; off < n; off += max_batch_) {
    const uint32_t m = std::min(max_batch_, n - off);
    model_.forward(tok_.data() + off, pos_.data() + off, m, *cache_, ws, h, nullptr, false);
    rec_->commit_batch();
  }
  // The probe's queries by position, and each one's log-normaliser over the
  // keys it attended to (the sinks and the probe tokens up to its own).
  n_query_ = nq;
  for (uint32_t i = 0; i < nq; ++i) {
    q_pos_[i] = int32_t(q0 + i);
    if (!rec_->holds(q_pos_[i]))
      throw std::logic_error("engine: lookahead ring does not hold position " + std::to_string(q0 + i));
  }
  const double scale = 1.0 / std::sqrt(double(d));
  for (uint32_t l = 0; l < n_layer_; ++l)
    for (uint32_t hk = 0; hk < n_head_kv_; ++hk) {
      const uint32_t nk = cache_->size(l, hk);
      cache_->gather(l, hk, k_.data(), nullptr, kpos_.data(), nullptr);
      for (uint32_t g = 0; g < G; ++g) {
        const uint32_t hh = hk * G + g;
        for (uint32_t i = 0; i < nq; ++i) {
          float* q = q_.data() + ((size_t(l) * H + hh) * nq + i) * d;
          std::memcpy(q, rec_->query(l, hh, q_pos_[i]), d * sizeof(float));
          double mx = -std::numeric_limits<double>::infinity(), sum = 0;
          for (uint32_t j = 0; j < nk; ++j) {
            if (kpos_[j] > q_pos_[i]) continue;
            double s = 0;
            for (uint32_t c = 0; c < d; ++c) s += double(q[c]) * k_[size_t(j) * d + c];
            s *= scale;
            if (s > mx) {
              sum = sum * std::exp(mx - s) + 1.0;
              mx = s;
            } else {
              sum += std::exp(s - mx);
            }
          }
          lse_[(size_t(l) * H + hh) * nq + i] = float(mx + std::log(sum));
        }
      }
    }
  from_ = 0;  // every resident entry is scored with these queries
  q0_ = q0;
  // The probe's keys are the sinks it ran (positions [0, arrived_)) and its
  // own tokens; every other resident or arriving key joins in the rounds.
  std::fill(arrived_.begin(), arrived_.end(), int64_t(tok_.size() - nq));
  std::copy(lse_.begin(), lse_.begin() + ptrdiff_t(size_t(n_layer_) * H * nq), lse_run_.begin());
  active_ = true;
  resumable_ = true;
}

void Lookahead::score_layer(uint32_t l, const evict::LayerView& view, const float* aux, uint32_t n_aux,
                            uint32_t slot, evict::Policy policy, kv::KvCache& cache,
                            std::vector<std::vector<float>>& scores, std::vector<float>& scratch) {
  const uint32_t H = n_head_, Hkv = n_head_kv_, d = head_dim_, nq = n_query_;
  const bool weighted = evict::traits(policy).value_norms;
  evict::LookaheadQueries lq;
  lq.n_head = H;
  lq.n_head_kv = Hkv;
  lq.head_dim = d;
  lq.n_query = nq;
  lq.q = q_.data() + size_t(l) * H * nq * d;
  lq.q_pos = q_pos_.data();
  lq.lse = lse_run_.data() + size_t(l) * H * nq;
  scores.resize(Hkv);
  std::vector<uint32_t> first(Hkv);
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    const evict::HeadView& hv = view.heads[hk];
    first[hk] = uint32_t(std::lower_bound(hv.pos, hv.pos + hv.n, from_) - hv.pos);
    // The keys new to the normalisers: [arrived_, q0_) (the re-scored
    // kernel/2 newest joined last round; the probe's own keys are in lse_).
    const uint32_t ab = std::max(first[hk], uint32_t(std::lower_bound(hv.pos, hv.pos + hv.n, arrived_[l]) - hv.pos));
    const uint32_t ae = std::max(ab, uint32_t(std::lower_bound(hv.pos, hv.pos + hv.n, q0_) - hv.pos));
    scores[hk].resize(hv.n);
    evict::lookahead_scores(lq, hk, hv.k, hv.pos, hv.n, first[hk], ab, ae, policy, kernel_,
                            scores[hk].data() + first[hk], scratch);
  }
  // Per layer, so a round cancelled after some layers merges nothing twice.
  for (uint32_t hk = 0; hk < Hkv; ++hk)
    if (view.heads[hk].n) arrived_[l] = std::max<int64_t>(arrived_[l], view.heads[hk].pos[view.heads[hk].n - 1] + 1);
  size_t off = 0;
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    const evict::HeadView& hv = view.heads[hk];
    std::vector<float>& sc = scores[hk];
    for (uint32_t j = 0; j < first[hk]; ++j) sc[j] = aux[(off + j) * n_aux + slot];
    for (uint32_t j = first[hk]; j < hv.n; ++j) {
      if (weighted) {  // eviction.md step 3: n[hk, j] / sum over the heads holding the position
        double sum = 0;
        for (uint32_t h2 = 0; h2 < Hkv; ++h2) {
          const evict::HeadView& o = view.heads[h2];
          const int32_t* it = std::lower_bound(o.pos, o.pos + o.n, hv.pos[j]);
          if (it != o.pos + o.n && *it == hv.pos[j]) sum += o.vnorm[it - o.pos];
        }
        sc[j] = sum > 0 ? float(sc[j] * hv.vnorm[j] / sum) : 0.0f;
      }
      cache.aux(l, hk, j)[slot] = sc[j];
    }
    off += hv.n;
  }
}

}  // namespace defkv::engine
