// Soak driver (docs/reliability.md, "Soak"): one long conversation on the
// public C API under a fixed KV budget, with periodic state save/restore and
// cancellations, logging per-interval rows to see that KV bytes, RSS and time
// per token stay flat. Not part of the build: compile with docs/soak/build.sh.
//   soak MODEL OUT.tsv [TOKENS [BUDGET]]     (defaults 200000 tokens, budget 128)
// The conversation: a prompt, then generate (temperature 0.8, fixed seed) in
// calls of up to 1000 tokens; after an end-of-story token, and every 2500
// tokens, a new prompt is evaluated (a user turn). Every 5000 tokens a
// generate call is cancelled halfway from its token callback (defkv_cancel),
// every 20000 a long prompt's evaluation is cancelled from its progress
// callback after its first chunk (the conversation continues from there).
// Every 10000 tokens the state is saved, loaded into a newly created context,
// and both contexts generate 64 tokens that must be equal; the old context is
// freed and the conversation continues in the new one.
// OUT.tsv rows, every 1000 generated tokens: tokens, n_past, KV bytes in use
// (defkv_get_kv_stats), KV entries, KV bytes reserved, RSS (/proc/self/statm),
// heap bytes allocated (glibc mallinfo2: in use + mmapped; RSS minus this is
// the allocator's free memory and the mapped model and code) and ms per
// generated token over the interval (wall clock, so the whole interval:
// prompts, evictions, save/restore). Prints a summary with the
// least-squares slopes over the second half of the run; exit status 1 if any
// call failed or a restored context diverged.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <malloc.h>
#include <unistd.h>

#include "runtime/api/defkv.h"

namespace {

[[noreturn]] void fail(const char* what, defkv_status s, const defkv_context* c) {
  std::fprintf(stderr, "soak: %s: %s: %s\n", what, defkv_status_name(s), defkv_last_error(c));
  std::exit(1);
}

void ok(defkv_status s, const char* what, const defkv_context* c = nullptr) {
  if (s != DEFKV_OK) fail(what, s, c);
}

uint64_t rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return uint64_t(resident) * uint64_t(sysconf(_SC_PAGESIZE));
}

struct Gen {
  defkv_context* ctx = nullptr;
  uint64_t total = 0;      // tokens generated over the whole run
  uint64_t cancel_at = 0;  // cancel the running generate when total reaches this (0: never)
  std::vector<int32_t>* record = nullptr;
};

int on_token(int32_t token, const char*, size_t, void* user) {
  auto* g = static_cast<Gen*>(user);
  if (token < 0) return 0;  // flush of held-back bytes
  ++g->total;
  if (g->record) g->record->push_back(token);
  if (g->cancel_at != 0 && g->total == g->cancel_at) ok(defkv_cancel(g->ctx), "cancel", g->ctx);
  return 0;
}

int cancel_after_first_chunk(uint64_t done, uint64_t, void*) { return done > 0; }

// Least-squares slope of y over x.
double slope(const std::vector<double>& x, const std::vector<double>& y) {
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i], my += y[i];
  mx /= double(x.size()), my /= double(y.size());
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < x.size(); ++i) sxy += (x[i] - mx) * (y[i] - my), sxx += (x[i] - mx) * (x[i] - mx);
  return sxx > 0 ? sxy / sxx : 0.0;
}

std::vector<int32_t> tokenize(const defkv_model* m, const char* text) {
  std::vector<int32_t> t(4096);
  size_t n = 0;
  ok(defkv_tokenize(m, text, -1, 1, 0, t.data(), t.size(), &n), "tokenize");
  t.resize(n);
  return t;
}

