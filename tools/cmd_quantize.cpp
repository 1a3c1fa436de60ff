// `defkv quantize IN.gguf OUT.gguf q8_0|f16|bf16|f32`: converts the 2-D
// weight matrices of a GGUF model to another weight type. 1-D tensors (norms)
// are stored as F32; tensors that cannot take the target type (q8_0 needs
// ne[0] % 32 == 0; 3-D/4-D or integer tensors) are kept as they are, with a
// note. Metadata is copied and general.file_type set to the llama ftype.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
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

// llama.cpp LLAMA_FTYPE values.
uint32_t llama_ftype(DType t) {
  switch (t) {
    case DType::f32: return 0;    // ALL_F32
    case DType::f16: return 1;    // MOSTLY_F16
    case DType::q8_0: return 7;   // MOSTLY_Q8_0
    case DType::bf16: return 32;  // MOSTLY_BF16
    default: break;
  }
  throw std::logic_error("llama_ftype: unknown dtype");
}

bool is_float_type(uint32_t ggml_type) {
  return ggml_type == uint32_t(DType::f32) || ggml_type == uint32_t(DType::f16) ||
         ggml_type == uint32_t(DType::bf16) || ggml_type == uint32_t(DType::q8_0);
}

// Converts a tensor of `rows` rows of `cols` elements row by row through f32.
std::vector<uint8_t> convert(const gguf::TensorInfo& t, DType to) {
  const DType from = DType(t.type);
  const size_t cols = t.ne[0];
  const size_t rows = t.n_elements / cols;
  const size_t in_row = quant::row_bytes(from, cols);
  const size_t out_row = quant::row_bytes(to, cols);
  std::vector<uint8_t> out(rows * out_row);
  std::vector<float> buf(cols);  // [cols] one row in f32
  for (size_t r = 0; r < rows; ++r) {
    quant::to_f32(from, t.data + r * in_row, buf.data(), cols);
    quant::from_f32(to, buf.data(), out.data() + r * out_row, cols);
  }
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
  DType to;
  if (!quant::parse_dtype(o.type_name, &to))
    throw std::runtime_error("quantize: unknown type '" + o.type_name +
                             "' (expected q8_0, f16, bf16 or f32)");
  if (same_file(o.in_path, o.out_path))
    throw std::runtime_error("quantize: output '" + o.out_path +
                             "' is the input file; write to a different path");

  std::unique_ptr<gguf::File> in = gguf::File::open(o.in_path);

  gguf::Writer w;
  w.copy_metadata(*in);
  w.set_u32("general.file_type", llama_ftype(to));

  std::vector<std::vector<uint8_t>> converted;  // owns new tensor data until write()
  converted.reserve(in->tensors().size());
  size_t n_converted = 0, n_unchanged = 0, n_kept = 0;
  uint64_t bytes_before = 0, bytes_after = 0;
  for (const gguf::TensorInfo& t : in->tensors()) {
    bytes_before += t.size_bytes;
    std::vector<uint64_t> ne(t.ne, t.ne + t.n_dims);
    DType target = to;
    const char* why_kept = nullptr;
    if (!is_float_type(t.type)) why_kept = "not a floating-point tensor";
    else if (t.n_dims == 1) target = DType::f32;  // norms stay F32
    else if (t.n_dims != 2) why_kept = "not a 2-D weight matrix";
    else if (t.ne[0] % quant::block_elems(to) != 0) why_kept = "ne[0] is not a multiple of 32";

    if (why_kept != nullptr || DType(t.type) == target) {
      if (why_kept != nullptr) {
        std::fprintf(stderr, "quantize: note: keeping '%s' as %s (ne[0] = %llu): %s\n",
                     t.name.c_str(), gguf::tensor_type_name(t.type),
                     static_cast<unsigned long long>(t.ne[0]), why_kept);
        ++n_kept;
      } else {
        ++n_unchanged;
      }
      bytes_after += t.size_bytes;
      w.add_tensor(t.name, t.type, ne, t.data, t.size_bytes);
      continue;
    }
    converted.push_back(convert(t, target));
    ++n_converted;
    bytes_after += converted.back().size();
    w.add_tensor(t.name, uint32_t(target), ne, converted.back().data(), converted.back().size());
  }
  w.write(o.out_path);

  const auto out_size = std::filesystem::file_size(o.out_path);
  std::fprintf(stderr,
               "quantize: %s -> %s (%s, general.file_type %u)\n"
               "quantize: %zu tensors converted, %zu already in their target type, %zu kept "
               "(see notes)\n"
               "quantize: tensor data %.3f MiB -> %.3f MiB (%.1f%%), file %.3f MiB -> %.3f MiB\n",
               o.in_path.c_str(), o.out_path.c_str(), quant::dtype_name(to), llama_ftype(to),
               n_converted, n_unchanged, n_kept, bytes_before / 1048576.0, bytes_after / 1048576.0,
               bytes_before ? 100.0 * double(bytes_after) / double(bytes_before) : 100.0,
               in->bytes().size() / 1048576.0, double(out_size) / 1048576.0);
  return 0;
}

}  // namespace

Handler register_quantize(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  CLI::App* sub = app.add_subcommand(
      "quantize", "Convert a GGUF model's 2-D weight matrices to q8_0, f16, bf16 or f32");
  sub->add_option("input", o->in_path, "input model (.gguf)")->required();
  sub->add_option("output", o->out_path, "output model (.gguf), written atomically")->required();
  sub->add_option("type", o->type_name, "target weight type: q8_0 | f16 | bf16 | f32")
      ->required();
  return [o] { return run_quantize(*o); };
}

}  // namespace defkv::cli
