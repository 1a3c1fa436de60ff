// defkv synth and the bandwidth probe: a synthesized tiny model is a valid
// llama GGUF for the project's reader, tokenizer and model loader, has the
// requested shapes / types / metadata, is a deterministic function of the
// seed, and its weights have the documented distribution; the streaming-read
// kernels agree with the scalar reference, and the probe's checksum matches
// a closed form. No timing assertions.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "runtime/engine/context.h"
#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"
#include "simd/membw.h"
#include "tools/membw.h"
#include "tools/synth.h"

using namespace defkv;
namespace fs = std::filesystem;

namespace {

std::string shared_dir() {
  const char* e = std::getenv("DEFKV_SHARED");
  return e && *e ? std::string(e) : std::string("../shared");
}

struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() / ("defkv_test_synth_" + std::to_string(::getpid()));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string path(const std::string& name) const { return (dir / name).string(); }
};

// A small shape exercising GQA, a tied head and a synthetic vocabulary.
tools::ModelShape tiny_shape() {
  tools::ModelShape s;
  s.name = "test";
  s.dim = 64;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.ffn = 96;
  s.n_vocab = 300;
  s.ctx = 128;
  s.rope_base = 50000.0f;
  s.rms_eps = 1e-6f;
  s.tied = true;
  return s;
}

std::string synth(const TempDir& td, const std::string& name, const tools::ModelShape& s,
                  quant::DType type, uint64_t seed, const std::string& vocab_from = {}) {
  tools::SynthOptions o;
  o.shape = s;
  o.type = type;
  o.seed = seed;
  o.vocab.from_path = vocab_from;
  const std::string p = td.path(name);
  tools::synthesize(o, p);
  return p;
}

std::vector<char> slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<float> tensor_f32(const gguf::TensorInfo& t) {
  const size_t cols = size_t(t.ne[0]);
  const size_t rows = size_t(t.n_elements / t.ne[0]);
  const auto type = static_cast<quant::DType>(t.type);
  const size_t rb = quant::row_bytes(type, cols);
  std::vector<float> out(t.n_elements);
  for (size_t r = 0; r < rows; ++r) quant::to_f32(type, t.data + r * rb, out.data() + r * cols, cols);
  return out;
}

// A non-array metadata value as text (for equality checks).
std::string scalar_text(const gguf::Value& v) {
  if (auto* p = std::get_if<int64_t>(&v.v)) return "i" + std::to_string(*p);
  if (auto* p = std::get_if<uint64_t>(&v.v)) return "u" + std::to_string(*p);
  if (auto* p = std::get_if<double>(&v.v)) return "f" + std::to_string(*p);
  if (auto* p = std::get_if<bool>(&v.v)) return *p ? "true" : "false";
  if (auto* p = std::get_if<std::string>(&v.v)) return "s" + *p;
  return "array";
}

}  // namespace

