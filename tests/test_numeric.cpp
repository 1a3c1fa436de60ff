// Non-finite values through the C API: a model whose weights are poisoned in
// memory (a copy of stories260K with NaN/Inf written into one tensor) is
// refused at load when the poison is in a norm, and stops with
// DEFKV_ERR_NUMERIC naming the position when it is elsewhere; the context
// then continues as if the offending batch had never been fed.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "defkv.h"
#include "runtime/gguf/gguf.h"

namespace {

std::string shared(const std::string& rel) {
  const char* s = std::getenv("DEFKV_SHARED");
  return std::string(s ? s : "../shared") + "/" + rel;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Byte offset of tensor `name` in the file image.
size_t tensor_offset(const std::vector<uint8_t>& file, const std::string& name, uint32_t* type = nullptr,
                     uint64_t* row_elems = nullptr) {
  auto f = defkv::gguf::File::from_buffer(file.data(), file.size());
  const defkv::gguf::TensorInfo& t = f->tensor(name);
  if (type) *type = t.type;
  if (row_elems) *row_elems = t.ne[0];
  return size_t(t.data - file.data());
}

void put_f32(std::vector<uint8_t>& file, size_t off, float v) { std::memcpy(file.data() + off, &v, 4); }

// Writes v into elements [first, first + n) of an F32 or F16 tensor.
void poison(std::vector<uint8_t>& file, const std::string& name, uint64_t first, uint64_t n, float v) {
  uint32_t type = 0;
  const size_t off = tensor_offset(file, name, &type);
  for (uint64_t i = first; i < first + n; ++i) {
    if (type == 0) {
      put_f32(file, off + 4 * i, v);
    } else {
      REQUIRE(type == 1);
      const uint16_t h = std::isnan(v) ? 0x7e00 : (v > 0 ? 0x7c00 : 0xfc00);
      std::memcpy(file.data() + off + 2 * i, &h, 2);
    }
  }
}

struct Model {
  defkv_model* m = nullptr;
  ~Model() { if (m) defkv_model_free(m); }
};
struct Ctx {
  defkv_context* c = nullptr;
  ~Ctx() { if (c) defkv_context_free(c); }
};

defkv_context* make_ctx(defkv_model* m, bool budget, int32_t kv_type = DEFKV_KV_F16) {
  defkv_context_params p;
  defkv_context_params_init(&p);
  p.kv_type = kv_type;
  p.n_threads = 1;
  p.n_ctx = 128;
  p.temperature = 0;
  if (budget) {
    p.kv_budget_tokens = 16;
    p.kv_window = 8;
    p.kv_sinks = 2;
  }
  defkv_context* c = nullptr;
  REQUIRE(defkv_context_create(m, &p, &c) == DEFKV_OK);
  return c;
}

std::vector<int32_t> tokenize(defkv_model* m, const char* text) {
  std::vector<int32_t> t(256);
  size_t n = 0;
  REQUIRE(defkv_tokenize(m, text, -1, 1, 0, t.data(), t.size(), &n) == DEFKV_OK);
  t.resize(n);
  return t;
}

std::vector<float> logits(defkv_context* c) {
  std::vector<float> l(4096);
  size_t n = 0;
  REQUIRE(defkv_get_logits(c, l.data(), l.size(), &n) == DEFKV_OK);
  l.resize(n);
  return l;
}

}  // namespace

TEST_CASE("numeric: a model whose norm weights hold NaN or Inf is refused at load, naming the tensor",
          "[api][numeric]") {
  for (const char* file : {"models/stories260K/stories260K.gguf", "models/stories260K/stories260K-f16.gguf"}) {
    for (const char* tensor : {"output_norm.weight", "blk.2.attn_norm.weight", "blk.4.ffn_norm.weight"}) {
      for (float v : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        std::vector<uint8_t> bytes = read_bytes(shared(file));
        poison(bytes, tensor, 7, 1, v);
        INFO(file << " " << tensor << " " << v);
        Model m;
        CHECK(defkv_model_load_buffer(bytes.data(), bytes.size(), 1, &m.m) == DEFKV_ERR_FORMAT);
        const std::string msg = defkv_last_error(nullptr);
        CHECK_THAT(msg, Catch::Contains(tensor) && Catch::Contains("non-finite") && Catch::Contains("index 7"));
      }
    }
  }
  CHECK(std::string(defkv_status_name(DEFKV_ERR_NUMERIC)) == "DEFKV_ERR_NUMERIC");
}

TEST_CASE("numeric: NaN/Inf logits stop eval, decode and generate with DEFKV_ERR_NUMERIC and the position",
          "[api][numeric]") {
  const char* file = GENERATE("models/stories260K/stories260K.gguf", "models/stories260K/stories260K-f16.gguf");
  const bool budget = GENERATE(false, true);
  // q8_0 KV rows: the non-finite keys and values of the token must not
  // become finite numbers (nor undefined conversions) when quantised
  const int32_t kv_type = GENERATE(int32_t(DEFKV_KV_F16), int32_t(DEFKV_KV_Q8_0));
  INFO(file << (budget ? " with a KV budget" : " full cache") << ", KV type " << kv_type);
  const std::vector<uint8_t> clean_bytes = read_bytes(shared(file));
  Model clean;
  REQUIRE(defkv_model_load_buffer(clean_bytes.data(), clean_bytes.size(), 1, &clean.m) == DEFKV_OK);
  const std::vector<int32_t> prompt =
      tokenize(clean.m, "Once upon a time there was a little girl named Lily. She liked to play outside.");
  // The poisoned token: one the prompt does not use. Its embedding row is NaN
  // (or +Inf), so every logit at its position is non-finite.
  int32_t bad = 400;
  while (std::find(prompt.begin(), prompt.end(), bad) != prompt.end()) ++bad;
  std::vector<uint8_t> bytes = clean_bytes;
  uint64_t dim = 0;
  tensor_offset(bytes, "token_embd.weight", nullptr, &dim);
  poison(bytes, "token_embd.weight", uint64_t(bad) * dim, dim,
         budget ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN());
  Model sick;
  REQUIRE(defkv_model_load_buffer(bytes.data(), bytes.size(), 1, &sick.m) == DEFKV_OK);

  Ctx c{make_ctx(sick.m, budget, kv_type)}, ref{make_ctx(clean.m, budget, kv_type)};
  REQUIRE(defkv_eval(c.c, prompt.data(), prompt.size(), nullptr, nullptr) == DEFKV_OK);
  REQUIRE(defkv_eval(ref.c, prompt.data(), prompt.size(), nullptr, nullptr) == DEFKV_OK);
  CHECK(logits(c.c) == logits(ref.c));  // the poison is not reached yet

  // Decode: the step is refused, named, and not kept.
  const std::string where = "at position " + std::to_string(prompt.size()) + " (input token " + std::to_string(bad) + ")";
  CHECK(defkv_decode(c.c, bad) == DEFKV_ERR_NUMERIC);
  CHECK_THAT(std::string(defkv_last_error(c.c)), Catch::Contains("non-finite logits") && Catch::Contains(where));
  uint32_t n_past = 0;
  REQUIRE(defkv_n_past(c.c, &n_past) == DEFKV_OK);
  CHECK(n_past == prompt.size());
  int32_t t = -1;
  CHECK(defkv_sample(c.c, &t) == DEFKV_ERR_BAD_STATE);  // no logits to sample from
  // ... and the context continues exactly as one that never saw the token.
  for (int32_t next : {prompt[3], prompt[5], prompt[8]}) {
    REQUIRE(defkv_decode(c.c, next) == DEFKV_OK);
    REQUIRE(defkv_decode(ref.c, next) == DEFKV_OK);
    CHECK(logits(c.c) == logits(ref.c));
  }
  uint32_t g1 = 0, g2 = 0;
  auto none = [](int32_t, const char*, size_t, void*) { return 0; };
  REQUIRE(defkv_generate(c.c, 8, none, nullptr, &g1) == DEFKV_OK);
  REQUIRE(defkv_generate(ref.c, 8, none, nullptr, &g2) == DEFKV_OK);
  CHECK(g1 == g2);

  // Eval: a prompt holding the token stops where its logits are computed (the
  // last token of the chunk); the earlier positions of the call stay.
  REQUIRE(defkv_reset(c.c) == DEFKV_OK);
  std::vector<int32_t> p2(prompt.begin(), prompt.begin() + 6);
  p2.push_back(bad);
  p2.push_back(prompt[6]);
  CHECK(defkv_eval(c.c, p2.data(), p2.size(), nullptr, nullptr) == DEFKV_ERR_NUMERIC);
  CHECK_THAT(std::string(defkv_last_error(c.c)), Catch::Contains("at position 7"));
  REQUIRE(defkv_n_past(c.c, &n_past) == DEFKV_OK);
  CHECK(n_past == 0);  // one chunk: nothing of it kept
  CHECK(defkv_generate(c.c, 4, none, nullptr, nullptr) == DEFKV_ERR_BAD_STATE);
  REQUIRE(defkv_eval(c.c, prompt.data(), prompt.size(), nullptr, nullptr) == DEFKV_OK);
}
