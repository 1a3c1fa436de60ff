// Quality evaluation: metrics against formulas, the kld window protocol
// against an independent reimplementation, perplexity against a direct
// computation from Context::eval_all_logits, KL(full || full) = 0, needle
// retrieval against the llama.cpp per-task results, and every error case.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/eval/eval.h"
#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"

using namespace defkv;

namespace {

std::string shared_dir() {
  const char* s = std::getenv("DEFKV_SHARED");
  return s ? s : "../shared";
}
std::string stories_path() { return shared_dir() + "/models/stories260K/stories260K.gguf"; }
std::string sample_path() { return shared_dir() + "/models/data/tinystories_sample.txt"; }
std::string needle_dir() { return shared_dir() + "/models/needle"; }

// Independent reference: log-softmax in long double.
long double ref_log_softmax(const float* x, size_t n, size_t i) {
  long double m = x[0];
  for (size_t k = 1; k < n; ++k) m = std::max<long double>(m, x[k]);
  long double s = 0;
  for (size_t k = 0; k < n; ++k) s += std::exp((long double)x[k] - m);
  return (long double)x[i] - m - std::log(s);
}

struct Stories {
  std::unique_ptr<model::Model> model;
  std::unique_ptr<text::Tokenizer> tok;
  std::vector<int32_t> text;
  static Stories& get() {
    static Stories s = [] {
      Stories r;
      r.model = model::Model::load(stories_path());
      r.tok = text::Tokenizer::from_gguf(r.model->file());
      r.text = eval::tokenize_text(*r.tok, eval::read_text_file(sample_path()));
      return r;
    }();
    return s;
  }
};

engine::ContextParams full_params() {
  engine::ContextParams p;
  p.kv_type = quant::DType::f32;
  p.n_threads = 1;  // tiny models; a busy 2-core machine
  return p;
}

std::string temp_path(const std::string& name) {
  const char* b = std::getenv("DEFKV_BUILD");
  return std::string(b ? b : "/tmp") + "/test_eval_" + name;
}

}  // namespace

TEST_CASE("nll and KL match their formulas", "[eval][metrics]") {
  const std::vector<float> p = {1.0f, 2.0f, 0.5f, -1.0f};
  const std::vector<float> q = {0.0f, 2.5f, 1.5f, -3.0f};
  for (size_t t = 0; t < p.size(); ++t)
    CHECK(eval::nll(p, int32_t(t)) == Approx(double(-ref_log_softmax(p.data(), p.size(), t))).epsilon(1e-12));
  long double kl = 0;
  for (size_t v = 0; v < p.size(); ++v) {
    const long double lp = ref_log_softmax(p.data(), p.size(), v), lq = ref_log_softmax(q.data(), q.size(), v);
    kl += std::exp(lp) * (lp - lq);
  }
  CHECK(eval::kl_divergence(p, q) == Approx(double(kl)).epsilon(1e-12));
  CHECK(eval::kl_divergence(p, q) > 0);
  CHECK(eval::kl_divergence(p, p) == 0.0);
  // Shift invariance of softmax: adding a constant changes nothing.
  std::vector<float> p2 = p;
  for (float& x : p2) x += 3.0f;
  CHECK(eval::kl_divergence(p, p2) == Approx(0.0).margin(1e-12));
  CHECK_THROWS_AS(eval::nll(p, 4), std::invalid_argument);
  CHECK_THROWS_AS(eval::nll(p, -1), std::invalid_argument);
  CHECK_THROWS_AS(eval::kl_divergence(p, std::vector<float>{1.0f}), std::invalid_argument);
}

