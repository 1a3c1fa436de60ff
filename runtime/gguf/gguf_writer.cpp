// GGUF v3 writer: metadata and tensors in insertion order, tensor data
// aligned to general.alignment (default 32) with every tensor padded to the
// alignment (as ggml writes it). write() is atomic: temp file + rename.
#include "runtime/gguf/gguf.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <utility>

namespace defkv::gguf {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("gguf: writer: " + msg); }

using Sink = std::function<void(const void*, size_t)>;

template <class T>
void put(const Sink& out, T v) {
  out(&v, sizeof(T));
}

void put_string(const Sink& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out(s.data(), s.size());
}

bool is_int_type(ValueType t) {
  switch (t) {
    case ValueType::u8: case ValueType::i8: case ValueType::u16: case ValueType::i16:
    case ValueType::u32: case ValueType::i32: case ValueType::u64: case ValueType::i64:
    case ValueType::boolean:
      return true;
    default:
      return false;
  }
}

// Range of an integer type, as [lo, hi] in the widened representation used
// by Array::ints (u64 stored bitwise, so any int64 is accepted).
void int_range(ValueType t, int64_t* lo, int64_t* hi) {
  switch (t) {
    case ValueType::u8: *lo = 0; *hi = 255; return;
    case ValueType::i8: *lo = -128; *hi = 127; return;
    case ValueType::u16: *lo = 0; *hi = 65535; return;
    case ValueType::i16: *lo = -32768; *hi = 32767; return;
    case ValueType::u32: *lo = 0; *hi = 4294967295LL; return;
    case ValueType::i32: *lo = -2147483648LL; *hi = 2147483647LL; return;
    case ValueType::boolean: *lo = 0; *hi = 1; return;
    default:
      *lo = std::numeric_limits<int64_t>::min();
      *hi = std::numeric_limits<int64_t>::max();
      return;
  }
}

void put_int(const Sink& out, ValueType t, int64_t v) {
  switch (t) {
    case ValueType::u8: case ValueType::boolean: put<uint8_t>(out, static_cast<uint8_t>(v)); break;
    case ValueType::i8: put<int8_t>(out, static_cast<int8_t>(v)); break;
    case ValueType::u16: put<uint16_t>(out, static_cast<uint16_t>(v)); break;
    case ValueType::i16: put<int16_t>(out, static_cast<int16_t>(v)); break;
    case ValueType::u32: put<uint32_t>(out, static_cast<uint32_t>(v)); break;
    case ValueType::i32: put<int32_t>(out, static_cast<int32_t>(v)); break;
    case ValueType::u64: put<uint64_t>(out, static_cast<uint64_t>(v)); break;
    case ValueType::i64: put<int64_t>(out, v); break;
    default: fail("internal: not an integer type");
  }
}

void check_array(const std::string& key, const Array& a, int depth) {
  if (static_cast<uint32_t>(a.elem_type) > static_cast<uint32_t>(ValueType::f64))
    fail("key '" + key + "': invalid array element type " +
         std::to_string(static_cast<uint32_t>(a.elem_type)));
  if (depth >= 8) fail("key '" + key + "': arrays nested deeper than 8 levels");
  const bool ints = is_int_type(a.elem_type);
  const bool floats = a.elem_type == ValueType::f32 || a.elem_type == ValueType::f64;
  const bool strings = a.elem_type == ValueType::string;
  const bool arrays = a.elem_type == ValueType::array;
  if ((!ints && !a.ints.empty()) || (!floats && !a.floats.empty()) ||
      (!strings && !a.strings.empty()) || (!arrays && !a.arrays.empty()))
    fail("key '" + key + "': array of " + value_type_name(a.elem_type) +
         " has elements stored in the wrong member");
  if (ints) {
    int64_t lo, hi;
    int_range(a.elem_type, &lo, &hi);
    for (int64_t v : a.ints)
      if (v < lo || v > hi)
        fail("key '" + key + "': array element " + std::to_string(v) + " does not fit in " +
             value_type_name(a.elem_type));
  }
  for (const Array& sub : a.arrays) check_array(key, sub, depth + 1);
}

