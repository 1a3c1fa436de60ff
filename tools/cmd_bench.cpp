// defkv bench: memory-bandwidth probe (--membw) and llama-bench-style model
// throughput: pp (prompt processing, -p tokens in one eval) and tg (token
// generation, -n single-token steps), mean +- sd over -r repetitions, the
// bandwidth decode achieves (weight + KV bytes read per token / time), an
// estimated breakdown by op, and a checksum of the logits.
//
// Op breakdown: the engine exposes only whole-call times (engine::Stats), so
// the matmul and norm shares are measured by replaying the model's own
// matrices / norms through the same kernels (quant::matmul, simd rmsnorm) for
// one step's worth of work (decode: 1 token; prefill: one chunk of the
// engine's batch size, scaled to -p); sampling is timed in the loop;
// eviction comes from engine::Stats; "attention+rest" is the remainder
// (attention, RoPE, KV append, SwiGLU, residual adds). It is an estimate,
// printed as such.
#include <CLI/CLI.hpp>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "runtime/engine/context.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"
#include "simd/simd.h"
#include "tools/commands.h"
#include "tools/membw.h"

namespace defkv::cli {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct BenchArgs {
  bool membw = false;
  double membw_mib = 1024;
  bool membw_huge = false;
  int reps = 5;
  int threads = 0;
  bool json = false;
  std::string model;
  int n_prompt = 512;
  int n_gen = 128;
  int depth = 0;
  bool no_breakdown = false;
  // KV flags, as in `defkv run`.
  int64_t kv_budget = 0;
  double kv_ratio = 0;
  std::string kv_mem;
  std::string kv_type = "f16";
  std::string kv_policy = "defensivekv";
  std::string kv_schedule;
  int kv_window = 32;
  int kv_pool = 5;
  int kv_sinks = 4;
  int chunk = 0;
  bool running_max = false;
  CLI::Option* opt_budget = nullptr;
  CLI::Option* opt_ratio = nullptr;
  CLI::Option* opt_mem = nullptr;
  CLI::Option* opt_policy = nullptr;
};

// "256M", "1.5G", "4096", "64K" (binary units) -> bytes (as `defkv run`).
int64_t parse_bytes(const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    throw std::invalid_argument("--kv-mem: '" + s + "' is not a size (e.g. 256M, 1G, 65536)");
  }
  const std::string suf = s.substr(used);
  double mul = 1;
  if (suf == "" || suf == "B") mul = 1;
  else if (suf == "K" || suf == "k" || suf == "KiB" || suf == "KB") mul = 1024.0;
  else if (suf == "M" || suf == "m" || suf == "MiB" || suf == "MB") mul = 1048576.0;
  else if (suf == "G" || suf == "g" || suf == "GiB" || suf == "GB") mul = 1073741824.0;
  else throw std::invalid_argument("--kv-mem: unknown unit '" + suf + "' (use K, M or G)");
  if (!(v > 0)) throw std::invalid_argument("--kv-mem: size must be positive");
  return int64_t(v * mul);
}

struct MeanSd {
  double mean = 0, sd = 0;
};
MeanSd mean_sd(const std::vector<double>& v) {
  MeanSd r;
  if (v.empty()) return r;
  for (double x : v) r.mean += x;
  r.mean /= double(v.size());
  if (v.size() > 1) {
    double s = 0;
    for (double x : v) s += (x - r.mean) * (x - r.mean);
    r.sd = std::sqrt(s / double(v.size() - 1));
  }
  return r;
}

// Logit checksum: the sum (stable across thread counts up to rounding) and
// an FNV-1a hash of the float bits (bit-exact reproducibility).
struct Checksum {
  double sum = 0;
  uint64_t hash = 0xcbf29ce484222325ULL;
};
Checksum checksum(std::span<const float> logits) {
  Checksum c;
  for (float x : logits) {
    c.sum += double(x);
    uint32_t b;
    std::memcpy(&b, &x, 4);
    for (int i = 0; i < 4; ++i) c.hash = (c.hash ^ ((b >> (8 * i)) & 0xff)) * 0x100000001b3ULL;
  }
  return c;
}

