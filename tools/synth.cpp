// Synthetic GGUF models: shapes, deterministic weights, streaming write.
#include "tools/synth.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace defkv::tools {

namespace fs = std::filesystem;
using quant::DType;

// ---- shapes ----------------------------------------------------------------

const std::vector<ModelShape>& known_shapes() {
  // Values from each model's config.json (Hugging Face). The context length
  // written to the metadata is capped at 8192 (see ctx below) so that a
  // runtime sizing its KV cache from the metadata stays reasonable, except
  // gemma3-1b's: its sliding-window layers keep only 512 positions, so its
  // real 32768 is kept for long-context runs.
  static const std::vector<ModelShape> shapes = [] {
    std::vector<ModelShape> v = {
      {"tinyllama-1.1b", 2048, 22, 32, 4, 5632, 32000, 2048, 0, 10000.0f, 1e-5f, false,
       "TinyLlama-1.1B (Llama-2 vocab, untied head)."},
      {"llama-3.2-1b", 2048, 16, 32, 8, 8192, 128256, 8192, 0, 500000.0f, 1e-5f, true,
       "Llama-3.2-1B: tied head, Llama 3 RoPE scaling (rope_freqs.weight: factor 32, "
       "original context 8192); context metadata capped to 8192 (real: 131072); the real Llama 3 "
       "byte-level BPE vocab and chat template when the shared tokenizer files are found."},
      {"qwen2.5-0.5b", 896, 24, 14, 2, 4864, 151936, 8192, 0, 1000000.0f, 1e-6f, true,
       "Qwen2.5-0.5B: qwen2 architecture (q/k/v biases, NeoX RoPE), tied head; context "
       "metadata capped to 8192 (real: 32768); the real Qwen byte-level BPE vocab when found."},
      {"qwen3-0.6b", 1024, 28, 16, 8, 3072, 151936, 8192, 128, 1000000.0f, 1e-6f, true,
       "Qwen3-0.6B: qwen3 architecture (per-head q/k RMSNorm, head dim 128, NeoX RoPE), tied "
       "head; context metadata capped to 8192 (real: 40960); the real Qwen3 byte-level BPE vocab and "
       "chat template when found."},
      {"phi-3.5-mini", 3072, 32, 32, 32, 8192, 32064, 8192, 0, 10000.0f, 1e-5f, false,
       "Phi-3.5-mini: phi3 architecture (fused attn_qkv and gate/up, NeoX RoPE), untied head, "
       "sliding_window 262144 as in its GGUF; the LongRoPE factors are not written (defkv "
       "refuses LongRoPE), so RoPE is plain base 10000; context metadata capped to 8192 "
       "(real: 131072); the real Phi-3 SPM vocab (32,064 tokens) when found."},
      {"smollm2-360m", 960, 32, 15, 5, 2560, 49152, 8192, 0, 100000.0f, 1e-5f, true,
       "SmolLM2-360M: tied head; synthetic SPM vocab (real: GPT-2-style BPE)."},
      {"smollm2-135m", 576, 30, 9, 3, 1536, 49152, 8192, 0, 100000.0f, 1e-5f, true,
       "SmolLM2-135M: tied head; synthetic SPM vocab (real: GPT-2-style BPE)."},
      {"gemma3-1b", 1152, 26, 4, 1, 6912, 262144, 32768, 256, 1000000.0f, 1e-6f, true,
       "Gemma 3 1B (text): gemma3 architecture (sliding window 512 on five of every six layers, "
       "RoPE base 1e6 on the global layers and 10000 on the sliding ones, no RoPE scaling in the "
       "1B; per-head q/k RMSNorm, post-attention / post-FFN norms, GELU), tied head, head dim 256; "
       "context metadata 32768 as the real model; synthetic SPM vocab of 262,144 tokens (there is "
       "no Gemma vocabulary in the shared data)."},
      {"tiny", 64, 2, 4, 2, 128, 512, 256, 0, 10000.0f, 1e-5f, false,
       "A tiny test shape with the stories260K tokenizer (512 tokens)."},
    };
    for (ModelShape& s : v) {
      if (s.name == "llama-3.2-1b") s.llama3_rope_factor = 32.0f;
      if (s.name == "qwen2.5-0.5b") s.arch = "qwen2", s.qkv_bias = true;
      if (s.name == "qwen3-0.6b") s.arch = "qwen3", s.qk_norm = true;
      if (s.name == "phi-3.5-mini") s.arch = "phi3", s.fused = true, s.sliding_window = 262144;
      if (s.name == "gemma3-1b") {
        s.arch = "gemma3", s.qk_norm = true, s.post_norms = true;
        s.sliding_window = 512, s.rope_base_swa = 10000.0f;
      }
    }
    return v;
  }();
  return shapes;
}

