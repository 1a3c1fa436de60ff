// Each pre-tokenizer is a sequence of stages. A stage looks at one segment
// (a run of code points) at a time and cuts it into pieces; like a regex
// split, both the matches and the text between them become pieces. The
// matchers below follow the regexes in pretokenize.h alternative by
// alternative, at the first position where one matches (leftmost, first
// alternative wins, greedy repetition), as llama.cpp's unicode.cpp does.
#include "runtime/text/pretokenize.h"

#include <stdexcept>

#include "runtime/text/unicode.h"

namespace defkv::text {

namespace {

using unicode::Cpt;

struct Range {
  uint32_t lo, hi;
};

// DeepSeek LLM's class of cased letters (Lu, Ll, Lt), from its tokenizer.json.
constexpr Range kDeepseekLetters[] = {
    {0x0041, 0x005A}, {0x0061, 0x007A}, {0x00B5, 0x00B5}, {0x00C0, 0x00D6}, {0x00D8, 0x00F6}, {0x00F8, 0x01BA},
    {0x01BC, 0x01BF}, {0x01C4, 0x0293}, {0x0295, 0x02AF}, {0x0370, 0x0373}, {0x0376, 0x0377}, {0x037B, 0x037D},
    {0x037F, 0x037F}, {0x0386, 0x0386}, {0x0388, 0x038A}, {0x038C, 0x038C}, {0x038E, 0x03A1}, {0x03A3, 0x03F5},
    {0x03F7, 0x0481}, {0x048A, 0x052F}, {0x0531, 0x0556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124},
    {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2CF2, 0x2CF3}, {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E},
    {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F},
    {0x104B0, 0x104D3}, {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF},
    {0x1E900, 0x1E943},
};
// [!-/:-~！-／：-～‘-‟　-。]
constexpr Range kDeepseekPunct[] = {{0x21, 0x2F},     {0x3A, 0x7E},     {0xFF01, 0xFF0F},
                                    {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002}};
// [一-龥ࠀ-一가-퟿]
constexpr Range kDeepseekCjk[] = {{0x4E00, 0x9FA5}, {0x0800, 0x4E00}, {0xAC00, 0xD7FF}};

template <size_t N>
bool in_ranges(const Range (&r)[N], uint32_t cp) {
  for (const Range& x : r)
    if (cp >= x.lo && cp <= x.hi) return true;
  return false;
}

// The text as code points with their flags; out-of-segment positions read as
// "nothing" (cp kNone, flags 0), which no class matches.
struct Text {
  std::vector<Cpt> cpts;
  std::vector<uint16_t> fl;
};
constexpr uint32_t kNone = 0xFFFFFFFEu;

class Segment {
 public:
  Segment(const Text& t, size_t beg, size_t end) : t_(t), beg_(beg), end_(end) {}
  uint32_t cp(size_t p) const { return p >= beg_ && p < end_ ? t_.cpts[p].cp : kNone; }
  uint16_t fl(size_t p) const { return p >= beg_ && p < end_ ? t_.fl[p] : 0; }
  size_t beg() const { return beg_; }
  size_t end() const { return end_; }
 private:
  const Text& t_;
  size_t beg_, end_;
};

using unicode::kLetter;
using unicode::kNumber;
using unicode::kWhitespace;

uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// Cuts pieces at increasing end positions; appends their lengths.
class Cutter {
 public:
  Cutter(std::vector<size_t>& out, size_t beg) : out_(out), prev_(beg) {}
  void cut(size_t end) {
    if (end > prev_) out_.push_back(end - prev_);
    prev_ = end;
  }
 private:
  std::vector<size_t>& out_;
  size_t prev_;
};

// Length of an English contraction at p ('s 't 'm 'd 're 've 'll), or 0.
size_t contraction(const Segment& s, size_t p, bool any_case) {
  if (s.cp(p) != '\'') return 0;
  auto low = [&](size_t q) { return any_case ? ascii_lower(s.cp(q)) : s.cp(q); };
  const uint32_t a = low(p + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  const uint32_t b = low(p + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// The llama3 / qwen2 regex; max_digits 3 or 1.
void split_llama3(const Segment& s, size_t max_digits, std::vector<size_t>& out) {
  Cutter cut(out, s.beg());
  for (size_t p = s.beg(); p < s.end();) {
    const uint32_t c = s.cp(p);
    const uint16_t f = s.fl(p);
    if (size_t n = contraction(s, p, true)) {
      cut.cut(p += n);
      continue;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (c != '\r' && c != '\n' && !(f & kNumber) && ((f & kLetter) || (s.fl(p + 1) & kLetter))) {
      ++p;
      while (s.fl(p) & kLetter) ++p;
      cut.cut(p);
      continue;
    }
    // \p{N}{1,max_digits}
    if (f & kNumber) {
      size_t n = 0;
      while (n < max_digits && (s.fl(p) & kNumber)) ++p, ++n;
      cut.cut(p);
      continue;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    const size_t q = c == ' ' ? p + 1 : p;
    auto other = [&](size_t i) { const uint16_t g = s.fl(i); return g != 0 && !(g & (kWhitespace | kLetter | kNumber)); };
    if (other(q)) {
      p = q;
      while (other(p)) ++p;
      while (s.cp(p) == '\r' || s.cp(p) == '\n') ++p;
      cut.cut(p);
      continue;
    }
    // \s*[\r\n]+ | \s+(?!\S) | \s+
    size_t n = 0, last_nl = 0;
    while (s.fl(p + n) & kWhitespace) {
      if (s.cp(p + n) == '\r' || s.cp(p + n) == '\n') last_nl = p + n + 1;
      ++n;
    }
    if (last_nl > 0) {
      p = last_nl;
    } else if (n > 1 && p + n < s.end()) {
      p += n - 1;
    } else if (n > 0) {
      p += n;
    } else {
      ++p;  // unreachable for valid flags: every code point matches one branch
    }
    cut.cut(p);
  }
  cut.cut(s.end());
}

// The GPT-2 regex.
void split_gpt2(const Segment& s, std::vector<size_t>& out) {
  Cutter cut(out, s.beg());
  for (size_t p = s.beg(); p < s.end();) {
    if (size_t n = contraction(s, p, false)) {
      cut.cut(p += n);
      continue;
    }
    const size_t q = s.cp(p) == ' ' ? p + 1 : p;  // the optional leading space
    const uint16_t f = s.fl(q);
    auto run = [&](auto pred) {
      p = q;
      while (pred(s.fl(p))) ++p;
      cut.cut(p);
    };
    if (f & kLetter) { run([](uint16_t g) { return (g & kLetter) != 0; }); continue; }
    if (f & kNumber) { run([](uint16_t g) { return (g & kNumber) != 0; }); continue; }
    auto other = [](uint16_t g) { return g != 0 && !(g & (kWhitespace | kLetter | kNumber)); };
    if (other(f)) { run(other); continue; }
    size_t n = 0;
    while (s.fl(p + n) & kWhitespace) ++n;
    if (n > 1 && p + n < s.end()) p += n - 1;   // \s+(?!\S)
    else p += n > 0 ? n : 1;                    // \s+
    cut.cut(p);
  }
  cut.cut(s.end());
}

// Splits at every match of a pattern found by `match(p) -> end or p`
// (leftmost matches; the text between them is a piece too).
template <class Match>
void split_matches(const Segment& s, std::vector<size_t>& out, Match match) {
  Cutter cut(out, s.beg());
  for (size_t p = s.beg(); p < s.end();) {
    const size_t e = match(p);
    if (e > p) {
      cut.cut(p);
      cut.cut(e);
      p = e;
    } else {
      ++p;
    }
  }
  cut.cut(s.end());
}

// A code point as std::wregex saw it in llama.cpp: non-ASCII whitespace was
// replaced by U+000B, so it matches \s and no character class.
bool in_class_wregex(const Segment& s, size_t p, bool (*cls)(uint32_t)) {
  const uint32_t c = s.cp(p);
  if (c == kNone) return false;
  if (c > 0x7F && (s.fl(p) & kWhitespace)) return false;
  return cls(c);
}

// \s?[cls]+
size_t match_opt_space_run(const Segment& s, size_t p, bool (*cls)(uint32_t)) {
  size_t q = p;
  if ((s.fl(q) & kWhitespace) && in_class_wregex(s, q + 1, cls)) ++q;
  if (!in_class_wregex(s, q, cls)) return p;
  while (in_class_wregex(s, q, cls)) ++q;
  return q;
}

bool ds_letter(uint32_t c) { return in_ranges(kDeepseekLetters, c); }
bool ds_punct(uint32_t c) { return in_ranges(kDeepseekPunct, c); }
bool ds_cjk(uint32_t c) { return in_ranges(kDeepseekCjk, c); }

using Stage = void (*)(const Segment&, std::vector<size_t>&);

void stage_llama3(const Segment& s, std::vector<size_t>& o) { split_llama3(s, 3, o); }
void stage_qwen2(const Segment& s, std::vector<size_t>& o) { split_llama3(s, 1, o); }
void stage_gpt2(const Segment& s, std::vector<size_t>& o) { split_gpt2(s, o); }
void stage_each_digit(const Segment& s, std::vector<size_t>& o) {
  split_matches(s, o, [&](size_t p) { return (s.fl(p) & kNumber) ? p + 1 : p; });
}
void stage_digit_runs(const Segment& s, std::vector<size_t>& o) {
  split_matches(s, o, [&](size_t p) {
    while (s.fl(p) & kNumber) ++p;
    return p;
  });
}
void stage_each_newline(const Segment& s, std::vector<size_t>& o) {
  split_matches(s, o, [&](size_t p) { return s.cp(p) == '\r' || s.cp(p) == '\n' ? p + 1 : p; });
}
void stage_ds_letters(const Segment& s, std::vector<size_t>& o) {
  split_matches(s, o, [&](size_t p) { return match_opt_space_run(s, p, ds_letter); });
}
void stage_ds_punct(const Segment& s, std::vector<size_t>& o) {
  split_matches(s, o, [&](size_t p) { return match_opt_space_run(s, p, ds_punct); });
}
void stage_trailing_space(const Segment& s, std::vector<size_t>& o) {
  // \s+$: the whitespace run that reaches the segment's end.
  size_t b = s.end();
  while (b > s.beg() && (s.fl(b - 1) & kWhitespace)) --b;
  Cutter cut(o, s.beg());
  cut.cut(b);
  cut.cut(s.end());
}
void stage_ds_cjk(const Segment& s, std::vector<size_t>& o) {
  split_matches(s, o, [&](size_t p) {
    while (in_class_wregex(s, p, ds_cjk)) ++p;
    return p;
  });
}

struct Recipe {
  const Stage* stages;
  size_t n;
};

Recipe recipe(PreKind k) {
  static constexpr Stage llama3[] = {stage_llama3};
  static constexpr Stage qwen2[] = {stage_qwen2};
  static constexpr Stage gpt2[] = {stage_gpt2};
  static constexpr Stage starcoder[] = {stage_each_digit, stage_gpt2};
  static constexpr Stage deepseek[] = {stage_each_newline, stage_ds_letters, stage_ds_punct,
                                       stage_trailing_space, stage_ds_cjk, stage_digit_runs};
  switch (k) {
    case PreKind::llama3: return {llama3, 1};
    case PreKind::qwen2: return {qwen2, 1};
    case PreKind::gpt2: return {gpt2, 1};
    case PreKind::starcoder: return {starcoder, 2};
    case PreKind::deepseek_llm: return {deepseek, 6};
  }
  throw std::logic_error("pretokenize: bad kind");
}

}  // namespace

PreConfig pre_config(std::string_view pre) {
  struct Entry {
    const char* name;
    PreConfig cfg;
  };
  // llama.cpp's mapping (llama-vocab.cpp) for the pre-tokenizers implemented
  // here: regex, ignore_merges, clean_spaces, add_bos default.
  static const Entry kTable[] = {
      {"llama-bpe", {PreKind::llama3, true, true, true}},
      {"llama3", {PreKind::llama3, true, true, true}},
      {"llama-v3", {PreKind::llama3, true, true, true}},
      {"falcon3", {PreKind::llama3, true, true, true}},
      {"dbrx", {PreKind::llama3, false, true, false}},
      {"smaug-bpe", {PreKind::llama3, false, true, false}},
      {"qwen2", {PreKind::qwen2, false, false, false}},
      {"stablelm2", {PreKind::qwen2, false, true, false}},
      {"megrez", {PreKind::qwen2, false, true, false}},
      {"gpt-2", {PreKind::gpt2, false, true, false}},
      {"phi-2", {PreKind::gpt2, false, true, false}},
      {"mpt", {PreKind::gpt2, false, true, false}},
      {"olmo", {PreKind::gpt2, false, true, false}},
      {"jais", {PreKind::gpt2, false, true, false}},
      {"gigachat", {PreKind::gpt2, false, true, false}},
      {"roberta-bpe", {PreKind::gpt2, false, true, false}},
      {"starcoder", {PreKind::starcoder, false, true, false}},
      {"refact", {PreKind::starcoder, false, true, false}},
      {"codeshell", {PreKind::starcoder, false, true, false}},
      {"exaone", {PreKind::starcoder, false, true, false}},
      {"minerva-7b", {PreKind::starcoder, false, true, false}},
      {"command-r", {PreKind::starcoder, false, false, false}},
      {"smollm", {PreKind::starcoder, false, false, false}},
      {"deepseek-llm", {PreKind::deepseek_llm, false, false, false}},
  };
  std::string known;
  for (const Entry& e : kTable) {
    if (pre == e.name) return e.cfg;
    known += known.empty() ? "" : ", ";
    known += e.name;
  }
  throw std::runtime_error("tokenizer: unsupported pre-tokenizer tokenizer.ggml.pre = '" + std::string(pre) +
                           "' (supported: " + known + ")");
}

void pretokenize(PreKind kind, std::string_view text, std::vector<std::string_view>& words) {
  words.clear();
  if (text.empty()) return;
  Text t;
  unicode::decode_utf8(text, t.cpts);
  t.fl.resize(t.cpts.size());
  for (size_t i = 0; i < t.cpts.size(); ++i) {
    const uint32_t cp = t.cpts[i].cp;
    t.fl[i] = cp == unicode::kInvalid ? uint16_t(unicode::kUndefined) : unicode::flags(cp);
  }

  // Piece lengths in code points; each stage re-splits every piece.
  std::vector<size_t> pieces{t.cpts.size()}, next;
  const Recipe r = recipe(kind);
  for (size_t k = 0; k < r.n; ++k) {
    next.clear();
    size_t beg = 0;
    for (size_t len : pieces) {
      r.stages[k](Segment(t, beg, beg + len), next);
      beg += len;
    }
    pieces.swap(next);
  }

  words.reserve(pieces.size());
  size_t beg = 0;
  for (size_t len : pieces) {
    const Cpt& first = t.cpts[beg];
    const Cpt& last = t.cpts[beg + len - 1];
    words.push_back(text.substr(first.offset, last.offset + last.len - first.offset));
    beg += len;
  }
}

}  // namespace defkv::text