TEST_CASE("quantile interpolates like numpy", "[eval][metrics]") {
  // numpy.quantile([1, 2, 3, 4], 0.99) = 3.97; q=0.5 -> 2.5; q=0 -> 1; q=1 -> 4
  CHECK(eval::quantile({4, 1, 3, 2}, 0.99) == Approx(3.97));
  CHECK(eval::quantile({4, 1, 3, 2}, 0.5) == Approx(2.5));
  CHECK(eval::quantile({4, 1, 3, 2}, 0.0) == 1);
  CHECK(eval::quantile({4, 1, 3, 2}, 1.0) == 4);
  CHECK(eval::quantile({7}, 0.99) == 7);
  CHECK_THROWS_AS(eval::quantile({}, 0.5), std::invalid_argument);
}

TEST_CASE("kld window arithmetic equals an independent reimplementation", "[eval][windows]") {
  const int32_t bos = 1;
  for (size_t N : {10u, 11u, 12u, 37u, 100u})
    for (uint32_t T : {1u, 3u, 8u})
      for (uint32_t C : {1u, 2u, 4u})
        for (uint32_t S : {1u, 3u, 5u, 64u}) {
          std::vector<int32_t> text(N);
          for (size_t i = 0; i < N; ++i) text[i] = int32_t(100 + i);
          // Reference: walk offsets while the window's T+C-1 text tokens fit.
          std::vector<std::vector<int32_t>> want;
          for (size_t off = 0; off + T + C - 1 <= N; off += S) {
            std::vector<int32_t> w = {bos};
            for (size_t k = 0; k < T + C - 1; ++k) w.push_back(text[off + k]);
            want.push_back(w);
          }
          eval::WindowSpec spec{T, C, S, 0};
          INFO("N=" << N << " T=" << T << " C=" << C << " S=" << S);
          if (want.empty()) {
            CHECK_THROWS_AS(eval::count_windows(N, spec), std::invalid_argument);
            continue;
          }
          REQUIRE(eval::count_windows(N, spec) == want.size());
          std::vector<int32_t> got;
          for (size_t i = 0; i < want.size(); ++i) {
            eval::build_window(text, bos, spec, i, got);
            CHECK(got == want[i]);
            CHECK(got.size() == T + C);
          }
          CHECK_THROWS(eval::build_window(text, bos, spec, want.size(), got));
          spec.max_windows = 1;
          CHECK(eval::count_windows(N, spec) == 1);
        }
  CHECK_THROWS_AS(eval::count_windows(100, eval::WindowSpec{0, 4, 1, 0}), std::invalid_argument);
  CHECK_THROWS_AS(eval::count_windows(100, eval::WindowSpec{4, 0, 1, 0}), std::invalid_argument);
  CHECK_THROWS_AS(eval::count_windows(100, eval::WindowSpec{4, 4, 0, 0}), std::invalid_argument);
}

TEST_CASE("text shorter than one window gives a clear error", "[eval][errors]") {
  Stories& s = Stories::get();
  const size_t N = s.text.size();
  eval::WindowSpec spec{uint32_t(N), 2, 1, 0};  // needs N + 1 text tokens
  try {
    eval::count_windows(N, spec);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    CHECK(m.find("has " + std::to_string(N) + " tokens") != std::string::npos);
    CHECK(m.find("needs " + std::to_string(N + 1)) != std::string::npos);
  }
  CHECK_THROWS_AS(eval::kld_reference(*s.model, s.text, s.tok->bos(), spec, full_params()), std::invalid_argument);
  // ppl: nothing left to score after the prefix.
  eval::PplSpec ps{64, 10, 0};
  const std::vector<int32_t> short_text(s.text.begin(), s.text.begin() + 10);
  CHECK_THROWS_WITH(eval::perplexity(*s.model, short_text, s.tok->bos(), ps, full_params()),
                    Catch::Contains("too short"));
  CHECK_THROWS_AS(eval::ppl_windows(100, eval::PplSpec{8, 7, 0}), std::invalid_argument);
  CHECK_THROWS_AS(eval::ppl_windows(100, eval::PplSpec{1, 0, 0}), std::invalid_argument);
}

