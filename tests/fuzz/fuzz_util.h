// Helpers shared by the libFuzzer targets in tests/fuzz (built only with
// -Dfuzz=true, see tests/fuzz.sh).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace defkv::fuzz {

[[noreturn]] inline void die(const char* target, const std::string& what) {
  std::fprintf(stderr, "%s: property violated: %s\n", target, what.c_str());
  std::abort();
}

// ../shared as the tests see it (DEFKV_SHARED), else the worktree's sibling.
inline std::string shared_dir() {
  const char* s = std::getenv("DEFKV_SHARED");
  return s ? s : "../shared";
}

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fuzz: cannot read %s (set DEFKV_SHARED)\n", path.c_str());
    std::abort();
  }
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_file(const std::string& path, const void* data, size_t n) {
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, n, f);
    std::fclose(f);
  }
}

// Seeds go to $DEFKV_FUZZ_WRITE_SEEDS/<name> when that is set and not empty.
inline bool writing_seeds() {
  const char* dir = std::getenv("DEFKV_FUZZ_WRITE_SEEDS");
  return dir && *dir;
}
inline void write_seed(const std::string& name, std::string_view bytes) {
  const char* dir = std::getenv("DEFKV_FUZZ_WRITE_SEEDS");
  if (dir && *dir)
    write_file(std::string(dir) + "/" + name, bytes.data(), bytes.size());
}

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, <= U+10FFFF.
// Written here rather than taken from runtime/text so that it is an
// independent oracle.
inline bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// Splits llama.cpp's tokenizer test inputs (.inp files) into cases.
inline std::vector<std::string> split_vocab_cases(const std::vector<uint8_t>& file) {
  const std::string s(file.begin(), file.end());
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t e = s.find(sep, pos);
    if (e == std::string::npos) break;
    out.push_back(s.substr(pos, e - pos));
    pos = e + sep.size();
  }
  return out;
}

}  // namespace defkv::fuzz
