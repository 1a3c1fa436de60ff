// GGUF v2/v3 reader. Every count, length and offset read from the file is
// checked against the bytes that remain before it is used (for allocation,
// looping or pointer arithmetic), so malformed input gives an Error, never a
// crash, a hang or an unbounded allocation.
#include "runtime/gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

namespace defkv::gguf {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;

[[noreturn]] void fail(const std::string& msg) { throw Error("gguf: " + msg); }

// Smallest encoding of one value of type t (for bounding counts).
uint64_t min_value_bytes(ValueType t) {
  switch (t) {
    case ValueType::u8: case ValueType::i8: case ValueType::boolean: return 1;
    case ValueType::u16: case ValueType::i16: return 2;
    case ValueType::u32: case ValueType::i32: case ValueType::f32: return 4;
    case ValueType::u64: case ValueType::i64: case ValueType::f64: return 8;
    case ValueType::string: return 8;   // u64 length
    case ValueType::array: return 12;   // u32 type + u64 count
  }
  return 1;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::f64); }

// Bounds-checked little-endian cursor over [base, base + size).
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size) : base_(base), size_(size) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail("file truncated: need " + std::to_string(n) + " bytes for " + what + " at offset " +
           std::to_string(pos_) + ", only " + std::to_string(remaining()) + " left (file size " +
           std::to_string(size_) + ")");
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    uint64_t len = read<uint64_t>(what);
    if (len > remaining())
      fail(std::string(what) + " length " + std::to_string(len) + " at offset " +
           std::to_string(pos_ - 8) + " runs past the end of the file (" +
           std::to_string(remaining()) + " bytes left)");
    std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }
  // Checks that `count` items of at least `min_bytes` each can fit in what
  // is left, before anything is reserved for them.
  void check_count(uint64_t count, uint64_t min_bytes, const std::string& what) const {
    if (min_bytes != 0 && count > remaining() / min_bytes)
      fail(what + " " + std::to_string(count) + " cannot fit in the " +
           std::to_string(remaining()) + " bytes left in the file (offset " +
           std::to_string(pos_) + ")");
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
};

Array read_array(Cursor& c, const std::string& key, int depth);

Value read_value(Cursor& c, ValueType t, const std::string& key, int depth) {
  Value v;
  v.type = t;
  switch (t) {
    case ValueType::u8: v.v = uint64_t{c.read<uint8_t>("u8 value")}; break;
    case ValueType::i8: v.v = int64_t{c.read<int8_t>("i8 value")}; break;
    case ValueType::u16: v.v = uint64_t{c.read<uint16_t>("u16 value")}; break;
    case ValueType::i16: v.v = int64_t{c.read<int16_t>("i16 value")}; break;
    case ValueType::u32: v.v = uint64_t{c.read<uint32_t>("u32 value")}; break;
    case ValueType::i32: v.v = int64_t{c.read<int32_t>("i32 value")}; break;
    case ValueType::u64: v.v = uint64_t{c.read<uint64_t>("u64 value")}; break;
    case ValueType::i64: v.v = int64_t{c.read<int64_t>("i64 value")}; break;
    case ValueType::f32: v.v = double{c.read<float>("f32 value")}; break;
    case ValueType::f64: v.v = c.read<double>("f64 value"); break;
    case ValueType::boolean: {
      uint8_t b = c.read<uint8_t>("bool value");
      if (b > 1) fail("key '" + key + "': bool value " + std::to_string(b) + " is not 0 or 1");
      v.v = b != 0;
      break;
    }
    case ValueType::string: v.v = c.read_string("string value"); break;
    case ValueType::array: v.v = read_array(c, key, depth); break;
  }
  return v;
}

Array read_array(Cursor& c, const std::string& key, int depth) {
  if (depth >= kMaxArrayDepth)
    fail("key '" + key + "': arrays nested deeper than " + std::to_string(kMaxArrayDepth) +
         " levels");
  Array a;
  uint32_t et = c.read<uint32_t>("array element type");
  if (!valid_value_type(et))
    fail("key '" + key + "': array has invalid element type " + std::to_string(et));
  a.elem_type = static_cast<ValueType>(et);
  uint64_t n = c.read<uint64_t>("array length");
  c.check_count(n, min_value_bytes(a.elem_type), "key '" + key + "': array length");
  switch (a.elem_type) {
    case ValueType::string:
      a.strings.reserve(n);
      for (uint64_t i = 0; i < n; ++i) a.strings.push_back(c.read_string("array string"));
      break;
    case ValueType::array:
      a.arrays.reserve(n);
      for (uint64_t i = 0; i < n; ++i) a.arrays.push_back(read_array(c, key, depth + 1));
      break;
    case ValueType::f32:
      a.floats.reserve(n);
      for (uint64_t i = 0; i < n; ++i) a.floats.push_back(c.read<float>("array f32"));
      break;
    case ValueType::f64:
      a.floats.reserve(n);
      for (uint64_t i = 0; i < n; ++i) a.floats.push_back(c.read<double>("array f64"));
      break;
    default: {
      a.ints.reserve(n);
      for (uint64_t i = 0; i < n; ++i) {
        Value e = read_value(c, a.elem_type, key, depth + 1);
        if (auto* u = std::get_if<uint64_t>(&e.v)) a.ints.push_back(static_cast<int64_t>(*u));
        else if (auto* s = std::get_if<int64_t>(&e.v)) a.ints.push_back(*s);
        else a.ints.push_back(std::get<bool>(e.v) ? 1 : 0);
      }
      break;
    }
  }
  return a;
}

