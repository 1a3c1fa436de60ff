// Synthetic GGUF models (llama, qwen2, qwen3, phi3, gemma3 architectures)
// with real shapes and random weights, for benchmarks of models that are not
// available offline (TinyLlama, Llama 3.2 1B, Qwen2.5 0.5B, Qwen3 0.6B,
// Phi-3.5 mini, SmolLM2, Gemma 3 1B). Used by `defkv synth` and `defkv bench`; not part of the runtime
// library.
//
// Weights are a pure function of (seed, tensor name, element index), so a
// file is reproducible and the F32 / F16 / BF16 / Q8_0 files of one seed hold
// the same weights at different precisions. The file is written tensor by
// tensor (bounded memory, see synthesize()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "quant/quant.h"

namespace defkv::tools {

// Hyper-parameters of a model (names as in GGUF {arch}.*).
// The largest vocabulary and layer count a shape may have (validate()):
// far above real models (262,144 tokens, 126 layers), low enough that the
// synthetic vocabulary and the tensor list stay small in memory.
constexpr uint32_t kMaxVocab = uint32_t(1) << 24;
constexpr uint32_t kMaxLayers = uint32_t(1) << 16;

struct ModelShape {
  std::string name;            // "tinyllama-1.1b", or "custom"
  uint32_t dim = 0;            // llama.embedding_length
  uint32_t n_layer = 0;        // llama.block_count
  uint32_t n_head = 0;         // llama.attention.head_count
  uint32_t n_head_kv = 0;      // llama.attention.head_count_kv
  uint32_t ffn = 0;            // llama.feed_forward_length
  uint32_t n_vocab = 0;        // llama.vocab_size
  uint32_t ctx = 0;            // llama.context_length (metadata only)
  uint32_t head_dim = 0;       // 0: dim / n_head
  float rope_base = 10000.0f;  // llama.rope.freq_base
  float rms_eps = 1e-5f;       // llama.attention.layer_norm_rms_epsilon
  bool tied = false;           // no output.weight: the head reuses token_embd
  std::string note;            // how the synthetic model differs from the real one
  // Architecture and its block variants (see runtime/model/model_load.cpp).
  std::string arch = "llama";  // general.architecture: llama | qwen2 | qwen3 | phi3 | gemma3
  bool qkv_bias = false;       // attn_{q,k,v}.bias (qwen2; required there)
  bool qk_norm = false;        // attn_q_norm / attn_k_norm [head_dim] (qwen3, gemma3; required there)
  bool post_norms = false;     // post_attention_norm / post_ffw_norm [dim] (gemma3; required there)
  bool fused = false;          // attn_qkv = [q; k; v] and ffn_up = [gate; up] (phi3)
  // > 0: rope_freqs.weight holds the Llama 3 frequency factors for this
  // factor, low_freq_factor 1, high_freq_factor 4 and llama3_orig_ctx.
  float llama3_rope_factor = 0.0f;
  uint32_t llama3_orig_ctx = 8192;
  uint32_t sliding_window = 0;  // {arch}.attention.sliding_window (phi3, gemma3 write it; 0: none)
  // gemma3: {arch}.rope.freq_base_swa, the sliding-window layers' RoPE base
  // (rope_base is the global layers'); 0: not written. gemma3 slides on layer
  // l when l % 6 < 5 (the loader's default period; no pattern key is written).
  float rope_base_swa = 0.0f;

