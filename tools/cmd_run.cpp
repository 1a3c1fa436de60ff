// `defkv run`: generate text from a GGUF model, streaming tokens to stdout,
// with an optional bounded KV cache (budget, policy, schedule).
#include <CLI/CLI.hpp>
#include <sys/resource.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/engine/context.h"
#include "runtime/model/model.h"
#include "runtime/text/sampler.h"
#include "runtime/text/tokenizer.h"
#include "tools/commands.h"

namespace defkv::cli {
namespace {

struct RunOptions {
  std::string model_path;
  std::string prompt;
  std::string prompt_file;
  int n_predict = 128;
  int n_threads = 0;
  int n_ctx = 0;
  text::SamplerParams sp;
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

// "256M", "1.5G", "4096", "64K" (binary units) -> bytes.
int64_t parse_bytes(const std::string& s) {
  if (s.empty()) throw std::invalid_argument("--kv-mem: empty size");
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    throw std::invalid_argument("--kv-mem: '" + s + "' is not a size (e.g. 256M, 1G, 65536)");
  }
  std::string suf = s.substr(used);
  double mul = 1;
  if (suf == "" || suf == "B") mul = 1;
  else if (suf == "K" || suf == "k" || suf == "KiB" || suf == "KB") mul = 1024.0;
  else if (suf == "M" || suf == "m" || suf == "MiB" || suf == "MB") mul = 1024.0 * 1024;
  else if (suf == "G" || suf == "g" || suf == "GiB" || suf == "GB") mul = 1024.0 * 1024 * 1024;
  else throw std::invalid_argument("--kv-mem: unknown unit '" + suf + "' in '" + s + "' (use K, M or G)");
  if (!(v > 0)) throw std::invalid_argument("--kv-mem: size must be positive (got '" + s + "')");
  return int64_t(v * mul);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read prompt file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

int run(const RunOptions& o) {
  auto model = model::Model::load(o.model_path);
  auto tok = text::Tokenizer::from_gguf(model->file());

  engine::ContextParams cp;
  cp.n_threads = uint32_t(o.n_threads);
  cp.n_ctx = uint32_t(o.n_ctx);
  if (o.opt_budget->count()) cp.budget_tokens = o.kv_budget;
  if (o.opt_ratio->count()) cp.kv_ratio = o.kv_ratio;
  if (o.opt_mem->count()) cp.kv_mem_bytes = parse_bytes(o.kv_mem);
  if (!quant::parse_dtype(o.kv_type, &cp.kv_type)) throw std::invalid_argument("--kv-type: unknown type " + o.kv_type);
  if (!evict::parse_policy(o.kv_policy, &cp.evict.policy))
    throw std::invalid_argument("--kv-policy: unknown policy " + o.kv_policy);
  const bool has_budget = cp.budget_tokens || cp.kv_ratio || cp.kv_mem_bytes;
  if (!has_budget && o.opt_policy->count() && cp.evict.policy != evict::Policy::full)
    throw std::invalid_argument("--kv-policy " + o.kv_policy +
                                " needs a KV budget (--kv-budget, --kv-ratio or --kv-mem)");
  if (!has_budget) cp.evict.policy = evict::Policy::full;
  if (!o.kv_schedule.empty()) {
    engine::Schedule s;
    if (!engine::parse_schedule(o.kv_schedule, &s))
      throw std::invalid_argument("--kv-schedule: unknown schedule " + o.kv_schedule);
    cp.schedule = s;
  }
  cp.evict.window = uint32_t(o.kv_window);
  cp.evict.kernel = uint32_t(o.kv_pool);
  cp.evict.n_sink = uint32_t(o.kv_sinks);
  cp.evict.running_max = o.running_max;
  cp.chunk_tokens = uint32_t(o.chunk);

  engine::Context ctx(*model, cp);
  text::Sampler sampler(o.sp);

  const std::string text = o.prompt_file.empty() ? o.prompt : read_file(o.prompt_file);
  std::vector<int32_t> prompt = text.empty() ? std::vector<int32_t>{} : tok->encode(text, true);
  if (prompt.empty() || prompt.front() != tok->bos()) prompt.insert(prompt.begin(), tok->bos());

  // Echo the prompt as the model reads it, then stream the continuation.
  text::StreamDecoder dec(*tok);
  std::string out;
  for (size_t i = 1; i < prompt.size(); ++i) out += dec.push(prompt[i]);
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);