TEST_CASE("synthesized model has the requested shapes, types and metadata", "[synth]") {
  TempDir td;
  const auto s = tiny_shape();
  const std::string p = synth(td, "m.gguf", s, quant::DType::q8_0, 7);
  auto f = gguf::File::open(p);
  CHECK(f->get_string("general.architecture") == "llama");
  CHECK(f->get_uint("llama.embedding_length") == 64);
  CHECK(f->get_uint("llama.block_count") == 2);
  CHECK(f->get_uint("llama.attention.head_count") == 4);
  CHECK(f->get_uint("llama.attention.head_count_kv") == 2);
  CHECK(f->get_uint("llama.feed_forward_length") == 96);
  CHECK(f->get_uint("llama.context_length") == 128);
  CHECK(f->get_uint("llama.rope.dimension_count") == 16);
  CHECK(f->get_uint("llama.vocab_size") == 300);
  CHECK(f->get_float("llama.rope.freq_base") == Approx(50000.0));
  CHECK(f->get_float("llama.attention.layer_norm_rms_epsilon") == Approx(1e-6));
  CHECK(f->get_uint("general.file_type") == 7);  // LLAMA_FTYPE_MOSTLY_Q8_0
  CHECK(f->get_uint("defkv.synth.seed") == 7);

  // 1 embedding + 9 per layer + output norm; tied: no output.weight.
  CHECK(f->tensors().size() == 1 + 9 * 2 + 1);
  CHECK(f->find_tensor("output.weight") == nullptr);
  auto shape_is = [&](const char* name, uint32_t type, uint64_t ne0, uint64_t ne1) {
    const auto& t = f->tensor(name);
    INFO(name);
    CHECK(t.type == type);
    CHECK(t.ne[0] == ne0);
    CHECK(t.ne[1] == ne1);
  };
  const uint32_t q8 = uint32_t(quant::DType::q8_0), f32 = uint32_t(quant::DType::f32);
  shape_is("token_embd.weight", q8, 64, 300);
  shape_is("blk.1.attn_q.weight", q8, 64, 64);
  shape_is("blk.1.attn_k.weight", q8, 64, 32);
  shape_is("blk.1.attn_v.weight", q8, 64, 32);
  shape_is("blk.1.attn_output.weight", q8, 64, 64);
  shape_is("blk.1.ffn_gate.weight", q8, 64, 96);
  shape_is("blk.1.ffn_up.weight", q8, 64, 96);
  shape_is("blk.1.ffn_down.weight", q8, 96, 64);
  shape_is("blk.0.attn_norm.weight", f32, 64, 1);
  shape_is("blk.0.ffn_norm.weight", f32, 64, 1);
  shape_is("output_norm.weight", f32, 64, 1);
  for (const char* n : {"blk.0.attn_norm.weight", "blk.1.ffn_norm.weight", "output_norm.weight"}) {
    const auto v = tensor_f32(f->tensor(n));
    CHECK(std::all_of(v.begin(), v.end(), [](float x) { return x == 1.0f; }));
  }

  // The synthetic vocabulary is a valid SPM tokenizer: text round-trips
  // (through merges and byte fallback).
  auto tok = text::Tokenizer::from_gguf(*f);
  CHECK(tok->n_vocab() == 300);
  CHECK(tok->bos() == 1);
  CHECK(tok->eos() == 2);
  const std::string text = "hello world, caf\xC3\xA9 42";
  const auto ids = tok->encode(text, true);
  REQUIRE(!ids.empty());
  CHECK(ids[0] == 1);
  CHECK(tok->decode(ids) == text);
}

TEST_CASE("synthesized model loads and runs in the model and engine", "[synth]") {
  TempDir td;
  for (auto type : {quant::DType::f32, quant::DType::f16, quant::DType::bf16, quant::DType::q8_0}) {
    INFO(quant::dtype_name(type));
    const std::string p = synth(td, std::string("m_") + quant::dtype_name(type) + ".gguf",
                                tiny_shape(), type, 11);
    auto m = model::Model::load(p);
    const auto& c = m->config();
    CHECK(c.n_embd == 64);
    CHECK(c.n_layer == 2);
    CHECK(c.n_head == 4);
    CHECK(c.n_head_kv == 2);
    CHECK(c.head_dim == 16);
    CHECK(c.n_ff == 96);
    CHECK(c.n_vocab == 300);
    CHECK(c.tied_output);
    CHECK(c.rope_freq_base == Approx(50000.0f));
    CHECK(m->layer(0).wq.type == type);

    engine::ContextParams cp;
    cp.n_ctx = 64;
    cp.n_threads = 1;
    engine::Context ctx(*m, cp);
    const std::vector<int32_t> prompt = {1, 100, 200, 299, 5};
    auto logits = ctx.eval(prompt);
    REQUIRE(logits.size() == 300);
    // Random init keeps activations finite and the logits non-degenerate.
    double sum2 = 0;
    for (float x : logits) {
      REQUIRE(std::isfinite(x));
      sum2 += double(x) * x;
    }
    CHECK(sum2 > 0);
  }
}

