/*
 * defkv.h: the stable C API of the defkv inference library.
 *
 * C99-compatible; no C++ types cross this boundary and no C++ exception ever
 * escapes a call. Every function returns a defkv_status; on failure
 * defkv_last_error(ctx) gives a message naming the problem.
 *
 * ---------------------------------------------------------------------------
 * Typical use
 *
 *   defkv_model* m; defkv_context* c;
 *   defkv_model_load_file("model.gguf", &m);
 *   defkv_context_params p; defkv_context_params_init(&p);
 *   p.kv_budget_tokens = 256;                       // bounded cache, DefensiveKV
 *   defkv_context_create(m, &p, &c);
 *   int32_t toks[512]; size_t n;
 *   defkv_tokenize(m, "Once upon a time", -1, 1, 0, toks, 512, &n);
 *   defkv_eval(c, toks, n, NULL, NULL);              // prompt (chunked prefill)
 *   defkv_generate(c, 64, on_token, user, &n);       // streams UTF-8 pieces
 *   defkv_context_free(c); defkv_model_free(m);
 *
 * ---------------------------------------------------------------------------
 * Handles and their contract
 *
 * defkv_model and defkv_context are opaque. The library keeps a registry of
 * live handles: passing NULL, a freed handle, or a pointer that is not a live
 * handle of the right kind returns DEFKV_ERR_INVALID_HANDLE (nothing is
 * dereferenced before the registry check). Freeing twice therefore returns
 * DEFKV_ERR_INVALID_HANDLE on the second call -- unless a new handle was
 * created in between at the same address, which the library cannot tell from
 * the old one: do not use a handle after freeing it.
 *
 * One model may be shared read-only by any number of contexts, on any number
 * of threads. Freeing a model invalidates the model handle at once; contexts
 * created from it keep the weights alive until they are freed.
 *
 * A context is used by one call at a time: a call made while another call on
 * the same context is running returns DEFKV_ERR_BUSY (it is not queued; its
 * message goes to defkv_last_error(NULL) of the calling thread only).
 * defkv_cancel() is the exception: it may be called from any thread at any
 * time while the context is alive.
 *
 * ---------------------------------------------------------------------------
 * Errors
 *
 * defkv_last_error(ctx) returns the message of the last failed call made on
 * that context; defkv_last_error(NULL) the message of the last failed call
 * made by the calling thread (any handle or none, e.g. defkv_model_load_file).
 * The pointer stays valid until the next failing call on the same context
 * (resp. by the same thread). Successful calls do not clear it.
 *
 * Size queries: functions filling a caller buffer take (buf, capacity,
 * *out_len). When the buffer is too small they write nothing, set *out_len
 * to the size needed and return DEFKV_ERR_BUFFER_TOO_SMALL. buf may be NULL
 * when capacity is 0.
 */
#ifndef DEFKV_H
#define DEFKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DEFKV_API
#elif defined(__GNUC__)
#define DEFKV_API __attribute__((visibility("default")))
#else
#define DEFKV_API
#endif

/* Library version (semantic versioning) and the C ABI version: the ABI
 * version changes whenever existing declarations change incompatibly. Before
 * 1.0 that includes dropping fields of defkv_context_params and
 * defkv_context_info (ABI 2 dropped the measured-worse bounded-schedule
 * variants kv_running_max, kv_score_all_queries, kv_running_max_decay; ABI 3
 * dropped kv_interim_policy of both, the window-scored interim rounds the
 * lookahead replaced); a program built against another header is refused by
 * defkv_context_create (struct_size mismatch), never misread. */
#define DEFKV_VERSION_MAJOR 0
#define DEFKV_VERSION_MINOR 1
#define DEFKV_VERSION_PATCH 0
#define DEFKV_VERSION_STRING "0.1.0"
#define DEFKV_ABI_VERSION 3
/* Version of the saved-state format written by defkv_state_save*(). */
#define DEFKV_STATE_FORMAT_VERSION 1

