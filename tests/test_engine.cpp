// Engine: KV budgets and schedules on stories260K. Oracles: the full-cache run
// (a budget that is never reached must change nothing), StreamingLLM's
// definition (sinks + most recent, read back from the cache), the eviction
// test vectors' keep masks (one-shot, paper budgets), the pool bound
// (budget + max(chunk, slack) + one page per head), the pool's fixed address
// range and a global allocation counter (no allocation per token).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <tuple>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/engine/generate.h"
#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"

#include "tests/alloc_counter.h"

using namespace defkv;
namespace fs = std::filesystem;

namespace {

std::string shared_dir() {
  const char* e = std::getenv("DEFKV_SHARED");
  return e && *e ? std::string(e) : std::string("../shared");
}

const model::Model& stories() {
  static std::unique_ptr<model::Model> m = model::Model::load(shared_dir() + "/models/stories260K/stories260K.gguf");
  return *m;
}

// A fixed, natural-looking prompt: BOS then greedy continuation ids of the model.
std::vector<int32_t> prompt_tokens(size_t n) {
  static std::vector<int32_t> ids;
  if (ids.empty()) {
    engine::ContextParams p;
    p.n_ctx = 512;
    engine::Context ctx(stories(), p);
    const int32_t bos = 1;
    ids.push_back(bos);
    std::span<const float> l = ctx.eval(std::span<const int32_t>(&bos, 1));
    text::SamplerParams sp;
    sp.seed = 42;
    text::Sampler s(sp);  // sampled (not greedy) so the text does not loop
    while (ids.size() < 500) {
      const int32_t t = s.sample(l);
      ids.push_back(t == 2 ? 1 : t);
      l = ctx.step(ids.back());
    }
  }
  REQUIRE(n <= ids.size());
  return {ids.begin(), ids.begin() + long(n)};
}

const evict::Policy kEvictPolicies[] = {evict::Policy::streaming,   evict::Policy::snapkv,
                                        evict::Policy::adakv,       evict::Policy::criticalkv,
                                        evict::Policy::defensivekv, evict::Policy::layer_defensivekv};

std::vector<int32_t> greedy(engine::Context& ctx, const std::vector<int32_t>& prompt, int n,
                            std::vector<float>* last_logits = nullptr) {
  std::vector<int32_t> out;
  std::span<const float> l = ctx.eval(prompt);
  for (int i = 0; i < n; ++i) {
    out.push_back(text::argmax(l));
    l = ctx.step(out.back());
  }
  if (last_logits) last_logits->assign(l.begin(), l.end());
  return out;
}

uint64_t layer_entries(const kv::KvCache& c, uint32_t l) {
  uint64_t n = 0;
  for (uint32_t h = 0; h < c.config().n_head_kv; ++h) n += c.size(l, h);
  return n;
}

}  // namespace

TEST_CASE("a budget that is never reached changes nothing, for every policy and schedule", "[engine]") {
  const auto prompt = prompt_tokens(60);
  engine::ContextParams base;
  base.n_ctx = 512;
  base.chunk_tokens = 64;
  base.kv_type = quant::DType::f32;
  engine::Context full(stories(), base);
  std::vector<float> want_logits;
  const auto want = greedy(full, prompt, 60, &want_logits);
  for (evict::Policy pol : kEvictPolicies)
    for (engine::Schedule sch : {engine::Schedule::oneshot, engine::Schedule::bounded}) {
      DYNAMIC_SECTION(evict::policy_name(pol) << " " << engine::schedule_name(sch)) {
        engine::ContextParams p = base;
        p.budget_tokens = 200;  // 60 + 60 tokens < 200 - slack
        p.evict.policy = pol;
        p.schedule = sch;
        engine::Context ctx(stories(), p);
        std::vector<float> logits;
        CHECK(greedy(ctx, prompt, 60, &logits) == want);
        CHECK(ctx.stats().evict_rounds == 0);
        float d = 0;
        for (size_t i = 0; i < logits.size(); ++i) d = std::max(d, std::fabs(logits[i] - want_logits[i]));
        CHECK(d == 0.0f);
        CHECK(ctx.cache().entries() == 120ull * 4 * 5);
      }
    }
}