const ModelShape* find_shape(std::string_view name) {
  for (const auto& s : known_shapes())
    if (s.name == name) return &s;
  return nullptr;
}

namespace {

// The parameter count in U: uint64_t once validate() has bounded it, long
// double (no overflow) for that bound.
template <class U>
U params_of(const ModelShape& s) {
  const U hd = U(s.head_dim_or_default()), dim = U(s.dim);
  const U q = U(s.n_head) * hd, kv = U(s.n_head_kv) * hd;
  const U per_layer = 2 * dim + dim * (q + 2 * kv) + q * dim + 3 * dim * U(s.ffn) + (s.qkv_bias ? q + 2 * kv : U(0)) +
                      (s.qk_norm ? 2 * hd : U(0)) + (s.post_norms ? 2 * dim : U(0));
  return U(s.n_vocab) * dim * U(s.tied ? 1 : 2) + dim + U(s.n_layer) * per_layer;
}

}  // namespace

void ModelShape::validate(DType type) const {
  auto bad = [&](const std::string& m) {
    throw std::invalid_argument("shape '" + name + "': " + m);
  };
  if (dim == 0) bad("dim must be > 0");
  if (n_layer == 0) bad("layers must be > 0");
  if (n_head == 0) bad("heads must be > 0");
  if (n_head_kv == 0) bad("kv-heads must be > 0");
  if (ffn == 0) bad("ffn must be > 0");
  if (n_vocab == 0) bad("vocab must be > 0");
  if (ctx == 0) bad("ctx must be > 0");
  if (n_head % n_head_kv != 0)
    bad("heads (" + std::to_string(n_head) + ") must be a multiple of kv-heads (" +
        std::to_string(n_head_kv) + ")");
  if (head_dim == 0 && dim % n_head != 0)
    bad("dim (" + std::to_string(dim) + ") is not a multiple of heads (" +
        std::to_string(n_head) + "); give --head-dim");
  const uint32_t hd = head_dim_or_default();
  if (hd % 2 != 0) bad("head dim " + std::to_string(hd) + " must be even (RoPE pairs)");
  if (!(rope_base > 0.0f) || !std::isfinite(rope_base)) bad("rope base must be > 0");
  if (!(rms_eps > 0.0f)) bad("rms eps must be > 0");
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3" && arch != "phi3" && arch != "gemma3")
    bad("unknown arch '" + arch + "' (llama, qwen2, qwen3, phi3, gemma3)");
  if (qkv_bias != (arch == "qwen2") && arch != "llama") bad("q/k/v biases belong to qwen2 (or optional llama)");
  if (qk_norm != (arch == "qwen3" || arch == "gemma3")) bad("q/k norms belong to qwen3 and gemma3");
  if (fused != (arch == "phi3")) bad("fused qkv / gate-up belong to phi3");
  if (post_norms != (arch == "gemma3")) bad("post-attention / post-FFN norms belong to gemma3");
  if (arch == "gemma3") {
    if (sliding_window == 0) bad("gemma3 needs a sliding window");
    if (n_layer < 6) bad("gemma3 needs at least 6 layers (layer 5 is the first global one)");
    if (!(rope_base_swa > 0.0f)) bad("gemma3 needs the sliding layers' RoPE base");
  } else if (rope_base_swa != 0.0f) {
    bad("a RoPE base for sliding-window layers belongs to gemma3");
  }
  if (n_layer > kMaxLayers) bad("layers (" + std::to_string(n_layer) + ") must be at most " + std::to_string(kMaxLayers));
  // Token ids are int32; the largest real vocabularies have 262,144 tokens,
  // and the synthetic one holds a string per token in memory.
  if (n_vocab > kMaxVocab) bad("vocab (" + std::to_string(n_vocab) + ") must be at most " + std::to_string(kMaxVocab));
  // Far beyond any model (and any disk), and low enough that every byte
  // count of the file fits in 64 bits.
  if (const long double n = params_of<long double>(*this); n > 0x1p48L) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3Lg", n);
    bad("the shape has " + std::string(buf) + " parameters, more than 2^48");
  }
  const size_t blk = quant::block_elems(type);
  auto need = [&](const char* what, uint64_t v) {
    if (v % blk != 0)
      bad(std::string(what) + " (" + std::to_string(v) + ") must be a multiple of " +
          std::to_string(blk) + " for " + quant::dtype_name(type) + " weights");
  };
  need("dim", dim);
  need("ffn", ffn);
  need("heads * head dim", uint64_t(n_head) * hd);
}