typedef enum defkv_status {
  DEFKV_OK = 0,
  DEFKV_ERR_INVALID_ARGUMENT = 1,   /* NULL pointer, value out of range, bad option */
  DEFKV_ERR_INVALID_HANDLE = 2,     /* NULL, freed or foreign handle */
  DEFKV_ERR_BAD_STATE = 3,          /* call in the wrong order (e.g. generate before any eval) */
  DEFKV_ERR_BUFFER_TOO_SMALL = 4,   /* *out_len holds the size needed */
  DEFKV_ERR_IO = 5,                 /* file cannot be opened, read or written */
  DEFKV_ERR_FORMAT = 6,             /* malformed model file or corrupt saved state */
  DEFKV_ERR_MISMATCH = 7,           /* saved state from another model or incompatible context */
  DEFKV_ERR_CONTEXT_FULL = 8,       /* positions would exceed n_ctx */
  DEFKV_ERR_CANCELLED = 9,          /* defkv_cancel() or a callback stopped the call */
  DEFKV_ERR_OUT_OF_MEMORY = 10,
  DEFKV_ERR_BUSY = 11,              /* another call on this context is running */
  DEFKV_ERR_INTERNAL = 12,          /* a bug: please report the message */
  DEFKV_ERR_NUMERIC = 13            /* the model produced NaN/Inf logits (the message names the
                                       position and token). The batch that produced them is not
                                       kept (earlier prefill chunks are; a pending token is
                                       dropped) and there are no logits to sample from until the
                                       next successful eval/decode. The weights are broken: models
                                       whose norm weights or biases hold NaN/Inf are refused at
                                       load with DEFKV_ERR_FORMAT; matrices are not scanned */
} defkv_status;

typedef struct defkv_model defkv_model;
typedef struct defkv_context defkv_context;

/* ---- version and errors ---- */

/* Runtime version of the linked library ("0.1.0"); major/minor/patch may be NULL. */
DEFKV_API const char* defkv_version(int* major, int* minor, int* patch);
DEFKV_API int defkv_abi_version(void);
/* Constant name of a status ("DEFKV_ERR_BUSY"); "unknown status" otherwise. */
DEFKV_API const char* defkv_status_name(defkv_status s);
/* See "Errors" above. Never NULL (empty string when there was no error). */
DEFKV_API const char* defkv_last_error(const defkv_context* ctx);

/* ---- models ---- */

/* Memory-maps a GGUF file (architecture llama, qwen2, qwen3, phi3, gemma2 or gemma3;
 * f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K and q6_K weights, mixed
 * per tensor as in the _M files). The weights are copied into a layout for
 * the kernels: weights larger than the memory available now (MemAvailable,
 * or what the cgroup's memory.max leaves) are refused before any copy,
 * DEFKV_ERR_OUT_OF_MEMORY, the message giving both byte counts. */
DEFKV_API defkv_status defkv_model_load_file(const char* path, defkv_model** out);
/* Parses a GGUF image in memory. copy != 0: the library copies the bytes (the
 * caller may free its buffer on return). copy == 0: no copy is made and the
 * buffer must stay valid and unchanged until the model and every context
 * created from it are freed. */
DEFKV_API defkv_status defkv_model_load_buffer(const void* data, size_t size, int copy, defkv_model** out);
DEFKV_API defkv_status defkv_model_free(defkv_model* model);

typedef struct defkv_model_info {
  uint32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
  uint32_t n_ctx_train;   /* llama.context_length (0 if absent) */
  int32_t bos, eos;       /* special token ids (-1: none) */
  uint64_t weight_bytes;  /* bytes of weights referenced */
} defkv_model_info;
DEFKV_API defkv_status defkv_model_get_info(const defkv_model* model, defkv_model_info* out);
/* A string metadata value of the GGUF (e.g. "tokenizer.chat_template",
 * "general.name"), NUL-terminated; *out_len excludes the NUL and the capacity
 * must include it. A missing key returns DEFKV_ERR_INVALID_ARGUMENT. */
