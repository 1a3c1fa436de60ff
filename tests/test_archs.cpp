// Architectures (llama with Llama 3 RoPE factors and a tied head, qwen2,
// qwen3, phi3 with full and partial rotary, gemma2, gemma3) against the
// reference logits of ../shared/testdata/archs (llama.cpp or an independent
// numpy forward, see its README): every position, batched prefill and token
// by token (and in batches of 48), F32 KV cache, the manifest's tolerance, and
// llama.cpp's own logits where the oracle is numpy; and bad models (GGUFs
// rewritten in memory) refused with errors naming the key or tensor.
#include "tests/archs_util.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/text/sampler.h"

using namespace defkv;
using archs_test::vectors_dir;

namespace {

struct Cmp {
  double max_abs = 0;
  std::vector<int> top1_mismatch;  // positions whose argmax differs
};

Cmp compare(const float* got, const archs_test::Logits& ref) {
  Cmp c;
  const size_t V = size_t(ref.n_vocab);
  for (int32_t t = 0; t < ref.n_tok; ++t) {
    const float* a = got + size_t(t) * V;
    const float* b = ref.v.data() + size_t(t) * V;
    for (size_t i = 0; i < V; ++i) c.max_abs = std::max(c.max_abs, double(std::fabs(a[i] - b[i])));
    if (text::argmax(std::span<const float>(a, V)) != text::argmax(std::span<const float>(b, V)))
      c.top1_mismatch.push_back(t);
  }
  return c;
}

void check_within(const Cmp& c, const nlohmann::json& tol, const char* path) {
  const double max_abs = tol["max_abs"].get<double>();
  std::set<int> ties;
  for (const auto& p : tol["near_tie_positions"]) ties.insert(p.get<int>());
  INFO(path << ": max |logit - reference| = " << c.max_abs << " (tolerance " << max_abs << ")");
  CHECK(c.max_abs <= max_abs);
  for (int p : c.top1_mismatch) {
    INFO(path << ": top-1 differs at position " << p);
    CHECK(ties.count(p) == 1);
  }
}

}  // namespace

