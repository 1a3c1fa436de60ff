// End-to-end tests of the defkv command line: it is a thin user of the
// library, so these check what only the CLI adds — flag handling, error
// reporting with exit codes (never a crash), and the quantize round trip
// against independent oracles (the numpy-made F16 file, the golden greedy
// tokens).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/engine/generate.h"
#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::string env_or(const char* name, const char* def) {
  const char* v = std::getenv(name);
  return v && *v ? v : def;
}
std::string shared_dir() { return env_or("DEFKV_SHARED", "../shared"); }
std::string defkv_bin() { return env_or("DEFKV_BUILD", "build") + "/tools/defkv"; }
std::string stories() { return shared_dir() + "/models/stories260K/stories260K.gguf"; }

// One short invocation of each command that takes the KV flags (run, bench, eval).
std::vector<std::string> kv_flag_commands() {
  const std::string text = shared_dir() + "/models/data/tinystories_sample.txt";
  return {"run -m " + stories() + " -p hi -n 2", "bench -m " + stories() + " -p 8 -n 2 -r 1",
          "eval ppl -f " + text + " -m " + stories() + " --max-windows 1"};
}

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

// One JSON object per non-empty line (bench --json).
std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::istringstream lines(text);
  std::vector<nlohmann::json> v;
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
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
  return defkv::engine::generate(ctx, prompt, n, sampler, /*eos=*/-1).tokens;
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

TEST_CASE("cli: quantize to llama.cpp's low-bit types reproduces llama-quantize's files", "[cli][quantize]") {
  // ../shared/testdata/archs: quant-llama-F32.gguf quantised by llama-quantize
  // (default mixes, no imatrix) to each type: same per-tensor types, same bytes.
  const std::string archs = shared_dir() + "/testdata/archs/";
  const std::pair<const char*, const char*> types[] = {{"q4_0", "Q4_0"}, {"q4_1", "Q4_1"},   {"q5_0", "Q5_0"},
                                                       {"q5_1", "Q5_1"}, {"q4_k_m", "Q4_K_M"}, {"q5_k_m", "Q5_K_M"},
                                                       {"Q6_K", "Q6_K"}, {"q8_0", "Q8_0"}};
  for (const auto& [arg, file] : types) {
    DYNAMIC_SECTION(arg) {
      fs::path out = temp_dir() / (std::string("q-") + arg + ".gguf");
      Result r = run("quantize " + archs + "quant-llama-F32.gguf " + out.string() + " " + arg);
      INFO(r.err);
      REQUIRE(r.exit_code == 0);
      auto ours = defkv::gguf::File::open(out.string());
      auto ref = defkv::gguf::File::open(archs + "quant-llama-" + file + ".gguf");
      REQUIRE(ours->tensors().size() == ref->tensors().size());
      for (const auto& t : ref->tensors()) {
        INFO(t.name);
        const auto* o = ours->find_tensor(t.name);
        REQUIRE(o != nullptr);
        CHECK(std::string(defkv::gguf::tensor_type_name(o->type)) == defkv::gguf::tensor_type_name(t.type));
        REQUIRE(o->size_bytes == t.size_bytes);
        CHECK(std::equal(t.data, t.data + t.size_bytes, o->data));
      }
      CHECK(ours->get_uint("general.file_type") == ref->get_uint("general.file_type"));
    }
  }
}

