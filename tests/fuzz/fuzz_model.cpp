// libFuzzer target: the model layer's checks on structurally valid GGUF
// files with fuzzed metadata values and tensor shapes (head counts, dims,
// rope keys, vocabulary sizes, tensor types).
// Input: byte 0 (low 3 bits) picks the base model (kBases); the rest
// is a list of 10-byte edits [op, index, value (8 bytes LE)] applied to the
// parsed file before it is written back (gguf::Writer) and loaded through the
// C API:
//   op 0  metadata[index] gets `value` (integers, floats as bits, bools), a
//         string from a dictionary, or an array cut to `value` elements;
//   op 1  tensor[index].ne[value >> 62] = low bits of value (small or huge);
//   op 2  tensor[index].n_dims = value % 5;
//   op 3  drop tensor[index];      op 4  drop metadata[index];
//   op 5  tensor[index].type = value % 40;
//   op 6  add or replace a hyper-parameter key (kKeys, "<arch>." prefixed) with `value`.
// A tensor whose new shape needs more bytes than it had reads zeros; a file
// is at most 64 MiB of tensors and general.alignment at most 256 (below).
//
// Properties: loading returns DEFKV_OK, DEFKV_ERR_FORMAT or
// DEFKV_ERR_INVALID_ARGUMENT (never a crash, a sanitizer report or an
// allocation beyond -malloc_limit_mb); a model that loads creates a context,
// evaluates a prompt and generates without DEFKV_ERR_INTERNAL.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"
#include "runtime/gguf/gguf.h"
#include "tests/fuzz/fuzz_util.h"

using namespace defkv;