TEST_CASE("synthesized weights are a deterministic function of the seed", "[synth]") {
  TempDir td;
  const auto s = tiny_shape();
  const auto a = slurp(synth(td, "a.gguf", s, quant::DType::f16, 3));
  const auto b = slurp(synth(td, "b.gguf", s, quant::DType::f16, 3));
  const auto c = slurp(synth(td, "c.gguf", s, quant::DType::f16, 4));
  REQUIRE(!a.empty());
  CHECK(a == b);
  REQUIRE(a.size() == c.size());  // same layout, different weights
  CHECK(a != c);

  // Values do not depend on how the element range is chunked.
  std::vector<float> whole(1000), part(300);
  tools::synth_values(9, "x", 0, whole.size(), 1.0f, whole.data());
  tools::synth_values(9, "x", 500, part.size(), 1.0f, part.data());
  CHECK(std::equal(part.begin(), part.end(), whole.begin() + 500));
}

TEST_CASE("synthesized weights: one value stream for every type, documented scale", "[synth]") {
  TempDir td;
  auto s = tiny_shape();
  s.n_layer = 8;
  const auto f32 = gguf::File::open(synth(td, "f32.gguf", s, quant::DType::f32, 5));
  const auto q8 = gguf::File::open(synth(td, "q8.gguf", s, quant::DType::q8_0, 5));
  const auto f16 = gguf::File::open(synth(td, "f16.gguf", s, quant::DType::f16, 5));

  // Q8_0 / F16 files hold the F32 file's weights rounded: per Q8_0 block the
  // error is at most half a step (amax/127/2, plus the fp16 rounding of d).
  for (const char* name : {"token_embd.weight", "blk.3.ffn_down.weight", "blk.7.attn_k.weight"}) {
    INFO(name);
    const auto ref = tensor_f32(f32->tensor(name));
    const auto q = tensor_f32(q8->tensor(name));
    const auto h = tensor_f32(f16->tensor(name));
    REQUIRE(ref.size() == q.size());
    for (size_t b = 0; b < ref.size(); b += 32) {
      float amax = 0;
      for (size_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(ref[i]));
      // |x - fp16(d) q| <= d/2 + |d - fp16(d)| * 127, d = amax / 127
      const float bound = amax / 127.0f * 0.5f + amax / 2048.0f + 1e-7f;
      for (size_t i = b; i < b + 32; ++i) REQUIRE(std::fabs(q[i] - ref[i]) <= bound);
    }
    for (size_t i = 0; i < ref.size(); ++i)
      REQUIRE(std::fabs(h[i] - ref[i]) <= std::fabs(ref[i]) * (1.0f / 2048.0f) + 1e-7f);
  }

  // Scale: 0.02 for projections and embeddings, 0.02 / sqrt(2 n_layer) for
  // the residual projections; mean 0. Checked on the pooled F32 weights.
  auto moments = [&](const char* suffix, double* mean, double* sd, double* amax) {
    double s1 = 0, s2 = 0, n = 0;
    *amax = 0;
    for (uint32_t l = 0; l < s.n_layer; ++l) {
      const auto v = tensor_f32(f32->tensor("blk." + std::to_string(l) + "." + suffix));
      for (float x : v) {
        s1 += x;
        s2 += double(x) * x;
        n += 1;
        *amax = std::max(*amax, double(std::fabs(x)));
      }
    }
    *mean = s1 / n;
    *sd = std::sqrt(s2 / n - *mean * *mean);
  };
  double mean, sd, amax;
  moments("ffn_gate.weight", &mean, &sd, &amax);  // 8 * 6144 values
  CHECK(std::fabs(mean) < 0.02 * 0.03);
  CHECK(sd == Approx(0.02).epsilon(0.02));
  CHECK(amax <= 0.02 * std::sqrt(3.0) * 2.0 + 1e-6);  // Irwin-Hall(4) is bounded
  moments("ffn_down.weight", &mean, &sd, &amax);
  CHECK(sd == Approx(0.02 / 4.0).epsilon(0.02));
}

