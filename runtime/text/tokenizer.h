// SentencePiece-style (GGUF tokenizer.ggml.model = "llama") tokenizer:
// score-ordered BPE merges over the vocabulary, byte fallback <0xNN>,
// BOS/EOS, add_bos. Matches llama.cpp's llm_tokenizer_spm.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace defkv::gguf { class File; }

namespace defkv::text {

using Token = int32_t;

class Tokenizer {
 public:
  // Reads tokenizer.ggml.* from the GGUF. Throws std::runtime_error with a
  // clear message when the model type is not "llama" or keys are missing.
  static std::unique_ptr<Tokenizer> from_gguf(const gguf::File& f);

  // add_special: prepend BOS when the model says add_bos (default true).
  // Like llama.cpp, a leading space is added to the text ("▁" prefix).
  std::vector<Token> encode(std::string_view text, bool add_special) const;
  // Raw bytes of one token's piece (▁ -> ' ', <0xNN> -> byte NN, control
  // tokens -> "").
  std::string piece(Token t) const;
  // Whole-sequence decode; drops the leading space that encode adds after
  // BOS (SentencePiece behaviour).
  std::string decode(const std::vector<Token>& tokens) const;

  Token bos() const { return bos_; }
  Token eos() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  size_t n_vocab() const { return tokens_.size(); }
  const std::string& token_text(Token t) const { return tokens_.at(size_t(t)); }

 private:
  Tokenizer() = default;
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  std::unordered_map<std::string, Token> index_;
  Token bos_ = 1, eos_ = 2, unk_ = 0;
  bool add_bos_ = true;
  bool add_space_prefix_ = true;
  Token byte_tokens_[256] = {};
};

// Streams detokenised text: feeds token pieces and returns only complete
// UTF-8 characters, holding back a partial multi-byte sequence until the
// next token completes it (invalid sequences are flushed as U+FFFD).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(&tok) {}
  std::string push(Token t);
  std::string flush();
 private:
  const Tokenizer* tok_;
  std::string pending_;
  bool first_ = true;
};

}  // namespace defkv::text