TEST_CASE("cli: quantize refuses a NaN or Inf weight for a quantised type, naming tensor, row and index",
          "[cli][quantize]") {
  // The block quantisers convert x / scale to int, undefined for NaN; no block
  // format represents NaN or Inf. F16 represents them: that conversion goes on.
  auto src = defkv::gguf::File::open(stories());
  const std::string bad_name = "blk.1.ffn_up.weight";
  const auto& bad = src->tensor(bad_name);
  REQUIRE(bad.type == uint32_t(defkv::gguf::TensorType::f32));
  const size_t cols = bad.ne[0], row = 5, col = 37;
  for (float v : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    std::vector<std::vector<uint8_t>> copies;
    defkv::gguf::Writer w;
    w.copy_metadata(*src);
    for (const auto& t : src->tensors()) {
      copies.emplace_back(t.data, t.data + t.size_bytes);
      if (t.name == bad_name) std::memcpy(copies.back().data() + 4 * (row * cols + col), &v, 4);
      w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), copies.back().data(),
                   copies.back().size());
    }
    const fs::path in = temp_dir() / "nonfinite-weight.gguf", out = temp_dir() / "nonfinite-out.gguf";
    w.write(in.string());
    const std::string what = std::isnan(v) ? "(nan)" : "(inf)";
    for (const char* type : {"q8_0", "q4_0", "q5_1", "q4_k_m"}) {
      INFO(type << " " << v);
      Result r = run("quantize " + in.string() + " " + out.string() + " " + type);
      CHECK(r.exit_code == 1);
      CHECK_THAT(r.err, Catch::Contains("'" + bad_name + "' row 5 holds a non-finite value") && Catch::Contains(what) &&
                            Catch::Contains("at index 37"));
    }
    Result r = run("quantize " + in.string() + " " + out.string() + " f16");
    CHECK(r.exit_code == 0);
  }
}

TEST_CASE("cli: quantize falls back like llama-quantize when rows are not whole K blocks", "[cli][quantize]") {
  // stories260K: 64-wide rows, so no K type fits: Q4_K -> Q5_0, Q6_K (output) -> Q8_0
  fs::path out = temp_dir() / "q-stories-q4km.gguf";
  Result r = run("quantize " + stories() + " " + out.string() + " q4_k_m");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  auto f = defkv::gguf::File::open(out.string());
  CHECK(f->tensor("blk.0.attn_q.weight").type == uint32_t(defkv::gguf::TensorType::q5_0));
  CHECK(f->tensor("output.weight").type == uint32_t(defkv::gguf::TensorType::q8_0));
  CHECK(f->get_uint("general.file_type") == 15);
  CHECK(greedy(out.string(), 8).size() == 8);  // and it loads and runs
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

TEST_CASE("cli: run's report: stop reason, KV bytes, entries kept per layer within the budget", "[cli][run]") {
  const std::string prompt = shared_dir() + "/models/data/tinystories_sample.txt";
  Result r = run("run -m " + stories() + " -f " + prompt + " -n 40 -t 1 --ctx 4096 --kv-budget 40 --kv-window 16");
  REQUIRE(r.exit_code == 0);
  INFO(r.err);
  CHECK_THAT(r.err, Catch::Contains("stop n_predict"));
  CHECK_THAT(r.err, Catch::Contains("policy defensivekv, schedule bounded, budget 40 tok/head"));
  std::smatch m;
  REQUIRE(std::regex_search(r.err, m, std::regex("peak RSS ([0-9.]+) MiB")));
  CHECK(std::stod(m[1]) > 1.0);
  REQUIRE(std::regex_search(r.err, m, std::regex("prompt ([0-9]+) tok")));
  const long prompt_tokens = std::stol(m[1]);
  CHECK(prompt_tokens > 300);  // the sample is long: eviction had work to do
  REQUIRE(std::regex_search(r.err, m, std::regex("evictions ([0-9]+)")));
  CHECK(std::stol(m[1]) > 0);
  REQUIRE(std::regex_search(r.err, m, std::regex("entries kept per layer: ([0-9 ]+)")));
  std::istringstream layers(m[1].str());
  // stories260K: 5 layers x 4 KV heads. Bounded: at most budget + one chunk
  // (64 = max(64, 2 x window)) entries per head after the prompt, + the decode slack.
  int n_layers = 0;
  for (long n; layers >> n; ++n_layers) {
    CHECK(n > 0);
    CHECK(n <= (40 + 64) * 4);
  }
  CHECK(n_layers == 5);
  REQUIRE(std::regex_search(r.err, m, std::regex("KV bytes in use ([0-9]+)")));
  CHECK(std::stol(m[1]) > 0);

  // Without a budget every position stays: entries per layer = positions x KV heads.
  Result f = run("run -m " + stories() + " -p 'Once upon a time' -n 10 --temp 0 -t 1");
  REQUIRE(f.exit_code == 0);
  CHECK_THAT(f.err, Catch::Contains("policy full, schedule -, budget 0 tok/head"));
  REQUIRE(std::regex_search(f.err, m, std::regex("prompt ([0-9]+) tok")));
  const long n_prompt = std::stol(m[1]);
  const long kept = (n_prompt + 9) * 4;  // the last sampled token is not evaluated
  CHECK_THAT(f.err, Catch::Contains("entries kept per layer: " + std::to_string(kept) + " " + std::to_string(kept)));
}

TEST_CASE("cli: Ctrl-C cancels a running generation; the report still comes", "[cli][run]") {
  const fs::path out = temp_dir() / "sigint.out", err = temp_dir() / "sigint.err";
  const std::string bin = defkv_bin(), model = stories();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int fe = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fo, 1);
    ::dup2(fe, 2);
    // Far more tokens than it can make before the signal, in a bounded cache.
    ::execl(bin.c_str(), bin.c_str(), "run", "-m", model.c_str(), "-n", "1000000", "--ctx", "1000000",
            "--kv-budget", "64", "-t", "1", (char*)nullptr);
    ::_exit(127);
  }
  // Wait until it is generating (text on stdout), then interrupt it.
  const auto t0 = std::chrono::steady_clock::now();
  auto out_bytes = [&] {
    std::error_code ec;
    const auto n = fs::file_size(out, ec);
    return ec ? 0 : n;
  };
  while (out_bytes() < 200 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(::kill(pid, SIGINT) == 0);
  int status = 0;
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (done == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("defkv run did not stop after SIGINT");
  }
  const std::string e = read_file(err);
  INFO(e);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  CHECK_THAT(e, Catch::Contains("stop cancelled"));
  std::smatch m;
  REQUIRE(std::regex_search(e, m, std::regex("decode ([0-9]+) tok")));
  CHECK(std::stol(m[1]) > 10);
  CHECK(std::stol(m[1]) < 1000000);
  CHECK(read_file(out).back() == '\n');
}

