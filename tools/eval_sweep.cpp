// `defkv eval sweep`: policies x budgets x schedules of the KL and needle
// evaluations, written as JSON, CSV, a markdown summary and gnuplot plots.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"
#include "tools/eval_cli.h"

namespace defkv::cli::evalcli {
namespace {

namespace fs = std::filesystem;

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

// The summary's KL tables: one per schedule, a row per policy, a column per
// budget.
struct KlTables {
  const std::vector<double>& budgets;
  const std::vector<std::string>& policies;
  const std::vector<KldCell>& cells;

  // The cell of a run that succeeded, or null.
  const KldCell* find(const std::string& sched, const std::string& pol, double b) const {
    for (const KldCell& c : cells)
      if (c.schedule == sched && c.policy == pol && c.budget == b && c.ok) return &c;
    return nullptr;
  }
  // The strongest baseline's loss and the defensive policies' ratios to it.
  eval::LossSummary losses(const std::string& sched, double b) const {
    std::vector<eval::LossRow> lr;
    for (const KldCell& c : cells)
      if (c.schedule == sched && c.budget == b && c.ok) lr.push_back({c.policy, c.r.mean_kl});
    return eval::summarize_losses(lr);
  }
  void head(std::ostream& md, const std::string& sched) const {
    md << "\n**" << sched << "**\n\n| policy |";
    for (double b : budgets) md << ' ' << pct(b) << " |";
    md << "\n| --- |";
    for (size_t i = 0; i < budgets.size(); ++i) md << " ---: |";
    md << '\n';
  }
  // A row per policy; `value` of each cell, "n/a" where the run failed.
  template <class F>
  void rows(std::ostream& md, const std::string& sched, F value) const {
    for (const std::string& pol : policies) {
      md << "| " << pol << " |";
      for (double b : budgets)
        for (const KldCell& c : cells)
          if (c.schedule == sched && c.policy == pol && c.budget == b)
            md << ' ' << (c.ok ? value(c) : std::string("n/a")) << " |";
      md << '\n';
    }
  }
};

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
    const KlTables t{o.budgets, eviction_policies, kcells};
    for (const std::string& sched : o.schedules) {
      t.head(md, sched);
      t.rows(md, sched, [](const KldCell& c) { return fmt(c.r.mean_kl, 4); });
      // Ratio rows.
      md << "| *strongest baseline* |";
      std::vector<eval::LossSummary> sums;
      for (double b : o.budgets) {
        sums.push_back(t.losses(sched, b));
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
      t.head(md, sched);
      for (const std::string& pol : {std::string("defensivekv"), std::string("layer-defensivekv")}) {
        md << "| " << pol << " |";
        for (double b : o.budgets) {
          const KldCell* a = t.find(sched, pol, b);
          const KldCell* bl = t.find(sched, t.losses(sched, b).strongest_baseline, b);
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
      t.head(md, sched);
      t.rows(md, sched, [](const KldCell& c) { return fmt(c.r.p99_kl, 4); });
    }
    md << "\nTop-1 agreement with the full cache (%):\n";
    for (const std::string& sched : o.schedules) {
      t.head(md, sched);
      t.rows(md, sched, [](const KldCell& c) { return fmt(100 * c.r.top1, 4); });
    }
    for (const KldCell& c : kcells)
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

CLI::App* add_sweep(CLI::App* ev, std::function<int()>* run) {
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
  sw->add_option("--prefix", so->spec.prefix_tokens, "T (KL sweep)")->check(CLI::PositiveNumber);
  sw->add_option("--cont", so->spec.cont_tokens, "C (KL sweep)")->check(CLI::PositiveNumber);
  sw->add_option("--stride", so->spec.stride_tokens, "S (KL sweep)")->check(CLI::PositiveNumber);
  sw->add_option("--max-windows", so->spec.max_windows, "KL windows (0: all that fit)");
  sw->add_option("-n,--n-predict", so->n_predict, "Needle: greedy tokens per task")->check(CLI::PositiveNumber);
  sw->add_option("--needle-limit", so->needle_limit, "Needle: first N tasks only (0: all)");
  sw->add_option("--depth-bins", so->depth_bins, "Needle: depth bins")->check(CLI::PositiveNumber);
  sw->add_option("-o,--out", so->out_dir, "Output directory");
  sw->add_option("--scripts", so->scripts_dir, "Directory with plot_quality.gp and plot_needle_heatmap.gp");
  sw->add_flag("--no-plots", so->no_plots, "Write data only");
  sw->add_flag("--no-progress", so->no_progress, "No progress bar");

  *run = [so] { return run_sweep(*so); };
  return sw;
}

}  // namespace defkv::cli::evalcli
