// `defkv bench` helpers: per-token bytes/MACs and the op-breakdown replay
// (see bench_replay.h).
#include "tools/bench_replay.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "simd/simd.h"

namespace defkv::cli {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

quant::Matrix matrix(const gguf::File& f, const std::string& name) {
  const gguf::TensorInfo& t = f.tensor(name);
  if (t.ne[2] != 1 || t.ne[3] != 1) throw std::runtime_error("tensor " + name + " is not a matrix");
  quant::Matrix m;
  m.type = quant::DType(t.type);
  m.data = t.data;
  m.cols = size_t(t.ne[0]);
  m.rows = size_t(t.ne[1]);
  return m;
}

uint64_t matrix_bytes(const quant::Matrix& m) { return uint64_t(m.rows) * quant::row_bytes(m.type, m.cols); }

// Rows [r0, r0 + n) of m: one part of a fused tensor (phi3's attn_qkv, [gate; up] ffn_up).
quant::Matrix row_range(const quant::Matrix& m, size_t r0, size_t n) {
  if (r0 + n > m.rows) throw std::runtime_error("a fused tensor has fewer rows than its parts need");
  quant::Matrix part = m;
  part.data = static_cast<const uint8_t*>(m.data) + r0 * quant::row_bytes(m.type, m.cols);
  part.rows = n;
  return part;
}

}  // namespace

GgufWeights GgufWeights::open(const std::string& path) {
  GgufWeights w;
  w.file = gguf::File::open(path);
  const gguf::File& f = *w.file;
  w.token_embd = matrix(f, "token_embd.weight");
  w.n_vocab = uint32_t(w.token_embd.rows);
  w.n_embd = uint32_t(w.token_embd.cols);
  w.tied_output = f.find_tensor("output.weight") == nullptr;
  w.output = w.tied_output ? w.token_embd : matrix(f, "output.weight");
  const auto has = [&f](uint32_t l, const char* name) {
    return f.find_tensor("blk." + std::to_string(l) + "." + name) != nullptr;
  };
  for (uint32_t l = 0; has(l, "attn_q.weight") || has(l, "attn_qkv.weight"); ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    std::array<quant::Matrix, 7> L;
    if (has(l, "attn_q.weight")) {
      L[0] = matrix(f, p + "attn_q.weight");
      L[1] = matrix(f, p + "attn_k.weight");
      L[2] = matrix(f, p + "attn_v.weight");
    } else {  // fused [q; k; v]: q has W_o's column count of rows, k and v share the rest
      const quant::Matrix qkv = matrix(f, p + "attn_qkv.weight");
      const size_t q_rows = matrix(f, p + "attn_output.weight").cols;
      if (qkv.rows <= q_rows || (qkv.rows - q_rows) % 2 != 0)
        throw std::runtime_error("tensor " + p + "attn_qkv.weight: rows do not split into q, k, v");
      const size_t kv_rows = (qkv.rows - q_rows) / 2;
      L[0] = row_range(qkv, 0, q_rows);
      L[1] = row_range(qkv, q_rows, kv_rows);
      L[2] = row_range(qkv, q_rows + kv_rows, kv_rows);
    }
    L[3] = matrix(f, p + "attn_output.weight");
    if (has(l, "ffn_gate.weight")) {
      L[4] = matrix(f, p + "ffn_gate.weight");
      L[5] = matrix(f, p + "ffn_up.weight");
    } else {  // fused [gate; up]
      const quant::Matrix gu = matrix(f, p + "ffn_up.weight");
      L[4] = row_range(gu, 0, gu.rows / 2);
      L[5] = row_range(gu, gu.rows / 2, gu.rows / 2);
    }
    L[6] = matrix(f, p + "ffn_down.weight");
    w.layers.push_back(L);
  }
  w.n_layer = uint32_t(w.layers.size());
  if (w.n_layer == 0) throw std::runtime_error(path + ": no blk.0.attn_q.weight or blk.0.attn_qkv.weight (not a transformer GGUF?)");
  return w;
}

