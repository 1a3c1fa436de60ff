// Lookahead of the bounded schedule (runtime/engine/lookahead.h,
// runtime/evict/lookahead.h). Oracles: a double-precision scalar evaluation
// of the score's definition; the model's own queries at the same positions
// in a full prefill (layer 0 depends only on token and position); a separate
// forward of the sinks and the probe tokens for the normalisers; the budget
// arithmetic for the resident-KV ceiling.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/evict/lookahead.h"
#include "runtime/model/model.h"

using namespace defkv;

namespace {

std::string shared_dir() {
  const char* e = std::getenv("DEFKV_SHARED");
  return e && *e ? std::string(e) : std::string("../shared");
}

const model::Model& needle() {
  static std::unique_ptr<model::Model> m =
      model::Model::load(shared_dir() + "/models/needle/needle-llama-0.9M-f32.gguf");
  return *m;
}

// A deterministic token sequence: BOS then pseudo-random ordinary tokens.
std::vector<int32_t> tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t{1};
  while (t.size() < n) t.push_back(int32_t(3 + rng() % 500));
  return t;
}

// Records the post-RoPE queries of every layer of a forward pass.
struct QueryTap final : model::LayerObserver {
  std::vector<std::vector<float>> q;  // [layer] -> [n_tokens, n_head, head_dim]
  void on_layer(const model::LayerTensors& t) override {
    if (q.size() <= t.layer) q.resize(t.layer + 1);
    q[t.layer].assign(t.q, t.q + size_t(t.n_tokens) * cfg->n_head * cfg->head_dim);
  }
  const model::Config* cfg = nullptr;
};

}  // namespace

TEST_CASE("lookahead_scores follow their definition", "[lookahead][evict]") {
  const uint32_t H = 4, Hkv = 2, G = H / Hkv, d = 8, nq = 5, n = 37;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(size_t(H) * nq * d), k(size_t(n) * d), lse(size_t(H) * nq);
  for (float& x : q) x = nd(rng);
  for (float& x : k) x = nd(rng);
  for (float& x : lse) x = 1.0f + 0.5f * nd(rng);
  std::vector<int32_t> pos(n), qpos(nq);
  for (uint32_t j = 0; j < n; ++j) pos[j] = int32_t(2 * j + (j > 20 ? 5 : 0));  // gaps, like evicted entries
  for (uint32_t i = 0; i < nq; ++i) qpos[i] = pos[n - 3] + int32_t(i) - 2;        // the last entries are causal-masked for some
  evict::LookaheadQueries lq;
  lq.n_head = H;
  lq.n_head_kv = Hkv;
  lq.head_dim = d;
  lq.n_query = nq;
  lq.q = q.data();
  lq.q_pos = qpos.data();
  const double scale = 1.0 / std::sqrt(double(d));
  auto logit = [&](uint32_t h, uint32_t i, uint32_t u) {
    double s = 0;
    for (uint32_t c = 0; c < d; ++c) s += double(q[(size_t(h) * nq + i) * d + c]) * k[size_t(u) * d + c];
    return s * scale;
  };
  struct Arrive { uint32_t first, begin, end; };
  for (evict::Policy pol : {evict::Policy::snapkv, evict::Policy::defensivekv}) {
    for (Arrive ar : {Arrive{0, 0, 0}, Arrive{1, 1, 1}, Arrive{30, 30, 30}, Arrive{0, 4, 29}, Arrive{30, 32, 37}}) {
      for (uint32_t hk = 0; hk < Hkv; ++hk) {
        INFO(evict::policy_name(pol) << " first " << ar.first << " arrivals [" << ar.begin << ", " << ar.end
                                     << ") head " << hk);
        std::vector<float> out(n - ar.first), scratch, run = lse;
        lq.lse = run.data();
        evict::lookahead_scores(lq, hk, k.data(), pos.data(), n, ar.first, ar.begin, ar.end, pol, 5, out.data(),
                                scratch);
        // The running normaliser: the given one plus the arrivals' exp-sum
        // (causal); the other KV head's rows are untouched.
        std::vector<double> want(lse.begin(), lse.end());
        for (uint32_t g = 0; g < G; ++g)
          for (uint32_t i = 0; i < nq; ++i) {
            const uint32_t h = hk * G + g;
            double sum = std::exp(double(lse[size_t(h) * nq + i]));
            for (uint32_t u = ar.begin; u < ar.end; ++u)
              if (pos[u] <= qpos[i]) sum += std::exp(logit(h, i, u));
            want[size_t(h) * nq + i] = std::log(sum);
          }
        for (size_t r = 0; r < run.size(); ++r) CHECK(run[r] == Approx(want[r]).epsilon(1e-5));
        for (uint32_t j = ar.first; j < n; ++j) {
          double agg = 0.0;
          for (uint32_t g = 0; g < G; ++g)
            for (uint32_t i = 0; i < nq; ++i) {
              const uint32_t h = hk * G + g;
              double pooled = 0;
              for (int u = int(j) - 2; u <= int(j) + 2; ++u) {
                if (u < 0 || u >= int(n) || pos[u] > qpos[i]) continue;
                pooled += std::exp(logit(h, i, uint32_t(u)) - want[size_t(h) * nq + i]);
              }
              pooled /= 5;
              if (pol == evict::Policy::defensivekv) agg = std::max(agg, pooled);
              else agg += pooled / (G * nq);
            }
          CHECK(out[j - ar.first] == Approx(agg).epsilon(1e-4).margin(1e-12));
        }
      }
    }
  }
  std::vector<float> out(n), scratch, run = lse;
  lq.lse = run.data();
  CHECK_THROWS_AS(evict::lookahead_scores(lq, 0, k.data(), pos.data(), n, 0, 0, 0, evict::Policy::snapkv, 4, out.data(),
                                          scratch),
                  std::invalid_argument);
  CHECK_THROWS_AS(evict::lookahead_scores(lq, 2, k.data(), pos.data(), n, 0, 0, 0, evict::Policy::snapkv, 5, out.data(),
                                          scratch),
                  std::invalid_argument);
  CHECK_THROWS_AS(evict::lookahead_scores(lq, 0, k.data(), pos.data(), n, 5, 4, 9, evict::Policy::snapkv, 5,
                                          out.data(), scratch),
                  std::invalid_argument);
}

