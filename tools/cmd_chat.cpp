// `defkv chat`: interactive multi-turn chat in the terminal. Uses only the C
// API (defkv.h), like an application embedding the library would.
//
// Chat template: the library renders the conversation with the model's
// tokenizer.chat_template (defkv_chat_apply_template); --template names a
// format or a Jinja file instead. A template the library does not recognise
// falls back to its plain "User:/Assistant:" format, with a warning. Each
// turn feeds only the text the rendering adds to what the model has seen
// (tools/chat_session.h). Replies stream as they are sampled. Ctrl-C cancels
// the current reply (or prompt evaluation) without exiting. /save FILE and
// /load FILE persist the conversation (the KV cache state, evicted entries
// included, and the conversation's text in FILE.chat). With a KV budget the
// conversation can outgrow it: eviction keeps the cache bounded.
#include <CLI/CLI.hpp>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/api/defkv.h"
#include "tools/api_util.h"
#include "tools/chat_session.h"
#include "tools/kv_flags.h"
#include "tools/commands.h"
#include "tools/flag_checks.h"

namespace defkv::cli {
namespace {

struct ChatOptions {
  std::string model_path;
  std::string system;
  std::string tmpl = "auto";
  bool no_think = false;
  int n_predict = 256;
  int n_threads = 0;
  int n_ctx = 0;
  KvFlags kv;  // the KV flags of run/bench (tools/kv_flags.h)
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  uint64_t seed = 0xdefc0de;
  bool stats = false;
  bool quiet = false;
};

std::vector<int32_t> tokenize(defkv_model* m, const std::string& text, bool add_bos, bool parse_special) {
  const int64_t len = int64_t(text.size());
  size_t n = 0;
  check(defkv_tokenize(m, text.data(), len, add_bos, parse_special, nullptr, 0, &n), nullptr, "tokenize");
  std::vector<int32_t> t(n);
  if (n) check(defkv_tokenize(m, text.data(), len, add_bos, parse_special, t.data(), n, &n), nullptr, "tokenize");
  return t;
}

// The id of a marker that is one special token, or -1.
int32_t single_token(defkv_model* m, const std::string& text) {
  if (text.empty()) return -1;
  std::vector<int32_t> t = tokenize(m, text, false, true);
  // The tokenizer adds a leading space piece before text; drop it if present.
  if (t.size() == 2) {
    char buf[16];
    size_t n = 0;
    if (defkv_token_piece(m, t[0], buf, sizeof buf, &n) == DEFKV_OK && n == 1 && buf[0] == ' ') t.erase(t.begin());
  }
  return t.size() == 1 ? t[0] : -1;
}

volatile sig_atomic_t g_sigint = 0;
extern "C" void on_sigint(int) { g_sigint = 1; }

struct ReplyState {
  int32_t stop_token = -1;
  std::string stop_text;
  std::string text;       // the reply so far, as shown
  std::string raw;        // every byte generated (the first space included)
  bool first = true;      // strip the leading space of the first piece
  bool stopped_by_marker = false;
  size_t printed = 0;     // bytes of text written to stdout
};

int on_token(int32_t token, const char* piece, size_t len, void* user) {
  auto* r = static_cast<ReplyState*>(user);
  if (token >= 0 && token == r->stop_token) {
    r->stopped_by_marker = true;
    return 1;
  }
  std::string s(piece, len);
  r->raw += s;
  if (r->first && !s.empty()) {
    if (s[0] == ' ') s.erase(0, 1);
    r->first = false;
  }
  r->text += s;
  // Print all but a tail that could still become the stop text.
  size_t safe = r->text.size();
  if (!r->stop_text.empty()) {
    const size_t at = r->text.find(r->stop_text);
    if (at != std::string::npos) {
      safe = at;
      r->stopped_by_marker = true;
    } else {
      for (size_t k = std::min(r->stop_text.size() - 1, r->text.size()); k > 0; --k)
        if (r->text.compare(r->text.size() - k, k, r->stop_text, 0, k) == 0) {
          safe = r->text.size() - k;
          break;
        }
    }
  }
  if (safe > r->printed) {
    std::fwrite(r->text.data() + r->printed, 1, safe - r->printed, stdout);
    std::fflush(stdout);
    r->printed = safe;
  }
  return r->stopped_by_marker ? 1 : 0;
}

int run_chat(const ChatOptions& o) {
  ModelHandle model;  // freed on every path, after the context
  check(defkv_model_load_file(o.model_path.c_str(), &model.m), nullptr, "load model");
  defkv_model* m = model.m;

  // --template: auto (the model's), a format name, or a file holding a Jinja template.
  std::optional<std::string> tmpl;
  bool by_name = false;
  if (o.tmpl != "auto") {
    std::ifstream f(o.tmpl, std::ios::binary);
    if (f) {
      std::stringstream ss;
      ss << f.rdbuf();
      tmpl = ss.str();
    } else if (o.tmpl.find('/') == std::string::npos && o.tmpl.find('.') == std::string::npos) {
      tmpl = o.tmpl;  // a format name
      by_name = true;
    } else {
      throw std::invalid_argument("--template: cannot open " + o.tmpl);
    }
  }
  ChatSession session(m, tmpl, o.no_think ? DEFKV_CHAT_DISABLE_THINKING : 0u, o.system);
  const defkv_chat_template_info& ti = session.info();
  if (by_name && !ti.recognised)  // the library took it for an (unknown) template text
    throw std::invalid_argument("unknown chat template '" + o.tmpl +
                                "' (auto, chatml, qwen3, llama2, llama3, zephyr, phi3, gemma, plain, or a file)");
  if (!ti.recognised && ti.has_template)
    std::fprintf(stderr, "defkv chat: warning: the chat template is not one the library recognises; using the plain "
                         "User:/Assistant: format\n");
  else if (!ti.has_template)
    std::fprintf(stderr, "defkv chat: warning: the model has no tokenizer.chat_template; using the plain "
                         "User:/Assistant: format\n");
  const std::string end_of_turn = ti.end_of_turn;
  const int32_t eot = single_token(m, end_of_turn);
  if (!end_of_turn.empty() && eot < 0)
    std::fprintf(stderr, "defkv chat: warning: the model has no single token for %s; replies end at EOS only\n",
                 end_of_turn.c_str());

  defkv_context_params p;
  defkv_context_params_init(&p);
  p.n_threads = uint32_t(o.n_threads);
  apply_kv_flags(o.kv, &p);
  // With a budget the conversation may run past the model's context length:
  // positions are what bounds it then, not memory.
  p.n_ctx = o.n_ctx ? uint32_t(o.n_ctx) : (o.kv.has_budget() ? 32768u : 0u);
  p.temperature = o.temperature;
  p.top_k = o.top_k;
  p.top_p = o.top_p;
  p.min_p = o.min_p;
  p.repeat_penalty = o.repeat_penalty;
  p.seed = o.seed;
  defkv_context* c = nullptr;
  check(defkv_context_create(m, &p, &c), nullptr, "create context");

  // Ctrl-C: the handler only sets a flag; a watcher thread turns it into
  // defkv_cancel() while a reply is running.
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  std::atomic<bool> busy{false}, done{false};
  std::thread watcher([&] {
    while (!done.load()) {
      if (g_sigint) {
        g_sigint = 0;
        if (busy.load()) defkv_cancel(c);
        else std::fprintf(stderr, "\n(Ctrl-C cancels a reply; /quit exits)\n> ");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });

  const bool tty = isatty(STDIN_FILENO);
  if (!o.quiet)
    std::fprintf(stderr,
                 "defkv chat: template %s%s; /save FILE, /load FILE, /reset, /stats, /quit. Ctrl-C cancels a reply.\n",
                 ti.format, o.tmpl == "auto" ? " (auto)" : "");
  std::string line;
  int rc = 0;
  for (;;) {
    if (tty || !o.quiet) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (line[0] == '/') {
      const size_t sp = line.find(' ');
      const std::string cmd = line.substr(0, sp);
      const std::string arg = sp == std::string::npos ? "" : line.substr(line.find_first_not_of(' ', sp));
      if (cmd == "/quit" || cmd == "/exit") break;
      defkv_status s = DEFKV_OK;
      if (cmd == "/save" || cmd == "/load") {
        if (arg.empty()) {
          std::fprintf(stderr, "usage: %s FILE\n", cmd.c_str());
          continue;
        }
        s = cmd == "/save" ? defkv_state_save_file(c, arg.c_str()) : defkv_state_load_file(c, arg.c_str());
        if (s == DEFKV_OK) {
          try {
            if (cmd == "/save") session.save(arg);
            else if (!session.load(arg))
              std::fprintf(stderr, "(no %s.chat beside the state: the conversation's text is unknown, later turns "
                                   "are rendered as a new conversation)\n", arg.c_str());
          } catch (const std::exception& e) {
            std::fprintf(stderr, "error: %s\n", e.what());
          }
          std::printf("(%s %s)\n", cmd == "/save" ? "saved to" : "loaded", arg.c_str());
        }
      } else if (cmd == "/reset") {
        s = defkv_reset(c);
        session.reset();
        if (s == DEFKV_OK) std::printf("(conversation cleared)\n");
      } else if (cmd == "/stats") {
        defkv_kv_stats st;
        s = defkv_get_kv_stats(c, &st);
        if (s == DEFKV_OK)
          std::printf("(positions %u, KV entries %llu (%.1f per head), %.1f KiB in use of %.1f KiB, budget %u, "
                      "%u eviction rounds)\n",
                      st.n_past, (unsigned long long)st.entries,
                      double(st.entries) / (double(st.n_layer) * st.n_head_kv), double(st.bytes_in_use) / 1024,
                      double(st.bytes_reserved) / 1024, st.budget_tokens, st.evict_rounds);
      } else {
        std::fprintf(stderr, "unknown command %s (/save FILE, /load FILE, /reset, /stats, /quit)\n", cmd.c_str());
      }
      if (s != DEFKV_OK) std::fprintf(stderr, "error: %s\n", defkv_last_error(c));
      continue;
    }

    // This turn's text: what the rendered conversation adds to what the
    // model has seen. BOS is added by the tokenizer (when the model asks for
    // it) at the start, unless the template writes it.
    uint32_t n_past = 0;
    check(defkv_n_past(c, &n_past), c, "n_past");
    std::string delta;
    try {
      delta = session.begin_turn(line);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      continue;
    }
    const std::vector<int32_t> toks = tokenize(m, delta, n_past == 0 && !ti.writes_bos, true);

    ReplyState r;
    r.stop_token = eot;
    r.stop_text = ti.stop_text;
    busy.store(true);
    g_sigint = 0;
    const auto t0 = std::chrono::steady_clock::now();
    defkv_status s = defkv_eval(c, toks.data(), toks.size(), nullptr, nullptr);
    uint32_t ng = 0;
    if (s == DEFKV_OK) s = defkv_generate(c, uint32_t(o.n_predict), on_token, &r, &ng);
    busy.store(false);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r.printed < r.text.size() && !r.stopped_by_marker) std::fwrite(r.text.data() + r.printed, 1, r.text.size() - r.printed, stdout);
    std::fputs("\n", stdout);
    std::fflush(stdout);
    // Closed: ended by the end-of-turn token, the stop text or EOS (which the
    // model is fed with the next turn).
    const bool closed = r.stopped_by_marker || (s == DEFKV_OK && ng < uint32_t(o.n_predict));
    const size_t cut = r.stop_text.empty() ? std::string::npos : r.text.find(r.stop_text);
    session.end_turn(r.text.substr(0, cut), r.raw, closed);
    if (s == DEFKV_ERR_CANCELLED) {
      std::fprintf(stderr, "(cancelled)\n");
    } else if (s == DEFKV_ERR_CONTEXT_FULL) {
      std::fprintf(stderr, "(the conversation reached n_ctx positions; /reset or /save and start over)\n");
    } else if (s != DEFKV_OK) {
      std::fprintf(stderr, "error: %s\n", defkv_last_error(c));
      rc = 1;
      break;
    }
    if (s == DEFKV_OK) {
      defkv_kv_stats st;
      if (o.stats && defkv_get_kv_stats(c, &st) == DEFKV_OK)
        std::fprintf(stderr, "[%u tokens in %.2f s; positions %u; KV %.1f KiB, %u eviction rounds]\n", ng, secs,
                     st.n_past, double(st.bytes_in_use) / 1024, st.evict_rounds);
    }
  }
  done.store(true);
  watcher.join();
  defkv_context_free(c);
  return rc;
}

}  // namespace

Handler register_chat(CLI::App& app) {
  auto o = std::make_shared<ChatOptions>();
  CLI::App* sub = app.add_subcommand("chat", "Interactive multi-turn chat (streams replies; Ctrl-C cancels a reply)");
  sub->add_option("-m,--model", o->model_path, "GGUF model")->required();
  sub->add_option("--system", o->system, "System prompt");
  sub->add_option("--template", o->tmpl,
                  "Chat template: auto (the GGUF's tokenizer.chat_template), a format (chatml, qwen3, llama2, "
                  "llama3, zephyr, phi3, gemma, plain) or a file holding a Jinja chat template");
  sub->add_flag("--no-think", o->no_think, "Qwen3: answer without reasoning (enable_thinking = false)");
  sub->add_option("-n,--n-predict", o->n_predict, "Maximum tokens per reply")->check(non_negative());
  sub->add_option("-t,--threads", o->n_threads, "Threads (0: default)");
  sub->add_option("-c,--ctx", o->n_ctx, "Positions per conversation (default: model's, 32768 with a KV budget)")
      ->check(non_negative());
  KvFlagSet kv_set;
  kv_set.ratio_help = "the first turn (system prompt and first message)";
  add_kv_flags(sub, o->kv, kv_set);
  sub->add_option("--temp", o->temperature, "Temperature (0: greedy)");
  sub->add_option("--top-k", o->top_k, "Top-k (0: off)");
  sub->add_option("--top-p", o->top_p, "Top-p (1: off)");
  sub->add_option("--min-p", o->min_p, "Min-p (0: off)");
  sub->add_option("--repeat-penalty", o->repeat_penalty, "Repetition penalty (1: off)");
  sub->add_option("-s,--seed", o->seed, "RNG seed");
  sub->add_flag("--stats", o->stats, "Print speed and KV use after each reply");
  sub->add_flag("-q,--quiet", o->quiet, "No banner or prompt marker when stdin is not a terminal");
  return [o] { return run_chat(*o); };
}

}  // namespace defkv::cli