TEST_CASE("synth copies the tokenizer metadata of a vocabulary file", "[synth]") {
  TempDir td;
  const std::string vocab = shared_dir() + "/models/stories260K/stories260K.gguf";
  auto s = tiny_shape();
  s.n_vocab = 512;
  auto src = gguf::File::open(vocab);
  auto f = gguf::File::open(synth(td, "v.gguf", s, quant::DType::f32, 1, vocab));
  size_t n_copied = 0;
  for (const auto& [k, v] : src->metadata()) {
    if (k.rfind("tokenizer.", 0) != 0) continue;
    INFO(k);
    const gguf::Value* got = f->find(k);
    REQUIRE(got != nullptr);
    CHECK(got->type == v.type);
    if (v.type == gguf::ValueType::array) {
      const auto& a = std::get<gguf::Array>(v.v);
      const auto& b = std::get<gguf::Array>(got->v);
      CHECK(a.elem_type == b.elem_type);
      CHECK(a.strings == b.strings);
      CHECK(a.ints == b.ints);
      CHECK(a.floats == b.floats);
    } else {
      CHECK(scalar_text(*got) == scalar_text(v));
    }
    ++n_copied;
  }
  CHECK(n_copied >= 6);
  auto t1 = text::Tokenizer::from_gguf(*src);
  auto t2 = text::Tokenizer::from_gguf(*f);
  const std::string text = "Once upon a time, there was a little girl.";
  CHECK(t1->encode(text, true) == t2->encode(text, true));

  // A vocabulary whose size does not match the shape is refused.
  s.n_vocab = 300;
  CHECK_THROWS_WITH(synth(td, "bad.gguf", s, quant::DType::f32, 1, vocab),
                    Catch::Contains("512 tokens"));
  CHECK_FALSE(fs::exists(td.path("bad.gguf")));
}

TEST_CASE("synth refuses inconsistent shapes", "[synth]") {
  auto s = tiny_shape();
  s.n_head_kv = 3;
  CHECK_THROWS_WITH(s.validate(quant::DType::f32), Catch::Contains("kv-heads"));
  s = tiny_shape();
  s.ffn = 100;  // not a multiple of the Q8_0 block
  CHECK_NOTHROW(s.validate(quant::DType::f16));
  CHECK_THROWS_WITH(s.validate(quant::DType::q8_0), Catch::Contains("ffn"));
  CHECK_THROWS(tools::synthetic_spm_vocab(259));
  CHECK(tools::synthetic_spm_vocab(260).tokens.back() == "\xE2\x96\x81");
  const auto v = tools::synthetic_spm_vocab(2000);
  CHECK(v.tokens.size() == 2000);
  std::vector<std::string> sorted = v.tokens;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // unique pieces
}

TEST_CASE("known shapes match their published parameter counts", "[synth]") {
  // Published sizes (model cards): TinyLlama 1.1B, Llama-3.2-1B 1.24B,
  // Qwen2.5-0.5B 0.49B, Qwen3-0.6B 0.6B (0.44B without embeddings),
  // Phi-3.5-mini 3.8B, SmolLM2 135M / 362M, Gemma 3 1B 999.89M (its GGUF).
  struct Want { const char* name; double params; };
  for (const Want& w : {Want{"tinyllama-1.1b", 1.100e9}, Want{"llama-3.2-1b", 1.236e9},
                        Want{"qwen2.5-0.5b", 0.494e9}, Want{"qwen3-0.6b", 0.596e9},
                        Want{"phi-3.5-mini", 3.821e9}, Want{"smollm2-135m", 0.1345e9},
                        Want{"smollm2-360m", 0.3618e9}, Want{"gemma3-1b", 0.99989e9}}) {
    INFO(w.name);
    const tools::ModelShape* s = tools::find_shape(w.name);
    REQUIRE(s != nullptr);
    CHECK_NOTHROW(s->validate(quant::DType::q8_0));
    CHECK(double(s->n_params()) == Approx(w.params).epsilon(0.01));
  }
}

TEST_CASE("Llama 3 RoPE factors equal the converter's (archs test vectors)", "[synth][archs]") {
  // llama3-rope.gguf's rope_freqs.weight was written by convert_hf_to_gguf.py's
  // formula for base 500000, n_rot 16, factor 32, original context 8192.
  auto f = gguf::File::open(shared_dir() + "/testdata/archs/llama3-rope.gguf");
  const auto want = tensor_f32(f->tensor("rope_freqs.weight"));
  const auto got = tools::llama3_rope_factors(500000.0f, 16, 32.0f, 8192);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-6));
}

