// Quantised models against llama.cpp: every `quant-llama-*` case of
// ../shared/testdata/archs (or $DEFKV_ARCH_VECTORS), F32 KV cache, the whole
// sequence as one batch and token by token:
//  - the model as loaded (int8-activation products) against llama.cpp's own
//    logits of the quantised file, within tolerance.llamacpp_like (llama.cpp
//    also rounds activations to 8-bit blocks, so both differ from the exact
//    result by noise of the same size);
//  - an exact path, the weights dequantised by quant::to_f32 into an F32 copy
//    of the file and evaluated in f32, against `.exact.logits` (gguf-py's
//    dequantisation evaluated by llama.cpp) within tolerance.exact, which
//    catches any slip in a block layout by whole units.
// Types this runtime does not read (Q2_K, Q3_K) must fail to load with an
// error naming the tensor and type; they are reported as skipped.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "runtime/engine/context.h"
#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"
#include "tests/archs_util.h"

using namespace defkv;
namespace fs = std::filesystem;

namespace {

using archs_test::Logits;
using archs_test::read_ids;
using archs_test::read_logits;

struct Diff {
  double max_abs = 0, mean_abs = 0, top1 = 0;
  std::vector<int> top1_mismatch;  // positions
};

Diff compare(const std::vector<float>& got, const Logits& ref) {
  Diff d;
  const size_t V = size_t(ref.n_vocab), T = size_t(ref.n_tok);
  double sum = 0;
  size_t agree = 0;
  for (size_t t = 0; t < T; ++t) {
    const float* a = got.data() + t * V;
    const float* b = ref.v.data() + t * V;
    for (size_t i = 0; i < V; ++i) {
      const double e = std::fabs(double(a[i]) - double(b[i]));
      d.max_abs = std::max(d.max_abs, e);
      sum += e;
    }
    if (std::max_element(a, a + V) - a == std::max_element(b, b + V) - b) ++agree;
    else d.top1_mismatch.push_back(int(t));
  }
  d.mean_abs = sum / double(T * V);
  d.top1 = double(agree) / double(T);
  return d;
}

engine::ContextParams f32_cache(uint32_t n_ctx) {
  engine::ContextParams p;
  p.n_ctx = n_ctx;
  p.kv_type = quant::DType::f32;
  return p;
}

// All logits of `ids`: one batch, or one token per step.
std::vector<float> run(const model::Model& m, const std::vector<int32_t>& ids, bool token_by_token) {
  const size_t V = m.config().n_vocab;
  std::vector<float> out(ids.size() * V);
  engine::Context ctx(m, f32_cache(uint32_t(ids.size()) + 8));
  if (!token_by_token) {
    ctx.eval_all_logits(ids, out.data());
    return out;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    std::span<const float> l = i == 0 ? ctx.eval(std::span<const int32_t>(&ids[0], 1)) : ctx.step(ids[i]);
    std::copy(l.begin(), l.end(), out.begin() + std::ptrdiff_t(i * V));
  }
  return out;
}

// The file with every tensor converted to F32 by quant::to_f32.
std::string dequantised_copy(const std::string& path, const std::string& name) {
  auto f = gguf::File::open(path);
  gguf::Writer w;
  w.copy_metadata(*f);
  w.set_u32("general.file_type", 0);
  std::vector<std::vector<float>> keep;
  for (const gguf::TensorInfo& t : f->tensors()) {
    keep.emplace_back(t.n_elements);
    const size_t cols = t.ne[0], rows = t.n_elements / cols;
    const size_t rb = quant::row_bytes(quant::DType(t.type), cols);
    for (size_t r = 0; r < rows; ++r) quant::to_f32(quant::DType(t.type), t.data + r * rb, keep.back().data() + r * cols, cols);
    w.add_tensor(t.name, 0, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), keep.back().data(), t.n_elements * 4);
  }
  const fs::path dir = fs::temp_directory_path() / ("defkv_test_quant_models_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string out = (dir / (name + ".f32.gguf")).string();
  w.write(out);
  return out;
}

}  // namespace

