// `defkv eval`: quality of KV-cache policies.
//   eval ppl     teacher-forced perplexity with the policy active
//   eval kld     KL divergence to the full cache (the paper's one-shot protocol)
//   eval needle  needle-in-a-haystack retrieval accuracy
//   eval sweep   policies x budgets x schedules -> JSON, CSV, summary, plots
// Protocols: runtime/eval/eval.h.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <limits>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/eval/eval.h"
#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"
#include "tools/commands.h"
#include "tools/flag_checks.h"
#include "tools/kv_flags.h"

namespace defkv::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---------------------------------------------------------------------------
// Progress bar on stderr: "[#####.....]  45%  123/456  label  ETA 12 s".

class ProgressBar {
 public:
  ProgressBar(size_t total, bool enabled) : total_(std::max<size_t>(total, 1)), enabled_(enabled), t0_(Clock::now()) {}
  void set_label(std::string s) { label_ = std::move(s); }
  void update(size_t done, bool force = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!force && std::chrono::duration<double>(now - last_).count() < 0.1 && done < total_) return;
    last_ = now;
    const double f = std::min(1.0, double(done) / double(total_));
    const int width = 30, fill = int(f * width);
    const double el = since(t0_);
    const double eta = f > 0 ? el * (1 - f) / f : 0;
    std::fprintf(stderr, "\r[%.*s%.*s] %3d%% %zu/%zu %-40.40s %5.0fs ETA %4.0fs", fill,
                 "##############################", width - fill, "..............................",
                 int(f * 100), done, total_, label_.c_str(), el, eta);
    std::fflush(stderr);
  }
  void finish() {
    if (!enabled_) return;
    update(total_, true);
    std::fputc('\n', stderr);
  }

 private:
  size_t total_;
  bool enabled_;
  Clock::time_point t0_, last_{};
  std::string label_;
};

// ---------------------------------------------------------------------------
// KV options shared by the subcommands.

struct KvOptions {
  std::string model_path;
  int n_threads = 1;  // the evaluated models are tiny: OpenMP barriers cost more than they save
  KvFlags flags;      // the KV flags shared with run and bench (tools/kv_flags.h)
  bool json = false;
};

const std::vector<std::string> kPolicies = {"full", "streaming", "snapkv", "adakv", "criticalkv", "defensivekv",
                                            "layer-defensivekv"};

// Model, threads, --json and the KV flags; `budget`: also the budget, policy
// and schedule flags (sweep takes those as lists instead).
void add_common(CLI::App* sub, KvOptions& o, bool budget) {
  sub->add_option("-m,--model", o.model_path, "Model file (GGUF: llama, qwen2, qwen3, phi3, gemma2 or gemma3 architecture)")->required()->check(CLI::ExistingFile);
  sub->add_option("-t,--threads", o.n_threads, "Threads (0: all cores; 1 is fastest for tiny models on a busy machine)")->check(defkv::cli::non_negative());
  KvFlagSet set;
  set.budget = budget;
  set.default_type = "f32";
  set.ratio_help = "the prompt (prefix)";
  add_kv_flags(sub, o.flags, set);
  sub->add_flag("--json", o.json, "Print one JSON object instead of text");
}

// The full-cache parameters (no budget; the reference of the KL measurements).
engine::ContextParams base_params(const KvOptions& o) {
  engine::ContextParams cp;
  cp.n_threads = uint32_t(o.n_threads);
  apply_kv_flags(o.flags, &cp);
  cp.budget_tokens.reset();
  cp.kv_ratio.reset();
  cp.kv_mem_bytes.reset();
  cp.schedule.reset();
  cp.evict.policy = evict::Policy::full;
  return cp;
}

// The parameters with the budget, policy and schedule flags applied.
engine::ContextParams policy_params(const KvOptions& o) {
  engine::ContextParams cp;
  cp.n_threads = uint32_t(o.n_threads);
  apply_kv_flags(o.flags, &cp);
  return cp;
}

bool has_budget(const engine::ContextParams& cp) { return cp.budget_tokens || cp.kv_ratio || cp.kv_mem_bytes; }
std::string policy_of(const engine::ContextParams& cp) {
  return has_budget(cp) ? evict::policy_name(cp.evict.policy) : "full";
}
std::string schedule_of(const engine::ContextParams& cp) {
  if (!has_budget(cp)) return "none";
  return engine::schedule_name(cp.schedule.value_or(engine::Schedule::bounded));
}
json budget_json(const engine::ContextParams& cp) {
  json j = json::object();
  if (cp.kv_ratio) j["kv_ratio"] = *cp.kv_ratio;
  if (cp.budget_tokens) j["budget_tokens"] = *cp.budget_tokens;
  if (cp.kv_mem_bytes) j["kv_mem_bytes"] = *cp.kv_mem_bytes;
  return j;
}

eval::Progress bar_progress(ProgressBar* bar, size_t* base) {
  if (!bar) return {};
  return [bar, base](size_t done, size_t) { bar->update(*base + done); };
}

bool stderr_is_tty() { return isatty(fileno(stderr)) != 0; }

// ---------------------------------------------------------------------------
// eval ppl

struct PplOptions {
  KvOptions kv;
  std::string text_path;
  int ctx = 512;
  int prefix = -1;
  size_t max_windows = 0;
};