TEST_CASE("cli: bench reports eviction share, peak RSS and depth; JSON and table agree", "[cli][bench]") {
  const std::string args = "bench -m " + stories() + " -p 64 -n 16 -d 40 -r 2 -t 1 --kv-budget 40 --kv-window 16";
  Result j = run(args + " --json");
  REQUIRE(j.exit_code == 0);
  INFO(j.out << j.err);
  const std::vector<nlohmann::json> tests = json_lines(j.out);
  REQUIRE(tests.size() == 2);
  CHECK(tests[0]["test"] == "pp64");
  CHECK(tests[1]["test"] == "tg16 @ d40");
  for (const auto& t : tests) {
    INFO(t.dump());
    CHECK(t["budget"] == true);
    CHECK(t["peak_rss_mib"].get<double>() > 1.0);
    CHECK(t["logits_stable"] == true);
    const double total = t["seconds_mean"], ev = t["evict_seconds_mean"];
    // The JSON rounds seconds to 1e-6 and the fraction to 1e-4: with
    // sub-millisecond timings the seconds' rounding alone moves ev / total by
    // up to (0.5e-6 / ev + 0.5e-6 / total) * ev / total.
    const double rounding = 0.5e-4 + (ev > 0 ? (0.5e-6 / ev + 0.5e-6 / total) * ev / total : 0) + 1e-9;
    CHECK(t["evict_fraction"].get<double>() == Approx(ev / total).margin(rounding));
    CHECK(ev <= total);
    // Bounded schedule: at most budget + one chunk (64) per head, 5 layers x 4 heads.
    CHECK(t["kv_entries_end"].get<uint64_t>() <= uint64_t(40 + 64) * 20);
    CHECK(t.contains("breakdown_s"));
  }
  // The default policy (defensivekv) weights by value norms: the prefill's
  // W_o norm pass is estimated in the breakdown; decoding defers it into the
  // (measured) eviction rounds. snapkv computes none.
  CHECK(tests[0]["breakdown_s"]["value_norms"].get<double>() > 0);
  CHECK(tests[1]["breakdown_s"]["value_norms"].get<double>() == 0);
  {
    Result s = run("bench -m " + stories() + " -p 64 -n 0 -r 1 -t 1 --kv-budget 40 --kv-window 16 --kv-policy snapkv --json");
    REQUIRE(s.exit_code == 0);
    const auto js = nlohmann::json::parse(s.out);
    CHECK(js["breakdown_s"]["value_norms"].get<double>() == 0);
    Result h = run("bench -m " + stories() + " -p 64 -n 0 -r 1 -t 1 --kv-budget 40 --kv-window 16");
    REQUIRE(h.exit_code == 0);
    CHECK_THAT(h.out, Catch::Contains("value norms"));
  }
  // pp64 in one 64-token chunk exceeds the 40-token budget: one round at least.
  CHECK(tests[0]["evict_rounds"].get<int>() >= 1);
  CHECK(tests[0]["evict_seconds_mean"].get<double>() > 0);
  // The table shows the same tests with the eviction share and peak RSS columns,
  // and the same logits (same seed, same kernels).
  Result t = run(args + " --no-breakdown");
  REQUIRE(t.exit_code == 0);
  CHECK_THAT(t.out, Catch::Contains("| evict % | peak RSS |"));
  CHECK_THAT(t.out, Catch::Contains("eviction (measured)"));
  CHECK_THAT(t.out, Catch::Contains("of the prefill time"));
  CHECK_THAT(t.out, Catch::Contains("hash " + tests[0]["logits_hash"].get<std::string>()));
  CHECK_THAT(t.out, Catch::Contains("hash " + tests[1]["logits_hash"].get<std::string>()));
  CHECK_THAT(t.out, Catch::Contains("peak RSS"));
  CHECK(t.out.find("breakdown") == std::string::npos);
  // --kv-mem takes sizes with units in bench too (and rejects nonsense).
  Result m = run("bench -m " + stories() + " -p 64 -n 4 -r 1 -t 1 --no-breakdown --json --kv-mem 256K --kv-window 16");
  CHECK(m.exit_code == 0);
  Result bad = run("bench -m " + stories() + " -p 64 --kv-mem 12X");
  CHECK(bad.exit_code > 0);
  CHECK_THAT(bad.err, Catch::Contains("unit"));
}