uint64_t ModelShape::n_params() const { return params_of<uint64_t>(*this); }

std::vector<SynthTensor> plan_tensors(const ModelShape& s, DType type) {
  const uint64_t hd = s.head_dim_or_default();
  const uint64_t q = uint64_t(s.n_head) * hd, kv = uint64_t(s.n_head_kv) * hd;
  const float res_std = kInitStd / std::sqrt(2.0f * float(s.n_layer));
  std::vector<SynthTensor> t;
  auto add = [&](std::string name, DType ty, std::vector<uint64_t> ne, float sd) {
    uint64_t rows = 1;
    for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
    t.push_back({std::move(name), ty, ne, sd, rows * quant::row_bytes(ty, size_t(ne[0])), {}});
  };
  // ggml order: ne[0] is the input (column) dimension of y = W x.
  add("token_embd.weight", type, {s.dim, s.n_vocab}, kInitStd);
  if (s.llama3_rope_factor > 0.0f) {
    add("rope_freqs.weight", DType::f32, {hd / 2}, 0.0f);
    t.back().values = llama3_rope_factors(s.rope_base, uint32_t(hd), s.llama3_rope_factor, s.llama3_orig_ctx);
  }
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", DType::f32, {s.dim}, 0.0f);
    if (s.fused) {
      add(p + "attn_qkv.weight", type, {s.dim, q + 2 * kv}, kInitStd);
    } else {
      add(p + "attn_q.weight", type, {s.dim, q}, kInitStd);
      add(p + "attn_k.weight", type, {s.dim, kv}, kInitStd);
      add(p + "attn_v.weight", type, {s.dim, kv}, kInitStd);
    }
    if (s.qkv_bias) {
      add(p + "attn_q.bias", DType::f32, {q}, kInitStd);
      add(p + "attn_k.bias", DType::f32, {kv}, kInitStd);
      add(p + "attn_v.bias", DType::f32, {kv}, kInitStd);
    }
    if (s.qk_norm) {
      add(p + "attn_q_norm.weight", DType::f32, {hd}, 0.0f);
      add(p + "attn_k_norm.weight", DType::f32, {hd}, 0.0f);
    }
    add(p + "attn_output.weight", type, {q, s.dim}, res_std);
    if (s.post_norms) add(p + "post_attention_norm.weight", DType::f32, {s.dim}, 0.0f);
    add(p + "ffn_norm.weight", DType::f32, {s.dim}, 0.0f);
    if (s.fused) {
      add(p + "ffn_up.weight", type, {s.dim, 2 * uint64_t(s.ffn)}, kInitStd);  // [gate; up]
      add(p + "ffn_down.weight", type, {s.ffn, s.dim}, res_std);
    } else {
      add(p + "ffn_gate.weight", type, {s.dim, s.ffn}, kInitStd);
      add(p + "ffn_down.weight", type, {s.ffn, s.dim}, res_std);
      add(p + "ffn_up.weight", type, {s.dim, s.ffn}, kInitStd);
    }
    if (s.post_norms) add(p + "post_ffw_norm.weight", DType::f32, {s.dim}, 0.0f);
  }
  add("output_norm.weight", DType::f32, {s.dim}, 0.0f);
  if (!s.tied) add("output.weight", type, {s.dim, s.n_vocab}, kInitStd);
  return t;
}

