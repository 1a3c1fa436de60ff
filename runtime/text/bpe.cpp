// Byte-level BPE (GGUF tokenizer.ggml.model = "gpt2"), following llama.cpp's
// llm_tokenizer_bpe:
//  - every byte is written as one printable code point (GPT-2's
//    bytes_to_unicode: ! .. ~, ¡ .. ¬, ® .. ÿ map to themselves, the other
//    68 bytes to U+0100 onwards, in byte order), so tokens are valid UTF-8;
//  - the text is split into words by the pre-tokenizer (pretokenize.cpp);
//  - in each word, starting from one symbol per byte, the adjacent pair with
//    the lowest merge rank (tokenizer.ggml.merges order; ties: leftmost) is
//    merged until no pair has a rank. With ignore_merges (Llama 3) a word that
//    is itself a token is emitted whole.
#include <queue>

#include "runtime/gguf/gguf.h"
#include "runtime/text/tokenizer.h"
#include "runtime/text/unicode.h"
#include "runtime/text/vocab_types.h"

namespace defkv::text {

using namespace detail;

namespace {

struct ByteMap {
  uint32_t byte_cp[256];     // byte -> code point
  std::string byte_utf8[256];  // byte -> UTF-8 of that code point
  int16_t cp_byte[0x144];    // code point -> byte, -1 where none (covers U+0000..U+0143)
};

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s.push_back(char(cp));
  } else if (cp < 0x800) {
    s.push_back(char(0xC0 | (cp >> 6)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(char(0xE0 | (cp >> 12)));
    s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(char(0xF0 | (cp >> 18)));
    s.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  }
}

const ByteMap& byte_map() {
  static const ByteMap m = [] {
    ByteMap b;
    for (int16_t& x : b.cp_byte) x = -1;
    uint32_t next = 0x100;
    for (uint32_t c = 0; c < 256; ++c) {
      const bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE);
      b.byte_cp[c] = printable ? c : next++;
      b.cp_byte[b.byte_cp[c]] = int16_t(c);
      append_utf8(b.byte_utf8[c], b.byte_cp[c]);
    }
    return b;
  }();
  return m;
}

uint64_t pair_key(Token a, Token b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct Symbol {
  Token id;      // -1: not a token (cannot merge further)
  int prev, next;
  uint32_t offset, n;  // bytes of the word; n = 0 once merged into its left neighbour
};

struct Bigram {
  int32_t rank;
  int left, right;
  uint32_t size;  // bytes of the merged pair (detects stale entries)
};

struct BigramGreater {  // priority_queue pops the lowest rank, then the leftmost pair
  bool operator()(const Bigram& l, const Bigram& r) const {
    return l.rank > r.rank || (l.rank == r.rank && l.left > r.left);
  }
};

}  // namespace

void Tokenizer::load_bpe(const gguf::File& f) {
  const ByteMap& bm = byte_map();
  for (int b = 0; b < 256; ++b) {
    auto it = index_.find(bm.byte_utf8[b]);
    byte_tokens_[b] = it != index_.end() ? it->second : -1;
  }
  if (f.find("tokenizer.ggml.merges") == nullptr) {
    fail("tokenizer.ggml.merges is missing: a gpt2 (byte-level BPE) vocabulary needs its merges");
  }
  const gguf::Array& merges = f.get_array("tokenizer.ggml.merges");
  if (merges.elem_type != gguf::ValueType::string) fail("tokenizer.ggml.merges is not an array of strings");
  merges_.reserve(merges.strings.size() * 2);
  std::string joined;
  for (size_t i = 0; i < merges.strings.size(); ++i) {
    const std::string& m = merges.strings[i];
    auto where = [&] { return "tokenizer.ggml.merges[" + std::to_string(i) + "] = '" + m + "'"; };
    // Split at the first space after the first byte, as llama.cpp does.
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) fail(where() + " is not two tokens separated by a space");
    const std::string left = m.substr(0, sp), right = m.substr(sp + 1);
    auto l = index_.find(left), r = index_.find(right);
    if (l == index_.end()) fail(where() + " names '" + left + "', which is not in tokenizer.ggml.tokens");
    if (r == index_.end()) fail(where() + " names '" + right + "', which is not in tokenizer.ggml.tokens");
    joined.assign(left).append(right);
    auto res = index_.find(joined);
    // The first occurrence of a pair keeps its rank (llama.cpp emplace).
    merges_.emplace(pair_key(l->second, r->second), Merge{int32_t(i), res != index_.end() ? res->second : -1});
  }
}

