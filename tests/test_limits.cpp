// Resource limits through the C API: a context whose KV pool cannot fit in
// this machine's memory, or a model whose weights cannot, is refused with the
// bytes it needs, before anything is allocated (a pool written in full, or
// the weights' re-laid-out copy, would get the process killed).
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "defkv.h"

namespace {

std::string model_file() {
  const char* s = std::getenv("DEFKV_SHARED");
  return std::string(s ? s : "../shared") + "/models/stories260K/stories260K.gguf";
}

// A GGUF v3 file (written byte by byte, so that no writer allocates the
// data) with one f32 tensor of `rows` x 1024 and general.architecture llama;
// its data section is a hole: the file is extended with resize_file.
void write_sparse_gguf(const std::string& path, uint64_t rows) {
  std::vector<uint8_t> b;
  auto put = [&](const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  };
  auto u32 = [&](uint32_t v) { put(&v, 4); };
  auto u64 = [&](uint64_t v) { put(&v, 8); };
  auto str = [&](const std::string& v) {
    u64(v.size());
    put(v.data(), v.size());
  };
  put("GGUF", 4);
  u32(3);  // version
  u64(1);  // tensors
  u64(1);  // keys
  str("general.architecture");
  u32(8);  // string
  str("llama");
  str("token_embd.weight");
  u32(2);  // dims
  u64(1024);
  u64(rows);
  u32(0);  // f32
  u64(0);  // offset in the data section
  while (b.size() % 32) b.push_back(0);  // the default alignment
  const uint64_t data_start = b.size();
  {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  }
  std::filesystem::resize_file(path, data_start + rows * 1024 * 4);
}

}  // namespace

TEST_CASE("limits: a model whose weights exceed memory is refused at load with both byte counts", "[api][limits]") {
  const uint64_t ram = uint64_t(::sysconf(_SC_PHYS_PAGES)) * uint64_t(::sysconf(_SC_PAGESIZE));
  REQUIRE(ram > 0);
  const uint64_t rows = (ram + (uint64_t(1) << 30)) / 4096;  // 1 GiB more than the RAM
  const std::string path =
      (std::filesystem::temp_directory_path() / ("defkv_sparse_" + std::to_string(::getpid()) + ".gguf")).string();
  write_sparse_gguf(path, rows);
  REQUIRE(std::filesystem::file_size(path) > ram);
  defkv_model* m = nullptr;
  const defkv_status s = defkv_model_load_file(path.c_str(), &m);
  std::filesystem::remove(path);
  CHECK(s == DEFKV_ERR_OUT_OF_MEMORY);
  CHECK(m == nullptr);
  const std::string msg = defkv_last_error(nullptr);
  INFO(msg);
  std::smatch mt;
  REQUIRE(std::regex_search(msg, mt, std::regex(R"(weights take ([0-9]+) bytes, more than the ([0-9]+) bytes of memory available \(of ([0-9]+) in all\))")));
  CHECK(std::stoull(mt[1]) == rows * 1024 * 4);
  CHECK(std::stoull(mt[2]) <= std::stoull(mt[3]));
  CHECK(std::stoull(mt[3]) <= ram);
}

TEST_CASE("limits: a context larger than memory fails with the bytes it needs", "[api][limits]") {
  defkv_model* m = nullptr;
  REQUIRE(defkv_model_load_file(model_file().c_str(), &m) == DEFKV_OK);
  defkv_model_info mi{};
  REQUIRE(defkv_model_get_info(m, &mi) == DEFKV_OK);
  defkv_context_params p;
  defkv_context_params_init(&p);
  p.n_ctx = 2000000000u;  // f16 keys and values: 2e9 * 2 * layers * kv heads * head_dim * 2 bytes, ~1.4 TB here
  defkv_context* c = nullptr;
  CHECK(defkv_context_create(m, &p, &c) == DEFKV_ERR_OUT_OF_MEMORY);
  CHECK(c == nullptr);
  const std::string msg = defkv_last_error(nullptr);
  INFO(msg);
  std::smatch mt;
  REQUIRE(std::regex_search(msg, mt, std::regex(R"(needs ([0-9]+) bytes .*KV pool of ([0-9]+) bytes.*more than the ([0-9]+) bytes)")));
  const uint64_t need = std::stoull(mt[1]), kv = std::stoull(mt[2]), have = std::stoull(mt[3]);
  const uint64_t lower = uint64_t(p.n_ctx) * 2 * mi.n_layer * mi.n_head_kv * mi.head_dim * 2;
  CHECK(kv >= lower);
  CHECK(kv < lower + lower / 2);  // rows, positions and page padding only
  CHECK(need >= kv);
  CHECK(need > have);
  CHECK_THAT(msg, Catch::Contains("n_ctx = 2000000000"));
  // A context that fits is created as usual.
  p.n_ctx = 4096;
  REQUIRE(defkv_context_create(m, &p, &c) == DEFKV_OK);
  defkv_context_free(c);
  defkv_model_free(m);
}

TEST_CASE("limits: a prefill chunk larger than n_ctx is clamped to it, not allocated", "[api][limits]") {
  defkv_model* m = nullptr;
  REQUIRE(defkv_model_load_file(model_file().c_str(), &m) == DEFKV_OK);
  defkv_context_params p;
  defkv_context_params_init(&p);
  p.n_ctx = 256;
  p.prefill_chunk_tokens = 4294967295u;  // scratch for 2^32 tokens: the allocation failed (or took the memory)
  defkv_context* c = nullptr;
  REQUIRE(defkv_context_create(m, &p, &c) == DEFKV_OK);
  defkv_context_info info{};
  info.struct_size = sizeof info;
  REQUIRE(defkv_context_get_info(c, &info) == DEFKV_OK);
  CHECK(info.prefill_chunk_tokens == 256);
  std::vector<int32_t> prompt(200, 1);
  CHECK(defkv_eval(c, prompt.data(), prompt.size(), nullptr, nullptr) == DEFKV_OK);
  defkv_context_free(c);
  defkv_model_free(m);
}