TEST_CASE("streaming keeps exactly the sinks and the most recent tokens", "[engine][streaming]") {
  const auto prompt = prompt_tokens(200);
  for (engine::Schedule sch : {engine::Schedule::bounded, engine::Schedule::oneshot}) {
    DYNAMIC_SECTION(engine::schedule_name(sch)) {
      engine::ContextParams p;
      p.n_ctx = 512;
      p.budget_tokens = 48;
      p.evict.policy = evict::Policy::streaming;
      p.evict.n_sink = 4;
      p.evict.window = 32;
      p.schedule = sch;
      engine::Context ctx(stories(), p);
      auto expect_streaming = [&](uint32_t n_past) {
        std::vector<int32_t> want = {0, 1, 2, 3};
        for (uint32_t q = n_past - 44; q < n_past; ++q) want.push_back(int32_t(q));
        for (uint32_t l = 0; l < 5; ++l)
          for (uint32_t h = 0; h < 4; ++h) {
            INFO("layer " << l << " head " << h << " n_past " << n_past);
            CHECK(ctx.cache().positions(l, h) == want);
          }
      };
      ctx.eval(prompt);
      expect_streaming(200);
      if (sch == engine::Schedule::bounded) {
        // Decoding evicts when a head reaches budget + slack (48 + 32).
        uint32_t rounds = ctx.stats().evict_rounds;
        for (int i = 0; i < 100; ++i) {
          ctx.step(prompt[size_t(i)]);
          if (ctx.stats().evict_rounds != rounds) {
            rounds = ctx.stats().evict_rounds;
            expect_streaming(ctx.n_past());
          }
          CHECK(ctx.cache().size(0, 0) < 48 + 32);
        }
        CHECK(rounds >= 3);
      } else {
        for (int i = 0; i < 20; ++i) ctx.step(prompt[size_t(i)]);
        CHECK(ctx.cache().size(2, 1) == 48 + 20);  // oneshot: no eviction while decoding
      }
    }
  }
}

TEST_CASE("bounded schedule: 20,000 tokens with a 256-token budget stay flat in a fixed pool", "[engine][bounded]") {
  engine::ContextParams p;
  p.n_threads = 1;  // 2 cores shared by the whole test suite
  p.n_ctx = 21000;
  p.budget_tokens = 256;
  p.evict.policy = evict::Policy::defensivekv;
  engine::Context ctx(stories(), p);
  const kv::KvCache& c = ctx.cache();
  const uint64_t HL = 4 * 5;
  const uint64_t B = 256, S = ctx.decode_slack(), C = ctx.chunk_tokens(), P = c.config().page_tokens;
  CHECK(S == 32);
  CHECK(C == 64);
  // The pool is sized once: (budget + max(chunk, slack) + one page) per head.
  CHECK(c.config().capacity_entries == (B + std::max(C, S) + P) * HL);
  const uint8_t* pool = c.pool_data();
  const size_t reserved = c.bytes_reserved();
  const size_t bytes_per_entry_page = c.page_bytes() / P;  // all sections of one entry
  const size_t bound_bytes = (B + std::max(C, S) + P) * HL * bytes_per_entry_page;
  CHECK(reserved <= bound_bytes);

  text::SamplerParams sp;
  sp.seed = 7;
  text::Sampler sampler(sp);
  const auto prompt = prompt_tokens(300);
  std::span<const float> logits = ctx.eval(prompt);
  for (int32_t t : prompt) sampler.accept(t);
  size_t max_bytes_first = 0, max_bytes_second = 0;
  uint64_t min_entries_after_warmup = UINT64_MAX, max_entries = 0;
  bool runs_in_pool = true;
  uint64_t allocs_steady = 0, allocs_evict = 0;
  const int n_gen = 20000;
  for (int i = 0; i < n_gen; ++i) {
    const uint32_t rounds_before = ctx.stats().evict_rounds;
    const uint64_t a0 = g_allocs.load();
    int32_t t = sampler.sample(logits);
    if (t == 2) t = 1;  // keep generating past EOS (the point is memory)
    logits = ctx.step(t);
    if (i >= 1000) (ctx.stats().evict_rounds != rounds_before ? allocs_evict : allocs_steady) += g_allocs.load() - a0;
    const size_t b = c.bytes_in_use();
    (i < n_gen / 2 ? max_bytes_first : max_bytes_second) = std::max(i < n_gen / 2 ? max_bytes_first : max_bytes_second, b);
    max_entries = std::max(max_entries, c.entries());
    if (i >= 1000) min_entries_after_warmup = std::min(min_entries_after_warmup, c.entries());
    if (i % 97 == 0)
      for (uint32_t l = 0; l < 5; ++l)
        for (uint32_t h = 0; h < 4; ++h)
          for (const kv::Run& r : c.runs(l, h))
            runs_in_pool = runs_in_pool && r.k >= pool && r.k + r.n * c.row_bytes() <= pool + reserved;
  }
  INFO("peak bytes first half " << max_bytes_first << ", second half " << max_bytes_second << ", bound "
                                << bound_bytes);
  CHECK(ctx.n_past() == 300 + n_gen);
  // Flat: the second half never needs more than the first, up to one partial
  // page per head (head-adaptive budgets move entries between heads, so which
  // heads end a page partly filled varies from round to round).
  CHECK(max_bytes_second <= max_bytes_first + HL * c.page_bytes());
  CHECK(max_bytes_first <= reserved);
  CHECK(ctx.stats().kv_bytes_peak <= reserved);
  CHECK(max_entries <= (B + S) * HL);           // decode never exceeds budget + slack
  CHECK(min_entries_after_warmup >= B * HL);    // and never evicts below the budget
  CHECK(c.pool_data() == pool);
  CHECK(c.bytes_reserved() == reserved);
  CHECK(runs_in_pool);
  CHECK(allocs_steady == 0);  // no allocation per decoded token
  // Eviction rounds too: scratch sized by a layer's total entries (steady in
  // decoding), not by whichever head head-wise budgets made the largest.
  INFO("allocations during " << ctx.stats().evict_rounds << " eviction rounds after warm-up: " << allocs_evict);
  CHECK(allocs_evict == 0);
  CHECK(ctx.stats().evict_rounds >= uint32_t(n_gen / S) - 2);
  c.validate();
}

