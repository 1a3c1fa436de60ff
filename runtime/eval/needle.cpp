// Needle-in-a-haystack retrieval: JSONL tasks, greedy answers, depth x length grid.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "runtime/eval/eval.h"
#include "runtime/text/sampler.h"

namespace defkv::eval {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& name, size_t line, const std::string& msg) {
  throw std::runtime_error(name + ":" + std::to_string(line) + ": " + msg);
}

// An integer field in [lo, hi]; values beyond int64 (JSON unsigned) are out
// of range too, never wrapped.
int64_t int_field(const json& o, const char* key, int64_t lo, int64_t hi, const char* what,
                  const std::string& name, size_t line) {
  const json& v = o[key];
  const bool fits = v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX));
  if (!fits || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
    fail(name, line, std::string("field \"") + key + "\" must be " + what);
  return v.get<int64_t>();
}

uint32_t positive_int(const json& o, const char* key, const std::string& name, size_t line) {
  if (!o.contains(key)) fail(name, line, std::string("missing field \"") + key + "\"");
  return uint32_t(int_field(o, key, 1, UINT32_MAX, "a positive integer (< 2^32)", name, line));
}

// The answer's digit tokens: the first run of tokens at or after the needle's
// first token whose pieces spell the answer's digits, one digit per token
// (this vocabulary has one token per digit); then the share of those
// positions still live over all (layer, KV head).
double needle_retention(const engine::Context& ctx, const text::Tokenizer& tok, const NeedleTask& task,
                        const std::vector<int32_t>& prompt, std::vector<double>& per_layer) {
  per_layer.clear();
  if (task.needle_token_pos < 0) return -1;
  std::string digits;
  for (char c : task.answer)
    if (c >= '0' && c <= '9') digits += c;
  if (digits.empty()) return -1;
  int64_t first = -1;
  for (size_t i = size_t(task.needle_token_pos); i + digits.size() <= prompt.size() && first < 0; ++i) {
    bool ok = true;
    for (size_t k = 0; k < digits.size() && ok; ++k) ok = tok.piece(prompt[i + k]) == std::string(1, digits[k]);
    if (ok) first = int64_t(i);
  }
  if (first < 0) return -1;
  const kv::KvCache& c = ctx.cache();
  const uint32_t L = c.config().n_layer, H = c.config().n_head_kv;
  uint64_t live = 0;
  std::vector<int32_t> pos;
  for (uint32_t l = 0; l < L; ++l) {
    uint64_t live_l = 0;
    for (uint32_t h = 0; h < H; ++h) {
      pos.resize(c.size(l, h));
      c.gather(l, h, nullptr, nullptr, pos.data(), nullptr);
      for (int32_t p : pos)
        if (p >= first && p < first + int64_t(digits.size())) ++live_l;
    }
    per_layer.push_back(double(live_l) / double(uint64_t(H) * digits.size()));
    live += live_l;
  }
  return double(live) / double(uint64_t(L) * H * digits.size());
}

}  // namespace

std::vector<NeedleTask> parse_needle_tasks(std::istream& in, const std::string& name) {
  std::vector<NeedleTask> tasks;
  std::string s;
  size_t line = 0;
  while (std::getline(in, s)) {
    ++line;
    if (s.find_first_not_of(" \t\r") == std::string::npos) continue;
    json o;
    try {
      o = json::parse(s);
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
      fail(name, line, std::string("malformed JSON (") + e.what() + ")");
    }
    if (!o.is_object()) fail(name, line, "expected a JSON object per line");
    NeedleTask t;
    t.line = line;
    if (!o.contains("prompt") || !o["prompt"].is_string()) fail(name, line, "missing string field \"prompt\"");
    if (!o.contains("answer") || !o["answer"].is_string() || o["answer"].get<std::string>().empty())
      fail(name, line, "missing non-empty string field \"answer\"");
    t.prompt = o["prompt"].get<std::string>();
    t.answer = o["answer"].get<std::string>();
    if (t.prompt.empty()) fail(name, line, "empty \"prompt\"");
    t.n_ctx_tokens = positive_int(o, "n_ctx_tokens", name, line);
    t.target_len = positive_int(o, "target_len", name, line);
    if (!o.contains("needle_depth") || !o["needle_depth"].is_number())
      fail(name, line, "missing number field \"needle_depth\"");
    t.needle_depth = o["needle_depth"].get<double>();
    if (!(t.needle_depth >= 0 && t.needle_depth <= 1)) fail(name, line, "\"needle_depth\" must be in [0, 1]");
    if (o.contains("n_needles"))
      t.n_needles = uint32_t(int_field(o, "n_needles", 0, UINT32_MAX, "an integer in [0, 2^32)", name, line));
    if (o.contains("needle_token_pos"))
      t.needle_token_pos = int_field(o, "needle_token_pos", -1, INT64_MAX, "an integer >= -1 (-1: unknown)", name, line);
    if (o.contains("seed")) t.seed = int_field(o, "seed", INT64_MIN, INT64_MAX, "a 64-bit integer", name, line);
    tasks.push_back(std::move(t));
  }
  if (tasks.empty()) throw std::runtime_error(name + ": no tasks (empty file?)");
  return tasks;
}

