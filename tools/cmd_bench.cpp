// defkv bench: memory-bandwidth probe (--membw) and llama-bench-style model
// throughput (prompt processing and generation).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

#include "tools/commands.h"
#include "tools/membw.h"

namespace defkv::cli {

namespace {

struct BenchArgs {
  bool membw = false;
  double membw_mib = 1024;
  int runs = 5;
  int threads = 0;
  bool json = false;
  std::string model;
};

int run_membw(const BenchArgs& a) {
  tools::MembwOptions o;
  o.size_bytes = size_t(a.membw_mib * 1048576.0);
  o.n_threads = a.threads;
  o.n_runs = a.runs;
  tools::MembwResult r = tools::measure_read_bandwidth(o);
  if (a.json) {
    std::printf("{\"test\": \"membw\", \"kernel\": \"%s\", \"threads\": %d, \"size_bytes\": %zu, "
                "\"runs\": %zu, \"best_gbps\": %.3f, \"mean_gbps\": %.3f, \"checksum\": \"%016llx\"}\n",
                r.kernel.c_str(), r.n_threads, r.size_bytes, r.run_gbps.size(), r.best_gbps,
                r.mean_gbps, (unsigned long long)r.checksum);
  } else {
    std::printf("membw: streaming read, %s kernel, %d threads, %.0f MiB buffer, best of %zu: "
                "%.2f GB/s (mean %.2f GB/s)\n",
                r.kernel.c_str(), r.n_threads, double(r.size_bytes) / 1048576.0,
                r.run_gbps.size(), r.best_gbps, r.mean_gbps);
  }
  return 0;
}

int run_bench(const BenchArgs& a) {
  if (a.membw) return run_membw(a);
  throw std::runtime_error("bench: model benchmarks are not implemented yet (use --membw)");
}

}  // namespace

Handler register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* c = app.add_subcommand("bench", "Benchmark: memory bandwidth (--membw) or a model");
  c->add_flag("--membw", a->membw,
              "Measure memory read bandwidth (streaming read of a buffer much larger than the "
              "last-level cache, all threads, best of -r runs)");
  c->add_option("--membw-mib", a->membw_mib, "Probe buffer size in MiB")->capture_default_str();
  c->add_option("-r,--reps", a->runs, "Repetitions")->capture_default_str();
  c->add_option("-t,--threads", a->threads, "Threads (default: all cores)");
  c->add_flag("--json", a->json, "Print JSON lines instead of a table");
  c->add_option("-m,--model", a->model, "GGUF model");
  return [a] { return run_bench(*a); };
}

}  // namespace defkv::cli
