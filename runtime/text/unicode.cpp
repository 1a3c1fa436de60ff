#include "runtime/text/unicode.h"

#include <algorithm>

namespace defkv::text::unicode {

uint16_t flags(uint32_t cp) {
  if (cp > 0x10FFFF) return kUndefined;
  if (cp < 0x80) {
    // ASCII fast path, a table built once from the generated runs.
    static const auto ascii = [] {
      struct T { uint16_t f[0x80]; } t{};
      for (uint32_t c = 0; c < 0x80; ++c) {
        const FlagRun* run = std::upper_bound(kFlagRuns, kFlagRuns + kNumFlagRuns, c,
                                              [](uint32_t v, const FlagRun& r) { return v < r.first; });
        t.f[c] = (run - 1)->flags;
      }
      return t;
    }();
    return ascii.f[cp];
  }
  const FlagRun* run = std::upper_bound(kFlagRuns, kFlagRuns + kNumFlagRuns, cp,
                                        [](uint32_t v, const FlagRun& r) { return v < r.first; });
  return (run - 1)->flags;
}

void decode_utf8(std::string_view text, std::vector<Cpt>& out) {
  out.clear();
  out.reserve(text.size());
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const auto cont = [&](size_t i) { return i < text.size() && (byte(i) & 0xC0) == 0x80; };
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = byte(i);
    uint32_t cp = kInvalid;
    uint32_t n = 1;
    if (c < 0x80) {
      cp = c;
    } else if ((c & 0x40) == 0) {
      // stray continuation byte
    } else if ((c & 0x20) == 0) {
      if (cont(i + 1)) { cp = (uint32_t(c & 0x1F) << 6) | (byte(i + 1) & 0x3F); n = 2; }
    } else if ((c & 0x10) == 0) {
      if (cont(i + 1) && cont(i + 2)) {
        cp = (uint32_t(c & 0x0F) << 12) | (uint32_t(byte(i + 1) & 0x3F) << 6) | (byte(i + 2) & 0x3F);
        n = 3;
      }
    } else if ((c & 0x08) == 0) {
      if (cont(i + 1) && cont(i + 2) && cont(i + 3)) {
        cp = (uint32_t(c & 0x07) << 18) | (uint32_t(byte(i + 1) & 0x3F) << 12) |
             (uint32_t(byte(i + 2) & 0x3F) << 6) | (byte(i + 3) & 0x3F);
        n = 4;
      }
    }
    out.push_back({cp, uint32_t(i), n});
    i += n;
  }
}

}  // namespace defkv::text::unicode