std::string describe(const Value& v) {
  if (v.type == ValueType::array) {
    const Array& a = std::get<Array>(v.v);
    return std::string("array of ") + value_type_name(a.elem_type);
  }
  return value_type_name(v.type);
}

}  // namespace

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::u8: return "u8";
    case ValueType::i8: return "i8";
    case ValueType::u16: return "u16";
    case ValueType::i16: return "i16";
    case ValueType::u32: return "u32";
    case ValueType::i32: return "i32";
    case ValueType::f32: return "f32";
    case ValueType::boolean: return "bool";
    case ValueType::string: return "string";
    case ValueType::array: return "array";
    case ValueType::u64: return "u64";
    case ValueType::i64: return "i64";
    case ValueType::f64: return "f64";
  }
  return "invalid";
}

const char* tensor_type_name(uint32_t t) {
  static const char* const names[] = {
      "f32",     "f16",      "q4_0",     "q4_1",     "q4_2",     "q4_3",    "q5_0",
      "q5_1",    "q8_0",     "q8_1",     "q2_K",     "q3_K",     "q4_K",    "q5_K",
      "q6_K",    "q8_K",     "iq2_xxs",  "iq2_xs",   "iq3_xxs",  "iq1_s",   "iq4_nl",
      "iq3_s",   "iq2_s",    "iq4_xs",   "i8",       "i16",      "i32",     "i64",
      "f64",     "iq1_m",    "bf16",     "q4_0_4_4", "q4_0_4_8", "q4_0_8_8", "tq1_0",
      "tq2_0",   "iq4_nl_4_4", "iq4_nl_4_8", "iq4_nl_8_8", "mxfp4",
  };
  if (t < sizeof(names) / sizeof(names[0])) return names[t];
  // Unknown ids: a per-thread buffer keeps the pointer valid for the caller.
  thread_local std::string buf;
  buf = "type " + std::to_string(t);
  return buf.c_str();
}