TEST_CASE("eviction rounds score layers in parallel with the result of one thread", "[engine][bounded][threads]") {
  // Oracle: the same context with a round observer, which runs the layers of
  // every round one after another on one thread (score_layer then also keeps
  // a layer's heads on that thread).
  for (evict::Policy pol : kEvictPolicies) {
    if (pol == evict::Policy::streaming) continue;
    DYNAMIC_SECTION(evict::policy_name(pol)) {
      auto run = [&](bool observe, std::vector<float>& logits, std::vector<std::vector<int32_t>>& kept,
                     uint32_t& rounds) {
        engine::ContextParams p;
        p.n_threads = 2;
        p.n_ctx = 512;
        p.budget_tokens = 64;
        p.evict.policy = pol;
        engine::Context ctx(stories(), p);
        uint32_t observed = 0;
        if (observe) ctx.set_round_observer([&](const engine::Context::RoundObservation&) { ++observed; });
        const std::vector<int32_t> out = greedy(ctx, prompt_tokens(300), 60, &logits);
        rounds = ctx.stats().evict_rounds;
        CHECK(observed == (observe ? rounds * 5 : 0));
        kept.clear();
        for (uint32_t l = 0; l < 5; ++l)
          for (uint32_t h = 0; h < 4; ++h) {
            kept.emplace_back();
            for (const kv::Run& r : ctx.cache().runs(l, h)) kept.back().insert(kept.back().end(), r.pos, r.pos + r.n);
          }
        return out;
      };
      std::vector<float> l_serial, l_par;
      std::vector<std::vector<int32_t>> k_serial, k_par;
      uint32_t r_serial = 0, r_par = 0;
      const auto t_serial = run(true, l_serial, k_serial, r_serial);
      const auto t_par = run(false, l_par, k_par, r_par);
      CHECK(r_serial >= 4);  // prefill rounds and decode rounds
      CHECK(r_par == r_serial);
      CHECK(t_par == t_serial);
      CHECK(k_par == k_serial);
      CHECK(l_par == l_serial);  // bit-identical
    }
  }
}