TEST_CASE("quantised llama files match llama.cpp (int8 path) and the exact dequantisation", "[model][quant][archs]") {
  const std::string dir = archs_test::vectors_dir();
  std::ifstream mf(dir + "/manifest.json");
  REQUIRE(mf.good());
  const auto manifest = nlohmann::json::parse(mf);
  size_t n_readable = 0;
  for (const auto& c : manifest["cases"]) {
    const std::string name = c["name"];
    if (name.rfind("quant-llama-", 0) != 0 || !c.contains("quant")) continue;
    const std::string path = dir + "/" + c["file"].get<std::string>();
    bool readable = true;
    try {
      auto f = gguf::File::open(path);
      for (const gguf::TensorInfo& t : f->tensors()) readable = readable && quant::supported_weight_type(t.type);
    } catch (const gguf::Error&) {
      readable = false;  // the GGUF reader refuses types it cannot size (q2_K, q3_K)
    }
    n_readable += readable;
    DYNAMIC_SECTION(name) {
      if (!readable) {
        // Q2_K / Q3_K: not implemented; loading must say which tensor and type
        try {
          auto m = model::Model::load(path);
          FAIL("loaded " << name << " although it has types this runtime does not read");
        } catch (const std::exception& e) {
          const std::string msg = e.what();
          INFO(msg);
          CHECK(msg.find("unsupported type q") != std::string::npos);
          CHECK(msg.find("tensor '") != std::string::npos);
        }
        WARN("skipped " << name << ": has Q2_K / Q3_K tensors, which this runtime does not read");
        continue;
      }
      const auto ids = read_ids(c["ids"].get<std::string>());
      const Logits ref = read_logits(c["logits"].get<std::string>());
      const Logits exact = read_logits(c["logits_exact"].get<std::string>());
      REQUIRE(ref.ids == ids);
      const auto& tl = c["tolerance"]["llamacpp_like"];
      const auto& te = c["tolerance"]["exact"];
      std::vector<int> near_ties = te.value("near_tie_positions", std::vector<int>{});

      auto m = model::Model::load(path);
      REQUIRE(m->config().n_vocab == uint32_t(ref.n_vocab));
      for (bool tbt : {false, true}) {
        // llama.cpp's token-by-token logits where they differ from its batch
        const std::string tbt_file = name + ".tbt.logits";
        const Logits& want = tbt && fs::exists(dir + "/" + tbt_file) ? read_logits(tbt_file) : ref;
        const Diff d = compare(run(*m, ids, tbt), want);
        INFO(name << (tbt ? " token by token" : " one batch") << " vs llama.cpp: max " << d.max_abs << " mean "
                  << d.mean_abs << " top-1 " << d.top1);
        CHECK(d.max_abs <= tl["max_abs"].get<double>());
        CHECK(d.mean_abs <= tl["mean_abs"].get<double>());
        CHECK(d.top1 >= tl["top1_agreement"].get<double>());
        WARN(name.substr(12) << (tbt ? " tbt" : " batch") << " int8 vs llama.cpp: max " << d.max_abs << " mean "
                              << d.mean_abs << " top1 " << d.top1);
      }

      auto md = model::Model::load(dequantised_copy(path, name));
      for (bool tbt : {false, true}) {
        const Diff d = compare(run(*md, ids, tbt), exact);
        INFO(name << (tbt ? " token by token" : " one batch") << " exact path: max " << d.max_abs << " top-1 "
                  << d.top1);
        CHECK(d.max_abs <= te["max_abs"].get<double>());
        for (int p : d.top1_mismatch) CHECK(std::find(near_ties.begin(), near_ties.end(), p) != near_ties.end());
        WARN(name.substr(12) << (tbt ? " tbt" : " batch") << " exact vs .exact: max " << d.max_abs << " mean "
                              << d.mean_abs << " top1 " << d.top1);
      }
    }
  }
  CHECK(n_readable >= 8);  // Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_M, Q5_K_M, Q6_K
  std::error_code ec;
  fs::remove_all(fs::temp_directory_path() / ("defkv_test_quant_models_" + std::to_string(::getpid())), ec);
}
