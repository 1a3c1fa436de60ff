// GGUF (v2, v3) reader and writer. The reader memory-maps the file (or reads
// from a caller buffer), validates everything against the file size before
// use and never trusts a count or length from the file. Errors are thrown as
// gguf::Error with a message naming the problem (and the tensor / key).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace defkv::gguf {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class ValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
const char* value_type_name(ValueType t);

// ggml tensor type ids. The weight types quant/ reads (f32, f16, bf16, q8_0,
// q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K) and i32 (test vectors, e.g.
// eviction keep masks) are listed; others are recognised by name for error
// messages.
enum class TensorType : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q4_K = 12,
  q5_K = 13,
  q6_K = 14,
  i32 = 26,
  bf16 = 30,
};
const char* tensor_type_name(uint32_t ggml_type);  // "q4_K", "type 99", ...

struct Value;
struct Array {
  ValueType elem_type = ValueType::u8;
  // Exactly one of these is used, by elem_type: numbers widened, strings, or
  // nested arrays.
  std::vector<int64_t> ints;     // u8..i64, bool (u64 stored bitwise)
  std::vector<double> floats;    // f32, f64
  std::vector<std::string> strings;
  std::vector<Array> arrays;
  size_t size() const;
};

struct Value {
  ValueType type = ValueType::u8;
  std::variant<int64_t, uint64_t, double, bool, std::string, Array> v;
};

struct TensorInfo {
  std::string name;
  uint32_t type = 0;             // ggml type id
  uint32_t n_dims = 0;
  uint64_t ne[4] = {1, 1, 1, 1}; // ne[0] innermost (ggml order)
  uint64_t offset = 0;           // relative to the data section
  uint64_t n_elements = 0;
  uint64_t size_bytes = 0;
  const uint8_t* data = nullptr; // points into the mapped file
};

class File {
 public:
  // Memory-map and parse a file. Throws Error.
  static std::unique_ptr<File> open(const std::string& path);
  // Parse a caller-owned buffer (must outlive the File). Throws Error.
  static std::unique_ptr<File> from_buffer(const void* data, size_t size);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;
  // Typed getters: throw Error("missing required key ...") / ("key ... has
  // type X, expected Y") when absent or of the wrong type. Integers of any
  // width convert when the value fits.
  uint64_t get_uint(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  const Array& get_array(std::string_view key) const;
  // Optional variants return the default when the key is absent (still throw
  // on a wrong type).
  uint64_t get_uint_or(std::string_view key, uint64_t def) const;
  double get_float_or(std::string_view key, double def) const;
  bool get_bool_or(std::string_view key, bool def) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  // Throws Error("missing required tensor ...").
  const TensorInfo& tensor(std::string_view name) const;

  // Whole mapped byte range (for state hashing etc.).
  std::span<const uint8_t> bytes() const { return {base_, size_}; }

 private:
  File() = default;
  void parse();
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // non-null when mmapped by us
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Writes GGUF v3. Metadata and tensors are written in insertion order; tensor
// data is aligned to general.alignment (default 32).
class Writer {
 public:
  void set(std::string key, Value value);  // replaces an existing key
  void set_u32(std::string key, uint32_t v);
  void set_f32(std::string key, float v);
  void set_string(std::string key, std::string v);
  // Copies all metadata of a parsed file.
  void copy_metadata(const File& f);
  // dims in ggml order (ne[0] innermost); data is copied at write time from
  // the pointer given here, which must stay valid until write().
  void add_tensor(std::string name, uint32_t ggml_type, std::vector<uint64_t> ne,
                  const void* data, uint64_t size_bytes);
  // Writes atomically (temp file + rename). Throws Error.
  void write(const std::string& path) const;
  // Serialises into memory.
  std::vector<uint8_t> to_bytes() const;

 private:
  struct PendingTensor {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> ne;
    const void* data;
    uint64_t size_bytes;
  };
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<PendingTensor> tensors_;
};

// Byte size of a tensor of ggml type `type` with `n_elements` (throws for
// unsupported types or when ne[0] is not a multiple of the block size).
uint64_t tensor_bytes(uint32_t type, const uint64_t ne[4], const std::string& name);

}  // namespace defkv::gguf