TEST_CASE("cli: bench --vs-full runs tg on a full-cache context beside the budgeted one", "[cli][bench]") {
  const std::string args = "bench -m " + stories() + " -p 0 -n 8 -d 120 -r 2 -t 1 --kv-budget 40 --kv-window 16 --vs-full";
  Result j = run(args + " --json --no-breakdown");
  REQUIRE(j.exit_code == 0);
  INFO(j.out << j.err);
  const std::vector<nlohmann::json> tests = json_lines(j.out);
  REQUIRE(tests.size() == 2);
  CHECK(tests[0]["test"] == "tg8 @ d120");
  CHECK(tests[0]["budget"] == true);
  CHECK(tests[1]["test"] == "tg8 @ d120 full cache");
  CHECK(tests[1]["budget"] == false);
  CHECK(tests[1]["kv"] == "full cache");
  for (const auto& t : tests) CHECK(t["logits_stable"] == true);
  // the full cache holds every position: 1 + 120 + 8 per (layer, head), 5 layers x 4 heads
  CHECK(tests[1]["kv_entries_end"].get<uint64_t>() == uint64_t(1 + 120 + 8) * 20);
  CHECK(tests[0]["kv_entries_end"].get<uint64_t>() <= uint64_t(40 + 64) * 20);
  CHECK(tests[1]["evict_rounds"].get<int>() == 0);
  Result t = run(args + " --no-breakdown");
  REQUIRE(t.exit_code == 0);
  CHECK_THAT(t.out, Catch::Contains("tg with the budget / full cache, same run:"));
  // without a budget (or without tg) there is nothing to compare
  Result bad = run("bench -m " + stories() + " -p 0 -n 4 -r 1 --vs-full");
  CHECK(bad.exit_code != 0);
  CHECK_THAT(bad.err, Catch::Contains("--vs-full"));
  Result bad2 = run("bench -m " + stories() + " -p 8 -n 0 -r 1 --kv-budget 40 --kv-window 16 --vs-full");
  CHECK(bad2.exit_code != 0);
}

