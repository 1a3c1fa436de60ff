// GGUF reader / writer tests.
//
// Oracles: the facts documented in /work/shared/models/README.md and the
// eviction test-vector README, the llama2.c checkpoint stories260K.bin (the
// same float values written independently), an IEEE half decoder written
// here, and hand-built byte images for malformed files. Every malformed-file
// test asserts the specific message.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"

using namespace defkv::gguf;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

std::string shared_dir() {
  const char* e = std::getenv("DEFKV_SHARED");
  return e != nullptr && *e != '\0' ? std::string(e) : std::string("../shared");
}
std::string model_path(const std::string& name) {
  return shared_dir() + "/models/stories260K/" + name;
}
std::string eviction_path(const std::string& name) {
  return shared_dir() + "/testdata/eviction/" + name;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// A private temp directory, removed at exit of the test case.
struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() /
          ("defkv_test_gguf_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

// ---- independent decoders -------------------------------------------------

float half_to_float(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  double v;
  if (exp == 0) v = std::ldexp(static_cast<double>(mant), -24);
  else if (exp == 31) v = mant == 0 ? INFINITY : NAN;
  else v = std::ldexp(1.0 + mant / 1024.0, exp - 15);
  return static_cast<float>(sign ? -v : v);
}

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// ---- deep comparison -------------------------------------------------------

bool same_array(const Array& a, const Array& b) {
  if (a.elem_type != b.elem_type || a.ints != b.ints || a.strings != b.strings ||
      a.floats.size() != b.floats.size() || a.arrays.size() != b.arrays.size())
    return false;
  for (size_t i = 0; i < a.floats.size(); ++i)
    if (std::bit_cast<uint64_t>(a.floats[i]) != std::bit_cast<uint64_t>(b.floats[i])) return false;
  for (size_t i = 0; i < a.arrays.size(); ++i)
    if (!same_array(a.arrays[i], b.arrays[i])) return false;
  return true;
}

bool same_value(const Value& a, const Value& b) {
  if (a.type != b.type || a.v.index() != b.v.index()) return false;
  if (auto* x = std::get_if<Array>(&a.v)) return same_array(*x, std::get<Array>(b.v));
  if (auto* x = std::get_if<double>(&a.v))
    return std::bit_cast<uint64_t>(*x) == std::bit_cast<uint64_t>(std::get<double>(b.v));
  if (auto* x = std::get_if<int64_t>(&a.v)) return *x == std::get<int64_t>(b.v);
  if (auto* x = std::get_if<uint64_t>(&a.v)) return *x == std::get<uint64_t>(b.v);
  if (auto* x = std::get_if<bool>(&a.v)) return *x == std::get<bool>(b.v);
  return std::get<std::string>(a.v) == std::get<std::string>(b.v);
}

void require_same_file(const File& a, const File& b) {
  REQUIRE(a.metadata().size() == b.metadata().size());
  for (size_t i = 0; i < a.metadata().size(); ++i) {
    INFO("key " << a.metadata()[i].first);
    CHECK(a.metadata()[i].first == b.metadata()[i].first);
    CHECK(same_value(a.metadata()[i].second, b.metadata()[i].second));
  }
  REQUIRE(a.tensors().size() == b.tensors().size());
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    const TensorInfo& x = a.tensors()[i];
    const TensorInfo& y = b.tensors()[i];
    INFO("tensor " << x.name);
    CHECK(x.name == y.name);
    CHECK(x.type == y.type);
    CHECK(x.n_dims == y.n_dims);
    for (int d = 0; d < 4; ++d) CHECK(x.ne[d] == y.ne[d]);
    CHECK(x.n_elements == y.n_elements);
    REQUIRE(x.size_bytes == y.size_bytes);
    CHECK(std::memcmp(x.data, y.data, x.size_bytes) == 0);
  }
}

// ---- a small valid file with every value type and tensor type --------------

Array int_array(ValueType t, std::vector<int64_t> v) {
  Array a;
  a.elem_type = t;
  a.ints = std::move(v);
  return a;
}

struct Small {
  std::vector<float> f32;      // [2, 64]
  std::vector<uint16_t> f16;   // [32]
  std::vector<uint8_t> q8;     // [64] as 2 blocks of 34 bytes
  std::vector<uint16_t> bf16;  // [3, 16]
  std::vector<int32_t> i32;    // [4, 8]: 128 bytes, so the file ends with data
  Writer w;
  std::vector<uint8_t> bytes;

  Small() {
    for (int i = 0; i < 128; ++i) f32.push_back(0.25f * static_cast<float>(i - 60));
    for (int i = 0; i < 32; ++i) f16.push_back(static_cast<uint16_t>(0x3c00 + i));
    for (int i = 0; i < 68; ++i) q8.push_back(static_cast<uint8_t>(i * 7));
    for (int i = 0; i < 48; ++i) bf16.push_back(static_cast<uint16_t>(0x3f80 + i));
    for (int i = 0; i < 32; ++i) i32.push_back(i % 3 == 0 ? 1 : 0);

    w.set("k.u8", Value{ValueType::u8, uint64_t{200}});
    w.set("k.i8", Value{ValueType::i8, int64_t{-100}});
    w.set("k.u16", Value{ValueType::u16, uint64_t{60000}});
    w.set("k.i16", Value{ValueType::i16, int64_t{-30000}});
    w.set_u32("k.u32", 4000000000u);
    w.set("k.i32", Value{ValueType::i32, int64_t{-2000000000}});
    w.set_f32("k.f32", 1e-5f);
    w.set("k.bol", Value{ValueType::boolean, true});
    w.set_string("k.str", "hello");
    w.set("k.u64", Value{ValueType::u64, uint64_t{18446744073709551615ull}});
    w.set("k.i64", Value{ValueType::i64, int64_t{-9000000000000000000ll}});
    w.set("k.f64", Value{ValueType::f64, 3.141592653589793});
    w.set_string("k.emp", "");
    {
      Array a;
      a.elem_type = ValueType::string;
      a.strings = {"<unk>", "", "x y"};
      w.set("a.str", Value{ValueType::array, a});
    }
    w.set("a.i32", Value{ValueType::array, int_array(ValueType::i32, {-1, 0, 7})});
    w.set("a.u64", Value{ValueType::array, int_array(ValueType::u64, {-1, 5})});
    w.set("a.bol", Value{ValueType::array, int_array(ValueType::boolean, {1, 0, 1})});
    {
      Array a;
      a.elem_type = ValueType::f32;
      a.floats = {0.5, -2.0};
      w.set("a.f32", Value{ValueType::array, a});
    }
    {
      Array inner = int_array(ValueType::u8, {1, 2, 3});
      Array empty;
      empty.elem_type = ValueType::f64;
      Array outer;
      outer.elem_type = ValueType::array;
      outer.arrays = {inner, empty};
      w.set("a.nst", Value{ValueType::array, outer});
    }
    w.set("a.emp", Value{ValueType::array, int_array(ValueType::i16, {})});

    w.add_tensor("t.aa", 0, {64, 2}, f32.data(), f32.size() * 4);
    w.add_tensor("t.bb", 1, {32}, f16.data(), f16.size() * 2);
    w.add_tensor("t.cc", 8, {64}, q8.data(), q8.size());
    w.add_tensor("t.dd", 30, {16, 3}, bf16.data(), bf16.size() * 2);
    w.add_tensor("t.ee", 26, {8, 4}, i32.data(), i32.size() * 4);
    bytes = w.to_bytes();
  }
};

const Small& small() {
  static const Small s;
  return s;
}

// Offset of the u64 length that precedes string `s` in the file image.
size_t find_string_field(const std::vector<uint8_t>& b, const std::string& s) {
  std::vector<uint8_t> pat(8 + s.size());
  uint64_t n = s.size();
  std::memcpy(pat.data(), &n, 8);
  std::memcpy(pat.data() + 8, s.data(), s.size());
  auto it = std::search(b.begin(), b.end(), pat.begin(), pat.end());
  REQUIRE(it != b.end());
  return static_cast<size_t>(it - b.begin());
}
// Offset of the value-type field of key `key`.
size_t key_type_at(const std::vector<uint8_t>& b, const std::string& key) {
  return find_string_field(b, key) + 8 + key.size();
}
// Offset of the n_dims field of tensor `name`.
size_t tensor_info_at(const std::vector<uint8_t>& b, const std::string& name) {
  return find_string_field(b, name) + 8 + name.size();
}
template <class T>
void patch(std::vector<uint8_t>& b, size_t off, T v) {
  REQUIRE(off + sizeof(T) <= b.size());
  std::memcpy(b.data() + off, &v, sizeof(T));
}

// Parses a copy of exactly the given bytes (so ASan sees any over-read).
std::unique_ptr<File> parse(const std::vector<uint8_t>& b) {
  static std::vector<uint8_t> keep;  // File refers to the buffer
  keep = b;
  return File::from_buffer(keep.data(), keep.size());
}

}  // namespace

