// Lookahead scores: how much a set of future queries (e.g. the prompt's last
// W tokens, computed by a probe before the prefill reaches them) attends to
// each KV entry, aggregated the way the policy aggregates its window
// (eviction.md steps 1-2): per query row a = exp(q.k / sqrt(d) - lse_row),
// pooled along the entries (kernel k, zero padding, divided by k), then the
// maximum over the group's heads and the queries for the defensive policies,
// the mean otherwise. The row normaliser lse is not the softmax over the
// scored entries but a running one the caller keeps: the log of the row's
// exp-sum over every key that has arrived so far, evicted or not (the probe's
// own keys, then each round's new entries, merged in before they are scored).
// So an entry's score does not depend on which other entries are resident,
// and once every key has arrived the normaliser is the one-shot softmax's.
// Pure function; the caller applies the value-norm weight (it needs every
// head of a position).
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
  float* lse = nullptr;          // [n_head, n_query] running row normalisers (natural log), in/out
};

// Scores entries [first, n) of KV head hk. k: [n, head_dim] post-RoPE keys,
// pos: [n] ascending positions; pooling runs along the index, entries outside
// [0, n) count as zero. Entries [arrive_begin, arrive_end) (first <=
// arrive_begin <= arrive_end <= n) are keys not yet in the normalisers: the
// rows of head hk get their exp-sum merged into lq.lse (causally) before
// scoring. out: [n - first]. Mean aggregation for every policy except
// defensivekv / layer_defensivekv (max).
void lookahead_scores(const LookaheadQueries& lq, uint32_t hk, const float* k, const int32_t* pos,
                      uint32_t n, uint32_t first, uint32_t arrive_begin, uint32_t arrive_end, Policy policy,
                      uint32_t kernel, float* out, std::vector<float>& scratch);

}  // namespace defkv::evict
