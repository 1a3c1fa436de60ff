// Forward pass over GGUF weights of the llama family: llama (Llama 2/3,
// SmolLM2, Mistral-style), qwen2, qwen3, phi3, gemma2 and gemma3. Their
// differences are data in Config / Layer (biases, q/k norms, post norms,
// fused tensors as row views, RoPE style/base/scaling/factors, activation,
// scales, soft caps, a sliding window per layer), read by one forward pass.
//
// The Model owns the parsed gguf::File (its memory mapping) and exposes the
// weights as quant::Matrix views into it: no weight is copied (only 1-D norm
// vectors stored in a non-F32 type are converted once at load). A Model is
// immutable after load and may be shared by several contexts/threads.
//
// One code path serves batched prefill and single-token decode: forward()
// takes n_tokens >= 1 tokens at given positions, appends their keys/values to
// a kv::KvCache, and lets each query attend to the live entries of its KV head
// whose position is <= its own (causal by position; entries that were evicted
// are simply absent). All per-call buffers live in a Workspace allocated once.
//
// The model knows no eviction policy. A caller that needs more than the
// logits (the engine: eviction's query window and value norms) installs a
// LayerObserver, which sees each layer's queries and values and may fill the
// aux floats the cache stores with the layer's new entries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <deque>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "runtime/gguf/gguf.h"
#include "runtime/kv/kv_cache.h"

namespace defkv::model {

enum class Activation : uint8_t { silu, gelu_tanh };
const char* activation_name(Activation a);

// One RoPE table: the angle of pair i at position p is
//   p * freq_scale * freq_base^(-2i/n_rot) / freq_factors[i]
// (freq_factors: Config::rope_freqs, when present; scale < 1 is linear
// position interpolation).
struct RopeSpec {
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
};

// The model's shapes and what its architecture does differently from llama
// (filled at load from the GGUF keys and tensors; one forward pass reads it).
struct Config {
  std::string arch = "llama"; // general.architecture
  uint32_t n_vocab = 0;
  uint32_t n_embd = 0;        // model width
  uint32_t n_layer = 0;
  uint32_t n_head = 0;        // query heads
  uint32_t n_head_kv = 0;     // key/value heads (GQA), divides n_head
  uint32_t head_dim = 0;      // attention.key_length, else n_embd / n_head
  uint32_t n_ff = 0;          // feed-forward hidden size
  uint32_t n_ctx_train = 0;   // {arch}.context_length (informational)
  uint32_t n_rot = 0;         // rotated dims per head (even, <= head_dim)
  float rope_freq_base = 10000.0f;  // = rope[0].freq_base
  float rms_eps = 1e-5f;
  bool rope_neox = false;     // false: adjacent pairs (GGUF "normal"); true: split halves
  bool tied_output = false;   // output.weight absent: logits use token_embd

