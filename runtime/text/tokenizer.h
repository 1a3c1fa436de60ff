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
  // As above; parse_special also matches control-token texts ("<s>", "</s>")
  // inside the text (llama.cpp parse_special). User-defined tokens are always
  // matched, like llama.cpp.
  std::vector<Token> encode(std::string_view text, bool add_special,
                            bool parse_special) const;
  // Raw bytes of one token's piece (▁ -> ' ', <0xNN> -> byte NN, control
  // tokens -> "").
  std::string piece(Token t) const;
  // Whole-sequence decode; drops the leading space that encode adds after
  // BOS (SentencePiece behaviour).
  std::string decode(const std::vector<Token>& tokens) const;

  Token bos() const { return bos_; }
  Token eos() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  Token unk() const { return unk_; }
  // GGUF tokenizer.ggml.token_type of t (1 normal, 2 unknown, 3 control,
  // 4 user-defined, 5 unused, 6 byte).
  int32_t token_type(Token t) const { return types_.at(size_t(t)); }
  float score(Token t) const { return scores_.at(size_t(t)); }
  size_t n_vocab() const { return tokens_.size(); }
  const std::string& token_text(Token t) const { return tokens_.at(size_t(t)); }

 private:
  Tokenizer() = default;
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  std::vector<std::string> pieces_;        // [n_vocab] decoded bytes per token
  std::unordered_map<std::string, Token> index_;
  std::vector<Token> special_;             // control/user-defined/unknown ids, longest text first
  Token bos_ = 1, eos_ = 2, unk_ = 0;
  bool add_bos_ = true;
  bool add_eos_ = false;
  bool add_space_prefix_ = true;
  Token byte_tokens_[256] = {};

  void encode_spm(std::string_view text, std::vector<Token>& out) const;
};

// Streams detokenised text: feeds token pieces and returns only complete
// UTF-8 characters, holding back a partial multi-byte sequence until the
// next token completes it (invalid sequences are flushed as U+FFFD).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(&tok) {}
  // strip_leading_space=false: the tokens continue earlier text (e.g. the
  // generated continuation of a prompt), so the first piece keeps its space.
  // The one-argument form strips it like decode() when add_space_prefix.
  StreamDecoder(const Tokenizer& tok, bool strip_leading_space)
      : tok_(&tok), first_(strip_leading_space) {}
  // Returns the newly completed text: always valid UTF-8.
  std::string push(Token t);
  // Emits what is held back (an incomplete sequence becomes U+FFFD).
  std::string flush();
 private:
  const Tokenizer* tok_;
  std::string pending_;
  bool first_ = true;
};

}  // namespace defkv::text
