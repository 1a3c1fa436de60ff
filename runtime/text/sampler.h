// Token samplers over a logits vector: greedy, temperature, top-k, top-p,
// min-p, repetition penalty; a seeded RNG makes runs reproducible.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace defkv::text {

struct SamplerParams {
  float temperature = 0.8f;   // <= 0: greedy
  int32_t top_k = 40;         // <= 0: disabled
  float top_p = 0.95f;        // >= 1: disabled
  float min_p = 0.05f;        // <= 0: disabled
  float repeat_penalty = 1.0f;// 1: disabled, the default as in llama.cpp, so temperature 0 is plain greedy
  int32_t repeat_last_n = 64; // window of recent tokens the penalty sees (0: none; < 0 rejected)
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
  // Save/restore of the RNG and the repetition history (sampler_state.cpp):
  // a text form; set_state() throws std::runtime_error when it is malformed.
  std::string state() const;
  void set_state(const std::string& s);
  const SamplerParams& params() const { return p_; }

  // Applies the repetition penalty of the current history to logits in place
  // (each distinct token of the last repeat_last_n once: logit > 0 ->
  // logit / penalty, else logit * penalty). Used by sample(); exposed for tests.
  void apply_repetition_penalty(std::span<float> logits) const;
  // The distribution the last sample() drew from, as (probability, token),
  // sorted by descending probability, truncated and renormalised (sums to 1).
  // Greedy leaves the single chosen token with probability 1.
  std::span<const std::pair<float, int32_t>> last_candidates() const {
    return {cand_.data(), cand_.size()};
  }
  // The recent tokens the penalty sees, oldest first (at most repeat_last_n).
  std::span<const int32_t> history() const { return {history_.data(), history_.size()}; }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<int32_t> history_;                 // [<= repeat_last_n] oldest first
  std::vector<std::pair<float, int32_t>> cand_;  // [<= n_vocab] (logit, then prob; id)
  std::vector<float> work_;                      // [n_vocab] penalised logits
};

// argmax with lowest index on ties
int32_t argmax(std::span<const float> logits);

// Uniform double in [0, 1) from the top 53 bits of one engine draw; unlike
// std::uniform_real_distribution it is identical on every standard library.
inline double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1.0p-53; }

}  // namespace defkv::text
