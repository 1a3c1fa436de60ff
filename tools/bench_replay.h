// `defkv bench` helpers below the C API: what a decoded token reads (bytes,
// multiply-adds) and the op-breakdown estimate.
//
// The C API exposes only whole-call times, so bench estimates the matmul and
// norm shares by replaying the model's own matrices through the kernels the
// model uses: quant::matmul_packed on quant::pack_for_gemm'd copies (the
// AVX-512 VNNI q8_0 layout the model packs at load; other types/CPUs fall
// back to quant::matmul, as in the model) and the simd rmsnorm. The weights
// are views into the GGUF's own mapping (gguf::File), not the library's.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "quant/value_norm.h"
#include "runtime/gguf/gguf.h"

namespace defkv::cli {

// The weight matrices of a llama GGUF, as views into its mapping.
struct GgufWeights {
  std::unique_ptr<gguf::File> file;
  uint32_t n_layer = 0, n_embd = 0, n_vocab = 0;
  bool tied_output = false;                     // no output.weight: the head is token_embd
  std::vector<std::array<quant::Matrix, 7>> layers;  // [n_layer] wq wk wv wo w_gate w_up w_down
  quant::Matrix token_embd;                     // [n_vocab, n_embd]
  quant::Matrix output;                         // [n_vocab, n_embd]

  // Throws gguf::Error / std::runtime_error naming a missing tensor.
  static GgufWeights open(const std::string& path);
  // Bytes one decoded token reads: every layer matrix, the output head, one
  // embedding row and the norm vectors (f32).
  uint64_t bytes_per_token() const;
  // Multiply-adds of the layer matrices per token (x2 = FLOPs).
  uint64_t layer_macs_per_token() const;
  // Parameters (layer matrices, embedding, head when not tied).
  uint64_t n_params() const;
};

// Replays the layer matmuls (packed, as the model runs them) and the norms
// for a batch of up to max_tokens tokens. Packing costs as many bytes again as
// the q8_0 matrices: build it after anything that measures memory.
class Replay {
 public:
  Replay(const GgufWeights& w, uint32_t max_tokens);
  // Seconds for all layer matmuls (+ the output head for one token when `head`).
  double matmuls(uint32_t n_tokens, bool head);
  // Seconds for the RMSNorms of n tokens (2 per layer + the final one).
  double norms(uint32_t n_tokens);
  // Seconds for the value-projection norms of n tokens in every layer (the
  // value-weighted eviction policies' aux data: quant::value_norms on W_o,
  // as the model computes them in a prefill chunk).
  double value_norms(uint32_t n_tokens, uint32_t n_head_kv, uint32_t head_dim);
  // Bytes of the packed copies (0 when the kernels use the weights as stored).
  size_t packed_bytes() const;

 private:
  const GgufWeights& w_;
  uint32_t max_tokens_;
  std::vector<std::array<quant::Packed, 7>> packed_;  // [n_layer]
  quant::Packed output_;
  std::vector<float> x_;      // [max_tokens, max cols] deterministic input
  std::vector<float> y_;      // [max_tokens, max rows]
  std::vector<float> gamma_;  // [n_embd] norm weights (ones)
  std::vector<float> norms_;  // [max_tokens, n_head_kv] value norms
  quant::ValueNormScratch vn_;
};

}  // namespace defkv::cli