TEST_CASE("the lookahead probe runs the prompt's tail at its true positions over the sinks", "[lookahead][engine]") {
  const model::Model& m = needle();
  const model::Config& mc = m.config();
  const uint32_t T = 700, W = 32, S = 4, H = mc.n_head, d = mc.head_dim, L = mc.n_layer;
  const std::vector<int32_t> prompt = tokens(T, 3);
  engine::ContextParams p;
  p.n_threads = 1;
  p.budget_tokens = 100;
  p.evict.policy = evict::Policy::layer_defensivekv;
  engine::Context ctx(m, p);
  ctx.eval(prompt);
  const engine::Lookahead* la = ctx.lookahead();
  REQUIRE(la != nullptr);
  REQUIRE(la->n_query() == W);
  for (uint32_t i = 0; i < W; ++i) CHECK(la->query_pos()[i] == int32_t(T - W + i));

  // Layer 0's queries depend only on the token and its position: they equal
  // the full prefill's at those positions.
  QueryTap full;
  full.cfg = &mc;
  {
    kv::CacheConfig cc;
    cc.n_layer = L;
    cc.n_head_kv = mc.n_head_kv;
    cc.head_dim = d;
    cc.type = quant::DType::f32;
    cc.capacity_entries = size_t(T + 16) * mc.n_head_kv * L;
    kv::KvCache cache(cc);
    model::Workspace ws(mc, T, 1024, 1);
    std::vector<int32_t> pos(T);
    for (uint32_t i = 0; i < T; ++i) pos[i] = int32_t(i);
    model::ForwardHooks hk;
    hk.observer = &full;
    m.forward(prompt.data(), pos.data(), T, cache, ws, hk, nullptr, false);
  }
  for (uint32_t h = 0; h < H; ++h)
    for (uint32_t i = 0; i < W; ++i)
      for (uint32_t c = 0; c < d; ++c)
        CHECK(la->queries(0)[(size_t(h) * W + i) * d + c] ==
              Approx(full.q[0][(size_t(T - W + i) * H + h) * d + c]).margin(1e-5));

  // Every layer: the queries and normalisers of the sinks + tail run on its
  // own (two forward calls), the normalisers in double over its keys.
  QueryTap probe;
  probe.cfg = &mc;
  kv::CacheConfig cc;
  cc.n_layer = L;
  cc.n_head_kv = mc.n_head_kv;
  cc.head_dim = d;
  cc.type = quant::DType::f32;
  cc.capacity_entries = size_t(S + W + 16) * mc.n_head_kv * L;
  kv::KvCache cache(cc);
  model::Workspace ws(mc, W, 1024, 1);
  std::vector<int32_t> spos{0, 1, 2, 3}, qpos(W);
  for (uint32_t i = 0; i < W; ++i) qpos[i] = int32_t(T - W + i);
  model::ForwardHooks hk;
  hk.observer = &probe;
  m.forward(prompt.data(), spos.data(), S, cache, ws, hk, nullptr, false);
  m.forward(prompt.data() + T - W, qpos.data(), W, cache, ws, hk, nullptr, false);
  const uint32_t G = H / mc.n_head_kv;
  for (uint32_t l = 0; l < L; ++l) {
    for (uint32_t hkv = 0; hkv < mc.n_head_kv; ++hkv) {
      const uint32_t nk = cache.size(l, hkv);
      REQUIRE(nk == S + W);
      std::vector<float> k(size_t(nk) * d);
      std::vector<int32_t> kp(nk);
      cache.gather(l, hkv, k.data(), nullptr, kp.data(), nullptr);
      for (uint32_t g = 0; g < G; ++g) {
        const uint32_t h = hkv * G + g;
        for (uint32_t i = 0; i < W; ++i) {
          const float* q = probe.q[l].data() + (size_t(i) * H + h) * d;
          for (uint32_t c = 0; c < d; ++c)
            CHECK(la->queries(l)[(size_t(h) * W + i) * d + c] == Approx(q[c]).margin(1e-4));
          double sum = 0;
          for (uint32_t j = 0; j < nk; ++j) {
            if (kp[j] > qpos[i]) continue;
            double s = 0;
            for (uint32_t c = 0; c < d; ++c) s += double(q[c]) * k[size_t(j) * d + c];
            sum += std::exp(s / std::sqrt(double(d)));
          }
          CHECK(la->lse(l)[size_t(h) * W + i] == Approx(std::log(sum)).margin(1e-3));
        }
      }
    }
  }
}

