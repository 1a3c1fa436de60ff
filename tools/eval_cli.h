// Pieces shared by the `defkv eval` subcommands (cmd_eval.cpp: ppl, kld,
// needle; eval_sweep.cpp: sweep): the KV options, the progress bar and the
// JSON/number formatting of results.
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/eval/eval.h"
#include "tools/kv_flags.h"

namespace defkv::cli::evalcli {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0);

// Progress bar on stderr: "[#####.....]  45%  123/456  label  ETA 12 s".
class ProgressBar {
 public:
  ProgressBar(size_t total, bool enabled) : total_(std::max<size_t>(total, 1)), enabled_(enabled), t0_(Clock::now()) {}
  void set_label(std::string s) { label_ = std::move(s); }
  void update(size_t done, bool force = false);
  void finish();

 private:
  size_t total_;
  bool enabled_;
  Clock::time_point t0_, last_{};
  std::string label_;
};

// Progress callback that advances `bar` to *base + done.
eval::Progress bar_progress(ProgressBar* bar, size_t* base);
bool stderr_is_tty();

// KV options shared by the subcommands.
struct KvOptions {
  std::string model_path;
  int n_threads = 1;  // the evaluated models are tiny: OpenMP barriers cost more than they save
  KvFlags flags;      // the KV flags shared with run and bench (tools/kv_flags.h)
  bool json = false;
};

inline const std::vector<std::string> kPolicies = {"full",       "streaming",   "snapkv",           "adakv",
                                                   "criticalkv", "defensivekv", "layer-defensivekv"};

// Model, threads, --json and the KV flags; `budget`: also the budget, policy
// and schedule flags (sweep takes those as lists instead).
void add_common(CLI::App* sub, KvOptions& o, bool budget);
// The full-cache parameters (no budget; the reference of the KL measurements).
engine::ContextParams base_params(const KvOptions& o);
// The parameters with the budget, policy and schedule flags applied.
engine::ContextParams policy_params(const KvOptions& o);

bool has_budget(const engine::ContextParams& cp);
std::string policy_of(const engine::ContextParams& cp);
std::string schedule_of(const engine::ContextParams& cp);
json budget_json(const engine::ContextParams& cp);

// %g with `prec` significant digits; "nan", "inf", "-inf" spelled out.
std::string fmt(double v, int prec = 6);

json kld_json(const eval::KldResult& r);
// Mean of the located needle retentions (-1 when none was located).
double mean_retained(const std::vector<eval::NeedleOutcome>& out);
// Per-layer mean of the located needle retentions.
std::vector<double> mean_retained_per_layer(const std::vector<eval::NeedleOutcome>& out);
json grid_json(const eval::NeedleGrid& g);

// `eval sweep`: registers the subcommand under `ev`; the returned function
// runs it (call it only when the subcommand was parsed).
CLI::App* add_sweep(CLI::App* ev, std::function<int()>* run);

}  // namespace defkv::cli::evalcli