// ---------------------------------------------------------------------------
// Real files
// ---------------------------------------------------------------------------

TEST_CASE("stories260K.gguf: header, metadata and tensors match models/README.md", "[gguf]") {
  auto f = File::open(model_path("stories260K.gguf"));
  CHECK(f->version() == 3);
  CHECK(f->alignment() == 32);
  CHECK(f->bytes().size() == 1185376);
  CHECK(f->get_string("general.architecture") == "llama");
  CHECK(f->get_uint("llama.embedding_length") == 64);
  CHECK(f->get_uint("llama.feed_forward_length") == 172);
  CHECK(f->get_uint("llama.block_count") == 5);
  CHECK(f->get_uint("llama.attention.head_count") == 8);
  CHECK(f->get_uint("llama.attention.head_count_kv") == 4);
  CHECK(f->get_uint("llama.context_length") == 2048);
  CHECK(f->get_uint("llama.rope.dimension_count") == 8);
  CHECK(f->find("llama.attention.layer_norm_rms_epsilon")->type == ValueType::f32);
  CHECK(f->get_float("llama.attention.layer_norm_rms_epsilon") == static_cast<double>(1e-5f));
  CHECK(f->get_string("tokenizer.ggml.model") == "llama");
  CHECK(f->get_uint("tokenizer.ggml.bos_token_id") == 1);
  CHECK(f->get_uint("tokenizer.ggml.eos_token_id") == 2);

  const Array& tokens = f->get_array("tokenizer.ggml.tokens");
  REQUIRE(tokens.elem_type == ValueType::string);
  REQUIRE(tokens.size() == 512);
  CHECK(tokens.strings[0] == "<unk>");
  CHECK(tokens.strings[1] == "<s>");
  CHECK(tokens.strings[2] == "</s>");
  CHECK(tokens.strings[3] == "<0x00>");
  CHECK(tokens.strings[258] == "<0xFF>");
  const Array& scores = f->get_array("tokenizer.ggml.scores");
  CHECK(scores.elem_type == ValueType::f32);
  CHECK(scores.size() == 512);
  const Array& types = f->get_array("tokenizer.ggml.token_type");
  CHECK(types.elem_type == ValueType::i32);
  CHECK(types.size() == 512);

  REQUIRE(f->tensors().size() == 48);
  uint64_t total_elements = 0;
  for (const TensorInfo& t : f->tensors()) {
    CHECK(t.type == static_cast<uint32_t>(TensorType::f32));
    CHECK(t.size_bytes == 4 * t.n_elements);
    total_elements += t.n_elements;
  }
  CHECK(total_elements == 292800);  // README: 292,800 floats stored

  const TensorInfo& emb = f->tensor("token_embd.weight");
  CHECK(emb.n_dims == 2);
  CHECK(emb.ne[0] == 64);
  CHECK(emb.ne[1] == 512);
  const TensorInfo& gate = f->tensor("blk.3.ffn_gate.weight");
  CHECK(gate.ne[0] == 64);
  CHECK(gate.ne[1] == 172);
  CHECK(f->tensor("blk.0.attn_k.weight").ne[1] == 32);  // n_head_kv * head_dim
  CHECK(f->tensor("output_norm.weight").n_dims == 1);
  // README: output.weight is stored and equals token_embd.weight.
  const TensorInfo& out = f->tensor("output.weight");
  REQUIRE(out.size_bytes == emb.size_bytes);
  CHECK(std::memcmp(out.data, emb.data, emb.size_bytes) == 0);

  // The last tensor ends at the end of the file; the data section start
  // derived from it is aligned and every pointer is data_start + offset.
  const TensorInfo& last = f->tensors().back();
  uint64_t data_start = f->bytes().size() - (last.offset + last.size_bytes);
  CHECK(data_start % 32 == 0);
  for (const TensorInfo& t : f->tensors())
    CHECK(t.data == f->bytes().data() + data_start + t.offset);
}