TEST_CASE("real-architecture shapes synthesize their own GGUF architecture", "[synth][archs]") {
  // Each named shape of qwen2 / qwen3 / phi3 / llama-3 scaled down (its arch
  // and block variants kept): the loader must see the architecture's tensors,
  // and the parameter count must equal the file's element count.
  TempDir td;
  for (const char* name : {"qwen2.5-0.5b", "qwen3-0.6b", "llama-3.2-1b", "phi-3.5-mini"}) {
    INFO(name);
    tools::ModelShape s = *tools::find_shape(name);
    s.dim = 128;
    s.n_layer = 2;
    s.n_head = 4;
    s.n_head_kv = s.n_head_kv == s.n_head ? 4 : 2;
    if (s.head_dim) s.head_dim = 64;  // qwen3: head dim != dim / heads, as in the real model
    s.ffn = 192;
    s.n_vocab = 300;
    s.ctx = 256;
    const std::string p = synth(td, std::string(name) + ".gguf", s, quant::DType::q8_0, 5);
    auto m = model::Model::load(p);
    const auto& c = m->config();
    CHECK(c.arch == s.arch);
    CHECK(c.head_dim == s.head_dim_or_default());
    CHECK(c.qkv_bias == s.qkv_bias);
    CHECK(c.qk_norm == s.qk_norm);
    CHECK(c.rope_neox == (s.arch != "llama"));
    CHECK(c.rope_freqs.size() == (s.llama3_rope_factor > 0 ? c.n_rot / 2 : 0u));
    CHECK(c.tied_output == s.tied);
    if (s.fused) {  // q, k, v: consecutive rows of one tensor
      const auto& L = m->layer(0);
      CHECK(static_cast<const uint8_t*>(L.wk.data) ==
            static_cast<const uint8_t*>(L.wq.data) + L.wq.rows * quant::row_bytes(L.wq.type, L.wq.cols));
    }
    uint64_t elems = 0;
    for (const auto& t : m->file().tensors()) elems += t.n_elements;
    CHECK(elems == s.n_params() + (s.llama3_rope_factor > 0 ? c.n_rot / 2 : 0));
    engine::ContextParams cp;
    cp.n_ctx = 64;
    cp.n_threads = 1;
    engine::Context ctx(*m, cp);
    auto logits = ctx.eval(std::vector<int32_t>{1, 100, 200, 299, 5});
    for (float x : logits) REQUIRE(std::isfinite(x));
  }
}

TEST_CASE("gemma3-1b is Gemma 3 1B's config and loads as gemma3 with its windows and RoPE bases", "[synth][archs]") {
  // google/gemma-3-1b config.json: hidden 1152, 26 layers, 4 heads, 1 KV
  // head, head_dim 256, intermediate 6912, vocab 262144, sliding_window 512
  // (pattern 6), rope_theta 1e6, rope_local_base_freq 10000, no rope_scaling,
  // rms_norm_eps 1e-6, max_position_embeddings 32768, tied embeddings.
  const tools::ModelShape* g = tools::find_shape("gemma3-1b");
  REQUIRE(g != nullptr);
  CHECK(g->arch == "gemma3");
  CHECK(g->dim == 1152);
  CHECK(g->n_layer == 26);
  CHECK(g->n_head == 4);
  CHECK(g->n_head_kv == 1);
  CHECK(g->head_dim == 256);
  CHECK(g->ffn == 6912);
  CHECK(g->n_vocab == 262144);
  CHECK(g->sliding_window == 512);
  CHECK(g->rope_base == 1e6f);
  CHECK(g->rope_base_swa == 1e4f);
  CHECK(g->rms_eps == 1e-6f);
  CHECK(g->ctx == 32768);
  CHECK(g->tied);
  CHECK_NOTHROW(g->validate(quant::DType::q8_0));

  // The shape scaled down in width, depth and vocabulary (heads, head dim,
  // window, RoPE, eps and context kept): the loader reads it as Gemma 3 1B's
  // block and layer kinds.
  TempDir td;
  tools::ModelShape s = *g;
  s.dim = 64;
  s.n_layer = 8;
  s.ffn = 128;
  s.n_vocab = 300;
  auto m = model::Model::load(synth(td, "gemma3.gguf", s, quant::DType::q8_0, 3));
  const model::Config& c = m->config();
  CHECK(c.arch == "gemma3");
  CHECK(c.head_dim == 256);
  CHECK(c.n_head_kv == 1);
  CHECK(c.qk_norm);
  CHECK(c.post_norms);
  CHECK(c.act == model::Activation::gelu_tanh);
  CHECK(c.embd_scale == Approx(8.0f));
  CHECK(c.final_softcap == 0.0f);
  CHECK(c.tied_output);
  CHECK(c.rms_eps == 1e-6f);
  CHECK(c.n_ctx_train == 32768);
  CHECK(c.sliding_window == 512);
  REQUIRE(c.rope.size() == 2);
  CHECK(c.rope[0].freq_base == 1e6f);
  CHECK(c.rope[0].freq_scale == 1.0f);  // the 1B has no linear scaling
  CHECK(c.rope[1].freq_base == 1e4f);
  for (uint32_t l = 0; l < c.n_layer; ++l) {
    INFO("layer " << l);
    CHECK(m->layer(l).window == (l % 6 == 5 ? 0u : 512u));
    CHECK(m->layer(l).rope_table == (l % 6 == 5 ? 0u : 1u));
  }
  uint64_t elems = 0;
  for (const auto& t : m->file().tensors()) elems += t.n_elements;
  CHECK(elems == s.n_params());
  // The context defaults to the metadata's 32768 (allows 32k runs).
  engine::ContextParams cp;
  CHECK(engine::plan_context(c, cp).n_ctx == 32768);
  cp.n_ctx = 64;
  cp.n_threads = 1;
  engine::Context ctx(*m, cp);
  auto logits = ctx.eval(std::vector<int32_t>{1, 100, 200, 299, 5});
  for (float x : logits) REQUIRE(std::isfinite(x));
  for (int i = 0; i < 4; ++i) ctx.step(7 + i);
  for (float x : ctx.logits()) REQUIRE(std::isfinite(x));

  s.n_layer = 5;  // no global layer
  CHECK_THROWS_WITH(s.validate(quant::DType::q8_0), Catch::Contains("gemma3"));
}

