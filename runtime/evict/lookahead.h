// Lookahead scores: how much a set of future queries (e.g. the prompt's last
// W tokens, computed by a probe before the prefill reaches them) attends to
// each KV entry, aggregated the way the policy aggregates its window
// (eviction.md steps 1-2): per query row a = exp(q.k / sqrt(d) - lse_row),
// pooled along the entries (kernel k, zero padding, divided by k), then the
// maximum over the group's heads and the queries for the defensive policies,
// the mean otherwise. Unlike a window score the row normaliser lse is fixed
// (given by the caller, not the softmax over the scored entries), so an
// entry's score does not depend on which other entries are resident: ranking
// by it in every round of a bounded prefill keeps the same entries as ranking
// once over the whole prompt. Pure function; the caller applies the
// value-norm weight (it needs every head of a position).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/evict/evict.h"

namespace defkv::evict {

struct LookaheadQueries {
  uint32_t n_head = 0, n_head_kv = 0, head_dim = 0;
  uint32_t n_query = 0;          // queries per head
  const float* q = nullptr;      // [n_head, n_query, head_dim] post-RoPE
  const int32_t* q_pos = nullptr;  // [n_query] their positions (causal mask)
  const float* lse = nullptr;    // [n_head, n_query] row normalisers (natural log)
};

// Scores entries [first, n) of KV head hk. k: [n, head_dim] post-RoPE keys,
// pos: [n] ascending positions; pooling runs along the index, entries outside
// [0, n) count as zero. out: [n - first]. Mean aggregation for every policy
// except defensivekv / layer_defensivekv (max).
void lookahead_scores(const LookaheadQueries& lq, uint32_t hk, const float* k, const int32_t* pos,
                      uint32_t n, uint32_t first, Policy policy, uint32_t kernel, float* out,
                      std::vector<float>& scratch);

}  // namespace defkv::evict