TEST_CASE("stories260K.gguf: tensor data equals the llama2.c checkpoint", "[gguf]") {
  // stories260K.bin: 7 int32 header, then token_embedding_table [vocab, dim],
  // then rms_att_weight [n_layers, dim] (llama2.c layout).
  std::vector<uint8_t> bin = read_bytes(model_path("stories260K.bin"));
  REQUIRE(bin.size() > 28 + 131072 + 5 * 256);
  CHECK(load<int32_t>(bin.data()) == 64);
  auto f = File::open(model_path("stories260K.gguf"));
  const TensorInfo& emb = f->tensor("token_embd.weight");
  CHECK(std::memcmp(emb.data, bin.data() + 28, 131072) == 0);
  for (int l = 0; l < 5; ++l) {
    const TensorInfo& n = f->tensor("blk." + std::to_string(l) + ".attn_norm.weight");
    REQUIRE(n.size_bytes == 256);
    CHECK(std::memcmp(n.data, bin.data() + 28 + 131072 + 256 * l, 256) == 0);
  }
}

TEST_CASE("stories260K-f16.gguf: 2-D tensors are F16 roundings of the F32 file", "[gguf]") {
  auto f32 = File::open(model_path("stories260K.gguf"));
  auto f16 = File::open(model_path("stories260K-f16.gguf"));
  CHECK(f16->bytes().size() == 601184);
  REQUIRE(f16->metadata().size() == f32->metadata().size());
  for (size_t i = 0; i < f32->metadata().size(); ++i) {
    CHECK(f16->metadata()[i].first == f32->metadata()[i].first);
    CHECK(same_value(f16->metadata()[i].second, f32->metadata()[i].second));
  }
  REQUIRE(f16->tensors().size() == 48);
  for (const TensorInfo& t : f16->tensors()) {
    INFO(t.name);
    const TensorInfo& ref = f32->tensor(t.name);
    REQUIRE(t.n_elements == ref.n_elements);
    if (t.n_dims == 1) {
      REQUIRE(t.type == static_cast<uint32_t>(TensorType::f32));
      CHECK(std::memcmp(t.data, ref.data, ref.size_bytes) == 0);
      continue;
    }
    REQUIRE(t.type == static_cast<uint32_t>(TensorType::f16));
    REQUIRE(t.size_bytes == 2 * t.n_elements);
    size_t bad = 0;
    for (uint64_t i = 0; i < t.n_elements; ++i) {
      float x = load<float>(ref.data + 4 * i);
      float h = half_to_float(load<uint16_t>(t.data + 2 * i));
      int e;
      std::frexp(x, &e);
      // Half ulp of the half-precision grid at |x| (subnormal spacing 2^-24).
      double half_ulp = std::ldexp(1.0, std::max(e - 11, -24) - 1);
      if (std::fabs(static_cast<double>(x) - h) > half_ulp) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("eviction vectors: I32 keep masks and array metadata", "[gguf]") {
  for (const char* name : {"stories260K-T256-w16-r0.70.gguf", "stories260K-T384-w32-r0.80.gguf"}) {
    INFO(name);
    auto f = File::open(eviction_path(name));
    const uint64_t n_layer = f->get_uint("eviction.n_layer");
    const uint64_t n_head_kv = f->get_uint("eviction.n_head_kv");
    const uint64_t T = f->get_uint("eviction.n_tokens");
    const uint64_t W = f->get_uint("eviction.window");
    const double r = f->get_float("eviction.compression_ratio");
    CHECK(n_layer == 5);
    CHECK(n_head_kv == 4);
    CHECK(f->get_uint("eviction.n_embd") == 64);
    const Array& ids = f->get_array("eviction.token_ids");
    REQUIRE(ids.elem_type == ValueType::i32);
    REQUIRE(ids.size() == T);
    CHECK(ids.ints[0] == 1);  // BOS first
    // File name carries T, w and r.
    CHECK(std::string(name).find("-T" + std::to_string(T) + "-w" + std::to_string(W) + "-") !=
          std::string::npos);
    CHECK(f->tensors().size() == 12 * n_layer + 2);
    CHECK(f->tensor("logits_last").ne[0] == 512);

    // Per-head SnapKV keeps int(T(1-r)) per head (docs/eviction.md step 4).
    const uint64_t per_head = static_cast<uint64_t>(static_cast<double>(T) * (1.0 - r));
    CHECK(f->get_uint("eviction.budget_per_head") == per_head);
    for (uint64_t l = 0; l < n_layer; ++l) {
      const std::string p = "layer" + std::to_string(l) + ".";
      const TensorInfo& k = f->tensor(p + "k");
      CHECK(k.n_dims == 3);
      CHECK(k.ne[0] == 8);
      CHECK(k.ne[1] == T);
      CHECK(k.ne[2] == n_head_kv);
      const TensorInfo& keep = f->tensor(p + "snapkv.keep");
      REQUIRE(keep.type == static_cast<uint32_t>(TensorType::i32));
      REQUIRE(keep.ne[0] == T);
      REQUIRE(keep.ne[1] == n_head_kv);
      REQUIRE(keep.size_bytes == 4 * T * n_head_kv);
      for (uint64_t h = 0; h < n_head_kv; ++h) {
        uint64_t kept = 0;
        for (uint64_t j = 0; j < T; ++j) {
          int32_t m = load<int32_t>(keep.data + 4 * (h * T + j));
          REQUIRE((m == 0 || m == 1));
          kept += static_cast<uint64_t>(m);
        }
        CHECK(kept == per_head);
      }
      // Head-adaptive DefensiveKV keeps budget_per_layer over the layer.
      const TensorInfo& dk = f->tensor(p + "defensivekv.keep");
      REQUIRE(dk.type == static_cast<uint32_t>(TensorType::i32));
      uint64_t kept = 0;
      for (uint64_t i = 0; i < dk.n_elements; ++i) kept += load<int32_t>(dk.data + 4 * i);
      CHECK(kept == f->get_uint("eviction.budget_per_layer"));
    }
    const TensorInfo& all = f->tensor("layer_defensivekv.keep");
    CHECK(all.n_dims == 3);
    CHECK(all.ne[2] == n_layer);
  }
}

TEST_CASE("vocabulary-only files: 0 tensors, token counts from models/README.md", "[gguf]") {
  auto spm = File::open(shared_dir() + "/models/tokenizers/ggml-vocab-llama-spm.gguf");
  CHECK(spm->tensors().empty());
  CHECK(spm->get_string("tokenizer.ggml.model") == "llama");
  CHECK(spm->get_array("tokenizer.ggml.tokens").size() == 32000);
  CHECK(spm->get_bool("tokenizer.ggml.add_bos_token"));
  auto gpt2 = File::open(shared_dir() + "/models/tokenizers/ggml-vocab-gpt-2.gguf");
  CHECK(gpt2->tensors().empty());
  CHECK(gpt2->get_array("tokenizer.ggml.tokens").size() == 50257);
  CHECK(gpt2->get_array("tokenizer.ggml.merges").size() == 50000);
  CHECK(gpt2->get_array("tokenizer.ggml.merges").elem_type == ValueType::string);
}

// ---------------------------------------------------------------------------
// Writer and round trips
// ---------------------------------------------------------------------------

TEST_CASE("round trip: stories260K read -> write -> read is identical", "[gguf]") {
  auto a = File::open(model_path("stories260K.gguf"));
  Writer w;
  w.copy_metadata(*a);
  for (const TensorInfo& t : a->tensors())
    w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), t.data,
                 t.size_bytes);
  TempDir tmp;
  const std::string path = tmp.file("rt.gguf");
  w.write(path);
  auto b = File::open(path);
  CHECK(b->version() == 3);
  require_same_file(*a, *b);
  // ggml's layout (tensors padded to the alignment) reproduces the original
  // file byte for byte.
  REQUIRE(b->bytes().size() == a->bytes().size());
  CHECK(std::memcmp(a->bytes().data(), b->bytes().data(), a->bytes().size()) == 0);
  // No temporary file left behind.
  CHECK(std::distance(fs::directory_iterator(tmp.dir), fs::directory_iterator()) == 1);
}

TEST_CASE("round trip: every shared GGUF file is rewritten byte for byte", "[gguf]") {
  // Written by gguf-py / ggml (vocab-only files have no data padding).
  const std::string d = shared_dir();
  for (const std::string& path :
       {d + "/models/stories260K/stories260K-f16.gguf", d + "/models/tokenizers/ggml-vocab-gpt-2.gguf",
        d + "/models/tokenizers/ggml-vocab-llama-spm.gguf",
        d + "/models/needle/needle-llama-0.9M-f32.gguf",
        d + "/testdata/eviction/stories260K-T384-w32-r0.80.gguf"}) {
    INFO(path);
    auto a = File::open(path);
    Writer w;
    w.copy_metadata(*a);
    for (const TensorInfo& t : a->tensors())
      w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), t.data,
                   t.size_bytes);
    std::vector<uint8_t> b = w.to_bytes();
    REQUIRE(b.size() == a->bytes().size());
    CHECK(std::memcmp(b.data(), a->bytes().data(), b.size()) == 0);
  }
}