void check_value(const std::string& key, const Value& v) {
  auto bad = [&] {
    fail("key '" + key + "' declared as " + value_type_name(v.type) +
         " holds a value of a different kind");
  };
  if (is_int_type(v.type) && v.type != ValueType::boolean) {
    int64_t lo, hi;
    int_range(v.type, &lo, &hi);
    if (auto* u = std::get_if<uint64_t>(&v.v)) {
      if (v.type == ValueType::u64) return;
      if (*u > static_cast<uint64_t>(hi)) bad();
    } else if (auto* s = std::get_if<int64_t>(&v.v)) {
      if (v.type == ValueType::u64 ? *s < 0 : (*s < lo || *s > hi)) bad();
    } else {
      bad();
    }
    return;
  }
  switch (v.type) {
    case ValueType::boolean: if (!std::holds_alternative<bool>(v.v)) bad(); return;
    case ValueType::f32: case ValueType::f64: if (!std::holds_alternative<double>(v.v)) bad(); return;
    case ValueType::string: if (!std::holds_alternative<std::string>(v.v)) bad(); return;
    case ValueType::array:
      if (!std::holds_alternative<Array>(v.v)) bad();
      check_array(key, std::get<Array>(v.v), 0);
      return;
    default:
      fail("key '" + key + "' has invalid value type " +
           std::to_string(static_cast<uint32_t>(v.type)));
  }
}

void put_array(const Sink& out, const Array& a) {
  put<uint32_t>(out, static_cast<uint32_t>(a.elem_type));
  put<uint64_t>(out, a.size());
  switch (a.elem_type) {
    case ValueType::string: for (const auto& s : a.strings) put_string(out, s); break;
    case ValueType::array: for (const auto& sub : a.arrays) put_array(out, sub); break;
    case ValueType::f32: for (double d : a.floats) put<float>(out, static_cast<float>(d)); break;
    case ValueType::f64: for (double d : a.floats) put<double>(out, d); break;
    default: for (int64_t v : a.ints) put_int(out, a.elem_type, v); break;
  }
}

void put_value(const Sink& out, const Value& v) {
  put<uint32_t>(out, static_cast<uint32_t>(v.type));
  switch (v.type) {
    case ValueType::boolean: put<uint8_t>(out, std::get<bool>(v.v) ? 1 : 0); break;
    case ValueType::f32: put<float>(out, static_cast<float>(std::get<double>(v.v))); break;
    case ValueType::f64: put<double>(out, std::get<double>(v.v)); break;
    case ValueType::string: put_string(out, std::get<std::string>(v.v)); break;
    case ValueType::array: put_array(out, std::get<Array>(v.v)); break;
    default: {
      int64_t i = std::holds_alternative<uint64_t>(v.v)
                      ? static_cast<int64_t>(std::get<uint64_t>(v.v))
                      : std::get<int64_t>(v.v);
      put_int(out, v.type, i);
      break;
    }
  }
}

}  // namespace

void Writer::set(std::string key, Value value) {
  check_value(key, value);
  for (auto& kv : kv_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  }
  kv_.emplace_back(std::move(key), std::move(value));
}

void Writer::set_u32(std::string key, uint32_t v) {
  set(std::move(key), Value{ValueType::u32, uint64_t{v}});
}

void Writer::set_f32(std::string key, float v) {
  set(std::move(key), Value{ValueType::f32, double{v}});
}

void Writer::set_string(std::string key, std::string v) {
  set(std::move(key), Value{ValueType::string, std::move(v)});
}

void Writer::copy_metadata(const File& f) {
  for (const auto& [k, v] : f.metadata()) set(k, v);
}

void Writer::add_tensor(std::string name, uint32_t ggml_type, std::vector<uint64_t> ne,
                        const void* data, uint64_t size_bytes) {
  if (ne.empty() || ne.size() > 4)
    fail("tensor '" + name + "' has " + std::to_string(ne.size()) + " dims (must be 1..4)");
  uint64_t dims[4] = {1, 1, 1, 1};
  for (size_t i = 0; i < ne.size(); ++i) {
    if (ne[i] == 0) fail("tensor '" + name + "' has dimension " + std::to_string(i) + " of size 0");
    dims[i] = ne[i];
  }
  uint64_t expect = tensor_bytes(ggml_type, dims, name);
  if (expect != size_bytes)
    fail("tensor '" + name + "' of type " + tensor_type_name(ggml_type) + " needs " +
         std::to_string(expect) + " bytes, got " + std::to_string(size_bytes));
  if (data == nullptr && size_bytes != 0) fail("tensor '" + name + "' has null data");
  for (const auto& t : tensors_)
    if (t.name == name) fail("duplicate tensor name '" + name + "'");
  tensors_.push_back(PendingTensor{std::move(name), ggml_type, std::move(ne), data, size_bytes});
}