TEST_CASE("cli: run, bench and eval share the KV flags: same help, --kv-mem sizes everywhere", "[cli][kvflags]") {
  const char* flags[] = {"--kv-budget", "--kv-ratio",  "--kv-mem", "--kv-type", "--kv-policy",
                         "--kv-schedule", "--kv-window", "--kv-pool", "--kv-sinks", "--chunk"};
  // One phrase of each flag's explanation (tools/kv_flags.cpp).
  const char* phrases[] = {"least --kv-window + --kv-sinks", "0.2 keeps 20%", "ceiling on the KV pool's memory, e.g. 256M",
                           "f16, f32 or q8_0", "needs a budget unless 'full'", "When eviction runs",
                           "Observation window W", "Score pooling kernel", "the first tokens, always kept",
                           "Prefill chunk in tokens"};
  for (const char* cmd : {"run", "bench", "eval ppl", "eval kld", "eval needle"}) {
    INFO(cmd);
    Result h = run(std::string(cmd) + " --help");
    REQUIRE(h.exit_code == 0);
    for (const char* f : flags) CHECK_THAT(h.out, Catch::Contains(f));
    for (const char* p : phrases) CHECK_THAT(h.out, Catch::Contains(p));
  }
  Result sw = run("eval sweep --help");  // sweep lists policies and budgets itself
  REQUIRE(sw.exit_code == 0);
  CHECK_THAT(sw.out, Catch::Contains("--kv-window"));
  CHECK(sw.out.find("--kv-budget") == std::string::npos);

  const std::string text = shared_dir() + "/models/data/tinystories_sample.txt";
  Result e = run("eval ppl -m " + stories() + " -f " + text + " --ctx 128 --max-windows 1 --kv-mem 400K --kv-window 16 --json");
  REQUIRE(e.exit_code == 0);
  const nlohmann::json j = nlohmann::json::parse(e.out);
  CHECK(j["budget"]["kv_mem_bytes"] == 400 * 1024);
  for (const std::string& cmd : kv_flag_commands()) {
    INFO(cmd);
    Result bad = run(cmd + " --kv-mem 12X");
    CHECK(bad.exit_code > 0);
    CHECK_THAT(bad.err, Catch::Contains("unknown unit 'X'"));
    Result pol = run(cmd + " --kv-policy snapkv");
    CHECK(pol.exit_code > 0);
    CHECK_THAT(pol.err, Catch::Contains("needs a KV budget"));
  }
}

// Entries per layer after the prompt, as run reports them.
std::vector<long> kept_per_layer(const std::string& report) {
  std::smatch m;
  std::vector<long> v;
  if (!std::regex_search(report, m, std::regex("entries kept per layer: ([0-9 ]+)"))) return v;
  std::istringstream in(m[1].str());
  for (long n; in >> n;) v.push_back(n);
  return v;
}

TEST_CASE("cli: run's bounded prefill keeps what the engine keeps", "[cli][kvflags]") {
  // Oracle: the engine configured directly with the same options on the same
  // prompt (BOS + the sample text); run -n 0 evaluates the prompt only.
  const std::string file = shared_dir() + "/models/data/tinystories_sample.txt";
  auto model = defkv::model::Model::load(stories());
  auto tok = defkv::text::Tokenizer::from_gguf(model->file());
  const std::vector<int32_t> prompt = tok->encode(read_file(file), true);
  defkv::engine::ContextParams cp;
  cp.n_threads = 1;
  cp.n_ctx = 4096;
  cp.budget_tokens = 40;
  cp.evict.window = 16;
  cp.evict.policy = defkv::evict::Policy::layer_defensivekv;
  defkv::engine::Context ctx(*model, cp);
  ctx.eval(prompt);
  std::vector<long> kept;
  for (uint32_t l = 0; l < 5; ++l) {
    long n = 0;
    for (uint32_t h = 0; h < 4; ++h) n += ctx.cache().size(l, h);
    kept.push_back(n);
  }
  Result r = run("run -m " + stories() + " -f " + file +
                 " -n 0 -t 1 --ctx 4096 --kv-budget 40 --kv-window 16 --kv-policy layer-defensivekv");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.err, Catch::Contains("policy layer-defensivekv, schedule bounded"));
  CHECK(kept_per_layer(r.err) == kept);
}