TEST_CASE("round trip: every value type, nested arrays and all tensor types", "[gguf]") {
  const Small& s = small();
  auto a = parse(s.bytes);
  CHECK(a->version() == 3);
  CHECK(a->metadata().size() == 20);
  CHECK(a->get_uint("k.u8") == 200);
  CHECK(a->get_int("k.i8") == -100);
  CHECK(a->get_uint("k.u16") == 60000);
  CHECK(a->get_int("k.i16") == -30000);
  CHECK(a->get_uint("k.u32") == 4000000000u);
  CHECK(a->get_int("k.i32") == -2000000000);
  CHECK(a->get_float("k.f32") == static_cast<double>(1e-5f));
  CHECK(a->get_bool("k.bol"));
  CHECK(a->get_string("k.str") == "hello");
  CHECK(a->get_uint("k.u64") == 18446744073709551615ull);
  CHECK(a->get_int("k.i64") == -9000000000000000000ll);
  CHECK(a->get_float("k.f64") == 3.141592653589793);
  CHECK(a->get_string("k.emp").empty());
  CHECK(a->get_array("a.str").strings == std::vector<std::string>{"<unk>", "", "x y"});
  CHECK(a->get_array("a.i32").ints == std::vector<int64_t>{-1, 0, 7});
  CHECK(a->get_array("a.u64").ints == std::vector<int64_t>{-1, 5});  // u64 bitwise
  CHECK(a->get_array("a.bol").ints == std::vector<int64_t>{1, 0, 1});
  CHECK(a->get_array("a.f32").floats == std::vector<double>{0.5, -2.0});
  const Array& nst = a->get_array("a.nst");
  REQUIRE(nst.elem_type == ValueType::array);
  REQUIRE(nst.size() == 2);
  CHECK(nst.arrays[0].elem_type == ValueType::u8);
  CHECK(nst.arrays[0].ints == std::vector<int64_t>{1, 2, 3});
  CHECK(nst.arrays[1].elem_type == ValueType::f64);
  CHECK(nst.arrays[1].size() == 0);
  CHECK(a->get_array("a.emp").size() == 0);
  CHECK(a->get_array("a.emp").elem_type == ValueType::i16);
  // Metadata keeps insertion order.
  CHECK(a->metadata().front().first == "k.u8");
  CHECK(a->metadata().back().first == "a.emp");

  REQUIRE(a->tensors().size() == 5);
  const uint32_t types[5] = {0, 1, 8, 30, 26};
  const void* srcs[5] = {s.f32.data(), s.f16.data(), s.q8.data(), s.bf16.data(), s.i32.data()};
  const uint64_t sizes[5] = {512, 64, 68, 96, 128};
  for (int i = 0; i < 5; ++i) {
    const TensorInfo& t = a->tensors()[i];
    INFO(t.name);
    CHECK(t.type == types[i]);
    REQUIRE(t.size_bytes == sizes[i]);
    CHECK(std::memcmp(t.data, srcs[i], sizes[i]) == 0);
    CHECK(t.offset % 32 == 0);
    CHECK((t.data - a->bytes().data()) % 32 == 0);
  }
  CHECK(a->tensor("t.cc").n_elements == 64);
  CHECK(a->tensor("t.dd").ne[1] == 3);
  CHECK(s.bytes.size() == static_cast<size_t>(a->tensors().back().data + 128 - a->bytes().data()));

  // Read -> write (copy_metadata + tensors from the file) -> read.
  Writer w;
  w.copy_metadata(*a);
  for (const TensorInfo& t : a->tensors())
    w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), t.data,
                 t.size_bytes);
  std::vector<uint8_t> again = w.to_bytes();
  CHECK(again == s.bytes);
  auto b = File::from_buffer(again.data(), again.size());
  require_same_file(*a, *b);
}

