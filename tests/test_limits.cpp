// Resource limits through the C API: a context whose KV pool cannot fit in
// this machine's memory is refused with the bytes it needs, before anything
// is allocated (a pool written in full would get the process killed).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <regex>
#include <string>

#include "defkv.h"

namespace {

std::string model_file() {
  const char* s = std::getenv("DEFKV_SHARED");
  return std::string(s ? s : "../shared") + "/models/stories260K/stories260K.gguf";
}

}  // namespace

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