TEST_CASE("every policy x kv type x schedule runs on stories260K", "[engine][matrix]") {
  const auto prompt = prompt_tokens(150);
  for (quant::DType kv : {quant::DType::f16, quant::DType::f32, quant::DType::q8_0}) {
    {  // full cache
      engine::ContextParams p;
      p.n_ctx = 512;
      p.kv_type = kv;
      engine::Context ctx(stories(), p);
      greedy(ctx, prompt, 40);
      CHECK(ctx.cache().entries() == 190ull * 20);
      CHECK_FALSE(ctx.has_budget());
    }
    for (evict::Policy pol : kEvictPolicies)
      for (engine::Schedule sch : {engine::Schedule::oneshot, engine::Schedule::bounded}) {
        DYNAMIC_SECTION(quant::dtype_name(kv) << " " << evict::policy_name(pol) << " " << engine::schedule_name(sch)) {
          engine::ContextParams p;
          p.n_ctx = 512;
          p.kv_type = kv;
          p.budget_tokens = 48;
          p.evict.policy = pol;
          p.schedule = sch;
          engine::Context ctx(stories(), p);
          ctx.eval(prompt);
          const uint64_t HL = 20;
          // Right after the prompt the cache holds exactly the budget, with
          // the observation window present in every head.
          CHECK(ctx.cache().entries() == 48 * HL);
          for (uint32_t l = 0; l < 5; ++l) {
            if (pol != evict::Policy::layer_defensivekv) CHECK(layer_entries(ctx.cache(), l) == 48 * 4);
            for (uint32_t h = 0; h < 4; ++h) {
              const auto pos = ctx.cache().positions(l, h);
              REQUIRE(pos.size() >= 32);
              CHECK(std::is_sorted(pos.begin(), pos.end()));
              for (int i = 0; i < 32; ++i) CHECK(pos[pos.size() - 32 + size_t(i)] == 150 - 32 + i);
              if (pol == evict::Policy::snapkv || pol == evict::Policy::streaming) CHECK(pos.size() == 48);
            }
          }
          int32_t tok = 1;
          for (int i = 0; i < 100; ++i) tok = text::argmax(ctx.step(tok));
          CHECK(ctx.n_past() == 250);
          if (sch == engine::Schedule::bounded) {
            CHECK(ctx.cache().entries() < (48 + 32) * HL);
            CHECK(ctx.stats().evict_rounds >= 4);
          } else {
            CHECK(ctx.cache().entries() == (48 + 100) * HL);
            CHECK(ctx.stats().evict_rounds == 1);
          }
          ctx.cache().validate();
        }
      }
  }
}

TEST_CASE("oneshot with the paper's ratio keeps what the eviction vectors keep", "[engine][vectors]") {
  const std::string dir = shared_dir() + "/testdata/eviction";
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".gguf") files.push_back(e.path().string());
  REQUIRE(files.size() >= 2);
  struct Pol { evict::Policy p; const char* key; };
  const Pol pols[] = {{evict::Policy::snapkv, "snapkv"},
                      {evict::Policy::adakv, "adakv"},
                      {evict::Policy::criticalkv, "criticalkv"},
                      {evict::Policy::defensivekv, "defensivekv"},
                      {evict::Policy::layer_defensivekv, "layer_defensivekv"}};
  for (const std::string& path : files) {
    auto f = gguf::File::open(path);
    const gguf::Array& arr = f->get_array("eviction.token_ids");
    const std::vector<int32_t> toks(arr.ints.begin(), arr.ints.end());
    const uint32_t T = uint32_t(toks.size()), L = 5, Hkv = 4;
    const double r = f->get_float("eviction.compression_ratio");
    for (const Pol& pol : pols) {
      DYNAMIC_SECTION(fs::path(path).filename().string() << " " << pol.key) {
        engine::ContextParams p;
        p.n_ctx = 512;
        p.kv_type = quant::DType::f32;
        p.kv_ratio = 1.0 - r;
        p.schedule = engine::Schedule::oneshot;
        p.evict.policy = pol.p;
        p.evict.window = uint32_t(f->get_uint("eviction.window"));
        p.evict.kernel = uint32_t(f->get_uint("eviction.kernel"));
        p.evict.critical_mass = float(f->get_float("eviction.critical_mass"));
        p.evict.ada_floor = float(f->get_float("eviction.ada_floor_alpha"));
        p.evict.n_sink = 0;
        engine::Context ctx(stories(), p);
        ctx.eval(toks);
        CHECK(ctx.stats().evict_rounds == 1);
        uint64_t mismatches = 0, kept = 0;
        for (uint32_t l = 0; l < L; ++l) {
          const std::string name = pol.p == evict::Policy::layer_defensivekv
                                       ? std::string("layer_defensivekv.keep")
                                       : "layer" + std::to_string(l) + "." + pol.key + ".keep";
          const gguf::TensorInfo& ti = f->tensor(name);
          const int32_t* keep = reinterpret_cast<const int32_t*>(ti.data) +
                                (pol.p == evict::Policy::layer_defensivekv ? size_t(l) * Hkv * T : 0);
          for (uint32_t h = 0; h < Hkv; ++h) {
            const auto pos = ctx.cache().positions(l, h);
            const std::set<int32_t> got(pos.begin(), pos.end());
            for (uint32_t j = 0; j < T; ++j) {
              const bool want = keep[size_t(h) * T + j] != 0;
              kept += want;
              mismatches += want != (got.count(int32_t(j)) != 0);
            }
          }
        }
        INFO(mismatches << " of " << (uint64_t(L) * Hkv * T) << " entries differ (" << kept << " kept)");
        CHECK(mismatches == 0);
      }
    }
  }
}