TEST_CASE("writer: set replaces a key in place; alignment is honoured", "[gguf]") {
  std::vector<float> x(3, 1.0f);
  Writer w;
  w.set_u32("a", 1);
  w.set_u32("general.alignment", 64);
  w.set_u32("b", 2);
  w.set_string("a", "now a string");
  w.add_tensor("x", 0, {3}, x.data(), 12);
  w.add_tensor("y", 0, {3}, x.data(), 12);
  std::vector<uint8_t> bytes = w.to_bytes();
  auto f = File::from_buffer(bytes.data(), bytes.size());
  REQUIRE(f->metadata().size() == 3);
  CHECK(f->metadata()[0].first == "a");
  CHECK(f->get_string("a") == "now a string");
  CHECK(f->alignment() == 64);
  CHECK(f->tensor("y").offset == 64);
  CHECK((f->tensor("x").data - f->bytes().data()) % 64 == 0);
}

TEST_CASE("writer: rejects inconsistent input", "[gguf][errors]") {
  std::vector<float> x(64, 0.0f);
  Writer w;
  REQUIRE_THROWS_WITH(w.add_tensor("x", 0, {64}, x.data(), 100),
                      Contains("tensor 'x' of type f32 needs 256 bytes, got 100"));
  REQUIRE_THROWS_WITH(w.add_tensor("x", 0, {}, x.data(), 0), Contains("has 0 dims"));
  REQUIRE_THROWS_WITH(w.add_tensor("x", 0, {1, 1, 1, 1, 1}, x.data(), 4), Contains("has 5 dims"));
  REQUIRE_THROWS_WITH(w.add_tensor("x", 8, {33}, x.data(), 34),
                      Contains("ne[0] = 33 is not a multiple of the block size 32"));
  REQUIRE_THROWS_WITH(w.add_tensor("x", 10, {256}, x.data(), 84),
                      Contains("unsupported type q2_K"));
  REQUIRE_THROWS_WITH(w.add_tensor("x", 12, {256}, x.data(), 100),
                      Contains("tensor 'x' of type q4_K needs 144 bytes, got 100"));
  w.add_tensor("x", 0, {64}, x.data(), 256);
  REQUIRE_THROWS_WITH(w.add_tensor("x", 0, {64}, x.data(), 256),
                      Contains("duplicate tensor name 'x'"));
  REQUIRE_THROWS_WITH(w.set("k", Value{ValueType::u8, uint64_t{256}}),
                      Contains("key 'k' declared as u8 holds a value of a different kind"));
  REQUIRE_THROWS_WITH(w.set("k", Value{ValueType::string, int64_t{1}}),
                      Contains("declared as string"));
  REQUIRE_THROWS_WITH(w.set("k", Value{static_cast<ValueType>(13), int64_t{1}}),
                      Contains("invalid value type 13"));
  Array bad = int_array(ValueType::i8, {300});
  REQUIRE_THROWS_WITH(w.set("k", Value{ValueType::array, bad}),
                      Contains("array element 300 does not fit in i8"));
  Writer w2;
  w2.set_u32("general.alignment", 48);
  REQUIRE_THROWS_WITH(w2.to_bytes(), Contains("general.alignment must be a non-zero power of two"));
  Writer w3;
  w3.set_string("x", "y");
  REQUIRE_THROWS_WITH(w3.write("/nonexistent-dir/x.gguf"),
                      Contains("cannot create temporary file for '/nonexistent-dir/x.gguf'"));
}

