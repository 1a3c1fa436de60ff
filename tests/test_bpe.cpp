// Tokenizer vector suite: every vocabulary in ../shared/testdata/tokenizers
// (or $DEFKV_TOKENIZER_VECTORS, same layout), against llama.cpp's ids for the
// three flag settings, the decode round trips its README and .json record,
// and the rendered chat examples. Plus byte-level BPE unit tests on small
// hand-made vocabularies and the errors for malformed ones.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"
#include "runtime/text/tokenizer.h"
#include "runtime/text/unicode.h"

namespace fs = std::filesystem;
using defkv::text::Token;
using defkv::text::Tokenizer;
using defkv::text::VocabKind;

namespace {

// The shipped test data (for the tests that name particular files).
std::string shared_vectors() {
  const char* s = std::getenv("DEFKV_SHARED");
  return (s ? std::string(s) : std::string("../shared")) + "/testdata/tokenizers";
}

// The folder the vector suite walks: $DEFKV_TOKENIZER_VECTORS or the shipped one.
std::string vectors_dir() {
  const char* e = std::getenv("DEFKV_TOKENIZER_VECTORS");
  return e && *e ? std::string(e) : shared_vectors();
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FAIL("cannot open " << path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every input is followed by "\n__ggml_vocab_test__\n" (README: File format).
std::vector<std::string> inputs(const std::string& path) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  const std::string all = slurp(path);
  std::vector<std::string> out;
  size_t pos = 0;
  for (size_t hit; (hit = all.find(sep, pos)) != std::string::npos; pos = hit + sep.size())
    out.push_back(all.substr(pos, hit - pos));
  REQUIRE(pos == all.size());
  return out;
}

std::vector<std::vector<Token>> outputs(const std::string& path) {
  std::istringstream lines(slurp(path));
  std::vector<std::vector<Token>> out;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ls(line);
    std::vector<Token> ids;
    for (long v; ls >> v;) ids.push_back(Token(v));
    out.push_back(ids);
  }
  return out;
}

std::string show(const std::vector<Token>& ids) {
  std::string s;
  for (Token t : ids) {
    s += ' ';
    s += std::to_string(t);
  }
  return s;
}

struct Vocab {
  std::unique_ptr<defkv::gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
};

Vocab load(const std::string& path) {
  Vocab v;
  v.file = defkv::gguf::File::open(path);
  v.tok = Tokenizer::from_gguf(*v.file);
  return v;
}

std::vector<std::string> vocab_files() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(vectors_dir()))
    if (e.path().extension() == ".gguf") out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Checks one .inp against one .out; returns the number of exact matches.
size_t check_ids(const Tokenizer& tok, const std::string& inp, const std::string& out, bool add_special,
                 bool parse_special) {
  const auto texts = inputs(inp);
  const auto want = outputs(out);
  REQUIRE(texts.size() == want.size());
  size_t ok = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<Token> got = tok.encode(texts[i], add_special, parse_special);
    INFO(out << " case " << i << " '" << texts[i] << "'\n got " << show(got) << "\nwant " << show(want[i]));
    CHECK(got == want[i]);
    ok += got == want[i];
  }
  return ok;
}

std::string pieces(const Tokenizer& tok, const std::vector<Token>& ids) {
  std::string s;
  for (Token t : ids) s += tok.piece(t, true);
  return s;
}

// The vocabularies the README describes, so a missing file is noticed.
const std::set<std::string> kExpectedVocabs = {"deepseek-llm", "gpt-2", "llama-bpe", "llama-spm",
                                               "phi-3", "qwen2", "starcoder"};

std::string vocab_name(const std::string& path) {
  std::string n = fs::path(path).stem().string();  // ggml-vocab-X
  return n.substr(n.find("vocab-") + 6);
}

}  // namespace