int run_ppl(const PplOptions& o) {
  auto model = model::Model::load(o.kv.model_path);
  auto tok = text::Tokenizer::from_gguf(model->file());
  const std::vector<int32_t> text = eval::tokenize_text(*tok, eval::read_text_file(o.text_path));
  engine::ContextParams cp = policy_params(o.kv);
  eval::PplSpec spec;
  spec.ctx_tokens = uint32_t(o.ctx);
  const bool oneshot = has_budget(cp) && cp.schedule == engine::Schedule::oneshot;
  spec.prefix_tokens = o.prefix >= 0 ? uint32_t(o.prefix) : (oneshot ? uint32_t(o.ctx / 2) : 0u);
  spec.max_windows = o.max_windows;
  const size_t nw = eval::ppl_windows(text.size(), spec).size();
  ProgressBar bar(nw, stderr_is_tty() && !o.kv.json);
  size_t zero = 0;
  const auto t0 = Clock::now();
  const eval::PplResult r = eval::perplexity(*model, text, tok->bos(), spec, cp, bar_progress(&bar, &zero));
  bar.finish();
  const double secs = since(t0);
  if (o.kv.json) {
    json j = {{"policy", policy_of(cp)}, {"schedule", schedule_of(cp)}, {"budget", budget_json(cp)},
              {"ppl", r.ppl}, {"mean_nll", r.mean_nll}, {"targets", r.targets}, {"windows", r.windows},
              {"ctx", spec.ctx_tokens}, {"prefix", spec.prefix_tokens}, {"text_tokens", text.size()},
              {"budget_tokens", r.budget_tokens}, {"kv_entries_end", r.kv_entries}, {"seconds", secs}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ppl %.4f  (mean NLL %.5f nats over %llu targets, %zu windows of <= %u tokens, prefix %u; "
                "policy %s, schedule %s, budget %u tok/head; %.2f s)\n",
                r.ppl, r.mean_nll, (unsigned long long)r.targets, r.windows, spec.ctx_tokens, spec.prefix_tokens,
                policy_of(cp).c_str(), schedule_of(cp).c_str(), r.budget_tokens, secs);
  }
  return 0;
}

// ---------------------------------------------------------------------------
// eval kld

struct KldOptions {
  KvOptions kv;
  std::string text_path;
  eval::WindowSpec spec{256, 64, 64, 0};
};

json kld_json(const eval::KldResult& r) {
  return {{"mean_kl", r.mean_kl}, {"p99_kl", r.p99_kl}, {"max_kl", r.max_kl}, {"top1", r.top1},
          {"windows", r.windows}, {"predictions", r.predictions}, {"ppl_full", r.ppl_full},
          {"ppl_policy", r.ppl_policy}, {"budget_tokens", r.budget_tokens}, {"kv_entries_end", r.kv_entries}};
}

int run_kld(const KldOptions& o) {
  auto model = model::Model::load(o.kv.model_path);
  auto tok = text::Tokenizer::from_gguf(model->file());
  const std::vector<int32_t> text = eval::tokenize_text(*tok, eval::read_text_file(o.text_path));
  engine::ContextParams cp = policy_params(o.kv);
  const size_t nw = eval::count_windows(text.size(), o.spec);
  ProgressBar bar(2 * nw, stderr_is_tty() && !o.kv.json);
  size_t base = 0;
  const auto t0 = Clock::now();
  bar.set_label("full cache");
  const std::vector<float> ref = eval::kld_reference(*model, text, tok->bos(), o.spec, base_params(o.kv),
                                                     bar_progress(&bar, &base));
  base = nw;
  bar.set_label(policy_of(cp));
  const eval::KldResult r = eval::kld(*model, text, tok->bos(), o.spec, cp, ref, bar_progress(&bar, &base));
  bar.finish();
  const double secs = since(t0);
  if (o.kv.json) {
    json j = kld_json(r);
    j["policy"] = policy_of(cp);
    j["schedule"] = schedule_of(cp);
    j["budget"] = budget_json(cp);
    j["prefix"] = o.spec.prefix_tokens;
    j["cont"] = o.spec.cont_tokens;
    j["stride"] = o.spec.stride_tokens;
    j["text_tokens"] = text.size();
    j["seconds"] = secs;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("kld %s/%s: mean KL %.6f nats, p99 %.6f, max %.6f, top-1 agreement %.2f%% over %llu predictions "
                "in %zu windows (T=%u C=%u S=%u, budget %u tok/head); ppl full %.4f vs policy %.4f; %.2f s\n",
                policy_of(cp).c_str(), schedule_of(cp).c_str(), r.mean_kl, r.p99_kl, r.max_kl, 100 * r.top1,
                (unsigned long long)r.predictions, r.windows, o.spec.prefix_tokens, o.spec.cont_tokens,
                o.spec.stride_tokens, r.budget_tokens, r.ppl_full, r.ppl_policy, secs);
  }
  return 0;
}

// ---------------------------------------------------------------------------
// eval needle

// Needle depths are fractions of the haystack: 1000 bins resolve 0.1 %, and
// the grid holds a cell per bin and length.
constexpr int kMaxDepthBins = 1000;

struct NeedleOptions {
  KvOptions kv;
  std::string tasks_path;
  int n_predict = 8;
  size_t limit = 0;
  int depth_bins = 5;
};

// Mean of the located needle retentions (-1 when none was located).
double mean_retained(const std::vector<eval::NeedleOutcome>& out) {
  double s = 0;
  size_t n = 0;
  for (const auto& o : out)
    if (o.needle_retained >= 0) { s += o.needle_retained; ++n; }
  return n ? s / double(n) : -1;
}

// Per-layer mean of the located needle retentions.
std::vector<double> mean_retained_per_layer(const std::vector<eval::NeedleOutcome>& out) {
  std::vector<double> m;
  size_t n = 0;
  for (const auto& o : out) {
    if (o.needle_retained_per_layer.empty()) continue;
    if (m.empty()) m.assign(o.needle_retained_per_layer.size(), 0.0);
    for (size_t l = 0; l < m.size() && l < o.needle_retained_per_layer.size(); ++l) m[l] += o.needle_retained_per_layer[l];
    ++n;
  }
  for (double& v : m) v /= double(std::max<size_t>(n, 1));
  return m;
}

json grid_json(const eval::NeedleGrid& g) {
  json cells = json::array();
  for (uint32_t b = 0; b < g.n_depth_bins; ++b)
    for (size_t li = 0; li < g.lengths.size(); ++li) {
      const eval::NeedleCell& c = g.cells[b][li];
      cells.push_back({{"depth_lo", double(b) / g.n_depth_bins}, {"depth_hi", double(b + 1) / g.n_depth_bins},
                       {"length", g.lengths[li]}, {"correct", c.correct}, {"total", c.total}});
    }
  return cells;
}

void print_grid(const eval::NeedleGrid& g) {
  std::printf("%-12s", "depth\\len");
  for (uint32_t L : g.lengths) std::printf(" %9u", L);
  std::printf("\n");
  for (uint32_t b = 0; b < g.n_depth_bins; ++b) {
    std::printf("%.1f-%.1f    ", double(b) / g.n_depth_bins, double(b + 1) / g.n_depth_bins);
    for (size_t li = 0; li < g.lengths.size(); ++li) {
      const eval::NeedleCell& c = g.cells[b][li];
      std::printf(" %4u/%-4u", c.correct, c.total);
    }
    std::printf("\n");
  }
}

int run_needle_cmd(const NeedleOptions& o) {
  auto model = model::Model::load(o.kv.model_path);
  auto tok = text::Tokenizer::from_gguf(model->file());
  std::vector<eval::NeedleTask> tasks = eval::load_needle_tasks(o.tasks_path);
  if (o.limit && tasks.size() > o.limit) tasks.resize(o.limit);
  engine::ContextParams cp = policy_params(o.kv);
  ProgressBar bar(tasks.size(), stderr_is_tty() && !o.kv.json);
  bar.set_label(policy_of(cp));
  size_t base = 0;
  const auto t0 = Clock::now();
  const std::vector<eval::NeedleOutcome> out =
      eval::run_needle(*model, *tok, tasks, cp, uint32_t(o.n_predict), bar_progress(&bar, &base));
  bar.finish();
  const double secs = since(t0);
  const eval::NeedleGrid g = eval::needle_grid(tasks, out, uint32_t(o.depth_bins));
  size_t len_mismatch = 0;
  for (size_t i = 0; i < tasks.size(); ++i) len_mismatch += out[i].prompt_tokens != tasks[i].n_ctx_tokens;
  if (o.kv.json) {
    json per = json::array();
    for (size_t i = 0; i < tasks.size(); ++i)
      per.push_back({{"line", tasks[i].line}, {"correct", out[i].correct}, {"output", out[i].output},
                     {"prompt_tokens", out[i].prompt_tokens}, {"kv_entries", out[i].kv_entries},
                     {"needle_retained", out[i].needle_retained}});
    json j = {{"policy", policy_of(cp)}, {"schedule", schedule_of(cp)}, {"budget", budget_json(cp)},
              {"correct", g.all.correct}, {"total", g.all.total},
              {"accuracy", g.all.total ? double(g.all.correct) / g.all.total : 0.0}, {"grid", grid_json(g)},
              {"prompt_length_mismatches", len_mismatch}, {"needle_retained_mean", mean_retained(out)},
              {"needle_retained_per_layer", mean_retained_per_layer(out)}, {"seconds", secs}, {"tasks", per}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("needle %s/%s: %u/%u correct (%.1f%%), answer digits kept after the prompt %.1f%%, %.2f s\n",
                policy_of(cp).c_str(), schedule_of(cp).c_str(), g.all.correct, g.all.total,
                g.all.total ? 100.0 * g.all.correct / g.all.total : 0.0, 100 * mean_retained(out), secs);
    print_grid(g);
    std::printf("answer digits kept per layer:");
    for (double v : mean_retained_per_layer(out)) std::printf(" %.1f%%", 100 * v);
    std::printf("\n");
    if (len_mismatch)
      std::printf("warning: %zu prompts tokenized to a length other than their n_ctx_tokens\n", len_mismatch);
  }
  return 0;
}

// ---------------------------------------------------------------------------
// eval sweep

struct SweepOptions {
  KvOptions kv;
  std::string text_path, tasks_path;
  std::vector<std::string> policies = {"streaming", "snapkv", "adakv", "criticalkv", "defensivekv", "layer-defensivekv"};
  std::vector<double> budgets = {0.05, 0.1, 0.2, 0.3, 0.5};
  std::vector<double> needle_budgets = {0.2};
  std::vector<std::string> schedules = {"oneshot", "bounded"};
  eval::WindowSpec spec{256, 64, 64, 0};
  int n_predict = 8;
  size_t needle_limit = 0;
  int depth_bins = 5;
  std::string out_dir = "docs/eval/sweep";
  std::string scripts_dir = "scripts";
  bool no_plots = false;
  bool no_progress = false;
};

std::string fmt(double v, int prec = 6) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}

void write_file(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write '" + p.string() + "'");
  f << s;
  if (!f) throw std::runtime_error("error writing '" + p.string() + "'");
}

// Runs gnuplot on a script with -e variable definitions; returns success.
bool gnuplot(const std::string& scripts_dir, const std::string& script, const std::string& vars) {
  const fs::path s = fs::path(scripts_dir) / script;
  if (!fs::exists(s)) {
    std::fprintf(stderr, "defkv: plot skipped: %s not found (run from the repo root or pass --scripts)\n",
                 s.string().c_str());
    return false;
  }
  const std::string cmd = "gnuplot -e \"" + vars + "\" '" + s.string() + "'";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) std::fprintf(stderr, "defkv: plot failed (%d): %s\n", rc, cmd.c_str());
  return rc == 0;
}