DEFKV_API defkv_status defkv_model_meta_string(const defkv_model* model, const char* key,
                                               char* buf, size_t capacity, size_t* out_len);

/* ---- tokenizer ---- */

/* Encodes text (len bytes, or NUL-terminated when len < 0). add_bos != 0
 * prepends BOS when the model asks for it; parse_special != 0 turns control
 * token texts such as "</s>" or "<|im_end|>" into their ids. tokens may be NULL
 * when capacity is 0 (size query). */
DEFKV_API defkv_status defkv_tokenize(const defkv_model* model, const char* text, int64_t len, int add_bos,
                                      int parse_special, int32_t* tokens, size_t capacity, size_t* n_out);
/* Decodes tokens to valid UTF-8 (invalid byte sequences become U+FFFD), with
 * a NUL terminator; *out_len excludes it, the capacity must include it. The
 * leading space SentencePiece adds after BOS is dropped. */
DEFKV_API defkv_status defkv_detokenize(const defkv_model* model, const int32_t* tokens, size_t n_tokens,
                                        char* buf, size_t capacity, size_t* out_len);
/* 1 when the token ends generation (EOS, EOT, <|eot_id|>, <|im_end|>,
 * <|endoftext|>, ... as llama.cpp's EOG set; defkv_generate stops there),
 * else 0 (also for a NULL model or an id outside the vocabulary). */
DEFKV_API int defkv_token_is_eog(const defkv_model* model, int32_t token);
/* Raw bytes of one token's piece (may be a partial UTF-8 sequence), NUL-terminated. */
DEFKV_API defkv_status defkv_token_piece(const defkv_model* model, int32_t token, char* buf, size_t capacity,
                                         size_t* out_len);

/* ---- chat templates ---- */
/*
 * Renders a conversation into the prompt text the model was trained on, as
 * the model's Jinja chat template (GGUF tokenizer.chat_template) renders it
 * with HF transformers, byte for byte. The template is recognised by its
 * markers (like llama.cpp's llama_chat_apply_template); these families are
 * known, with the variants their published templates have:
 *
 *   chatml  ChatML, with the default system prompt the template writes when
 *           the conversation has none (Qwen2.5, SmolLM2)
 *   qwen3   Qwen3 (thinking: see DEFKV_CHAT_DISABLE_THINKING)
 *   llama3  Llama 3, 3.1, 3.2 (3.1/3.2: "Cutting Knowledge Date" header; the
 *           date is today's where the template calls strftime_now)
 *   llama2  Llama 2 chat ([INST], <<SYS>>)
 *   zephyr  Zephyr, TinyLlama chat
 *   phi3    Phi-3, Phi-3.5 (<|user|> ... <|end|>)
 *   gemma   Gemma 2 and 3 (a system message is folded into the first user
 *           turn, as Gemma 3's template does; Gemma 2's template rejects it)
 *
 * A template that is not recognised, or none, falls back to "plain":
 *   "SYSTEM\n\n" "User: CONTENT\n" "Assistant: CONTENT\n" ... "Assistant:"
 * defkv_chat_template_get_info tells whether the fallback applies, so the
 * application can warn.
 *
 * The rendering contains the special tokens' texts (BOS where the template
 * writes it, "<|im_end|>", ...): tokenize it with parse_special = 1, and
 * with add_bos = 0 when info.writes_bos is set.
 *
 * tmpl: NULL for the model's own template; else a format name listed above
 * (or "plain") or the text of a Jinja chat template.
 *
 * Both calls only read the model: any thread, any time while it is alive.
 */
typedef struct defkv_chat_message {
  const char* role;     /* "system", "user" or "assistant" */
  const char* content;  /* NUL-terminated UTF-8 */
} defkv_chat_message;

/* Flags of defkv_chat_apply_template. */
#define DEFKV_CHAT_ADD_GENERATION_PROMPT 1u /* end with the header that opens the assistant's reply
                                               (llama2 has none; Meta's first Llama 3 template
                                               always writes it) */
