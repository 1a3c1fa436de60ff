// Sampler tests. Oracles: argmax by std::max_element, hand-derived truncated
// and renormalised distributions (checked exactly on last_candidates() and
// statistically on many draws with a chi-square bound), the penalty formula
// written out per token, and an inverse-CDF replay driven by an independent
// std::mt19937_64 with the same seed.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <new>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "runtime/text/sampler.h"

using defkv::text::Sampler;
using defkv::text::SamplerParams;

#include "tests/alloc_counter.h"

namespace {

SamplerParams plain(float temperature) {
  SamplerParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  p.repeat_last_n = 64;
  p.seed = 1234;
  return p;
}

std::vector<float> random_logits(size_t n, uint32_t seed) {
  // Inputs only: a portable LCG so the values do not depend on the library.
  std::vector<float> v(n);
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = float(int((s >> 33) % 2000) - 1000) / 100.0f;  // [-10, 10), ties likely
  }
  return v;
}

// Eight probabilities placed on a shuffled set of token ids so that the
// sampler has to sort. logits = log(q) + 3 (the shift must not matter).
const std::vector<double> kQ = {0.30, 0.22, 0.16, 0.12, 0.08, 0.06, 0.04, 0.02};
const std::vector<int32_t> kPerm = {5, 2, 7, 0, 3, 6, 1, 4};  // kQ[j] -> token kPerm[j]

std::vector<float> q_logits() {
  std::vector<float> l(kQ.size());
  for (size_t j = 0; j < kQ.size(); ++j) l[size_t(kPerm[j])] = float(std::log(kQ[j]) + 3.0);
  return l;
}

// Expected distribution over token ids from weights w[j] on kQ ranks j < keep.
std::map<int32_t, double> expected_from(const std::vector<double>& w, size_t keep) {
  double s = 0;
  for (size_t j = 0; j < keep; ++j) s += w[j];
  std::map<int32_t, double> e;
  for (size_t j = 0; j < keep; ++j) e[kPerm[j]] = w[j] / s;
  return e;
}

// Draws n tokens and compares the histogram with `expected` (token -> prob):
// tokens outside the support must never appear; the chi-square statistic must
// stay below df + 10 sqrt(2 df) + 10 (far beyond a 1e-6 tail for df <= 10,
// while a wrong truncation or temperature gives thousands at n = 200000).
void check_distribution(const SamplerParams& p, const std::vector<float>& logits,
                        const std::map<int32_t, double>& expected, int n_draws) {
  Sampler s(p);
  // Exact: the candidate list after one draw is the analytic distribution.
  s.sample(logits);
  auto cand = s.last_candidates();
  REQUIRE(cand.size() == expected.size());
  double prev = 2.0;
  for (const auto& [prob, tok] : cand) {
    INFO("token " << tok);
    REQUIRE(expected.count(tok) == 1);
    CHECK(prob == Approx(expected.at(tok)).margin(1e-6));
    CHECK(prob <= prev);
    prev = prob;
  }

  std::vector<long> counts(logits.size(), 0);
  for (int i = 0; i < n_draws; ++i) counts[size_t(s.sample(logits))]++;
  double chi2 = 0;
  for (size_t t = 0; t < logits.size(); ++t) {
    auto it = expected.find(int32_t(t));
    if (it == expected.end()) {
      INFO("token " << t << " is outside the support");
      CHECK(counts[t] == 0);
      continue;
    }
    const double e = it->second * n_draws;
    chi2 += (counts[t] - e) * (counts[t] - e) / e;
  }
  const double df = double(expected.size()) - 1;
  const double bound = df + 10 * std::sqrt(2 * std::max(df, 1.0)) + 10;
  INFO("chi2 = " << chi2 << ", df = " << df << ", bound = " << bound);
  CHECK(chi2 < bound);
}

}  // namespace

TEST_CASE("argmax takes the lowest index on ties", "[sampler]") {
  CHECK(defkv::text::argmax(std::vector<float>{1, 3, 3, 2}) == 1);
  CHECK(defkv::text::argmax(std::vector<float>{-5}) == 0);
  CHECK(defkv::text::argmax(std::vector<float>{2, 2, 2}) == 0);
  CHECK_THROWS(defkv::text::argmax(std::vector<float>{}));
}

TEST_CASE("greedy sampling equals argmax", "[sampler]") {
  Sampler s(plain(0.0f));
  for (uint32_t trial = 0; trial < 200; ++trial) {
    std::vector<float> l = random_logits(300, trial);
    const auto want = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    CHECK(s.sample(l) == want);
  }
  Sampler neg(plain(-1.0f));
  CHECK(neg.sample(std::vector<float>{0.5f, 4.0f, 4.0f, -1.0f}) == 1);
}