TEST_CASE("the lookahead's normalisers grow by every key that arrives, evicted or not", "[lookahead][engine]") {
  // Layer 0's keys and queries depend only on token and position, so a full
  // prefill gives the keys a bounded prefill saw (and evicted) at layer 0.
  const model::Model& m = needle();
  const model::Config& mc = m.config();
  const uint32_t T = 700, W = 32, H = mc.n_head, d = mc.head_dim, G = H / mc.n_head_kv;
  const std::vector<int32_t> prompt = tokens(T, 5);
  engine::ContextParams p;
  p.n_threads = 1;
  p.budget_tokens = 100;
  p.kv_type = quant::DType::f32;
  p.evict.policy = evict::Policy::defensivekv;
  engine::Context ctx(m, p);
  int32_t arrived = 0;  // n_past of the last lookahead round
  ctx.set_round_observer([&](const engine::RoundObservation& ob) {
    if (ob.layer != 0 || !ob.lookahead) return;
    for (const evict::HeadView& hv : ob.view->heads)
      if (hv.n) arrived = std::max(arrived, hv.pos[hv.n - 1] + 1);
  });
  ctx.eval(prompt);
  const engine::Lookahead* la = ctx.lookahead();
  REQUIRE(la != nullptr);
  REQUIRE(arrived > 200);
  REQUIRE(arrived < int32_t(T - W));

  kv::CacheConfig cc;
  cc.n_layer = mc.n_layer;
  cc.n_head_kv = mc.n_head_kv;
  cc.head_dim = d;
  cc.type = quant::DType::f32;
  cc.capacity_entries = size_t(T + 16) * mc.n_head_kv * mc.n_layer;
  kv::KvCache cache(cc);
  model::Workspace ws(mc, T, 1024, 1);
  std::vector<int32_t> pos(T);
  for (uint32_t i = 0; i < T; ++i) pos[i] = int32_t(i);
  m.forward(prompt.data(), pos.data(), T, cache, ws, {}, nullptr, false);
  for (uint32_t hkv = 0; hkv < mc.n_head_kv; ++hkv) {
    std::vector<float> k(size_t(T) * d);
    std::vector<int32_t> kp(T);
    cache.gather(0, hkv, k.data(), nullptr, kp.data(), nullptr);
    for (uint32_t g = 0; g < G; ++g) {
      const uint32_t h = hkv * G + g;
      for (uint32_t i = 0; i < W; ++i) {
        const float* q = la->queries(0).data() + (size_t(h) * W + i) * d;
        const int32_t qp = int32_t(T - W + i);
        // Every key before the last lookahead round, and the probe's own.
        double sum = 0;
        for (uint32_t j = 0; j < T; ++j) {
          if (kp[j] > qp || (kp[j] >= arrived && kp[j] < int32_t(T - W))) continue;
          double s = 0;
          for (uint32_t c = 0; c < d; ++c) s += double(q[c]) * k[size_t(j) * d + c];
          sum += std::exp(s / std::sqrt(double(d)));
        }
        INFO("head " << h << " query " << i);
        CHECK(la->running_lse(0)[size_t(h) * W + i] == Approx(std::log(sum)).margin(1e-3));
        CHECK(la->running_lse(0)[size_t(h) * W + i] > la->lse(0)[size_t(h) * W + i]);
      }
    }
  }
}