TEST_CASE("empty and missing text files give clear errors", "[eval][errors]") {
  const std::string p = temp_path("empty.txt");
  { std::ofstream f(p, std::ios::trunc); }
  CHECK_THROWS_WITH(eval::read_text_file(p), Catch::Contains("is empty"));
  CHECK_THROWS_WITH(eval::read_text_file(p + ".does-not-exist"), Catch::Contains("cannot read"));
  CHECK_THROWS_WITH(eval::load_needle_tasks(p), Catch::Contains("no tasks"));
  CHECK_THROWS_WITH(eval::load_needle_tasks(p + ".does-not-exist"), Catch::Contains("cannot read"));
}

TEST_CASE("malformed needle JSONL is reported with its line", "[eval][errors][needle]") {
  const std::string good =
      R"({"prompt": "a b c", "answer": " 12345", "n_ctx_tokens": 5, "target_len": 256, "needle_depth": 0.5})";
  auto parse = [](const std::string& s) {
    std::istringstream in(s);
    return eval::parse_needle_tasks(in, "t.jsonl");
  };
  CHECK(parse(good + "\n\n" + good + "\n").size() == 2);
  CHECK(parse(good).at(0).needle_depth == 0.5);
  CHECK_THROWS_WITH(parse(good + "\n{\"prompt\": \"x\", "), Catch::Contains("t.jsonl:2: malformed JSON"));
  CHECK_THROWS_WITH(parse("[1, 2]"), Catch::Contains("t.jsonl:1: expected a JSON object"));
  CHECK_THROWS_WITH(parse(R"({"answer": " 1", "n_ctx_tokens": 5, "target_len": 8, "needle_depth": 0})"),
                    Catch::Contains("t.jsonl:1: missing string field \"prompt\""));
  CHECK_THROWS_WITH(parse(R"({"prompt": "p", "answer": "", "n_ctx_tokens": 5, "target_len": 8, "needle_depth": 0})"),
                    Catch::Contains("\"answer\""));
  CHECK_THROWS_WITH(parse(R"({"prompt": "p", "answer": " 1", "n_ctx_tokens": "5", "target_len": 8, "needle_depth": 0})"),
                    Catch::Contains("\"n_ctx_tokens\" must be a positive integer"));
  CHECK_THROWS_WITH(parse(R"({"prompt": "p", "answer": " 1", "n_ctx_tokens": 5, "needle_depth": 0})"),
                    Catch::Contains("missing field \"target_len\""));
  CHECK_THROWS_WITH(parse(R"({"prompt": "p", "answer": " 1", "n_ctx_tokens": 5, "target_len": 8, "needle_depth": 1.5})"),
                    Catch::Contains("must be in [0, 1]"));
  CHECK_THROWS_WITH(parse("  \n\n"), Catch::Contains("no tasks"));
  // Found by tests/fuzz/fuzz_needle: a number beyond double's range made the
  // JSON library throw out_of_range, which escaped as an unexpected exception.
  CHECK_THROWS_WITH(parse(good + "\n-7e7777"), Catch::Contains("t.jsonl:2: malformed JSON"));
  CHECK_THROWS_WITH(parse(R"({"prompt": "p", "answer": " 1", "n_ctx_tokens": 5, "target_len": 8, "needle_depth": 1e400})"),
                    Catch::Contains("t.jsonl:1: malformed JSON"));
  // Integers are range-checked, never wrapped.
  const std::string head = R"({"prompt": "p", "answer": " 1", "n_ctx_tokens": 5, "target_len": 8, "needle_depth": 0, )";
  CHECK_THROWS_WITH(parse(head + R"("n_needles": -1})"), Catch::Contains("\"n_needles\" must be an integer in [0, 2^32)"));
  CHECK_THROWS_WITH(parse(head + R"("n_needles": 4294967296})"), Catch::Contains("\"n_needles\""));
  CHECK_THROWS_WITH(parse(head + R"("seed": 18446744073709551615})"), Catch::Contains("\"seed\" must be a 64-bit integer"));
  CHECK_THROWS_WITH(parse(head + R"("needle_token_pos": -2})"), Catch::Contains("\"needle_token_pos\""));
  CHECK_THROWS_WITH(parse(R"({"prompt": "p", "answer": " 1", "n_ctx_tokens": 4294967296, "target_len": 8, "needle_depth": 0})"),
                    Catch::Contains("\"n_ctx_tokens\" must be a positive integer"));
  const eval::NeedleTask t = parse(head + R"("n_needles": 4294967295, "seed": -9223372036854775808, "needle_token_pos": -1})").at(0);
  CHECK(t.n_needles == 4294967295u);
  CHECK(t.seed == INT64_MIN);
  CHECK(t.needle_token_pos == -1);
}