  // RoPE tables: rope[Layer::rope_table]. One entry, or two when sliding-window
  // layers use their own base (gemma3: rope.freq_base_swa, unscaled).
  std::vector<RopeSpec> rope;
  std::vector<float> rope_freqs;  // [n_rot/2] rope_freqs.weight (Llama 3 factors), or empty
  // Block variants (each false / neutral for llama):
  bool qkv_bias = false;      // attn_{q,k,v}.bias added after the projections
  bool qk_norm = false;       // per-head RMSNorm of q and k (attn_{q,k}_norm) before RoPE
  bool post_norms = false;    // RMSNorm of the attention and FFN outputs before the residual add
  Activation act = Activation::silu;  // FFN: down(act(gate) * up)
  float embd_scale = 1.0f;    // input embeddings multiplied by this (gemma: sqrt(n_embd))
  float q_scale = 0.0f;       // attention scores q.k * q_scale (1/sqrt(head_dim) usually)
  float attn_softcap = 0.0f;  // > 0: scores s -> cap * tanh(s / cap) before the mask
  float final_softcap = 0.0f; // > 0: logits z -> cap * tanh(z / cap)
  uint32_t sliding_window = 0;  // {arch}.attention.sliding_window (0: none)
  uint32_t n_swa_layers = 0;  // layers with Layer::window > 0
  std::vector<uint32_t> layer_window;  // [n_layer] Layer::window (for planning the cache)
};

// Per-layer weights. Matrices are [rows, cols] views into the mapped file
// (views of row ranges when the file fuses them: phi3 attn_qkv, ffn_up).
struct Layer {
  const float* attn_norm = nullptr;  // [n_embd]
  quant::Matrix wq;                  // [n_head*head_dim, n_embd]
  quant::Matrix wk;                  // [n_head_kv*head_dim, n_embd]
  quant::Matrix wv;                  // [n_head_kv*head_dim, n_embd]
  quant::Matrix wo;                  // [n_embd, n_head*head_dim]
  const float* ffn_norm = nullptr;   // [n_embd]
  quant::Matrix w_gate;              // [n_ff, n_embd]
  quant::Matrix w_up;                // [n_ff, n_embd]
  quant::Matrix w_down;              // [n_embd, n_ff]
  const float* bq = nullptr;         // [n_head*head_dim] (Config::qkv_bias)
  const float* bk = nullptr;         // [n_head_kv*head_dim]
  const float* bv = nullptr;         // [n_head_kv*head_dim]
  const float* q_norm = nullptr;     // [head_dim] (Config::qk_norm)
  const float* k_norm = nullptr;     // [head_dim]
  const float* post_attn_norm = nullptr;  // [n_embd] (Config::post_norms)
  const float* post_ffn_norm = nullptr;   // [n_embd]
  uint32_t window = 0;               // > 0: key j hidden from query i when i - j >= window
  uint32_t rope_table = 0;           // index into Config::rope
};

// Scratch for forward(), sized once for at most `max_batch` tokens per call
// and positions < `n_ctx` (RoPE tables). Not shareable between threads.
class Workspace {
 public:
  //   max_batch: tokens per forward() call; n_ctx: positions [0, n_ctx);
  //   n_threads: OpenMP threads (0: omp_get_max_threads());
  //   kv_page_tokens: unused (attention gathers entries across pages in
  //   fixed blocks); n_aux: the cache's aux floats per entry.
  Workspace(const Config& cfg, uint32_t max_batch, uint32_t n_ctx, uint32_t n_threads,
            uint32_t kv_page_tokens = 16, uint32_t n_aux = 0);
  uint32_t max_batch() const { return max_batch_; }
  uint32_t n_ctx() const { return n_ctx_; }
  uint32_t n_threads() const { return n_threads_; }
  size_t bytes() const;  // total scratch bytes (for reporting)
  // Reserves room for the run list of one layer (at most the pool's pages of
  // a layer), so forward() never allocates.
  void reserve_runs(size_t n_runs) { runs_.reserve(n_runs); }

 private:
  friend class Model;
  uint32_t max_batch_, n_ctx_, n_threads_, n_rot_half_, n_aux_;
  std::vector<float> rope_cos_;  // [rope tables, n_ctx, n_rot/2]
  std::vector<float> rope_sin_;  // [rope tables, n_ctx, n_rot/2]
  std::vector<float> x_;         // [max_batch, n_embd] residual stream
  std::vector<float> xn_;        // [max_batch, n_embd] normalised input
  std::vector<float> q_;         // [max_batch, n_head*head_dim]
  std::vector<float> k_;         // [max_batch, n_head_kv*head_dim]
  std::vector<float> v_;         // [max_batch, n_head_kv*head_dim]
  std::vector<float> att_;       // [max_batch, n_head*head_dim] attention output
  std::vector<float> proj_;      // [max_batch, n_embd] o-proj / ffn_down output
  std::vector<float> gate_;      // [max_batch, n_ff]
  std::vector<float> up_;        // [max_batch, n_ff]
  std::vector<float> aux_;       // [max_batch, n_head_kv, n_aux] per-entry aux to append
  // Blocked (flash) attention scratch, per thread. One work item is a block
  // of query rows sharing one KV head: up to att_tokens_ tokens x (a range
  // of) the G heads of the group, row r = token_in_block * n_heads_in_range +
  // head_in_range. Keys/values are gathered (converted to f32) chunk_ entries
  // at a time; the logits block is key-major, [chunk, rows].
  uint32_t chunk_;               // KV entries per block (multiple of 16)
  uint32_t row_pad_;             // head_dim rounded up to 32
  uint32_t att_tokens_;          // tokens per query block
  uint32_t att_rows_;            // att_tokens * G: query rows per block (max)
  size_t t_stride_;              // floats of one thread's slice of t_att_
  std::vector<float> t_scores_;  // [n_threads, chunk, att_rows rounded up to 16] logits / probabilities
  std::vector<float> t_row_;     // [n_threads, row_pad] one dequantised padded row
  // [n_threads, t_stride]: per thread q [att_rows, head_dim] (pre-scaled),
  // o [att_rows, head_dim] accumulator, k [chunk, head_dim], v [chunk,
  // head_dim], query panels [window_logits_scratch(att_rows, head_dim)], row max /
  // row sum / correction [att_rows] each.
  std::vector<float> t_att_;
  std::vector<int32_t> t_pos_;   // [n_threads, chunk + att_rows] key / query-row positions
  std::vector<kv::Run> runs_;    // [n_head_kv, ...] scratch copy of one layer's runs
  std::vector<uint32_t> run_begin_;  // [n_head_kv + 1] offsets into runs_
};

// Thrown when a cancellation flag stops a forward pass (or an engine call).
struct Cancelled : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One layer of a forward() call, as a LayerObserver sees it: after RoPE,
// before the layer's keys and values enter the cache. Valid during the call.
struct LayerTensors {
  uint32_t layer = 0;
  uint32_t n_tokens = 0;
  const int32_t* pos = nullptr;  // [n_tokens] positions
  const float* q = nullptr;      // [n_tokens, n_head, head_dim] post-RoPE queries
  const float* v = nullptr;      // [n_tokens, n_head_kv, head_dim] values (f32, before the cache's type)
  float* aux = nullptr;          // [n_tokens, n_head_kv, n_aux] zero-filled; appended with the entries
  uint32_t n_aux = 0;            // the cache's aux floats per entry
};

class LayerObserver {
 public:
  virtual void on_layer(const LayerTensors& t) = 0;