TEST_CASE("plan_context: budget, chunk, slack and pool from the model config and the params", "[engine][plan]") {
  // Oracle: the rules as docs/eviction.md ("Schedules") and params.h state
  // them, computed here by hand for a config that is not a real model.
  model::Config mc;
  mc.n_layer = 3;
  mc.n_head = 8;
  mc.n_head_kv = 2;
  mc.head_dim = 16;
  mc.n_ctx_train = 1000;
  const uint64_t HL = 2 * 3;
  // The pool: tokens per head (+ one page of 16 per head), in whole pages.
  auto pool = [&](uint64_t tokens_per_head) { return (tokens_per_head * HL + 15) / 16 * 16; };
  {  // no budget: every position, the full-cache chunk, no aux
    const engine::Plan pl = engine::plan_context(mc, engine::ContextParams{});
    CHECK(pl.n_ctx == 1000);
    CHECK_FALSE(pl.budgeted);
    CHECK(pl.schedule == engine::Schedule::oneshot);
    CHECK(pl.chunk == 256);
    CHECK(pl.n_aux == 0);
    CHECK(pl.cache.capacity_entries == pool(1000 + 16));  // n_ctx + one page per head
  }
  {  // a fixed budget, bounded: chunk = a third of it in multiples of 64, in [max(64, 2W), 256]
    for (const auto& [budget, chunk] : {std::pair<int64_t, uint32_t>{100, 64}, {400, 128}, {600, 192}, {900, 256}}) {
      INFO("budget " << budget);
      engine::ContextParams p;
      p.budget_tokens = budget;
      const engine::Plan pl = engine::plan_context(mc, p);
      CHECK(pl.bounded);
      CHECK(pl.budget == std::min<uint32_t>(uint32_t(budget), 1000));
      CHECK(pl.chunk == chunk);
      CHECK(pl.slack == 32);  // = window
      CHECK(pl.value_norms);  // defensivekv weights by value norms
      CHECK(pl.lookahead);    // bounded, scored: the lookahead's slot too
      CHECK(pl.n_aux == 2);
      CHECK(pl.ceiling_tokens() == pl.budget + std::max<uint32_t>(chunk, 32));
      CHECK(pl.cache.capacity_entries == pool(std::min<uint64_t>(pl.budget + chunk, 1000) + 16));
    }
    engine::ContextParams p;
    p.budget_tokens = 100;
    p.evict.window = 48;  // min chunk max(64, 2 * 48) = 96
    p.chunk_tokens = 0;
    CHECK(engine::plan_context(mc, p).chunk == 96);
    p.chunk_tokens = 40;  // given: used as is
    p.decode_slack = 50;
    const engine::Plan pl = engine::plan_context(mc, p);
    CHECK(pl.chunk == 40);
    CHECK(pl.ceiling_tokens() == 150);  // budget + max(chunk, slack)
    CHECK(pl.cache.capacity_entries == pool(150 + 16));
  }
  {  // kv_ratio: the budget waits for the prompt; the pool holds ceil(ratio * n_ctx) + chunk
    engine::ContextParams p;
    p.kv_ratio = 0.5;
    p.evict.policy = evict::Policy::snapkv;
    const engine::Plan pl = engine::plan_context(mc, p);
    CHECK(pl.budget == 0);
    CHECK(pl.budget_max == 500);
    CHECK(pl.chunk == 128);  // 500 / 3 = 166 -> 128
    CHECK(!pl.value_norms);  // snapkv needs no value norms
    CHECK(pl.n_aux == 2);    // slot 1: the lookahead score (slot 0 unused)
    CHECK(pl.cache.capacity_entries == pool(500 + 128 + 16));
    p.evict.policy = evict::Policy::streaming;  // scores nothing: no lookahead
    CHECK(engine::plan_context(mc, p).n_aux == 0);
    p.evict.policy = evict::Policy::snapkv;
    CHECK(engine::ratio_budget(p, 300) == 150);
    CHECK_THROWS_AS(engine::ratio_budget(p, 40), engine::ParamError);  // 20 < window + sinks
  }
  {  // oneshot: the pool holds every position
    engine::ContextParams p;
    p.budget_tokens = 64;
    p.schedule = engine::Schedule::oneshot;
    const engine::Plan pl = engine::plan_context(mc, p);
    CHECK_FALSE(pl.bounded);
    CHECK(pl.chunk == 256);
    CHECK(pl.cache.capacity_entries == pool(1000 + 16));
  }
  {  // kv_mem_bytes: the largest budget whose pool fits; one more token per head does not
    engine::ContextParams p;
    p.kv_mem_bytes = 96 * 1024;
    const engine::Plan pl = engine::plan_context(mc, p);
    REQUIRE(pl.budget >= 36);
    CHECK(kv::KvCache(pl.cache).bytes_reserved() <= 96u * 1024);
    engine::ContextParams q;
    q.budget_tokens = int64_t(pl.budget) + 1;
    CHECK(kv::KvCache(engine::plan_context(mc, q).cache).bytes_reserved() > 96u * 1024);
  }
  {  // a ParamError names the field
    engine::ContextParams p;
    p.budget_tokens = 64;
    p.evict.kernel = 4;
    try {
      engine::plan_context(mc, p);
      FAIL("an even pooling kernel accepted");
    } catch (const engine::ParamError& e) {
      CHECK(e.field == "evict.kernel");
      CHECK_THAT(e.rest, Catch::Contains("odd"));
    }
  }
}

