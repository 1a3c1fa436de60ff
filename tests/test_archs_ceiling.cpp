// Resident KV under the bounded schedule on gemma3.gguf (seven sliding-window
// layers, window 64, and one global layer, 5). Oracle: the schedule's
// definitions (plan.h, window_layers.cpp) checked on the cache's own
// positions at every eviction round (seen before its retain, when a layer is
// fullest), after every prefill chunk and after every decode step:
//   - the global layer never holds more than the ceiling, budget +
//     max(chunk, slack) per head; after a chunk it holds min(n_past, budget)
//     per head, after a decode step at most budget + slack - 1;
//   - a sliding layer holds exactly its newest positions: at least the
//     min(n_past, window - 1) the next query can see (its own key makes the
//     window's last), at most window + page - 1 (dropped a page at a time),
//     with or without a budget, and is never scored.
#include "tests/archs_util.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/text/sampler.h"

using namespace defkv;
using archs_test::vectors_dir;

TEST_CASE("gemma3: resident KV never exceeds the ceiling on the global layer under the bounded schedule",
          "[archs][evict][swa][ceiling]") {
  auto m = model::Model::load(vectors_dir() + "/gemma3.gguf");
  const model::Config& mc = m->config();
  std::vector<uint32_t> global, sliding;
  for (uint32_t l = 0; l < mc.n_layer; ++l) (m->layer(l).window == 0 ? global : sliding).push_back(l);
  REQUIRE(global == std::vector<uint32_t>{5});
  const uint32_t w = 64, P = 16, Hkv = mc.n_head_kv, n_decode = 100;
  REQUIRE(m->layer(0).window == w);
  const uint64_t HL = uint64_t(Hkv) * global.size();
  const auto ids = archs_test::read_ids("gemma3.ids.txt");
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 150);

  for (evict::Policy pol : {evict::Policy::snapkv, evict::Policy::adakv, evict::Policy::criticalkv,
                            evict::Policy::defensivekv, evict::Policy::layer_defensivekv})
    for (bool ratio : {false, true}) {
      INFO(evict::policy_name(pol) << (ratio ? ", --kv-ratio 0.3" : ", budget 40 tokens"));
      engine::ContextParams p;
      p.n_ctx = 320;
      p.kv_type = quant::DType::f32;
      p.page_tokens = P;
      p.evict.policy = pol;
      p.evict.window = 16;
      p.evict.n_sink = 4;
      p.schedule = engine::Schedule::bounded;
      if (ratio) p.kv_ratio = 0.3;
      else p.budget_tokens = 40;
      engine::Context ctx(*m, p);
      const uint64_t C = ctx.chunk_tokens(), S = ctx.decode_slack();
      REQUIRE(C < prompt.size());  // several chunks, a round after each
      const kv::KvCache& cache = ctx.cache();

      auto global_entries = [&] {
        uint64_t n = 0;
        for (uint32_t l : global)
          for (uint32_t h = 0; h < Hkv; ++h) n += cache.size(l, h);
        return n;
      };
      auto check_sliding = [&](const char* when) {
        const uint32_t n_past = ctx.n_past();
        for (uint32_t l : sliding)
          for (uint32_t h = 0; h < Hkv; ++h) {
            INFO(when << ": sliding layer " << l << " head " << h << " at n_past " << n_past);
            const auto pos = cache.positions(l, h);
            REQUIRE(pos.size() >= std::min(n_past, w - 1));
            REQUIRE(pos.size() <= w + P - 1);
            std::vector<int32_t> newest(pos.size());
            for (size_t i = 0; i < pos.size(); ++i) newest[i] = int32_t(n_past - pos.size() + i);
            REQUIRE(pos == newest);
          }
      };

      uint32_t observed = 0;
      ctx.set_round_observer([&](const engine::Context::RoundObservation& ob) {
        CHECK(ob.layer == 5);  // sliding layers are outside the budget: never scored
        ++observed;
        const uint64_t ceiling = ctx.budget_tokens() + std::max(C, S);
        INFO("round " << ob.round << " at n_past " << ctx.n_past());
        CHECK(global_entries() <= ceiling * HL);
        check_sliding("round");
      });
      ctx.set_progress([&](uint64_t, uint64_t) {
        INFO("after the prefill chunk ending at " << ctx.n_past());
        CHECK(global_entries() == std::min<uint64_t>(ctx.n_past(), ctx.budget_tokens()) * HL);
        check_sliding("chunk");
      });
      std::span<const float> l = ctx.eval(prompt);
      const uint64_t B = ctx.budget_tokens();
      CHECK(B == (ratio ? 45u : 40u));
      const uint32_t prefill_rounds = ctx.stats().evict_rounds;
      CHECK(prefill_rounds >= prompt.size() / C);
      for (uint32_t i = 0; i < n_decode; ++i) {
        l = ctx.step(text::argmax(l));
        INFO("after decode step " << i);
        CHECK(global_entries() >= B * HL);
        CHECK(global_entries() <= (B + S - 1) * HL);
        check_sliding("step");
      }
      CHECK(ctx.stats().evict_rounds >= prefill_rounds + n_decode / S - 1);
      CHECK(observed == ctx.stats().evict_rounds);  // one observation (layer 5) per round
      // The peak the stats saw (after each batch) is within the pool's share
      // for both kinds: the ceiling on the global layer, window + page - 1
      // plus a batch on each sliding one.
      CHECK(ctx.stats().kv_entries_peak <= (B + std::max(C, S)) * HL + sliding.size() * Hkv * (w + P - 1 + C));
      CHECK(ctx.stats().kv_bytes_peak <= ctx.stats().kv_bytes_reserved);
      cache.validate();
    }
}