uint64_t matrix_bytes(const quant::Matrix& m) {
  return uint64_t(m.rows) * quant::row_bytes(m.type, m.cols);
}

// Bytes of weights one decoded token reads: every layer matrix, the output
// head, one embedding row and the norm vectors.
uint64_t weight_bytes_per_token(const model::Model& m) {
  const auto& c = m.config();
  uint64_t b = 0;
  for (uint32_t l = 0; l < c.n_layer; ++l) {
    const model::Layer& L = m.layer(l);
    for (const quant::Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      b += matrix_bytes(*w);
  }
  b += matrix_bytes(m.output());
  b += quant::row_bytes(m.token_embd().type, m.token_embd().cols);
  b += uint64_t(2 * c.n_layer + 1) * c.n_embd * sizeof(float);
  return b;
}

// Multiply-adds of the layer matrices per token (x2 = FLOPs).
uint64_t layer_macs_per_token(const model::Model& m) {
  uint64_t n = 0;
  for (uint32_t l = 0; l < m.config().n_layer; ++l) {
    const model::Layer& L = m.layer(l);
    for (const quant::Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      n += uint64_t(w->rows) * w->cols;
  }
  return n;
}

// Replays the model's matmuls (and norms) for a batch of n tokens.
struct Replay {
  const model::Model& m;
  std::vector<float> x, y;
  explicit Replay(const model::Model& mm, uint32_t n) : m(mm) {
    const auto& c = m.config();
    size_t max_cols = c.n_embd, max_rows = c.n_vocab;
    for (uint32_t l = 0; l < c.n_layer; ++l) {
      const model::Layer& L = m.layer(l);
      for (const quant::Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
        max_cols = std::max(max_cols, w->cols);
        max_rows = std::max(max_rows, w->rows);
      }
    }
    x.resize(size_t(n) * max_cols);
    y.resize(size_t(n) * max_rows);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  }
  // Seconds for all layer matmuls (+ the head when `head`) over n tokens.
  double matmuls(uint32_t n, bool head) {
    const auto t0 = Clock::now();
    for (uint32_t l = 0; l < m.config().n_layer; ++l) {
      const model::Layer& L = m.layer(l);
      for (const quant::Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
        quant::matmul(*w, x.data(), y.data(), n, w->rows);
    }
    if (head) quant::matmul(m.output(), x.data(), y.data(), 1, m.output().rows);
    return since(t0);
  }
  // Seconds for the RMSNorms of n tokens (2 per layer + the final one).
  double norms(uint32_t n) {
    const auto& c = m.config();
    const auto& k = simd::k();
    const auto t0 = Clock::now();
    for (uint32_t l = 0; l < c.n_layer; ++l)
      for (uint32_t t = 0; t < n; ++t) {
        float* v = x.data() + size_t(t) * c.n_embd;
        k.rmsnorm(y.data(), v, m.layer(l).attn_norm, c.n_embd, c.rms_eps);
        k.rmsnorm(y.data(), v, m.layer(l).ffn_norm, c.n_embd, c.rms_eps);
      }
    k.rmsnorm(y.data(), x.data(), m.layer(0).attn_norm, c.n_embd, c.rms_eps);
    return since(t0);
  }
};

struct TestResult {
  std::string name;            // "pp512", "tg128"
  std::vector<double> tok_s;   // per repetition
  std::vector<double> gbps;    // tg: bytes read per second
  double seconds_mean = 0;
  double sampling_s = 0, evict_s = 0;   // per repetition (mean)
  double matmul_s = 0, norms_s = 0;     // replay estimates for one repetition
  double bytes_per_token = 0;           // tg: weights + mean KV
  double gflops = 0;                    // pp: layer matmul FLOP/s (1e9)
  Checksum ck;
  bool ck_stable = true;
};

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

int run_membw(const BenchArgs& a, tools::MembwResult* out) {
  tools::MembwOptions o;
  o.size_bytes = size_t(a.membw_mib * 1048576.0);
  o.n_threads = a.threads;
  o.n_runs = a.reps;
  o.huge_pages = a.membw_huge;
  tools::MembwResult r = tools::measure_read_bandwidth(o);
  if (a.json) {
    std::printf("{\"test\": \"membw\", \"kernel\": \"%s\", \"threads\": %d, \"size_bytes\": %zu, "
                "\"huge_pages\": %s, \"runs\": %zu, \"best_gbps\": %.3f, \"mean_gbps\": %.3f, "
                "\"checksum\": \"%016llx\"}\n",
                r.kernel.c_str(), r.n_threads, r.size_bytes, r.huge_pages ? "true" : "false",
                r.run_gbps.size(), r.best_gbps,
                r.mean_gbps, (unsigned long long)r.checksum);
  } else {
    std::printf("membw: streaming read, %s kernel, %d threads, %.0f MiB buffer%s, best of %zu: "
                "%.2f GB/s (mean %.2f GB/s)\n",
                r.kernel.c_str(), r.n_threads, double(r.size_bytes) / 1048576.0,
                r.huge_pages ? " (huge pages)" : "",
                r.run_gbps.size(), r.best_gbps, r.mean_gbps);
  }
  std::fflush(stdout);
  if (out) *out = r;
  return 0;
}

engine::ContextParams context_params(const BenchArgs& a, uint32_t n_ctx) {
  engine::ContextParams cp;
  cp.n_threads = uint32_t(a.threads);
  cp.n_ctx = n_ctx;
  if (a.opt_budget->count()) cp.budget_tokens = a.kv_budget;
  if (a.opt_ratio->count()) cp.kv_ratio = a.kv_ratio;
  if (a.opt_mem->count()) cp.kv_mem_bytes = parse_bytes(a.kv_mem);
  if (!quant::parse_dtype(a.kv_type, &cp.kv_type))
    throw std::invalid_argument("--kv-type: unknown type " + a.kv_type);
  if (!evict::parse_policy(a.kv_policy, &cp.evict.policy))
    throw std::invalid_argument("--kv-policy: unknown policy " + a.kv_policy);
  const bool has_budget = cp.budget_tokens || cp.kv_ratio || cp.kv_mem_bytes;
  if (!has_budget && a.opt_policy->count() && cp.evict.policy != evict::Policy::full)
    throw std::invalid_argument("--kv-policy " + a.kv_policy +
                                " needs a KV budget (--kv-budget, --kv-ratio or --kv-mem)");
  if (!has_budget) cp.evict.policy = evict::Policy::full;
  if (!a.kv_schedule.empty()) {
    engine::Schedule s;
    if (!engine::parse_schedule(a.kv_schedule, &s))
      throw std::invalid_argument("--kv-schedule: unknown schedule " + a.kv_schedule);
    cp.schedule = s;
  }
  cp.evict.window = uint32_t(a.kv_window);
  cp.evict.kernel = uint32_t(a.kv_pool);
  cp.evict.n_sink = uint32_t(a.kv_sinks);
  cp.evict.running_max = a.running_max;
  cp.chunk_tokens = uint32_t(a.chunk);
  return cp;
}

// Deterministic prompt: BOS then pseudo-random ids (llama-bench also uses
// random tokens), avoiding the control ids 0..2.
std::vector<int32_t> synthetic_prompt(uint32_t n, uint32_t n_vocab, uint32_t salt) {
  std::vector<int32_t> t(n);
  uint64_t s = 0x9E3779B97F4A7C15ULL * (salt + 1);
  for (uint32_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    t[i] = i == 0 ? 1 : int32_t(3 + (s >> 33) % (n_vocab > 3 ? n_vocab - 3 : 1));
  }
  return t;
}

int run_model_bench(const BenchArgs& a) {
  if (a.reps < 1) throw std::invalid_argument("bench: -r must be >= 1");
  if (a.n_prompt < 0 || a.n_gen < 0 || a.depth < 0)
    throw std::invalid_argument("bench: -p, -n and -d must be >= 0");
  if (a.threads > 0) omp_set_num_threads(a.threads);
  std::optional<tools::MembwResult> membw;
  if (a.membw) {
    tools::MembwResult r;
    run_membw(a, &r);
    membw = r;
  }
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) < 1) load[0] = -1;

  auto model = model::Model::load(a.model);
  const model::Config& mc = model->config();
  const uint32_t n_threads = a.threads > 0 ? uint32_t(a.threads) : uint32_t(omp_get_max_threads());
  const uint32_t n_ctx =
      uint32_t(std::max(a.n_prompt, a.depth + a.n_gen + 1)) + 16;
  const engine::ContextParams cp = context_params(a, n_ctx);
  engine::Context ctx(*model, cp);
  const uint64_t w_tok = weight_bytes_per_token(*model);
  const uint64_t macs_tok = layer_macs_per_token(*model);
  const size_t kv_row_bytes = ctx.cache().row_bytes();

  const std::string mname = model->file().find("general.name")
                                ? model->file().get_string("general.name")
                                : a.model;
  const char* wtype = quant::dtype_name(model->layer(0).wq.type);
  std::fprintf(stderr,
               "bench: %s, %s weights, %.2f GiB mapped, %u threads, KV %s, %s; load average "
               "%.2f %.2f %.2f\n",
               mname.c_str(), wtype, double(model->weight_bytes()) / 1073741824.0, n_threads,
               quant::dtype_name(cp.kv_type),
               ctx.has_budget() ? (std::string("budget, policy ") +
                                   evict::policy_name(cp.evict.policy))
                                      .c_str()
                                : "full cache",
               load[0], load[1], load[2]);

  text::SamplerParams sp;
  sp.seed = 1234;
  std::vector<TestResult> results;

  // ---- pp: one eval() of n_prompt tokens from an empty cache ----
  if (a.n_prompt > 0) {
    TestResult r;
    r.name = "pp" + std::to_string(a.n_prompt);
    const auto prompt = synthetic_prompt(uint32_t(a.n_prompt), mc.n_vocab, 0);
    double secs = 0, ev = 0;
    for (int rep = -1; rep < a.reps; ++rep) {  // rep -1: warm-up (page in the weights)
      ctx.reset();
      const double ev0 = ctx.stats().evict_seconds;
      const auto t0 = Clock::now();
      auto logits = ctx.eval(prompt);
      const double s = since(t0);
      const Checksum c = checksum(logits);
      if (rep < 0) {
        r.ck = c;
        continue;
      }
      if (c.hash != r.ck.hash) r.ck_stable = false;
      r.tok_s.push_back(double(a.n_prompt) / s);
      secs += s;
      ev += ctx.stats().evict_seconds - ev0;
    }
    r.seconds_mean = secs / a.reps;
    r.evict_s = ev / a.reps;
    r.gflops = 2.0 * double(macs_tok) * a.n_prompt / r.seconds_mean / 1e9;
    if (!a.no_breakdown) {
      const uint32_t chunk = std::min<uint32_t>(ctx.chunk_tokens() ? ctx.chunk_tokens() : 256,
                                                uint32_t(a.n_prompt));
      Replay rp(*model, chunk);
      rp.matmuls(chunk, false);  // warm
      const double scale = double(a.n_prompt) / chunk;
      r.matmul_s = rp.matmuls(chunk, false) * scale;
      r.norms_s = rp.norms(chunk) * scale;
    }
    results.push_back(std::move(r));
  }

  // ---- tg: n_gen single-token steps after BOS (+ depth prompt tokens) ----
  if (a.n_gen > 0) {
    TestResult r;
    r.name = "tg" + std::to_string(a.n_gen);
    if (a.depth > 0) r.name += " @ d" + std::to_string(a.depth);
    const auto prefix = synthetic_prompt(uint32_t(a.depth) + 1, mc.n_vocab, 1);
    double secs = 0, samp = 0, ev = 0, bytes_sum = 0;
    for (int rep = -1; rep < a.reps; ++rep) {
      ctx.reset();
      text::Sampler sampler(sp);
      auto logits = ctx.eval(prefix);
      int32_t tok = sampler.sample(logits);
      const double ev0 = ctx.stats().evict_seconds;
      double s_samp = 0, kv_bytes = 0;
      const auto t0 = Clock::now();
      for (int i = 0; i < a.n_gen; ++i) {
        logits = ctx.step(tok);
        // KV read by this step: K and V rows of every live entry.
        kv_bytes += 2.0 * double(ctx.cache().entries()) * double(kv_row_bytes);
        const auto ts = Clock::now();
        tok = sampler.sample(logits);
        s_samp += since(ts);
      }
      const double s = since(t0);
      const Checksum c = checksum(logits);
      if (rep < 0) {
        r.ck = c;
        continue;
      }
      if (c.hash != r.ck.hash) r.ck_stable = false;
      const double bytes = double(w_tok) * a.n_gen + kv_bytes;
      r.tok_s.push_back(double(a.n_gen) / s);
      r.gbps.push_back(bytes / s / 1e9);
      secs += s;
      samp += s_samp;
      ev += ctx.stats().evict_seconds - ev0;
      bytes_sum += bytes / a.n_gen;
    }
    r.seconds_mean = secs / a.reps;
    r.sampling_s = samp / a.reps;
    r.evict_s = ev / a.reps;
    r.bytes_per_token = bytes_sum / a.reps;
    if (!a.no_breakdown) {
      Replay rp(*model, 1);
      rp.matmuls(1, true);
      double best = 1e30;
      for (int i = 0; i < 3; ++i) best = std::min(best, rp.matmuls(1, true));
      r.matmul_s = best * a.n_gen;
      r.norms_s = rp.norms(1) * a.n_gen;
    }
    results.push_back(std::move(r));
  }

  // ---- report ----
  const double size_gib = double(model->file().bytes().size()) / 1073741824.0;
  const double params_b = double(macs_tok + uint64_t(mc.n_vocab) * mc.n_embd *
                                                (mc.tied_output ? 1 : 2)) / 1e9;
  if (!a.json) {
    std::printf("| model | size | params | type | threads | kv | test | t/s | GB/s |\n");
    std::printf("| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: |\n");
  }
  for (const TestResult& r : results) {
    const MeanSd ts = mean_sd(r.tok_s), gb = mean_sd(r.gbps);
    const double total = r.seconds_mean;
    const double rest = std::max(0.0, total - r.matmul_s - r.norms_s - r.sampling_s - r.evict_s);
    if (a.json) {
      std::printf("{\"test\": \"%s\", \"model\": \"%s\", \"type\": \"%s\", \"threads\": %u, "
                  "\"kv_type\": \"%s\", \"budget\": %s, \"reps\": %d, \"tok_s_mean\": %.3f, "
                  "\"tok_s_sd\": %.3f, \"seconds_mean\": %.6f",
                  r.name.c_str(), json_escape(mname).c_str(), wtype, n_threads,
                  quant::dtype_name(cp.kv_type), ctx.has_budget() ? "true" : "false", a.reps,
                  ts.mean, ts.sd, total);
      if (!r.gbps.empty())
        std::printf(", \"gbps_mean\": %.3f, \"gbps_sd\": %.3f, \"bytes_per_token\": %.0f",
                    gb.mean, gb.sd, r.bytes_per_token);
      if (r.gflops > 0) std::printf(", \"matmul_gflops\": %.2f", r.gflops);
      if (membw && !r.gbps.empty())
        std::printf(", \"membw_gbps\": %.3f, \"membw_fraction\": %.4f", membw->best_gbps,
                    gb.mean / membw->best_gbps);
      if (!a.no_breakdown)
        std::printf(", \"breakdown_s\": {\"matmul\": %.6f, \"norms\": %.6f, \"sampling\": %.6f, "
                    "\"eviction\": %.6f, \"attention_rest\": %.6f}",
                    r.matmul_s, r.norms_s, r.sampling_s, r.evict_s, rest);
      std::printf(", \"logits_sum\": %.9g, \"logits_hash\": \"%016llx\", \"logits_stable\": %s}\n",
                  r.ck.sum, (unsigned long long)r.ck.hash, r.ck_stable ? "true" : "false");
      continue;
    }
    char gbs[64] = "";
    if (!r.gbps.empty()) std::snprintf(gbs, sizeof gbs, "%.2f ± %.2f", gb.mean, gb.sd);
    char size_s[32], params_s[32];
    if (size_gib >= 1.0) std::snprintf(size_s, sizeof size_s, "%.2f GiB", size_gib);
    else std::snprintf(size_s, sizeof size_s, "%.2f MiB", size_gib * 1024.0);
    if (params_b >= 1.0) std::snprintf(params_s, sizeof params_s, "%.2f B", params_b);
    else std::snprintf(params_s, sizeof params_s, "%.2f M", params_b * 1000.0);
    std::printf("| %s | %s | %s | %s | %u | %s%s | %s | %.2f ± %.2f | %s |\n",
                mname.c_str(), size_s, params_s, wtype, n_threads,
                quant::dtype_name(cp.kv_type), ctx.has_budget() ? " budget" : "",
                r.name.c_str(), ts.mean, ts.sd, gbs);
  }
  if (a.json) return 0;
  std::printf("\n");
  for (const TestResult& r : results) {
    const double total = r.seconds_mean;
    std::printf("%s: %.3f s per repetition", r.name.c_str(), total);
    if (r.bytes_per_token > 0)
      std::printf(", %.1f MiB read per token (weights %.1f MiB + KV %.2f MiB mean)",
                  r.bytes_per_token / 1048576.0, double(w_tok) / 1048576.0,
                  (r.bytes_per_token - double(w_tok)) / 1048576.0);
    if (r.gflops > 0) std::printf(", layer matmuls %.1f GFLOP/s", r.gflops);
    std::printf("\n");
    if (membw && !r.gbps.empty())
      std::printf("  achieved / membw: %.2f / %.2f GB/s = %.1f%%\n", mean_sd(r.gbps).mean,
                  membw->best_gbps, 100.0 * mean_sd(r.gbps).mean / membw->best_gbps);
    if (!a.no_breakdown && total > 0) {
      const double rest =
          std::max(0.0, total - r.matmul_s - r.norms_s - r.sampling_s - r.evict_s);
      auto pct = [&](double s) { return 100.0 * s / total; };
      std::printf("  breakdown (est.): matmul %.1f%%  norms %.1f%%  sampling %.1f%%  eviction "
                  "%.1f%%  attention+rest %.1f%%\n",
                  pct(r.matmul_s), pct(r.norms_s), pct(r.sampling_s), pct(r.evict_s), pct(rest));
    }
    std::printf("  logits checksum: sum %.9g  hash %016llx%s\n", r.ck.sum,
                (unsigned long long)r.ck.hash,
                r.ck_stable ? " (identical in every repetition)" : " (DIFFERS between repetitions)");
  }
  return 0;
}

int run_bench(const BenchArgs& a) {
  if (!a.model.empty()) return run_model_bench(a);
  if (a.membw) {
    if (a.threads > 0) omp_set_num_threads(a.threads);
    return run_membw(a, nullptr);
  }
  throw std::invalid_argument("bench: give -m MODEL and/or --membw");
}

}  // namespace