// Mean KL of each window (C predictions each), in window order.
std::vector<double> window_means(const eval::KldResult& r) {
  std::vector<double> w;
  if (r.windows == 0) return w;
  const size_t C = r.per_token_kl.size() / r.windows;
  for (size_t i = 0; i < r.windows; ++i) {
    double s = 0;
    for (size_t j = 0; j < C; ++j) s += r.per_token_kl[i * C + j];
    w.push_back(s / double(C));
  }
  return w;
}

// Paired difference a - b over windows: mean and standard error.
std::pair<double, double> paired_diff(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = std::min(a.size(), b.size());
  if (n < 2) return {NAN, NAN};
  double m = 0;
  for (size_t i = 0; i < n; ++i) m += a[i] - b[i];
  m /= double(n);
  double v = 0;
  for (size_t i = 0; i < n; ++i) v += (a[i] - b[i] - m) * (a[i] - b[i] - m);
  v /= double(n - 1);
  return {m, std::sqrt(v / double(n))};
}

struct KldCell {
  std::string schedule, policy;
  double budget = 0;
  bool ok = false;
  std::string error;
  eval::KldResult r;
  double seconds = 0;
};
struct NeedleRun {
  std::string schedule, policy;
  double budget = 0;
  bool ok = false;
  std::string error;
  std::vector<eval::NeedleOutcome> out;
  eval::NeedleGrid grid;
  double seconds = 0;
};