TEST_CASE("default parameters at temperature 0 are plain greedy (no repeat penalty)", "[sampler]") {
  // llama.cpp's convention: the repetition penalty is off unless asked for, so
  // a token already in the history still wins when it is the argmax.
  SamplerParams p;
  p.temperature = 0.0f;
  Sampler s(p);
  for (int i = 0; i < 8; ++i) s.accept(2);
  const std::vector<float> l{1.0f, 0.5f, 1.05f, -2.0f};
  for (int i = 0; i < 4; ++i) CHECK(s.sample(l) == 2);
}

TEST_CASE("top-k = 1 always picks the argmax", "[sampler]") {
  SamplerParams p = plain(1.5f);
  p.top_k = 1;
  Sampler s(p);
  for (uint32_t trial = 0; trial < 500; ++trial) {
    std::vector<float> l = random_logits(64, 1000 + trial);
    const auto want = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    CHECK(s.sample(l) == want);
  }
}

TEST_CASE("same seed gives the same sequence; reset replays it", "[sampler]") {
  SamplerParams p;  // defaults: penalty, top-k, top-p, min-p all active
  p.seed = 42;
  std::vector<float> l = random_logits(512, 7);
  for (auto& x : l) x *= 0.3f;  // flatten so many tokens stay in play
  Sampler a(p), b(p);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 500; ++i) {
    sa.push_back(a.sample(l));
    sb.push_back(b.sample(l));
  }
  CHECK(sa == sb);
  a.reset();
  std::vector<int32_t> again;
  for (int i = 0; i < 500; ++i) again.push_back(a.sample(l));
  CHECK(again == sa);
  p.seed = 43;
  Sampler c(p);
  std::vector<int32_t> sc;
  for (int i = 0; i < 500; ++i) sc.push_back(c.sample(l));
  CHECK(sc != sa);
  CHECK(std::set<int32_t>(sa.begin(), sa.end()).size() > 5);
}

