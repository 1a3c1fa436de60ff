// StreamDecoder: token pieces in, complete UTF-8 characters out.
#include <string_view>

#include "runtime/text/tokenizer.h"

namespace defkv::text {

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