TEST_CASE("every architecture case matches its reference logits, batched and token by token", "[archs][vectors]") {
  for (const auto& cs : archs_test::arch_cases()) {
    const std::string name = cs["name"].get<std::string>();
    DYNAMIC_SECTION(name) {
      auto m = model::Model::load(vectors_dir() + "/" + cs["file"].get<std::string>());
      const model::Config& mc = m->config();
      CHECK(mc.arch == cs["arch"].get<std::string>());
      const auto& sh = cs["shapes"];
      CHECK(mc.n_embd == sh["n_embd"].get<uint32_t>());
      CHECK(mc.n_layer == sh["n_layer"].get<uint32_t>());
      CHECK(mc.n_head == sh["n_head"].get<uint32_t>());
      CHECK(mc.n_head_kv == sh["n_head_kv"].get<uint32_t>());
      CHECK(mc.head_dim == sh["head_dim"].get<uint32_t>());
      CHECK(mc.n_ff == sh["n_ff"].get<uint32_t>());
      CHECK(mc.n_rot == cs["rope"]["n_rot"].get<uint32_t>());
      CHECK(mc.tied_output == cs["tied_output"].get<bool>());

      const auto ids = archs_test::read_ids(cs["ids"].get<std::string>());
      const auto ref = archs_test::read_logits(cs["logits"].get<std::string>());
      REQUIRE(ids.size() == size_t(ref.n_tok));
      REQUIRE(ids == ref.ids);
      REQUIRE(uint32_t(ref.n_vocab) == mc.n_vocab);
      const size_t V = mc.n_vocab, T = ids.size();

      engine::ContextParams p;
      p.n_ctx = 256;
      p.kv_type = quant::DType::f32;
      std::vector<float> batched(T * V), tbt(T * V);
      {
        engine::ContextParams pb = p;
        pb.chunk_tokens = 256;  // all 192 positions in one forward call
        engine::Context one_batch(*m, pb);
        one_batch.eval_all_logits(ids, batched.data());
      }
      {
        engine::Context ctx(*m, p);
        for (size_t t = 0; t < T; ++t) {
          std::span<const float> l = t == 0 ? ctx.eval(std::span<const int32_t>(ids.data(), 1)) : ctx.step(ids[t]);
          std::copy(l.begin(), l.end(), tbt.begin() + long(t * V));
        }
      }
      std::vector<float> chunked(T * V);
      {  // batches of 48: windowed layers are trimmed between batches
        engine::ContextParams pc = p;
        pc.chunk_tokens = 48;
        engine::Context ctx(*m, pc);
        ctx.eval_all_logits(ids, chunked.data());
      }
      check_within(compare(chunked.data(), ref), cs["tolerance"], "batches of 48");
      const Cmp cb = compare(batched.data(), ref), ct = compare(tbt.data(), ref);
      WARN(name << ": max abs error batched " << cb.max_abs << ", token by token " << ct.max_abs
                << " (tolerance " << cs["tolerance"]["max_abs"].get<double>() << ")");
      check_within(cb, cs["tolerance"], "batched");
      check_within(ct, cs["tolerance"], "token by token");

      // llama.cpp's own logits beside a numpy oracle (gemma2, gemma3): its CPU
      // GELU reads an fp16 table, hence the manifest's looser bound.
      if (cs.contains("logits_llamacpp")) {
        const auto& tl = cs["tolerance_llamacpp"];
        const double max_abs = tl["max_abs"].get<double>(), top1 = tl["top1_agreement"].get<double>();
        const std::pair<const char*, const std::vector<float>*> runs[] = {{"logits_llamacpp", &batched},
                                                                          {"logits_llamacpp_token_by_token", &tbt}};
        for (const auto& [key, got] : runs) {
          const auto lc = archs_test::read_logits(cs[key].get<std::string>());
          REQUIRE(lc.ids == ids);
          const Cmp c = compare(got->data(), lc);
          const double agree = 1.0 - double(c.top1_mismatch.size()) / double(T);
          WARN(name << " against " << key << ": max abs " << c.max_abs << " (bound " << max_abs << "), top-1 agreement "
                    << agree << " (bound " << top1 << ")");
          CHECK(c.max_abs <= max_abs);
          CHECK(agree >= top1);
        }
      }
    }
  }
}

TEST_CASE("config describes each architecture's block", "[archs]") {
  const auto load = [](const char* f) { return model::Model::load(vectors_dir() + "/" + f); };
  {
    auto m = load("llama3-rope.gguf");
    CHECK_FALSE(m->config().rope_neox);
    REQUIRE(m->config().rope_freqs.size() == 8);
    CHECK(m->config().rope_freqs[5] == 32.0f);
  }
  {
    auto m = load("qwen2.gguf");
    CHECK(m->config().rope_neox);
    CHECK(m->config().qkv_bias);
    CHECK(m->layer(2).bv != nullptr);
  }
  {
    auto m = load("phi3-partial-rotary.gguf");
    CHECK(m->config().n_rot == 24);
    CHECK(m->layer(0).w_up.data > m->layer(0).w_gate.data);  // [gate; up] rows of ffn_up
    CHECK(m->layer(0).window == 262144);
  }
  {
    auto m = load("gemma2.gguf");
    const auto& c = m->config();
    CHECK(c.act == model::Activation::gelu_tanh);
    CHECK(c.embd_scale == Approx(8.0f));
    CHECK(c.attn_softcap == 20.0f);
    CHECK(c.final_softcap == 10.0f);
    CHECK(c.n_swa_layers == 13);
    CHECK(m->layer(0).window == 64);
    CHECK(m->layer(1).window == 0);
  }
  {
    auto m = load("gemma3.gguf");
    CHECK(m->layer(5).window == 0);
    CHECK(m->layer(5).rope_table == 0);
    CHECK(m->layer(6).window == 64);
    CHECK(m->layer(6).rope_table == 1);
    CHECK(m->config().rope[0].freq_scale == Approx(0.125f));
    CHECK(m->config().rope[1].freq_base == 10000.0f);
    CHECK(m->config().final_softcap == 0.0f);
  }
}