TEST_CASE("tokenizer vectors: every vocabulary, every flag setting, exact", "[tokenizer][bpe]") {
  const auto files = vocab_files();
  std::set<std::string> seen;
  for (const std::string& g : files) seen.insert(vocab_name(g));
  if (!std::getenv("DEFKV_TOKENIZER_VECTORS")) CHECK(seen == kExpectedVocabs);

  for (const std::string& g : files) {
    SECTION(vocab_name(g)) {
      Vocab v = load(g);
      const Tokenizer& tok = *v.tok;
      size_t n = 0, ok = 0;
      if (fs::exists(g + ".inp")) {
        const size_t k = inputs(g + ".inp").size();
        ok += check_ids(tok, g + ".inp", g + ".out", false, false);
        n += k;
      }
      const std::string ex = g + ".extra";
      if (fs::exists(ex + ".inp")) {
        const size_t k = inputs(ex + ".inp").size();
        for (auto [suffix, add, parse] : {std::tuple{".out", false, false}, std::tuple{".special.out", false, true},
                                          std::tuple{".add-special.out", true, true}}) {
          if (!fs::exists(ex + suffix)) continue;
          ok += check_ids(tok, ex + ".inp", ex + suffix, add, parse);
          n += k;
        }
      }
      WARN(vocab_name(g) << ": " << ok << "/" << n << " cases exact");
      CHECK(n > 0);
      CHECK(ok == n);
    }
  }
}

TEST_CASE("tokenizer vectors: decode round trips as the .json files record", "[tokenizer][bpe]") {
  for (const std::string& g : vocab_files()) {
    const std::string js = g + ".extra.json";
    if (!fs::exists(js)) continue;
    SECTION(vocab_name(g)) {
      Vocab v = load(g);
      const Tokenizer& tok = *v.tok;
      const auto doc = nlohmann::json::parse(slurp(js));
      const auto texts = inputs(g + ".extra.inp");
      REQUIRE(doc.at("cases").size() == texts.size());
      size_t n_rt = 0;
      for (const auto& c : doc.at("cases")) {
        const std::string text = c.at("text").get<std::string>();
        const auto plain = c.at("plain").get<std::vector<Token>>();
        const auto special = c.at("special").get<std::vector<Token>>();
        INFO(vocab_name(g) << " case " << c.at("index").get<int>() << " '" << text << "'");
        REQUIRE(text == texts[c.at("index").get<size_t>()]);
        // llama_detokenize(remove_special=false, unparse_special=true).
        const std::string detok = c.value("detokenized", text);
        CHECK(tok.decode(plain, true) == detok);
        CHECK((detok == text) == c.at("roundtrip_detokenize").get<bool>());
        n_rt += detok == text;
        // Concatenated llama_token_to_piece(special=true).
        CHECK(pieces(tok, plain) == c.value("pieces", text));
        if (special != plain) CHECK(tok.decode(special, true) == c.value("detokenized_special", text));
      }
      WARN(vocab_name(g) << ": " << n_rt << "/" << texts.size() << " extra inputs round-trip through decode");
    }
  }
}

TEST_CASE("tokenizer vectors: llama.cpp's own cases decode back", "[tokenizer][bpe]") {
  // README "Round trip": BPE pieces always concatenate to the input; decode
  // returns it except where clean_spaces applies (llama-bpe, gpt-2,
  // starcoder: cases 32 and 45, "... ?"); SPM decode returns every input.
  for (const std::string& g : vocab_files()) {
    if (!fs::exists(g + ".inp")) continue;
    SECTION(vocab_name(g)) {
      Vocab v = load(g);
      const Tokenizer& tok = *v.tok;
      const auto texts = inputs(g + ".inp");
      const auto ids = outputs(g + ".out");
      const std::string name = vocab_name(g);
      const bool cleans = name == "llama-bpe" || name == "gpt-2" || name == "starcoder";
      for (size_t i = 0; i < texts.size(); ++i) {
        INFO(name << " case " << i << " '" << texts[i] << "'");
        if (tok.kind() == VocabKind::bpe) CHECK(pieces(tok, ids[i]) == texts[i]);
        if (kExpectedVocabs.count(name) == 0) continue;  // the README speaks for these only
        const bool expect_rt = !(cleans && (i == 32 || i == 45));
        CHECK((tok.decode(ids[i], true) == texts[i]) == expect_rt);
      }
    }
  }
}