TEST_CASE("bad budgets and parameters give clear errors", "[engine][errors]") {
  const model::Model& m = stories();
  auto params = [] {
    engine::ContextParams p;
    p.n_ctx = 256;
    return p;
  };
  auto p = params();
  p.budget_tokens = 0;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("positive"));
  p.budget_tokens = -5;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("positive") && Catch::Contains("-5"));
  p.budget_tokens = 35;  // window 32 + 4 sinks = 36
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("window + sinks = 36"));
  p.budget_tokens = 36;
  CHECK_NOTHROW(engine::Context(m, p));
  p = params();
  p.budget_tokens = 64;
  p.kv_ratio = 0.5;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("at most one"));
  p = params();
  p.kv_ratio = 0.0;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("(0, 1]"));
  p.kv_ratio = 1.5;
  CHECK_THROWS_AS(engine::Context(m, p), std::invalid_argument);
  p.kv_ratio = 0.2;
  {
    engine::Context ctx(m, p);  // budget fixed by the first prompt
    const auto short_prompt = prompt_tokens(100);  // 20 tokens < 36
    CHECK_THROWS_WITH(ctx.eval(short_prompt), Catch::Contains("kv_ratio") && Catch::Contains("window + sinks"));
    CHECK(ctx.n_past() == 0);
    ctx.eval(prompt_tokens(200));
    CHECK(ctx.budget_tokens() == 40);
  }
  p = params();
  p.kv_mem_bytes = 1000;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("kv_mem_bytes"));
  p.kv_mem_bytes = -1;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("positive"));
  p.kv_mem_bytes = 1 << 20;
  {
    engine::Context ctx(m, p);
    CHECK(ctx.cache().bytes_reserved() <= size_t(1 << 20));
    CHECK(ctx.budget_tokens() >= 36);
  }
  p = params();
  p.budget_tokens = 64;
  p.evict.policy = evict::Policy::full;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("full"));
  p = params();
  p.kv_type = quant::DType::bf16;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("KV type"));
  p = params();
  p.budget_tokens = 64;
  p.evict.kernel = 4;
  CHECK_THROWS_WITH(engine::Context(m, p), Catch::Contains("odd"));
  // A prompt longer than n_ctx.
  p = params();
  engine::Context ctx(m, p);
  const auto long_prompt = prompt_tokens(300);
  CHECK_THROWS_WITH(ctx.eval(long_prompt), Catch::Contains("n_ctx = 256"));
  CHECK(ctx.n_past() == 0);
  CHECK_THROWS_AS(ctx.eval(std::vector<int32_t>{}), std::invalid_argument);
}