// ----------------------------------------------------------------------------
// Bad input

namespace {

using archs_test::TensorEdit;

std::string vec_path(const char* f) { return vectors_dir() + "/" + f; }

// Loading the rewritten file must throw, with every needle in the message.
void expect_refused(archs_test::Rewritten r, const std::vector<std::string>& needles) {
  try {
    auto m = model::Model::from_file(std::move(r.file));
    FAIL("a bad model was loaded");
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    INFO(msg);
    for (const auto& n : needles) CHECK(msg.find(n) != std::string::npos);
  }
}

gguf::Value u32(uint64_t v) { return gguf::Value{gguf::ValueType::u32, v}; }

// Drops the last entry of a 1-D F32 tensor.
std::function<bool(TensorEdit&)> shorten(const std::string& name) {
  return [name](TensorEdit& t) {
    if (t.name == name) {
      t.ne[0] -= 1;
      t.data.resize(t.data.size() - 4);
    }
    return true;
  };
}
std::function<bool(TensorEdit&)> drop(const std::string& name) {
  return [name](TensorEdit& t) { return t.name != name; };
}
TensorEdit f32_vector(const std::string& name, size_t n) {
  return {name, 0, {n}, std::vector<uint8_t>(n * 4, 0)};
}

}  // namespace

TEST_CASE("unchanged rewrites load (the mutations below are the only difference)", "[archs][errors]") {
  for (const char* f : {"qwen2.gguf", "qwen3.gguf", "phi3.gguf", "gemma2.gguf", "gemma3.gguf", "llama3-rope.gguf"}) {
    INFO(f);
    auto r = archs_test::rewrite(vec_path(f), {});
    CHECK_NOTHROW(model::Model::from_file(std::move(r.file)));
  }
}

