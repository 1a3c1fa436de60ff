// Model loading: the per-architecture traits, GGUF keys -> Config, tensors ->
// Layer views, validation with errors that name the key or tensor.
//
// Keys and tensor names are those llama.cpp's converter writes
// ({arch}.embedding_length, blk.N.attn_q.weight, ...). Every tensor of the
// file must be used by the architecture (as llama.cpp requires): a tensor the
// arch does not know (an attn_output bias, a q/k norm on llama, LongRoPE
// factors) is refused by name instead of being silently ignored.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>

#include "runtime/model/model.h"

namespace defkv::model {
namespace {

std::runtime_error err(const std::string& msg) { return std::runtime_error("model: " + msg); }

std::string shape_str(const uint64_t* ne, uint32_t n_dims) {
  std::string s = "[";
  for (uint32_t i = 0; i < n_dims; ++i) {
    if (i) s += ", ";
    s += std::to_string(ne[i]);
  }
  return s + "]";
}

// Effective number of dims (trailing ne of 1 ignored).
uint32_t eff_dims(const gguf::TensorInfo& t) {
  uint32_t n = std::max<uint32_t>(t.n_dims, 1);
  while (n > 1 && t.ne[n - 1] == 1) --n;
  return n;
}

// How the sliding window is laid over the layers.
enum class Swa {
  none,     // no window: a sliding_window key is refused
  all,      // every layer when the window is > 0 (phi3)
  even,     // layers 0, 2, 4, ... (gemma2)
  pattern,  // attention.sliding_window_pattern (period or per-layer bools), default period 6 (gemma3)
};

// What one architecture's block does beyond llama's. The loader reads only
// the keys and tensors its traits name.
struct ArchTraits {
  const char* name;
  bool rope_neox;           // NeoX RoPE (pairs i, i + n_rot/2)
  bool qkv_bias;            // attn_{q,k,v}.bias required
  bool qkv_bias_optional;   // attn_{q,k,v}.bias allowed (all three or none)
  bool qk_norm;             // attn_q_norm / attn_k_norm [head_dim] required
  bool fused_qkv;           // attn_qkv = [q; k; v] rows (else attn_q/k/v)
  bool fused_gate_up;       // ffn_up = [gate; up] rows, no ffn_gate
  bool post_norms;          // post_attention_norm, post_ffw_norm
  bool embd_scale;          // embeddings * sqrt(n_embd)
  Activation act;
  bool attn_softcap;        // attn_logit_softcapping (default 50)
  bool final_softcap;       // final_logit_softcapping (gemma2: default 30; gemma3: when present)
  Swa swa;
  bool rope_base_swa;       // windowed layers use rope.freq_base_swa (default 10000), unscaled
  uint32_t q_scale_width_layers;  // with this many layers q is scaled by 1/sqrt(n_embd/n_head)
  bool neox_key;            // honours defkv.rope_neox (a defkv test extension for llama)
};

constexpr ArchTraits kArchs[] = {
    // name    neox   bias   bias?  qknorm fqkv   fgu    post   escale act                   acap   fcap   swa        rbswa  qsl neox_key
    {"llama",  false, false, true,  false, false, false, false, false, Activation::silu,      false, false, Swa::none,    false, 0, true},
    {"qwen2",  true,  true,  false, false, false, false, false, false, Activation::silu,      false, false, Swa::none,    false, 0, false},
    {"qwen3",  true,  false, false, true,  false, false, false, false, Activation::silu,      false, false, Swa::none,    false, 0, false},
    {"phi3",   true,  false, false, false, true,  true,  false, false, Activation::silu,      false, false, Swa::all,     false, 0, false},
    {"gemma2", true,  false, false, false, false, false, true,  true,  Activation::gelu_tanh, true,  true,  Swa::even,    false, 46, false},
    {"gemma3", true,  false, false, true,  false, false, true,  true,  Activation::gelu_tanh, false, true,  Swa::pattern, true,  62, false},
};

const ArchTraits* find_arch(const std::string& name) {
  for (const ArchTraits& a : kArchs)
    if (name == a.name) return &a;
  return nullptr;
}

std::string arch_list() {
  std::string s;
  for (const ArchTraits& a : kArchs) s += std::string(s.empty() ? "" : ", ") + a.name;
  return s;
}

}  // namespace

const char* activation_name(Activation a) { return a == Activation::silu ? "silu" : "gelu_tanh"; }

std::unique_ptr<Model> Model::load(const std::string& path) {
  return from_file(gguf::File::open(path));
}

std::unique_ptr<Model> Model::from_file(std::unique_ptr<gguf::File> file) {
  if (!file) throw err("null gguf file");
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  m->init();
  return m;
}

namespace {

// A [rows, cols] weight matrix (ggml ne = {cols, rows}).
quant::Matrix matrix(const gguf::File& f, const std::string& name, uint64_t rows, uint64_t cols,
                     size_t* bytes) {
  const gguf::TensorInfo* t = f.find_tensor(name);
  if (!t) throw err("missing tensor '" + name + "' (expected shape [" + std::to_string(cols) +
                    ", " + std::to_string(rows) + "] in ggml ne order)");
  if (!quant::supported_weight_type(t->type))
    throw err("tensor '" + name + "' has unsupported type " + gguf::tensor_type_name(t->type) +
              " (supported: " + quant::supported_weight_types() + ")");
  const uint32_t nd = eff_dims(*t);
  const bool ok = nd <= 2 && t->ne[0] == cols && t->ne[1] == rows;
  if (!ok) {
    const uint64_t want[2] = {cols, rows};
    throw err("tensor '" + name + "' has shape " + shape_str(t->ne, std::max<uint32_t>(t->n_dims, 1)) +
              ", expected " + shape_str(want, 2) + " (ggml ne order: [cols, rows])");
  }
  quant::Matrix m;
  m.type = quant::DType(t->type);
  m.data = t->data;
  m.rows = rows;
  m.cols = cols;
  *bytes += t->size_bytes;
  return m;
}

// Rows [r0, r0 + n) of m, a view (whole rows are contiguous in every type).
quant::Matrix row_slice(const quant::Matrix& m, size_t r0, size_t n) {
  quant::Matrix s = m;
  s.data = static_cast<const uint8_t*>(m.data) + r0 * quant::row_bytes(m.type, m.cols);
  s.rows = n;
  return s;
}

}  // namespace

quant::Matrix Model::mat(const std::string& name, uint64_t rows, uint64_t cols, size_t* bytes) {
  quant::Matrix m = matrix(*file_, name, rows, cols, bytes);
  used_.insert(name);
  return m;
}

// A 1-D f32 vector of n entries (converted once when stored as F16/BF16), or
// nullptr when absent and not required.
const float* Model::vec(const std::string& name, uint64_t n, size_t* bytes, bool required) {
  const gguf::TensorInfo* t = file_->find_tensor(name);
  if (!t) {
    if (required) throw err("missing tensor '" + name + "' (expected shape [" + std::to_string(n) + "])");
    return nullptr;
  }
  if (eff_dims(*t) != 1 || t->ne[0] != n)
    throw err("tensor '" + name + "' has shape " + shape_str(t->ne, std::max<uint32_t>(t->n_dims, 1)) +
              ", expected [" + std::to_string(n) + "]");
  *bytes += t->size_bytes;
  used_.insert(name);
  if (t->type != uint32_t(quant::DType::f32) && t->type != uint32_t(quant::DType::f16) &&
      t->type != uint32_t(quant::DType::bf16))
    throw err("tensor '" + name + "' has unsupported type " + gguf::tensor_type_name(t->type) +
              " for a vector (supported: f32, f16, bf16)");
  const float* v = reinterpret_cast<const float*>(t->data);
  if (t->type != uint32_t(quant::DType::f32)) {
    converted_.emplace_back(n);  // a deque: earlier pointers stay valid
    quant::to_f32(quant::DType(t->type), t->data, converted_.back().data(), n);
    v = converted_.back().data();
  }
  // Norm weights and biases reach every activation: a NaN/Inf here makes
  // every output non-finite. They are small, so they are checked at load.
  for (uint64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]))
      throw err("tensor '" + name + "' holds a non-finite value (" + std::to_string(v[i]) + ") at index " +
                std::to_string(i));
  return v;
}

