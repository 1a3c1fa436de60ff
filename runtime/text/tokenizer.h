// Tokenizers of GGUF vocabularies, matched to llama.cpp:
//  - tokenizer.ggml.model = "llama": SentencePiece (score-ordered merges over
//    the vocabulary, byte fallback <0xNN>, the "▁" space prefix);
//  - tokenizer.ggml.model = "gpt2": byte-level BPE (bytes mapped to printable
//    code points, pre-tokenization chosen by tokenizer.ggml.pre, merges
//    applied by rank from tokenizer.ggml.merges).
// Both cut special-token text out of the input first (user-defined tokens
// always, control tokens when asked), add BOS/EOS as the GGUF says, and know
// the end-of-generation tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/text/pretokenize.h"

namespace defkv::gguf { class File; }

namespace defkv::text {

using Token = int32_t;

enum class VocabKind { spm, bpe };

class Tokenizer {
 public:
  // Reads tokenizer.ggml.* from the GGUF. Throws std::runtime_error with a
  // message naming the key when the model type or tokenizer.ggml.pre is not
  // supported or the vocabulary is malformed (missing merges, a token type
  // out of range, a merge naming an unknown token, an id outside the vocab).
  static std::unique_ptr<Tokenizer> from_gguf(const gguf::File& f);

  // add_special: BOS in front when the vocabulary says add_bos, EOS at the
  // end when it says add_eos. SPM adds a leading space to each text fragment
  // ("▁" prefix), as llama.cpp does.
  std::vector<Token> encode(std::string_view text, bool add_special) const;
  // As above; parse_special also cuts control-token texts ("<s>",
  // "<|eot_id|>") out of the text (llama.cpp parse_special). User-defined
  // tokens are always cut out, like llama.cpp.
  std::vector<Token> encode(std::string_view text, bool add_special,
                            bool parse_special) const;
  // Raw bytes of one token's piece: SPM ▁ -> ' ' and <0xNN> -> byte NN, BPE
  // code points mapped back to bytes, user-defined tokens as their text;
  // control, unknown and unused tokens -> "".
  std::string piece(Token t) const;
  // special: control and unknown tokens give their text
  // (llama_token_to_piece with special = true).
  std::string piece(Token t, bool special) const;
  // Text of a sequence for display: control tokens dropped; SPM drops the
  // space encode() put before the first piece of text.
  std::string decode(const std::vector<Token>& tokens) const;
  // llama.cpp's llama_detokenize(remove_special = false, unparse_special =
  // special): only the very first token loses the SPM prefix space, and BPE
  // vocabularies with clean_spaces (llama-bpe, gpt-2, ...) drop the space
  // before . , ? ! and before 's 'm 're 've, and turn " ' " into "'".
  std::string decode(const std::vector<Token>& tokens, bool special) const;

  // End of generation: eos, eot, eom, FIM pad/repo/file-separator tokens, and
  // every token whose text llama.cpp treats as one (<|eot_id|>, <|im_end|>,
  // <|end|>, <end_of_turn>, <|endoftext|>, <|eom_id|>, <EOT>).
  bool is_eog(Token t) const { return t >= 0 && size_t(t) < eog_.size() && eog_[size_t(t)]; }

  VocabKind kind() const { return kind_; }
  // tokenizer.ggml.pre as given ("" for SPM).
  const std::string& pre() const { return pre_name_; }
  Token bos() const { return bos_; }  // -1: none
  Token eos() const { return eos_; }  // -1: none
  // tokenizer.ggml.eot_token_id, else the first of <|eot_id|>, <|im_end|>,
  // <|end|>, <end_of_turn>, <|endoftext|>, <EOT>, <｜end▁of▁sentence｜> in the
  // vocabulary; -1 when none.
  Token eot() const { return eot_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  Token unk() const { return unk_; }
  // GGUF tokenizer.ggml.token_type of t (1 normal, 2 unknown, 3 control,
  // 4 user-defined, 5 unused, 6 byte), after llama.cpp's corrections (a
  // token whose text marks it as end-of-turn or FIM is control).
  int32_t token_type(Token t) const { return types_.at(size_t(t)); }
  float score(Token t) const { return scores_.at(size_t(t)); }
  size_t n_vocab() const { return tokens_.size(); }
  size_t n_merges() const { return merges_.size(); }
  const std::string& token_text(Token t) const { return tokens_.at(size_t(t)); }

 private:
  Tokenizer() = default;
  void load_common(const gguf::File& f);
  void load_bpe(const gguf::File& f);
  void load_special(const gguf::File& f);
  void encode_spm(std::string_view text, std::vector<Token>& out) const;
  void encode_bpe(std::string_view text, std::vector<Token>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<Token>& out) const;
  std::string bpe_token_bytes(const std::string& text) const;
  void clean_spaces(std::string& s) const;

  VocabKind kind_ = VocabKind::spm;
  std::string pre_name_;
  PreConfig pre_{};
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  std::vector<std::string> pieces_;        // [n_vocab] decoded bytes per token
  std::unordered_map<std::string, Token> index_;
  std::vector<Token> special_;             // control/user-defined/unknown ids, longest text first
  std::vector<uint8_t> rstrip_;            // [n_vocab] whitespace after it is dropped (Phi-3)
  std::vector<uint8_t> eog_;               // [n_vocab]
  Token bos_ = 1, eos_ = 2, unk_ = 0, eot_ = -1;
  bool add_bos_ = true;
  bool add_eos_ = false;
  bool add_space_prefix_ = true;
  Token byte_tokens_[256] = {};            // SPM byte fallback; BPE: token of each mapped byte (-1: none)

  // BPE: (left id, right id) -> rank and the merged token.
  struct Merge {
    int32_t rank;
    Token result;
  };
  std::unordered_map<uint64_t, Merge> merges_;
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