#define DEFKV_CHAT_DISABLE_THINKING 2u      /* Qwen3: enable_thinking = false (an empty <think> block
                                               after the generation prompt: the model answers without
                                               reasoning). Ignored by templates without the switch. */

/* Writes the rendered conversation, NUL-terminated, into buf (size query as
 * described under "Errors"). DEFKV_ERR_INVALID_ARGUMENT, with a message
 * naming the message index, for a NULL role or content, a role other than
 * system/user/assistant, a conversation the template rejects (Gemma and
 * Llama 2: user and assistant turns must alternate), messages NULL with
 * n_messages > 0, or an unknown flag. */
DEFKV_API defkv_status defkv_chat_apply_template(const defkv_model* model, const char* tmpl,
                                                 const defkv_chat_message* messages, size_t n_messages,
                                                 uint32_t flags, char* buf, size_t capacity, size_t* out_len);

/* Which format defkv_chat_apply_template uses for (model, tmpl). Versioned
 * like defkv_context_info: set struct_size = sizeof(defkv_chat_template_info)
 * first. */
typedef struct defkv_chat_template_info {
  uint32_t struct_size;
  int32_t recognised;      /* 1: a known format; 0: the plain fallback (warn the user) */
  int32_t has_template;    /* 1: tmpl was given or the model has tokenizer.chat_template */
  int32_t writes_bos;      /* 1: the rendering writes the BOS text itself */
  char format[16];         /* "chatml", "qwen3", ..., "plain" */
  char end_of_turn[64];    /* text that closes an assistant turn ("<|im_end|>"; the EOS text for
                              llama2 and zephyr; "" for plain) */
  char stop_text[16];      /* plain: a reply ends at this text ("\nUser:"); else "" */
} defkv_chat_template_info;
DEFKV_API defkv_status defkv_chat_template_get_info(const defkv_model* model, const char* tmpl,
                                                    defkv_chat_template_info* out);

/* ---- contexts ---- */

typedef enum defkv_kv_policy {
  DEFKV_POLICY_DEFENSIVEKV = 0,     /* default */
  DEFKV_POLICY_LAYER_DEFENSIVEKV = 1,
  DEFKV_POLICY_CRITICALKV = 2,
  DEFKV_POLICY_ADAKV = 3,
  DEFKV_POLICY_SNAPKV = 4,
  DEFKV_POLICY_STREAMING = 5
} defkv_kv_policy;

/* The policy's name as the defkv CLI spells it ("defensivekv", "layer-defensivekv",
 * ...); NULL for an unknown value. */
DEFKV_API const char* defkv_kv_policy_name(int32_t policy);
/* The defkv_kv_policy of a name (also "layer_defensivekv"); -1 for an unknown name
 * and for "full" (no budget means no eviction). */
DEFKV_API int32_t defkv_kv_policy_from_name(const char* name);

typedef enum defkv_schedule {
  DEFKV_SCHEDULE_DEFAULT = 0,  /* bounded when a budget is set */
  DEFKV_SCHEDULE_BOUNDED = 1,  /* evict during prefill and decoding: resident KV stays within budget + one chunk */
  DEFKV_SCHEDULE_ONESHOT = 2   /* prefill everything, compress once, no eviction while decoding */
} defkv_schedule;

typedef enum defkv_kv_type {
  DEFKV_KV_F16 = 0,  /* default */
  DEFKV_KV_F32 = 1,
  DEFKV_KV_Q8_0 = 2
} defkv_kv_type;

/* Initialise with defkv_context_params_init() and then change fields.
 * struct_size must equal this header's sizeof(defkv_context_params): the
 * layout is that of one ABI version (see DEFKV_ABI_VERSION). */