// ---------------------------------------------------------------------------
// Malformed input: one test per error case, each asserting its message.
// ---------------------------------------------------------------------------

TEST_CASE("malformed: every truncated prefix of a valid file throws", "[gguf][errors]") {
  const std::vector<uint8_t>& full = small().bytes;
  REQUIRE_NOTHROW(parse(full));
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    INFO("prefix length " << n);
    REQUIRE_THROWS_AS(File::from_buffer(prefix.data(), prefix.size()), Error);
  }
  std::vector<uint8_t> header(full.begin(), full.begin() + 10);
  REQUIRE_THROWS_WITH(parse(header), Contains("file truncated: need 8 bytes for tensor count"));
  // Cut in the data: the last tensor no longer fits.
  std::vector<uint8_t> cut(full.begin(), full.end() - 1);
  REQUIRE_THROWS_WITH(parse(cut), Contains("tensor 't.ee' data") && Contains("lies outside the file"));
}

TEST_CASE("malformed: truncated prefixes of stories260K throw", "[gguf][errors]") {
  std::vector<uint8_t> full = read_bytes(model_path("stories260K.gguf"));
  for (size_t n = 0; n < full.size(); n += 997) {
    INFO("prefix length " << n);
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    REQUIRE_THROWS_AS(File::from_buffer(prefix.data(), prefix.size()), Error);
  }
}

TEST_CASE("malformed: wrong magic", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  b[0] = 'X';
  REQUIRE_THROWS_WITH(parse(b), Contains("bad magic 'XGUF' (expected 'GGUF')"));
}

TEST_CASE("malformed: empty input", "[gguf][errors]") {
  REQUIRE_THROWS_WITH(File::from_buffer(nullptr, 0),
                      Contains("file truncated: need 4 bytes for magic"));
}

TEST_CASE("malformed: GGUF v1 is unsupported", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint32_t>(b, 4, 1);
  REQUIRE_THROWS_WITH(parse(b), Contains("unsupported version 1; only v2 and v3 are supported"));
}

TEST_CASE("malformed: unknown version", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint32_t>(b, 4, 4);
  REQUIRE_THROWS_WITH(parse(b), Contains("unsupported version 4"));
  patch<uint32_t>(b, 4, 0x03000000);  // byte-swapped
  REQUIRE_THROWS_WITH(parse(b), Contains("big-endian"));
}

TEST_CASE("v2 files are read like v3", "[gguf]") {
  // v2 and v3 share the layout (v3 only allows big-endian variants).
  std::vector<uint8_t> b = small().bytes;
  patch<uint32_t>(b, 4, 2);
  auto f = parse(b);
  CHECK(f->version() == 2);
  CHECK(f->tensors().size() == 5);
}

TEST_CASE("malformed: metadata count larger than the file", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, 16, uint64_t{1} << 62);
  REQUIRE_THROWS_WITH(parse(b),
                      Contains("metadata count 4611686018427387904 cannot fit in the"));
}

TEST_CASE("malformed: tensor count larger than the file", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, 8, ~uint64_t{0});
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor count 18446744073709551615 cannot fit in the"));
}

TEST_CASE("malformed: array length past the end of the file", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  // key 'a.str': type (4) | elem type (4) | count (8)
  patch<uint64_t>(b, key_type_at(b, "a.str") + 8, uint64_t{1} << 40);
  REQUIRE_THROWS_WITH(parse(b), Contains("key 'a.str': array length 1099511627776 cannot fit"));
  // Same for a 1-byte element type: the bound is per element size.
  b = small().bytes;
  patch<uint64_t>(b, key_type_at(b, "a.bol") + 8, b.size());
  REQUIRE_THROWS_WITH(parse(b), Contains("key 'a.bol': array length"));
}

TEST_CASE("malformed: key length past the end of the file", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, find_string_field(b, "k.u8"), ~uint64_t{0} - 3);
  REQUIRE_THROWS_WITH(parse(b), Contains("metadata key length 18446744073709551612 at offset 24 "
                                         "runs past the end of the file"));
}

TEST_CASE("malformed: string value length past the end of the file", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, key_type_at(b, "k.str") + 4, uint64_t{1} << 33);
  REQUIRE_THROWS_WITH(parse(b), Contains("string value length 8589934592"));
}

TEST_CASE("malformed: array string element length past the end", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, find_string_field(b, "<unk>"), uint64_t{1} << 50);
  REQUIRE_THROWS_WITH(parse(b), Contains("array string length 1125899906842624"));
}

TEST_CASE("malformed: tensor name length past the end", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, find_string_field(b, "t.bb"), b.size());
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor name length"));
}

namespace {
// header + one key "deep" holding `levels` nested arrays around an empty u32 array.
std::vector<uint8_t> nested_arrays(int levels) {
  std::vector<uint8_t> b;
  auto u32 = [&](uint32_t v) { b.insert(b.end(), (uint8_t*)&v, (uint8_t*)&v + 4); };
  auto u64 = [&](uint64_t v) { b.insert(b.end(), (uint8_t*)&v, (uint8_t*)&v + 8); };
  u32(0x46554747); u32(3); u64(0); u64(1);
  u64(4); b.insert(b.end(), {'d', 'e', 'e', 'p'});
  u32(9);  // array
  for (int i = 0; i < levels - 1; ++i) { u32(9); u64(1); }
  u32(4); u64(0);  // innermost: empty u32 array
  return b;
}
}  // namespace

