// defkv bench: memory-bandwidth probe (--membw) and llama-bench-style model
// throughput through the C API (defkv.h): pp (prompt processing, -p tokens in
// one defkv_eval) and tg (token generation, -n single-token defkv_decode
// steps with defkv_sample, after BOS and -d depth tokens), mean +- sd over -r
// repetitions, the bandwidth decode achieves (weight + KV bytes read per
// token / time), eviction time (measured: defkv_get_kv_stats) as a share of
// each test, peak RSS, an estimated breakdown by op, and a checksum of the
// logits.
//
// Op breakdown (--no-breakdown skips it): an estimate outside the library
// (tools/bench_replay.h): the model's matrices, viewed in the GGUF, are packed
// with quant::pack_for_gemm and replayed through quant::matmul_packed (the
// model's kernels) for one step's worth of work (decode: 1 token + the head;
// prefill: one chunk of the context's batch size, scaled to -p), the norms
// through simd rmsnorm, and with a value-weighted policy (criticalkv,
// defensivekv, layer-defensivekv) the prefill's value norms through
// quant::value_norms on W_o; sampling is timed in the loop; eviction is
// measured; "attention+rest" is the remainder (attention, RoPE, KV append, SwiGLU,
// residual adds). Peak RSS is read before the replay packs its copies.
#include <CLI/CLI.hpp>
#include <sys/resource.h>

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

#include "runtime/api/defkv.h"
#include "runtime/evict/evict.h"
#include "tools/api_util.h"
#include "tools/bench_replay.h"
#include "tools/commands.h"
#include "tools/kv_flags.h"
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
  bool vs_full = false;
  KvFlags kv;
};