namespace {

uint64_t writer_alignment(const std::vector<std::pair<std::string, Value>>& kv) {
  for (const auto& [k, v] : kv) {
    if (k != "general.alignment") continue;
    // The reader accepts an unsigned integer type only (the spec says u32).
    const bool unsigned_type = v.type == ValueType::u8 || v.type == ValueType::u16 ||
                               v.type == ValueType::u32 || v.type == ValueType::u64;
    uint64_t a = 0;
    if (auto* u = std::get_if<uint64_t>(&v.v)) a = *u;
    else if (auto* s = std::get_if<int64_t>(&v.v); s != nullptr && *s > 0) a = static_cast<uint64_t>(*s);
    if (!unsigned_type || a == 0 || (a & (a - 1)) != 0)
      fail("general.alignment must be a non-zero power of two of an unsigned integer type");
    return a;
  }
  return 32;
}

void put_zeros(const Sink& out, uint64_t n) {
  static const uint8_t zeros[64] = {};
  while (n > 0) {
    size_t k = n < sizeof(zeros) ? static_cast<size_t>(n) : sizeof(zeros);
    out(zeros, k);
    n -= k;
  }
}

uint64_t pad_to(uint64_t n, uint64_t align) { return (n + align - 1) / align * align; }

}  // namespace

// Streams the whole file through `out`.
static void serialize(const std::vector<std::pair<std::string, Value>>& kv,
                      const auto& tensors, const Sink& out) {
  const uint64_t align = writer_alignment(kv);
  uint64_t written = 0;
  Sink counted = [&](const void* p, size_t n) {
    out(p, n);
    written += n;
  };
  put<uint32_t>(counted, 0x46554747);  // "GGUF"
  put<uint32_t>(counted, 3);
  put<uint64_t>(counted, tensors.size());
  put<uint64_t>(counted, kv.size());
  for (const auto& [k, v] : kv) {
    put_string(counted, k);
    put_value(counted, v);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    put_string(counted, t.name);
    put<uint32_t>(counted, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) put<uint64_t>(counted, d);
    put<uint32_t>(counted, t.type);
    put<uint64_t>(counted, offset);
    offset += pad_to(t.size_bytes, align);
  }
  // A file without tensors has no data section and no padding (as ggml
  // writes vocabulary-only files).
  if (!tensors.empty()) put_zeros(counted, pad_to(written, align) - written);
  for (const auto& t : tensors) {
    counted(t.data, static_cast<size_t>(t.size_bytes));
    put_zeros(counted, pad_to(t.size_bytes, align) - t.size_bytes);
  }
}

std::vector<uint8_t> Writer::to_bytes() const {
  std::vector<uint8_t> buf;
  serialize(kv_, tensors_, [&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    buf.insert(buf.end(), b, b + n);
  });
  return buf;
}

void Writer::write(const std::string& path) const {
  std::string tmp = path + ".tmp-XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail("cannot create temporary file for '" + path + "': " + std::strerror(errno));
  ::fchmod(fd, 0644);
  FILE* fp = ::fdopen(fd, "wb");
  if (fp == nullptr) {
    int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("cannot open '" + tmp + "': " + std::strerror(e));
  }
  bool ok = true;
  int err = 0;
  try {
    serialize(kv_, tensors_, [&](const void* p, size_t n) {
      if (ok && n != 0 && std::fwrite(p, 1, n, fp) != n) {
        ok = false;
        err = errno;
      }
    });
  } catch (...) {
    std::fclose(fp);
    ::unlink(tmp.c_str());
    throw;
  }
  if (ok && std::fflush(fp) != 0) { ok = false; err = errno; }
  if (ok && ::fsync(::fileno(fp)) != 0) { ok = false; err = errno; }
  if (std::fclose(fp) != 0 && ok) { ok = false; err = errno; }
  if (!ok) {
    ::unlink(tmp.c_str());
    fail("error writing '" + path + "': " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(e));
  }
}

}  // namespace defkv::gguf