  uint32_t head_dim_or_default() const { return head_dim ? head_dim : (n_head ? dim / n_head : 0); }
  // Throws std::invalid_argument naming the first inconsistent field
  // (zero sizes, n_head % n_head_kv, dims not multiples of the weight type's
  // block, ...).
  void validate(quant::DType weight_type) const;
  // Parameter count (distinct weights; the tied head counted once).
  uint64_t n_params() const;
};

// Llama 3 RoPE frequency factors [n_rot/2] as convert_hf_to_gguf.py computes
// them (low_freq_factor 1, high_freq_factor 4): pair i's angle is divided by
// factor[i].
std::vector<float> llama3_rope_factors(float freq_base, uint32_t n_rot, float factor, uint32_t orig_ctx);

// The built-in shapes, each taken from the real model's config.json.
const std::vector<ModelShape>& known_shapes();
// nullptr when unknown.
const ModelShape* find_shape(std::string_view name);

// A tokenizer vocabulary to embed (GGUF tokenizer.ggml.* keys).
struct VocabSpec {
  // Path of a GGUF whose tokenizer.ggml.* keys are copied; empty: synthesize
  // a llama-SPM vocabulary of ModelShape::n_vocab tokens (see
  // synthetic_spm_vocab()).
  std::string from_path;
};

// Synthetic SentencePiece ("llama") vocabulary of n_vocab >= 260 tokens:
// <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, "▁", then filler
// pieces: every lowercase-letter string of length 1, 2, 3, ... each with and without
// the "▁" word prefix, in that order, scores decreasing so that shorter pieces
// merge first. Self-consistent (encode/decode round-trip through byte
// fallback), but not a trained vocabulary.
struct SyntheticVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // 1 normal, 2 unknown, 3 control, 6 byte
};
SyntheticVocab synthetic_spm_vocab(uint32_t n_vocab);

struct SynthOptions {
  ModelShape shape;
  quant::DType type = quant::DType::q8_0;  // 2-D weights; norms stay F32
  uint64_t seed = 1;
  VocabSpec vocab;
  int n_threads = 0;  // 0: OpenMP default
};

// One tensor of the plan, in file order.
struct SynthTensor {
  std::string name;
  quant::DType type;
  std::vector<uint64_t> ne;  // ggml order: ne[0] = columns (innermost)
  float stddev;              // 0: constant 1 (norm weights)
  uint64_t size_bytes;
  std::vector<float> values; // fixed values (rope_freqs), instead of stddev
};
std::vector<SynthTensor> plan_tensors(const ModelShape& s, quant::DType type);

// Standard deviation of the random weights (like a GPT-2 / Llama init):
// 0.02, and 0.02 / sqrt(2 n_layer) for the residual projections
// (attn_output, ffn_down) so the residual stream grows slowly with depth.
constexpr float kInitStd = 0.02f;

// Deterministic weights: out[i] = stddev * z(seed, name, first + i), where z
// is an approximately standard normal variate (Irwin-Hall sum of four 16-bit
// uniforms from a counter-based SplitMix64 hash, rescaled to unit variance;
// bounded to +-3.46). Pure function: any chunking gives the same values.
void synth_values(uint64_t seed, std::string_view tensor_name, uint64_t first, size_t n,
                  float stddev, float* out);

struct SynthProgress {
  size_t index = 0;     // tensor index (0-based)
  size_t count = 0;     // number of tensors
  const SynthTensor* tensor = nullptr;
  uint64_t bytes_done = 0;   // tensor data bytes written so far, all tensors
  uint64_t bytes_total = 0;
};

struct SynthResult {
  uint64_t file_bytes = 0;
  uint64_t data_bytes = 0;   // tensor data (without padding)
  uint64_t n_params = 0;
  uint32_t n_vocab = 0;
  std::string vocab_desc;    // "synthetic llama-spm" or the copied file's path
  double seconds = 0;
};

// Writes a GGUF v3 llama model to out_path. Memory stays bounded by a few
// row chunks: the file is laid out by gguf::Writer with the tensor data read
// from an untouched anonymous mapping (zeros, no resident memory), then every
// tensor is generated in row chunks and written in place at the offset the
// GGUF reader reports; the file appears under out_path only when complete
// (".partial" until then). When opts.vocab.from_path is set, its token count
// must equal shape.n_vocab. Throws std::runtime_error / std::invalid_argument.
SynthResult synthesize(const SynthOptions& opts, const std::string& out_path,
                       const std::function<void(const SynthProgress&)>& progress = {});

// Where the shared models live: $DEFKV_SHARED, else ../shared relative to the
// working directory, else relative to the defkv executable. Empty if none.
std::string find_shared_dir();
// The shared folder's file (relative to it) with the real tokenizer of a
// named shape's vocabulary size, or null when there is none.
const char* known_vocab_file(uint32_t n_vocab);
// That file's path in the shared directory; empty (synthesize) when there is
// none or the shared directory is missing.
std::string default_vocab_file(uint32_t n_vocab);

}  // namespace defkv::tools
