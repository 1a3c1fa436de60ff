// Token samplers over a logits vector: greedy, temperature, top-k, top-p,
// min-p, repetition penalty; a seeded RNG makes runs reproducible.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace defkv::text {

struct SamplerParams {
  float temperature = 0.8f;   // <= 0: greedy
  int32_t top_k = 40;         // <= 0: disabled
  float top_p = 0.95f;        // >= 1: disabled
  float min_p = 0.05f;        // <= 0: disabled
  float repeat_penalty = 1.1f;// 1: disabled (llama.cpp semantics)
  int32_t repeat_last_n = 64; // window of recent tokens the penalty sees
  uint64_t seed = 0xdefc0de;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  // Picks the next token from logits[n_vocab]. Records it in the history used
  // by the repetition penalty. No allocation after the first call.
  int32_t sample(std::span<const float> logits);
  // Adds prompt tokens to the repetition history.
  void accept(int32_t token);
  void reset();
  const SamplerParams& params() const { return p_; }
 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<int32_t> history_;
  std::vector<std::pair<float, int32_t>> cand_;
};

// argmax with lowest index on ties
int32_t argmax(std::span<const float> logits);

}  // namespace defkv::text