TEST_CASE("generate stops at EOS, at n_predict and at a full context", "[engine]") {
  engine::ContextParams p;
  p.n_ctx = 40;
  engine::Context ctx(stories(), p);
  text::SamplerParams sp;
  sp.temperature = 0;
  sp.repeat_penalty = 1;
  text::Sampler s(sp);
  std::vector<int32_t> seen;
  auto res = engine::generate(ctx, std::vector<int32_t>{1}, 10, s, 2, [&](int32_t t) {
    seen.push_back(t);
    return true;
  });
  CHECK(res.stop == engine::StopReason::n_predict);
  CHECK(res.tokens.size() == 10);
  CHECK(seen == res.tokens);
  CHECK(res.tokens[0] == 403);  // golden first token after BOS ("Once")
  ctx.reset();
  s.reset();
  res = engine::generate(ctx, std::vector<int32_t>{1}, 100, s, -1);
  CHECK(res.stop == engine::StopReason::context_full);
  CHECK(ctx.n_past() == 40);
  ctx.reset();
  s.reset();
  // Pretend the first greedy token is EOS.
  res = engine::generate(ctx, std::vector<int32_t>{1}, 100, s, 403);
  CHECK(res.stop == engine::StopReason::eos);
  CHECK(res.tokens == std::vector<int32_t>{403});
  ctx.reset();
  s.reset();
  res = engine::generate(ctx, std::vector<int32_t>{1}, 100, s, -1, [](int32_t) { return false; });
  CHECK(res.stop == engine::StopReason::callback);
  CHECK(res.tokens.size() == 1);
  ctx.reset();
  s.reset();
  // An end-of-generation predicate (as Tokenizer::is_eog gives) stops the same way.
  res = engine::generate(ctx, std::vector<int32_t>{1}, 100, s, [](int32_t t) { return t == 403; });
  CHECK(res.stop == engine::StopReason::eos);
  CHECK(res.tokens == std::vector<int32_t>{403});
}

TEST_CASE("a oneshot compression cancelled midway is retried by the next eval() or step()", "[engine][cancel]") {
  // Oracle: the same prompt in a context that is never cancelled. The retry
  // must compress with the same window (the prompt's tail) before any new
  // token, so caches and logits match exactly.
  const auto prompt = prompt_tokens(300);
  const std::vector<int32_t> more = {prompt[10], prompt[11], prompt[12]};
  for (const evict::Policy pol : {evict::Policy::criticalkv, evict::Policy::defensivekv,
                                  evict::Policy::layer_defensivekv}) {
    for (const bool via_step : {true, false}) {
      INFO(evict::policy_name(pol) << (via_step ? " via step()" : " via eval()"));
      engine::ContextParams p;
      p.n_ctx = 512;
      p.budget_tokens = 64;
      p.schedule = engine::Schedule::oneshot;
      p.evict.policy = pol;
      engine::Context ref(stories(), p), ctx(stories(), p);
      std::atomic<bool> flag{false};
      ctx.set_cancel_flag(&flag);
      bool fired = false;  // cancel once, inside the compression round (after layer 0 is scored)
      ctx.set_round_observer([&](const engine::Context::RoundObservation& ob) {
        if (!fired && ob.layer == 0) { fired = true; flag = true; }
      });
      CHECK_THROWS_AS(ctx.eval(prompt), model::Cancelled);
      REQUIRE(fired);
      CHECK(ctx.n_past() == prompt.size());
      CHECK(ctx.cache().entries() > uint64_t(64) * 4 * 5);  // not (fully) compressed
      flag = false;
      ref.eval(prompt);
      std::span<const float> a, b;
      if (via_step) {
        a = ref.step(more[0]);
        b = ctx.step(more[0]);
      } else {
        a = ref.eval(more);
        b = ctx.eval(more);
      }
      CHECK(ctx.n_past() == ref.n_past());
      CHECK(ctx.cache().entries() == ref.cache().entries());
      for (uint32_t l = 0; l < 5; ++l)
        for (uint32_t h = 0; h < 4; ++h) CHECK(ctx.cache().positions(l, h) == ref.cache().positions(l, h));
      CHECK(std::vector<float>(a.begin(), a.end()) == std::vector<float>(b.begin(), b.end()));
      // Done once: no further oneshot round.
      const uint32_t rounds = ctx.stats().evict_rounds;
      ctx.step(more[1]);
      CHECK(ctx.stats().evict_rounds == rounds);
    }
  }
}

