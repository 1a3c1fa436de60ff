// Shared pieces of the `defkv eval` subcommands (tools/eval_cli.h).
#include "tools/eval_cli.h"

#include <unistd.h>

#include <cmath>

namespace defkv::cli::evalcli {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void ProgressBar::update(size_t done, bool force) {
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

void ProgressBar::finish() {
  if (!enabled_) return;
  update(total_, true);
  std::fputc('\n', stderr);
}

void add_common(CLI::App* sub, KvOptions& o, bool budget) {
  sub->add_option("-m,--model", o.model_path, "Model file (GGUF: llama, qwen2, qwen3, phi3, gemma2 or gemma3 architecture)")->required()->check(CLI::ExistingFile);
  sub->add_option("-t,--threads", o.n_threads, "Threads (0: all cores; 1 is fastest for tiny models on a busy machine)")->check(CLI::NonNegativeNumber);
  KvFlagSet set;
  set.budget = budget;
  set.default_type = "f32";
  set.ratio_help = "the prompt (prefix)";
  add_kv_flags(sub, o.flags, set);
  sub->add_flag("--json", o.json, "Print one JSON object instead of text");
}

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

std::string fmt(double v, int prec) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}

json kld_json(const eval::KldResult& r) {
  return {{"mean_kl", r.mean_kl}, {"p99_kl", r.p99_kl}, {"max_kl", r.max_kl}, {"top1", r.top1},
          {"windows", r.windows}, {"predictions", r.predictions}, {"ppl_full", r.ppl_full},
          {"ppl_policy", r.ppl_policy}, {"budget_tokens", r.budget_tokens}, {"kv_entries_end", r.kv_entries}};
}

double mean_retained(const std::vector<eval::NeedleOutcome>& out) {
  double s = 0;
  size_t n = 0;
  for (const auto& o : out)
    if (o.needle_retained >= 0) { s += o.needle_retained; ++n; }
  return n ? s / double(n) : -1;
}

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

}  // namespace defkv::cli::evalcli