uint64_t GgufWeights::bytes_per_token() const {
  uint64_t b = 0;
  for (const auto& L : layers)
    for (const quant::Matrix& m : L) b += matrix_bytes(m);
  b += matrix_bytes(output);
  b += quant::row_bytes(token_embd.type, token_embd.cols);
  b += uint64_t(2 * n_layer + 1) * n_embd * sizeof(float);
  return b;
}

uint64_t GgufWeights::layer_macs_per_token() const {
  uint64_t n = 0;
  for (const auto& L : layers)
    for (const quant::Matrix& m : L) n += uint64_t(m.rows) * m.cols;
  return n;
}

uint64_t GgufWeights::n_params() const {
  return layer_macs_per_token() + uint64_t(n_vocab) * n_embd * (tied_output ? 1 : 2);
}

Replay::Replay(const GgufWeights& w, uint32_t max_tokens) : w_(w), max_tokens_(std::max<uint32_t>(max_tokens, 1)) {
  size_t max_cols = w.n_embd, max_rows = w.n_vocab;
  packed_.resize(w.n_layer);
  for (uint32_t l = 0; l < w.n_layer; ++l)
    for (size_t i = 0; i < 7; ++i) {
      const quant::Matrix& m = w.layers[l][i];
      max_cols = std::max(max_cols, m.cols);
      max_rows = std::max(max_rows, m.rows);
      packed_[l][i] = quant::pack_for_gemm(m);
    }
  output_ = quant::pack_for_gemm(w.output);
  x_.resize(size_t(max_tokens_) * max_cols);
  y_.resize(size_t(max_tokens_) * max_rows);
  for (size_t i = 0; i < x_.size(); ++i) x_[i] = float((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  gamma_.assign(w.n_embd, 1.0f);
}

double Replay::matmuls(uint32_t n, bool head) {
  n = std::min(n, max_tokens_);
  const auto t0 = Clock::now();
  for (const auto& L : packed_)
    for (const quant::Packed& p : L) quant::matmul_packed(p, x_.data(), y_.data(), n, p.source.rows);
  if (head) quant::matmul_packed(output_, x_.data(), y_.data(), 1, output_.source.rows);
  return since(t0);
}

double Replay::norms(uint32_t n) {
  n = std::min(n, max_tokens_);
  const auto& k = simd::k();
  const size_t d = w_.n_embd;
  constexpr float kEps = 1e-5f;
  const auto t0 = Clock::now();
  for (uint32_t l = 0; l < w_.n_layer; ++l)
    for (uint32_t t = 0; t < n; ++t) {
      const float* v = x_.data() + size_t(t) * d;
      k.rmsnorm(y_.data(), v, gamma_.data(), d, kEps);
      k.rmsnorm(y_.data(), v, gamma_.data(), d, kEps);
    }
  k.rmsnorm(y_.data(), x_.data(), gamma_.data(), d, kEps);
  return since(t0);
}

double Replay::value_norms(uint32_t n, uint32_t n_head_kv, uint32_t head_dim) {
  n = std::min(n, max_tokens_);
  if (w_.layers.empty() || n_head_kv == 0 || head_dim == 0) return 0.0;
  const quant::Matrix& wo0 = w_.layers[0][3];  // [n_embd, H * d]
  const size_t ldv = size_t(n_head_kv) * head_dim;
  if (ldv > wo0.cols) return 0.0;  // x_ rows hold max_cols >= H * d floats
  norms_.resize(size_t(max_tokens_) * n_head_kv);
  quant::value_norms(wo0, n_head_kv, head_dim, x_.data(), n, norms_.data(), vn_);  // warm (sizes vn_)
  const auto t0 = Clock::now();
  for (uint32_t l = 0; l < w_.n_layer; ++l)
    quant::value_norms(w_.layers[l][3], n_head_kv, head_dim, x_.data(), n, norms_.data(), vn_);
  return since(t0);
}

size_t Replay::packed_bytes() const {
  size_t b = output_.bytes;
  for (const auto& L : packed_)
    for (const quant::Packed& p : L) b += p.bytes;
  return b;
}

}  // namespace defkv::cli