typedef struct defkv_context_params {
  uint32_t struct_size;      /* sizeof(defkv_context_params), set by _init */
  uint32_t n_threads;        /* 0: OpenMP default */
  uint32_t n_ctx;            /* positions per conversation; 0: the model's context length (2048 if unknown) */

  /* KV budget: at most one of the three is non-zero (none: full cache, no eviction). */
  int64_t kv_budget_tokens;  /* entries per layer and KV head (average over heads) */
  double kv_ratio;           /* fraction of the first prompt kept, in (0, 1] */
  int64_t kv_mem_bytes;      /* ceiling on the KV pool's bytes */
  /* Enumerations are stored as int32_t (fixed size across compilers). */
  int32_t kv_policy;         /* defkv_kv_policy */
  int32_t kv_schedule;       /* defkv_schedule */
  int32_t kv_type;           /* defkv_kv_type */
  uint32_t kv_window;        /* observation window; 0: 32 */
  int32_t kv_sinks;          /* first tokens always kept (streaming keeps them; every policy counts
                                them in the minimum budget); < 0: the default, 4 (set by _init); 0: no
                                sinks */

  /* Sampling (llama.cpp semantics). temperature <= 0: greedy. */
  float temperature;         /* default 0.8 */
  int32_t top_k;             /* default 40; <= 0 disabled */
  float top_p;               /* default 0.95; >= 1 disabled */
  float min_p;               /* default 0.05; <= 0 disabled */
  float repeat_penalty;      /* default 1 (disabled, as in llama.cpp) */
  int32_t repeat_last_n;     /* default 64 */
  uint64_t seed;             /* RNG seed; equal seeds give equal outputs */

  /* Tokens per forward pass while evaluating a prompt. 0: the engine's
   * default, 256 without a bounded budget; with one, a third of the budget in
   * multiples of 64, between max(64, 2 x window) and 256. */
  uint32_t prefill_chunk_tokens;

  uint32_t kv_pool;          /* score pooling kernel (odd); 0: 5 */
} defkv_context_params;

/* Fills *p with the defaults and sets struct_size. */
DEFKV_API void defkv_context_params_init(defkv_context_params* p);
/* Allocates the whole context (KV pool, scratch) now; no allocation grows
 * with the conversation afterwards. A context that needs more memory than
 * the machine has (RAM, or the cgroup's memory.max) is refused before
 * allocating: DEFKV_ERR_OUT_OF_MEMORY, the message giving the bytes needed
 * and the bytes there are. */
DEFKV_API defkv_status defkv_context_create(defkv_model* model, const defkv_context_params* params,
                                            defkv_context** out);
DEFKV_API defkv_status defkv_context_free(defkv_context* ctx);
/* Forgets the conversation (KV cache, sampler history); parameters stay. */
DEFKV_API defkv_status defkv_reset(defkv_context* ctx);
/* Positions used so far (tokens evaluated, evicted ones included). */
DEFKV_API defkv_status defkv_n_past(const defkv_context* ctx, uint32_t* out);
DEFKV_API defkv_status defkv_n_ctx(const defkv_context* ctx, uint32_t* out);

/* ---- evaluation and generation ---- */

/* Prompt progress: done of total tokens evaluated so far (called after each
 * prefill chunk). Return non-zero to cancel. */
typedef int (*defkv_progress_fn)(uint64_t done, uint64_t total, void* user);

/* Appends tokens to the conversation: they take positions n_past .. n_past+n-1
 * (chunked prefill with the schedule's evictions) and enter the sampler's
 * repetition history. A token left pending by defkv_generate() is fed first.
 * On DEFKV_ERR_CANCELLED the context stays usable: the chunks evaluated
 * before the cancellation are kept (defkv_n_past tells how far it got). */
DEFKV_API defkv_status defkv_eval(defkv_context* ctx, const int32_t* tokens, size_t n_tokens,
                                  defkv_progress_fn progress, void* user);

/* Streaming: called once per generated token with its text. The text is
 * always valid UTF-8 (bytes of a character split across tokens are held back
 * until complete, so text may be empty) and is NUL-terminated. When the
 * generation ends, held-back bytes are flushed by one more call with token
 * -1 (only if there are any). Return non-zero to stop after this token. */
typedef int (*defkv_token_fn)(int32_t token, const char* text, size_t text_len, void* user);

