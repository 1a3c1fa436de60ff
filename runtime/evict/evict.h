// Eviction policy: decides which KV entries to keep. Pure functions over
// views of the cache; knows nothing of the model or of cache storage.
// Specification: ../shared/docs/eviction.md (the reference's behaviour).
//
// Heads may hold different numbers of entries (head-wise budgets) and layers
// may differ (layer-wise budgets). Within a head, entries are in ascending
// position order. The observation window is the W newest positions; those
// entries are present in every head and always kept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace defkv::evict {

enum class Policy { full, streaming, snapkv, adakv, criticalkv, defensivekv, layer_defensivekv };
const char* policy_name(Policy p);
bool parse_policy(std::string_view s, Policy* out);

struct Params {
  Policy policy = Policy::defensivekv;
  uint32_t window = 32;        // W: observation window (queries), always kept
  uint32_t kernel = 5;         // k: avg-pooling kernel
  uint32_t n_sink = 4;         // streaming: first tokens always kept
  float critical_mass = 0.9f;  // CriticalKV stage 1
  float ada_floor = 0.2f;      // AdaKV per-head safeguard fraction
};

// One KV head's live entries (f32 copies), ascending positions.
struct HeadView {
  uint32_t n = 0;
  const float* k = nullptr;       // [n, head_dim] post-RoPE keys
  const int32_t* pos = nullptr;   // [n] absolute positions
  const float* vnorm = nullptr;   // [n] value-projection L1 norm, mean over the group
                                  // (eviction.md step 3, before normalisation); may be
                                  // null for policies that do not use it
};

// One layer's scoring input.
struct LayerView {
  uint32_t n_head = 0, n_head_kv = 0, head_dim = 0;
  uint32_t n_window = 0;            // W actually available (<= Params::window)
  const float* q_window = nullptr;  // [n_head, n_window, head_dim] post-RoPE
  const int32_t* q_pos = nullptr;   // [n_window] positions of those queries
  std::vector<HeadView> heads;      // [n_head_kv]
};

}  // namespace defkv::evict
