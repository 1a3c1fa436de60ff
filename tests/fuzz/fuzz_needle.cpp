// libFuzzer target: the eval task JSONL parser (parse_needle_tasks, the
// reader behind `defkv eval needle --tasks`).
//
// Properties:
//  - it returns tasks or throws std::runtime_error (any other exception or
//    a crash is a finding);
//  - every task it returns holds exactly the values its JSON line has (no
//    integer silently wrapped or truncated), with answer and prompt
//    non-empty, n_ctx_tokens and target_len positive, needle_depth in [0, 1].
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/eval/eval.h"
#include "tests/fuzz/fuzz_util.h"

using namespace defkv;
using json = nlohmann::json;

namespace {

void check(bool ok, const std::string& what) {
  if (!ok) fuzz::die("fuzz_needle", what);
}

// The i-th line (1-based) of the input.
std::string line_of(const std::string& s, size_t n) {
  std::istringstream in(s);
  std::string l;
  for (size_t i = 0; i < n && std::getline(in, l); ++i) {}
  return l;
}

bool same_int(const json& v, int64_t got) {
  if (v.is_number_unsigned()) return got >= 0 && v.get<uint64_t>() == uint64_t(got);
  return v.is_number_integer() && v.get<int64_t>() == got;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (!fuzz::writing_seeds()) return 0;
  const std::string dir = fuzz::shared_dir() + "/models/needle/";
  for (const char* f : {"example_tasks.jsonl", "eval_tasks.jsonl"}) {
    const std::vector<uint8_t> b = fuzz::read_file(dir + f);
    std::istringstream in(std::string(b.begin(), b.end()));
    std::string l, two;
    for (int i = 0; i < 4 && std::getline(in, l); ++i) {
      fuzz::write_seed(std::string(f) + "." + std::to_string(i), l + "\n");
      two += l + "\n";
    }
    fuzz::write_seed(std::string(f) + ".lines", two);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string s(reinterpret_cast<const char*>(data), size);
  std::istringstream in(s);
  std::vector<eval::NeedleTask> tasks;
  try {
    tasks = eval::parse_needle_tasks(in, "fuzz");
  } catch (const std::runtime_error&) {
    return 0;
  }
  check(!tasks.empty(), "no tasks but no error");
  for (const eval::NeedleTask& t : tasks) {
    const json o = json::parse(line_of(s, t.line));
    check(o["prompt"].get<std::string>() == t.prompt && !t.prompt.empty(), "prompt");
    check(o["answer"].get<std::string>() == t.answer && !t.answer.empty(), "answer");
    check(t.n_ctx_tokens > 0 && same_int(o["n_ctx_tokens"], t.n_ctx_tokens), "n_ctx_tokens");
    check(t.target_len > 0 && same_int(o["target_len"], t.target_len), "target_len");
    check(t.needle_depth >= 0 && t.needle_depth <= 1 && o["needle_depth"].get<double>() == t.needle_depth,
          "needle_depth");
    if (o.contains("n_needles")) check(same_int(o["n_needles"], t.n_needles), "n_needles wrapped");
    if (o.contains("seed")) check(same_int(o["seed"], t.seed), "seed wrapped");
    if (o.contains("needle_token_pos")) check(same_int(o["needle_token_pos"], t.needle_token_pos), "needle_token_pos wrapped");
  }
  return 0;
}
