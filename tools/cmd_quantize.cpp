// `defkv quantize IN.gguf OUT.gguf TYPE`: converts the 2-D weight matrices of
// a GGUF model to another weight type. TYPE is f32 | f16 | bf16 | q8_0 (every
// matrix in that type) or one of llama.cpp's low-bit file types q4_0 | q4_1 |
// q5_0 | q5_1 | q4_k_m | q5_k_m | q6_k, which follow llama-quantize's
// per-tensor mix without an importance matrix (llama.cpp's
// llama_tensor_get_type): output.weight (or a tied token_embd.weight) in
// Q6_K; for the _M types Q6_K on the attn_v and ffn_down tensors of the
// layers use_more_bits picks (the first and last eighth, and every third
// between), fused attn_qkv one K type up; a matrix whose row length is not a
// multiple of its type's block falls back as llama-quantize does (Q4_K ->
// Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16). Blocks are quantised with
// ggml's reference quantisers (byte-identical to llama-quantize's output).
// 1-D tensors (norms) are stored as F32; tensors that cannot take the target
// type (3-D/4-D or integer tensors, or rows the type cannot block) are kept
// as they are, with a note. Metadata is copied and general.file_type set to
// the llama ftype.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "runtime/gguf/gguf.h"
#include "tools/commands.h"

namespace defkv::cli {
namespace {

namespace gguf = defkv::gguf;
using quant::DType;

struct QuantizeOptions {
  std::string in_path;
  std::string out_path;
  std::string type_name;
};

// A target file type: the base weight type, llama.cpp's LLAMA_FTYPE value and
// whether it is a K "_M" mix.
struct Target {
  const char* name;
  DType base;
  uint32_t ftype;
  bool k_mix_m;
};
constexpr Target kTargets[] = {
    {"f32", DType::f32, 0, false},      {"f16", DType::f16, 1, false},     {"bf16", DType::bf16, 32, false},
    {"q8_0", DType::q8_0, 7, false},    {"q4_0", DType::q4_0, 2, false},   {"q4_1", DType::q4_1, 3, false},
    {"q5_0", DType::q5_0, 8, false},    {"q5_1", DType::q5_1, 9, false},   {"q4_k_m", DType::q4_K, 15, true},
    {"q5_k_m", DType::q5_K, 17, true},  {"q6_k", DType::q6_K, 18, false},
};
constexpr const char* kTargetList = "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k";

const Target* find_target(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (const Target& t : kTargets)
    if (s == t.name) return &t;
  return nullptr;
}

bool is_float_type(uint32_t ggml_type) { return quant::supported_weight_type(ggml_type); }

// llama.cpp's use_more_bits: the first and last eighth of the layers and every
// third layer between.
bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// The per-tensor type choice of a low-bit target (see the file comment).
class TypeMix {
 public:
  TypeMix(const Target& t, const gguf::File& f) : target_(t) {
    has_output_ = f.find_tensor("output.weight") != nullptr;
    int n_v = 0, n_down = 0;
    for (const gguf::TensorInfo& ti : f.tensors()) {
      n_v += contains(ti.name, "attn_v.weight") || contains(ti.name, "attn_qkv.weight");
      n_down += contains(ti.name, "ffn_down");
    }
    n_attn_v_ = n_v;
    n_ffn_down_ = n_down;
  }

