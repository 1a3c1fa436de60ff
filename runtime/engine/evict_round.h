// One eviction round over every layer (docs/eviction.md, steps 1-4): gather
// each head's live entries, score them with the window queries the
// LayerRecorder holds, select, and retain. Owns the per-thread lanes and the
// scores / keep masks, allocated once for an average layer.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/engine/lookahead.h"
#include "runtime/engine/recorder.h"
#include "runtime/evict/evict.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/model/model.h"

namespace defkv::engine {

// Diagnosis hook: one layer of a round right after it is scored (before
// selection and retain). The pointers are valid only during the call.
struct RoundObservation {
  uint32_t round = 0;          // rounds completed before this one
  uint32_t layer = 0;
  bool lookahead = false;      // scored by the prefill's lookahead (lookahead.h)
  evict::Policy policy = evict::Policy::full;  // the policy that scored it
  const evict::LayerView* view = nullptr;      // heads' positions and keys
  const std::vector<std::vector<float>>* scores = nullptr;  // [n_head_kv][n_h]
};
using RoundObserver = std::function<void(const RoundObservation&)>;

// What one round does.
struct RoundSpec {
  evict::Params params;        // the policy of this round
  evict::Budget budget;
  uint32_t n_past = 0;         // the window is positions [n_past - n_window, n_past)
  uint32_t n_window = 0;       // min(window, n_past)
  Lookahead* lookahead = nullptr;  // non-null: rank by its scores (an interim round)
  uint32_t index = 0;          // rounds completed before this one (RoundObservation::round)
  // The layers to score and evict, ascending (the budget covers these); null:
  // every layer. Sliding-window layers are left out (Plan::evict_layers).
  const std::vector<uint32_t>* layers = nullptr;
};

class EvictRound {
 public:
  // n_threads lanes; layer_entries: the entries of an average layer (lanes
  // grow only when a layer-adaptive policy concentrates more in one layer).
  // value_norms: aux slot kAuxValueNorm holds the entries' value norms.
  EvictRound(const model::Config& mc, uint32_t window, uint32_t n_aux, bool value_norms, uint32_t n_threads,
             size_t layer_entries);

  // Scores the layers in parallel, one per thread at a time (serially when an
  // observer is set; the result is the same), then retains. check_cancel runs
  // before each layer; nothing is evicted until every layer is scored, so a
  // cancelled round leaves the cache as it was.
  void run(kv::KvCache& cache, const LayerRecorder& recorder, const RoundSpec& spec,
           const std::function<void()>& check_cancel, const RoundObserver& observer);

 private:
  struct Lane {
    std::vector<float> q_win;       // [n_head, window, head_dim] ordered by position
    std::vector<float> k;           // [entries of one layer, head_dim]
    std::vector<int32_t> pos;       // [entries of one layer]
    std::vector<float> aux;         // [entries of one layer, n_aux]
    std::vector<float> vnorm;       // [entries of one layer]
    std::vector<float> la_scratch;  // Lookahead::score_layer
    evict::Scratch scratch;
    evict::LayerView view;
  };
  // Gathers, scores (and, unless layer-wise, selects) layer l in `lane`;
  // touches only lane, scores_[l] and keep_[l].
  void score_layer(uint32_t l, Lane& lane, kv::KvCache& cache, const LayerRecorder& recorder,
                   const RoundSpec& spec, const RoundObserver& observer);

  uint32_t n_layer_, n_head_, n_head_kv_, head_dim_, n_aux_;
  bool value_norms_;
  std::vector<Lane> lanes_;                              // [n_threads]
  std::vector<int32_t> q_win_pos_;                       // [window] this round's window positions
  std::vector<std::vector<std::vector<float>>> scores_;  // [n_layer][n_head_kv][n_h]
  std::vector<std::vector<std::vector<uint8_t>>> keep_;  // [n_layer][n_head_kv][n_h]
  // A layer-wise selection over some layers: their scores / masks swapped in.
  std::vector<std::vector<std::vector<float>>> scores_sub_;
  std::vector<std::vector<std::vector<uint8_t>>> keep_sub_;
  std::vector<uint32_t> all_layers_;                     // 0 .. n_layer - 1
};

}  // namespace defkv::engine
