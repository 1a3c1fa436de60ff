// Loading a GGUF vocabulary, cutting special tokens out of the text, and
// pieces / decoding; the per-model encoders are in spm.cpp and bpe.cpp.
// Follows llama.cpp's llama_vocab (load, tokenizer_st_partition,
// token_to_piece, detokenize).
#include <algorithm>
#include <cctype>
#include <cstdio>

#include "runtime/gguf/gguf.h"
#include "runtime/text/tokenizer.h"
#include "runtime/text/vocab_types.h"

namespace defkv::text {

using namespace detail;

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// "<0xNN>" -> NN, or -1.
int parse_byte_token(const std::string& text) {
  if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    char c = text[size_t(i)];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

// isspace() in the C locale, as llama.cpp's rstrip uses it.
bool c_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const gguf::File& f) {
  const std::string& model = f.get_string("tokenizer.ggml.model");
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  if (model == "llama") {
    t->kind_ = VocabKind::spm;
  } else if (model == "gpt2") {
    t->kind_ = VocabKind::bpe;
    if (f.find("tokenizer.ggml.pre") == nullptr) {
      fail("tokenizer.ggml.pre is missing: a gpt2 (byte-level BPE) vocabulary needs its pre-tokenizer name");
    }
    t->pre_name_ = f.get_string("tokenizer.ggml.pre");
    t->pre_ = pre_config(t->pre_name_);
  } else {
    fail("unsupported tokenizer model tokenizer.ggml.model = '" + model +
         "' (supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE))");
  }
  t->load_common(f);
  if (t->kind_ == VocabKind::bpe) t->load_bpe(f);
  t->load_special(f);
  return t;
}

void Tokenizer::load_common(const gguf::File& f) {
  const gguf::Array& tokens = f.get_array("tokenizer.ggml.tokens");
  if (tokens.elem_type != gguf::ValueType::string) {
    fail("tokenizer.ggml.tokens is not an array of strings");
  }
  const size_t n_vocab = tokens.strings.size();
  if (n_vocab == 0) fail("tokenizer.ggml.tokens is empty");
  if (n_vocab > size_t(INT32_MAX)) fail("vocabulary too large");
  tokens_ = tokens.strings;
  // An empty token text could never be matched; llama.cpp renames it.
  for (size_t i = 0; i < n_vocab; ++i)
    if (tokens_[i].empty()) tokens_[i] = "[EMPTY_" + std::to_string(i) + "]";

  scores_.assign(n_vocab, 0.0f);
  if (f.find("tokenizer.ggml.scores") != nullptr) {
    const gguf::Array& scores = f.get_array("tokenizer.ggml.scores");
    if (scores.size() != n_vocab) {
      fail("tokenizer.ggml.scores has " + std::to_string(scores.size()) +
           " entries, expected " + std::to_string(n_vocab));
    }
    if (!scores.floats.empty()) {
      for (size_t i = 0; i < n_vocab; ++i) scores_[i] = float(scores.floats[i]);
    } else if (!scores.ints.empty()) {
      for (size_t i = 0; i < n_vocab; ++i) scores_[i] = float(scores.ints[i]);
    } else {
      fail("tokenizer.ggml.scores is not numeric");
    }
  }

  types_.assign(n_vocab, kTypeNormal);
  if (f.find("tokenizer.ggml.token_type") != nullptr) {
    const gguf::Array& types = f.get_array("tokenizer.ggml.token_type");
    if (types.size() != n_vocab || types.ints.size() != n_vocab) {
      fail("tokenizer.ggml.token_type has " + std::to_string(types.size()) +
           " entries (must be integers, one per token: " + std::to_string(n_vocab) + ")");
    }
    for (size_t i = 0; i < n_vocab; ++i) {
      const int64_t ty = types.ints[i];
      if (ty < kTypeUndefined || ty > kTypeByte) {
        fail("tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + std::to_string(ty) +
             " is out of range (token types are 0..6)");
      }
      types_[i] = int32_t(ty);
    }
  }

  // Text -> id; on duplicate texts the last id wins (as in llama.cpp).
  index_.reserve(n_vocab * 2);
  for (size_t i = 0; i < n_vocab; ++i) index_[tokens_[i]] = Token(i);
}

void Tokenizer::load_special(const gguf::File& f) {
  const size_t n_vocab = tokens_.size();
  const bool spm = kind_ == VocabKind::spm;
  auto read_id = [&](const char* key, Token def) -> Token {
    // An absent key takes the default (SPM: llama.cpp's 1 / 2 / 0), which
    // must also be a token.
    const bool present = f.find(key) != nullptr;
    if (!present && def < 0) return -1;
    const uint64_t v = present ? f.get_uint(key) : uint64_t(def);
    if (v >= n_vocab) {
      fail(std::string(key) + " = " + std::to_string(v) + " is outside the vocabulary (" +
           std::to_string(n_vocab) + " tokens)");
    }
    return Token(v);
  };
  bos_ = read_id("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  eos_ = read_id("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  unk_ = read_id("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  add_bos_ = f.get_bool_or("tokenizer.ggml.add_bos_token", spm ? true : pre_.add_bos);
  add_eos_ = f.get_bool_or("tokenizer.ggml.add_eos_token", false);
  add_space_prefix_ = f.get_bool_or("tokenizer.ggml.add_space_prefix", spm);
  if (add_bos_ && bos_ < 0) fail("tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing");
  if (add_eos_ && eos_ < 0) fail("tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is missing");

  // Tokens llama.cpp recognises by text when the GGUF lacks their ids; each
  // such token is treated as a control token.
  auto find_text = [&](std::initializer_list<std::string_view> texts) -> Token {
    for (std::string_view s : texts) {
      auto it = index_.find(std::string(s));
      if (it != index_.end()) return it->second;
    }
    return -1;
  };
  auto by_key_or_text = [&](const char* key, std::initializer_list<std::string_view> texts) -> Token {
    Token id = read_id(key, -1);
    if (id < 0) {
      id = find_text(texts);
      if (id >= 0) types_[size_t(id)] = kTypeControl;
    }
    return id;
  };
  eot_ = by_key_or_text("tokenizer.ggml.eot_token_id",
                        {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
                         "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"});
  const Token eom = by_key_or_text("tokenizer.ggml.eom_token_id", {"<|eom_id|>"});
  by_key_or_text("tokenizer.ggml.fim_pre_token_id",
                 {"<|fim_prefix|>", "<fim-prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>"});
  by_key_or_text("tokenizer.ggml.fim_suf_token_id",
                 {"<|fim_suffix|>", "<fim-suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>"});
  by_key_or_text("tokenizer.ggml.fim_mid_token_id",
                 {"<|fim_middle|>", "<fim-middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>"});
  const Token fim_pad = by_key_or_text("tokenizer.ggml.fim_pad_token_id", {"<|fim_pad|>", "<fim-pad>", "<PAD>"});
  const Token fim_rep = by_key_or_text("tokenizer.ggml.fim_rep_token_id",
                                       {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"});
  const Token fim_sep = by_key_or_text("tokenizer.ggml.fim_sep_token_id", {"<|file_sep|>"});

  eog_.assign(n_vocab, 0);
  for (Token id : {eos_, eot_, eom, fim_pad, fim_rep, fim_sep})
    if (id >= 0) eog_[size_t(id)] = 1;
  for (std::string_view s : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                             "<|eom_id|>", "<EOT>"}) {
    auto it = index_.find(std::string(s));
    if (it == index_.end()) continue;
    eog_[size_t(it->second)] = 1;
    types_[size_t(it->second)] = kTypeControl;
  }

  // Byte tokens: SPM falls back to <0xNN> (else the one-byte token, else
  // <unk>); BPE has a token per mapped byte (set by load_bpe).
  if (spm) {
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      auto it = index_.find(buf);
      if (it == index_.end()) it = index_.find(std::string(1, char(b)));
      byte_tokens_[b] = it != index_.end() ? it->second : unk_;
    }
  }

  // Decoded piece of every token (llama.cpp token_to_piece, special=false).
  pieces_.resize(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i) {
    const std::string& text = tokens_[i];
    switch (types_[i]) {
      case kTypeNormal:
        pieces_[i] = spm ? replace_all(text, kSpace, " ") : bpe_token_bytes(text);
        break;
      case kTypeUserDefined:
        pieces_[i] = text;
        break;
      case kTypeByte: {
        if (!spm) break;  // llama.cpp gives byte-type tokens of a BPE vocabulary no text
        int b = parse_byte_token(text);
        if (b < 0) fail("byte token " + std::to_string(i) + " has text '" + text + "', expected <0xNN>");
        pieces_[i] = std::string(1, char(b));
        break;
      }
      default:  // unknown, control, unused, undefined: no text
        break;
    }
  }

  // Tokens cut out of the raw text before encoding, longest text first (ties
  // by id so the order is deterministic).
  for (size_t i = 0; i < n_vocab; ++i) {
    int32_t ty = types_[i];
    if (ty == kTypeControl || ty == kTypeUserDefined || ty == kTypeUnknown) special_.push_back(Token(i));
  }
  std::stable_sort(special_.begin(), special_.end(), [&](Token a, Token b) {
    return tokens_[size_t(a)].size() > tokens_[size_t(b)].size();
  });

  // llama.cpp strips the whitespace after Phi-3's special tokens (their
  // tokenizer.json marks them rstrip), chosen by the model name.
  rstrip_.assign(n_vocab, 0);
  std::string name = f.find("general.name") ? f.get_string("general.name") : "";
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (Token id : special_) rstrip_[size_t(id)] = 1;
    if (Token id = find_text({"</s>"}); id >= 0) rstrip_[size_t(id)] = 1;
    for (std::string_view s : {"<unk>", "<s>", "<|endoftext|>"})
      if (Token id = find_text({s}); id >= 0) rstrip_[size_t(id)] = 0;
  }
}

std::vector<Token> Tokenizer::encode(std::string_view text, bool add_special) const {
  return encode(text, add_special, false);
}

std::vector<Token> Tokenizer::encode(std::string_view text, bool add_special,
                                     bool parse_special) const {
  // Fragments: token id >= 0, or raw text [offset, offset + length) with id -1.
  struct Fragment {
    Token token;
    size_t offset;
    size_t length;
  };
  std::vector<Fragment> frags;
  if (!text.empty()) frags.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (Token id : special_) {
    int32_t ty = types_[size_t(id)];
    if (!parse_special && (ty == kTypeControl || ty == kTypeUnknown)) continue;
    const std::string& st = tokens_[size_t(id)];
    next.clear();
    for (const Fragment& fr : frags) {
      if (fr.token >= 0) {
        next.push_back(fr);
        continue;
      }
      std::string_view raw = text.substr(fr.offset, fr.length);
      size_t pos = 0;
      while (true) {
        size_t hit = raw.find(st, pos);
        if (hit == std::string_view::npos) break;
        if (hit > pos) next.push_back({-1, fr.offset + pos, hit - pos});
        next.push_back({id, 0, 0});
        pos = hit + st.size();
        if (rstrip_[size_t(id)])
          while (pos < raw.size() && c_space(raw[pos])) ++pos;
      }
      if (pos < raw.size()) next.push_back({-1, fr.offset + pos, raw.size() - pos});
    }
    frags.swap(next);
  }

  std::vector<Token> out;
  out.reserve(text.size() + 2);
  if (add_special && add_bos_) out.push_back(bos_);
  bool prev_special = true;  // the text start counts as "after a special token"
  std::string buf;
  for (const Fragment& fr : frags) {
    if (fr.token >= 0) {
      out.push_back(fr.token);
      prev_special = true;
      continue;
    }
    if (kind_ == VocabKind::bpe) {
      encode_bpe(text.substr(fr.offset, fr.length), out);
      continue;
    }
    buf.clear();
    if (add_space_prefix_ && prev_special) buf.push_back(' ');
    buf.append(text.substr(fr.offset, fr.length));
    buf = replace_all(buf, " ", kSpace);
    encode_spm(buf, out);
    prev_special = false;
  }
  if (add_special && add_eos_) out.push_back(eos_);
  return out;
}

std::string Tokenizer::piece(Token t) const { return piece(t, false); }

std::string Tokenizer::piece(Token t, bool special) const {
  if (t < 0 || size_t(t) >= pieces_.size()) {
    fail("token id " + std::to_string(t) + " is outside the vocabulary (" +
         std::to_string(pieces_.size()) + " tokens)");
  }
  const int32_t ty = types_[size_t(t)];
  if (special && (ty == kTypeControl || ty == kTypeUnknown)) return tokens_[size_t(t)];
  return pieces_[size_t(t)];
}

std::string Tokenizer::decode(const std::vector<Token>& tokens) const {
  if (kind_ == VocabKind::bpe) return decode(tokens, false);
  std::string out;
  bool strip = add_space_prefix_;  // the space encode() prefixed
  for (Token t : tokens) {
    std::string p = piece(t);
    if (strip && !p.empty()) {
      strip = false;
      if (p[0] == ' ') p.erase(0, 1);
    }
    out += p;
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<Token>& tokens, bool special) const {
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string p = piece(tokens[i], special);
    if (i == 0 && add_space_prefix_ && !p.empty() && p[0] == ' ') p.erase(0, 1);
    out += p;
  }
  if (kind_ == VocabKind::bpe && pre_.clean_spaces) clean_spaces(out);
  return out;
}

}  // namespace defkv::text