  // Type for the 2-D matrix `name` with rows of ne0 values; false when no
  // type fits (then the tensor is kept).
  bool choose(const std::string& name, uint64_t ne0, DType* out) {
    DType t = target_.base;
    if (!quant::is_low_bit(t)) {
      *out = t;
      return ne0 % quant::block_elems(t) == 0;
    }
    const bool k = t == DType::q4_K || t == DType::q5_K || t == DType::q6_K;
    if (name == "output.weight" || (!has_output_ && name == "token_embd.weight")) {
      t = ne0 % quant::block_elems(t) != 0 ? DType::q8_0 : DType::q6_K;
    } else if (contains(name, "attn_v.weight")) {
      if (target_.k_mix_m && use_more_bits(i_attn_v_, n_attn_v_)) t = DType::q6_K;
      ++i_attn_v_;
    } else if (contains(name, "ffn_down")) {
      if (target_.k_mix_m && use_more_bits(i_ffn_down_, n_ffn_down_)) t = DType::q6_K;
      ++i_ffn_down_;
    } else if (contains(name, "attn_qkv.weight") && target_.k_mix_m) {
      t = target_.base == DType::q4_K ? DType::q5_K : DType::q6_K;
    }
    if (ne0 % quant::block_elems(t) != 0) {
      // llama-quantize's fallbacks for K types; the legacy ones have none
      if (t == DType::q4_K) t = DType::q5_0;
      else if (t == DType::q5_K) t = DType::q5_1;
      else if (t == DType::q6_K) t = DType::q8_0;
      else if (!k) return false;
      if (ne0 % quant::block_elems(t) != 0) t = DType::f16;
    }
    *out = t;
    return true;
  }