TEST_CASE("a prefill cancelled and resumed reuses its probe and keeps what an uninterrupted one keeps",
          "[lookahead][engine][cancel]") {
  // Oracle: the same prompt in a context that is never cancelled. The cancel
  // lands at a chunk boundary, so the resumed call's chunks and rounds are
  // the uninterrupted call's; re-probing would restart the normalisers and
  // lose the evicted keys' mass.
  const model::Model& m = needle();
  const model::Config& mc = m.config();
  const std::vector<int32_t> prompt = tokens(700, 17);
  engine::ContextParams p;
  p.n_threads = 1;
  p.budget_tokens = 80;
  p.evict.policy = evict::Policy::defensivekv;
  engine::Context ref(m, p);
  ref.eval(prompt);
  engine::Context ctx(m, p);
  const uint32_t chunk = ctx.chunk_tokens();
  bool fired = false;
  ctx.set_progress([&](uint64_t done, uint64_t) {
    if (!fired && done == 3 * chunk) {
      fired = true;
      throw model::Cancelled("cancelled by the test");
    }
  });
  CHECK_THROWS_AS(ctx.eval(prompt), model::Cancelled);
  REQUIRE(fired);
  REQUIRE(ctx.n_past() == 3 * chunk);
  REQUIRE(ctx.lookahead()->probes_run() == 1);
  ctx.eval(std::span<const int32_t>(prompt).subspan(3 * chunk));
  CHECK(ctx.lookahead()->probes_run() == 1);
  for (uint32_t l = 0; l < mc.n_layer; ++l)
    for (uint32_t h = 0; h < mc.n_head_kv; ++h) CHECK(ctx.cache().positions(l, h) == ref.cache().positions(l, h));
  // A new prompt (and a reset) probes again.
  ctx.reset();
  ctx.eval(prompt);
  CHECK(ctx.lookahead()->probes_run() == 2);
}

TEST_CASE("a long bounded prefill with the lookahead stays within budget + one chunk", "[lookahead][engine][bounded]") {
  const model::Model& m = needle();
  const model::Config& mc = m.config();
  const uint64_t HL = uint64_t(mc.n_head_kv) * mc.n_layer;
  for (evict::Policy pol : {evict::Policy::snapkv, evict::Policy::criticalkv, evict::Policy::defensivekv,
                            evict::Policy::layer_defensivekv}) {
    INFO(evict::policy_name(pol));
    engine::ContextParams p;
    p.n_threads = 1;
    p.budget_tokens = 80;
    p.evict.policy = pol;
    engine::Context ctx(m, p);
    std::vector<bool> rounds;  // lookahead, per round (layer 0)
    ctx.set_round_observer([&](const engine::RoundObservation& ob) {
      if (ob.layer == 0) rounds.push_back(ob.lookahead);
    });
    const std::vector<int32_t> prompt = tokens(700, 11);
    ctx.eval(prompt);
    const uint32_t chunk = ctx.chunk_tokens();
    CHECK(ctx.stats().kv_entries_peak <= (uint64_t(80) + chunk) * HL);
    CHECK(ctx.cache().entries() <= uint64_t(80) * HL);
    REQUIRE(rounds.size() >= 10);
    for (size_t r = 0; r + 1 < rounds.size(); ++r) CHECK(rounds[r]);  // interim: the lookahead
    CHECK_FALSE(rounds.back());  // the last round scores with the real window
    CHECK_FALSE(ctx.lookahead()->active());
    // A follow-up turn probes its own tail, and decoding never uses it.
    rounds.clear();
    ctx.eval(std::span<const int32_t>(prompt.data(), 200));
    for (size_t r = 0; r + 1 < rounds.size(); ++r) CHECK(rounds[r]);
    CHECK(ctx.lookahead()->query_pos()[0] == int32_t(700 + 200 - 32));
    rounds.clear();
    for (int i = 0; i < 70; ++i) ctx.step(5);
    CHECK(!rounds.empty());
    for (bool r : rounds) CHECK_FALSE(r);
    CHECK(ctx.stats().kv_entries_peak <= (uint64_t(80) + chunk) * HL);
  }
}

