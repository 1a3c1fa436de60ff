// Eviction on every architecture: each policy and schedule on each case of
// ../shared/testdata/archs and on random synthesized models with GQA ratios
// 1-8 and head dims 64 and 128. Oracles: the full-cache run (a budget never
// reached changes no logit), StreamingLLM's definition (sinks + most recent),
// the budget and observation-window invariants, and the value norms (aux[0])
// against a double-precision forward of layer 0 from the raw GGUF tensors
// (the arch's own W_o, V projection and value bias).
#include "tests/archs_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "runtime/engine/context.h"
#include "runtime/kv/kv_cache.h"
#include "runtime/text/sampler.h"
#include "tools/synth.h"

using namespace defkv;
using archs_test::vectors_dir;
namespace fs = std::filesystem;

namespace {

const evict::Policy kPolicies[] = {evict::Policy::streaming,   evict::Policy::snapkv,
                                   evict::Policy::adakv,       evict::Policy::criticalkv,
                                   evict::Policy::defensivekv, evict::Policy::layer_defensivekv};

uint64_t layer_entries(const kv::KvCache& c, uint32_t l) {
  uint64_t n = 0;
  for (uint32_t h = 0; h < c.config().n_head_kv; ++h) n += c.size(l, h);
  return n;
}

// Prompt of n_prompt tokens, then n_decode greedy steps, under a 48-token
// budget: checks the budget, the observation window and (streaming) the
// kept positions after the prompt and at the end.
void run_policy(const model::Model& m, const std::vector<int32_t>& prompt, evict::Policy pol, engine::Schedule sch,
                uint32_t n_decode) {
  const model::Config& mc = m.config();
  const uint32_t L = mc.n_layer, Hkv = mc.n_head_kv, B = 48, W = 32, P = 16, n_ctx = 256;
  const uint32_t T = uint32_t(prompt.size());
  // Windowed layers (window < n_ctx) are outside the budget; they hold the
  // newest positions their window can still see.
  std::vector<uint32_t> global;
  for (uint32_t l = 0; l < L; ++l)
    if (m.layer(l).window == 0 || m.layer(l).window >= n_ctx) global.push_back(l);
  const uint64_t HL = uint64_t(global.size()) * Hkv;
  engine::ContextParams p;
  p.n_ctx = n_ctx;
  p.kv_type = quant::DType::f32;
  p.budget_tokens = B;
  p.evict.policy = pol;
  p.evict.window = W;
  p.evict.n_sink = 4;
  p.page_tokens = P;
  p.schedule = sch;
  engine::Context ctx(m, p);
  auto budgeted = [&] {
    uint64_t n = 0;
    for (uint32_t l : global) n += layer_entries(ctx.cache(), l);
    return n;
  };
  auto check_windowed = [&](uint32_t n_past) {
    for (uint32_t l = 0; l < L; ++l) {
      const uint32_t w = m.layer(l).window;
      if (w == 0 || w >= n_ctx) continue;
      for (uint32_t h = 0; h < Hkv; ++h) {
        INFO("windowed layer " << l << " head " << h << " n_past " << n_past);
        const auto pos = ctx.cache().positions(l, h);
        REQUIRE(pos.size() >= std::min(n_past, w - 1));
        CHECK(pos.size() <= w + P - 1);
        for (size_t i = 0; i < pos.size(); ++i) CHECK(pos[i] == int32_t(n_past - pos.size() + i));
      }
    }
  };
  std::span<const float> l = ctx.eval(prompt);
  CHECK(budgeted() == B * HL);
  CHECK(ctx.stats().evict_rounds >= 1);
  check_windowed(T);
  for (uint32_t ly : global) {
    if (pol != evict::Policy::layer_defensivekv) CHECK(layer_entries(ctx.cache(), ly) == uint64_t(B) * Hkv);
    for (uint32_t h = 0; h < Hkv; ++h) {
      const auto pos = ctx.cache().positions(ly, h);
      REQUIRE(pos.size() >= W);
      CHECK(std::is_sorted(pos.begin(), pos.end()));
      for (uint32_t i = 0; i < W; ++i) CHECK(pos[pos.size() - W + i] == int32_t(T - W + i));
      if (pol == evict::Policy::streaming) {
        std::vector<int32_t> want = {0, 1, 2, 3};
        for (uint32_t q = T - (B - 4); q < T; ++q) want.push_back(int32_t(q));
        CHECK(pos == want);
      }
    }
  }
  for (uint32_t i = 0; i < n_decode; ++i) {
    REQUIRE(std::all_of(l.begin(), l.end(), [](float x) { return std::isfinite(x); }));
    l = ctx.step(text::argmax(l));
  }
  if (sch == engine::Schedule::bounded) CHECK(budgeted() < uint64_t(B + W) * HL);
  else CHECK(budgeted() == uint64_t(B + n_decode) * HL);
  check_windowed(T + n_decode);
  ctx.cache().validate();
}

// With a budget that is never reached, every policy and schedule gives the
// full cache's logits exactly (the hooks and value norms change nothing).
void unreached_budget_changes_nothing(const model::Model& m, const std::vector<int32_t>& prompt, uint32_t n_decode) {
  engine::ContextParams base;
  base.n_ctx = 256;
  base.kv_type = quant::DType::f32;
  base.chunk_tokens = 64;
  auto run = [&](engine::Context& ctx) {
    std::vector<float> all;
    std::span<const float> l = ctx.eval(prompt);
    for (uint32_t i = 0; i < n_decode; ++i) {
      all.insert(all.end(), l.begin(), l.end());
      l = ctx.step(text::argmax(l));
    }
    all.insert(all.end(), l.begin(), l.end());
    return all;
  };
  engine::Context full(m, base);
  const std::vector<float> want = run(full);
  for (evict::Policy pol : kPolicies)
    for (engine::Schedule sch : {engine::Schedule::oneshot, engine::Schedule::bounded}) {
      INFO(evict::policy_name(pol) << " " << engine::schedule_name(sch));
      engine::ContextParams p = base;
      p.budget_tokens = 250;
      p.evict.policy = pol;
      p.schedule = sch;
      engine::Context ctx(m, p);
      CHECK(run(ctx) == want);
      CHECK(ctx.stats().evict_rounds == 0);
    }
}

std::vector<double> tensor_f64(const gguf::File& f, const std::string& name) {
  const gguf::TensorInfo& t = f.tensor(name);
  const size_t cols = size_t(t.ne[0]), rows = size_t(t.n_elements / t.ne[0]);
  const auto type = quant::DType(t.type);
  std::vector<float> row(cols);
  std::vector<double> out;
  for (size_t r = 0; r < rows; ++r) {
    quant::to_f32(type, t.data + r * quant::row_bytes(type, cols), row.data(), cols);
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

}  // namespace

TEST_CASE("every policy and schedule runs on every architecture case", "[archs][evict]") {
  for (const auto& cs : archs_test::arch_cases()) {
    const std::string name = cs["name"].get<std::string>();
    auto m = model::Model::load(vectors_dir() + "/" + cs["file"].get<std::string>());
    const auto ids = archs_test::read_ids(cs["ids"].get<std::string>());
    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 150);
    for (evict::Policy pol : kPolicies)
      for (engine::Schedule sch : {engine::Schedule::oneshot, engine::Schedule::bounded}) {
        INFO(name << " " << evict::policy_name(pol) << " " << engine::schedule_name(sch));
        run_policy(*m, prompt, pol, sch, 40);
      }
    INFO(name << " unreached budget");
    unreached_budget_changes_nothing(*m, std::vector<int32_t>(ids.begin(), ids.begin() + 100), 30);
  }
}

TEST_CASE("value norms go through each architecture's own W_o, value bias included", "[archs][evict][vnorm]") {
  // Layer 0's values depend only on the token: v = W_v rmsnorm(e * scale) + b_v,
  // computed here in double from the file's tensors (phi3: rows of attn_qkv),
  // then aux[0] = mean_g || W_o[:, h] v ||_1 over the group's heads.
  for (const auto& cs : archs_test::arch_cases()) {
    const std::string name = cs["name"].get<std::string>();
    DYNAMIC_SECTION(name) {
      auto m = model::Model::load(vectors_dir() + "/" + cs["file"].get<std::string>());
      const model::Config& c = m->config();
      const gguf::File& f = m->file();
      const size_t E = c.n_embd, H = c.n_head, Hkv = c.n_head_kv, d = c.head_dim, G = H / Hkv;
      const size_t q_dim = H * d, kv_dim = Hkv * d;
      const auto emb = tensor_f64(f, "token_embd.weight");
      const auto norm = tensor_f64(f, "blk.0.attn_norm.weight");
      const auto wo = tensor_f64(f, "blk.0.attn_output.weight");  // [E, H*d]
      std::vector<double> wv;                                      // [kv_dim, E]
      if (f.find_tensor("blk.0.attn_qkv.weight")) {
        const auto qkv = tensor_f64(f, "blk.0.attn_qkv.weight");
        wv.assign(qkv.begin() + long((q_dim + kv_dim) * E), qkv.end());
      } else {
        wv = tensor_f64(f, "blk.0.attn_v.weight");
      }
      REQUIRE(wv.size() == kv_dim * E);
      std::vector<double> bv(kv_dim, 0.0);
      if (f.find_tensor("blk.0.attn_v.bias")) bv = tensor_f64(f, "blk.0.attn_v.bias");
      const double escale = c.arch.rfind("gemma", 0) == 0 ? std::sqrt(double(E)) : 1.0;

      // A context whose policy weights by value norm, with a budget never
      // reached: the engine's layer observer stores aux[0] with every entry.
      engine::ContextParams p;
      p.n_ctx = 64;
      p.kv_type = quant::DType::f32;
      p.budget_tokens = 60;
      p.evict.policy = evict::Policy::defensivekv;
      p.schedule = engine::Schedule::oneshot;
      engine::Context ctx(*m, p);
      const auto ids = archs_test::read_ids(cs["ids"].get<std::string>());
      const uint32_t n = 12;
      ctx.eval(std::vector<int32_t>(ids.begin(), ids.begin() + n));
      const kv::KvCache& cache = ctx.cache();
      REQUIRE(cache.config().n_aux >= 1);
      double worst_v = 0, worst_aux = 0;
      for (uint32_t hk = 0; hk < Hkv; ++hk) {
        REQUIRE(cache.size(0, hk) == n);
        const uint32_t A = cache.config().n_aux;
        std::vector<float> v(n * d), aux_all(n * A), aux(n);
        cache.gather(0, hk, nullptr, v.data(), nullptr, aux_all.data());
        for (uint32_t t = 0; t < n; ++t) aux[t] = aux_all[t * A];
        for (uint32_t t = 0; t < n; ++t) {
          std::vector<double> x(E), ref_v(d);
          double ss = 0;
          for (size_t e = 0; e < E; ++e) {
            x[e] = emb[size_t(ids[t]) * E + e] * escale;
            ss += x[e] * x[e];
          }
          const double inv = 1.0 / std::sqrt(ss / double(E) + double(c.rms_eps));
          for (size_t e = 0; e < E; ++e) x[e] *= inv * norm[e];
          for (size_t i = 0; i < d; ++i) {
            const size_t r = hk * d + i;
            double y = bv[r];
            for (size_t e = 0; e < E; ++e) y += wv[r * E + e] * x[e];
            ref_v[i] = y;
            worst_v = std::max(worst_v, std::fabs(y - double(v[t * d + i])) / (1.0 + std::fabs(y)));
          }
          double ref = 0;
          for (size_t g = 0; g < G; ++g) {
            const size_t h = hk * G + g;
            for (size_t r = 0; r < E; ++r) {
              double y = 0;
              for (size_t i = 0; i < d; ++i) y += wo[r * q_dim + h * d + i] * ref_v[i];
              ref += std::fabs(y) / double(G);
            }
          }
          worst_aux = std::max(worst_aux, std::fabs(double(aux[t]) - ref) / ref);
        }
      }
      INFO(name << ": max relative error of V " << worst_v << ", of aux[0] " << worst_aux);
      CHECK(worst_v < 1e-4);
      CHECK(worst_aux < 1e-4);
    }
  }
}

TEST_CASE("windowed layers keep only their window, with or without a budget, in a smaller pool", "[archs][evict][swa]") {
  auto m = model::Model::load(vectors_dir() + "/gemma2.gguf");
  const model::Config& c = m->config();
  REQUIRE(c.n_swa_layers == 13);
  const auto ids = archs_test::read_ids("gemma2.ids.txt");
  const uint32_t n_ctx = 2048, P = 16, chunk = 64, w = 64;
  engine::ContextParams p;
  p.n_ctx = n_ctx;
  p.kv_type = quant::DType::f32;
  p.chunk_tokens = chunk;
  p.page_tokens = P;
  engine::Context ctx(*m, p);
  // 13 global layers reserve n_ctx per head, 13 windowed ones w + one batch.
  const uint64_t Hkv = c.n_head_kv;
  CHECK(ctx.cache().config().capacity_entries == 13 * Hkv * (n_ctx + P) + 13 * Hkv * (w + P + chunk + P));
  std::span<const float> l = ctx.eval(std::vector<int32_t>(ids.begin(), ids.begin() + 150));
  for (uint32_t i = 0; i < 40; ++i) {
    l = ctx.step(ids[150 + i]);
    const uint32_t n_past = 151 + i;
    for (uint32_t ly = 0; ly < c.n_layer; ++ly)
      for (uint32_t h = 0; h < Hkv; ++h) {
        const auto pos = ctx.cache().positions(ly, h);
        if (m->layer(ly).window == 0) {
          CHECK(pos.size() == n_past);
        } else {
          CHECK(pos.size() >= w - 1);
          CHECK(pos.size() <= w + P - 1);
          CHECK(pos.back() == int32_t(n_past - 1));
          CHECK(pos.front() == int32_t(n_past - pos.size()));
        }
      }
  }
  CHECK(ctx.stats().kv_entries_peak <= 13 * Hkv * 190 + 13 * Hkv * (w + P - 1 + chunk));
  // A window as long as the context is no window: phi3-partial-rotary (262144)
  // keeps everything and is budgeted like llama.
  auto phi = model::Model::load(vectors_dir() + "/phi3-partial-rotary.gguf");
  engine::ContextParams pp;
  pp.n_ctx = 256;
  engine::Context pc(*phi, pp);
  pc.eval(std::vector<int32_t>(ids.begin(), ids.begin() + 150));
  CHECK(pc.cache().entries() == 150ull * phi->config().n_layer * phi->config().n_head_kv);
}

TEST_CASE("--kv-mem covers the windowed layers' share and budgets the others", "[archs][evict][swa]") {
  auto m = model::Model::load(vectors_dir() + "/gemma2.gguf");
  const auto ids = archs_test::read_ids("gemma2.ids.txt");
  for (int64_t mem : {int64_t(1) << 20, int64_t(5) << 18}) {  // budgets 56 and 130
    INFO("kv_mem " << mem);
    engine::ContextParams p;
    p.n_ctx = 1024;
    p.kv_mem_bytes = mem;
    p.evict.policy = evict::Policy::layer_defensivekv;
    engine::Context ctx(*m, p);
    CHECK(ctx.cache().bytes_reserved() <= uint64_t(mem));
    CHECK(ctx.budget_tokens() >= 36);
    ctx.eval(std::vector<int32_t>(ids.begin(), ids.begin() + 192));
    CHECK(ctx.stats().evict_rounds >= 1);
  }
  engine::ContextParams small;
  small.n_ctx = 1024;
  small.kv_mem_bytes = 200000;
  CHECK_THROWS_WITH(engine::Context(*m, small), Catch::Contains("sliding-window layers"));
}

TEST_CASE("a saved state with trimmed windowed layers restores and continues identically", "[archs][evict][swa]") {
  auto m = model::Model::load(vectors_dir() + "/gemma2.gguf");
  const auto ids = archs_test::read_ids("gemma2.ids.txt");
  for (bool budget : {false, true}) {
    INFO("budget " << budget);
    engine::ContextParams p;
    p.n_ctx = 256;
    p.kv_type = quant::DType::f32;
    if (budget) p.budget_tokens = 48;
    engine::Context a(*m, p), b(*m, p);
    a.eval(std::vector<int32_t>(ids.begin(), ids.begin() + 150));
    std::vector<uint8_t> st;
    a.save_state(st);
    b.load_state(st);
    for (uint32_t i = 150; i < 190; ++i) {
      const auto la = a.step(ids[i]);
      const auto lb = b.step(ids[i]);
      REQUIRE(std::vector<float>(la.begin(), la.end()) == std::vector<float>(lb.begin(), lb.end()));
    }
    CHECK(a.cache().entries() == b.cache().entries());
  }
}

namespace {

struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() / ("defkv_test_archs_" + std::to_string(::getpid()));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

}  // namespace

TEST_CASE("every policy and schedule runs with GQA ratios 1-8 and head dims 64 and 128", "[archs][evict][gqa]") {
  TempDir td;
  std::vector<int32_t> prompt(120);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(3 + (i * 7919) % 290);
  // Under the sanitizers (scripts/test-sanitizers.sh sets DEFKV_SANITIZE)
  // the sweep takes ratios 1 (MHA), 3 (odd) and 8 (the widest) for both head
  // dims: the whole sweep exceeds the script's per-program timeout under
  // ASan. The normal suite runs every ratio.
  const bool sanitized = std::getenv("DEFKV_SANITIZE") != nullptr;
  for (uint32_t hd : {64u, 128u})
    for (uint32_t g = 1; g <= 8; ++g) {
      if (sanitized && g != 1 && g != 3 && g != 8) continue;
      tools::ModelShape s;
      s.name = "gqa" + std::to_string(g) + "_d" + std::to_string(hd);
      s.dim = 128;
      s.n_layer = 2;
      s.n_head_kv = 2;
      s.n_head = 2 * g;
      s.head_dim = hd;
      s.ffn = 128;
      s.n_vocab = 300;
      s.ctx = 256;
      s.tied = true;
      tools::SynthOptions o;
      o.shape = s;
      o.type = quant::DType::f16;
      o.seed = 1000 + g;
      const std::string path = (td.dir / (s.name + ".gguf")).string();
      tools::synthesize(o, path);
      auto m = model::Model::load(path);
      REQUIRE(m->config().head_dim == hd);
      REQUIRE(m->config().n_head == 2 * g);
      for (evict::Policy pol : kPolicies)
        for (engine::Schedule sch : {engine::Schedule::oneshot, engine::Schedule::bounded}) {
          INFO(s.name << " " << evict::policy_name(pol) << " " << engine::schedule_name(sch));
          run_policy(*m, prompt, pol, sch, 40);
        }
      INFO(s.name << " unreached budget");
      unreached_budget_changes_nothing(*m, std::vector<int32_t>(prompt.begin(), prompt.begin() + 100), 30);
    }
}