 private:
  const Target& target_;
  bool has_output_ = false;
  int n_attn_v_ = 0, n_ffn_down_ = 0, i_attn_v_ = 0, i_ffn_down_ = 0;
};

// Converts a tensor of `rows` rows of `cols` elements row by row through f32.
std::vector<uint8_t> convert(const gguf::TensorInfo& t, DType to) {
  const DType from = DType(t.type);
  const size_t cols = t.ne[0];
  const size_t rows = t.n_elements / cols;
  const size_t in_row = quant::row_bytes(from, cols);
  const size_t out_row = quant::row_bytes(to, cols);
  std::vector<uint8_t> out(rows * out_row);
  // rows are independent (the K-quant search is ~100x the cost of a copy):
  // threads over rows, each with its own f32 row
  const auto n = static_cast<long long>(rows);
  // A quantised type cannot hold NaN or Inf (q8_0 would store a NaN block,
  // the low-bit types refuse): the tool refuses such a weight, naming it.
  const bool quantised = to != DType::f32 && to != DType::f16 && to != DType::bf16;
  long long bad_row = n;  // the first row holding a non-finite value
  size_t bad_col = 0;
  bool bad_nan = false;
#pragma omp parallel
  {
    std::vector<float> buf(cols);  // [cols] one row in f32
#pragma omp for schedule(static)
    for (long long r = 0; r < n; ++r) {
      quant::to_f32(from, t.data + size_t(r) * in_row, buf.data(), cols);
      if (quantised) {
        const auto bad = std::find_if(buf.begin(), buf.end(), [](float v) { return !std::isfinite(v); });
        if (bad != buf.end()) {
#pragma omp critical(quantize_bad_row)
          if (r < bad_row) bad_row = r, bad_col = size_t(bad - buf.begin()), bad_nan = std::isnan(*bad);
          continue;
        }
      }
      quant::from_f32(to, buf.data(), out.data() + size_t(r) * out_row, cols);
    }
  }
  if (bad_row < n)
    throw std::runtime_error("quantize: tensor '" + t.name + "' row " + std::to_string(bad_row) +
                             " holds a non-finite value (" + (bad_nan ? "nan" : "inf") + ") at index " +
                             std::to_string(bad_col) + ", which " + quant::dtype_name(to) + " cannot represent");
  return out;
}

// True when both paths name the same file (hard links and symlinks included).
bool same_file(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::error_code ec1, ec2;
  if (fs::equivalent(a, b, ec1)) return true;
  const fs::path ca = fs::weakly_canonical(a, ec1), cb = fs::weakly_canonical(b, ec2);
  return !ec1 && !ec2 && ca == cb;
}

int run_quantize(const QuantizeOptions& o) {
  const Target* target = find_target(o.type_name);
  if (target == nullptr)
    throw std::runtime_error("quantize: unknown type '" + o.type_name + "' (expected one of " + kTargetList + ")");
  if (same_file(o.in_path, o.out_path))
    throw std::runtime_error("quantize: output '" + o.out_path +
                             "' is the input file; write to a different path");

  std::unique_ptr<gguf::File> in = gguf::File::open(o.in_path);
  TypeMix mix(*target, *in);

  gguf::Writer w;
  w.copy_metadata(*in);
  w.set_u32("general.file_type", target->ftype);
  if (quant::is_low_bit(target->base) || target->base == DType::q8_0)
    w.set_u32("general.quantization_version", 2);  // ggml's GGML_QNT_VERSION

  std::vector<std::vector<uint8_t>> converted;  // owns new tensor data until write()
  converted.reserve(in->tensors().size());
  size_t n_converted = 0, n_unchanged = 0, n_kept = 0;
  std::map<std::string, size_t> per_type;
  uint64_t bytes_before = 0, bytes_after = 0;
  for (const gguf::TensorInfo& t : in->tensors()) {
    bytes_before += t.size_bytes;
    std::vector<uint64_t> ne(t.ne, t.ne + t.n_dims);
    DType target_type = target->base;
    const char* why_kept = nullptr;
    if (!is_float_type(t.type)) why_kept = "not a floating-point or quantised tensor";
    else if (t.n_dims == 1) target_type = DType::f32;  // norms stay F32
    else if (t.n_dims != 2) why_kept = "not a 2-D weight matrix";
    else if (!mix.choose(t.name, t.ne[0], &target_type)) why_kept = "ne[0] is not a multiple of the type's block size";

    if (why_kept != nullptr || DType(t.type) == target_type) {
      if (why_kept != nullptr) {
        std::fprintf(stderr, "quantize: note: keeping '%s' as %s (ne[0] = %llu): %s\n",
                     t.name.c_str(), gguf::tensor_type_name(t.type),
                     static_cast<unsigned long long>(t.ne[0]), why_kept);
        ++n_kept;
      } else {
        ++n_unchanged;
      }
      ++per_type[gguf::tensor_type_name(t.type)];
      bytes_after += t.size_bytes;
      w.add_tensor(t.name, t.type, ne, t.data, t.size_bytes);
      continue;
    }
    converted.push_back(convert(t, target_type));
    ++n_converted;
    ++per_type[quant::dtype_name(target_type)];
    bytes_after += converted.back().size();
    w.add_tensor(t.name, uint32_t(target_type), ne, converted.back().data(), converted.back().size());
  }
  w.write(o.out_path);

  std::string mix_text;
  for (const auto& [name, count] : per_type) mix_text += (mix_text.empty() ? "" : ", ") + name + " x" + std::to_string(count);
  const auto out_size = std::filesystem::file_size(o.out_path);
  std::fprintf(stderr,
               "quantize: %s -> %s (%s, general.file_type %u)\n"
               "quantize: %zu tensors converted, %zu already in their target type, %zu kept "
               "(see notes); types: %s\n"
               "quantize: tensor data %.3f MiB -> %.3f MiB (%.1f%%), file %.3f MiB -> %.3f MiB\n",
               o.in_path.c_str(), o.out_path.c_str(), target->name, target->ftype, n_converted, n_unchanged,
               n_kept, mix_text.c_str(), bytes_before / 1048576.0, bytes_after / 1048576.0,
               bytes_before ? 100.0 * double(bytes_after) / double(bytes_before) : 100.0,
               in->bytes().size() / 1048576.0, double(out_size) / 1048576.0);
  return 0;
}

}  // namespace

Handler register_quantize(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  CLI::App* sub = app.add_subcommand(
      "quantize", "Convert a GGUF model's 2-D weight matrices to another type (llama.cpp's mixes for q4_k_m / q5_k_m)");
  sub->add_option("input", o->in_path, "input model (.gguf)")->required();
  sub->add_option("output", o->out_path, "output model (.gguf), written atomically")->required();
  sub->add_option("type", o->type_name,
                  "target type: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | q4_k_m | q5_k_m | q6_k")
      ->required();
  return [o] { return run_quantize(*o); };
}

}  // namespace defkv::cli
