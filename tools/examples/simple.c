/* Example: a C99 program using the installed defkv library.
 *
 *   cc -std=c99 simple.c $(pkg-config --cflags --libs defkv) -o simple
 *   ./simple model.gguf "Once upon a time"
 *
 * Loads a model, creates a context with a bounded KV cache, streams a reply,
 * saves the conversation state to a buffer, restores it into a second
 * context and checks that both continue with the same tokens. Exit status 0
 * on success. */
#include <defkv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call, ctx)                                                                   \
  do {                                                                                     \
    defkv_status s_ = (call);                                                              \
    if (s_ != DEFKV_OK) {                                                                  \
      fprintf(stderr, "%s failed: %s: %s\n", #call, defkv_status_name(s_), defkv_last_error(ctx)); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

struct collect {
  int32_t tokens[64];
  int n;
  int print;
};

static int on_token(int32_t token, const char* text, size_t len, void* user) {
  struct collect* c = (struct collect*)user;
  if (token >= 0 && c->n < 64) c->tokens[c->n++] = token;
  if (c->print) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "stories260K.gguf";
  const char* prompt = argc > 2 ? argv[2] : "Once upon a time";
  int major, minor, patch;
  printf("defkv %s (header %s)\n", defkv_version(&major, &minor, &patch), DEFKV_VERSION_STRING);
  if (major != DEFKV_VERSION_MAJOR || defkv_abi_version() != DEFKV_ABI_VERSION) {
    fprintf(stderr, "library and header versions differ\n");
    return 1;
  }

  defkv_model* model = NULL;
  CHECK(defkv_model_load_file(path, &model), NULL);

  defkv_context_params p;
  defkv_context_params_init(&p);
  p.kv_budget_tokens = 48;
  p.kv_window = 16;
  p.seed = 42;
  defkv_context* a = NULL;
  defkv_context* b = NULL;
  CHECK(defkv_context_create(model, &p, &a), NULL);
  CHECK(defkv_context_create(model, &p, &b), NULL);

  int32_t tokens[256];
  size_t n = 0;
  CHECK(defkv_tokenize(model, prompt, -1, 1, 0, tokens, 256, &n), NULL);
  CHECK(defkv_eval(a, tokens, n, NULL, NULL), a);

  struct collect first = {{0}, 0, 1};
  printf("%s", prompt);
  CHECK(defkv_generate(a, 40, on_token, &first, NULL), a);
  printf("\n");

  size_t size = 0;
  CHECK(defkv_state_size(a, &size), a);
  void* state = malloc(size);
  CHECK(defkv_state_save(a, state, size, &size), a);
  CHECK(defkv_state_load(b, state, size), b);
  free(state);

  struct collect ca = {{0}, 0, 0}, cb = {{0}, 0, 0};
  CHECK(defkv_generate(a, 30, on_token, &ca, NULL), a);
  CHECK(defkv_generate(b, 30, on_token, &cb, NULL), b);
  if (ca.n != cb.n || memcmp(ca.tokens, cb.tokens, sizeof(int32_t) * (size_t)ca.n) != 0) {
    fprintf(stderr, "restored context diverged\n");
    return 1;
  }
  defkv_kv_stats st;
  CHECK(defkv_get_kv_stats(a, &st), a);
  printf("positions %u, KV entries %llu, %llu bytes in use, %u eviction rounds; restore OK\n", st.n_past,
         (unsigned long long)st.entries, (unsigned long long)st.bytes_in_use, st.evict_rounds);

  /* Misuse is reported, not fatal. */
  if (defkv_context_free(a) != DEFKV_OK || defkv_context_free(a) != DEFKV_ERR_INVALID_HANDLE) return 1;
  CHECK(defkv_context_free(b), NULL);
  CHECK(defkv_model_free(model), NULL);
  return 0;
}