uint64_t heap_bytes() {
  const struct mallinfo2 mi = mallinfo2();
  return uint64_t(mi.uordblks) + uint64_t(mi.hblkhd);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: soak MODEL OUT.tsv [TOKENS [BUDGET]]\n");
    return 2;
  }
  const uint64_t n_tokens = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 200000;
  const int64_t budget = argc > 4 ? std::strtoll(argv[4], nullptr, 10) : 128;
  constexpr uint64_t kRow = 1000, kTurn = 2500, kCancelGen = 5000, kCancelEval = 20000, kRestore = 10000,
                     kCheck = 64;

  defkv_model* model = nullptr;
  ok(defkv_model_load_file(argv[1], &model), "load");
  defkv_context_params p;
  defkv_context_params_init(&p);
  p.n_threads = 1;
  p.n_ctx = uint32_t(n_tokens + n_tokens / 4 + 4096);  // generated tokens plus the prompts
  p.kv_budget_tokens = budget;
  p.temperature = 0.8f;
  p.seed = 16;
  Gen g;
  ok(defkv_context_create(model, &p, &g.ctx), "context_create");

  const std::vector<int32_t> prompt = tokenize(model, "Once upon a time, there was a little girl named Lily.");
  // a prompt long enough for several prefill chunks, for the cancelled evaluations
  std::string long_text;
  while (long_text.size() < 3000) long_text += "The sun was warm and the birds sang in the tall green trees. ";
  const std::vector<int32_t> long_prompt = tokenize(model, long_text.c_str());

  FILE* out = std::fopen(argv[2], "w");
  if (!out) {
    std::perror(argv[2]);
    return 1;
  }
  std::fprintf(out, "tokens\tn_past\tkv_bytes_in_use\tkv_entries\tkv_bytes_reserved\trss_bytes\theap_bytes\tms_per_token\n");

  using clock = std::chrono::steady_clock;
  auto t_row = clock::now();
  const auto t_start = t_row;
  uint64_t next_row = kRow, next_turn = kTurn, next_cancel_eval = kCancelEval, next_restore = kRestore;
  // halfway through a generate call (one that ends at a row boundary returns DEFKV_OK)
  uint64_t next_cancel_gen = kCancelGen + kRow / 2;
  uint64_t n_prompts = 0, n_gen_cancels = 0, n_eval_cancels = 0, n_restores = 0;
  std::vector<double> xs, rss, heap, kv, ms;
  // reserved up front so that the driver's own heap stays constant
  for (auto* v : {&xs, &rss, &heap, &kv, &ms}) v->reserve(n_tokens / kRow + 2);
  std::vector<uint8_t> state;
  ok(defkv_eval(g.ctx, prompt.data(), prompt.size(), nullptr, nullptr), "eval", g.ctx);
  ++n_prompts;

  while (g.total < n_tokens) {
    const uint64_t before = g.total;
    const uint32_t n = uint32_t(std::min<uint64_t>(1000, next_row - g.total));
    g.cancel_at = next_cancel_gen > g.total && next_cancel_gen <= g.total + n ? next_cancel_gen : 0;
    const defkv_status s = defkv_generate(g.ctx, n, on_token, &g, nullptr);
    if (g.cancel_at != 0) {
      if (s != DEFKV_ERR_CANCELLED) fail("generate (cancel requested)", s, g.ctx);
      ++n_gen_cancels;
      next_cancel_gen += kCancelGen;
    } else if (s != DEFKV_OK) {
      fail("generate", s, g.ctx);
    }
    defkv_context_info ci{};
    ci.struct_size = sizeof ci;
    ok(defkv_context_get_info(g.ctx, &ci), "context_get_info", g.ctx);
    if (ci.last_stop_reason == DEFKV_STOP_EOS || g.total == before || g.total >= next_turn) {
      // a user turn (the story ended, or kTurn tokens passed); every kCancelEval
      // tokens a long prompt first, cancelled after its first chunk
      if (g.total >= next_turn) next_turn = (g.total / kTurn + 1) * kTurn;
      if (g.total >= next_cancel_eval) {
        const defkv_status e = defkv_eval(g.ctx, long_prompt.data(), long_prompt.size(), cancel_after_first_chunk,
                                          nullptr);
        if (e != DEFKV_ERR_CANCELLED) fail("eval (cancel requested)", e, g.ctx);
        ++n_eval_cancels;
        next_cancel_eval += kCancelEval;
      }
      ok(defkv_eval(g.ctx, prompt.data(), prompt.size(), nullptr, nullptr), "eval", g.ctx);
      ++n_prompts;
    }
    if (g.total >= next_restore) {
      size_t need = 0, len = 0;
      ok(defkv_state_size(g.ctx, &need), "state_size", g.ctx);
      state.resize(need);
      ok(defkv_state_save(g.ctx, state.data(), state.size(), &len), "state_save", g.ctx);
      defkv_context* fresh = nullptr;
      ok(defkv_context_create(model, &p, &fresh), "context_create (restore)");
      ok(defkv_state_load(fresh, state.data(), len), "state_load", fresh);
      // both continue identically (the state holds the sampler's RNG and history)
      std::vector<int32_t> a, b;
      const uint64_t total = g.total;
      g.record = &a;
      ok(defkv_generate(g.ctx, kCheck, on_token, &g, nullptr), "generate (check, saved)", g.ctx);
      g.total = total;
      g.record = &b;
      Gen h = g;
      h.ctx = fresh;
      ok(defkv_generate(fresh, kCheck, on_token, &h, nullptr), "generate (check, restored)", fresh);
      g.record = nullptr;
      if (a != b) {
        std::fprintf(stderr, "soak: the restored context diverged at %llu tokens\n", (unsigned long long)total);
        return 1;
      }
      ok(defkv_context_free(g.ctx), "context_free");
      g.ctx = fresh;
      g.total = h.total;
      ++n_restores;
      next_restore += kRestore;
      std::fprintf(stderr, "restore %llu at %llu tokens: state %zu bytes, RSS %llu bytes, heap %llu bytes\n",
                   (unsigned long long)n_restores, (unsigned long long)total, len, (unsigned long long)rss_bytes(),
                   (unsigned long long)heap_bytes());
    }
    if (g.total >= next_row) {
      const auto now = clock::now();
      const double ms_tok = std::chrono::duration<double, std::milli>(now - t_row).count() /
                            double(g.total - (next_row - kRow));
      defkv_kv_stats ks{};
      ok(defkv_get_kv_stats(g.ctx, &ks), "get_kv_stats", g.ctx);
      const uint64_t r = rss_bytes();
      const uint64_t hb = heap_bytes();
      std::fprintf(out, "%llu\t%u\t%llu\t%llu\t%llu\t%llu\t%llu\t%.4f\n", (unsigned long long)g.total, ks.n_past,
                   (unsigned long long)ks.bytes_in_use, (unsigned long long)ks.entries,
                   (unsigned long long)ks.bytes_reserved, (unsigned long long)r, (unsigned long long)hb, ms_tok);
      std::fflush(out);
      xs.push_back(double(g.total));
      rss.push_back(double(r));
      heap.push_back(double(hb));
      kv.push_back(double(ks.bytes_in_use));
      ms.push_back(ms_tok);
      t_row = now;
      next_row = (g.total / kRow + 1) * kRow;
    }
  }
  std::fclose(out);
  const double secs = std::chrono::duration<double>(clock::now() - t_start).count();
  // second half: past the warm-up (first evictions, allocator growth, page faults)
  const size_t h = xs.size() / 2;
  const std::vector<double> x2(xs.begin() + h, xs.end()), r2(rss.begin() + h, rss.end()),
      k2(kv.begin() + h, kv.end()), m2(ms.begin() + h, ms.end()), h2(heap.begin() + h, heap.end());
  double kv_max = 0, rss_max = 0, rss_min = 1e300;
  for (size_t i = 0; i < xs.size(); ++i) {
    kv_max = std::max(kv_max, kv[i]);
    if (i >= h) rss_max = std::max(rss_max, rss[i]), rss_min = std::min(rss_min, rss[i]);
  }
  std::printf("tokens %llu in %.1f s; prompts %llu, generate cancels %llu, eval cancels %llu, restores %llu\n",
              (unsigned long long)g.total, secs, (unsigned long long)n_prompts, (unsigned long long)n_gen_cancels,
              (unsigned long long)n_eval_cancels, (unsigned long long)n_restores);
  std::printf("second half: RSS %.0f..%.0f bytes, slope %.1f bytes per 1000 tokens\n", rss_min, rss_max,
              slope(x2, r2) * 1000);
  std::printf("second half: heap allocated slope %.1f bytes per 1000 tokens\n", slope(x2, h2) * 1000);
  std::printf("KV bytes in use: max %.0f, second-half slope %.1f bytes per 1000 tokens\n", kv_max,
              slope(x2, k2) * 1000);
  std::printf("ms/token: second-half slope %.6f ms per 1000 tokens\n", slope(x2, m2) * 1000);
  ok(defkv_context_free(g.ctx), "context_free");
  ok(defkv_model_free(model), "model_free");
  return 0;
}
