/* Example: cancelling defkv calls from another thread, and how long they
 * take to return (prefill, prefill with eviction, decoding).
 *
 *   cc -std=c99 cancel.c $(pkg-config --cflags --libs defkv) -lpthread -o cancel
 *   ./cancel model.gguf [prompt_tokens] [rounds]
 *
 * Each round starts a call, cancels it from a second thread after a varying
 * delay, and reports the time from defkv_cancel() to the call's return. The
 * context must stay usable: after each round it generates a few tokens.
 * Exit status 0 when every cancelled call returned DEFKV_ERR_CANCELLED (or
 * finished first) and every context stayed usable. */
#define _POSIX_C_SOURCE 200809L
#include <defkv.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct canceller {
  defkv_context* ctx;
  double delay_s;
  double t_cancel;
};

static void* cancel_later(void* arg) {
  struct canceller* c = (struct canceller*)arg;
  struct timespec d;
  d.tv_sec = (time_t)c->delay_s;
  d.tv_nsec = (long)((c->delay_s - (double)d.tv_sec) * 1e9);
  nanosleep(&d, NULL);
  c->t_cancel = now_s();
  defkv_cancel(c->ctx);
  return NULL;
}

/* Runs one phase `rounds` times; returns non-zero on failure. */
static int phase(defkv_model* m, const char* name, int budget, int decode, const int32_t* prompt, size_t n_prompt,
                 int rounds) {
  double worst = 0, sum = 0;
  int cancelled = 0, r;
  for (r = 0; r < rounds; ++r) {
    defkv_context_params p;
    defkv_context* c = NULL;
    struct canceller cc;
    pthread_t th;
    defkv_status s;
    double t_ret;
    defkv_context_params_init(&p);
    p.kv_budget_tokens = budget;
    p.n_ctx = 8192;
    if (defkv_context_create(m, &p, &c) != DEFKV_OK) {
      fprintf(stderr, "%s: %s\n", name, defkv_last_error(NULL));
      return 1;
    }
    if (decode && defkv_eval(c, prompt, 8, NULL, NULL) != DEFKV_OK) return 1;
    cc.ctx = c;
    cc.delay_s = 0.01 + 0.037 * r;
    cc.t_cancel = 0;
    pthread_create(&th, NULL, cancel_later, &cc);
    s = decode ? defkv_generate(c, 4000, NULL, NULL, NULL) : defkv_eval(c, prompt, n_prompt, NULL, NULL);
    t_ret = now_s();
    pthread_join(th, NULL);
    if (s == DEFKV_ERR_CANCELLED) {
      double lat = t_ret - cc.t_cancel;
      if (rounds > 1 && getenv("DEFKV_CANCEL_VERBOSE")) printf("  %s round %d: %.1f ms\n", name, r, 1e3 * lat);
      ++cancelled;
      sum += lat;
      if (lat > worst) worst = lat;
    } else if (s != DEFKV_OK) {
      fprintf(stderr, "%s: unexpected %s: %s\n", name, defkv_status_name(s), defkv_last_error(c));
      return 1;
    }
    /* Still usable: finish the prompt if needed, then generate. */
    {
      uint32_t np = 0;
      defkv_n_past(c, &np);
      if (!decode && np < n_prompt && defkv_eval(c, prompt + np, n_prompt - np, NULL, NULL) != DEFKV_OK) {
        fprintf(stderr, "%s: not usable after cancel: %s\n", name, defkv_last_error(c));
        return 1;
      }
      if (defkv_generate(c, 3, NULL, NULL, NULL) != DEFKV_OK) {
        fprintf(stderr, "%s: generate after cancel: %s\n", name, defkv_last_error(c));
        return 1;
      }
    }
    defkv_context_free(c);
  }
  printf("%-22s cancelled %d/%d, cancel->return mean %.1f ms, max %.1f ms\n", name, cancelled, rounds,
         cancelled ? 1e3 * sum / cancelled : 0.0, 1e3 * worst);
  return 0;
}

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "stories260K.gguf";
  size_t n_prompt = argc > 2 ? (size_t)atoi(argv[2]) : 512;
  int rounds = argc > 3 ? atoi(argv[3]) : 3;
  defkv_model* m = NULL;
  defkv_model_info info;
  int32_t* prompt;
  size_t i;
  int rc = 0;
  if (defkv_model_load_file(path, &m) != DEFKV_OK) {
    fprintf(stderr, "%s\n", defkv_last_error(NULL));
    return 1;
  }
  defkv_model_get_info(m, &info);
  prompt = (int32_t*)malloc(n_prompt * sizeof(int32_t));
  prompt[0] = info.bos;
  for (i = 1; i < n_prompt; ++i) prompt[i] = (int32_t)(300 + (i * 7919) % (info.n_vocab - 300));
  rc |= phase(m, "prefill", 0, 0, prompt, n_prompt, rounds);
  rc |= phase(m, "prefill+eviction", 64, 0, prompt, n_prompt, rounds);
  rc |= phase(m, "decode", 0, 1, prompt, n_prompt, rounds);
  rc |= phase(m, "decode+eviction", 64, 1, prompt, n_prompt, rounds);
  free(prompt);
  defkv_model_free(m);
  return rc;
}