std::string Tokenizer::bpe_token_bytes(const std::string& text) const {
  const ByteMap& bm = byte_map();
  std::vector<unicode::Cpt> cpts;
  unicode::decode_utf8(text, cpts);
  std::string out;
  out.reserve(text.size());
  for (const unicode::Cpt& c : cpts) {
    if (c.cp < 0x144 && bm.cp_byte[c.cp] >= 0) {
      out.push_back(char(bm.cp_byte[c.cp]));
    } else {
      out.append(text, c.offset, c.len);  // not a mapped byte: kept as it is
    }
  }
  return out;
}

void Tokenizer::encode_bpe(std::string_view text, std::vector<Token>& out) const {
  std::vector<std::string_view> words;
  pretokenize(pre_.kind, text, words);
  for (std::string_view w : words) encode_bpe_word(w, out);
}

void Tokenizer::encode_bpe_word(std::string_view word, std::vector<Token>& out) const {
  const ByteMap& bm = byte_map();
  auto mapped = [&](std::string_view bytes) {
    std::string s;
    for (char c : bytes) s += bm.byte_utf8[static_cast<unsigned char>(c)];
    return s;
  };
  if (pre_.ignore_merges) {
    auto it = index_.find(mapped(word));
    if (it != index_.end()) {
      out.push_back(it->second);
      return;
    }
  }

  std::vector<Symbol> sym(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    sym[i] = {byte_tokens_[static_cast<unsigned char>(word[i])], int(i) - 1,
              i + 1 == word.size() ? -1 : int(i) + 1, uint32_t(i), 1};
  }
  std::priority_queue<Bigram, std::vector<Bigram>, BigramGreater> queue;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = sym[size_t(left)];
    const Symbol& r = sym[size_t(right)];
    if (l.id < 0 || r.id < 0) return;
    auto it = merges_.find(pair_key(l.id, r.id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, right, l.n + r.n});
  };
  for (int i = 1; i < int(sym.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[size_t(b.left)];
    Symbol& r = sym[size_t(b.right)];
    // Stale: a side was merged away or grew since the pair was queued.
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    l.id = merges_.at(pair_key(l.id, r.id)).result;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) sym[size_t(r.next)].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }

  for (int i = sym.empty() ? -1 : 0; i != -1; i = sym[size_t(i)].next) {
    const Symbol& s = sym[size_t(i)];
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    // Not a token: llama.cpp looks up each byte of the mapped text alone.
    for (char c : mapped(word.substr(s.offset, s.n))) {
      auto it = index_.find(std::string(1, c));
      if (it != index_.end()) out.push_back(it->second);
    }
  }
}

// llama.cpp's clean_spaces pass of llama_detokenize (a copy of HF's
// clean_up_tokenization), three passes over the bytes.
void Tokenizer::clean_spaces(std::string& s) const {
  if (s.empty()) return;
  // 1: " ?" " !" " ." " ," lose the space.
  std::string a(1, s[0]);
  for (size_t i = 1; i < s.size(); ++i) {
    const char x = s[i];
    if (s[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) a.pop_back();
    a.push_back(x);
  }
  // 2: " ' " becomes "'" (the space after it is consumed and reads as NUL
  // for the next character's look-behind, as in llama.cpp's in-place pass).
  std::string b(1, a[0]);
  for (size_t i = 1; i < a.size(); ++i) {
    const char x = a[i];
    if (x == '\'' && i + 1 < a.size() && a[i - 1] == ' ' && a[i + 1] == ' ') {
      b.pop_back();
      a[++i] = '\0';
    }
    b.push_back(x);
  }
  // 3: " 's" " 'm" " 're" " 've" lose the space (" 't" " 'd" " 'll" keep it).
  std::string c(1, b[0]);
  for (size_t i = 1; i < b.size(); ++i) {
    const char x = b[i];
    if (b[i - 1] == ' ' && x == '\'' && i + 1 < b.size()) {
      const char x1 = b[i + 1];
      if (x1 == 's' || x1 == 'm') {
        c.pop_back();
      } else if (x1 != 't' && x1 != 'd' && i + 2 < b.size()) {
        const char x2 = b[i + 2];
        if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) c.pop_back();
      }
    }
    c.push_back(x);
  }
  s.swap(c);
}

}  // namespace defkv::text