/* Samples up to n_predict tokens from the logits of the last evaluated token.
 * It stops at the model's EOS (reported, counted), when the callback returns
 * non-zero (DEFKV_OK), when the context is full, or on defkv_cancel()
 * (DEFKV_ERR_CANCELLED; the tokens delivered so far are part of the
 * conversation). The last token sampled is not evaluated yet: it stays
 * pending and is fed at the start of the next defkv_eval/defkv_generate (or
 * saved with the state). Needs a prior defkv_eval (DEFKV_ERR_BAD_STATE
 * otherwise). n_generated (may be NULL) receives the number of tokens
 * sampled, also on cancellation. */
DEFKV_API defkv_status defkv_generate(defkv_context* ctx, uint32_t n_predict, defkv_token_fn on_token,
                                      void* user, uint32_t* n_generated);

/* Requests cancellation of the call running on ctx (any thread; returns at
 * once). Prefill checks between layers of each chunk, eviction between
 * layers, decoding between layers of each step; the call then returns
 * DEFKV_ERR_CANCELLED with the context usable. A request made while no call
 * is running is dropped: each defkv_eval/defkv_generate starts uncancelled. */
DEFKV_API defkv_status defkv_cancel(defkv_context* ctx);

/* Evaluates one token as a decoding step at position n_past: unlike a
 * one-token defkv_eval, the schedule's decode-time eviction applies (bounded:
 * back to the budget every decode-slack tokens), as for tokens defkv_generate
 * feeds. A token left pending by defkv_generate() is fed first. The token
 * enters the sampler's repetition history (unless it is the token
 * defkv_sample just returned, which is there already). Together with defkv_sample and
 * defkv_get_logits this lets a caller run its own decoding loop (e.g. to
 * time single steps). DEFKV_ERR_CONTEXT_FULL when no position is left. */
DEFKV_API defkv_status defkv_decode(defkv_context* ctx, int32_t token);

/* Samples a token from the logits of the last evaluated token with the
 * context's sampler (its parameters, RNG and repetition history; the RNG
 * advances and the token enters the repetition history, as in
 * defkv_generate). The token is NOT fed: pass it to defkv_decode (or first to
 * defkv_eval) to continue. DEFKV_ERR_BAD_STATE before any evaluation, after
 * a cancelled defkv_eval (the last token's logits were not computed), or
 * while a token sampled by defkv_generate is pending (its logits are not
 * computed yet). */
DEFKV_API defkv_status defkv_sample(defkv_context* ctx, int32_t* out_token);

/* Copies the logits of the last evaluated token [n_vocab] (the ones
 * defkv_sample and defkv_generate sample from). DEFKV_ERR_BAD_STATE before
 * any evaluation and after a cancelled defkv_eval. Size query as described
 * under "Errors". */
DEFKV_API defkv_status defkv_get_logits(const defkv_context* ctx, float* logits, size_t capacity, size_t* n_out);

/* ---- introspection ---- */

/* Why the last defkv_generate on the context returned. */
typedef enum defkv_stop_reason {
  DEFKV_STOP_NONE = 0,          /* no generate call yet (or reset since) */
  DEFKV_STOP_N_PREDICT = 1,     /* n_predict tokens sampled */
  DEFKV_STOP_EOS = 2,           /* an end-of-generation token was sampled (defkv_token_is_eog) */
  DEFKV_STOP_CALLBACK = 3,      /* the token callback returned non-zero */
  DEFKV_STOP_CONTEXT_FULL = 4,  /* no position left (DEFKV_ERR_CONTEXT_FULL) */
  DEFKV_STOP_CANCELLED = 5,     /* defkv_cancel (DEFKV_ERR_CANCELLED) */
  DEFKV_STOP_ERROR = 6          /* another error */
} defkv_stop_reason;
/* Constant name of a stop reason ("eos", "n_predict", ...); "unknown" otherwise. */
DEFKV_API const char* defkv_stop_reason_name(int32_t reason);

/* The context's effective configuration (defaults resolved) and its last
 * stop reason. Set struct_size to sizeof(defkv_context_info) before the
 * call; the library fills at most struct_size bytes and sets struct_size to
 * the bytes it filled. */