namespace {

// Base models: the two stories260K files and one small model per architecture.
constexpr const char* kBases[8] = {"models/stories260K/stories260K.gguf", "models/stories260K/stories260K-f16.gguf",
                                   "testdata/archs/gemma2.gguf",          "testdata/archs/gemma3.gguf",
                                   "testdata/archs/phi3.gguf",            "testdata/archs/qwen2.gguf",
                                   "testdata/archs/qwen3.gguf",           "testdata/archs/llama-tied.gguf"};
std::vector<uint8_t> g_base[8];
std::unique_ptr<gguf::File> g_file[8];
std::vector<uint8_t> g_zeros(8u << 20);

// Hyper-parameter keys (after "<arch>.") and tokenizer / general keys.
const char* kKeys[] = {
    ".block_count", ".embedding_length", ".feed_forward_length", ".attention.head_count",
    ".attention.head_count_kv", ".rope.dimension_count", ".context_length", ".vocab_size",
    ".attention.key_length", ".attention.value_length", ".rope.freq_base",
    ".attention.layer_norm_rms_epsilon", ".attention.sliding_window", ".final_logit_softcapping",
    ".attn_logit_softcapping", ".rope.scaling.factor", ".expert_count", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id",
    "general.alignment"};
const char* kStrings[] = {"llama", "gpt2", "", "qwen2", "gemma2", "gemma3", "phi3", "llama-bpe", "default",
                          "\xff\xfe", "linear", "yarn", "none"};

void check(bool ok, const std::string& what) {
  if (!ok) fuzz::die("fuzz_model", what);
}

struct Tensor {
  gguf::TensorInfo info;
  bool ok = true;
};

void set_value(gguf::Value& v, uint64_t x) {
  using gguf::ValueType;
  switch (v.type) {
    case ValueType::f32: {
      float f;
      const uint32_t b = uint32_t(x);
      std::memcpy(&f, &b, 4);
      v.v = double(f);
      break;
    }
    case ValueType::f64: {
      double d;
      std::memcpy(&d, &x, 8);
      v.v = d;
      break;
    }
    case ValueType::boolean: v.v = bool(x & 1); break;
    case ValueType::string: v.v = std::string(kStrings[x % std::size(kStrings)]); break;
    case ValueType::array: {
      gguf::Array& a = std::get<gguf::Array>(v.v);
      const size_t n = size_t(x % (a.size() + 2));
      if (n <= a.ints.size()) a.ints.resize(n);
      if (n <= a.floats.size()) a.floats.resize(n);
      if (n <= a.strings.size()) a.strings.resize(n);
      if (n <= a.arrays.size()) a.arrays.resize(n);
      if (!a.ints.empty() && (x >> 32) % 3 == 0) a.ints[size_t(x >> 40) % a.ints.size()] = int64_t(x >> 48) - 1;
      break;
    }
    case ValueType::u64: v.v = x; break;
    case ValueType::i64: v.v = int64_t(x); break;
    case ValueType::u8: v.v = int64_t(x & 0xff); break;
    case ValueType::i8: v.v = int64_t(int8_t(x)); break;
    case ValueType::u16: v.v = int64_t(x & 0xffff); break;
    case ValueType::i16: v.v = int64_t(int16_t(x)); break;
    case ValueType::u32: v.v = int64_t(x & 0xffffffff); break;
    case ValueType::i32: v.v = int64_t(int32_t(x)); break;
  }
}

int on_token(int32_t, const char*, size_t, void*) { return 0; }

void run_model(const std::vector<uint8_t>& bytes) {
  defkv_model* m = nullptr;
  const defkv_status s = defkv_model_load_buffer(bytes.data(), bytes.size(), 0, &m);
  if (s != DEFKV_OK) {
    check(s == DEFKV_ERR_FORMAT || s == DEFKV_ERR_INVALID_ARGUMENT,
          std::string("load returned ") + defkv_status_name(s) + ": " + defkv_last_error(nullptr));
    return;
  }
  defkv_model_info info{};
  check(defkv_model_get_info(m, &info) == DEFKV_OK, "get_info failed");
  defkv_context_params p;
  defkv_context_params_init(&p);
  p.n_threads = 1;
  p.n_ctx = 16;
  p.temperature = 0;
  defkv_context* c = nullptr;
  defkv_status cs = defkv_context_create(m, &p, &c);
  if (cs == DEFKV_OK) {
    int32_t toks[16];
    size_t n = 0;
    defkv_status t = defkv_tokenize(m, "Once upon a time", -1, 1, 0, toks, 16, &n);
    check(t == DEFKV_OK || t == DEFKV_ERR_BUFFER_TOO_SMALL, std::string("tokenize: ") + defkv_last_error(nullptr));
    if (t == DEFKV_OK && n > 0) {
      defkv_status e = defkv_eval(c, toks, n, nullptr, nullptr);
      check(e != DEFKV_ERR_INTERNAL, std::string("eval: ") + defkv_last_error(c));
      if (e == DEFKV_OK) {
        defkv_status g = defkv_generate(c, 2, on_token, nullptr, nullptr);
        check(g != DEFKV_ERR_INTERNAL, std::string("generate: ") + defkv_last_error(c));
      }
    }
    defkv_context_free(c);
  } else {
    check(cs != DEFKV_ERR_INTERNAL, std::string("context_create: ") + defkv_last_error(nullptr));
  }
  defkv_model_free(m);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (int i = 0; i < 8; ++i) {
    g_base[i] = fuzz::read_file(fuzz::shared_dir() + "/" + kBases[i]);
    g_file[i] = gguf::File::from_buffer(g_base[i].data(), g_base[i].size());
  }
  auto edit = [](uint8_t op, uint8_t idx, uint64_t v) {
    std::string s(10, '\0');
    s[0] = char(op);
    s[1] = char(idx);
    std::memcpy(&s[2], &v, 8);
    return s;
  };
  for (int i = 0; i < 8; ++i) {
    fuzz::write_seed("base" + std::to_string(i), std::string(1, char(i)));
    for (uint8_t k = 0; k < std::size(kKeys); ++k)
      fuzz::write_seed("base" + std::to_string(i) + ".key" + std::to_string(k),
                       std::string(1, char(i)) + edit(6, k, 0) + edit(6, k, 3));
  }
  fuzz::write_seed("shape", std::string(1, '\0') + edit(1, 3, 48) + edit(2, 5, 1));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 400) return 0;
  const gguf::File& f = *g_file[data[0] & 7];
  const gguf::Value* arch_v = f.find("general.architecture");
  const std::string arch = arch_v ? std::get<std::string>(arch_v->v) : "llama";
  std::vector<std::pair<std::string, gguf::Value>> meta = f.metadata();
  std::vector<Tensor> tensors;
  for (const gguf::TensorInfo& t : f.tensors()) tensors.push_back({t, true});
  for (size_t off = 1; off + 10 <= size; off += 10) {
    const uint8_t op = data[off] % 7, idx = data[off + 1];
    uint64_t x;
    std::memcpy(&x, data + off + 2, 8);
    if (op == 0 && !meta.empty()) set_value(meta[idx % meta.size()].second, x);
    if (op == 4 && !meta.empty()) meta.erase(meta.begin() + idx % meta.size());
    if (op == 6) {
      const std::string suffix = kKeys[idx % std::size(kKeys)];
      const std::string key = suffix[0] == '.' ? arch + suffix : suffix;
      gguf::Value v;
      if (key.find("freq_base") != std::string::npos || key.find("epsilon") != std::string::npos ||
          key.find("factor") != std::string::npos || key.find("softcapping") != std::string::npos) {
        v.type = gguf::ValueType::f32;
      } else {
        v.type = gguf::ValueType::u32;
      }
      set_value(v, x);
      bool found = false;
      for (auto& kv : meta)
        if (kv.first == key) kv.second = v, found = true;
      if (!found) meta.emplace_back(key, v);
    }
    if (tensors.empty()) continue;
    Tensor& t = tensors[idx % tensors.size()];
    if (op == 1) {
      const unsigned d = unsigned(x >> 62);
      t.info.ne[d] = (x >> 61) & 1 ? (x & 0x1fffffffffffffffull) : (x & 0xfff);
      if (t.info.n_dims <= d) t.info.n_dims = d + 1;
    }
    if (op == 2) t.info.n_dims = uint32_t(x % 5);
    if (op == 3) tensors.erase(tensors.begin() + idx % tensors.size());
    if (op == 5) t.info.type = uint32_t(x % 40);
  }
  // general.alignment only pads the file: a large power of two makes every
  // tensor drag up to gigabytes of zeros through the writer and the loader,
  // which slows the harness without reaching another check; 1..256 exercise
  // the loader's alignment checks (the reader's own are fuzz_gguf's).
  for (auto& kv : meta) {
    if (kv.first != "general.alignment") continue;
    if (auto* u = std::get_if<uint64_t>(&kv.second.v); u != nullptr && *u > 256) *u = 256;
    if (auto* s = std::get_if<int64_t>(&kv.second.v); s != nullptr && *s > 256) *s = 256;
  }
  gguf::Writer w;
  for (const auto& kv : meta) w.set(kv.first, kv.second);
  std::vector<uint8_t> bytes;
  uint64_t total = 0;
  try {
    for (Tensor& t : tensors) {
      uint64_t ne[4] = {1, 1, 1, 1};
      for (uint32_t d = 0; d < t.info.n_dims && d < 4; ++d) ne[d] = t.info.ne[d];
      const uint64_t n = gguf::tensor_bytes(t.info.type, ne, t.info.name);
      const uint8_t* src = n <= t.info.size_bytes ? t.info.data : g_zeros.data();
      total += n;
      // Each tensor reads at most g_zeros, and all of them at most 8 times
      // that: the loader's shape checks do not need larger files.
      if (n > g_zeros.size() || total > 8 * g_zeros.size()) return 0;
      w.add_tensor(t.info.name, t.info.type, std::vector<uint64_t>(ne, ne + t.info.n_dims), src, n);
    }
    bytes = w.to_bytes();
  } catch (const gguf::Error&) {
    return 0;  // the writer refused the edited shapes (not the loader's business)
  }
  run_model(bytes);
  return 0;
}
