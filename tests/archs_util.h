// Shared helpers of the architecture tests: the vector folder
// (../shared/testdata/archs or $DEFKV_ARCH_VECTORS), its manifest, ids and
// logits files, and GGUF rewriting for bad-input cases.
#pragma once

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"

namespace archs_test {

inline std::string vectors_dir() {
  if (const char* e = std::getenv("DEFKV_ARCH_VECTORS"); e && *e) return e;
  const char* s = std::getenv("DEFKV_SHARED");
  return (s && *s ? std::string(s) : std::string("../shared")) + "/testdata/archs";
}

inline nlohmann::json manifest() {
  std::ifstream in(vectors_dir() + "/manifest.json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// The architecture cases (the quant-* cases belong to the weight-type tests).
inline std::vector<nlohmann::json> arch_cases() {
  std::vector<nlohmann::json> out;
  const nlohmann::json m = manifest();
  for (const auto& c : m["cases"])
    if (c["name"].get<std::string>().rfind("quant-", 0) != 0) out.push_back(c);
  REQUIRE(!out.empty());
  return out;
}

inline std::vector<int32_t> read_ids(const std::string& file) {
  std::ifstream in(vectors_dir() + "/" + file);
  REQUIRE(in.good());
  std::vector<int32_t> ids;
  for (int32_t x; in >> x;) ids.push_back(x);
  return ids;
}

struct Logits {
  int32_t n_tok = 0, n_vocab = 0;
  std::vector<int32_t> ids;
  std::vector<float> v;  // [n_tok, n_vocab]
};

inline Logits read_logits(const std::string& file) {
  std::ifstream in(vectors_dir() + "/" + file, std::ios::binary);
  REQUIRE(in.good());
  Logits l;
  in.read(reinterpret_cast<char*>(&l.n_tok), 4);
  in.read(reinterpret_cast<char*>(&l.n_vocab), 4);
  REQUIRE(l.n_tok > 0);
  REQUIRE(l.n_vocab > 0);
  l.ids.resize(size_t(l.n_tok));
  l.v.resize(size_t(l.n_tok) * size_t(l.n_vocab));
  in.read(reinterpret_cast<char*>(l.ids.data()), std::streamsize(l.ids.size() * 4));
  in.read(reinterpret_cast<char*>(l.v.data()), std::streamsize(l.v.size() * 4));
  REQUIRE(in.good());
  return l;
}

// A copy of a GGUF with edits, parsed from memory. `edit_kv` may change the
// metadata of the writer; `edit_tensor` sees each tensor (name, type, ne and
// bytes, all editable; return false to drop it); `extra` adds tensors.
struct Rewritten {
  std::vector<uint8_t> bytes;
  std::unique_ptr<defkv::gguf::File> file;
};
struct TensorEdit {
  std::string name;
  uint32_t type;
  std::vector<uint64_t> ne;
  std::vector<uint8_t> data;
};
inline Rewritten rewrite(const std::string& path, const std::function<void(defkv::gguf::Writer&)>& edit_kv,
                         const std::function<bool(TensorEdit&)>& edit_tensor = {},
                         std::vector<TensorEdit> extra = {}) {
  auto src = defkv::gguf::File::open(path);
  defkv::gguf::Writer w;
  w.copy_metadata(*src);
  if (edit_kv) edit_kv(w);
  std::vector<TensorEdit> ts;
  for (const auto& t : src->tensors()) {
    TensorEdit e{t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + std::max<uint32_t>(t.n_dims, 1)),
                 std::vector<uint8_t>(t.data, t.data + t.size_bytes)};
    if (edit_tensor && !edit_tensor(e)) continue;
    ts.push_back(std::move(e));
  }
  for (auto& e : extra) ts.push_back(std::move(e));
  for (const auto& e : ts) w.add_tensor(e.name, e.type, e.ne, e.data.data(), e.data.size());
  Rewritten r;
  r.bytes = w.to_bytes();
  r.file = defkv::gguf::File::from_buffer(r.bytes.data(), r.bytes.size());
  return r;
}

}  // namespace archs_test