std::vector<NeedleTask> load_needle_tasks(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read task file '" + path + "'");
  return parse_needle_tasks(in, path);
}

NeedleOutcome run_needle_task(engine::Context& ctx, const text::Tokenizer& tok, const NeedleTask& task,
                              uint32_t n_predict) {
  NeedleOutcome out;
  std::vector<int32_t> prompt = tok.encode(task.prompt, true);
  if (tok.bos() >= 0 && (prompt.empty() || prompt.front() != tok.bos())) prompt.insert(prompt.begin(), tok.bos());
  out.prompt_tokens = uint32_t(prompt.size());
  ctx.reset();
  // Greedy decode by hand (argmax, no penalty) so the kept entries after the
  // prompt can be read between eval() and the first step().
  std::span<const float> logits = ctx.eval(prompt);
  out.kv_entries = ctx.cache().entries();
  out.needle_retained = needle_retention(ctx, tok, task, prompt, out.needle_retained_per_layer);
  text::StreamDecoder dec(tok, false);
  for (uint32_t i = 0; i < n_predict; ++i) {
    const int32_t t = text::argmax(logits);
    if (tok.is_eog(t)) break;
    out.output += dec.push(t);
    if (out.output.size() >= task.answer.size() && out.output.compare(0, task.answer.size(), task.answer) != 0)
      break;  // already wrong
    if (i + 1 == n_predict || ctx.n_past() >= ctx.n_ctx()) break;
    logits = ctx.step(t);
  }
  out.output += dec.flush();
  out.correct = out.output.compare(0, task.answer.size(), task.answer) == 0 && out.output.size() >= task.answer.size();
  return out;
}

uint32_t depth_bin(double depth, uint32_t n_bins) {
  if (n_bins == 0) throw std::invalid_argument("depth_bin: no bins");
  const double b = std::floor(std::clamp(depth, 0.0, 1.0) * n_bins);
  return std::min<uint32_t>(uint32_t(b), n_bins - 1);
}

NeedleGrid needle_grid(const std::vector<NeedleTask>& tasks, const std::vector<NeedleOutcome>& outcomes,
                       uint32_t n_depth_bins) {
  if (tasks.size() != outcomes.size()) throw std::invalid_argument("needle_grid: tasks and outcomes differ in size");
  NeedleGrid g;
  g.n_depth_bins = n_depth_bins;
  for (const NeedleTask& t : tasks) g.lengths.push_back(t.target_len);
  std::sort(g.lengths.begin(), g.lengths.end());
  g.lengths.erase(std::unique(g.lengths.begin(), g.lengths.end()), g.lengths.end());
  g.cells.assign(n_depth_bins, std::vector<NeedleCell>(g.lengths.size()));
  for (size_t i = 0; i < tasks.size(); ++i) {
    const size_t li = size_t(std::lower_bound(g.lengths.begin(), g.lengths.end(), tasks[i].target_len) - g.lengths.begin());
    NeedleCell& c = g.cells[depth_bin(tasks[i].needle_depth, n_depth_bins)][li];
    c.total += 1;
    c.correct += outcomes[i].correct ? 1 : 0;
    g.all.total += 1;
    g.all.correct += outcomes[i].correct ? 1 : 0;
  }
  return g;
}

std::vector<NeedleOutcome> run_needle(const model::Model& model, const text::Tokenizer& tok,
                                      const std::vector<NeedleTask>& tasks, const engine::ContextParams& params,
                                      uint32_t n_predict, const Progress& progress) {
  if (n_predict == 0) throw std::invalid_argument("needle: n_predict must be > 0");
  uint32_t longest = 0;
  for (const NeedleTask& t : tasks) {
    const size_t n = tok.encode(t.prompt, true).size() + 1;  // + BOS if the model does not add one
    longest = std::max<uint32_t>(longest, uint32_t(n));
  }
  engine::ContextParams p = params;
  p.n_ctx = std::max<uint32_t>(p.n_ctx, longest + n_predict);
  engine::Context ctx(model, p);
  std::vector<NeedleOutcome> out;
  out.reserve(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    out.push_back(run_needle_task(ctx, tok, tasks[i], n_predict));
    if (progress) progress(i + 1, tasks.size());
  }
  return out;
}

}  // namespace defkv::eval