 protected:
  ~LayerObserver() = default;
};

// Optional per-call inputs of forward().
struct ForwardHooks {
  // Called once per layer (may be null).
  LayerObserver* observer = nullptr;
  // Cancellation: when non-null and true, forward() throws Cancelled at the
  // next check point: the start of each layer and between its ops (after the
  // q/k/v projections, after the observer, after the cache append +
  // attention, after W_o, after gate/up, after down) and before the output
  // head, so a cancel is seen within about one weight matrix product. Entries
  // already appended to the cache for this batch, in earlier layers AND in the
  // current one (a check after attention follows cache.append of this layer),
  // stay there: the caller must drop every entry at the batch's positions in
  // every layer (engine::Context::run_batch does); what the observer recorded
  // for the batch is the caller's to undo. Logits are not written.
  const std::atomic<bool>* cancel = nullptr;
};

class Model {
 public:
  // Opens and validates a GGUF file. Throws std::runtime_error (gguf::Error
  // for file-format problems) with a message naming the key/tensor.
  static std::unique_ptr<Model> load(const std::string& path);
  // Same from an already parsed file (takes ownership).
  static std::unique_ptr<Model> from_file(std::unique_ptr<gguf::File> file);

  const Config& config() const { return cfg_; }
  const gguf::File& file() const { return *file_; }
  const quant::Matrix& token_embd() const { return tok_embd_; }  // [n_vocab, n_embd]
  const quant::Matrix& output() const { return output_; }        // [n_vocab, n_embd]
  const Layer& layer(uint32_t l) const { return layers_.at(l); }
  // Bytes of weights referenced (mapped, not copied).
  size_t weight_bytes() const { return weight_bytes_; }

  // Runs tokens[i] at positions pos[i] (i < n_tokens <= ws.max_batch()).
  // Positions must be < ws.n_ctx() and must not decrease within the call.
  // Keys/values are appended to `cache` (the cache must have room:
  // cache.can_append(n_tokens)), layer by layer.
  //   logits: all_logits ? [n_tokens, n_vocab] : [n_vocab] (last token); may
  //           be null to skip the output head.
  void forward(const int32_t* tokens, const int32_t* pos, uint32_t n_tokens,
               kv::KvCache& cache, Workspace& ws, const ForwardHooks& hooks,
               float* logits, bool all_logits) const;

 private:
  Model() = default;
  void init();
  void load_layer(uint32_t l, size_t* bytes);
  quant::Matrix mat(const std::string& name, uint64_t rows, uint64_t cols, size_t* bytes);
  const float* vec(const std::string& name, uint64_t n, size_t* bytes, bool required = true);
  // Attention of n_tokens queries of layer l over the cache.
  void attention(uint32_t l, const int32_t* pos, uint32_t n_tokens, const kv::KvCache& cache,
                 Workspace& ws) const;

  std::unique_ptr<gguf::File> file_;
  Config cfg_;
  quant::Matrix tok_embd_;               // [n_vocab, n_embd]
  quant::Matrix output_;                 // [n_vocab, n_embd]
  const float* output_norm_ = nullptr;   // [n_embd]
  std::vector<Layer> layers_;            // [n_layer]
  // Load-time packed copies for quant::matmul_packed (q8_0 on AVX-512 VNNI,
  // f16 on AVX-512: the size of the source; other dtypes/CPUs: no copy). The
  // sources' pages are released from RSS after packing (not the token
  // embedding), so resident weight memory is about one copy.
  struct PackedLayer {
    quant::Packed wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  std::vector<PackedLayer> packed_;      // [n_layer]
  quant::Packed output_packed_;
  std::deque<std::vector<float>> converted_;  // 1-D vectors stored as F16/BF16, as f32
  size_t weight_bytes_ = 0;
  std::set<std::string> used_;  // tensors read so far (load only)
};

}  // namespace defkv::model
