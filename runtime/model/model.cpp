// The batched forward pass (loading: model_load.cpp).
#include "runtime/model/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "simd/simd.h"

namespace defkv::model {
namespace {

// Attention multiply-adds below which one thread does the work.
constexpr uint64_t kParallelMinMacs = 1u << 16;
// Blocked attention: query rows per block (tokens x group heads) and KV
// entries per block (a multiple of the 16-key panels of window_logits); at
// 32 keys the [keys, rows] logits block stays in L1 (docs/tuning.md).
constexpr uint32_t kAttRows = 128;
constexpr uint32_t kAttKeys = 32;

}  // namespace

// ----------------------------------------------------------------------------
// Workspace

Workspace::Workspace(const Config& c, uint32_t max_batch, uint32_t n_ctx, uint32_t n_threads,
                     uint32_t kv_page_tokens, uint32_t n_aux)
    : max_batch_(max_batch),
      n_ctx_(n_ctx),
      n_threads_(n_threads ? n_threads : uint32_t(std::max(1, omp_get_max_threads()))),
      n_rot_half_(c.n_rot / 2),
      n_aux_(n_aux) {
  if (max_batch == 0) throw std::invalid_argument("model::Workspace: max_batch must be > 0");
  if (n_ctx == 0) throw std::invalid_argument("model::Workspace: n_ctx must be > 0");
  if (c.n_embd == 0) throw std::invalid_argument("model::Workspace: empty model config");
  // RoPE tables, computed once in double, one per Config::rope entry:
  // theta_i = pos * scale * base^(-2i/n_rot) / freq_factor_i.
  const size_t n_tab = std::max<size_t>(c.rope.size(), 1), tab = size_t(n_ctx) * n_rot_half_;
  rope_cos_.resize(n_tab * tab);
  rope_sin_.resize(n_tab * tab);
  for (size_t r = 0; r < n_tab; ++r) {
    const RopeSpec rs = c.rope.empty() ? RopeSpec{c.rope_freq_base, 1.0f} : c.rope[r];
    for (uint32_t p = 0; p < n_ctx; ++p) {
      for (uint32_t i = 0; i < n_rot_half_; ++i) {
        double inv_freq = std::pow(double(rs.freq_base), -2.0 * double(i) / double(c.n_rot));
        if (!c.rope_freqs.empty()) inv_freq /= double(c.rope_freqs[i]);
        const double th = double(p) * double(rs.freq_scale) * inv_freq;
        rope_cos_[r * tab + size_t(p) * n_rot_half_ + i] = float(std::cos(th));
        rope_sin_[r * tab + size_t(p) * n_rot_half_ + i] = float(std::sin(th));
      }
    }
  }
  const size_t B = max_batch;
  const size_t q_dim = size_t(c.n_head) * c.head_dim, kv_dim = size_t(c.n_head_kv) * c.head_dim;
  x_.resize(B * c.n_embd);
  xn_.resize(B * c.n_embd);
  q_.resize(B * q_dim);
  k_.resize(B * kv_dim);
  v_.resize(B * kv_dim);
  att_.resize(B * q_dim);
  proj_.resize(B * c.n_embd);
  gate_.resize(B * c.n_ff);
  up_.resize(B * c.n_ff);
  aux_.resize(B * c.n_head_kv * std::max<uint32_t>(n_aux, 1));
  (void)kv_page_tokens;  // blocks gather entries across pages
  chunk_ = kAttKeys;
  row_pad_ = (c.head_dim + 31) / 32 * 32;
  {
    const uint32_t G = c.n_head_kv ? c.n_head / c.n_head_kv : 1;
    att_tokens_ = std::clamp<uint32_t>(kAttRows / std::max<uint32_t>(G, 1), 1, max_batch);
    att_rows_ = att_tokens_ * std::max<uint32_t>(G, 1);
    const auto r16 = [](size_t n) { return (n + 15) / 16 * 16; };  // 64-byte slices
    const size_t d = c.head_dim;
    t_stride_ = 2 * r16(size_t(att_rows_) * d) + 2 * r16(size_t(chunk_) * d) +
                r16(simd::window_logits_scratch(att_rows_, d)) + 3 * r16(att_rows_);
    t_scores_.resize(size_t(n_threads_) * r16(att_rows_) * chunk_);
    t_row_.resize(size_t(n_threads_) * row_pad_);
    t_att_.resize(size_t(n_threads_) * t_stride_);
    t_pos_.resize(size_t(n_threads_) * (chunk_ + att_rows_));
  }
  run_begin_.resize(c.n_head_kv + 1);
}

size_t Workspace::bytes() const {
  size_t n = rope_cos_.size() + rope_sin_.size() + x_.size() + xn_.size() + q_.size() + k_.size() +
             v_.size() + att_.size() + proj_.size() + gate_.size() + up_.size() + aux_.size() +
             t_scores_.size() + t_row_.size() + t_att_.size();
  return n * sizeof(float) + t_pos_.size() * sizeof(int32_t) + runs_.capacity() * sizeof(kv::Run);
}

// ----------------------------------------------------------------------------
// Forward

void Model::forward(const int32_t* tokens, const int32_t* pos, uint32_t n_tokens, kv::KvCache& cache,
                    Workspace& ws, const ForwardHooks& hooks, float* logits, bool all_logits) const {
  const Config& c = cfg_;
  const simd::Kernels& K = simd::k();
  if (n_tokens == 0) throw std::invalid_argument("model::forward: no tokens");
  if (n_tokens > ws.max_batch_)
    throw std::invalid_argument("model::forward: " + std::to_string(n_tokens) + " tokens exceed the workspace batch of " +
                                std::to_string(ws.max_batch_));
  const kv::CacheConfig& cc = cache.config();
  if (cc.n_layer != c.n_layer || cc.n_head_kv != c.n_head_kv || cc.head_dim != c.head_dim)
    throw std::invalid_argument("model::forward: KV cache geometry does not match the model");
  if (cc.n_aux > ws.n_aux_)
    throw std::invalid_argument("model::forward: KV cache has more aux floats per entry than the workspace");
  for (uint32_t t = 0; t < n_tokens; ++t) {
    if (tokens[t] < 0 || uint32_t(tokens[t]) >= c.n_vocab)
      throw std::out_of_range("model::forward: token id " + std::to_string(tokens[t]) + " outside the vocabulary of " +
                              std::to_string(c.n_vocab));
    if (pos[t] < 0 || uint32_t(pos[t]) >= ws.n_ctx_)
      throw std::out_of_range("model::forward: position " + std::to_string(pos[t]) + " outside [0, " +
                              std::to_string(ws.n_ctx_) + ")");
    if (t > 0 && pos[t] < pos[t - 1]) throw std::invalid_argument("model::forward: positions decrease within a batch");
  }
  if (!cache.can_append(n_tokens))
    throw kv::CacheFull("model::forward: the KV cache has no room for " + std::to_string(n_tokens) + " more tokens");

  omp_set_num_threads(int(ws.n_threads_));

  const size_t E = c.n_embd, d = c.head_dim, H = c.n_head, Hkv = c.n_head_kv;
  const size_t q_dim = H * d, kv_dim = Hkv * d, F = c.n_ff;
  const uint32_t n_aux = cc.n_aux;
  float* x = ws.x_.data();       // [n_tokens, E]
  float* xn = ws.xn_.data();     // [n_tokens, E]
  float* q = ws.q_.data();       // [n_tokens, H*d]
  float* k = ws.k_.data();       // [n_tokens, Hkv*d]
  float* v = ws.v_.data();       // [n_tokens, Hkv*d]
  float* att = ws.att_.data();   // [n_tokens, H*d]
  float* proj = ws.proj_.data(); // [n_tokens, E]
  float* gate = ws.gate_.data(); // [n_tokens, F]
  float* up = ws.up_.data();     // [n_tokens, F]
  float* aux = ws.aux_.data();   // [n_tokens, Hkv, n_aux]

  for (uint32_t t = 0; t < n_tokens; ++t) {
    quant::get_row(tok_embd_, size_t(tokens[t]), x + t * E);
    if (c.embd_scale != 1.0f) K.scale(x + t * E, c.embd_scale, E);
  }

  // Cancellation points between the ops of a layer (see ForwardHooks::cancel).
  auto check_cancel = [&](uint32_t l, const char* where) {
    if (hooks.cancel && hooks.cancel->load(std::memory_order_relaxed))
      throw Cancelled("model: forward pass cancelled at layer " + std::to_string(l) + " (" + where + ")");
  };

  for (uint32_t l = 0; l < c.n_layer; ++l) {
    check_cancel(l, "start");
    const Layer& L = layers_[l];
    const PackedLayer& P = packed_[l];
    for (uint32_t t = 0; t < n_tokens; ++t) K.rmsnorm(xn + t * E, x + t * E, L.attn_norm, E, c.rms_eps);
    {  // q/k/v share xn: one parallel region, activations quantised once
      const quant::PackedProduct qkv[3] = {{&P.wq, q, q_dim}, {&P.wk, k, kv_dim}, {&P.wv, v, kv_dim}};
      quant::matmul_packed_multi(qkv, 3, xn, n_tokens);
    }
    check_cancel(l, "after q/k/v");

    // Biases, per-head q/k norms, then RoPE on queries and keys.
    if (L.bq) {
      for (uint32_t t = 0; t < n_tokens; ++t) {
        K.add_inplace(q + t * q_dim, L.bq, q_dim);
        K.add_inplace(k + t * kv_dim, L.bk, kv_dim);
        K.add_inplace(v + t * kv_dim, L.bv, kv_dim);
      }
    }
    if (L.q_norm) {
      for (uint32_t t = 0; t < n_tokens; ++t) {
        for (size_t h = 0; h < H; ++h) K.rmsnorm(q + t * q_dim + h * d, q + t * q_dim + h * d, L.q_norm, d, c.rms_eps);
        for (size_t h = 0; h < Hkv; ++h) K.rmsnorm(k + t * kv_dim + h * d, k + t * kv_dim + h * d, L.k_norm, d, c.rms_eps);
      }
    }
    const size_t rope_tab = size_t(L.rope_table) * ws.n_ctx_ * ws.n_rot_half_;
    for (uint32_t t = 0; t < n_tokens; ++t) {
      const float* cs = ws.rope_cos_.data() + rope_tab + size_t(pos[t]) * ws.n_rot_half_;
      const float* sn = ws.rope_sin_.data() + rope_tab + size_t(pos[t]) * ws.n_rot_half_;
      for (size_t h = 0; h < H; ++h) simd::rope(q + t * q_dim + h * d, c.n_rot, cs, sn, c.rope_neox);
      for (size_t h = 0; h < Hkv; ++h) simd::rope(k + t * kv_dim + h * d, c.n_rot, cs, sn, c.rope_neox);
    }

    // The caller's view of this layer (e.g. eviction's query window and value norms).
    if (n_aux > 0) std::fill(aux, aux + size_t(n_tokens) * Hkv * n_aux, 0.0f);
    if (hooks.observer) {
      hooks.observer->on_layer({l, n_tokens, pos, q, v, aux, n_aux});
      check_cancel(l, "after the layer observer");
    }

    for (uint32_t t = 0; t < n_tokens; ++t)
      cache.append(l, pos[t], k + t * kv_dim, v + t * kv_dim, n_aux ? aux + t * Hkv * n_aux : nullptr);

    attention(l, pos, n_tokens, cache, ws);
    check_cancel(l, "after attention");  // this layer's entries are in the cache: the caller rolls back

    quant::matmul_packed(P.wo, att, proj, n_tokens, E);
    check_cancel(l, "after W_o");
    if (L.post_attn_norm)
      for (uint32_t t = 0; t < n_tokens; ++t) K.rmsnorm(proj + t * E, proj + t * E, L.post_attn_norm, E, c.rms_eps);
    for (uint32_t t = 0; t < n_tokens; ++t) K.add_inplace(x + t * E, proj + t * E, E);

    // Gated feed-forward: down(act(gate) * up).
    for (uint32_t t = 0; t < n_tokens; ++t) K.rmsnorm(xn + t * E, x + t * E, L.ffn_norm, E, c.rms_eps);
    {
      const quant::PackedProduct gu[2] = {{&P.w_gate, gate, F}, {&P.w_up, up, F}};
      quant::matmul_packed_multi(gu, 2, xn, n_tokens);
    }
    check_cancel(l, "after gate/up");
    for (uint32_t t = 0; t < n_tokens; ++t) {
      if (c.act == Activation::silu) K.silu_mul(gate + t * F, up + t * F, F);
      else simd::gelu_tanh_mul(gate + t * F, up + t * F, F);
    }
    quant::matmul_packed(P.w_down, gate, proj, n_tokens, E);
    if (L.post_ffn_norm)
      for (uint32_t t = 0; t < n_tokens; ++t) K.rmsnorm(proj + t * E, proj + t * E, L.post_ffn_norm, E, c.rms_eps);
    for (uint32_t t = 0; t < n_tokens; ++t) K.add_inplace(x + t * E, proj + t * E, E);
  }

  if (!logits) return;
  check_cancel(c.n_layer, "before the output head");
  const uint32_t n_out = all_logits ? n_tokens : 1;
  const float* x_out = x + size_t(n_tokens - n_out) * E;
  for (uint32_t t = 0; t < n_out; ++t) K.rmsnorm(xn + t * E, x_out + t * E, output_norm_, E, c.rms_eps);
  quant::matmul_packed(output_packed_, xn, logits, n_out, c.n_vocab);
  if (c.final_softcap > 0.0f) simd::softcap(logits, size_t(n_out) * c.n_vocab, c.final_softcap);
}

// att[t, h] = sum_j softmax_j(cap(q[t,h] . k[j] * q_scale)) v[j] over the
// live entries j of KV head h / G with pos[j] <= pos[t] and, in a windowed
// layer, pos[t] - pos[j] < window (cap: the attention soft-cap, if any).
//
// Blocked like a CPU flash attention: a work item is one KV head hk and a
// block of query rows that share its keys (up to att_tokens tokens x the G
// heads of the group, or a range of them when there are too few items for
// the threads, e.g. decode). The item walks the head's live entries,
// gathering up to `chunk` of them (skipping those past every query of the
// block) into f32 K / V blocks, converted once for all rows; then, with the
// block's query rows packed once into 16-row panels and the logits kept
// key-major (S^T, so the softmax reductions over keys are vertical):
//   S^T = K . Q_scaled^T        (window_logits_packed, register-blocked)
//   S^T[j, r] = -inf where pos[j] > pos[token of r]  (only blocks that need it)
//   online softmax step per row (running max / sum, correction factors)
//   O = corr * O + P . V        (attn_accumulate, register-blocked)
// and finally att = O / row sum. Entries need not have contiguous positions
// (eviction) nor be sorted by position: masking is by position only.
void Model::attention(uint32_t l, const int32_t* pos, uint32_t n_tokens, const kv::KvCache& cache,
                      Workspace& ws) const {
  const Config& c = cfg_;
  const size_t d = c.head_dim, H = c.n_head, Hkv = c.n_head_kv, G = H / Hkv;
  const size_t q_dim = H * d;
  const quant::DType kv_type = cache.config().type;
  const size_t row_bytes = cache.row_bytes();
  const bool dense_rows = cache.row_elems() == d;  // no padding: spans convert in one call
  const float scale = c.q_scale > 0.0f ? c.q_scale : 1.0f / std::sqrt(float(d));
  const float softcap = c.attn_softcap;
  const int64_t window = layers_[l].window;  // 0: none

  // Snapshot the runs of this layer's heads (no allocation once the capacity
  // has reached the pool's page count).
  ws.runs_.clear();
  for (size_t hk = 0; hk < Hkv; ++hk) {
    ws.run_begin_[hk] = uint32_t(ws.runs_.size());
    for (const kv::Run& r : cache.runs(l, uint32_t(hk))) ws.runs_.push_back(r);
  }
  ws.run_begin_[Hkv] = uint32_t(ws.runs_.size());

  const float* qbuf = ws.q_.data();  // [n_tokens, H*d]
  float* out_buf = ws.att_.data();   // [n_tokens, H*d]
  const uint32_t chunk = ws.chunk_;
  const size_t row_pad = ws.row_pad_;
  // Items: (query block, KV head, head range), largest query blocks (latest
  // tokens: most visible keys) first for the dynamic schedule.
  const size_t tb_tokens = std::min<size_t>(ws.att_tokens_, n_tokens);
  const size_t n_tb = (n_tokens + tb_tokens - 1) / tb_tokens;
  size_t n_split = 1;  // head ranges per group
  while (n_split < G && Hkv * n_tb * n_split < 2 * size_t(ws.n_threads_)) n_split *= 2;
  n_split = std::min(n_split, G);
  const long n_items = long(n_tb * Hkv * n_split);
  // Threads only pay off above some work: a parallel region costs a few
  // microseconds (much more when cores are oversubscribed).
  uint64_t live = 0;
  for (const kv::Run& r : ws.runs_) live += r.n;
  const bool parallel = ws.n_threads_ > 1 && n_items > 1 &&
                        uint64_t(n_tokens) * G * live * d >= kParallelMinMacs;

#pragma omp parallel for schedule(dynamic, 1) num_threads(int(ws.n_threads_)) if (parallel)
  for (long item = 0; item < n_items; ++item) {
    const simd::Kernels& K = simd::k();
    const size_t tb = n_tb - 1 - size_t(item) / (Hkv * n_split);
    const size_t hk = (size_t(item) / n_split) % Hkv, split = size_t(item) % n_split;
    const size_t t0 = tb * tb_tokens, nt = std::min(tb_tokens, size_t(n_tokens) - t0);
    const size_t g0 = G * split / n_split, ng = G * (split + 1) / n_split - g0;
    const size_t M = nt * ng;  // query rows of this item

    const int tid = omp_get_thread_num();
    float* ts = ws.t_att_.data() + size_t(tid) * ws.t_stride_;
    const auto take = [&ts](size_t n) { float* p = ts; ts += (n + 15) / 16 * 16; return p; };
    float* qb = take(size_t(ws.att_rows_) * d);      // [M, d] scaled queries
    float* ob = take(size_t(ws.att_rows_) * d);      // [M, d] output accumulator
    float* kb = take(size_t(chunk) * d);             // [chunk, d] keys of a block
    float* vb = take(size_t(chunk) * d);             // [chunk, d] values of a block
    float* q_panels = take(simd::window_logits_scratch(ws.att_rows_, d));  // Q rows packed
    float* row_max = take(ws.att_rows_);             // [Mp]
    float* row_sum = take(ws.att_rows_);             // [Mp]
    float* corr = take(ws.att_rows_);                // [Mp]
    // Rows padded to 16 (the widest vector) so the softmax runs vector-wide
    // even for a few rows (decode: M = G); the padding rows come from zero
    // queries (finite logits), and their results are never used.
    const size_t Mp = (M + 15) / 16 * 16;
    const size_t sb_floats = (ws.att_rows_ + 15) / 16 * 16 * size_t(chunk);
    float* sb = ws.t_scores_.data() + size_t(tid) * sb_floats;  // [chunk, Mp] key-major
    float* row = ws.t_row_.data() + size_t(tid) * row_pad;     // [row_pad]
    int32_t* kpos = ws.t_pos_.data() + size_t(tid) * (chunk + ws.att_rows_);  // [chunk]
    int32_t* rpos = kpos + chunk;                                             // [M]

    int32_t qmin = std::numeric_limits<int32_t>::max(), qmax = std::numeric_limits<int32_t>::min();
    for (size_t tl = 0; tl < nt; ++tl) {
      const int32_t p = pos[t0 + tl];
      qmin = std::min(qmin, p);
      qmax = std::max(qmax, p);
      const float* qt = qbuf + (t0 + tl) * q_dim + (hk * G + g0) * d;  // [ng, d]
      for (size_t gi = 0; gi < ng; ++gi) rpos[tl * ng + gi] = p;
      std::copy(qt, qt + ng * d, qb + tl * ng * d);
    }
    K.scale(qb, scale, M * d);
    simd::pack_window_keys(qb, M, d, q_panels);
    std::fill(ob, ob + M * d, 0.0f);
    std::fill(row_max, row_max + Mp, -std::numeric_limits<float>::infinity());
    std::fill(row_sum, row_sum + Mp, 0.0f);

    // Converts rows [e0, e0 + n) of one run's K or V into dst [n, d].
    const auto convert = [&](const uint8_t* base, uint32_t e0, uint32_t n, float* dst) {
      const uint8_t* src = base + size_t(e0) * row_bytes;
      if (dense_rows) {
        quant::to_f32(kv_type, src, dst, size_t(n) * d);
        return;
      }
      for (uint32_t i = 0; i < n; ++i) {
        quant::to_f32(kv_type, src + size_t(i) * row_bytes, row, row_pad);
        std::copy(row, row + d, dst + size_t(i) * d);
      }
    };
    uint32_t nb = 0;  // entries gathered in the current block
    int32_t kmax = std::numeric_limits<int32_t>::min(), kmin = std::numeric_limits<int32_t>::max();
    // Key position p is visible to a query at position qp when p <= qp and,
    // in a windowed layer, qp - p < window.
    const auto hidden = [window](int32_t p, int32_t qp) { return p > qp || (window > 0 && int64_t(qp) - p >= window); };
    // Hidden from every query of the block (whose positions lie in [qmin, qmax]).
    const auto hidden_all = [&](int32_t p) { return p > qmax || (window > 0 && int64_t(qmin) - p >= window); };
    const auto flush = [&] {
      K.window_logits_packed(kb, nb, q_panels, Mp, d, sb, Mp);  // S^T [nb, Mp]
      if (softcap > 0.0f) simd::softcap(sb, size_t(nb) * Mp, softcap);
      if (kmax > qmin || (window > 0 && int64_t(qmax) - kmin >= window)) {  // some row cannot see some key
        for (uint32_t j = 0; j < nb; ++j) {
          if (!hidden(kpos[j], qmin) && !hidden(kpos[j], qmax)) continue;  // seen by every row
          float* sj = sb + size_t(j) * Mp;
          for (size_t r = 0; r < M; ++r)
            if (hidden(kpos[j], rpos[r])) sj[r] = -std::numeric_limits<float>::infinity();
        }
      }
      K.attn_softmax_step(sb, nb, Mp, Mp, row_max, row_sum, corr);
      K.attn_accumulate(sb, M, nb, Mp, vb, d, d, corr, ob, d);
      nb = 0;
      kmax = std::numeric_limits<int32_t>::min();
      kmin = std::numeric_limits<int32_t>::max();
    };
    for (uint32_t ri = ws.run_begin_[hk]; ri < ws.run_begin_[hk + 1]; ++ri) {
      const kv::Run& r = ws.runs_[ri];
      uint32_t e = 0;
      while (e < r.n) {
        if (hidden_all(r.pos[e])) {
          ++e;
          continue;
        }
        // A span of visible entries, up to the room left in the block.
        uint32_t e1 = e + 1;
        while (e1 < r.n && e1 - e < chunk - nb && !hidden_all(r.pos[e1])) ++e1;
        const uint32_t n = e1 - e;
        convert(r.k, e, n, kb + size_t(nb) * d);
        convert(r.v, e, n, vb + size_t(nb) * d);
        for (uint32_t i = 0; i < n; ++i) {
          kpos[nb + i] = r.pos[e + i];
          kmax = std::max(kmax, r.pos[e + i]);
          kmin = std::min(kmin, r.pos[e + i]);
        }
        nb += n;
        e = e1;
        if (nb == chunk) flush();
      }
    }
    if (nb > 0) flush();

    for (size_t tl = 0; tl < nt; ++tl) {
      float* ot = out_buf + (t0 + tl) * q_dim + (hk * G + g0) * d;  // [ng, d]
      for (size_t gi = 0; gi < ng; ++gi) {
        const size_t r = tl * ng + gi;
        const float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
        K.scale(ob + r * d, inv, d);
        std::copy(ob + r * d, ob + (r + 1) * d, ot + gi * d);
      }
    }
  }
}

}  // namespace defkv::model