TEST_CASE("cli: the removed --kv-interim-policy is refused in run, bench and eval", "[cli][kvflags]") {
  for (const std::string& cmd : kv_flag_commands()) {
    INFO(cmd);
    Result h = run(cmd + " --help");
    CHECK(h.exit_code == 0);
    CHECK(h.out.find("--kv-interim-policy") == std::string::npos);
    Result u = run(cmd + " --kv-budget 40 --kv-interim-policy criticalkv");
    CHECK(u.exit_code > 0);
    CHECK_THAT(u.err, Catch::Contains("--kv-interim-policy"));
  }
}

TEST_CASE("cli: --kv-sinks 0 with a budget works in run and bench; --kv-mem is an upper bound", "[cli][kvflags]") {
  // Streaming with 0 sinks keeps the newest budget tokens only: the same
  // entries per layer as the engine's definition, budget x KV heads.
  Result r = run("run -m " + stories() + " -f " + shared_dir() +
                 "/models/data/tinystories_sample.txt -n 0 -t 1 --ctx 4096 --kv-budget 16 --kv-window 16 "
                 "--kv-sinks 0 --kv-policy streaming");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(kept_per_layer(r.err) == std::vector<long>(5, 16 * 4));
  Result b = run("bench -m " + stories() + " -p 64 -n 4 -r 1 -t 1 --no-breakdown --kv-budget 16 --kv-window 16 --kv-sinks 0");
  CHECK(b.exit_code == 0);
  // The reported failure: q8_0 rows with aux floats under 300K.
  Result m = run("run -m " + stories() + " -p 'Once upon a time' -n 16 -t 1 --kv-mem 300K --kv-type q8_0");
  CHECK(m.exit_code == 0);
  CHECK(m.err.find("exceeds kv_mem_bytes") == std::string::npos);
}

TEST_CASE("cli: tokenize prints llama.cpp's ids for each flag setting, and the pieces", "[cli][tokenize]") {
  const std::string dir = shared_dir() + "/testdata/tokenizers";
  // Oracle: the .extra.json rows (llama.cpp's ids). Flags: --no-bos = no
  // add_special, --special = parse_special.
  for (const char* vocab : {"llama-bpe", "qwen2"}) {
    const std::string gguf = dir + "/ggml-vocab-" + vocab + ".gguf";
    const auto doc = nlohmann::json::parse(read_file(gguf + ".extra.json"));
    for (int idx : {0, 53, 73, 76}) {
      const auto& c = doc.at("cases").at(size_t(idx));
      const fs::path in = temp_dir() / "tokenize_input.txt";
      std::ofstream(in, std::ios::binary) << c.at("text").get<std::string>();
      for (auto [flags, key] : {std::pair{"--no-bos", "plain"}, std::pair{"--no-bos --special", "special"},
                                std::pair{"--special", "add_special"}}) {
        INFO(vocab << " case " << idx << " " << flags);
        Result r = run("tokenize -m " + gguf + " -f " + in.string() + " --ids " + flags);
        REQUIRE(r.exit_code == 0);
        std::string want = "[";
        for (const auto& id : c.at(key)) want += (want.size() > 1 ? ", " : "") + std::to_string(id.get<int>());
        CHECK(r.out == want + "]\n");
      }
    }
  }
  // Without --ids: llama-tokenize's "%6d -> 'piece'" lines, control tokens as text.
  Result r = run("tokenize -m " + dir + "/ggml-vocab-llama-bpe.gguf -p 'Hello world<|eot_id|>' --special");
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "128000 -> '<|begin_of_text|>'\n  9906 -> 'Hello'\n  1917 -> ' world'\n128009 -> '<|eot_id|>'\n");
  // SentencePiece vocabularies take the same path.
  r = run("tokenize -m " + shared_dir() + "/models/tokenizers/ggml-vocab-llama-spm.gguf -p 'Hello world' --ids");
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "[1, 15043, 3186]\n");
}