  const int32_t eos = tok->eos();
  auto res = ctx.generate(prompt, uint32_t(o.n_predict), sampler, eos, [&](int32_t t) {
    if (t == eos) return true;
    const std::string s = dec.push(t);
    if (!s.empty()) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  const std::string rest = dec.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);

  const engine::Stats& st = ctx.stats();
  const auto& mc = model->config();
  std::fprintf(stderr,
               "defkv: prompt %llu tok %.1f tok/s | decode %llu tok %.1f tok/s | stop %s | peak RSS %.1f MiB | "
               "KV %s in use %zu B (peak %zu B, pool %zu B) | evictions %u (%.3f s)\n",
               (unsigned long long)st.prompt_tokens, st.prompt_tok_per_s(), (unsigned long long)st.decode_tokens,
               st.decode_tok_per_s(), engine::stop_reason_name(res.stop), peak_rss_mib(),
               quant::dtype_name(cp.kv_type), st.kv_bytes_in_use, st.kv_bytes_peak, st.kv_bytes_reserved,
               st.evict_rounds, st.evict_seconds);
  std::string per_layer;
  for (uint32_t l = 0; l < mc.n_layer; ++l) {
    uint64_t n = 0;
    for (uint32_t h = 0; h < mc.n_head_kv; ++h) n += ctx.cache().size(l, h);
    per_layer += (l ? " " : "") + std::to_string(n);
  }
  std::fprintf(stderr, "defkv: policy %s, schedule %s, budget %u tok/head | KV bytes in use %zu | entries kept per layer: %s\n",
               ctx.has_budget() ? evict::policy_name(cp.evict.policy) : "full",
               ctx.has_budget() ? engine::schedule_name(ctx.schedule()) : "-", ctx.budget_tokens(),
               st.kv_bytes_in_use, per_layer.c_str());
  return 0;
}

// Integer > 0 with a readable message (CLI::PositiveNumber prints DBL_MAX).
const CLI::Validator kPositiveInt(
    [](std::string& s) -> std::string {
      try {
        size_t used = 0;
        const long long v = std::stoll(s, &used);
        if (used == s.size() && v > 0) return {};
      } catch (const std::exception&) {
      }
      return "must be a positive integer (got '" + s + "')";
    },
    "POSITIVE");

const CLI::Validator kByteSize(
    [](std::string& s) -> std::string {
      try {
        parse_bytes(s);
        return {};
      } catch (const std::exception& e) {
        std::string msg = e.what();
        const std::string prefix = "--kv-mem: ";
        return msg.rfind(prefix, 0) == 0 ? msg.substr(prefix.size()) : msg;
      }
    },
    "SIZE");

}  // namespace

Handler register_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* sub = app.add_subcommand("run", "Generate text from a GGUF model, streaming tokens to stdout");
  sub->option_defaults()->always_capture_default();
  sub->add_option("-m,--model", o->model_path, "Model file (GGUF, llama architecture)")->required()->check(CLI::ExistingFile);
  auto* p = sub->add_option("-p,--prompt", o->prompt, "Prompt text (default: empty, generate from BOS)");
  auto* f = sub->add_option("-f,--file", o->prompt_file, "Read the prompt from this file")->check(CLI::ExistingFile);
  p->excludes(f);
  sub->add_option("-n,--n-predict", o->n_predict, "Tokens to generate (stops earlier at EOS)")->check(CLI::NonNegativeNumber);
  sub->add_option("-t,--threads", o->n_threads, "Threads (0: all cores)")->check(CLI::NonNegativeNumber);
  sub->add_option("--ctx", o->n_ctx, "Maximum positions (prompt + generated); 0: the model's context_length")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--temp", o->sp.temperature, "Sampling temperature (<= 0: greedy)");
  sub->add_option("--top-k", o->sp.top_k, "Top-k sampling (<= 0: off)");
  sub->add_option("--top-p", o->sp.top_p, "Top-p (nucleus) sampling (>= 1: off)");
  sub->add_option("--min-p", o->sp.min_p, "Min-p sampling (<= 0: off)");
  sub->add_option("--repeat-penalty", o->sp.repeat_penalty, "Repetition penalty (1: off)")->check(CLI::Range(1e-6, 1e6));
  sub->add_option("--repeat-last-n", o->sp.repeat_last_n, "Recent tokens the repetition penalty sees")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--seed", o->sp.seed, "Random seed");
  o->opt_budget = sub->add_option("--kv-budget", o->kv_budget,
                                  "KV budget in tokens per (layer, KV head) on average; enables eviction "
                                  "(unset: full cache)")
                      ->check(kPositiveInt)
                      ->default_str("");
  o->opt_ratio = sub->add_option("--kv-ratio", o->kv_ratio,
                                 "KV budget as the fraction of the prompt kept, in (0, 1] (0.2 keeps 20%)")
                     ->check(CLI::Range(1e-9, 1.0))
                     ->default_str("");
  o->opt_mem = sub->add_option("--kv-mem", o->kv_mem,
                               "KV budget as a ceiling on the KV pool's memory, e.g. 256M, 1G (binary units)")
                   ->check(kByteSize);
  o->opt_budget->excludes(o->opt_ratio)->excludes(o->opt_mem);
  o->opt_ratio->excludes(o->opt_mem);
  sub->add_option("--kv-type", o->kv_type, "KV cache element type")->check(CLI::IsMember({"f16", "f32", "q8_0"}));
  o->opt_policy = sub->add_option("--kv-policy", o->kv_policy, "Eviction policy (needs a budget unless 'full')")
                      ->check(CLI::IsMember({"full", "streaming", "snapkv", "adakv", "criticalkv", "defensivekv",
                                             "layer-defensivekv"}));
  sub->add_option("--kv-schedule", o->kv_schedule,
                  "oneshot: prefill all, compress once (paper); bounded: chunked prefill and decode evictions "
                  "keep memory under budget + one chunk (default with a budget)")
      ->check(CLI::IsMember({"oneshot", "bounded"}));
  sub->add_option("--kv-window", o->kv_window, "Observation window W (newest queries; always kept)")
      ->check(kPositiveInt);
  sub->add_option("--kv-pool", o->kv_pool, "Score pooling kernel (odd)")->check(kPositiveInt);
  sub->add_option("--kv-sinks", o->kv_sinks, "Streaming policy: first tokens always kept")->check(CLI::NonNegativeNumber);
  sub->add_option("--chunk", o->chunk,
                  "Prefill chunk in tokens (0: 2*window, min 64, with the bounded schedule; else 256)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--kv-running-max", o->running_max,
                "Defensive policies: keep each entry's worst-case score across eviction rounds (experimental)");
  return [o] { return run(*o); };
}

}  // namespace defkv::cli