TEST_CASE("the shared needle task file parses", "[eval][needle]") {
  const auto tasks = eval::load_needle_tasks(needle_dir() + "/eval_tasks.jsonl");
  CHECK(tasks.size() == 160);
  CHECK(tasks[0].answer == " 02694");
  CHECK(tasks[0].target_len == 256);
  CHECK(tasks[0].line == 1);
  CHECK(tasks[0].needle_token_pos == 138);
}

TEST_CASE("perplexity of the full cache equals exp(mean NLL) of eval_all_logits", "[eval][ppl]") {
  Stories& s = Stories::get();
  const model::Model& m = *s.model;
  const uint32_t V = m.config().n_vocab;
  for (uint32_t P : {0u, 40u}) {
    eval::PplSpec spec{128, P, 3};
    const eval::PplResult r = eval::perplexity(m, s.text, s.tok->bos(), spec, full_params());
    REQUIRE(r.windows == 3);
    // Direct: non-overlapping windows of BOS + 127 text tokens, one full
    // eval_all_logits each, targets after the prefix.
    engine::ContextParams cp = full_params();
    cp.n_ctx = 128;
    engine::Context ctx(m, cp);
    std::vector<float> logits(size_t(128) * V);
    long double sum = 0;
    uint64_t n = 0;
    for (size_t k = 0; k < 3; ++k) {
      std::vector<int32_t> w = {s.tok->bos()};
      w.insert(w.end(), s.text.begin() + ptrdiff_t(k * 127), s.text.begin() + ptrdiff_t(k * 127 + 127));
      ctx.reset();
      ctx.eval_all_logits(w, logits.data());
      for (size_t t = P + 1; t < w.size(); ++t) {
        sum -= ref_log_softmax(logits.data() + (t - 1) * V, V, size_t(w[t]));
        ++n;
      }
    }
    INFO("prefix " << P);
    CHECK(r.targets == n);
    const double direct = double(std::exp(sum / n));
    // P = 0 runs the very same forward calls: agreement to round-off of the
    // reductions. P > 0 splits the batch at P (different chunking).
    CHECK(r.ppl == Approx(direct).epsilon(P == 0 ? 1e-9 : 1e-5));
    CHECK(r.ppl > 1.0);
    CHECK(r.ppl < double(V));
  }
}

TEST_CASE("oneshot perplexity needs a prefix", "[eval][ppl][errors]") {
  Stories& s = Stories::get();
  engine::ContextParams cp = full_params();
  cp.kv_ratio = 0.5;
  cp.schedule = engine::Schedule::oneshot;
  cp.evict.policy = evict::Policy::snapkv;
  CHECK_THROWS_WITH(eval::perplexity(*s.model, s.text, s.tok->bos(), eval::PplSpec{128, 0, 1}, cp),
                    Catch::Contains("--prefix"));
}