uint64_t tensor_bytes(uint32_t type, const uint64_t ne[4], const std::string& name) {
  uint64_t n = 1;
  for (int i = 0; i < 4; ++i) {
    if (__builtin_mul_overflow(n, ne[i], &n) ||
        n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("tensor '" + name + "': element count overflows (dims " + std::to_string(ne[0]) +
           " x " + std::to_string(ne[1]) + " x " + std::to_string(ne[2]) + " x " +
           std::to_string(ne[3]) + ")");
  }
  // ggml block types: {type id, values per block, bytes per block}
  struct BlockType {
    TensorType type;
    uint64_t elems, bytes;
  };
  static constexpr BlockType kBlockTypes[] = {
      {TensorType::q4_0, 32, 18},  {TensorType::q4_1, 32, 20},  {TensorType::q5_0, 32, 22},
      {TensorType::q5_1, 32, 24},  {TensorType::q8_0, 32, 34},  {TensorType::q4_K, 256, 144},
      {TensorType::q5_K, 256, 176}, {TensorType::q6_K, 256, 210},
  };
  for (const BlockType& b : kBlockTypes) {
    if (type != static_cast<uint32_t>(b.type)) continue;
    if (ne[0] % b.elems != 0)
      fail("tensor '" + name + "' has type " + tensor_type_name(type) + " but ne[0] = " +
           std::to_string(ne[0]) + " is not a multiple of the block size " + std::to_string(b.elems));
    return n / b.elems * b.bytes;  // bytes / elems <= 34 / 32: no overflow for n <= INT64_MAX
  }
  uint64_t elem_bytes = 0;
  switch (type) {
    case static_cast<uint32_t>(TensorType::f32): elem_bytes = 4; break;
    case static_cast<uint32_t>(TensorType::i32): elem_bytes = 4; break;
    case static_cast<uint32_t>(TensorType::f16): elem_bytes = 2; break;
    case static_cast<uint32_t>(TensorType::bf16): elem_bytes = 2; break;
    default:
      fail("tensor '" + name + "' has unsupported type " + tensor_type_name(type) + " (" +
           std::to_string(type) + "); supported: f32, f16, bf16, i32, q4_0, q4_1, q5_0, q5_1, "
           "q8_0, q4_K, q5_K, q6_K");
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(n, elem_bytes, &bytes))
    fail("tensor '" + name + "': byte size overflows");
  return bytes;
}

size_t Array::size() const {
  switch (elem_type) {
    case ValueType::string: return strings.size();
    case ValueType::array: return arrays.size();
    case ValueType::f32: case ValueType::f64: return floats.size();
    default: return ints.size();
  }
}

std::unique_ptr<File> File::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail("cannot stat '" + path + "': " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("'" + path + "' is not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    fail("'" + path + "' is empty (not a GGUF file)");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  if (m == MAP_FAILED) fail("cannot mmap '" + path + "': " + std::strerror(e));

  std::unique_ptr<File> f(new File());
  f->path_ = path;
  f->mapping_ = m;
  f->base_ = static_cast<const uint8_t*>(m);
  f->size_ = size;
  try {
    f->parse();
  } catch (const Error& err) {
    // Name the file: "gguf: <path>: <problem>".
    std::string msg = err.what();
    if (msg.rfind("gguf: ", 0) == 0) msg = msg.substr(6);
    throw Error("gguf: " + path + ": " + msg);
  }
  return f;
}

std::unique_ptr<File> File::from_buffer(const void* data, size_t size) {
  if (data == nullptr && size != 0) fail("from_buffer: null data");
  std::unique_ptr<File> f(new File());
  f->path_ = "<buffer>";
  f->base_ = static_cast<const uint8_t*>(data);
  f->size_ = size;
  f->parse();
  return f;
}

File::~File() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

void File::parse() {
  Cursor c(base_, size_);
  uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) {
    char m[5] = {0, 0, 0, 0, 0};
    std::memcpy(m, &magic, 4);
    for (char& ch : m)
      if (ch != 0 && (ch < 32 || ch > 126)) ch = '?';
    fail(std::string("bad magic '") + m + "' (expected 'GGUF'); not a GGUF file");
  }
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    std::string hint = version_ == 1 ? " (GGUF v1 uses 32-bit counts; re-convert the model)"
                       : (version_ & 0xFFFF) == 0 ? " (big-endian file?)"
                                                  : "";
    fail("unsupported version " + std::to_string(version_) + "; only v2 and v3 are supported" +
         hint);
  }
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");

  // Each key/value needs at least a key length (8), a type (4) and one byte.
  c.check_count(n_kv, 8 + 4 + 1, "metadata count");
  kv_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("metadata key");
    uint32_t t = c.read<uint32_t>("metadata value type");
    if (!valid_value_type(t))
      fail("key '" + key + "' has invalid value type " + std::to_string(t));
    Value v = read_value(c, static_cast<ValueType>(t), key, 0);
    if (kv_index_.count(key) != 0) fail("duplicate key '" + key + "'");
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  alignment_ = 32;
  if (const Value* a = find("general.alignment")) {
    const uint64_t* u = std::get_if<uint64_t>(&a->v);
    if (u == nullptr)
      fail("key 'general.alignment' has type " + describe(*a) + ", expected an unsigned integer");
    if (*u == 0 || (*u & (*u - 1)) != 0)
      fail("general.alignment " + std::to_string(*u) + " is not a non-zero power of two");
    alignment_ = *u;
  }

  // Each tensor info needs a name length (8), n_dims (4), one dim (8), type
  // (4) and offset (8).
  c.check_count(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor count");
  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo ti;
    ti.name = c.read_string("tensor name");
    ti.n_dims = c.read<uint32_t>("tensor n_dims");
    if (ti.n_dims == 0 || ti.n_dims > kMaxDims)
      fail("tensor '" + ti.name + "' has n_dims " + std::to_string(ti.n_dims) +
           " (must be 1.." + std::to_string(kMaxDims) + ")");
    for (uint32_t d = 0; d < ti.n_dims; ++d) {
      ti.ne[d] = c.read<uint64_t>("tensor dimension");
      if (ti.ne[d] == 0)
        fail("tensor '" + ti.name + "' has dimension " + std::to_string(d) + " of size 0");
    }
    ti.type = c.read<uint32_t>("tensor type");
    ti.offset = c.read<uint64_t>("tensor offset");
    ti.size_bytes = tensor_bytes(ti.type, ti.ne, ti.name);
    ti.n_elements = ti.ne[0] * ti.ne[1] * ti.ne[2] * ti.ne[3];  // checked in tensor_bytes
    if (ti.offset % alignment_ != 0)
      fail("tensor '" + ti.name + "' offset " + std::to_string(ti.offset) +
           " is not a multiple of the alignment " + std::to_string(alignment_));
    if (tensor_index_.count(ti.name) != 0) fail("duplicate tensor name '" + ti.name + "'");
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  // Data section: starts at the next multiple of the alignment.
  uint64_t pos = c.pos();
  uint64_t data_start = (pos + alignment_ - 1) / alignment_ * alignment_;
  if (data_start < pos || (data_start > size_ && !tensors_.empty()))
    fail("data section would start at offset " + std::to_string(data_start) +
         ", past the end of the file (size " + std::to_string(size_) + ")");
  uint64_t data_size = data_start <= size_ ? size_ - data_start : 0;
  for (TensorInfo& ti : tensors_) {
    if (ti.offset > data_size || ti.size_bytes > data_size - ti.offset) {
      // Report the absolute file offset when it is representable.
      std::string where = ti.offset <= std::numeric_limits<uint64_t>::max() - data_start
                              ? std::to_string(data_start + ti.offset)
                              : "data+" + std::to_string(ti.offset);
      fail("tensor '" + ti.name + "' data [offset " + where + ", " +
           std::to_string(ti.size_bytes) + " bytes] lies outside the file (size " +
           std::to_string(size_) + ")");
    }
    ti.data = base_ + data_start + ti.offset;
  }
}

const Value* File::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {

std::string where(const std::string& path) {
  return path.empty() || path == "<buffer>" ? std::string() : " in " + path;
}

[[noreturn]] void wrong_type(std::string_view key, const Value& v, const char* expected) {
  fail("key '" + std::string(key) + "' has type " + describe(v) + ", expected " + expected);
}

}  // namespace

#define DEFKV_REQUIRE_KEY(key)                                                          \
  const Value* v = find(key);                                                           \
  if (v == nullptr) fail("missing required key '" + std::string(key) + "'" + where(path_))

uint64_t File::get_uint(std::string_view key) const {
  DEFKV_REQUIRE_KEY(key);
  if (auto* u = std::get_if<uint64_t>(&v->v)) return *u;
  if (auto* s = std::get_if<int64_t>(&v->v)) {
    if (*s < 0)
      fail("key '" + std::string(key) + "' is " + std::to_string(*s) +
           ", expected a non-negative integer");
    return static_cast<uint64_t>(*s);
  }
  wrong_type(key, *v, "an unsigned integer");
}

int64_t File::get_int(std::string_view key) const {
  DEFKV_REQUIRE_KEY(key);
  if (auto* s = std::get_if<int64_t>(&v->v)) return *s;
  if (auto* u = std::get_if<uint64_t>(&v->v)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("key '" + std::string(key) + "' value " + std::to_string(*u) +
           " does not fit in a signed 64-bit integer");
    return static_cast<int64_t>(*u);
  }
  wrong_type(key, *v, "an integer");
}

double File::get_float(std::string_view key) const {
  DEFKV_REQUIRE_KEY(key);
  if (auto* d = std::get_if<double>(&v->v)) return *d;
  if (auto* s = std::get_if<int64_t>(&v->v)) return static_cast<double>(*s);
  if (auto* u = std::get_if<uint64_t>(&v->v)) return static_cast<double>(*u);
  wrong_type(key, *v, "a number");
}

bool File::get_bool(std::string_view key) const {
  DEFKV_REQUIRE_KEY(key);
  if (auto* b = std::get_if<bool>(&v->v)) return *b;
  wrong_type(key, *v, "bool");
}

const std::string& File::get_string(std::string_view key) const {
  DEFKV_REQUIRE_KEY(key);
  if (auto* s = std::get_if<std::string>(&v->v)) return *s;
  wrong_type(key, *v, "string");
}

const Array& File::get_array(std::string_view key) const {
  DEFKV_REQUIRE_KEY(key);
  if (auto* a = std::get_if<Array>(&v->v)) return *a;
  wrong_type(key, *v, "array");
}

#undef DEFKV_REQUIRE_KEY

uint64_t File::get_uint_or(std::string_view key, uint64_t def) const {
  return find(key) == nullptr ? def : get_uint(key);
}

double File::get_float_or(std::string_view key, double def) const {
  return find(key) == nullptr ? def : get_float(key);
}

bool File::get_bool_or(std::string_view key, bool def) const {
  return find(key) == nullptr ? def : get_bool(key);
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
  const TensorInfo* t = find_tensor(name);
  if (t == nullptr) fail("missing required tensor '" + std::string(name) + "'" + where(path_));
  return *t;
}

}  // namespace defkv::gguf
