// End-to-end tests of the defkv command line: it is a thin user of the
// library, so these check what only the CLI adds — flag handling, error
// reporting with exit codes (never a crash), and the quantize round trip
// against independent oracles (the numpy-made F16 file, the golden greedy
// tokens).
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"

namespace fs = std::filesystem;

namespace {

std::string env_or(const char* name, const char* def) {
  const char* v = std::getenv(name);
  return v && *v ? v : def;
}
std::string shared_dir() { return env_or("DEFKV_SHARED", "../shared"); }
std::string defkv_bin() { return env_or("DEFKV_BUILD", "build") + "/tools/defkv"; }
std::string stories() { return shared_dir() + "/models/stories260K/stories260K.gguf"; }

fs::path temp_dir() {
  static fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("defkv-test-cli-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Result {
  int exit_code = -1;   // -1: killed by a signal
  std::string out, err;
};

// Runs defkv with the given argument string (already shell-quoted).
Result run(const std::string& args) {
  fs::path out = temp_dir() / "stdout.txt", err = temp_dir() / "stderr.txt";
  std::string cmd = defkv_bin() + " " + args + " </dev/null >" + out.string() + " 2>" + err.string();
  int status = std::system(cmd.c_str());
  Result r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

std::vector<int32_t> greedy(const std::string& path, uint32_t n) {
  auto model = defkv::model::Model::load(path);
  defkv::engine::ContextParams cp;
  cp.n_threads = 1;
  defkv::engine::Context ctx(*model, cp);
  defkv::text::SamplerParams sp;
  sp.temperature = 0;
  defkv::text::Sampler sampler(sp);
  std::vector<int32_t> prompt{1};  // BOS
  return ctx.generate(prompt, n, sampler, /*eos=*/-1).tokens;
}

std::vector<float> logits_after_bos(const std::string& path) {
  auto model = defkv::model::Model::load(path);
  defkv::engine::ContextParams cp;
  cp.n_threads = 1;
  defkv::engine::Context ctx(*model, cp);
  std::vector<int32_t> bos{1};
  auto l = ctx.eval(bos);
  return {l.begin(), l.end()};
}

}  // namespace

TEST_CASE("cli: --help lists the subcommands and run's flags", "[cli]") {
  Result r = run("--help");
  CHECK(r.exit_code == 0);
  for (const char* sub : {"run", "quantize"}) CHECK_THAT(r.out, Catch::Contains(sub));
  Result rr = run("run --help");
  CHECK(rr.exit_code == 0);
  for (const char* flag : {"--kv-budget", "--kv-policy", "--kv-schedule", "--temp", "--seed", "--ctx"})
    CHECK_THAT(rr.out, Catch::Contains(flag));
}

TEST_CASE("cli: bad flags and values are clear errors, not crashes", "[cli]") {
  const std::string m = " -m " + stories();
  struct Case {
    std::string args;
    const char* needle;  // expected somewhere in stderr
  } cases[] = {
      {"run" + m + " --no-such-flag", "--no-such-flag"},
      {"run" + m + " --kv-policy nonsense", "nonsense"},
      {"run" + m + " --kv-type q4_0", "q4_0"},
      {"run" + m + " -n -5", "-5"},
      {"run" + m + " --kv-budget 0", "budget"},
      {"run" + m + " --kv-budget 10", "budget"},           // < window + sinks
      {"run" + m + " --kv-budget 64 --kv-ratio 0.2", "excludes"},
      {"run -m /nonexistent/model.gguf", "/nonexistent/model.gguf"},
      {"quantize " + stories() + " " + (temp_dir() / "x.gguf").string() + " q3_k", "q3_k"},
      {"quantize " + stories() + " " + stories() + " f16", "input file"},
      {"frobnicate", "unknown command 'frobnicate'"},
  };
  for (const auto& c : cases) {
    INFO("defkv " << c.args);
    Result r = run(c.args);
    CHECK(r.exit_code > 0);  // an error exit, not a signal
    std::string lower = r.err;
    for (auto& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    std::string needle = c.needle;
    for (auto& ch : needle) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    CHECK_THAT(lower, Catch::Contains(needle));
  }
}

TEST_CASE("cli: a truncated or non-GGUF model file is reported, never a crash", "[cli]") {
  std::string bytes = read_file(stories());
  REQUIRE(bytes.size() > 4096);
  for (size_t cut : {size_t(3), size_t(100), size_t(4096), bytes.size() / 2, bytes.size() - 1}) {
    fs::path p = temp_dir() / "truncated.gguf";
    std::ofstream(p, std::ios::binary).write(bytes.data(), std::streamsize(cut));
    INFO("cut at " << cut);
    Result r = run("run -m " + p.string() + " -n 4");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("error"));
    CHECK(r.out.empty());
  }
  fs::path text = temp_dir() / "not-a-model.gguf";
  std::ofstream(text) << "hello, this is not a GGUF file at all\n";
  Result r = run("run -m " + text.string());
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("magic"));
}

TEST_CASE("cli: a prompt longer than the context is refused with a message", "[cli]") {
  std::string words;
  for (int i = 0; i < 200; ++i) words += "the cat sat on the mat. ";
  fs::path p = temp_dir() / "long-prompt.txt";
  std::ofstream(p) << words;
  Result r = run("run -m " + stories() + " -f " + p.string() + " --ctx 64 -n 4");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("64"));
}