TEST_CASE("teacher forcing reproduces the full window's logits with the full cache", "[eval][kld]") {
  Stories& s = Stories::get();
  const model::Model& m = *s.model;
  const uint32_t V = m.config().n_vocab;
  const eval::WindowSpec spec{40, 12, 30, 0};
  const size_t nw = eval::count_windows(s.text.size(), spec);
  REQUIRE(nw >= 3);
  const std::vector<float> ref = eval::kld_reference(m, s.text, s.tok->bos(), spec, full_params());
  REQUIRE(ref.size() == nw * 12 * V);
  engine::ContextParams cp = full_params();
  cp.n_ctx = 52;
  engine::Context ctx(m, cp);
  std::vector<float> all(size_t(52) * V);
  for (size_t i : {size_t(0), size_t(1), nw - 1}) {
    // Independent window: BOS + text[i*30, i*30 + 51).
    std::vector<int32_t> w = {s.tok->bos()};
    w.insert(w.end(), s.text.begin() + ptrdiff_t(i * 30), s.text.begin() + ptrdiff_t(i * 30 + 51));
    ctx.reset();
    ctx.eval_all_logits(w, all.data());
    double max_diff = 0;
    for (size_t j = 0; j < 12; ++j)
      for (size_t v = 0; v < V; ++v)
        max_diff = std::max(max_diff, double(std::fabs(all[(40 + j) * V + v] - ref[(i * 12 + j) * V + v])));
    INFO("window " << i);
    CHECK(max_diff < 1e-3);
  }
}

TEST_CASE("KL of the full cache against itself is exactly 0", "[eval][kld]") {
  Stories& s = Stories::get();
  const eval::WindowSpec spec{64, 16, 48, 4};
  const std::vector<float> ref = eval::kld_reference(*s.model, s.text, s.tok->bos(), spec, full_params());
  const eval::KldResult r = eval::kld(*s.model, s.text, s.tok->bos(), spec, full_params(), ref);
  CHECK(r.windows == 4);
  CHECK(r.predictions == 64);
  CHECK(r.mean_kl == 0.0);
  CHECK(r.p99_kl == 0.0);
  CHECK(r.max_kl == 0.0);
  CHECK(r.top1 == 1.0);
  CHECK(r.scored_targets == 4 * 15);
  CHECK(r.ppl_full == r.ppl_policy);
  CHECK(r.budget_tokens == 0);
  // A reference of the wrong size is rejected.
  CHECK_THROWS_AS(eval::kld(*s.model, s.text, s.tok->bos(), spec, full_params(),
                            std::span<const float>(ref.data(), ref.size() - 1)),
                  std::invalid_argument);
}

TEST_CASE("an evicting policy has positive KL and keeps fewer entries", "[eval][kld]") {
  Stories& s = Stories::get();
  const model::Config& mc = s.model->config();
  const eval::WindowSpec spec{128, 32, 64, 2};
  const std::vector<float> ref = eval::kld_reference(*s.model, s.text, s.tok->bos(), spec, full_params());
  for (engine::Schedule sched : {engine::Schedule::oneshot, engine::Schedule::bounded}) {
    engine::ContextParams cp = full_params();
    cp.kv_ratio = 0.25;  // 32 tokens per head of a 128-token prefix
    cp.schedule = sched;
    cp.evict.window = 8;
    cp.evict.policy = evict::Policy::snapkv;
    const eval::KldResult r = eval::kld(*s.model, s.text, s.tok->bos(), spec, cp, ref);
    INFO(engine::schedule_name(sched));
    CHECK(r.budget_tokens == 32);
    CHECK(r.mean_kl > 0);
    CHECK(std::isfinite(r.mean_kl));
    CHECK(r.p99_kl >= r.mean_kl * 0);  // p99 is an order statistic of non-negative values
    CHECK(r.max_kl >= r.p99_kl);
    CHECK(r.top1 <= 1.0);
    // After the window the cache holds the budget plus the continuation (oneshot)
    // or at most budget + one chunk (bounded), never the full 160 tokens.
    CHECK(r.kv_entries < uint64_t(160) * mc.n_head_kv * mc.n_layer);
  }
}

