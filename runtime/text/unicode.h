// Code-point categories and UTF-8 decoding for the byte-level BPE
// pre-tokenizers (runtime/text/pretokenize.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace defkv::text::unicode {

// Category flags of a code point: one bit from the Unicode general category
// (its first letter; Cn is kUndefined), plus kWhitespace for the White_Space
// property. The same partition llama.cpp's unicode.cpp uses.
enum : uint16_t {
  kUndefined = 0x01,
  kNumber = 0x02,       // \p{N}
  kLetter = 0x04,       // \p{L}
  kSeparator = 0x08,    // \p{Z}
  kMark = 0x10,         // \p{M}
  kPunctuation = 0x20,  // \p{P}
  kSymbol = 0x40,       // \p{S}
  kControl = 0x80,      // \p{C} except Cn
  kWhitespace = 0x100,  // \s
};

// Flags of one code point; code points past U+10FFFF (and bytes that are not
// valid UTF-8, see decode_utf8) are kUndefined.
uint16_t flags(uint32_t cp);

// One decoded unit of a text: a code point and the bytes it came from.
struct Cpt {
  uint32_t cp;
  uint32_t offset;  // byte offset in the text
  uint32_t len;     // bytes (1..4)
};

// Marks a byte that does not start a well-formed sequence; such a byte is a
// unit of its own, categorised kUndefined.
constexpr uint32_t kInvalid = 0xFFFFFFFFu;

// Decodes UTF-8 as llama.cpp does (the lead byte gives the length, the
// continuation bytes must be 10xxxxxx; overlong forms and surrogates are
// accepted). Where llama.cpp throws on a malformed sequence, this yields one
// kInvalid unit for the lead byte and continues.
void decode_utf8(std::string_view text, std::vector<Cpt>& out);

// Generated table (runtime/text/unicode_data.cpp): runs of equal flags.
struct FlagRun {
  uint32_t first;
  uint16_t flags;
};
extern const FlagRun kFlagRuns[];
extern const size_t kNumFlagRuns;

}  // namespace defkv::text::unicode
