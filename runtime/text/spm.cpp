// SentencePiece "llama" encoding of one text fragment, following llama.cpp's
// llm_tokenizer_spm: the fragment (spaces already escaped to U+2581) is split
// into UTF-8 characters and adjacent symbols are merged while their
// concatenation is a vocabulary token, highest score first (ties: leftmost);
// final symbols not in the vocabulary become <0xNN> byte tokens.
#include <algorithm>
#include <queue>

#include "runtime/text/tokenizer.h"

namespace defkv::text {

namespace {

// Byte length of the UTF-8 sequence a lead byte announces (llama.cpp
// unicode_len_utf8: continuation / invalid bytes count as 1).
size_t utf8_len(unsigned char c) {
  static constexpr uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[c >> 4];
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

}  // namespace defkv::text