TEST_CASE("bad architecture models are refused with the key or tensor named", "[archs][errors]") {
  SECTION("unknown architecture") {
    expect_refused(archs_test::rewrite(vec_path("qwen2.gguf"), [](gguf::Writer& w) { w.set_string("general.architecture", "mamba"); }),
                   {"mamba", "general.architecture", "qwen2", "gemma2"});
  }
  SECTION("a bias of the wrong length") {
    expect_refused(archs_test::rewrite(vec_path("qwen2.gguf"), {}, shorten("blk.1.attn_k.bias")),
                   {"blk.1.attn_k.bias", "expected [64]"});
  }
  SECTION("a missing bias") {
    expect_refused(archs_test::rewrite(vec_path("qwen2.gguf"), {}, drop("blk.0.attn_v.bias")),
                   {"missing tensor 'blk.0.attn_v.bias'"});
  }
  SECTION("a q/k norm whose size is not head_dim") {
    expect_refused(archs_test::rewrite(vec_path("qwen3.gguf"), {}, shorten("blk.2.attn_q_norm.weight")),
                   {"blk.2.attn_q_norm.weight", "expected [64]"});
  }
  SECTION("key_length contradicting the tensors") {
    expect_refused(archs_test::rewrite(vec_path("qwen3.gguf"), [](gguf::Writer& w) { w.set("qwen3.attention.key_length", u32(32)); w.set("qwen3.attention.value_length", u32(32)); }),
                   {"blk.0.attn_q.weight", "expected [128, 128]"});
  }
  SECTION("value_length differing from key_length") {
    expect_refused(archs_test::rewrite(vec_path("qwen3.gguf"), [](gguf::Writer& w) { w.set("qwen3.attention.value_length", u32(32)); }),
                   {"qwen3.attention.value_length", "key_length"});
  }
  SECTION("feed_forward_length contradicting phi3's fused ffn_up") {
    expect_refused(archs_test::rewrite(vec_path("phi3.gguf"), [](gguf::Writer& w) { w.set("phi3.feed_forward_length", u32(512)); }),
                   {"blk.0.ffn_up.weight", "expected [128, 1024]"});
  }
  SECTION("a head count contradicting phi3's fused attn_qkv") {
    expect_refused(archs_test::rewrite(vec_path("phi3.gguf"), [](gguf::Writer& w) { w.set("phi3.attention.head_count_kv", u32(4)); }),
                   {"blk.0.attn_qkv.weight", "expected [128, 384]"});
  }
  SECTION("a tensor the architecture does not have") {
    expect_refused(archs_test::rewrite(vec_path("llama-tied.gguf"), {}, {}, {f32_vector("blk.0.attn_q_norm.weight", 32)}),
                   {"blk.0.attn_q_norm.weight", "not used by architecture llama"});
    expect_refused(archs_test::rewrite(vec_path("qwen2.gguf"), {}, {}, {f32_vector("blk.1.attn_output.bias", 128)}),
                   {"blk.1.attn_output.bias", "qwen2"});
  }
  SECTION("a sliding window on an architecture without one") {
    expect_refused(archs_test::rewrite(vec_path("qwen2.gguf"), [](gguf::Writer& w) { w.set("qwen2.attention.sliding_window", u32(4096)); }),
                   {"qwen2.attention.sliding_window", "not supported for architecture qwen2"});
  }
  SECTION("soft-capping on an architecture without it") {
    expect_refused(archs_test::rewrite(vec_path("llama3-rope.gguf"), [](gguf::Writer& w) { w.set_f32("llama.final_logit_softcapping", 30.0f); }),
                   {"llama.final_logit_softcapping"});
  }
  SECTION("gemma2 without its window") {
    expect_refused(archs_test::rewrite(vec_path("gemma2.gguf"), [](gguf::Writer& w) { w.set("gemma2.attention.sliding_window", u32(0)); }),
                   {"gemma2.attention.sliding_window"});
  }
  SECTION("YaRN and LongRoPE scaling") {
    expect_refused(archs_test::rewrite(vec_path("llama3-rope.gguf"), [](gguf::Writer& w) { w.set_string("llama.rope.scaling.type", "yarn"); }),
                   {"yarn", "llama.rope.scaling.type"});
    expect_refused(archs_test::rewrite(vec_path("phi3.gguf"), {}, {}, {f32_vector("rope_factors_long.weight", 16)}),
                   {"rope_factors_long.weight", "LongRoPE"});
  }
  SECTION("rope_freqs of the wrong length or with a zero factor") {
    expect_refused(archs_test::rewrite(vec_path("llama3-rope.gguf"), {}, shorten("rope_freqs.weight")),
                   {"rope_freqs.weight", "expected [8]"});
    expect_refused(archs_test::rewrite(vec_path("llama3-rope.gguf"), {}, [](TensorEdit& t) {
                     if (t.name == "rope_freqs.weight") std::fill(t.data.begin(), t.data.begin() + 4, uint8_t(0));
                     return true;
                   }),
                   {"rope_freqs.weight", "> 0"});
  }
  SECTION("partial rotary wider than the head") {
    expect_refused(archs_test::rewrite(vec_path("phi3.gguf"), [](gguf::Writer& w) { w.set("phi3.rope.dimension_count", u32(48)); }),
                   {"phi3.rope.dimension_count", "head_dim 32"});
  }
}

