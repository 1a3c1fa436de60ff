// Shared helpers of the tokenizer sources (runtime/text/tokenizer.cpp,
// spm.cpp, bpe.cpp).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace defkv::text::detail {

// GGUF tokenizer.ggml.token_type values (llama.cpp llama_token_type).
enum : int32_t {
  kTypeUndefined = 0,
  kTypeNormal = 1,
  kTypeUnknown = 2,
  kTypeControl = 3,
  kTypeUserDefined = 4,
  kTypeUnused = 5,
  kTypeByte = 6,
};

[[noreturn]] inline void fail(const std::string& msg) {
  throw std::runtime_error("tokenizer: " + msg);
}

}  // namespace defkv::text::detail