typedef struct defkv_context_info {
  uint32_t struct_size;
  uint32_t n_ctx;                 /* positions */
  uint32_t n_threads;             /* threads used (0 resolved) */
  int32_t has_budget;             /* 1: a KV budget was set (eviction enabled) */
  int32_t kv_policy;              /* defkv_kv_policy (meaningful with a budget) */
  int32_t kv_schedule;            /* DEFKV_SCHEDULE_BOUNDED or _ONESHOT (default resolved) */
  int32_t kv_type;                /* defkv_kv_type */
  uint32_t kv_window, kv_sinks, kv_pool;
  uint32_t prefill_chunk_tokens;  /* tokens per forward pass in defkv_eval */
  uint32_t decode_slack_tokens;   /* bounded: tokens decoded between eviction rounds */
  uint32_t budget_tokens;         /* effective budget per head; 0: none or kv_ratio not fixed yet */
  uint64_t kv_row_bytes;          /* bytes of one key (or value) row of one head */
  uint64_t kv_bytes_reserved;     /* the KV pool */
  int32_t last_stop_reason;       /* defkv_stop_reason of the last defkv_generate */
} defkv_context_info;
DEFKV_API defkv_status defkv_context_get_info(const defkv_context* ctx, defkv_context_info* out);


typedef struct defkv_kv_stats {
  uint64_t bytes_in_use;     /* KV pages holding live entries */
  uint64_t bytes_reserved;   /* the KV pool, allocated once */
  uint64_t bytes_peak;
  uint64_t entries;          /* live (token, layer, KV head) entries */
  uint32_t n_layer, n_head_kv;
  uint32_t n_past;           /* positions used */
  uint32_t budget_tokens;    /* effective budget per head; 0: none (or kv_ratio not fixed yet) */
  uint32_t evict_rounds;
  uint32_t pending_token;    /* 1 when a generated token waits to be fed */
  uint64_t prompt_tokens, decode_tokens;
  double prompt_seconds, decode_seconds, evict_seconds;
} defkv_kv_stats;
DEFKV_API defkv_status defkv_get_kv_stats(const defkv_context* ctx, defkv_kv_stats* out);
/* Live entries of each (layer, KV head), layer-major: counts[l * n_head_kv + h]. */
DEFKV_API defkv_status defkv_kv_entries(const defkv_context* ctx, uint32_t* counts, size_t capacity,
                                        size_t* n_out);
/* Original positions of the entries kept in (layer, head), ascending. */
DEFKV_API defkv_status defkv_kv_positions(const defkv_context* ctx, uint32_t layer, uint32_t head,
                                          int32_t* positions, size_t capacity, size_t* n_out);

/* ---- state save / restore ---- */
/*
 * The state is the whole conversation: the (possibly evicted) KV cache with
 * each entry's original position and per-head lengths and policy data, the
 * eviction window queries, the logits of the last token, the pending token,
 * and the sampler's RNG and repetition history. Restoring it into a context
 * created with the same model and the same KV parameters continues exactly
 * as the saved context would have. The format is versioned and checksummed;
 * loading validates everything before changing the context, and returns
 * DEFKV_ERR_FORMAT for corrupt data and DEFKV_ERR_MISMATCH for a state from
 * another model or from a context with other KV parameters (the context is
 * unchanged then).
 */
DEFKV_API defkv_status defkv_state_size(const defkv_context* ctx, size_t* out);
DEFKV_API defkv_status defkv_state_save(const defkv_context* ctx, void* buf, size_t capacity, size_t* out_len);
DEFKV_API defkv_status defkv_state_load(defkv_context* ctx, const void* buf, size_t size);
DEFKV_API defkv_status defkv_state_save_file(const defkv_context* ctx, const char* path);
DEFKV_API defkv_status defkv_state_load_file(defkv_context* ctx, const char* path);

#ifdef __cplusplus
}
#endif

#endif /* DEFKV_H */
