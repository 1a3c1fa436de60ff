// `defkv chat`: interactive multi-turn chat in the terminal. Uses only the C
// API (defkv.h), like an application embedding the library would.
//
// Chat template: taken from the GGUF's tokenizer.chat_template when it is one
// of the common ones (llama-2 [INST], llama-3 headers, ChatML, Zephyr,
// Gemma), otherwise a plain "User:/Assistant:" format; --template overrides.
// Replies stream as they are sampled. Ctrl-C cancels the current reply (or
// prompt evaluation) without exiting. /save FILE and /load FILE persist the
// conversation (the KV cache state, evicted entries included). With a KV
// budget the conversation can outgrow it: eviction keeps the cache bounded.
#include <CLI/CLI.hpp>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/api/defkv.h"
#include "tools/api_util.h"
#include "tools/kv_flags.h"
#include "tools/commands.h"

namespace defkv::cli {
namespace {

struct ChatOptions {
  std::string model_path;
  std::string system;
  std::string tmpl = "auto";
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

// One chat format: the text around a user message and the markers that end
// an assistant turn.
struct Template {
  std::string name;
  std::string system_prefix, system_suffix;  // around the system prompt (first turn only)
  std::string user_prefix, user_suffix;      // around each user message; user_suffix opens the reply
  std::string end_of_turn;                   // text of the token that ends a reply ("" = EOS only)
  std::string after_turn;                    // fed after the end-of-turn token before the next user turn
  bool bos_each_turn = false;                // llama-2: <s> starts every [INST] turn
  std::string stop_text;                     // plain format: a reply also ends at this text
};

Template make_template(const std::string& name) {
  Template t;
  t.name = name;
  if (name == "llama2") {
    t.system_prefix = "[INST] <<SYS>>\n";
    t.system_suffix = "\n<</SYS>>\n\n";
    t.user_prefix = "[INST] ";
    t.user_suffix = " [/INST]";
    t.bos_each_turn = true;  // and the reply ends with </s> (EOS)
  } else if (name == "llama3") {
    t.system_prefix = "<|start_header_id|>system<|end_header_id|>\n\n";
    t.system_suffix = "<|eot_id|>";
    t.user_prefix = "<|start_header_id|>user<|end_header_id|>\n\n";
    t.user_suffix = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    t.end_of_turn = "<|eot_id|>";
  } else if (name == "chatml") {
    t.system_prefix = "<|im_start|>system\n";
    t.system_suffix = "<|im_end|>\n";
    t.user_prefix = "<|im_start|>user\n";
    t.user_suffix = "<|im_end|>\n<|im_start|>assistant\n";
    t.end_of_turn = "<|im_end|>";
    t.after_turn = "\n";
  } else if (name == "zephyr") {
    t.system_prefix = "<|system|>\n";
    t.system_suffix = "</s>\n";
    t.user_prefix = "<|user|>\n";
    t.user_suffix = "</s>\n<|assistant|>\n";
    t.end_of_turn = "</s>";
    t.after_turn = "\n";
  } else if (name == "gemma") {
    t.user_prefix = "<start_of_turn>user\n";
    t.user_suffix = "<end_of_turn>\n<start_of_turn>model\n";
    t.end_of_turn = "<end_of_turn>";
    t.after_turn = "\n";
  } else if (name == "plain") {
    t.system_suffix = "\n\n";
    t.user_prefix = "User: ";
    t.user_suffix = "\nAssistant:";
    t.after_turn = "\n";
    t.stop_text = "\nUser:";
  } else {
    throw std::invalid_argument("unknown chat template '" + name +
                                "' (auto, llama2, llama3, chatml, zephyr, gemma, plain)");
  }
  return t;
}

// Recognises the common Jinja chat templates by their markers.
std::string detect_template(const std::string& jinja) {
  if (jinja.empty()) return "plain";
  if (jinja.find("<|im_start|>") != std::string::npos) return "chatml";
  if (jinja.find("<|start_header_id|>") != std::string::npos) return "llama3";
  if (jinja.find("<start_of_turn>") != std::string::npos) return "gemma";
  if (jinja.find("<|user|>") != std::string::npos && jinja.find("<|assistant|>") != std::string::npos) return "zephyr";
  if (jinja.find("[INST]") != std::string::npos) return "llama2";
  return "plain";
}

std::vector<int32_t> tokenize(defkv_model* m, const std::string& text, bool parse_special) {
  size_t n = 0;
  check(defkv_tokenize(m, text.data(), int64_t(text.size()), 0, parse_special, nullptr, 0, &n), nullptr, "tokenize");
  std::vector<int32_t> t(n);
  if (n) check(defkv_tokenize(m, text.data(), int64_t(text.size()), 0, parse_special, t.data(), n, &n), nullptr, "tokenize");
  return t;
}

// The id of a marker that is one special token, or -1.
int32_t single_token(defkv_model* m, const std::string& text) {
  if (text.empty()) return -1;
  std::vector<int32_t> t = tokenize(m, text, true);
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
  std::string text;       // the reply so far
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
  defkv_model* m = nullptr;
  check(defkv_model_load_file(o.model_path.c_str(), &m), nullptr, "load model");
  defkv_model_info info;
  check(defkv_model_get_info(m, &info), nullptr, "model info");

  std::string tname = o.tmpl;
  if (tname == "auto") {
    size_t n = 0;
    std::string jinja;
    if (defkv_model_meta_string(m, "tokenizer.chat_template", nullptr, 0, &n) == DEFKV_ERR_BUFFER_TOO_SMALL) {
      jinja.resize(n + 1);
      check(defkv_model_meta_string(m, "tokenizer.chat_template", jinja.data(), jinja.size(), &n), nullptr,
            "chat template");
      jinja.resize(n);
    }
    tname = detect_template(jinja);
  }
  const Template t = make_template(tname);
  const int32_t eot = single_token(m, t.end_of_turn);
  if (!t.end_of_turn.empty() && eot < 0 && t.end_of_turn != "</s>")
    std::fprintf(stderr, "defkv chat: warning: the model has no single token for %s; replies end at EOS only\n",
                 t.end_of_turn.c_str());

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
                 t.name.c_str(), o.tmpl == "auto" ? " (auto)" : "");
  bool reply_open = false;  // the last reply was cut short: close its turn first
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
          std::printf("(%s %s)\n", cmd == "/save" ? "saved to" : "loaded", arg.c_str());
          if (cmd == "/load") reply_open = false;
        }
      } else if (cmd == "/reset") {
        s = defkv_reset(c);
        reply_open = false;
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

    // Build this turn's tokens.
    uint32_t n_past = 0;
    check(defkv_n_past(c, &n_past), c, "n_past");
    std::vector<int32_t> toks;
    auto add_text = [&](const std::string& s) {
      const std::vector<int32_t> v = tokenize(m, s, true);
      toks.insert(toks.end(), v.begin(), v.end());
    };
    if (n_past > 0 && reply_open) {  // close a reply that was cut short
      if (eot >= 0) toks.push_back(eot);
      else if (t.bos_each_turn || t.end_of_turn == "</s>") toks.push_back(info.eos);
    }
    if (n_past > 0) add_text(t.after_turn);
    if (n_past == 0 || t.bos_each_turn) {
      if (info.bos >= 0) toks.push_back(info.bos);
    }
    std::string turn;
    if (n_past == 0 && !o.system.empty()) {
      if (t.name == "llama2")
        turn = t.system_prefix + o.system + t.system_suffix + line + t.user_suffix;
      else
        turn = t.system_prefix + o.system + t.system_suffix + t.user_prefix + line + t.user_suffix;
    } else {
      turn = t.user_prefix + line + t.user_suffix;
    }
    add_text(turn);

    ReplyState r;
    r.stop_token = eot;
    r.stop_text = t.stop_text;
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
    reply_open = !r.stopped_by_marker;
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
      // Ended at EOS: the turn is closed by it (llama-2, zephyr, plain).
      defkv_kv_stats st;
      if (defkv_get_kv_stats(c, &st) == DEFKV_OK && ng < uint32_t(o.n_predict)) reply_open = false;
      if (o.stats && defkv_get_kv_stats(c, &st) == DEFKV_OK)
        std::fprintf(stderr, "[%u tokens in %.2f s; positions %u; KV %.1f KiB, %u eviction rounds]\n", ng, secs,
                     st.n_past, double(st.bytes_in_use) / 1024, st.evict_rounds);
    }
  }
  done.store(true);
  watcher.join();
  defkv_context_free(c);
  defkv_model_free(m);
  return rc;
}

}  // namespace

Handler register_chat(CLI::App& app) {
  auto o = std::make_shared<ChatOptions>();
  CLI::App* sub = app.add_subcommand("chat", "Interactive multi-turn chat (streams replies; Ctrl-C cancels a reply)");
  sub->add_option("-m,--model", o->model_path, "GGUF model")->required();
  sub->add_option("--system", o->system, "System prompt");
  sub->add_option("--template", o->tmpl, "Chat format: auto (from the GGUF), llama2, llama3, chatml, zephyr, gemma, plain");
  sub->add_option("-n,--n-predict", o->n_predict, "Maximum tokens per reply");
  sub->add_option("-t,--threads", o->n_threads, "Threads (0: default)");
  sub->add_option("-c,--ctx", o->n_ctx, "Positions per conversation (default: model's, 32768 with a KV budget)");
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