TEST_CASE("malformed: array nesting depth is bounded", "[gguf][errors]") {
  auto ok = parse(nested_arrays(8));
  const Array* a = &ok->get_array("deep");
  for (int i = 0; i < 7; ++i) {
    REQUIRE(a->elem_type == ValueType::array);
    a = &a->arrays.at(0);
  }
  CHECK(a->elem_type == ValueType::u32);
  REQUIRE_THROWS_WITH(parse(nested_arrays(9)),
                      Contains("key 'deep': arrays nested deeper than 8 levels"));
  REQUIRE_THROWS_WITH(parse(nested_arrays(100000)), Contains("nested deeper than 8"));
}

TEST_CASE("malformed: invalid metadata value type", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint32_t>(b, key_type_at(b, "k.i16"), 13);
  REQUIRE_THROWS_WITH(parse(b), Contains("key 'k.i16' has invalid value type 13"));
}

TEST_CASE("malformed: invalid array element type", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint32_t>(b, key_type_at(b, "a.i32") + 4, 0xFFFFFFFF);
  REQUIRE_THROWS_WITH(parse(b), Contains("key 'a.i32': array has invalid element type 4294967295"));
}

TEST_CASE("malformed: bool value other than 0 or 1", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  b[key_type_at(b, "k.bol") + 4] = 7;
  REQUIRE_THROWS_WITH(parse(b), Contains("key 'k.bol': bool value 7 is not 0 or 1"));
}

TEST_CASE("malformed: duplicate key", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  // Rename "k.i16" to "k.u16" (same length, same value layout).
  b[find_string_field(b, "k.i16") + 10] = 'u';
  REQUIRE_THROWS_WITH(parse(b), Contains("duplicate key 'k.u16'"));
}

TEST_CASE("malformed: duplicate tensor name", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  size_t at = find_string_field(b, "t.bb");
  b[at + 10] = 'a';
  b[at + 11] = 'a';
  REQUIRE_THROWS_WITH(parse(b), Contains("duplicate tensor name 't.aa'"));
}

TEST_CASE("malformed: n_dims above 4", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint32_t>(b, tensor_info_at(b, "t.aa"), 5);
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.aa' has n_dims 5 (must be 1..4)"));
}

TEST_CASE("malformed: n_dims 0", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint32_t>(b, tensor_info_at(b, "t.bb"), 0);
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.bb' has n_dims 0 (must be 1..4)"));
}

TEST_CASE("malformed: dimension of size 0", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, tensor_info_at(b, "t.aa") + 4 + 8, 0);  // ne[1]
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.aa' has dimension 1 of size 0"));
}

TEST_CASE("malformed: dimension product overflows uint64", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  size_t at = tensor_info_at(b, "t.aa");
  patch<uint64_t>(b, at + 4, uint64_t{1} << 32);
  patch<uint64_t>(b, at + 12, uint64_t{1} << 32);
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.aa': element count overflows"));
  // Fits in uint64 elements, but not in bytes.
  patch<uint64_t>(b, at + 4, uint64_t{1} << 31);
  patch<uint64_t>(b, at + 12, uint64_t{1} << 31);
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.aa': byte size overflows"));
}

TEST_CASE("malformed: unsupported tensor type is named", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  size_t type_at = tensor_info_at(b, "t.aa") + 4 + 16;
  patch<uint32_t>(b, type_at, 11);
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.aa' has unsupported type q3_K (11)"));
  patch<uint32_t>(b, type_at, 12);  // q4_K is read, but t.aa's 64 columns are not whole blocks
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.aa' has type q4_K but ne[0] = 64 is not a multiple of the block size 256"));
  patch<uint32_t>(b, type_at, 10);
  REQUIRE_THROWS_WITH(parse(b), Contains("unsupported type q2_K (10)"));
  patch<uint32_t>(b, type_at, 28);
  REQUIRE_THROWS_WITH(parse(b), Contains("unsupported type f64 (28)"));
  patch<uint32_t>(b, type_at, 99);
  REQUIRE_THROWS_WITH(parse(b), Contains("unsupported type type 99 (99)"));
  CHECK(std::string(tensor_type_name(15)) == "q8_K");
  CHECK(std::string(tensor_type_name(26)) == "i32");
  CHECK(std::string(tensor_type_name(30)) == "bf16");
}

TEST_CASE("malformed: q8_0 row length not a multiple of 32", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  patch<uint64_t>(b, tensor_info_at(b, "t.cc") + 4, 48);
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.cc' has type q8_0 but ne[0] = 48 is not a "
                                         "multiple of the block size 32"));
}

TEST_CASE("malformed: tensor data outside the file", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  size_t off_at = tensor_info_at(b, "t.ee") + 4 + 16 + 4;
  uint64_t old = load<uint64_t>(b.data() + off_at);
  const uint64_t data_start = b.size() - old - 128;
  patch<uint64_t>(b, off_at, old + 32);
  REQUIRE_THROWS_WITH(parse(b), Contains("gguf: tensor 't.ee' data [offset " +
                                         std::to_string(data_start + old + 32) +
                                         ", 128 bytes] lies outside the file (size " +
                                         std::to_string(b.size()) + ")"));
  // An offset so large that data_start + offset would wrap around.
  patch<uint64_t>(b, off_at, ~uint64_t{31});
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.ee' data [offset data+18446744073709551584"));
}

TEST_CASE("malformed: tensor offset not aligned", "[gguf][errors]") {
  std::vector<uint8_t> b = small().bytes;
  size_t off_at = tensor_info_at(b, "t.bb") + 4 + 8 + 4;
  patch<uint64_t>(b, off_at, load<uint64_t>(b.data() + off_at) + 4);
  REQUIRE_THROWS_WITH(parse(b), Contains("tensor 't.bb' offset 516 is not a multiple of the "
                                         "alignment 32"));
}

TEST_CASE("malformed: data section starts past the end of the file", "[gguf][errors]") {
  // Cut right after the tensor infos, before the padding.
  const std::vector<uint8_t>& full = small().bytes;
  size_t end_of_infos = tensor_info_at(full, "t.ee") + 4 + 16 + 4 + 8;
  REQUIRE(end_of_infos % 32 != 0);
  std::vector<uint8_t> b(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(end_of_infos));
  REQUIRE_THROWS_WITH(parse(b), Contains("data section would start at offset"));
}

