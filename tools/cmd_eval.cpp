// `defkv eval`: quality of KV-cache policies.
//   eval ppl     teacher-forced perplexity with the policy active
//   eval kld     KL divergence to the full cache (the paper's one-shot protocol)
//   eval needle  needle-in-a-haystack retrieval accuracy
//   eval sweep   policies x budgets x schedules -> JSON, CSV, summary, plots
//                (eval_sweep.cpp)
// Protocols: runtime/eval/eval.h.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/eval/eval.h"
#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"
#include "tools/commands.h"
#include "tools/eval_cli.h"
#include "tools/kv_flags.h"

namespace defkv::cli {
namespace {

using namespace evalcli;

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

struct NeedleOptions {
  KvOptions kv;
  std::string tasks_path;
  int n_predict = 8;
  size_t limit = 0;
  int depth_bins = 5;
};

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
                  "Compression point: eval the first N tokens, then score the rest (-1: 0, or ctx/2 with oneshot)");
  ppl->add_option("--max-windows", po->max_windows, "Score at most this many windows (0: all)");

  auto ko = std::make_shared<KldOptions>();
  CLI::App* kld = ev->add_subcommand("kld", "Per-token KL divergence of a policy's next-token distribution from the "
                                            "full cache's (one-shot protocol)");
  kld->option_defaults()->always_capture_default();
  add_common(kld, ko->kv, true);
  kld->add_option("-f,--file", ko->text_path, "Text file")->required()->check(CLI::ExistingFile);
  kld->add_option("--prefix", ko->spec.prefix_tokens, "T: tokens prefilled and compressed (BOS included)")
      ->check(CLI::PositiveNumber);
  kld->add_option("--cont", ko->spec.cont_tokens, "C: teacher-forced tokens scored per window")->check(CLI::PositiveNumber);
  kld->add_option("--stride", ko->spec.stride_tokens, "S: text offset between windows")->check(CLI::PositiveNumber);
  kld->add_option("--max-windows", ko->spec.max_windows, "Use at most this many windows (0: all that fit)");

  auto no = std::make_shared<NeedleOptions>();
  CLI::App* nd = ev->add_subcommand("needle", "Needle-in-a-haystack retrieval accuracy (greedy, exact match)");
  nd->option_defaults()->always_capture_default();
  add_common(nd, no->kv, true);
  nd->add_option("--tasks", no->tasks_path, "Task file (JSONL, ../shared/models/needle format)")
      ->required()->check(CLI::ExistingFile);
  nd->add_option("-n,--n-predict", no->n_predict, "Greedy tokens generated per task")->check(CLI::PositiveNumber);
  nd->add_option("--limit", no->limit, "Run only the first N tasks (0: all)");
  nd->add_option("--depth-bins", no->depth_bins, "Depth bins of the grid")->check(CLI::PositiveNumber);

  std::function<int()> run_sweep;
  CLI::App* sw = add_sweep(ev, &run_sweep);

  return [=]() -> int {
    if (ppl->parsed()) return run_ppl(*po);
    if (kld->parsed()) return run_kld(*ko);
    if (nd->parsed()) return run_needle_cmd(*no);
    if (sw->parsed()) return run_sweep();
    throw std::invalid_argument("eval: choose ppl, kld, needle or sweep");
  };
}

}  // namespace defkv::cli