TEST_CASE("cli: run streams the golden greedy text of stories260K", "[cli]") {
  // golden_greedy.json's text begins like this (llama2.c doc/stories260K.md).
  Result r = run("run -m " + stories() + " -n 24 --temp 0 -t 1");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::StartsWith("Once upon a time, there was a little girl named Lily."));
  CHECK_THAT(r.err, Catch::Contains("tok/s"));
}

TEST_CASE("cli: quantize f16 reproduces the reference F16 file's tensors", "[cli][quantize]") {
  fs::path out = temp_dir() / "q-f16.gguf";
  Result r = run("quantize " + stories() + " " + out.string() + " f16");
  REQUIRE(r.exit_code == 0);
  auto ours = defkv::gguf::File::open(out.string());
  auto ref = defkv::gguf::File::open(shared_dir() + "/models/stories260K/stories260K-f16.gguf");
  REQUIRE(ours->tensors().size() == ref->tensors().size());
  for (const auto& t : ref->tensors()) {
    INFO(t.name);
    const auto* o = ours->find_tensor(t.name);
    REQUIRE(o != nullptr);
    CHECK(o->type == t.type);
    REQUIRE(o->size_bytes == t.size_bytes);
    CHECK(std::equal(t.data, t.data + t.size_bytes, o->data));
  }
  CHECK(ours->get_uint("general.file_type") == 1);
}

TEST_CASE("cli: a Q8_0 copy keeps the golden greedy tokens and close logits", "[cli][quantize]") {
  fs::path out = temp_dir() / "q-q8_0.gguf";
  Result r = run("quantize " + stories() + " " + out.string() + " q8_0");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.err, Catch::Contains("q8_0"));
  {
    auto f = defkv::gguf::File::open(out.string());
    CHECK(f->tensor("blk.0.attn_q.weight").type == uint32_t(defkv::gguf::TensorType::q8_0));
    CHECK(f->tensor("blk.0.attn_norm.weight").type == uint32_t(defkv::gguf::TensorType::f32));
  }
  // The issue asks for the F32 greedy tokens for at least the first 32.
  auto f32 = greedy(stories(), 32);
  auto q8 = greedy(out.string(), 32);
  CHECK(q8 == f32);
  // Q8_0 rounds each weight to within d/2 = amax/254 of its block; for this
  // model's logits (magnitude ~17) that moves them by well under 0.25.
  constexpr float kQ8LogitTolerance = 0.25f;
  auto a = logits_after_bos(stories());
  auto b = logits_after_bos(out.string());
  REQUIRE(a.size() == b.size());
  float max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, std::abs(a[i] - b[i]));
  INFO("max |logit diff| = " << max_diff);
  CHECK(max_diff < kQ8LogitTolerance);
  CHECK(max_diff > 0);  // it really is a different (quantised) model
}