TEST_CASE("summary ratios pick the strongest baseline", "[eval][summary]") {
  const std::vector<eval::LossRow> rows = {{"snapkv", 0.4}, {"adakv", 0.3}, {"criticalkv", 0.2},
                                           {"streaming", 0.9}, {"defensivekv", 0.1}, {"layer-defensivekv", 0.05}};
  const eval::LossSummary s = eval::summarize_losses(rows);
  CHECK(s.strongest_baseline == "criticalkv");
  CHECK(s.baseline_loss == 0.2);
  CHECK(s.ratio_defensivekv == Approx(2.0));
  CHECK(s.ratio_layer_defensivekv == Approx(4.0));
  const eval::LossSummary t = eval::summarize_losses({{"defensivekv", 0.0}, {"snapkv", 0.1}});
  CHECK(std::isinf(t.ratio_defensivekv));
  CHECK(std::isnan(t.ratio_layer_defensivekv));
  CHECK(eval::summarize_losses({{"defensivekv", 0.1}}).strongest_baseline.empty());
}

TEST_CASE("needle grid bins by depth and length", "[eval][needle]") {
  CHECK(eval::depth_bin(0.0, 5) == 0);
  CHECK(eval::depth_bin(0.19, 5) == 0);
  CHECK(eval::depth_bin(0.2, 5) == 1);
  CHECK(eval::depth_bin(0.999, 5) == 4);
  CHECK(eval::depth_bin(1.0, 5) == 4);
  std::vector<eval::NeedleTask> tasks(4);
  tasks[0].target_len = 512; tasks[0].needle_depth = 0.1;
  tasks[1].target_len = 256; tasks[1].needle_depth = 0.1;
  tasks[2].target_len = 256; tasks[2].needle_depth = 0.1;
  tasks[3].target_len = 512; tasks[3].needle_depth = 1.0;
  std::vector<eval::NeedleOutcome> out(4);
  out[0].correct = true; out[2].correct = true; out[3].correct = true;
  const eval::NeedleGrid g = eval::needle_grid(tasks, out, 5);
  REQUIRE(g.lengths == std::vector<uint32_t>{256, 512});
  CHECK(g.cells[0][0].correct == 1);
  CHECK(g.cells[0][0].total == 2);
  CHECK(g.cells[0][1].total == 1);
  CHECK(g.cells[4][1].correct == 1);
  CHECK(g.all.correct == 3);
  CHECK(g.all.total == 4);
}

TEST_CASE("full-cache needle retrieval matches llama.cpp task by task", "[eval][needle]") {
  auto m = model::Model::load(needle_dir() + "/needle-llama-0.9M-f32.gguf");
  auto tok = text::Tokenizer::from_gguf(m->file());
  std::vector<eval::NeedleTask> tasks = eval::load_needle_tasks(needle_dir() + "/eval_tasks.jsonl");
  std::ifstream f(needle_dir() + "/verify_report.json");
  const nlohmann::json rep = nlohmann::json::parse(f);
  // The first 12 tasks (256 tokens, 1-4 needles) keep the test short.
  tasks.resize(12);
  const std::vector<eval::NeedleOutcome> out = eval::run_needle(*m, *tok, tasks, full_params(), 8);
  REQUIRE(out.size() == 12);
  for (size_t i = 0; i < tasks.size(); ++i) {
    const nlohmann::json& row = rep["rows"][i];
    REQUIRE(row["i"].get<size_t>() == i);
    INFO("task " << i << " output '" << out[i].output << "' llama.cpp '" << row["llama_cpp"].get<std::string>() << "'");
    CHECK(out[i].prompt_tokens == tasks[i].n_ctx_tokens);
    CHECK(out[i].correct == row["llama_ok"].get<bool>());
    // The full cache keeps every entry, so the answer digits are all there.
    CHECK(out[i].needle_retained == 1.0);
    CHECK(out[i].needle_retained_per_layer == std::vector<double>(m->config().n_layer, 1.0));
    // The greedy text agrees with llama.cpp's as far as both go.
    const std::string lc = row["llama_cpp"].get<std::string>();
    const size_t n = std::min(lc.size(), out[i].output.size());
    CHECK(out[i].output.substr(0, n) == lc.substr(0, n));
  }
}