Handler register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* c = app.add_subcommand(
      "bench", "Benchmark a model (pp/tg tok/s, GB/s, op breakdown) and/or memory bandwidth");
  c->footer(
      "pp: one eval() of -p synthetic tokens from an empty cache. tg: -n single-token steps "
      "(sampled, seeded) after BOS and -d depth tokens. Each test runs once untimed (warm-up), "
      "then -r timed repetitions: mean ± sd. GB/s (tg) = (weight bytes per token + K/V bytes "
      "of every live entry) / time. The op breakdown replays the model's matmuls and norms "
      "(an estimate; attention+rest is the remainder). With --membw and -m the probe runs "
      "first and tg GB/s is shown as a fraction of it.");
  c->add_flag("--membw", a->membw,
              "Measure memory read bandwidth (streaming read of a buffer much larger than the "
              "last-level cache, AVX-512 when available, all threads, best of -r runs)");
  c->add_option("--membw-mib", a->membw_mib, "Probe buffer size in MiB")->capture_default_str();
  c->add_flag("--membw-hugepages", a->membw_huge,
              "Probe buffer on transparent huge pages (default: 4 KiB pages, like the model's "
              "file mapping)");
  c->add_option("-m,--model", a->model, "GGUF model")->check(CLI::ExistingFile);
  c->add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens for the pp test (0: skip)")
      ->capture_default_str();
  c->add_option("-n,--n-gen", a->n_gen, "Generated tokens for the tg test (0: skip)")
      ->capture_default_str();
  c->add_option("-d,--depth", a->depth, "Prompt tokens in the cache before tg")
      ->capture_default_str();
  c->add_option("-r,--reps", a->reps, "Repetitions")->capture_default_str();
  c->add_option("-t,--threads", a->threads, "Threads (default: all cores)");
  c->add_flag("--json", a->json, "One JSON object per test instead of a table");
  c->add_flag("--no-breakdown", a->no_breakdown, "Skip the op-breakdown replay");
  a->opt_budget = c->add_option("--kv-budget", a->kv_budget,
                                "KV budget in tokens per (layer, KV head); enables eviction")
                      ->check(CLI::PositiveNumber);
  a->opt_ratio = c->add_option("--kv-ratio", a->kv_ratio, "KV budget as the fraction of the prompt kept")
                     ->check(CLI::Range(1e-9, 1.0));
  a->opt_mem = c->add_option("--kv-mem", a->kv_mem, "KV budget as pool memory, e.g. 256M");
  a->opt_budget->excludes(a->opt_ratio)->excludes(a->opt_mem);
  a->opt_ratio->excludes(a->opt_mem);
  c->add_option("--kv-type", a->kv_type, "KV cache element type")
      ->check(CLI::IsMember({"f16", "f32", "q8_0"}))
      ->capture_default_str();
  a->opt_policy = c->add_option("--kv-policy", a->kv_policy, "Eviction policy (needs a budget)")
                      ->check(CLI::IsMember({"full", "streaming", "snapkv", "adakv", "criticalkv",
                                             "defensivekv", "layer-defensivekv"}));
  c->add_option("--kv-schedule", a->kv_schedule, "oneshot | bounded")
      ->check(CLI::IsMember({"oneshot", "bounded"}));
  c->add_option("--kv-window", a->kv_window, "Observation window")->check(CLI::PositiveNumber);
  c->add_option("--kv-pool", a->kv_pool, "Score pooling kernel (odd)")->check(CLI::PositiveNumber);
  c->add_option("--kv-sinks", a->kv_sinks, "Streaming sinks")->check(CLI::NonNegativeNumber);
  c->add_option("--chunk", a->chunk, "Prefill chunk in tokens (0: engine default)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("--kv-running-max", a->running_max, "Defensive policies: running max (experimental)");
  return [a] { return run_bench(*a); };
}

}  // namespace defkv::cli