TEST_CASE("cli: tokenize errors: no text, two texts, an unsupported vocabulary", "[cli][tokenize]") {
  const std::string gguf = shared_dir() + "/testdata/tokenizers/ggml-vocab-qwen2.gguf";
  Result r = run("tokenize -m " + gguf);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.err, Catch::Contains("-p TEXT or -f FILE"));
  r = run("tokenize -m " + gguf + " -p a -f " + gguf);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.err, Catch::Contains("excludes"));
  r = run("tokenize -m " + (temp_dir() / "missing.gguf").string() + " -p a");
  CHECK(r.exit_code != 0);

  defkv::gguf::Writer w;
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "default");
  defkv::gguf::Array toks;
  toks.elem_type = defkv::gguf::ValueType::string;
  toks.strings = {"a", "b"};
  w.set("tokenizer.ggml.tokens", {defkv::gguf::ValueType::array, toks});
  const fs::path bad = temp_dir() / "bad_pre.gguf";
  w.write(bad.string());
  r = run("tokenize -m " + bad.string() + " -p ab");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("defkv: error: tokenizer: unsupported pre-tokenizer tokenizer.ggml.pre = 'default'"));
}

TEST_CASE("cli: run tokenizes byte-level BPE prompts through the C API, BOS as the GGUF says", "[cli][tokenize]") {
  // Tiny random-weight llama models carrying the Llama 3 and Qwen3
  // vocabularies. Oracle: llama.cpp's add_special ids (.extra.json), whose
  // count run reports; the echo is the prompt text again.
  const std::string dir = shared_dir() + "/testdata/tokenizers";
  for (auto [vocab, n_vocab] : {std::pair{"llama-bpe", 128256}, std::pair{"qwen2", 151936}}) {
    const std::string gguf = dir + "/ggml-vocab-" + vocab + ".gguf";
    const fs::path model = temp_dir() / (std::string(vocab) + "-tiny.gguf");
    Result s = run("synth " + model.string() + " --dim 32 --layers 1 --heads 2 --ffn 64 --tied --type f32 -q -t 1" +
                   " --vocab " + std::to_string(n_vocab) + " --vocab-from " + gguf);
    REQUIRE(s.exit_code == 0);
    const auto doc = nlohmann::json::parse(read_file(gguf + ".extra.json"));
    for (int idx : {0, 27}) {
      const auto& c = doc.at("cases").at(size_t(idx));
      const std::string text = c.at("text").get<std::string>();
      const fs::path in = temp_dir() / "run_prompt.txt";
      std::ofstream(in, std::ios::binary) << text;
      INFO(vocab << " case " << idx);
      Result r = run("run -m " + model.string() + " -f " + in.string() + " -n 1 --temp 0 -t 1");
      REQUIRE(r.exit_code == 0);
      CHECK(r.out.rfind(text, 0) == 0);
      CHECK_THAT(r.err, Catch::Contains("prompt " + std::to_string(c.at("add_special").size()) + " tok"));
    }
  }
}

TEST_CASE("cli: every numeric flag of every command refuses overflow, wrap-around and non-finite values",
          "[cli][limits]") {
  // The flags and their types come from each command's --help (CLI11 prints
  // INT, UINT or FLOAT after the name), so a flag added later is covered too.
  const std::string m = " -m " + stories();
  const std::string text = shared_dir() + "/models/data/tinystories_sample.txt";
  const std::string tasks = shared_dir() + "/models/needle/example_tasks.jsonl";
  const std::pair<std::string, std::string> commands[] = {
      {"run", m + " -p hi"},
      {"chat", m},
      {"bench", m},
      {"synth", " " + (temp_dir() / "s.gguf").string()},
      {"eval ppl", m + " -f " + text},
      {"eval kld", m + " -f " + text},
      {"eval needle", m + " --tasks " + tasks},
      {"eval sweep", m + " -f " + text},
  };
  const std::regex flag_re(R"((--[a-z0-9-]+) (UINT|INT|FLOAT)\b)");
  size_t n_flags = 0;
  for (const auto& [cmd, rest] : commands) {
    const Result help = run(cmd + " --help");
    REQUIRE(help.exit_code == 0);
    for (std::sregex_iterator it(help.out.begin(), help.out.end(), flag_re), end; it != end; ++it) {
      const std::string flag = (*it)[1], type = (*it)[2];
      std::vector<std::string> bad;
      if (type == "FLOAT") bad = {"nan", "inf", "-inf", "1e999"};
      if (type == "UINT") bad = {"-1", "18446744073709551616"};
      if (type == "INT") bad = {"9223372036854775808", "-9223372036854775809"};
      if (flag == "--threads") bad.push_back("100000");
      ++n_flags;
      for (const std::string& v : bad) {
        const std::string args = cmd + rest + " " + flag + " " + v;
        INFO("defkv " << args);
        const Result r = run(args);
        CHECK(r.exit_code > 0);
        CHECK_THAT(r.err, Catch::Contains(flag));
      }
    }
  }
  CHECK(n_flags > 80);  // the regex still matches CLI11's help format
  // Counts stored in a signed int must not go negative and wrap on the way to
  // the C API (chat: -n -1 once asked for 4294967295 tokens per reply).
  for (const char* flag : {"-n", "-c"}) {
    const Result r = run("chat" + m + " " + flag + " -1");
    CHECK(r.exit_code > 0);
    CHECK_THAT(r.err, Catch::Contains("must be >= 0"));
  }
}