std::vector<float> llama3_rope_factors(float freq_base, uint32_t n_rot, float factor, uint32_t orig_ctx) {
  const double low_freq_factor = 1.0, high_freq_factor = 4.0;
  const double low_wavelen = double(orig_ctx) / low_freq_factor, high_wavelen = double(orig_ctx) / high_freq_factor;
  std::vector<float> out;
  for (uint32_t i = 0; i < n_rot / 2; ++i) {
    const double freq = 1.0 / std::pow(double(freq_base), 2.0 * double(i) / double(n_rot));
    const double wavelen = 2.0 * M_PI / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(factor);
    } else {
      const double smooth = (double(orig_ctx) / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      out.push_back(float(1.0 / ((1.0 - smooth) / factor + smooth)));
    }
  }
  return out;
}

// ---- deterministic values --------------------------------------------------

namespace {

inline uint64_t mix64(uint64_t z) {  // SplitMix64 finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t name_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
  return mix64(seed * 0x9E3779B97F4A7C15ULL ^ mix64(h));
}

}  // namespace

void synth_values(uint64_t seed, std::string_view tensor_name, uint64_t first, size_t n,
                  float stddev, float* out) {
  const uint64_t key = name_key(seed, tensor_name);
  // Sum of four discrete uniforms on [0, 65535]: mean 2 * 65535, variance
  // 4 * (65536^2 - 1) / 12.
  const double inv_sd = 1.0 / std::sqrt((65536.0 * 65536.0 - 1.0) / 3.0);
  const float scale = float(inv_sd * stddev);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t h = mix64(key + (first + i + 1) * 0x9E3779B97F4A7C15ULL);
    const int64_t s = int64_t(h & 0xffff) + int64_t((h >> 16) & 0xffff) +
                      int64_t((h >> 32) & 0xffff) + int64_t(h >> 48) - 2 * 65535;
    out[i] = float(s) * scale;
  }
}

// ---- vocabulary --------------------------------------------------------------

SyntheticVocab synthetic_spm_vocab(uint32_t n_vocab) {
  if (n_vocab < 260)
    throw std::invalid_argument("a synthetic SPM vocabulary needs at least 260 tokens "
                                "(<unk>, <s>, </s>, 256 byte tokens and \"\xE2\x96\x81\"), got " +
                                std::to_string(n_vocab));
  SyntheticVocab v;
  v.tokens.reserve(n_vocab);
  v.scores.reserve(n_vocab);
  v.types.reserve(n_vocab);
  auto push = [&](std::string s, float score, int32_t type) {
    v.tokens.push_back(std::move(s));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  push("<unk>", 0.0f, 2);
  push("<s>", 0.0f, 3);
  push("</s>", 0.0f, 3);
  static const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b)
    push(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">", 0.0f, 6);
  // The word-boundary piece itself, so a lone space never needs byte fallback
  // (byte tokens decode to raw bytes, which would leave a literal U+2581).
  push("\xE2\x96\x81", -0.0f, 1);
  std::string s;
  uint32_t filler = 1;
  for (size_t len = 1; v.tokens.size() < n_vocab; ++len) {
    s.assign(len, 'a');
    while (v.tokens.size() < n_vocab) {
      for (int prefixed = 1; prefixed >= 0 && v.tokens.size() < n_vocab; --prefixed) {
        push((prefixed ? std::string("\xE2\x96\x81") : std::string()) + s, -float(filler), 1);
        ++filler;
      }
      // next string of this length (odometer over 'a'..'z')
      size_t i = len;
      while (i > 0 && s[i - 1] == 'z') s[--i] = 'a';
      if (i == 0) break;
      ++s[i - 1];
    }
  }
  return v;
}

// ---- shared directory --------------------------------------------------------