namespace {

gguf::Value bools(std::vector<int64_t> v) {
  return gguf::Value{gguf::ValueType::array, gguf::Array{gguf::ValueType::boolean, std::move(v), {}, {}, {}}};
}

// gemma3.gguf rewritten with edit_kv: the layers that slide.
std::vector<bool> gemma3_sliding(const std::function<void(gguf::Writer&)>& edit_kv) {
  auto m = model::Model::from_file(archs_test::rewrite(vec_path("gemma3.gguf"), edit_kv).file);
  std::vector<bool> out;
  for (uint32_t l = 0; l < m->config().n_layer; ++l) out.push_back(m->layer(l).window != 0);
  return out;
}

}  // namespace

TEST_CASE("gemma3: the sliding-window pattern key is honoured as a period or one bool per layer", "[archs][errors]") {
  using V = std::vector<bool>;
  const V dflt = {true, true, true, true, true, false, true, true};  // il % 6 == 5 global
  CHECK(gemma3_sliding({}) == dflt);
  CHECK(gemma3_sliding([](gguf::Writer& w) { w.set("gemma3.attention.sliding_window_pattern", u32(4)); }) ==
        V{true, true, true, false, true, true, true, false});
  CHECK(gemma3_sliding([](gguf::Writer& w) { w.set("gemma3.attention.sliding_window_pattern", u32(1)); }) == V(8, false));
  CHECK(gemma3_sliding([](gguf::Writer& w) {
          w.set("gemma3.attention.sliding_window_pattern", bools({0, 1, 1, 1, 1, 1, 1, 0}));
        }) == V{false, true, true, true, true, true, true, false});
}

TEST_CASE("gemma3: a window or pattern contradicting the layers and a missing q/k norm are refused by name", "[archs][errors]") {
  const std::string key = "gemma3.attention.sliding_window_pattern";
  SECTION("a per-layer pattern whose length is not block_count") {
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [&](gguf::Writer& w) { w.set(key, bools({1, 1, 1, 1, 1, 0, 1})); }),
                   {key, "7 entries", "gemma3.block_count = 8"});
  }
  SECTION("a pattern array of numbers instead of bools") {
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [&](gguf::Writer& w) {
                     w.set(key, gguf::Value{gguf::ValueType::array,
                                            gguf::Array{gguf::ValueType::u32, {1, 1, 1, 1, 1, 0, 1, 1}, {}, {}, {}}});
                   }),
                   {key, "one bool per layer"});
  }
  SECTION("a pattern that leaves no global layer") {
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [&](gguf::Writer& w) { w.set(key, bools(std::vector<int64_t>(8, 1))); }),
                   {key, "no global", "8 layers"});
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [&](gguf::Writer& w) { w.set(key, u32(9)); }),
                   {key, "no global"});
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [&](gguf::Writer& w) { w.set(key, u32(0)); }), {key, "> 0"});
  }
  SECTION("a block count under the default period leaves no global layer") {
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [](gguf::Writer& w) { w.set("gemma3.block_count", u32(5)); }),
                   {"gemma3.block_count = 5", "no global layer"});
  }
  SECTION("a window of 0, or longer than the context") {
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [](gguf::Writer& w) { w.set("gemma3.attention.sliding_window", u32(0)); }),
                   {"gemma3.attention.sliding_window"});
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [](gguf::Writer& w) { w.set("gemma3.attention.sliding_window", u32(4096)); }),
                   {"gemma3.attention.sliding_window = 4096", "gemma3.context_length = 2048"});
  }
  SECTION("a missing q or k norm") {
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), {}, drop("blk.3.attn_k_norm.weight")),
                   {"missing tensor 'blk.3.attn_k_norm.weight'", "[32]"});
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), {}, drop("blk.5.attn_q_norm.weight")),
                   {"missing tensor 'blk.5.attn_q_norm.weight'"});
  }
  SECTION("a non-positive RoPE base for the sliding layers") {
    expect_refused(archs_test::rewrite(vec_path("gemma3.gguf"), [](gguf::Writer& w) { w.set_f32("gemma3.rope.freq_base_swa", 0.0f); }),
                   {"gemma3.rope.freq_base_swa"});
  }
}
