// SentencePiece "llama" tokenizer, following llama.cpp's llm_tokenizer_spm:
//  1. special tokens (user-defined always, control/unknown with parse_special)
//     are cut out of the text first, longest text first;
//  2. each remaining raw fragment gets a ' ' prefix when it starts the text or
//     follows a special token (add_space_prefix), ' ' becomes U+2581;
//  3. the fragment is split into UTF-8 characters and adjacent symbols are
//     merged while their concatenation is a vocabulary token, highest score
//     first (ties: leftmost);
//  4. final symbols not in the vocabulary are emitted as <0xNN> byte tokens.
#include "runtime/text/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <queue>
#include <stdexcept>

#include "runtime/gguf/gguf.h"

namespace defkv::text {

namespace {

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

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

[[noreturn]] void fail(const std::string& msg) {
  throw std::runtime_error("tokenizer: " + msg);
}

// Byte length of the UTF-8 sequence a lead byte announces (llama.cpp
// unicode_len_utf8: continuation / invalid bytes count as 1).
size_t utf8_len(unsigned char c) {
  static constexpr uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[c >> 4];
}

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

struct Symbol {
  int prev;
  int next;
  size_t offset;  // into the escaped fragment text
  size_t n;       // bytes; 0 once merged into its left neighbour
};

struct Bigram {
  int left;
  int right;
  float score;
  size_t size;  // bytes of the merged text (detects stale entries)
};

struct BigramLess {
  // priority_queue pops the "largest": highest score, then lowest left index.
  bool operator()(const Bigram& l, const Bigram& r) const {
    return l.score < r.score || (l.score == r.score && l.left > r.left);
  }
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const gguf::File& f) {
  const std::string& model = f.get_string("tokenizer.ggml.model");
  if (model != "llama") {
    fail("unsupported tokenizer model '" + model +
         "' (only SentencePiece 'llama' vocabularies are supported)");
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());

  const gguf::Array& tokens = f.get_array("tokenizer.ggml.tokens");
  if (tokens.elem_type != gguf::ValueType::string) {
    fail("tokenizer.ggml.tokens is not an array of strings");
  }
  const size_t n_vocab = tokens.strings.size();
  if (n_vocab == 0) fail("tokenizer.ggml.tokens is empty");
  if (n_vocab > size_t(INT32_MAX)) fail("vocabulary too large");
  t->tokens_ = tokens.strings;

  t->scores_.assign(n_vocab, 0.0f);
  if (f.find("tokenizer.ggml.scores") != nullptr) {
    const gguf::Array& scores = f.get_array("tokenizer.ggml.scores");
    if (scores.size() != n_vocab) {
      fail("tokenizer.ggml.scores has " + std::to_string(scores.size()) +
           " entries, expected " + std::to_string(n_vocab));
    }
    if (!scores.floats.empty()) {
      for (size_t i = 0; i < n_vocab; ++i) t->scores_[i] = float(scores.floats[i]);
    } else if (!scores.ints.empty()) {
      for (size_t i = 0; i < n_vocab; ++i) t->scores_[i] = float(scores.ints[i]);
    } else {
      fail("tokenizer.ggml.scores is not numeric");
    }
  }

  t->types_.assign(n_vocab, kTypeNormal);
  if (f.find("tokenizer.ggml.token_type") != nullptr) {
    const gguf::Array& types = f.get_array("tokenizer.ggml.token_type");
    if (types.size() != n_vocab || types.ints.size() != n_vocab) {
      fail("tokenizer.ggml.token_type has " + std::to_string(types.size()) +
           " entries (must be integers, one per token: " + std::to_string(n_vocab) + ")");
    }
    for (size_t i = 0; i < n_vocab; ++i) t->types_[i] = int32_t(types.ints[i]);
  }

  auto read_id = [&](const char* key, Token def) -> Token {
    uint64_t v = f.get_uint_or(key, uint64_t(def));
    if (v >= n_vocab) {
      fail(std::string(key) + " = " + std::to_string(v) + " is outside the vocabulary (" +
           std::to_string(n_vocab) + " tokens)");
    }
    return Token(v);
  };
  t->bos_ = read_id("tokenizer.ggml.bos_token_id", 1);
  t->eos_ = read_id("tokenizer.ggml.eos_token_id", 2);
  t->unk_ = read_id("tokenizer.ggml.unknown_token_id", 0);
  t->add_bos_ = f.get_bool_or("tokenizer.ggml.add_bos_token", true);
  t->add_eos_ = f.get_bool_or("tokenizer.ggml.add_eos_token", false);
  t->add_space_prefix_ = f.get_bool_or("tokenizer.ggml.add_space_prefix", true);

  // Text -> id; on duplicate texts the last id wins (as in llama.cpp).
  t->index_.reserve(n_vocab * 2);
  for (size_t i = 0; i < n_vocab; ++i) t->index_[t->tokens_[i]] = Token(i);

  // Byte fallback: <0xNN>, else the one-byte token, else <unk>.
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    auto it = t->index_.find(buf);
    if (it == t->index_.end()) it = t->index_.find(std::string(1, char(b)));
    t->byte_tokens_[b] = it != t->index_.end() ? it->second : t->unk_;
  }