namespace {

// A deep copy of one layer's view and scores from a round observer (the
// observation's pointers live only during the call).
struct CapturedLayer {
  uint32_t fed = 0;  // tokens the test had fed when the round ran
  evict::LayerView shape;
  std::vector<float> q;
  std::vector<int32_t> q_pos;
  std::vector<std::vector<float>> k, vnorm, scores;
  std::vector<std::vector<int32_t>> pos;
  CapturedLayer(const engine::RoundObservation& ob, uint32_t fed_) : fed(fed_), shape(*ob.view), scores(*ob.scores) {
    const evict::LayerView& v = *ob.view;
    q.assign(v.q_window, v.q_window + size_t(v.n_head) * v.n_window * v.head_dim);
    q_pos.assign(v.q_pos, v.q_pos + v.n_window);
    for (const evict::HeadView& h : v.heads) {
      k.emplace_back(h.k, h.k + size_t(h.n) * v.head_dim);
      pos.emplace_back(h.pos, h.pos + h.n);
      vnorm.emplace_back(h.vnorm, h.vnorm + h.n);
    }
  }
  // The captured entries, standing for a sequence of n_seen positions.
  evict::LayerView view(uint32_t n_seen) const {
    evict::LayerView v = shape;
    v.q_window = q.data();
    v.q_pos = q_pos.data();
    for (size_t h = 0; h < v.heads.size(); ++h) v.heads[h] = {uint32_t(pos[h].size()), k[h].data(), pos[h].data(), vnorm[h].data()};
    v.n_seen = n_seen;
    return v;
  }
};

}  // namespace

TEST_CASE("bounded rounds floor the defensive score at the mean over every position fed", "[lookahead][engine][floor]") {
  // Oracle: the kernel (whose floor test_evict checks against a scalar
  // reference) run on the same resident entries with n_seen set to the
  // number of tokens this test fed; with n_seen 0 (the mean over the
  // residents only) the scores differ, so the engine must pass the sequence
  // length. The decoding rounds run in a second context restored from the
  // first one's saved state.
  const model::Model& m = needle();
  const model::Config& mc = m.config();
  const uint32_t T = 700;
  const std::vector<int32_t> prompt = tokens(T, 23);
  for (evict::Policy pol : {evict::Policy::defensivekv, evict::Policy::layer_defensivekv}) {
    DYNAMIC_SECTION(evict::policy_name(pol)) {
      engine::ContextParams p;
      p.n_threads = 1;
      p.budget_tokens = 100;
      p.evict.policy = pol;
      std::vector<CapturedLayer> rounds;
      uint32_t fed = 0;
      auto observe = [&](const engine::RoundObservation& ob) {
        if (!ob.lookahead) rounds.emplace_back(ob, fed);
      };
      engine::Context ctx(m, p);
      ctx.set_round_observer(observe);
      fed = T;
      ctx.eval(prompt);
      std::vector<uint8_t> state;
      ctx.save_state(state);
      engine::Context restored(m, p);
      restored.load_state(state);
      restored.set_round_observer(observe);
      for (int i = 0; i < 40; ++i) {
        fed = T + uint32_t(i) + 1;
        restored.step(int32_t(3 + i));
      }
      REQUIRE(rounds.size() >= 2 * mc.n_layer);
      REQUIRE(rounds.front().fed == T);      // the prefill's last round
      REQUIRE(rounds.back().fed > T);  // a decoding round of the restored context
      const evict::Budget b = evict::entries_budget(ctx.budget_tokens(), mc.n_head_kv, mc.n_layer);
      evict::Scratch scratch;
      std::vector<std::vector<float>> s;
      uint32_t differ = 0;
      for (const CapturedLayer& r : rounds) {
        INFO("round at " << r.fed << " tokens");
        for (const auto& ps : r.pos) REQUIRE(ps.size() < r.fed);  // entries were evicted
        evict::score_layer(r.view(r.fed), p.evict, b, scratch, s);
        CHECK(s == r.scores);
        evict::score_layer(r.view(0), p.evict, b, scratch, s);
        differ += s != r.scores;
      }
      CHECK(differ == rounds.size());
    }
  }
}