TEST_CASE("engine: kv_mem_bytes is an upper bound on the pool and the budget is the largest that fits",
          "[engine][kvmem]") {
  // Oracle: the pool the cache really allocates (bytes_reserved) and, for the
  // largest-budget claim, a context with budget_tokens = budget + 1 under the
  // same options, whose pool must not fit.
  const model::Model& m = stories();
  for (quant::DType t : {quant::DType::f16, quant::DType::f32, quant::DType::q8_0})
    for (evict::Policy pol : {evict::Policy::snapkv, evict::Policy::defensivekv})
      for (int64_t mem : {int64_t(200 * 1024), int64_t(300 * 1024), int64_t(300 * 1024 + 777), int64_t(1 << 20)}) {
        INFO("type " << quant::dtype_name(t) << " policy " << evict::policy_name(pol) << " kv_mem " << mem);
        engine::ContextParams p;
        p.n_ctx = 4096;
        p.kv_type = t;
        p.evict.policy = pol;
        p.kv_mem_bytes = mem;
        engine::Context c(m, p);
        CHECK(c.cache().bytes_reserved() <= uint64_t(mem));
        REQUIRE(c.budget_tokens() < p.n_ctx);
        engine::ContextParams q = p;
        q.kv_mem_bytes.reset();
        q.budget_tokens = int64_t(c.budget_tokens());
        engine::Context same(m, q);  // the same budget given in tokens: the same pool
        CHECK(same.cache().bytes_reserved() == c.cache().bytes_reserved());
        q.budget_tokens = int64_t(c.budget_tokens()) + 1;
        engine::Context more(m, q);
        CHECK(more.cache().bytes_reserved() > uint64_t(mem));
      }
  // The reported case: q8_0 rows (padded to a 32-element block) with aux
  // floats at 300K.
  engine::ContextParams p;
  p.kv_type = quant::DType::q8_0;
  p.kv_mem_bytes = 300 * 1024;
  engine::Context c(m, p);
  CHECK(c.cache().bytes_reserved() <= 300u * 1024);
  CHECK(c.budget_tokens() > 0);
}

TEST_CASE("bounded decoding defers the value norms and fills them batched, equal to per-token norms",
          "[engine][vnorm]") {
  // Oracle: the oneshot schedule computes each decoded token's norm in its own
  // forward pass (quant::value_norms on one token); the bounded one stashes
  // the values and computes the norms of all pending tokens in one call.
  const auto prompt = prompt_tokens(40);
  engine::ContextParams p;
  p.n_ctx = 512;
  p.budget_tokens = 200;  // never reached: no eviction round changes the cache
  p.evict.policy = evict::Policy::defensivekv;
  p.schedule = engine::Schedule::oneshot;
  engine::Context per_token(stories(), p);
  p.schedule = engine::Schedule::bounded;
  engine::Context deferred(stories(), p);
  REQUIRE(deferred.decode_slack() >= 20);
  const auto a = greedy(per_token, prompt, 20), b = greedy(deferred, prompt, 20);
  REQUIRE(a == b);
  auto norms = [](const engine::Context& ctx) {
    std::map<std::tuple<uint32_t, uint32_t, int32_t>, float> m;
    const uint32_t na = ctx.cache().config().n_aux;
    for (uint32_t l = 0; l < 5; ++l)
      for (uint32_t h = 0; h < 4; ++h)
        for (const kv::Run& r : ctx.cache().runs(l, h))
          for (uint32_t i = 0; i < r.n; ++i) m[{l, h, r.pos[i]}] = r.aux[i * na];
    return m;
  };
  // Before a flush, the decoded tokens' norms are pending (NaN), the prompt's are set.
  const auto pending = norms(deferred);
  size_t n_nan = 0;
  for (const auto& [key, v] : pending) {
    const bool decoded = std::get<2>(key) >= int32_t(prompt.size());
    n_nan += std::isnan(v);
    CHECK(std::isnan(v) == decoded);
  }
  CHECK(n_nan == 20u * 5 * 4);
  std::vector<uint8_t> state;
  deferred.save_state(state);  // flushes
  const auto want = norms(per_token), got = norms(deferred);
  REQUIRE(want.size() == got.size());
  for (const auto& [key, v] : want) {
    const float g = got.at(key);
    REQUIRE(v > 0.0f);
    CHECK(std::fabs(g - v) <= 1e-5f * v);
  }
  // A state saved mid-stash restores without pending norms and decodes on.
  engine::Context restored(stories(), p);
  restored.load_state(state);
  for (const auto& [key, v] : norms(restored)) CHECK(!std::isnan(v));
  CHECK(restored.step(b.back())[0] == deferred.step(b.back())[0]);
}