TEST_CASE("chat examples tokenize as llama.cpp did (parse_special)", "[tokenizer][bpe]") {
  int n = 0;
  for (const auto& e : fs::directory_iterator(vectors_dir())) {
    const std::string f = e.path().string();
    const std::string suffix = ".chat_example.json";
    if (f.size() < suffix.size() || f.compare(f.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const auto doc = nlohmann::json::parse(slurp(f));
    if (!doc.contains("tokens")) continue;  // no GGUF for this family
    const std::string gguf = f.substr(0, f.size() - suffix.size()) + ".gguf";
    Vocab v = load(gguf);
    INFO(f);
    const auto want = doc.at("tokens").get<std::vector<Token>>();
    CHECK(v.tok->encode(doc.at("rendered").get<std::string>(), false, true) == want);
    CHECK(v.tok->decode(want, true) == doc.at("rendered").get<std::string>());
    ++n;
  }
  if (!std::getenv("DEFKV_TOKENIZER_VECTORS")) CHECK(n == 2);
}

TEST_CASE("BPE vocabularies: special ids, add_bos and the end-of-generation set", "[tokenizer][bpe]") {
  const std::string d = shared_vectors();
  SECTION("llama-bpe") {
    Vocab v = load(d + "/ggml-vocab-llama-bpe.gguf");
    const Tokenizer& t = *v.tok;
    CHECK(t.kind() == VocabKind::bpe);
    CHECK(t.pre() == "llama-bpe");
    CHECK(t.n_vocab() == 128256);
    CHECK(t.n_merges() == 280147);
    CHECK(t.bos() == 128000);
    CHECK(t.eos() == 128001);
    CHECK(t.eot() == 128009);
    CHECK(t.add_bos());
    CHECK(!t.add_eos());
    CHECK(t.is_eog(128001));
    CHECK(t.is_eog(128009));
    CHECK(!t.is_eog(128000));
    CHECK(!t.is_eog(-1));
    CHECK(!t.is_eog(Token(t.n_vocab())));
    CHECK(t.token_text(128009) == "<|eot_id|>");
    CHECK(t.piece(128009).empty());
    CHECK(t.piece(128009, true) == "<|eot_id|>");
    CHECK(t.piece(15339) == "hello");  // "hello" in Llama 3's vocabulary
    CHECK(t.encode("", true) == std::vector<Token>{128000});
  }
  SECTION("qwen2") {
    Vocab v = load(d + "/ggml-vocab-qwen2.gguf");
    const Tokenizer& t = *v.tok;
    CHECK(!t.add_bos());
    CHECK(t.eos() == 151645);
    CHECK(t.eot() == 151645);
    // <|endoftext|>, <|im_end|>, and the FIM pad / repo / file separator
    // tokens end generation in llama.cpp; <|im_start|> and <think> do not.
    for (Token id : {151643, 151645, 151662, 151663, 151664}) CHECK(t.is_eog(id));
    for (Token id : {151644, 151667, 151659, 0}) CHECK(!t.is_eog(id));
    CHECK(t.encode("", true).empty());
    // User-defined tokens print their text; unused padding prints nothing.
    CHECK(t.piece(151667) == "<think>");
    CHECK(t.token_type(151700) == 5);
    CHECK(t.piece(151700).empty());
  }
  SECTION("gpt-2") {
    Vocab v = load(d + "/ggml-vocab-gpt-2.gguf");
    CHECK(v.tok->is_eog(50256));
    CHECK(v.tok->eot() == 50256);  // found by its text <|endoftext|>
    CHECK(!v.tok->add_bos());
  }
}

// ---- small hand-made vocabularies ------------------------------------------

namespace {

defkv::gguf::Value strings(std::vector<std::string> v) {
  defkv::gguf::Array a;
  a.elem_type = defkv::gguf::ValueType::string;
  a.strings = std::move(v);
  return {defkv::gguf::ValueType::array, a};
}

defkv::gguf::Value ints(std::vector<int64_t> v) {
  defkv::gguf::Array a;
  a.elem_type = defkv::gguf::ValueType::i32;
  a.ints = std::move(v);
  return {defkv::gguf::ValueType::array, a};
}

// The 256 byte tokens of GPT-2's byte-to-unicode map (ids 0..255 in byte
// order), written out independently of the tokenizer: printable bytes are
// themselves, the others U+0100 + n in order.
std::vector<std::string> byte_tokens() {
  std::vector<std::string> t;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : 0x100 + n++;
    std::string s;
    if (cp < 0x80) s.push_back(char(cp));
    else { s.push_back(char(0xC0 | (cp >> 6))); s.push_back(char(0x80 | (cp & 0x3F))); }
    t.push_back(s);
  }
  return t;
}

struct Built {
  std::vector<uint8_t> bytes;
  std::unique_ptr<defkv::gguf::File> file;
};

Built build(const std::vector<std::string>& extra_tokens, const std::vector<std::string>* merges,
            const std::string& pre, std::vector<int64_t> types = {}, bool add_bos_key = false) {
  std::vector<std::string> toks = byte_tokens();
  toks.insert(toks.end(), extra_tokens.begin(), extra_tokens.end());
  defkv::gguf::Writer w;
  w.set_string("tokenizer.ggml.model", "gpt2");
  if (!pre.empty()) w.set_string("tokenizer.ggml.pre", pre);
  if (types.empty()) types.assign(toks.size(), 1);
  w.set("tokenizer.ggml.tokens", strings(toks));
  w.set("tokenizer.ggml.token_type", ints(types));
  if (merges) w.set("tokenizer.ggml.merges", strings(*merges));
  if (add_bos_key) w.set("tokenizer.ggml.add_bos_token", {defkv::gguf::ValueType::boolean, false});
  Built b;
  b.bytes = w.to_bytes();
  b.file = defkv::gguf::File::from_buffer(b.bytes.data(), b.bytes.size());
  return b;
}

std::string error_of(const Built& b) {
  try {
    Tokenizer::from_gguf(*b.file);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("BPE merges apply by rank, lowest first", "[tokenizer][bpe]") {
  // ids: 256 "ab", 257 "bc", 258 "abc"
  const std::vector<std::string> extra{"ab", "bc", "abc"};
  SECTION("'b c' ranks first: a + bc") {
    std::vector<std::string> merges{"b c", "a b", "a bc"};
    Built b = build(extra, &merges, "gpt-2");
    auto t = Tokenizer::from_gguf(*b.file);
    CHECK(t->encode("abc", false) == std::vector<Token>{258});  // a bc -> abc via rank 2
    std::vector<std::string> m2{"b c", "a b"};
    Built b2 = build(extra, &m2, "gpt-2");
    CHECK(Tokenizer::from_gguf(*b2.file)->encode("abc", false) == std::vector<Token>{'a', 257});
  }
  SECTION("'a b' ranks first: ab + c") {
    std::vector<std::string> merges{"a b", "b c"};
    Built b = build(extra, &merges, "gpt-2");
    CHECK(Tokenizer::from_gguf(*b.file)->encode("abc", false) == std::vector<Token>{256, 'c'});
  }
  SECTION("a space is the byte token U+0120") {
    std::vector<std::string> merges{};
    Built b = build({}, &merges, "gpt-2");
    auto t = Tokenizer::from_gguf(*b.file);
    CHECK(t->encode("a b", false) == std::vector<Token>{'a', ' ', 'b'});
    CHECK(t->token_text(' ') == "\xC4\xA0");
    CHECK(t->decode({'a', ' ', 'b'}) == "a b");
    // Every byte decodes to itself.
    for (int c = 0; c < 256; ++c) CHECK(t->piece(Token(c)) == std::string(1, char(c)));
  }
}

TEST_CASE("malformed BPE vocabularies get errors that name the key", "[tokenizer][bpe]") {
  std::vector<std::string> merges{"a b"};
  SECTION("merges missing") {
    CHECK_THAT(error_of(build({"ab"}, nullptr, "gpt-2")), Catch::Contains("tokenizer.ggml.merges is missing"));
  }
  SECTION("a merge naming an unknown token") {
    std::vector<std::string> bad{"a b", "ab zz"};
    CHECK_THAT(error_of(build({"ab"}, &bad, "gpt-2")),
               Catch::Contains("tokenizer.ggml.merges[1] = 'ab zz' names 'zz', which is not in tokenizer.ggml.tokens"));
  }
  SECTION("a merge without a space") {
    std::vector<std::string> bad{"ab"};
    CHECK_THAT(error_of(build({"ab"}, &bad, "gpt-2")), Catch::Contains("tokenizer.ggml.merges[0] = 'ab'"));
  }
  SECTION("a token type out of range") {
    std::vector<int64_t> types(257, 1);
    types[256] = 9;
    CHECK_THAT(error_of(build({"ab"}, &merges, "gpt-2", types)),
               Catch::Contains("tokenizer.ggml.token_type[256] = 9 is out of range"));
  }
  SECTION("an unknown pre-tokenizer") {
    CHECK_THAT(error_of(build({"ab"}, &merges, "klingon-bpe")),
               Catch::Contains("tokenizer.ggml.pre = 'klingon-bpe'"));
  }
  SECTION("no pre-tokenizer") {
    CHECK_THAT(error_of(build({"ab"}, &merges, "")), Catch::Contains("tokenizer.ggml.pre is missing"));
  }
  SECTION("an unknown tokenizer model") {
    defkv::gguf::Writer w;
    w.set_string("tokenizer.ggml.model", "bert");
    w.set("tokenizer.ggml.tokens", strings({"a"}));
    auto bytes = w.to_bytes();
    auto f = defkv::gguf::File::from_buffer(bytes.data(), bytes.size());
    CHECK_THROWS_WITH(Tokenizer::from_gguf(*f), Catch::Contains("tokenizer.ggml.model = 'bert'"));
  }
}

TEST_CASE("llama.cpp's per-pre defaults: add_bos, smollm and friends", "[tokenizer][bpe]") {
  std::vector<std::string> merges{"a b"};
  // No add_bos_token key: llama-bpe adds BOS, qwen2 does not; a missing BOS
  // id then is an error rather than a silent id.
  CHECK_THAT(error_of(build({"ab"}, &merges, "llama-bpe")), Catch::Contains("bos_token_id is missing"));
  Built q = build({"ab"}, &merges, "qwen2");
  CHECK(!Tokenizer::from_gguf(*q.file)->add_bos());
  // smollm splits digits one by one (starcoder's regex), gpt-2 keeps runs.
  std::vector<std::string> m12{"1 2"};
  Built s2 = build({"12"}, &m12, "smollm");
  Built g2 = build({"12"}, &m12, "gpt-2");
  CHECK(Tokenizer::from_gguf(*s2.file)->encode("12", false) == std::vector<Token>{'1', '2'});
  CHECK(Tokenizer::from_gguf(*g2.file)->encode("12", false) == std::vector<Token>{256});
  CHECK(Tokenizer::from_gguf(*s2.file)->pre() == "smollm");
}

TEST_CASE("Unicode category table", "[tokenizer][bpe]") {
  using namespace defkv::text::unicode;
  CHECK(flags('A') == kLetter);
  CHECK(flags('7') == kNumber);
  CHECK(flags(' ') == (kSeparator | kWhitespace));
  CHECK(flags('\n') == (kControl | kWhitespace));
  CHECK(flags(0x85) == (kControl | kWhitespace));   // NEXT LINE
  CHECK(flags(0xA0) == (kSeparator | kWhitespace)); // NO-BREAK SPACE
  CHECK(flags(0x3000) == (kSeparator | kWhitespace));
  CHECK(flags(0x200B) == kControl);                 // ZERO WIDTH SPACE is Cf, not White_Space
  CHECK(flags(0x0660) == kNumber);                  // ARABIC-INDIC DIGIT ZERO
  CHECK(flags(0x2167) == kNumber);                  // ROMAN NUMERAL EIGHT (Nl)
  CHECK(flags(0x4E2D) == kLetter);                  // 中
  CHECK(flags(0x0301) == kMark);
  CHECK(flags(0x1F600) == kSymbol);
  CHECK(flags(0xE000) == kControl);                 // private use (Co)
  CHECK(flags(0x10FFFF) == kUndefined);             // noncharacter (Cn)
  CHECK(flags(0x110000) == kUndefined);
}

TEST_CASE("digit runs: llama-bpe groups of three, qwen2 and smollm single digits, gpt-2 whole", "[tokenizer][bpe]") {
  // ids: 256 "12", 257 "123", 258 "45", 259 "1234", 260 "12345"
  const std::vector<std::string> extra{"12", "123", "45", "1234", "12345"};
  std::vector<std::string> merges{"1 2", "12 3", "123 4", "1234 5", "4 5"};
  auto enc = [&](const std::string& pre) {
    Built b = build(extra, &merges, pre, {}, true);
    return Tokenizer::from_gguf(*b.file)->encode("12345", false);
  };
  CHECK(enc("llama-bpe") == std::vector<Token>{257, 258});
  CHECK(enc("qwen2") == std::vector<Token>{'1', '2', '3', '4', '5'});
  CHECK(enc("smollm") == std::vector<Token>{'1', '2', '3', '4', '5'});
  CHECK(enc("gpt-2") == std::vector<Token>{260});
}

TEST_CASE("Phi-3: whitespace after its special tokens is dropped (rstrip), as llama.cpp does", "[tokenizer][bpe]") {
  // Phi-3's tokenizer.json marks <|user|>, <|end|>, ... rstrip; llama.cpp
  // applies that by model name, so "<|user|>\nHi" reads as "<|user|>Hi".
  Vocab v = load(shared_vectors() + "/ggml-vocab-phi-3.gguf");
  const Tokenizer& t = *v.tok;
  REQUIRE(t.token_text(32010) == "<|user|>");
  std::vector<Token> want{32010};
  for (Token x : t.encode("Hi", false)) want.push_back(x);
  CHECK(t.encode("<|user|>\n  Hi", false, true) == want);
  // <s> is not rstrip: the space after it stays text.
  CHECK(t.encode("<s> Hi", false, true).size() > t.encode("<s>Hi", false, true).size());
  // <|end|> is an end-of-generation token of Phi-3 (besides EOS <|endoftext|>).
  CHECK(t.is_eog(32007));
  CHECK(t.is_eog(32000));
}

TEST_CASE("byte-level BPE is lossless: valid UTF-8 always, any bytes where all 256 have tokens", "[tokenizer][bpe]") {
  // Oracle: the input itself. Random strings (fixed seed) built from pieces
  // the pre-tokenizers care about, then the same with raw random bytes mixed
  // in. StarCoder's and DeepSeek's vocabularies have no token for bytes that
  // never occur in UTF-8 (0xC0, 0xFF, ...; llama.cpp drops them too and
  // refuses such input anyway), so those get valid UTF-8 only.
  const std::vector<std::string> bits{" ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "123456", "\xe3\x80\x80",
                                      "\xc2\x85", "abc", "\xe4\xb8\xad", "<|eot_id|>", "<think>", "\xc3\xb6",
                                      "\xf0\x9f\x98\x80", "\xd9\xa3", ".,!?", "\xef\xbc\x81"};
  const std::vector<std::string> bad{"\xff", "\xc3", "\xe2\x82", "\xf0\x9f\x98", "\xed\xa0\x80", "\xc0\xaf", "\x80"};
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  auto next = [&] { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; };
  std::vector<std::string> valid, any;
  for (int i = 0; i < 150; ++i) {
    std::string s, t;
    const int n = int(next() % 12);
    for (int k = 0; k < n; ++k) {
      const std::string& b = bits[next() % bits.size()];
      s += b;
      t += b;
      if (next() % 3 == 0) t += next() % 2 ? std::string(1, char(next() & 0xFF)) : bad[next() % bad.size()];
    }
    valid.push_back(s);
    any.push_back(t);
  }
  for (const char* name : {"llama-bpe", "qwen2", "gpt-2", "starcoder", "deepseek-llm"}) {
    Vocab v = load(shared_vectors() + "/ggml-vocab-" + name + ".gguf");
    const bool all_bytes = std::string(name) != "starcoder" && std::string(name) != "deepseek-llm";
    for (const auto* set : {&valid, &any}) {
      if (set == &any && !all_bytes) continue;
      for (const std::string& s : *set) {
        INFO(name << " '" << s << "'");
        for (bool parse : {false, true}) CHECK(pieces(*v.tok, v.tok->encode(s, false, parse)) == s);
      }
    }
  }
}
