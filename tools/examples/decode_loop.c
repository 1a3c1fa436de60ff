/* Example: the caller's own decoding loop with defkv_sample / defkv_decode.
 *
 *   cc -std=c99 decode_loop.c $(pkg-config --cflags --libs defkv) -o decode_loop
 *   ./decode_loop model.gguf "Once upon a time"
 *
 * Evaluates a prompt, then samples and feeds one token at a time (what
 * defkv_generate does inside; here the caller could stop on its own
 * condition, force tokens or time each step), with a bounded KV cache that
 * evicts while decoding. Checks that the loop gives the same tokens as
 * defkv_generate on a second context, prints the context's resolved
 * configuration (defkv_context_get_info) and exits 0 on success. */
#include <defkv.h>

#include <stdio.h>
#include <string.h>

#define N_TOKENS 96

#define CHECK(call, ctx)                                                                   \
  do {                                                                                     \
    defkv_status s_ = (call);                                                              \
    if (s_ != DEFKV_OK) {                                                                  \
      fprintf(stderr, "%s failed: %s: %s\n", #call, defkv_status_name(s_), defkv_last_error(ctx)); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

struct collect {
  int32_t tokens[N_TOKENS];
  int n;
};

static int on_token(int32_t token, const char* text, size_t len, void* user) {
  struct collect* c = (struct collect*)user;
  (void)text;
  (void)len;
  if (token >= 0 && c->n < N_TOKENS) c->tokens[c->n++] = token;
  return 0;
}

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "stories260K.gguf";
  const char* prompt = argc > 2 ? argv[2] : "Once upon a time";
  defkv_model* model = NULL;
  defkv_context_params p;
  defkv_context* a = NULL;
  defkv_context* b = NULL;
  defkv_context_info info;
  defkv_kv_stats st;
  struct collect want = {{0}, 0};
  int32_t prompt_tokens[256];
  int32_t got[N_TOKENS];
  size_t n = 0;
  int i, same = 1;

  CHECK(defkv_model_load_file(path, &model), NULL);
  defkv_context_params_init(&p);
  p.kv_budget_tokens = 40;
  p.kv_window = 16;
  p.seed = 7;
  CHECK(defkv_context_create(model, &p, &a), NULL);
  CHECK(defkv_context_create(model, &p, &b), NULL);
  CHECK(defkv_tokenize(model, prompt, -1, 1, 0, prompt_tokens, 256, &n), NULL);
  CHECK(defkv_eval(a, prompt_tokens, n, NULL, NULL), a);
  CHECK(defkv_eval(b, prompt_tokens, n, NULL, NULL), b);

  /* The loop: sample from the last logits, print, feed (all but the last). */
  printf("%s", prompt);
  for (i = 0; i < N_TOKENS; ++i) {
    char piece[64];
    size_t len = 0;
    CHECK(defkv_sample(a, &got[i]), a);
    if (defkv_token_piece(model, got[i], piece, sizeof piece, &len) == DEFKV_OK) fwrite(piece, 1, len, stdout);
    if (i + 1 < N_TOKENS) CHECK(defkv_decode(a, got[i]), a);
  }
  printf("\n");

  CHECK(defkv_generate(b, N_TOKENS, on_token, &want, NULL), b);
  for (i = 0; i < N_TOKENS; ++i) same = same && i < want.n && want.tokens[i] == got[i];

  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK(defkv_context_get_info(a, &info), a);
  CHECK(defkv_get_kv_stats(a, &st), a);
  printf("schedule %s, budget %u tok/head, prefill chunk %u, decode slack %u, %u eviction rounds, "
         "%llu KV entries; loop %s defkv_generate\n",
         info.kv_schedule == DEFKV_SCHEDULE_BOUNDED ? "bounded" : "oneshot", info.budget_tokens,
         info.prefill_chunk_tokens, info.decode_slack_tokens, st.evict_rounds, (unsigned long long)st.entries,
         same ? "==" : "!=");
  CHECK(defkv_context_free(a), NULL);
  CHECK(defkv_context_free(b), NULL);
  CHECK(defkv_model_free(model), NULL);
  return same ? 0 : 1;
}
