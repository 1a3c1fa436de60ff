// Lookahead for the bounded schedule's interim prefill rounds.
//
// An interim round's window holds arbitrary context, not the question that
// ends the prompt, and re-ranking the survivors every round loses what the
// question will need (docs/eval/RESULTS.md, "Bounded schedule: lookahead").
// When a prefill will have interim rounds, probe() runs the fed text's last
// `window` tokens once at their true positions over the sinks only (a scratch
// cache of n_sink + window entries per head), recording their post-RoPE
// queries and each query's log-normaliser over the keys it saw. score_layer()
// then scores entries with those queries (evict/lookahead.h), each query's
// normaliser growing by every key that arrives (its exp-sum merged in the
// round after it arrives, before it is scored): an entry's score does not
// depend on which other entries are resident, and it is scored against the
// softmax over every key of the sequence so far, as one shot divides by the
// whole prompt. Scores are stored per entry in aux slot kAuxLookahead and
// computed once per entry (plus a re-score of the kernel/2 newest, pooled
// before their right neighbours existed).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "runtime/engine/recorder.h"
#include "runtime/evict/evict.h"
#include "runtime/evict/lookahead.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"

namespace defkv::engine {

class Lookahead {
 public:
  // max_batch: tokens per forward() of the shared workspace.
  Lookahead(const model::Model& m, const evict::Params& ep, uint32_t page_tokens, uint32_t max_batch,
            uint32_t n_threads);

  // Records the first n_sink tokens of the sequence as they are fed
  // (tokens at positions first, first + 1, ...).
  void note_tokens(uint32_t first, std::span<const int32_t> tokens);
  // Forgets the sequence (its sinks and the last probe).
  void clear() {
    sinks_.clear();
    active_ = false;
    resumable_ = false;
  }

  // Probes the last min(window, tokens.size()) of `tokens`, which will sit at
  // positions n_past .. n_past + tokens.size() - 1, over the known sinks.
  // Afterwards every entry at a position >= from() (all of them) is scored
  // by the next round, and every resident key not in the probe joins the
  // normalisers. A call that resumes a prefill cut short (cancelled) after
  // the last probe, with the same tail at the same positions over the same
  // sinks, reuses that probe and the scores and normalisers built since.
  void probe(model::Workspace& ws, uint32_t n_past, std::span<const int32_t> tokens,
             const std::atomic<bool>* cancel);
  bool active() const { return active_; }
  void deactivate() { active_ = false; }
  int64_t from() const { return from_; }
  // After a round at n_past: entries up to n_past - kernel/2 are final, and
  // every key before n_past is in the normalisers.
  void scored_until(uint32_t n_past) { from_ = int64_t(n_past) - int64_t(kernel_ / 2); }

  // Scores of one layer for a lookahead round: heads of `view` (gathered,
  // ascending positions, vnorm set for the value-weighted policies); aux:
  // the gathered aux floats [entries, n_aux] in the same order. Entries at
  // positions >= from() get a new score, written to scores and to the cache's
  // aux slot; older ones keep aux's stored score. Keys that arrived since the
  // last round join layer l's normalisers first. Rounds may score different
  // layers in parallel (each touches only its layer's normalisers).
  void score_layer(uint32_t l, const evict::LayerView& view, const float* aux, uint32_t n_aux, uint32_t slot,
                   evict::Policy policy, kv::KvCache& cache, std::vector<std::vector<float>>& scores,
                   std::vector<float>& scratch);

  // Introspection (tests): the probe's queries of layer l [n_head, n_query,
  // head_dim], their positions, their log-normalisers over the probe's keys
  // and the running ones [n_head, n_query] (lse(l) plus every key merged since).
  uint32_t n_query() const { return n_query_; }
  std::span<const float> queries(uint32_t l) const;
  std::span<const int32_t> query_pos() const { return {q_pos_.data(), n_query_}; }
  std::span<const float> lse(uint32_t l) const;
  std::span<const float> running_lse(uint32_t l) const;
  uint64_t probes_run() const { return probes_run_; }  // forward passes run by probe()

 private:
  const model::Model& model_;
  uint32_t n_layer_, n_head_, n_head_kv_, head_dim_, window_, n_sink_, kernel_, max_batch_;
  std::unique_ptr<kv::KvCache> cache_;  // sinks + probe tokens
  std::unique_ptr<LayerRecorder> rec_;  // the probe's query ring
  std::vector<int32_t> sinks_;          // the first n_sink tokens of the sequence
  std::vector<int32_t> tok_, pos_;      // the last probe's batch
  std::vector<int32_t> next_tok_, next_pos_;
  std::vector<float> q_;                // [n_layer, n_head, n_query, head_dim]
  std::vector<int32_t> q_pos_;          // [window]
  std::vector<float> lse_;              // [n_layer, n_head, n_query] over the probe's keys
  std::vector<float> lse_run_;          // [n_layer, n_head, n_query] running (evict/lookahead.h)
  std::vector<float> k_;                // [n_sink + window, head_dim] gather scratch
  std::vector<int32_t> kpos_;
  uint32_t n_query_ = 0;
  int64_t from_ = 0;
  int64_t q0_ = 0;                // the first probe position: keys from there on are in lse_ already
  std::vector<int64_t> arrived_;  // [n_layer] keys at positions in [arrived_[l], q0_) are not in lse_run_ yet
  bool resumable_ = false;        // the last probe completed and no clear() since
  uint64_t probes_run_ = 0;
  bool active_ = false;
};

}  // namespace defkv::engine