std::string find_shared_dir() {
  auto ok = [](const fs::path& p) {
    std::error_code ec;
    return fs::is_directory(p / "models", ec);
  };
  if (const char* e = std::getenv("DEFKV_SHARED"); e != nullptr && *e && ok(e)) return e;
  if (ok("../shared")) return "../shared";
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (fs::path d = exe.parent_path(); !d.empty() && d != d.root_path(); d = d.parent_path()) {
      if (ok(d / "shared")) return (d / "shared").string();
      if (ok(d.parent_path() / "shared")) return (d.parent_path() / "shared").string();
    }
  }
  return {};
}

const char* known_vocab_file(uint32_t n_vocab) {
  // The real tokenizers of the named shapes, as the shared folder holds them.
  switch (n_vocab) {
    case 512: return "models/stories260K/stories260K.gguf";
    case 32000: return "models/tokenizers/ggml-vocab-llama-spm.gguf";
    case 32064: return "testdata/tokenizers/ggml-vocab-phi-3.gguf";
    case 128256: return "testdata/tokenizers/ggml-vocab-llama-bpe.gguf";
    case 151936: return "testdata/tokenizers/ggml-vocab-qwen2.gguf";
    default: return nullptr;
  }
}

std::string default_vocab_file(uint32_t n_vocab) {
  const char* rel = known_vocab_file(n_vocab);
  const std::string shared = find_shared_dir();
  if (!rel || shared.empty()) return {};
  const fs::path p = fs::path(shared) / rel;
  std::error_code ec;
  return fs::is_regular_file(p, ec) ? p.string() : std::string();
}

// ---- writing -----------------------------------------------------------------

namespace {

uint32_t llama_file_type(DType t) {  // llama.cpp LLAMA_FTYPE_*
  switch (t) {
    case DType::f32: return 0;
    case DType::f16: return 1;
    case DType::q8_0: return 7;
    case DType::bf16: return 32;
    default: return 0;
  }
}

gguf::Value u32v(uint64_t v) { return gguf::Value{gguf::ValueType::u32, v}; }

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

struct ZeroMap {  // read-only anonymous mapping: reads see zeros, no memory is committed
  void* p = MAP_FAILED;
  size_t n = 0;
  ~ZeroMap() {
    if (p != MAP_FAILED) ::munmap(p, n);
  }
};

void pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t off, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, off_t(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("synth: write to '" + path + "' failed: " + std::strerror(errno));
    }
    p += w;
    n -= size_t(w);
    off += uint64_t(w);
  }
}

// A file that cannot fit on the output's file system is refused before
// anything is written (a full disk would fail the write midway).
void check_disk_space(const std::vector<SynthTensor>& plan, const std::string& out_path) {
  uint64_t bytes = 0;
  for (const auto& t : plan) bytes += t.size_bytes;
  std::filesystem::path dir = std::filesystem::absolute(out_path).parent_path();
  std::error_code ec;
  const std::filesystem::space_info sp = std::filesystem::space(dir, ec);
  if (!ec && bytes > sp.available)
    throw std::runtime_error("synth: the tensors take " + std::to_string(bytes) + " bytes, more than the " +
                             std::to_string(sp.available) + " bytes free in " + dir.string());
}

}  // namespace