engine::ContextParams sweep_params(const SweepOptions& o, const std::string& policy, const std::string& schedule,
                                   double budget) {
  engine::ContextParams cp = base_params(o.kv);
  if (policy == "full") return cp;
  if (!evict::parse_policy(policy, &cp.evict.policy)) throw std::invalid_argument("--policies: unknown " + policy);
  engine::Schedule s;
  if (!engine::parse_schedule(schedule, &s)) throw std::invalid_argument("--schedules: unknown " + schedule);
  cp.schedule = s;
  cp.kv_ratio = budget;
  return cp;
}

std::string pct(double budget) { return fmt(budget * 100, 4) + "%"; }

int run_sweep(const SweepOptions& o) {
  if (o.text_path.empty() && o.tasks_path.empty())
    throw std::invalid_argument("sweep: give a text (-f, KL sweep) and/or needle tasks (--tasks)");
  for (const std::string& p : o.policies) {
    evict::Policy pp;
    if (!evict::parse_policy(p, &pp)) throw std::invalid_argument("--policies: unknown policy " + p);
  }
  for (const std::string& s : o.schedules) {
    engine::Schedule ss;
    if (!engine::parse_schedule(s, &ss)) throw std::invalid_argument("--schedules: unknown schedule " + s);
  }
  auto model = model::Model::load(o.kv.model_path);
  auto tok = text::Tokenizer::from_gguf(model->file());
  const fs::path out = o.out_dir;
  fs::create_directories(out);
  const auto t_all = Clock::now();

  std::vector<int32_t> text;
  size_t nw = 0;
  if (!o.text_path.empty()) {
    text = eval::tokenize_text(*tok, eval::read_text_file(o.text_path));
    nw = eval::count_windows(text.size(), o.spec);
  }
  std::vector<eval::NeedleTask> tasks;
  if (!o.tasks_path.empty()) {
    tasks = eval::load_needle_tasks(o.tasks_path);
    if (o.needle_limit && tasks.size() > o.needle_limit) tasks.resize(o.needle_limit);
  }
  std::vector<std::string> eviction_policies;
  for (const std::string& p : o.policies)
    if (p != "full") eviction_policies.push_back(p);

  // Work units for the bar: windows per KL run (plus the reference), tasks per needle run.
  const size_t n_kld_runs = text.empty() ? 0 : 1 + o.schedules.size() * eviction_policies.size() * o.budgets.size();
  const size_t n_needle_runs =
      tasks.empty() ? 0 : 1 + o.schedules.size() * eviction_policies.size() * o.needle_budgets.size();
  ProgressBar bar(n_kld_runs * nw + n_needle_runs * tasks.size(), !o.no_progress);
  size_t base = 0;
  auto progress = bar_progress(&bar, &base);

  json meta = {{"model", o.kv.model_path}, {"kv_type", o.kv.flags.type}, {"window", o.kv.flags.window_tokens},
               {"pool_kernel", o.kv.flags.pool_kernel}, {"sinks", o.kv.flags.sink_tokens},
               {"chunk", o.kv.flags.chunk_tokens},
               {"budget_form", "kv_ratio (fraction of the prompt/prefix kept)"}};

  // --- KL sweep -------------------------------------------------------------
  std::vector<KldCell> kcells;
  if (!text.empty()) {
    bar.set_label("kld full cache (reference)");
    auto t0 = Clock::now();
    const std::vector<float> ref = eval::kld_reference(*model, text, tok->bos(), o.spec, base_params(o.kv), progress);
    // Full against itself through the same path: must be exactly 0.
    KldCell full{"none", "full", 1.0, true, "", {}, 0};
    full.r = eval::kld(*model, text, tok->bos(), o.spec, base_params(o.kv), ref, {});
    full.seconds = since(t0);
    kcells.push_back(std::move(full));
    base += nw;
    for (const std::string& sched : o.schedules)
      for (double b : o.budgets)
        for (const std::string& pol : eviction_policies) {
          bar.set_label("kld " + sched + " " + pct(b) + " " + pol);
          KldCell c{sched, pol, b, false, "", {}, 0};
          t0 = Clock::now();
          try {
            c.r = eval::kld(*model, text, tok->bos(), o.spec, sweep_params(o, pol, sched, b), ref, progress);
            c.ok = true;
          } catch (const std::invalid_argument& e) {
            c.error = e.what();  // e.g. budget below window + sinks
          }
          c.seconds = since(t0);
          kcells.push_back(std::move(c));
          base += nw;
        }
    // Outputs.
    json rows = json::array();
    std::ostringstream csv;
    csv << "schedule,policy,budget,budget_tokens,mean_kl,p99_kl,max_kl,top1,ppl_full,ppl_policy,windows,seconds,error\n";
    for (const KldCell& c : kcells) {
      json j = {{"schedule", c.schedule}, {"policy", c.policy}, {"budget", c.budget}, {"ok", c.ok},
                {"seconds", c.seconds}};
      if (c.ok) {
        j.update(kld_json(c.r));
        j["window_mean_kl"] = window_means(c.r);
      }
      else j["error"] = c.error;
      rows.push_back(j);
      csv << c.schedule << ',' << c.policy << ',' << c.budget << ',' << (c.ok ? std::to_string(c.r.budget_tokens) : "")
          << ',' << (c.ok ? fmt(c.r.mean_kl, 8) : "") << ',' << (c.ok ? fmt(c.r.p99_kl, 8) : "") << ','
          << (c.ok ? fmt(c.r.max_kl, 8) : "") << ',' << (c.ok ? fmt(c.r.top1, 6) : "") << ','
          << (c.ok ? fmt(c.r.ppl_full, 8) : "") << ',' << (c.ok ? fmt(c.r.ppl_policy, 8) : "") << ','
          << (c.ok ? std::to_string(c.r.windows) : "") << ',' << fmt(c.seconds, 4) << ",\"" << c.error << "\"\n";
    }
    json kj = meta;
    kj["text"] = o.text_path;
    kj["text_tokens"] = text.size();
    kj["prefix"] = o.spec.prefix_tokens;
    kj["cont"] = o.spec.cont_tokens;
    kj["stride"] = o.spec.stride_tokens;
    kj["windows"] = nw;
    kj["rows"] = rows;
    write_file(out / "kld.json", kj.dump(1) + "\n");
    write_file(out / "kld.csv", csv.str());
  }

  // --- needle sweep ---------------------------------------------------------
  std::vector<NeedleRun> nruns;
  if (!tasks.empty()) {
    auto one = [&](const std::string& sched, const std::string& pol, double b) {
      bar.set_label("needle " + sched + " " + (pol == "full" ? std::string() : pct(b) + " ") + pol);
      NeedleRun r{sched, pol, b, false, "", {}, {}, 0};
      const auto t0 = Clock::now();
      try {
        r.out = eval::run_needle(*model, *tok, tasks, sweep_params(o, pol, sched, b), uint32_t(o.n_predict), progress);
        r.grid = eval::needle_grid(tasks, r.out, uint32_t(o.depth_bins));
        r.ok = true;
      } catch (const std::invalid_argument& e) {
        r.error = e.what();
      }
      r.seconds = since(t0);
      nruns.push_back(std::move(r));
      base += tasks.size();
    };
    one("none", "full", 1.0);
    for (const std::string& sched : o.schedules)
      for (double b : o.needle_budgets)
        for (const std::string& pol : eviction_policies) one(sched, pol, b);
    json rows = json::array();
    std::ostringstream csv, gcsv;
    csv << "schedule,policy,budget,correct,total,accuracy,needle_retained,seconds,error\n";
    gcsv << "schedule,policy,budget,depth_lo,depth_hi,length,correct,total,accuracy\n";
    for (const NeedleRun& r : nruns) {
      json j = {{"schedule", r.schedule}, {"policy", r.policy}, {"budget", r.budget}, {"ok", r.ok},
                {"seconds", r.seconds}};
      if (r.ok) {
        j["correct"] = r.grid.all.correct;
        j["total"] = r.grid.all.total;
        j["accuracy"] = double(r.grid.all.correct) / std::max<uint32_t>(r.grid.all.total, 1);
        j["grid"] = grid_json(r.grid);
        json per = json::array();
        for (size_t i = 0; i < tasks.size(); ++i)
          per.push_back({{"line", tasks[i].line}, {"correct", r.out[i].correct}, {"output", r.out[i].output},
                         {"needle_retained", r.out[i].needle_retained}});
        j["needle_retained_mean"] = mean_retained(r.out);
        j["needle_retained_per_layer"] = mean_retained_per_layer(r.out);
        j["tasks"] = per;
        for (uint32_t bi = 0; bi < r.grid.n_depth_bins; ++bi)
          for (size_t li = 0; li < r.grid.lengths.size(); ++li) {
            const eval::NeedleCell& c = r.grid.cells[bi][li];
            gcsv << r.schedule << ',' << r.policy << ',' << r.budget << ',' << fmt(double(bi) / r.grid.n_depth_bins)
                 << ',' << fmt(double(bi + 1) / r.grid.n_depth_bins) << ',' << r.grid.lengths[li] << ',' << c.correct
                 << ',' << c.total << ',' << (c.total ? fmt(double(c.correct) / c.total) : "nan") << '\n';
          }
      } else {
        j["error"] = r.error;
      }
      rows.push_back(j);
      csv << r.schedule << ',' << r.policy << ',' << r.budget << ',' << (r.ok ? std::to_string(r.grid.all.correct) : "")
          << ',' << (r.ok ? std::to_string(r.grid.all.total) : "") << ','
          << (r.ok ? fmt(double(r.grid.all.correct) / std::max<uint32_t>(r.grid.all.total, 1)) : "") << ','
          << (r.ok ? fmt(mean_retained(r.out)) : "") << ',' << fmt(r.seconds, 4) << ",\"" << r.error << "\"\n";
    }
    json nj = meta;
    nj["tasks_file"] = o.tasks_path;
    nj["n_tasks"] = tasks.size();
    nj["n_predict"] = o.n_predict;
    nj["rows"] = rows;
    write_file(out / "needle.json", nj.dump(1) + "\n");
    write_file(out / "needle.csv", csv.str());
    write_file(out / "needle_grid.csv", gcsv.str());
  }
  bar.finish();

  // --- summary (markdown) ---------------------------------------------------
  std::ostringstream md;
  md << "<!-- written by defkv eval sweep; model " << o.kv.model_path << " -->\n";
  if (!kcells.empty()) {
    md << "\n### Quality loss: mean KL(full || policy) in nats, " << nw << " windows (T=" << o.spec.prefix_tokens
       << ", C=" << o.spec.cont_tokens << ", S=" << o.spec.stride_tokens << ")\n";
    for (const std::string& sched : o.schedules) {
      md << "\n**" << sched << "**\n\n| policy |";
      for (double b : o.budgets) md << ' ' << pct(b) << " |";
      md << "\n| --- |";
      for (size_t i = 0; i < o.budgets.size(); ++i) md << " ---: |";
      md << '\n';
      for (const std::string& pol : eviction_policies) {
        md << "| " << pol << " |";
        for (double b : o.budgets)
          for (const KldCell& c : kcells)
            if (c.schedule == sched && c.policy == pol && c.budget == b)
              md << ' ' << (c.ok ? fmt(c.r.mean_kl, 4) : std::string("n/a")) << " |";
        md << '\n';
      }
      // Ratio rows.
      md << "| *strongest baseline* |";
      std::vector<eval::LossSummary> sums;
      for (double b : o.budgets) {
        std::vector<eval::LossRow> lr;
        for (const KldCell& c : kcells)
          if (c.schedule == sched && c.budget == b && c.ok) lr.push_back({c.policy, c.r.mean_kl});
        sums.push_back(eval::summarize_losses(lr));
        md << ' ' << (sums.back().strongest_baseline.empty() ? "n/a" : sums.back().strongest_baseline) << " |";
      }
      md << "\n| *baseline / defensivekv* |";
      for (const auto& s : sums) md << ' ' << fmt(s.ratio_defensivekv, 3) << "x |";
      md << "\n| *baseline / layer-defensivekv* |";
      for (const auto& s : sums) md << ' ' << fmt(s.ratio_layer_defensivekv, 3) << "x |";
      md << '\n';
    }
    // Paired comparison over windows: is the defensive policy's loss
    // different from the strongest baseline's beyond window-to-window noise?
    md << "\nPaired difference of mean KL over windows, policy minus the strongest baseline (mean +- standard "
          "error; negative = the defensive policy loses less):\n";
    for (const std::string& sched : o.schedules) {
      md << "\n**" << sched << "**\n\n| policy |";
      for (double b : o.budgets) md << ' ' << pct(b) << " |";
      md << "\n| --- |";
      for (size_t i = 0; i < o.budgets.size(); ++i) md << " ---: |";
      md << '\n';
      for (const std::string& pol : {std::string("defensivekv"), std::string("layer-defensivekv")}) {
        md << "| " << pol << " |";
        for (double b : o.budgets) {
          std::vector<eval::LossRow> lr;
          for (const KldCell& c : kcells)
            if (c.schedule == sched && c.budget == b && c.ok) lr.push_back({c.policy, c.r.mean_kl});
          const eval::LossSummary sm = eval::summarize_losses(lr);
          const KldCell *a = nullptr, *bl = nullptr;
          for (const KldCell& c : kcells)
            if (c.schedule == sched && c.budget == b && c.ok) {
              if (c.policy == pol) a = &c;
              if (c.policy == sm.strongest_baseline) bl = &c;
            }
          if (!a || !bl) { md << " n/a |"; continue; }
          const auto [m, se] = paired_diff(window_means(a->r), window_means(bl->r));
          md << ' ' << fmt(m, 3) << " +- " << fmt(se, 2) << " |";
        }
        md << '\n';
      }
    }
    md << "\nFull cache against itself: mean KL " << fmt(kcells.front().r.mean_kl) << ", top-1 "
       << fmt(kcells.front().r.top1) << ", ppl " << fmt(kcells.front().r.ppl_full) << ".\n";
    md << "\n99th percentile of the per-token KL (nats):\n";
    for (const std::string& sched : o.schedules) {
      md << "\n**" << sched << "**\n\n| policy |";
      for (double b : o.budgets) md << ' ' << pct(b) << " |";
      md << "\n| --- |";
      for (size_t i = 0; i < o.budgets.size(); ++i) md << " ---: |";
      md << '\n';
      for (const std::string& pol : eviction_policies) {
        md << "| " << pol << " |";
        for (double b : o.budgets)
          for (const KldCell& c : kcells)
            if (c.schedule == sched && c.policy == pol && c.budget == b)
              md << ' ' << (c.ok ? fmt(c.r.p99_kl, 4) : std::string("n/a")) << " |";
        md << '\n';
      }
    }
    md << "\nTop-1 agreement with the full cache (%):\n";
    for (const std::string& sched : o.schedules) {
      md << "\n**" << sched << "**\n\n| policy |";
      for (double b : o.budgets) md << ' ' << pct(b) << " |";
      md << "\n| --- |";
      for (size_t i = 0; i < o.budgets.size(); ++i) md << " ---: |";
      md << '\n';
      for (const std::string& pol : eviction_policies) {
        md << "| " << pol << " |";
        for (double b : o.budgets)
          for (const KldCell& c : kcells)
            if (c.schedule == sched && c.policy == pol && c.budget == b)
              md << ' ' << (c.ok ? fmt(100 * c.r.top1, 4) : std::string("n/a")) << " |";
        md << '\n';
      }
    }
    const auto& errs = kcells;
    for (const KldCell& c : errs)
      if (!c.ok) md << "\n- skipped " << c.schedule << ' ' << c.policy << ' ' << pct(c.budget) << ": " << c.error;
  }
  if (!nruns.empty()) {
    md << "\n\n### Needle retrieval accuracy (" << tasks.size() << " tasks, greedy, exact match)\n\n";
    md << "| schedule | policy | budget | correct | accuracy | loss vs full (points) | answer digits kept |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
    const double full_acc = nruns.front().ok ? double(nruns.front().grid.all.correct) / nruns.front().grid.all.total : 0;
    for (const NeedleRun& r : nruns) {
      if (!r.ok) {
        md << "| " << r.schedule << " | " << r.policy << " | " << pct(r.budget) << " | n/a | n/a | " << r.error << " |\n";
        continue;
      }
      const double acc = double(r.grid.all.correct) / r.grid.all.total;
      md << "| " << r.schedule << " | " << r.policy << " | " << (r.policy == "full" ? "100%" : pct(r.budget)) << " | "
         << r.grid.all.correct << '/' << r.grid.all.total << " | " << fmt(100 * acc, 4) << "% | "
         << fmt(100 * (full_acc - acc), 4) << " | " << fmt(100 * mean_retained(r.out), 4) << "% |\n";
    }
    for (const std::string& sched : o.schedules)
      for (double b : o.needle_budgets) {
        std::vector<eval::LossRow> lr;
        for (const NeedleRun& r : nruns)
          if (r.schedule == sched && r.budget == b && r.ok)
            lr.push_back({r.policy, full_acc - double(r.grid.all.correct) / r.grid.all.total});
        const eval::LossSummary s = eval::summarize_losses(lr);
        md << "\n" << sched << ' ' << pct(b) << ": strongest baseline " << s.strongest_baseline
           << " (accuracy loss " << fmt(100 * s.baseline_loss, 4) << " points); baseline/defensivekv "
           << fmt(s.ratio_defensivekv, 3) << "x, baseline/layer-defensivekv " << fmt(s.ratio_layer_defensivekv, 3)
           << "x\n";
      }
  }
  write_file(out / "summary.md", md.str());

  // --- plots (gnuplot) --------------------------------------------------------
  if (!o.no_plots) {
    std::string names;
    for (const std::string& p : eviction_policies) names += (names.empty() ? "" : " ") + p;
    if (!kcells.empty()) {
      for (const std::string& sched : o.schedules) {
        // One data block per policy: budget% mean_kl p99_kl top1.
        std::ostringstream d;
        for (const std::string& pol : eviction_policies) {
          d << "# " << pol << "\n";
          for (double b : o.budgets)
            for (const KldCell& c : kcells)
              if (c.schedule == sched && c.policy == pol && c.budget == b && c.ok)
                d << fmt(100 * b) << ' ' << fmt(c.r.mean_kl, 8) << ' ' << fmt(c.r.p99_kl, 8) << ' '
                  << fmt(c.r.top1, 6) << '\n';
          d << "\n\n";
        }
        const fs::path dat = out / ("quality_" + sched + ".dat");
        write_file(dat, d.str());
        gnuplot(o.scripts_dir, "plot_quality.gp",
                "in='" + dat.string() + "'; out='" + (out / ("quality_" + sched + ".png")).string() + "'; names='" +
                    names + "'; ttl='" + sched + " schedule: quality loss vs KV budget (" + std::to_string(nw) +
                    " windows, T=" + std::to_string(o.spec.prefix_tokens) + ", C=" +
                    std::to_string(o.spec.cont_tokens) + ")'");
      }
    }
    if (!nruns.empty()) {
      for (const std::string& sched : o.schedules)
        for (double b : o.needle_budgets) {
          // Blocks: full first, then each policy: length depth_center accuracy correct total.
          std::ostringstream d;
          std::string hn;
          for (const NeedleRun& r : nruns) {
            if (!r.ok || !(r.policy == "full" || (r.schedule == sched && r.budget == b))) continue;
            hn += (hn.empty() ? "" : " ") + r.policy;
            d << "# " << r.policy << "\n";
            for (uint32_t bi = 0; bi < r.grid.n_depth_bins; ++bi) {
              for (size_t li = 0; li < r.grid.lengths.size(); ++li) {
                const eval::NeedleCell& c = r.grid.cells[bi][li];
                d << r.grid.lengths[li] << ' ' << fmt((bi + 0.5) / r.grid.n_depth_bins) << ' '
                  << (c.total ? fmt(double(c.correct) / c.total) : "NaN") << ' ' << c.correct << ' ' << c.total
                  << '\n';
              }
            }
            d << "\n\n";
          }
          const auto& ls = nruns.front().grid.lengths;
          const uint32_t dx = ls.size() > 1 ? ls[1] - ls[0] : 256;
          const std::string stem = "needle_" + sched + "_" + fmt(100 * b) + "pct";
          const fs::path dat = out / (stem + ".dat");
          write_file(dat, d.str());
          gnuplot(o.scripts_dir, "plot_needle_heatmap.gp",
                  "in='" + dat.string() + "'; out='" + (out / (stem + ".png")).string() + "'; names='" + hn +
                      "'; ttl='needle accuracy, " + sched + " schedule, " + pct(b) + " KV budget (full: 100%)'; dx=" +
                      std::to_string(dx));
        }
    }
  }
  std::fprintf(stderr, "defkv: sweep done in %.1f s; results in %s\n", since(t_all), out.string().c_str());
  std::fputs(md.str().c_str(), stdout);
  return 0;
}

}  // namespace