TEST_CASE("streaming-read kernels agree with the scalar reference", "[membw]") {
  std::vector<unsigned char> buf(4096 + 64);
  std::mt19937_64 rng(1);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  // Independent oracle: the word sum computed byte by byte.
  auto oracle = [](const unsigned char* p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; ++i) s += uint64_t(p[i]) << (8 * (i % 8));
    return s;
  };
  for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(63), size_t(64),
                   size_t(65), size_t(511), size_t(512), size_t(513), size_t(1000), size_t(4096)})
    for (size_t off : {size_t(0), size_t(1), size_t(8), size_t(33)}) {
      INFO("n " << n << " off " << off);
      const unsigned char* p = buf.data() + off;
      const uint64_t want = oracle(p, n);
      CHECK(simd::stream_read_scalar(p, n) == want);
#if defined(DEFKV_SIMD_HAVE_STREAM_READ_AVX512)
      if (__builtin_cpu_supports("avx512f")) CHECK(simd::stream_read_avx512(p, n) == want);
#endif
    }
}

TEST_CASE("bandwidth probe returns a finite rate and reads every word", "[membw]") {
  for (bool scalar : {false, true}) {
    tools::MembwOptions o;
    o.size_bytes = size_t(1) << 20;
    o.n_threads = 2;
    o.n_runs = 2;
    o.force_scalar = scalar;
    const auto r = tools::measure_read_bandwidth(o);
    INFO(r.kernel);
    CHECK(std::isfinite(r.best_gbps));
    CHECK(r.best_gbps > 0);
    CHECK(r.run_gbps.size() == 2);
    CHECK(r.size_bytes <= o.size_bytes);
    CHECK(r.size_bytes % 4096 == 0);
    // The buffer holds word i = i * 0x9E3779B97F4A7C15, so the checksum is
    // that constant times n (n - 1) / 2, mod 2^64.
    const uint64_t n = r.size_bytes / 8;
    const uint64_t tri = (n % 2 == 0) ? (n / 2) * (n - 1) : n * ((n - 1) / 2);
    CHECK(r.checksum == tri * 0x9E3779B97F4A7C15ULL);
    if (scalar) CHECK(r.kernel == "scalar");
  }
  CHECK_THROWS(tools::measure_read_bandwidth({100, 1, 1, false}));
}
