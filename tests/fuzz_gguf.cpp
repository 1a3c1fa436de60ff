// libFuzzer target for the GGUF reader (and writer). Not part of the default
// build; tests/fuzz_gguf.sh builds it with clang (-fsanitize=fuzzer,address,
// undefined) and runs it.
//
// Properties checked for every input:
//  - File::from_buffer either throws gguf::Error or succeeds (no crash, no
//    other exception, no sanitizer report, no unbounded allocation: the
//    script sets -malloc_limit_mb);
//  - on success every tensor's data range lies inside the buffer, and the
//    file survives Writer -> to_bytes -> from_buffer with the same metadata
//    and tensors.
//
// With DEFKV_FUZZ_WRITE_SEEDS=<dir>, LLVMFuzzerInitialize writes a few small
// valid GGUF files into <dir> to start the corpus.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"

using namespace defkv::gguf;

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_gguf: property violated: %s\n", what);
  std::abort();
}

bool same_array(const Array& a, const Array& b) {
  if (a.elem_type != b.elem_type || a.ints != b.ints || a.strings != b.strings ||
      a.floats.size() != b.floats.size() || a.arrays.size() != b.arrays.size())
    return false;
  for (size_t i = 0; i < a.floats.size(); ++i)
    if (std::memcmp(&a.floats[i], &b.floats[i], sizeof(double)) != 0) return false;
  for (size_t i = 0; i < a.arrays.size(); ++i)
    if (!same_array(a.arrays[i], b.arrays[i])) return false;
  return true;
}

bool same_value(const Value& a, const Value& b) {
  if (a.type != b.type || a.v.index() != b.v.index()) return false;
  if (auto* x = std::get_if<Array>(&a.v)) return same_array(*x, std::get<Array>(b.v));
  if (auto* x = std::get_if<double>(&a.v)) return std::memcmp(x, &std::get<double>(b.v), 8) == 0;
  if (auto* x = std::get_if<int64_t>(&a.v)) return *x == std::get<int64_t>(b.v);
  if (auto* x = std::get_if<uint64_t>(&a.v)) return *x == std::get<uint64_t>(b.v);
  if (auto* x = std::get_if<bool>(&a.v)) return *x == std::get<bool>(b.v);
  return std::get<std::string>(a.v) == std::get<std::string>(b.v);
}

Writer rewrite(const File& f) {
  Writer w;
  w.copy_metadata(f);
  for (const TensorInfo& t : f.tensors())
    w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), t.data,
                 t.size_bytes);
  return w;
}

void write_seeds(const std::string& dir) {
  std::vector<float> f32(64 * 3);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = 0.5f * static_cast<float>(i);
  std::vector<uint8_t> q8(2 * 34, 3);
  std::vector<int32_t> i32(32, 1);
  Writer a;
  a.set_string("general.architecture", "llama");
  a.set_u32("llama.block_count", 1);
  a.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  a.set("b", Value{ValueType::boolean, true});
  a.set("i", Value{ValueType::i64, int64_t{-3}});
  Array strs;
  strs.elem_type = ValueType::string;
  strs.strings = {"<unk>", "<s>", "a"};
  a.set("tokenizer.ggml.tokens", Value{ValueType::array, strs});
  Array nested;
  nested.elem_type = ValueType::array;
  Array inner;
  inner.elem_type = ValueType::u16;
  inner.ints = {1, 2};
  nested.arrays = {inner, inner};
  a.set("nested", Value{ValueType::array, nested});
  a.add_tensor("w", 0, {64, 3}, f32.data(), f32.size() * 4);
  a.add_tensor("q", 8, {64}, q8.data(), q8.size());
  a.add_tensor("m", 26, {8, 4}, i32.data(), i32.size() * 4);
  Writer b;
  b.set_u32("general.alignment", 8);
  b.add_tensor("x", 1, {4}, f32.data(), 8);
  Writer c;  // metadata only
  c.set_string("k", "v");
  int n = 0;
  for (const Writer* w : {&a, &b, &c}) {
    std::vector<uint8_t> bytes = w->to_bytes();
    std::string path = dir + "/seed" + std::to_string(n++) + ".gguf";
    if (FILE* fp = std::fopen(path.c_str(), "wb")) {
      std::fwrite(bytes.data(), 1, bytes.size(), fp);
      std::fclose(fp);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("DEFKV_FUZZ_WRITE_SEEDS")) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<File> f;
  try {
    f = File::from_buffer(data, size);
  } catch (const Error&) {
    return 0;  // rejected with a message: fine
  }
  // Touch everything the reader handed out.
  uint64_t padded = 1024;
  for (const TensorInfo& t : f->tensors()) {
    if (t.data < data || t.size_bytes > size || t.data + t.size_bytes > data + size)
      die("tensor data outside the buffer");
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < t.size_bytes; i += 64) sink = sink + t.data[i];
    if (t.size_bytes != 0) sink = sink + t.data[t.size_bytes - 1];
    padded += t.size_bytes + f->alignment() + t.name.size() + 64;
  }
  // The writer pads every tensor to the alignment; skip the round trip when
  // that would make the output large (not a reader problem).
  if (padded > (16u << 20)) return 0;
  try {
    std::vector<uint8_t> out = rewrite(*f).to_bytes();
    auto g = File::from_buffer(out.data(), out.size());
    if (g->metadata().size() != f->metadata().size()) die("metadata count changed");
    for (size_t i = 0; i < f->metadata().size(); ++i)
      if (g->metadata()[i].first != f->metadata()[i].first ||
          !same_value(g->metadata()[i].second, f->metadata()[i].second))
        die("metadata value changed");
    if (g->tensors().size() != f->tensors().size()) die("tensor count changed");
    for (size_t i = 0; i < f->tensors().size(); ++i) {
      const TensorInfo& x = f->tensors()[i];
      const TensorInfo& y = g->tensors()[i];
      if (x.name != y.name || x.type != y.type || x.n_dims != y.n_dims ||
          std::memcmp(x.ne, y.ne, sizeof(x.ne)) != 0 || x.size_bytes != y.size_bytes ||
          std::memcmp(x.data, y.data, x.size_bytes) != 0)
        die("tensor changed");
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz_gguf: a file the reader accepted failed to round-trip: %s\n",
                 e.what());
    std::abort();
  }
  return 0;
}