Handler register_eval(CLI::App& app) {
  CLI::App* ev = app.add_subcommand("eval", "Quality of KV-cache policies: perplexity, KL to the full cache, "
                                            "needle retrieval, sweeps");
  ev->require_subcommand(1);

  auto po = std::make_shared<PplOptions>();
  CLI::App* ppl = ev->add_subcommand("ppl", "Teacher-forced perplexity with the cache policy active");
  ppl->option_defaults()->always_capture_default();
  add_common(ppl, po->kv, true);
  ppl->add_option("-f,--file", po->text_path, "Text file")->required()->check(CLI::ExistingFile);
  ppl->add_option("--ctx", po->ctx, "Window length in tokens (BOS included)")->check(CLI::Range(2, 1 << 20));
  ppl->add_option("--prefix", po->prefix,
                  "Compression point: eval the first N tokens, then score the rest (-1: 0, or ctx/2 with oneshot)")
      ->check(CLI::Range(-1, std::numeric_limits<int>::max()));
  ppl->add_option("--max-windows", po->max_windows, "Score at most this many windows (0: all)");

  auto ko = std::make_shared<KldOptions>();
  CLI::App* kld = ev->add_subcommand("kld", "Per-token KL divergence of a policy's next-token distribution from the "
                                            "full cache's (one-shot protocol)");
  kld->option_defaults()->always_capture_default();
  add_common(kld, ko->kv, true);
  kld->add_option("-f,--file", ko->text_path, "Text file")->required()->check(CLI::ExistingFile);
  kld->add_option("--prefix", ko->spec.prefix_tokens, "T: tokens prefilled and compressed (BOS included)")
      ->check(defkv::cli::positive());
  kld->add_option("--cont", ko->spec.cont_tokens, "C: teacher-forced tokens scored per window")->check(defkv::cli::positive());
  kld->add_option("--stride", ko->spec.stride_tokens, "S: text offset between windows")->check(defkv::cli::positive());
  kld->add_option("--max-windows", ko->spec.max_windows, "Use at most this many windows (0: all that fit)");

  auto no = std::make_shared<NeedleOptions>();
  CLI::App* nd = ev->add_subcommand("needle", "Needle-in-a-haystack retrieval accuracy (greedy, exact match)");
  nd->option_defaults()->always_capture_default();
  add_common(nd, no->kv, true);
  nd->add_option("--tasks", no->tasks_path, "Task file (JSONL, ../shared/models/needle format)")
      ->required()->check(CLI::ExistingFile);
  nd->add_option("-n,--n-predict", no->n_predict, "Greedy tokens generated per task")->check(defkv::cli::positive());
  nd->add_option("--limit", no->limit, "Run only the first N tasks (0: all)");
  nd->add_option("--depth-bins", no->depth_bins, "Depth bins of the grid")->check(CLI::Range(1, kMaxDepthBins));

  auto so = std::make_shared<SweepOptions>();
  CLI::App* sw = ev->add_subcommand("sweep", "Policies x budgets x schedules: JSON, CSV, summary table and plots");
  sw->option_defaults()->always_capture_default();
  add_common(sw, so->kv, false);
  sw->add_option("-f,--file", so->text_path, "Text file for the KL sweep")->check(CLI::ExistingFile);
  sw->add_option("--tasks", so->tasks_path, "Needle task file for the retrieval sweep")->check(CLI::ExistingFile);
  sw->add_option("--policies", so->policies, "Eviction policies")->delimiter(',')->check(CLI::IsMember(kPolicies));
  sw->add_option("--budgets", so->budgets, "KL sweep budgets as kept fractions of the prefix")
      ->delimiter(',')->check(CLI::Range(1e-9, 1.0));
  sw->add_option("--needle-budgets", so->needle_budgets, "Needle sweep budgets as kept fractions of the prompt")
      ->delimiter(',')->check(CLI::Range(1e-9, 1.0));
  sw->add_option("--schedules", so->schedules, "Schedules")->delimiter(',')->check(CLI::IsMember({"oneshot", "bounded"}));
  sw->add_option("--prefix", so->spec.prefix_tokens, "T (KL sweep)")->check(defkv::cli::positive());
  sw->add_option("--cont", so->spec.cont_tokens, "C (KL sweep)")->check(defkv::cli::positive());
  sw->add_option("--stride", so->spec.stride_tokens, "S (KL sweep)")->check(defkv::cli::positive());
  sw->add_option("--max-windows", so->spec.max_windows, "KL windows (0: all that fit)");
  sw->add_option("-n,--n-predict", so->n_predict, "Needle: greedy tokens per task")->check(defkv::cli::positive());
  sw->add_option("--needle-limit", so->needle_limit, "Needle: first N tasks only (0: all)");
  sw->add_option("--depth-bins", so->depth_bins, "Needle: depth bins")->check(CLI::Range(1, kMaxDepthBins));
  sw->add_option("-o,--out", so->out_dir, "Output directory");
  sw->add_option("--scripts", so->scripts_dir, "Directory with plot_quality.gp and plot_needle_heatmap.gp");
  sw->add_flag("--no-plots", so->no_plots, "Write data only");
  sw->add_flag("--no-progress", so->no_progress, "No progress bar");

  return [=]() -> int {
    if (ppl->parsed()) return run_ppl(*po);
    if (kld->parsed()) return run_kld(*ko);
    if (nd->parsed()) return run_needle_cmd(*no);
    if (sw->parsed()) return run_sweep(*so);
    throw std::invalid_argument("eval: choose ppl, kld, needle or sweep");
  };
}

}  // namespace defkv::cli