void Model::init() {
  const gguf::File& f = *file_;
  // Weights are read in place as floats, halves and blocks: every tensor must
  // start 4-byte aligned (a general.alignment below 4, or a buffer given at an
  // odd address, breaks that).
  for (const gguf::TensorInfo& t : f.tensors())
    if (reinterpret_cast<uintptr_t>(t.data) % 4 != 0)
      throw err("tensor '" + t.name + "' starts at byte " + std::to_string(t.data - f.bytes().data()) +
                " of the file, not 4-byte aligned in memory (general.alignment = " + std::to_string(f.alignment()) +
                "); weights must be at least 4-byte aligned");
  if (!f.find("general.architecture"))
    throw err("missing key general.architecture (supported: " + arch_list() + ")");
  const std::string& arch = f.get_string("general.architecture");
  const ArchTraits* tr = find_arch(arch);
  if (!tr)
    throw err("unsupported architecture \"" + arch + "\" (general.architecture); supported: " + arch_list());
  const std::string a = arch + ".";

  auto u32 = [&](const std::string& key) -> uint32_t {
    const uint64_t v = f.get_uint(key);
    if (v == 0 || v > (1u << 30)) throw err("key " + key + " has invalid value " + std::to_string(v));
    return uint32_t(v);
  };
  auto positive = [&](const std::string& key, double def) -> float {
    const double v = f.get_float_or(key, def);
    if (!(v > 0.0) || !std::isfinite(v)) throw err("key " + key + " must be a positive number, got " + std::to_string(v));
    return float(v);
  };
  // A feature key the architecture has none of must not be silently ignored.
  auto refuse_key = [&](const std::string& key, const char* what) {
    const gguf::Value* v = f.find(key);
    if (!v) return;
    bool off = false;  // 0 / false: the feature is off, as if absent
    if (auto* i = std::get_if<int64_t>(&v->v)) off = *i == 0;
    else if (auto* u = std::get_if<uint64_t>(&v->v)) off = *u == 0;
    else if (auto* d = std::get_if<double>(&v->v)) off = *d == 0.0;
    else if (auto* b = std::get_if<bool>(&v->v)) off = !*b;
    if (!off) throw err("key " + key + " (" + what + ") is not supported for architecture " + arch);
  };

  Config c;
  c.arch = arch;
  c.n_embd = u32(a + "embedding_length");
  c.n_layer = u32(a + "block_count");
  // Every layer has tensors of its own: a block count the file cannot hold is
  // refused before anything is sized by it.
  if (c.n_layer > f.tensors().size())
    throw err("key " + a + "block_count = " + std::to_string(c.n_layer) + ", but the file has " +
              std::to_string(f.tensors().size()) + " tensors in all");
  c.n_head = u32(a + "attention.head_count");
  c.n_head_kv = f.find(a + "attention.head_count_kv") ? u32(a + "attention.head_count_kv") : c.n_head;
  c.n_ff = u32(a + "feed_forward_length");
  c.n_ctx_train = f.find(a + "context_length") ? u32(a + "context_length") : 0;
  c.rms_eps = positive(a + "attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_neox = tr->neox_key ? f.get_bool_or("defkv.rope_neox", tr->rope_neox) : tr->rope_neox;
  if (c.n_head % c.n_head_kv != 0)
    throw err("head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
              std::to_string(c.n_head_kv));
  if (f.find(a + "attention.key_length")) {
    c.head_dim = u32(a + "attention.key_length");
    if (f.find(a + "attention.value_length") && u32(a + "attention.value_length") != c.head_dim)
      throw err("key " + a + "attention.value_length " + std::to_string(f.get_uint(a + "attention.value_length")) +
                " differs from attention.key_length " + std::to_string(c.head_dim) + " (not supported)");
  } else {
    if (c.n_embd % c.n_head != 0)
      throw err("embedding_length " + std::to_string(c.n_embd) + " is not a multiple of head_count " +
                std::to_string(c.n_head) + " and there is no " + a + "attention.key_length");
    c.head_dim = c.n_embd / c.n_head;
  }
  c.n_rot = uint32_t(f.get_uint_or(a + "rope.dimension_count", c.head_dim));
  if (c.n_rot == 0 || c.n_rot % 2 != 0 || c.n_rot > c.head_dim)
    throw err("key " + a + "rope.dimension_count " + std::to_string(c.n_rot) + " must be even, > 0 and <= head_dim " +
              std::to_string(c.head_dim));

  // RoPE: base, linear scaling, Llama 3 frequency factors. YaRN / LongRoPE
  // and other scalings are refused.
  RopeSpec rs;
  rs.freq_base = positive(a + "rope.freq_base", 10000.0);
  std::string scaling = "linear";  // llama.cpp's default: a factor without a type is linear
  if (f.find(a + "rope.scaling.type")) scaling = f.get_string(a + "rope.scaling.type");
  if (scaling != "none" && scaling != "linear")
    throw err("RoPE scaling \"" + scaling + "\" (" + a + "rope.scaling.type) is not supported (supported: none, linear)");
  double factor = 0.0;
  if (f.find(a + "rope.scaling.factor")) factor = f.get_float(a + "rope.scaling.factor");
  else if (f.find(a + "rope.scale_linear")) factor = f.get_float(a + "rope.scale_linear");
  if (factor != 0.0 && scaling != "none") {
    if (!(factor > 0.0) || !std::isfinite(factor))
      throw err("key " + a + "rope.scaling.factor must be > 0, got " + std::to_string(factor));
    rs.freq_scale = float(1.0 / factor);
  }
  for (const char* t : {"rope_factors_long.weight", "rope_factors_short.weight"})
    if (f.find_tensor(t))
      throw err(std::string("tensor '") + t + "': LongRoPE scaling is not supported");
  c.rope.push_back(rs);
  c.rope_freq_base = rs.freq_base;

  // Sliding window and which layers use it.
  std::vector<uint8_t> swa(c.n_layer, 0);
  if (tr->swa == Swa::none) {
    refuse_key(a + "attention.sliding_window", "a sliding window");
    refuse_key(a + "attention.sliding_window_pattern", "a sliding-window layer pattern");
  } else {
    const std::string wkey = a + "attention.sliding_window";
    const uint64_t window = f.get_uint_or(wkey, 0);
    if (window == 0 && tr->swa != Swa::all)
      throw err("missing or zero key " + wkey + " (architecture " + arch + " needs a window)");
    if (window > (1u << 30)) throw err("key " + wkey + " has invalid value " + std::to_string(window));
    // Two kinds of layer (gemma2, gemma3): a window longer than the trained
    // context would make the sliding layers global ones.
    if (tr->swa != Swa::all && c.n_ctx_train > 0 && window > c.n_ctx_train)
      throw err("key " + wkey + " = " + std::to_string(window) + " is larger than " + a + "context_length = " +
                std::to_string(c.n_ctx_train) + ": the sliding-window layers would attend to every position");
    c.sliding_window = uint32_t(window);
    for (uint32_t l = 0; l < c.n_layer && c.sliding_window > 0; ++l) {
      if (tr->swa == Swa::all) swa[l] = 1;
      else if (tr->swa == Swa::even) swa[l] = l % 2 == 0;
      else swa[l] = l % 6 < 5;
    }
    if (tr->swa == Swa::pattern) {
      const std::string pkey = a + "attention.sliding_window_pattern";
      const gguf::Value* p = f.find(pkey);
      if (p) {
        if (p->type == gguf::ValueType::array) {
          const gguf::Array& arr = f.get_array(pkey);
          if (arr.elem_type != gguf::ValueType::boolean)
            throw err("key " + pkey + " must be a period (uint32) or one bool per layer, not an array of " +
                      gguf::value_type_name(arr.elem_type));
          if (arr.ints.size() != c.n_layer)
            throw err("key " + pkey + " has " + std::to_string(arr.ints.size()) + " entries, expected one bool per layer (" +
                      a + "block_count = " + std::to_string(c.n_layer) + ")");
          for (uint32_t l = 0; l < c.n_layer; ++l) swa[l] = arr.ints[l] != 0;
        } else {
          const uint64_t period = f.get_uint(pkey);
          if (period == 0) throw err("key " + pkey + " must be > 0");
          for (uint32_t l = 0; l < c.n_layer; ++l) swa[l] = l % period < period - 1;
        }
      }
      // The global layers hold the long-range memory (and are what KV
      // budgets count): a model without one contradicts the architecture.
      if (std::find(swa.begin(), swa.end(), uint8_t(0)) == swa.end())
        throw err(p ? "key " + pkey + " leaves no global (full-attention) layer among the " + std::to_string(c.n_layer) +
                          " layers (" + a + "block_count)"
                    : "key " + a + "block_count = " + std::to_string(c.n_layer) + " leaves no global layer (without " + pkey +
                          ", layer l is global when l % 6 == 5)");
    } else {
      refuse_key(a + "attention.sliding_window_pattern", "a sliding-window layer pattern");
    }
  }
  if (tr->rope_base_swa) {  // windowed layers: their own base, no scaling
    RopeSpec sw;
    sw.freq_base = positive(a + "rope.freq_base_swa", 10000.0);
    c.rope.push_back(sw);
  } else {
    refuse_key(a + "rope.freq_base_swa", "a RoPE base for sliding-window layers");
  }

  // Block variants.
  c.qk_norm = tr->qk_norm;
  c.post_norms = tr->post_norms;
  c.act = tr->act;
  c.embd_scale = tr->embd_scale ? std::sqrt(float(c.n_embd)) : 1.0f;
  const bool width_scale = tr->q_scale_width_layers != 0 && c.n_layer == tr->q_scale_width_layers;
  if (width_scale && c.n_embd < c.n_head)
    throw err("embedding_length " + std::to_string(c.n_embd) + " is smaller than head_count " + std::to_string(c.n_head));
  c.q_scale = 1.0f / std::sqrt(float(width_scale ? c.n_embd / c.n_head : c.head_dim));
  if (tr->attn_softcap) c.attn_softcap = positive(a + "attn_logit_softcapping", 50.0);
  else refuse_key(a + "attn_logit_softcapping", "attention logit soft-capping");
  if (tr->final_softcap) {
    if (tr->attn_softcap) c.final_softcap = positive(a + "final_logit_softcapping", 30.0);
    else if (f.find(a + "final_logit_softcapping")) c.final_softcap = positive(a + "final_logit_softcapping", 30.0);
  } else {
    refuse_key(a + "final_logit_softcapping", "final logit soft-capping");
  }
  const std::string b0 = "blk.0.attn_q.bias";
  c.qkv_bias = tr->qkv_bias || (tr->qkv_bias_optional && f.find_tensor(b0));

  // Vocabulary size from the embedding.
  const gguf::TensorInfo* te = f.find_tensor("token_embd.weight");
  if (!te) throw err("missing tensor 'token_embd.weight'");
  if (eff_dims(*te) != 2 || te->ne[1] == 0)
    throw err("tensor 'token_embd.weight' has shape " + shape_str(te->ne, std::max<uint32_t>(te->n_dims, 1)) +
              ", expected [" + std::to_string(c.n_embd) + ", n_vocab]");
  c.n_vocab = uint32_t(te->ne[1]);
  cfg_ = c;

  size_t bytes = 0;
  tok_embd_ = mat("token_embd.weight", c.n_vocab, c.n_embd, &bytes);
  if (const float* ff = vec("rope_freqs.weight", c.n_rot / 2, &bytes, false)) {
    cfg_.rope_freqs.assign(ff, ff + c.n_rot / 2);
    for (float x : cfg_.rope_freqs)
      if (!(x > 0.0f) || !std::isfinite(x)) throw err("tensor 'rope_freqs.weight' has a factor that is not > 0");
  }
  layers_.resize(c.n_layer);
  for (uint32_t l = 0; l < c.n_layer; ++l) {
    load_layer(l, &bytes);
    layers_[l].window = swa[l] ? c.sliding_window : 0;
    layers_[l].rope_table = swa[l] && tr->rope_base_swa ? 1 : 0;
    cfg_.n_swa_layers += swa[l];
    cfg_.layer_window.push_back(layers_[l].window);
  }
  output_norm_ = vec("output_norm.weight", c.n_embd, &bytes);
  if (f.find_tensor("output.weight")) {
    output_ = mat("output.weight", c.n_vocab, c.n_embd, &bytes);
  } else {
    output_ = tok_embd_;
    cfg_.tied_output = true;
  }

  // Every tensor must have been read: anything else is a feature this
  // architecture does not have here, or a tensor the keys contradict.
  for (const gguf::TensorInfo& t : f.tensors())
    if (!used_.count(t.name))
      throw err("tensor '" + t.name + "' is not used by architecture " + arch +
                " (an unsupported feature, or a tensor that contradicts the keys)");
  used_.clear();

  // Re-lay the matrices out once for the packed matmul kernels (see quant::Packed).
  packed_.resize(c.n_layer);
  for (uint32_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    PackedLayer& P = packed_[l];
    // The packed copy replaces the mapped source on the hot path, so the
    // source pages leave RSS (weights are not resident twice). W_o's source is
    // still read when a caller computes value norms (layer(l).wo): its pages
    // refault from the page cache on first use and then stay.
    P.wq = quant::pack_for_gemm(L.wq, /*release_source=*/true);
    P.wk = quant::pack_for_gemm(L.wk, true);
    P.wv = quant::pack_for_gemm(L.wv, true);
    P.wo = quant::pack_for_gemm(L.wo, true);
    P.w_gate = quant::pack_for_gemm(L.w_gate, true);
    P.w_up = quant::pack_for_gemm(L.w_up, true);
    P.w_down = quant::pack_for_gemm(L.w_down, true);
  }
  // A tied output head shares token_embd, whose rows get_row reads per token:
  // keep its source resident.
  output_packed_ = quant::pack_for_gemm(output_, /*release_source=*/!cfg_.tied_output);
  weight_bytes_ = bytes;
}

// The tensors of layer l, by the architecture's traits (Config already filled).
void Model::load_layer(uint32_t l, size_t* bytes) {
  const Config& c = cfg_;
  const gguf::File& f = *file_;
  const ArchTraits& tr = *find_arch(c.arch);
  const std::string p = "blk." + std::to_string(l) + ".";
  const uint64_t E = c.n_embd, q_dim = uint64_t(c.n_head) * c.head_dim, kv_dim = uint64_t(c.n_head_kv) * c.head_dim;
  Layer& L = layers_[l];
  L.attn_norm = vec(p + "attn_norm.weight", E, bytes);
  if (tr.fused_qkv && f.find_tensor(p + "attn_qkv.weight")) {
    const quant::Matrix qkv = mat(p + "attn_qkv.weight", q_dim + 2 * kv_dim, E, bytes);
    L.wq = row_slice(qkv, 0, q_dim);
    L.wk = row_slice(qkv, q_dim, kv_dim);
    L.wv = row_slice(qkv, q_dim + kv_dim, kv_dim);
  } else {
    L.wq = mat(p + "attn_q.weight", q_dim, E, bytes);
    L.wk = mat(p + "attn_k.weight", kv_dim, E, bytes);
    L.wv = mat(p + "attn_v.weight", kv_dim, E, bytes);
  }
  if (c.qkv_bias) {
    L.bq = vec(p + "attn_q.bias", q_dim, bytes);
    L.bk = vec(p + "attn_k.bias", kv_dim, bytes);
    L.bv = vec(p + "attn_v.bias", kv_dim, bytes);
  }
  if (c.qk_norm) {
    L.q_norm = vec(p + "attn_q_norm.weight", c.head_dim, bytes);
    L.k_norm = vec(p + "attn_k_norm.weight", c.head_dim, bytes);
  }
  L.wo = mat(p + "attn_output.weight", E, q_dim, bytes);
  if (c.post_norms) L.post_attn_norm = vec(p + "post_attention_norm.weight", E, bytes);
  L.ffn_norm = vec(p + "ffn_norm.weight", E, bytes);
  if (tr.fused_gate_up && !f.find_tensor(p + "ffn_gate.weight")) {
    const quant::Matrix gu = mat(p + "ffn_up.weight", 2 * uint64_t(c.n_ff), E, bytes);
    L.w_gate = row_slice(gu, 0, c.n_ff);
    L.w_up = row_slice(gu, c.n_ff, c.n_ff);
  } else {
    L.w_gate = mat(p + "ffn_gate.weight", c.n_ff, E, bytes);
    L.w_up = mat(p + "ffn_up.weight", c.n_ff, E, bytes);
  }
  L.w_down = mat(p + "ffn_down.weight", E, c.n_ff, bytes);
  if (c.post_norms) L.post_ffn_norm = vec(p + "post_ffw_norm.weight", E, bytes);
}

}  // namespace defkv::model