  // Decoded piece of every token (llama.cpp token_to_piece, special=false).
  t->pieces_.resize(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i) {
    const std::string& text = t->tokens_[i];
    switch (t->types_[i]) {
      case kTypeNormal:
        t->pieces_[i] = replace_all(text, kSpace, " ");
        break;
      case kTypeUserDefined:
        t->pieces_[i] = text;
        break;
      case kTypeByte: {
        int b = parse_byte_token(text);
        if (b < 0) fail("byte token " + std::to_string(i) + " has text '" + text + "', expected <0xNN>");
        t->pieces_[i] = std::string(1, char(b));
        break;
      }
      default:  // unknown, control, unused, undefined: no text
        break;
    }
  }

  // Tokens cut out of the raw text before SPM, longest text first (ties by id
  // so the order is deterministic).
  for (size_t i = 0; i < n_vocab; ++i) {
    int32_t ty = t->types_[i];
    if ((ty == kTypeControl || ty == kTypeUserDefined || ty == kTypeUnknown) &&
        !t->tokens_[i].empty()) {
      t->special_.push_back(Token(i));
    }
  }
  std::stable_sort(t->special_.begin(), t->special_.end(), [&](Token a, Token b) {
    return t->tokens_[size_t(a)].size() > t->tokens_[size_t(b)].size();
  });
  return t;
}

void Tokenizer::encode_spm(std::string_view text, std::vector<Token>& out) const {
  // One symbol per UTF-8 character (an invalid byte is its own symbol).
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t offs = 0; offs < text.size();) {
    size_t n = std::min(utf8_len(static_cast<unsigned char>(text[offs])), text.size() - offs);
    int index = int(symbols.size());
    symbols.push_back({index - 1, offs + n == text.size() ? -1 : index + 1, offs, n});
    offs += n;
  }

  std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue;
  std::string scratch;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[size_t(left)];
    const Symbol& r = symbols[size_t(right)];
    scratch.assign(text.substr(l.offset, l.n + r.n));
    auto it = index_.find(scratch);
    if (it == index_.end()) return;
    queue.push({left, right, scores_[size_t(it->second)], scratch.size()});
  };
  for (int i = 1; i < int(symbols.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    Bigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[size_t(b.left)];
    Symbol& r = symbols[size_t(b.right)];
    // Stale: one side was merged away or grew since this pair was queued.
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[size_t(r.next)].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }

  // Every merged symbol is a vocabulary token by construction; only single
  // characters can be missing, and those fall back to bytes.
  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[size_t(i)].next) {
    const Symbol& s = symbols[size_t(i)];
    scratch.assign(text.substr(s.offset, s.n));
    auto it = index_.find(scratch);
    if (it != index_.end()) {
      out.push_back(it->second);
    } else {
      for (char c : scratch) out.push_back(byte_tokens_[static_cast<unsigned char>(c)]);
    }
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

std::string Tokenizer::piece(Token t) const {
  if (t < 0 || size_t(t) >= pieces_.size()) {
    fail("token id " + std::to_string(t) + " is outside the vocabulary (" +
         std::to_string(pieces_.size()) + " tokens)");
  }
  return pieces_[size_t(t)];
}

std::string Tokenizer::decode(const std::vector<Token>& tokens) const {
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

// ---- StreamDecoder ----------------------------------------------------------

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Checks the UTF-8 sequence starting at s[0]. Returns:
//   > 0: length of a complete valid sequence;
//   0:   a valid but incomplete prefix (all of s) — wait for more bytes;
//   < 0: invalid; -k means the maximal invalid subpart is k bytes (k >= 1).
int check_utf8(std::string_view s) {
  const auto c0 = static_cast<unsigned char>(s[0]);
  if (c0 < 0x80) return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    len = 2;
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    len = 3;
    if (c0 == 0xE0) lo = 0xA0;       // no overlong forms
    if (c0 == 0xED) hi = 0x9F;       // no surrogates
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    len = 4;
    if (c0 == 0xF0) lo = 0x90;       // no overlong forms
    if (c0 == 0xF4) hi = 0x8F;       // <= U+10FFFF
  } else {
    return -1;  // continuation byte or never-valid lead byte
  }
  for (int i = 1; i < len; ++i) {
    if (size_t(i) >= s.size()) return 0;
    const auto c = static_cast<unsigned char>(s[size_t(i)]);
    const unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (c < l || c > h) return -i;
  }
  return len;
}

}  // namespace

std::string StreamDecoder::push(Token t) {
  std::string p = tok_->piece(t);
  if (first_) {
    if (p.empty()) return {};  // control tokens before the text
    first_ = false;
    if (tok_->add_space_prefix() && p[0] == ' ') p.erase(0, 1);
  }
  pending_ += p;
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    int r = check_utf8(std::string_view(pending_).substr(i));
    if (r == 0) break;  // hold back the incomplete tail
    if (r > 0) {
      out.append(pending_, i, size_t(r));
      i += size_t(r);
    } else {
      out += kReplacement;
      i += size_t(-r);
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  if (!pending_.empty()) out = kReplacement;  // a truncated sequence
  pending_.clear();
  return out;
}

}  // namespace defkv::text