TEST_CASE("cli: synth and bench refuse sizes out of range before writing or allocating, naming the flag",
          "[cli][limits]") {
  const fs::path out = temp_dir() / "range.gguf";
  const std::string synth = "synth -q --synthetic-vocab --type f32 --heads 4 ";
  const std::pair<std::string, std::string> cases[] = {
      {"--dim 64 --layers 2 --ffn 128 --vocab 300 --rope-base -1", "--rope-base: must be > 0 (got -1)"},
      {"--dim 64 --layers 2 --ffn 128 --vocab 300 --rms-eps 0", "--rms-eps: must be > 0 (got 0)"},
      {"--dim 64 --layers 0 --ffn 128 --vocab 300", "--layers: must be > 0 (got 0)"},
      // Each took minutes (a tensor list of 4e10 entries, or a 6.6 TB file
      // written until the disk filled) or ended in std::bad_alloc.
      {"--dim 64 --layers 4294967295 --ffn 128 --vocab 300", "layers (4294967295) must be at most 65536"},
      {"--dim 64 --layers 2 --ffn 128 --vocab 4294967295", "vocab (4294967295) must be at most 16777216"},
      {"--dim 64 --layers 2 --ffn 4294967295 --vocab 300", "bytes free in"},
      {"--dim 65536 --layers 60000 --ffn 65536 --vocab 300 --head-dim 65536", "parameters, more than 2^48"},
  };
  for (const auto& [args, want] : cases) {
    const Result r = run(synth + args + " " + out.string());
    INFO("defkv " << synth << args << "\n" << r.err);
    CHECK(r.exit_code > 0);
    CHECK_THAT(r.err, Catch::Contains(want));
    CHECK(!fs::exists(out));
    CHECK(!fs::exists(out.string() + ".partial"));
  }
  // A huge --depth-bins must not reach the allocator; --prefix below -1 is not "-1".
  const std::string m = " -m " + stories();
  const std::pair<std::string, std::string> eval_cases[] = {
      {"eval needle" + m + " --tasks " + shared_dir() + "/models/needle/example_tasks.jsonl --depth-bins 2147483647",
       "--depth-bins: Value 2147483647 not in range 1 to 1000"},
      {"eval ppl" + m + " -f " + shared_dir() + "/models/data/tinystories_sample.txt --prefix -5",
       "--prefix: Value -5 not in range -1"},
  };
  for (const auto& [args, want] : eval_cases) {
    const Result r = run(args);
    INFO("defkv " << args << "\n" << r.err);
    CHECK(r.exit_code > 0);
    CHECK_THAT(r.err, Catch::Contains(want));
  }
  // A negative size became a huge size_t (undefined) and segfaulted.
  for (const char* v : {"-1", "0", "1e300"}) {
    const Result r = run(std::string("bench --membw --membw-mib ") + v);
    INFO(r.err);
    CHECK(r.exit_code > 0);
    CHECK_THAT(r.err, Catch::Contains("--membw-mib"));
  }
}

TEST_CASE("cli: a context larger than memory is refused with the bytes it needs", "[cli][limits]") {
  for (const char* cmd : {"run -p hi --ctx 2000000000", "chat -c 2000000000"}) {
    const Result r = run(std::string(cmd) + " -m " + stories());
    INFO("defkv " << cmd << "\n" << r.err);
    CHECK(r.exit_code == 1);
    CHECK(std::regex_search(r.err, std::regex(R"(needs [0-9]+ bytes .*more than the [0-9]+ bytes of memory)")));
  }
}