TEST_CASE("draws are the inverse CDF at one portable uniform per token", "[sampler]") {
  // Replays the sampler with an independent engine: u = (rng() >> 11) * 2^-53,
  // the token is the first of the sorted analytic distribution whose
  // cumulative mass exceeds u. Pins the draw to the engine bits, so results
  // are the same with any standard library.
  SamplerParams p = plain(1.0f);
  p.seed = 987654321;
  Sampler s(p);
  std::mt19937_64 rng(p.seed);
  std::vector<float> l = q_logits();
  int mismatches = 0;
  for (int i = 0; i < 2000; ++i) {
    const double u = double(rng() >> 11) * 0x1.0p-53;
    double cum = 0;
    int32_t want = kPerm.back();
    for (size_t j = 0; j < kQ.size(); ++j) {
      cum += kQ[j];
      if (u < cum) {
        want = kPerm[j];
        break;
      }
    }
    mismatches += s.sample(l) != want;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("empirical frequencies match the truncated, renormalised distribution", "[sampler]") {
  const std::vector<float> l = q_logits();
  const int n = 200000;

  SECTION("temperature 0.6 only") {
    std::vector<double> w;
    for (double q : kQ) w.push_back(std::pow(q, 1.0 / 0.6));
    check_distribution(plain(0.6f), l, expected_from(w, 8), n);
  }
  SECTION("temperature 2.5 only") {
    std::vector<double> w;
    for (double q : kQ) w.push_back(std::pow(q, 1.0 / 2.5));
    check_distribution(plain(2.5f), l, expected_from(w, 8), n);
  }
  SECTION("top-k 3") {
    SamplerParams p = plain(1.0f);
    p.top_k = 3;
    check_distribution(p, l, expected_from(kQ, 3), n);  // 0.30 0.22 0.16 / 0.68
  }
  SECTION("top-p 0.7") {
    // Cumulative 0.30, 0.52, 0.68, 0.80: the first prefix reaching 0.7 has 4.
    SamplerParams p = plain(1.0f);
    p.top_p = 0.7f;
    check_distribution(p, l, expected_from(kQ, 4), n);
  }
  SECTION("top-p 0.1 keeps at least one token") {
    SamplerParams p = plain(1.0f);
    p.top_p = 0.1f;
    check_distribution(p, l, expected_from(kQ, 1), 2000);
  }
  SECTION("min-p 0.25") {
    // Threshold 0.25 * 0.30 = 0.075: keeps 0.30 .. 0.08 (5 tokens), drops 0.06.
    SamplerParams p = plain(1.0f);
    p.min_p = 0.25f;
    check_distribution(p, l, expected_from(kQ, 5), n);
  }
  SECTION("top-k 6, temperature 2, top-p 0.8, min-p 0.55 together") {
    // Top-6, then T = 2: w = sqrt(q) over ranks 0..5, normalised:
    //   sqrt(.30,.22,.16,.12,.08,.06) = .5477 .4690 .4 .3464 .2828 .2449, sum 2.2909
    //   -> p = .2391 .2047 .1746 .1512 .1235 .1069; cumulative .2391 .4438
    //   .6184 .7696 .8931: top-p 0.8 keeps 5; min-p threshold 0.55 * .2391 =
    //   .1315 keeps the first 4 (.1235 < .1315).
    SamplerParams p = plain(2.0f);
    p.top_k = 6;
    p.top_p = 0.8f;
    p.min_p = 0.55f;
    std::vector<double> w;
    for (double q : kQ) w.push_back(std::sqrt(q));
    check_distribution(p, l, expected_from(w, 4), n);
  }
}

TEST_CASE("repetition penalty follows llama.cpp's formula", "[sampler]") {
  SamplerParams p = plain(0.0f);
  p.repeat_penalty = 1.25f;
  p.repeat_last_n = 4;
  Sampler s(p);
  for (int32_t t : {7, 2, 1, 1, 3, 4, 1}) s.accept(t);
  // Window = last 4: {1, 3, 4, 1}; distinct {1, 3, 4}; 7 and 2 fell out.
  auto h = s.history();
  REQUIRE(std::vector<int32_t>(h.begin(), h.end()) == std::vector<int32_t>{1, 3, 4, 1});

  std::vector<float> l = {2.0f, -1.0f, 0.5f, -0.25f, 0.0f, 3.0f, 1.0f, 1.5f};
  std::vector<float> want = l;
  want[1] = -1.0f * 1.25f;   // negative: multiplied, once although 1 occurs twice
  want[3] = -0.25f * 1.25f;  // negative: multiplied
  want[4] = 0.0f * 1.25f;    // zero is not > 0: multiplied (stays 0)
  std::vector<float> got = l;
  s.apply_repetition_penalty(got);
  CHECK(got == want);

  SamplerParams q = plain(0.0f);
  q.repeat_penalty = 1.25f;
  q.repeat_last_n = 8;
  Sampler pos(q);
  pos.accept(5);
  pos.accept(5);
  std::vector<float> g = l;
  pos.apply_repetition_penalty(g);
  CHECK(g[5] == 3.0f / 1.25f);  // positive: divided, once
  CHECK(g[0] == 2.0f);

  SECTION("greedy decisions see the penalty, once per distinct token") {
    SamplerParams r = plain(0.0f);
    r.repeat_penalty = 1.1f;
    r.repeat_last_n = 16;
    // 2.0 / 1.1 = 1.818: beats 1.7 when applied once (1.1^3 would give 1.50).
    Sampler a(r);
    for (int i = 0; i < 3; ++i) a.accept(0);
    CHECK(a.sample(std::vector<float>{2.0f, 1.7f}) == 0);
    Sampler b(r);
    for (int i = 0; i < 3; ++i) b.accept(0);
    CHECK(b.sample(std::vector<float>{2.0f, 1.85f}) == 1);
    // Negative logits move away from zero: -1.0 * 1.1 = -1.1 < -1.05.
    Sampler c(r);
    c.accept(0);
    CHECK(c.sample(std::vector<float>{-1.0f, -1.05f}) == 1);
    // sample() records its choice: token 1 is now penalised too.
    auto hc = c.history();
    CHECK(std::vector<int32_t>(hc.begin(), hc.end()) == std::vector<int32_t>{0, 1});
  }
  SECTION("repeat_last_n = 0 and penalty 1 disable it") {
    SamplerParams r = plain(0.0f);
    r.repeat_penalty = 1.5f;
    r.repeat_last_n = 0;
    Sampler a(r);
    a.accept(0);
    std::vector<float> x = l;
    a.apply_repetition_penalty(x);
    CHECK(x == l);
    r.repeat_last_n = 8;
    r.repeat_penalty = 1.0f;
    Sampler b(r);
    b.accept(0);
    b.apply_repetition_penalty(x);
    CHECK(x == l);
  }
}

TEST_CASE("invalid parameters are rejected", "[sampler]") {
  SamplerParams p;
  p.repeat_last_n = -1;
  CHECK_THROWS_AS(Sampler(p), std::invalid_argument);
  p.repeat_last_n = 64;
  p.repeat_penalty = 0.0f;
  CHECK_THROWS_AS(Sampler(p), std::invalid_argument);
  Sampler ok{SamplerParams{}};
  CHECK_THROWS(ok.sample(std::span<const float>{}));
}

TEST_CASE("sample() does not allocate after the first call", "[sampler]") {
  std::vector<float> l = random_logits(32000, 99);
  for (auto& x : l) x *= 0.2f;
  for (float temperature : {0.0f, 0.8f}) {
    SamplerParams p;  // defaults: every stage active
    p.temperature = temperature;
    p.top_k = temperature > 0 ? 0 : 40;  // full sort path too
    Sampler s(p);
    s.sample(l);
    const long before = g_allocs.load();
    int32_t sink = 0;
    for (int i = 0; i < 200; ++i) sink += s.sample(l);
    const long after = g_allocs.load();
    INFO("temperature " << temperature << ", sink " << sink);
    CHECK(after - before == 0);
  }
}
