// `defkv run`: generate text from a GGUF model, streaming tokens to stdout,
// with an optional bounded KV cache (budget, policy, schedule). Uses only the
// C API (defkv.h), like an application embedding the library would.
//
// Output: the prompt as the model reads it, then the continuation, on stdout;
// a two-line report on stderr (speeds, stop reason, peak RSS, KV bytes,
// evictions, entries kept per layer). Ctrl-C cancels the prompt evaluation or
// the generation (defkv_cancel); the report is still printed and the exit
// code is 130.
#include <CLI/CLI.hpp>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/api/defkv.h"
#include "tools/api_util.h"
#include "tools/commands.h"
#include "tools/flag_checks.h"
#include "tools/kv_flags.h"

namespace defkv::cli {
namespace {

struct RunOptions {
  std::string model_path;
  std::string prompt;
  std::string prompt_file;
  int n_predict = 128;
  int n_threads = 0;
  int n_ctx = 0;
  defkv_context_params sampling;  // sampling fields bound to the flags; defaults from the library
  KvFlags kv;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read prompt file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Ctrl-C: the handler only sets a flag; a watcher thread turns it into
// defkv_cancel() (which is not async-signal-safe).
std::atomic<bool> g_sigint{false};
void on_sigint(int) { g_sigint.store(true); }

class CancelOnSigint {
 public:
  explicit CancelOnSigint(defkv_context* c) {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_);
    watcher_ = std::thread([this, c] {
      while (!stop_.load()) {
        if (g_sigint.load()) {
          cancelled_.store(true);
          defkv_cancel(c);
          g_sigint.store(false);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  ~CancelOnSigint() {
    stop_.store(true);
    watcher_.join();
    sigaction(SIGINT, &old_, nullptr);
  }
  bool cancelled() const { return cancelled_.load(); }

 private:
  struct sigaction old_ {};
  std::atomic<bool> stop_{false}, cancelled_{false};
  std::thread watcher_;
};

std::string detokenize(const defkv_model* m, const std::vector<int32_t>& t) {
  size_t n = 0;
  const defkv_status s = defkv_detokenize(m, t.data(), t.size(), nullptr, 0, &n);
  if (s != DEFKV_OK && s != DEFKV_ERR_BUFFER_TOO_SMALL) check(s);
  std::string out(n + 1, '\0');
  check(defkv_detokenize(m, t.data(), t.size(), out.data(), out.size(), &n));
  out.resize(n);
  return out;
}

// Streams generated text to stdout.
struct Printer {
  const defkv_model* model;
  bool printed_any;             // text was printed (the prompt echo): spaces are kept
  std::vector<int32_t> tokens;  // generated so far (end-of-generation tokens excluded)
};

int on_token(int32_t token, const char* text, size_t len, void* user) {
  auto* p = static_cast<Printer*>(user);
  if (token >= 0 && defkv_token_is_eog(p->model, token)) return 0;
  if (token >= 0) p->tokens.push_back(token);
  if (len == 0) return 0;
  std::string_view s(text, len);
  if (!p->printed_any) {
    // Nothing printed yet: the text starts here, so drop the space
    // SentencePiece puts before the first word, as the detokenizer does.
    const std::string whole = detokenize(p->model, p->tokens);
    if (s.front() == ' ' && (whole.empty() || whole.front() != ' ')) s.remove_prefix(1);
    p->printed_any = true;
  }
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
  return 0;
}

// Prompt progress on a terminal only (a redirected stderr stays clean).
int on_progress(uint64_t done, uint64_t total, void*) {
  std::fprintf(stderr, "\r\033[Kdefkv: prompt %llu/%llu tokens", (unsigned long long)done,
               (unsigned long long)total);
  if (done == total) std::fputs("\r\033[K", stderr);
  return 0;
}

int run(const RunOptions& o) {
  defkv_context_params p = o.sampling;
  p.n_threads = uint32_t(o.n_threads);
  p.n_ctx = uint32_t(o.n_ctx);
  apply_kv_flags(o.kv, &p);

  ModelHandle model;
  check(defkv_model_load_file(o.model_path.c_str(), &model.m));
  defkv_model_info mi{};
  check(defkv_model_get_info(model.m, &mi));
  ContextHandle ctx;
  check(defkv_context_create(model.m, &p, &ctx.c));

  const std::string text = o.prompt_file.empty() ? o.prompt : read_file(o.prompt_file);
  std::vector<int32_t> prompt;
  if (!text.empty()) {
    size_t n = 0;
    const defkv_status s = defkv_tokenize(model.m, text.data(), int64_t(text.size()), 1, 0, nullptr, 0, &n);
    if (s != DEFKV_OK && s != DEFKV_ERR_BUFFER_TOO_SMALL) check(s);
    prompt.resize(n);
    check(defkv_tokenize(model.m, text.data(), int64_t(text.size()), 1, 0, prompt.data(), prompt.size(), &n));
    prompt.resize(n);
  }
  // BOS as the vocabulary asks (tokenizer.ggml.add_bos_token: Llama yes,
  // Qwen no); an empty prompt starts from BOS when there is one.
  if (prompt.empty() && mi.bos >= 0) prompt.push_back(mi.bos);
  if (prompt.empty()) throw std::invalid_argument("empty prompt and the model has no BOS token to start from");

  // Echo the prompt as the model reads it (control tokens print nothing), then stream the continuation.
  const std::string echo = detokenize(model.m, prompt);
  std::fputs(echo.c_str(), stdout);
  std::fflush(stdout);

  Printer printer{model.m, !echo.empty(), {}};
  defkv_status st_eval = DEFKV_OK, st_gen = DEFKV_OK;
  {
    CancelOnSigint sig(ctx.c);
    st_eval = defkv_eval(ctx.c, prompt.data(), prompt.size(), isatty(2) ? on_progress : nullptr, nullptr);
    if (st_eval == DEFKV_OK) st_gen = defkv_generate(ctx.c, uint32_t(o.n_predict), on_token, &printer, nullptr);
  }
  if (st_eval != DEFKV_OK && st_eval != DEFKV_ERR_CANCELLED) check(st_eval, ctx.c);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (st_gen != DEFKV_OK && st_gen != DEFKV_ERR_CANCELLED && st_gen != DEFKV_ERR_CONTEXT_FULL)
    check(st_gen, ctx.c);
  const bool cancelled = st_eval == DEFKV_ERR_CANCELLED || st_gen == DEFKV_ERR_CANCELLED;

  defkv_kv_stats st{};
  check(defkv_get_kv_stats(ctx.c, &st), ctx.c);
  defkv_context_info info{};
  info.struct_size = sizeof info;
  check(defkv_context_get_info(ctx.c, &info), ctx.c);
  const double prompt_tps = st.prompt_seconds > 0 ? double(st.prompt_tokens) / st.prompt_seconds : 0;
  const double decode_tps = st.decode_seconds > 0 ? double(st.decode_tokens) / st.decode_seconds : 0;
  const char* stop = st_eval == DEFKV_ERR_CANCELLED ? "cancelled" : defkv_stop_reason_name(info.last_stop_reason);
  std::fprintf(stderr,
               "defkv: prompt %llu tok %.1f tok/s | decode %llu tok %.1f tok/s | stop %s | peak RSS %.1f MiB | "
               "KV %s in use %llu B (peak %llu B, pool %llu B) | evictions %u (%.3f s)\n",
               (unsigned long long)st.prompt_tokens, prompt_tps, (unsigned long long)st.decode_tokens, decode_tps,
               stop, peak_rss_mib(), kv_type_name(info.kv_type), (unsigned long long)st.bytes_in_use,
               (unsigned long long)st.bytes_peak, (unsigned long long)st.bytes_reserved, st.evict_rounds,
               st.evict_seconds);

  std::vector<uint32_t> counts(size_t(st.n_layer) * st.n_head_kv);
  size_t n_counts = 0;
  check(defkv_kv_entries(ctx.c, counts.data(), counts.size(), &n_counts), ctx.c);
  std::string per_layer;
  for (uint32_t l = 0; l < st.n_layer; ++l) {
    uint64_t n = 0;
    for (uint32_t h = 0; h < st.n_head_kv; ++h) n += counts[size_t(l) * st.n_head_kv + h];
    per_layer += (l ? " " : "") + std::to_string(n);
  }
  const bool budget = info.has_budget != 0;
  std::fprintf(stderr,
               "defkv: policy %s, schedule %s, budget %u tok/head | KV bytes in use %llu | entries kept per "
               "layer: %s\n",
               budget ? policy_name(info.kv_policy) : "full",
               budget ? (info.kv_schedule == DEFKV_SCHEDULE_BOUNDED ? "bounded" : "oneshot") : "-",
               info.budget_tokens, (unsigned long long)st.bytes_in_use, per_layer.c_str());
  return cancelled ? 130 : 0;
}

}  // namespace

Handler register_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  defkv_context_params_init(&o->sampling);
  defkv_context_params& sp = o->sampling;
  CLI::App* sub = app.add_subcommand("run", "Generate text from a GGUF model, streaming tokens to stdout");
  sub->option_defaults()->always_capture_default();
  sub->footer(
      "Prints the prompt and its continuation on stdout, then a report on stderr: prompt and decode tok/s, "
      "stop reason, peak RSS, KV bytes in use and entries kept per layer. Ctrl-C cancels (exit code 130).");
  sub->add_option("-m,--model", o->model_path, "Model file (GGUF: llama, qwen2, qwen3, phi3, gemma2 or gemma3 architecture)")->required()->check(CLI::ExistingFile);
  auto* p = sub->add_option("-p,--prompt", o->prompt, "Prompt text (default: empty, generate from BOS)");
  auto* f = sub->add_option("-f,--file", o->prompt_file, "Read the prompt from this file")->check(CLI::ExistingFile);
  p->excludes(f);
  sub->add_option("-n,--n-predict", o->n_predict, "Tokens to generate (stops earlier at an end-of-generation token)")->check(defkv::cli::non_negative());
  sub->add_option("-t,--threads", o->n_threads, "Threads (0: all cores)")->check(defkv::cli::non_negative());
  sub->add_option("--ctx", o->n_ctx, "Maximum positions (prompt + generated); 0: the model's context_length")
      ->check(defkv::cli::non_negative());
  sub->add_option("--temp", sp.temperature, "Sampling temperature (<= 0: greedy)");
  sub->add_option("--top-k", sp.top_k, "Top-k sampling (<= 0: off)");
  sub->add_option("--top-p", sp.top_p, "Top-p (nucleus) sampling (>= 1: off)");
  sub->add_option("--min-p", sp.min_p, "Min-p sampling (<= 0: off)");
  sub->add_option("--repeat-penalty", sp.repeat_penalty, "Repetition penalty (1: off)")->check(CLI::Range(1e-6, 1e6));
  sub->add_option("--repeat-last-n", sp.repeat_last_n, "Recent tokens the repetition penalty sees")
      ->check(defkv::cli::non_negative());
  sub->add_option("--seed", sp.seed, "Random seed");
  add_kv_flags(sub, o->kv);
  return [o] { return run(*o); };
}

}  // namespace defkv::cli