defkv_kv_stats kv_stats(defkv_context* c) {
  defkv_kv_stats s{};
  check(defkv_get_kv_stats(c, &s), c);
  return s;
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


struct TestResult {
  std::string name;            // "pp512", "tg128 @ d4096"
  std::vector<double> tok_s;   // per repetition
  std::vector<double> gbps;    // tg: bytes read per second
  double seconds_mean = 0;
  double sampling_s = 0, evict_s = 0;   // per repetition (mean), measured
  uint32_t evict_rounds = 0;            // per repetition (last)
  double matmul_s = 0, norms_s = 0;     // replay estimates for one repetition
  double vnorm_s = 0;                   // pp: value norms computed in the forward (replay estimate)
  double bytes_per_token = 0;           // tg: weights + mean KV
  double gflops = 0;                    // pp: layer matmul FLOP/s (1e9)
  uint64_t kv_entries_end = 0;          // live entries after the last repetition
  uint32_t replay_tokens = 0;           // tokens per replayed matmul batch
  bool decode = false;
  bool budget = false;                  // run on the context with the KV budget
  Checksum ck;
  bool ck_stable = true;
};

Checksum logits_checksum(defkv_context* c, std::vector<float>& buf) {
  size_t n = 0;
  check(defkv_get_logits(c, buf.data(), buf.size(), &n), c);
  return checksum(std::span<const float>(buf.data(), n));
}

int run_model_bench(const BenchArgs& a) {
  if (a.reps < 1) throw std::invalid_argument("bench: -r must be >= 1");
  if (a.n_prompt < 0 || a.n_gen < 0 || a.depth < 0)
    throw std::invalid_argument("bench: -p, -n and -d must be >= 0");
  if (a.vs_full && (!a.kv.has_budget() || a.n_gen == 0))
    throw std::invalid_argument("bench: --vs-full compares tg (-n > 0) with a KV budget (--kv-budget, --kv-ratio or "
                                "--kv-mem) against the full cache");
  if (a.threads > 0) omp_set_num_threads(a.threads);
  std::optional<tools::MembwResult> membw;
  if (a.membw) {
    tools::MembwResult r;
    run_membw(a, &r);
    membw = r;
  }
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) < 1) load[0] = -1;

  defkv_context_params p;
  defkv_context_params_init(&p);
  p.n_threads = uint32_t(std::max(a.threads, 0));
  p.n_ctx = uint32_t(std::max(a.n_prompt, a.depth + a.n_gen + 1)) + 16;
  p.seed = 1234;
  apply_kv_flags(a.kv, &p);

  ModelHandle model;
  check(defkv_model_load_file(a.model.c_str(), &model.m));
  defkv_model_info mi{};
  check(defkv_model_get_info(model.m, &mi));
  ContextHandle ctx;
  check(defkv_context_create(model.m, &p, &ctx.c));
  defkv_context_info info{};
  info.struct_size = sizeof info;
  check(defkv_context_get_info(ctx.c, &info), ctx.c);
  defkv_context* c = ctx.c;

  // Sizes and names from the GGUF's metadata (its tensors' pages are not read).
  const GgufWeights weights = GgufWeights::open(a.model);
  const uint64_t w_tok = weights.bytes_per_token();
  const uint64_t macs_tok = weights.layer_macs_per_token();
  const std::string mname = weights.file->find("general.name") ? weights.file->get_string("general.name") : a.model;
  const char* wtype = quant::dtype_name(weights.layers[0][0].type);
  const bool budget = info.has_budget != 0;
  const std::string kv_desc =
      budget ? std::string("budget ") +
                   (a.kv.opt_ratio->count()   ? "ratio " + std::to_string(a.kv.ratio).substr(0, 6)
                    : a.kv.opt_mem->count()   ? "mem " + a.kv.mem
                                              : std::to_string(a.kv.budget_tokens) + " tok/head") +
                   ", policy " + a.kv.policy + ", " +
                   (info.kv_schedule == DEFKV_SCHEDULE_BOUNDED ? "bounded" : "oneshot")
             : std::string("full cache");
  std::fprintf(stderr,
               "bench: %s, %s weights, %.2f GiB mapped, %u threads, KV %s, %s, prefill chunk %u; load average "
               "%.2f %.2f %.2f\n",
               mname.c_str(), wtype, double(mi.weight_bytes) / 1073741824.0, info.n_threads,
               kv_type_name(info.kv_type), kv_desc.c_str(), info.prefill_chunk_tokens, load[0], load[1], load[2]);

  std::vector<float> logits(mi.n_vocab);
  std::vector<TestResult> results;

  // ---- pp: one defkv_eval of n_prompt tokens from an empty cache ----
  if (a.n_prompt > 0) {
    TestResult r;
    r.budget = budget;
    r.name = "pp" + std::to_string(a.n_prompt);
    const auto prompt = synthetic_prompt(uint32_t(a.n_prompt), mi.n_vocab, 0);
    double secs = 0, ev = 0;
    for (int rep = -1; rep < a.reps; ++rep) {  // rep -1: warm-up (page in the weights)
      check(defkv_reset(c), c);               // also zeroes the stats
      const auto t0 = Clock::now();
      check(defkv_eval(c, prompt.data(), prompt.size(), nullptr, nullptr), c);
      const double s = since(t0);
      const Checksum ck = logits_checksum(c, logits);
      const defkv_kv_stats st = kv_stats(c);
      if (rep < 0) {
        r.ck = ck;
        continue;
      }
      if (ck.hash != r.ck.hash) r.ck_stable = false;
      r.tok_s.push_back(double(a.n_prompt) / s);
      secs += s;
      ev += st.evict_seconds;
      r.evict_rounds = st.evict_rounds;
      r.kv_entries_end = st.entries;
    }
    r.seconds_mean = secs / a.reps;
    r.evict_s = ev / a.reps;
    r.gflops = 2.0 * double(macs_tok) * a.n_prompt / r.seconds_mean / 1e9;
    r.replay_tokens = std::min<uint32_t>(info.prefill_chunk_tokens, uint32_t(a.n_prompt));
    results.push_back(std::move(r));
  }

  // ---- tg: n_gen single-token decode steps after BOS (+ depth prompt tokens) ----
  // With a depth, the prefix is evaluated once and every repetition (and the
  // warm-up) starts from its saved state: a long prefix is not re-evaluated.
  auto run_tg = [&](defkv_context* cx, bool with_budget) {
    TestResult r;
    r.decode = true;
    r.budget = with_budget;
    r.name = "tg" + std::to_string(a.n_gen);
    if (a.depth > 0) r.name += " @ d" + std::to_string(a.depth);
    if (a.vs_full && !with_budget) r.name += " full cache";
    const auto prefix = synthetic_prompt(uint32_t(a.depth) + 1, mi.n_vocab, 1);
    std::vector<uint8_t> state;
    if (a.depth > 0) {
      check(defkv_reset(cx), cx);
      check(defkv_eval(cx, prefix.data(), prefix.size(), nullptr, nullptr), cx);
      size_t n = 0;
      check(defkv_state_size(cx, &n), cx);
      state.resize(n);
      check(defkv_state_save(cx, state.data(), state.size(), &n), cx);
      state.resize(n);
    }
    double secs = 0, samp = 0, ev = 0, bytes_sum = 0;
    for (int rep = -1; rep < a.reps; ++rep) {
      if (a.depth > 0) {
        check(defkv_state_load(cx, state.data(), state.size()), cx);
      } else {
        check(defkv_reset(cx), cx);
        check(defkv_eval(cx, prefix.data(), prefix.size(), nullptr, nullptr), cx);
      }
      int32_t tok = 0;
      check(defkv_sample(cx, &tok), cx);
      const defkv_kv_stats st0 = kv_stats(cx);
      double s_samp = 0, kv_bytes = 0;
      const auto t0 = Clock::now();
      for (int i = 0; i < a.n_gen; ++i) {
        check(defkv_decode(cx, tok), cx);
        // KV read by this step: K and V rows of every live entry.
        kv_bytes += 2.0 * double(kv_stats(cx).entries) * double(info.kv_row_bytes);
        const auto ts = Clock::now();
        check(defkv_sample(cx, &tok), cx);
        s_samp += since(ts);
      }
      const double s = since(t0);
      const Checksum ck = logits_checksum(cx, logits);
      const defkv_kv_stats st = kv_stats(cx);
      if (rep < 0) {
        r.ck = ck;
        continue;
      }
      if (ck.hash != r.ck.hash) r.ck_stable = false;
      const double bytes = double(w_tok) * a.n_gen + kv_bytes;
      r.tok_s.push_back(double(a.n_gen) / s);
      r.gbps.push_back(bytes / s / 1e9);
      secs += s;
      samp += s_samp;
      ev += st.evict_seconds - st0.evict_seconds;
      r.evict_rounds = st.evict_rounds - st0.evict_rounds;
      r.kv_entries_end = st.entries;
      bytes_sum += bytes / a.n_gen;
    }
    r.seconds_mean = secs / a.reps;
    r.sampling_s = samp / a.reps;
    r.evict_s = ev / a.reps;
    r.bytes_per_token = bytes_sum / a.reps;
    r.replay_tokens = 1;
    return r;
  };
  if (a.n_gen > 0) results.push_back(run_tg(c, budget));
  // --vs-full: the same tg test on a full-cache context of the same model
  if (a.n_gen > 0 && a.vs_full && budget) {
    defkv_context_params pf = p;
    pf.kv_budget_tokens = 0;
    pf.kv_ratio = 0;
    pf.kv_mem_bytes = 0;
    ContextHandle full;
    check(defkv_context_create(model.m, &pf, &full.c));
    results.push_back(run_tg(full.c, false));
  }
  // Peak RSS of the timed tests: before the replay packs its own copies.
  const double rss_mib = peak_rss_mib();

  // ---- op-breakdown estimate (replay) ----
  auto uses_vnorm = [](int32_t pol) {
    evict::Policy p;
    const char* name = defkv_kv_policy_name(pol);
    return name && evict::parse_policy(name, &p) && evict::traits(p).value_norms;
  };
  const bool vnorm_policy = budget && uses_vnorm(info.kv_policy);
  if (!a.no_breakdown && !results.empty()) {
    uint32_t max_tokens = 1;
    for (const TestResult& r : results) max_tokens = std::max(max_tokens, r.replay_tokens);
    Replay rp(weights, max_tokens);
    for (TestResult& r : results) {
      if (r.decode) {
        rp.matmuls(1, true);  // warm
        double best = 1e30;
        for (int i = 0; i < 3; ++i) best = std::min(best, rp.matmuls(1, true));
        r.matmul_s = best * a.n_gen;
        r.norms_s = rp.norms(1) * a.n_gen;
      } else {
        const uint32_t chunk = r.replay_tokens;
        rp.matmuls(chunk, false);  // warm
        const double scale = double(a.n_prompt) / chunk;
        r.matmul_s = rp.matmuls(chunk, false) * scale;
        r.norms_s = rp.norms(chunk) * scale;
        // The value-weighted policies' norms: one W_o pass per prefill chunk
        // (decoding defers them into the eviction rounds, measured above).
        if (vnorm_policy) {  // best of 3: one pass is short and noisy
          double best = 1e30;
          for (int i = 0; i < 3; ++i) best = std::min(best, rp.value_norms(chunk, mi.n_head_kv, mi.head_dim));
          r.vnorm_s = best * scale;
        }
      }
    }
  }

  // ---- report ----
  const double size_gib = double(weights.file->bytes().size()) / 1073741824.0;
  const double params_b = double(weights.n_params()) / 1e9;
  const char* kvt = kv_type_name(info.kv_type);
  if (!a.json) {
    std::printf("| model | size | params | type | threads | kv | test | t/s | GB/s | evict %% | peak RSS |\n");
    std::printf("| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |\n");
  }
  for (const TestResult& r : results) {
    const MeanSd ts = mean_sd(r.tok_s), gb = mean_sd(r.gbps);
    const double total = r.seconds_mean;
    const double evict_share = total > 0 ? r.evict_s / total : 0;
    const double rest = std::max(0.0, total - r.matmul_s - r.norms_s - r.sampling_s - r.evict_s - r.vnorm_s);
    if (a.json) {
      std::printf("{\"test\": \"%s\", \"model\": \"%s\", \"type\": \"%s\", \"threads\": %u, "
                  "\"kv_type\": \"%s\", \"budget\": %s, \"kv\": \"%s\", \"reps\": %d, \"n_prompt\": %d, "
                  "\"n_gen\": %d, \"depth\": %d, \"tok_s_mean\": %.3f, \"tok_s_sd\": %.3f, \"seconds_mean\": %.6f, "
                  "\"evict_seconds_mean\": %.6f, \"evict_fraction\": %.4f, \"evict_rounds\": %u, "
                  "\"kv_entries_end\": %llu, \"kv_bytes_reserved\": %llu, \"peak_rss_mib\": %.1f",
                  r.name.c_str(), json_escape(mname).c_str(), wtype, info.n_threads, kvt, r.budget ? "true" : "false",
                  json_escape(r.budget ? kv_desc : std::string("full cache")).c_str(), a.reps, a.n_prompt, a.n_gen, a.depth, ts.mean, ts.sd, total,
                  r.evict_s, evict_share, r.evict_rounds, (unsigned long long)r.kv_entries_end,
                  (unsigned long long)info.kv_bytes_reserved, rss_mib);
      if (!r.gbps.empty())
        std::printf(", \"gbps_mean\": %.3f, \"gbps_sd\": %.3f, \"bytes_per_token\": %.0f",
                    gb.mean, gb.sd, r.bytes_per_token);
      if (r.gflops > 0) std::printf(", \"matmul_gflops\": %.2f", r.gflops);
      if (membw && !r.gbps.empty())
        std::printf(", \"membw_gbps\": %.3f, \"membw_fraction\": %.4f", membw->best_gbps,
                    gb.mean / membw->best_gbps);
      if (!a.no_breakdown)
        std::printf(", \"breakdown_s\": {\"matmul\": %.6f, \"norms\": %.6f, \"sampling\": %.6f, "
                    "\"eviction\": %.6f, \"value_norms\": %.6f, \"attention_rest\": %.6f}",
                    r.matmul_s, r.norms_s, r.sampling_s, r.evict_s, r.vnorm_s, rest);
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
    std::printf("| %s | %s | %s | %s | %u | %s%s | %s | %.2f ± %.2f | %s | %.1f | %.1f MiB |\n", mname.c_str(),
                size_s, params_s, wtype, info.n_threads, kvt, r.budget ? " budget" : "", r.name.c_str(), ts.mean, ts.sd,
                gbs, 100.0 * evict_share, rss_mib);
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
    if (r.budget)
      std::printf("  eviction (measured): %.4f s = %.1f%% of the %s time, %u rounds; %llu KV entries live at the end\n",
                  r.evict_s, total > 0 ? 100.0 * r.evict_s / total : 0.0, r.decode ? "decode" : "prefill",
                  r.evict_rounds, (unsigned long long)r.kv_entries_end);
    if (membw && !r.gbps.empty())
      std::printf("  achieved / membw: %.2f / %.2f GB/s = %.1f%%\n", mean_sd(r.gbps).mean,
                  membw->best_gbps, 100.0 * mean_sd(r.gbps).mean / membw->best_gbps);
    if (!a.no_breakdown && total > 0) {
      const double rest =
          std::max(0.0, total - r.matmul_s - r.norms_s - r.sampling_s - r.evict_s - r.vnorm_s);
      auto pct = [&](double s) { return 100.0 * s / total; };
      std::printf("  breakdown (est.): matmul %.1f%%  norms %.1f%%  sampling %.1f%%  eviction "
                  "%.1f%%  ",
                  pct(r.matmul_s), pct(r.norms_s), pct(r.sampling_s), pct(r.evict_s));
      if (r.vnorm_s > 0) std::printf("value norms %.1f%%  ", pct(r.vnorm_s));
      std::printf("attention+rest %.1f%%\n", pct(rest));
    }
    std::printf("  logits checksum: sum %.9g  hash %016llx%s\n", r.ck.sum,
                (unsigned long long)r.ck.hash,
                r.ck_stable ? " (identical in every repetition)" : " (DIFFERS between repetitions)");
  }
  if (a.vs_full && budget && results.size() >= 2 && results.back().decode && !results.back().budget) {
    const double with = mean_sd(results[results.size() - 2].tok_s).mean, without = mean_sd(results.back().tok_s).mean;
    std::printf("tg with the budget / full cache, same run: %.2f / %.2f tok/s = %.2fx\n", with, without,
                without > 0 ? with / without : 0.0);
  }
  std::printf("peak RSS %.1f MiB (KV pool %.2f MiB)\n", rss_mib, double(info.kv_bytes_reserved) / 1048576.0);
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
      "bench", "Benchmark a model (pp/tg tok/s, GB/s, eviction share, peak RSS, op breakdown) and/or memory bandwidth");
  c->footer(
      "pp: one defkv_eval of -p synthetic tokens from an empty cache. tg: -n single-token defkv_decode steps "
      "(sampled, seeded) after BOS and -d depth tokens (evaluated once; every repetition starts from their "
      "saved state). Each test runs once untimed (warm-up), "
      "then -r timed repetitions: mean ± sd. GB/s (tg) = (weight bytes per token + K/V bytes "
      "of every live entry) / time. evict % = measured eviction time / test time. Peak RSS "
      "(getrusage) covers load and the timed tests; run one process per size to compare sizes. "
      "The op breakdown replays the model's matmuls (packed, as the model runs them), norms "
      "and, for criticalkv / defensivekv / layer-defensivekv, the prefill's value-projection norms "
      "(an estimate; attention+rest is the remainder). With --membw and -m the probe runs "
      "first and tg GB/s is shown as a fraction of it.");
  c->add_flag("--membw", a->membw,
              "Measure memory read bandwidth (streaming read of a buffer much larger than the "
              "last-level cache, AVX-512 when available, all threads, best of -r runs)");
  c->add_option("--membw-mib", a->membw_mib, "Probe buffer size in MiB")
      ->capture_default_str()
      ->check(CLI::Range(1.0 / 256, 1048576.0));  // 4 KiB (a page) to 1 TiB
  c->add_flag("--membw-hugepages", a->membw_huge,
              "Probe buffer on transparent huge pages (default: 4 KiB pages, like the model's "
              "file mapping)");
  c->add_option("-m,--model", a->model, "GGUF model")->check(CLI::ExistingFile);
  c->add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens for the pp test (0: skip)")
      ->capture_default_str();
  c->add_option("-n,--n-gen", a->n_gen, "Generated tokens for the tg test (0: skip)")
      ->capture_default_str();
  c->add_option("-d,--depth", a->depth, "Prompt tokens in the cache before tg (decode speed at depth)")
      ->capture_default_str();
  c->add_option("-r,--reps", a->reps, "Repetitions")->capture_default_str();
  c->add_option("-t,--threads", a->threads, "Threads (default: all cores)");
  c->add_flag("--json", a->json, "One JSON object per test instead of a table");
  c->add_flag("--no-breakdown", a->no_breakdown, "Skip the op-breakdown replay (it packs a copy of the weights)");
  c->add_flag("--vs-full", a->vs_full,
              "With a KV budget: also run the tg test on a full-cache context of the same model (same prompt "
              "and depth) and print the speed ratio budget / full");
  add_kv_flags(c, a->kv);
  return [a] { return run_bench(*a); };
}

}  // namespace defkv::cli