SynthResult synthesize(const SynthOptions& opts, const std::string& out_path,
                       const std::function<void(const SynthProgress&)>& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  ModelShape shape = opts.shape;
  if (opts.type != DType::f32 && opts.type != DType::f16 && opts.type != DType::bf16 &&
      opts.type != DType::q8_0)
    throw std::invalid_argument(std::string("synth: weight type ") + quant::dtype_name(opts.type) +
                                " is not generated (f32|f16|bf16|q8_0); write f16 and use `defkv quantize`");
  shape.validate(opts.type);

  SynthResult res;
  gguf::Writer w;
  const std::string a = shape.arch + ".";
  w.set_string("general.architecture", shape.arch);
  w.set_string("general.name", "synthetic " + shape.name);
  w.set("general.file_type", u32v(llama_file_type(opts.type)));
  w.set(a + "context_length", u32v(shape.ctx));
  w.set(a + "embedding_length", u32v(shape.dim));
  w.set(a + "block_count", u32v(shape.n_layer));
  w.set(a + "feed_forward_length", u32v(shape.ffn));
  w.set(a + "attention.head_count", u32v(shape.n_head));
  w.set(a + "attention.head_count_kv", u32v(shape.n_head_kv));
  const uint32_t hd = shape.head_dim_or_default();
  if (shape.head_dim != 0 && hd * shape.n_head != shape.dim) {
    w.set(a + "attention.key_length", u32v(hd));
    w.set(a + "attention.value_length", u32v(hd));
  }
  w.set(a + "rope.dimension_count", u32v(hd));
  w.set_f32(a + "rope.freq_base", shape.rope_base);
  w.set_f32(a + "attention.layer_norm_rms_epsilon", shape.rms_eps);
  if (shape.arch == "phi3" || shape.arch == "gemma3")
    w.set(a + "attention.sliding_window", u32v(shape.sliding_window));
  if (shape.rope_base_swa > 0.0f) w.set_f32(a + "rope.freq_base_swa", shape.rope_base_swa);
  w.set(a + "vocab_size", u32v(shape.n_vocab));
  w.set_string("defkv.synth.shape", shape.name);
  w.set("defkv.synth.seed", gguf::Value{gguf::ValueType::u64, opts.seed});
  w.set_string("defkv.synth.weights",
               "random, not trained: approx. N(0, 0.02) (residual projections 0.02/sqrt(2 "
               "n_layer)), norms 1");
  if (!shape.note.empty()) w.set_string("defkv.synth.note", shape.note);

  // Tokenizer.
  if (!opts.vocab.from_path.empty()) {
    auto vf = gguf::File::open(opts.vocab.from_path);
    const gguf::Value* toks = vf->find("tokenizer.ggml.tokens");
    if (toks == nullptr || toks->type != gguf::ValueType::array)
      throw std::runtime_error("synth: '" + opts.vocab.from_path +
                               "' has no tokenizer.ggml.tokens array");
    const uint64_t n = std::get<gguf::Array>(toks->v).size();
    if (n != shape.n_vocab)
      throw std::invalid_argument("synth: vocabulary '" + opts.vocab.from_path + "' has " +
                                  std::to_string(n) + " tokens but the shape's vocab is " +
                                  std::to_string(shape.n_vocab));
    for (const auto& [k, v] : vf->metadata())
      if (k.rfind("tokenizer.", 0) == 0) w.set(k, v);
    res.vocab_desc = opts.vocab.from_path;
  } else {
    SyntheticVocab v = synthetic_spm_vocab(shape.n_vocab);
    gguf::Array toks{gguf::ValueType::string, {}, {}, std::move(v.tokens), {}};
    gguf::Array scores{gguf::ValueType::f32, {}, std::vector<double>(v.scores.begin(), v.scores.end()),
                       {}, {}};
    gguf::Array types{gguf::ValueType::i32, std::vector<int64_t>(v.types.begin(), v.types.end()),
                      {}, {}, {}};
    w.set_string("tokenizer.ggml.model", "llama");
    w.set("tokenizer.ggml.tokens", gguf::Value{gguf::ValueType::array, std::move(toks)});
    w.set("tokenizer.ggml.scores", gguf::Value{gguf::ValueType::array, std::move(scores)});
    w.set("tokenizer.ggml.token_type", gguf::Value{gguf::ValueType::array, std::move(types)});
    w.set("tokenizer.ggml.bos_token_id", u32v(1));
    w.set("tokenizer.ggml.eos_token_id", u32v(2));
    w.set("tokenizer.ggml.unknown_token_id", u32v(0));
    w.set("tokenizer.ggml.add_bos_token", gguf::Value{gguf::ValueType::boolean, true});
    w.set("tokenizer.ggml.add_eos_token", gguf::Value{gguf::ValueType::boolean, false});
    res.vocab_desc = "synthetic llama-spm (" + std::to_string(shape.n_vocab) + " tokens)";
  }
  res.n_vocab = shape.n_vocab;
  res.n_params = shape.n_params();

  // Pass 1: lay the file out with zero data (read from an untouched mapping).
  const std::vector<SynthTensor> plan = plan_tensors(shape, opts.type);
  check_disk_space(plan, out_path);
  ZeroMap zero;
  for (const auto& t : plan) zero.n = std::max<size_t>(zero.n, size_t(t.size_bytes));
  zero.p = ::mmap(nullptr, zero.n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (zero.p == MAP_FAILED)
    throw std::runtime_error(std::string("synth: cannot map zero pages: ") + std::strerror(errno));
  for (const auto& t : plan) {
    w.add_tensor(t.name, uint32_t(t.type), t.ne, zero.p, t.size_bytes);
    res.data_bytes += t.size_bytes;
  }
  const std::string partial = out_path + ".partial";
  w.write(partial);

  try {
    // Where did each tensor land? Ask the reader (also validates the layout).
    std::vector<uint64_t> offsets;
    {
      auto f = gguf::File::open(partial);
      const auto& infos = f->tensors();
      if (infos.size() != plan.size())
        throw std::runtime_error("synth: written file has " + std::to_string(infos.size()) +
                                 " tensors, expected " + std::to_string(plan.size()));
      for (size_t i = 0; i < plan.size(); ++i) {
        const auto& ti = infos[i];
        if (ti.name != plan[i].name || ti.type != uint32_t(plan[i].type) ||
            ti.size_bytes != plan[i].size_bytes)
          throw std::runtime_error("synth: written tensor " + std::to_string(i) + " ('" +
                                   ti.name + "') does not match the plan ('" + plan[i].name +
                                   "')");
        offsets.push_back(uint64_t(ti.data - f->bytes().data()));
      }
      res.file_bytes = f->bytes().size();
    }

    // Pass 2: generate and write each tensor in row chunks.
    Fd fd;
    fd.fd = ::open(partial.c_str(), O_WRONLY);
    if (fd.fd < 0)
      throw std::runtime_error("synth: cannot open '" + partial + "': " + std::strerror(errno));
    constexpr size_t kChunkElems = size_t(1) << 21;  // 8 MiB of f32 per chunk
    std::vector<float> f32buf;
    std::vector<uint8_t> outbuf;
    uint64_t done = 0;
    for (size_t ti = 0; ti < plan.size(); ++ti) {
      const SynthTensor& t = plan[ti];
      if (progress) progress({ti, plan.size(), &t, done, res.data_bytes});
      const size_t cols = size_t(t.ne[0]);
      uint64_t rows = 1;
      for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
      const size_t rb = quant::row_bytes(t.type, cols);
      const size_t chunk_rows = std::max<size_t>(1, kChunkElems / cols);
      f32buf.resize(std::min<uint64_t>(chunk_rows, rows) * cols);
      outbuf.resize(std::min<uint64_t>(chunk_rows, rows) * rb);
      for (uint64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
        const size_t nr = size_t(std::min<uint64_t>(chunk_rows, rows - r0));
        float* fb = f32buf.data();
        uint8_t* ob = outbuf.data();
#ifdef _OPENMP
        const int nt = opts.n_threads > 0 ? opts.n_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (size_t r = 0; r < nr; ++r) {
          float* x = fb + r * cols;
          if (!t.values.empty()) std::copy(t.values.begin() + long((r0 + r) * cols), t.values.begin() + long((r0 + r + 1) * cols), x);
          else if (t.stddev == 0.0f) std::fill(x, x + cols, 1.0f);
          else synth_values(opts.seed, t.name, (r0 + r) * cols, cols, t.stddev, x);
          quant::from_f32(t.type, x, ob + r * rb, cols);
        }
        pwrite_all(fd.fd, ob, nr * rb, offsets[ti] + r0 * rb, partial);
      }
      done += t.size_bytes;
    }
    if (::fsync(fd.fd) != 0)
      throw std::runtime_error("synth: fsync of '" + partial + "' failed: " + std::strerror(errno));
    if (::rename(partial.c_str(), out_path.c_str()) != 0)
      throw std::runtime_error("synth: cannot rename '" + partial + "' to '" + out_path +
                               "': " + std::strerror(errno));
  } catch (...) {
    ::unlink(partial.c_str());
    throw;
  }
  if (progress) progress({plan.size(), plan.size(), nullptr, res.data_bytes, res.data_bytes});
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace defkv::tools