namespace {
std::vector<uint8_t> with_alignment(uint32_t a) {
  std::vector<float> x(8, 2.0f);
  Writer w;
  w.set_u32("general.alignment", 32);
  w.add_tensor("x", 0, {8}, x.data(), 32);
  std::vector<uint8_t> b = w.to_bytes();
  patch<uint32_t>(b, key_type_at(b, "general.alignment") + 4, a);
  return b;
}
}  // namespace

TEST_CASE("malformed: general.alignment not a power of two", "[gguf][errors]") {
  REQUIRE_THROWS_WITH(parse(with_alignment(24)),
                      Contains("general.alignment 24 is not a non-zero power of two"));
}

TEST_CASE("malformed: general.alignment zero", "[gguf][errors]") {
  REQUIRE_THROWS_WITH(parse(with_alignment(0)),
                      Contains("general.alignment 0 is not a non-zero power of two"));
}

TEST_CASE("malformed: general.alignment of the wrong type", "[gguf][errors]") {
  std::vector<uint8_t> b = with_alignment(32);
  patch<uint32_t>(b, key_type_at(b, "general.alignment"), 6);  // f32
  REQUIRE_THROWS_WITH(parse(b), Contains("key 'general.alignment' has type f32, expected an "
                                         "unsigned integer"));
}

TEST_CASE("malformed: a huge general.alignment puts the data section past the end of a small file",
          "[gguf][errors]") {
  // fuzz_model's harness padded every tensor to such an alignment (1 GiB each);
  // the reader refuses the small file that claims it, without allocating.
  for (uint32_t a : {1u << 20, 1u << 30, 1u << 31}) {
    INFO(a);
    REQUIRE_THROWS_WITH(parse(with_alignment(a)), Contains("data section would start at offset"));
  }
}

TEST_CASE("general.alignment other than 32 moves the data section", "[gguf]") {
  std::vector<uint8_t> b = with_alignment(8);
  const size_t end_of_infos = tensor_info_at(b, "x") + 4 + 8 + 4 + 8;
  auto f = parse(b);
  CHECK(f->alignment() == 8);
  CHECK(static_cast<size_t>(f->tensor("x").data - f->bytes().data()) ==
        (end_of_infos + 7) / 8 * 8);
}

// ---------------------------------------------------------------------------
// Files on disk and getters
// ---------------------------------------------------------------------------

TEST_CASE("open: missing, empty and non-regular files", "[gguf][errors]") {
  REQUIRE_THROWS_WITH(File::open("/nonexistent/model.gguf"),
                      Contains("cannot open '/nonexistent/model.gguf'") &&
                          Contains("No such file or directory"));
  TempDir tmp;
  std::ofstream(tmp.file("empty.gguf")).close();
  REQUIRE_THROWS_WITH(File::open(tmp.file("empty.gguf")), Contains("is empty (not a GGUF file)"));
  REQUIRE_THROWS_WITH(File::open(tmp.dir.string()), Contains("is not a regular file"));
  // Parse errors from open() name the file.
  std::vector<uint8_t> b = small().bytes;
  b[1] = 'X';
  {
    std::ofstream out(tmp.file("bad.gguf"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  REQUIRE_THROWS_WITH(File::open(tmp.file("bad.gguf")),
                      Contains("gguf: " + tmp.file("bad.gguf") + ": bad magic 'GXUF'"));
}

TEST_CASE("getters: missing keys, wrong types and conversions", "[gguf][errors]") {
  auto f = File::open(model_path("stories260K.gguf"));
  REQUIRE_THROWS_WITH(f->get_uint("llama.no_such_key"),
                      Contains("missing required key 'llama.no_such_key'") &&
                          Contains("stories260K.gguf"));
  REQUIRE_THROWS_WITH(f->get_string("llama.embedding_length"),
                      Contains("key 'llama.embedding_length' has type u32, expected string"));
  REQUIRE_THROWS_WITH(f->get_uint("general.architecture"),
                      Contains("has type string, expected an unsigned integer"));
  REQUIRE_THROWS_WITH(f->get_array("general.name"), Contains("has type string, expected array"));
  REQUIRE_THROWS_WITH(f->get_bool("llama.block_count"), Contains("has type u32, expected bool"));
  REQUIRE_THROWS_WITH(f->get_float("tokenizer.ggml.tokens"),
                      Contains("has type array of string, expected a number"));
  REQUIRE_THROWS_WITH(f->tensor("blk.9.attn_q.weight"),
                      Contains("missing required tensor 'blk.9.attn_q.weight'"));
  CHECK(f->find("nope") == nullptr);
  CHECK(f->find_tensor("nope") == nullptr);
  CHECK(f->get_int("llama.block_count") == 5);
  CHECK(f->get_float("llama.block_count") == 5.0);
  CHECK(f->get_uint_or("llama.no_such_key", 77) == 77);
  CHECK(f->get_uint_or("llama.block_count", 77) == 5);
  CHECK(f->get_float_or("x.eps", 0.5) == 0.5);
  CHECK_FALSE(f->get_bool_or("x.flag", false));
  REQUIRE_THROWS_WITH(f->get_uint_or("general.name", 1), Contains("has type string"));

  auto s = parse(small().bytes);
  REQUIRE_THROWS_WITH(s->get_uint("k.i8"), Contains("key 'k.i8' is -100, expected a non-negative"));
  REQUIRE_THROWS_WITH(s->get_int("k.u64"), Contains("does not fit in a signed 64-bit integer"));
  CHECK(s->get_int("k.u32") == 4000000000LL);
  CHECK(s->get_float("k.i16") == -30000.0);
}
