// Tokenizer tests against independent oracles:
//  - llama.cpp's own tokenizer test vectors for the Llama-2 SPM vocabulary
//    (ggml-vocab-llama-spm.gguf.inp/.out, produced by llama.cpp test-tokenizer-0);
//  - the stories260K greedy golden (ids -> text from an independent numpy run);
//  - the needle tasks' n_ctx_tokens (prompt lengths counted by llama.cpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"
#include "runtime/text/tokenizer.h"

using defkv::text::StreamDecoder;
using defkv::text::Token;
using defkv::text::Tokenizer;

namespace {

std::string shared_dir() {
  const char* e = std::getenv("DEFKV_SHARED");
  return e ? std::string(e) : std::string("../shared");
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FAIL("cannot open " << path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Loaded {
  std::unique_ptr<defkv::gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
};

Loaded load(const std::string& rel) {
  Loaded l;
  l.file = defkv::gguf::File::open(shared_dir() + "/models/" + rel);
  l.tok = Tokenizer::from_gguf(*l.file);
  return l;
}

// Strict UTF-8 validator (independent of the decoder's own scanner): decodes
// code points and rejects overlongs, surrogates, > U+10FFFF and truncation.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    uint32_t c = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp;
    if (c < 0x80) { n = 0; cp = c; }
    else if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; }
    else return false;
    if (i + size_t(n) >= s.size() && n > 0) return false;  // truncated
    for (int k = 1; k <= n; ++k) {
      uint32_t b = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += size_t(n) + 1;
  }
  return true;
}

// llama.cpp test file format: each case is followed by the separator.
std::vector<std::string> read_cases(const std::string& path) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::string all = read_file(path);
  std::vector<std::string> cases;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t hit = all.find(sep, pos);
    if (hit == std::string::npos) {
      cases.push_back(all.substr(pos));  // last case without a separator
      break;
    }
    cases.push_back(all.substr(pos, hit - pos));
    pos = hit + sep.size();
  }
  return cases;
}

std::vector<std::vector<Token>> read_expected(const std::string& path) {
  std::string all = read_file(path);
  std::vector<std::vector<Token>> out;
  std::istringstream lines(all);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream ls(line);
    std::vector<Token> ids;
    long v;
    while (ls >> v) ids.push_back(Token(v));
    out.push_back(ids);
  }
  return out;
}

std::string stream_decode(const Tokenizer& tok, const std::vector<Token>& ids,
                          bool* all_valid) {
  StreamDecoder sd(tok);
  std::string out;
  *all_valid = true;
  for (Token t : ids) {
    std::string part = sd.push(t);
    if (!valid_utf8(part)) *all_valid = false;
    out += part;
  }
  std::string tail = sd.flush();
  if (!valid_utf8(tail)) *all_valid = false;
  return out + tail;
}

std::string hex_of(Token b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", unsigned(b));
  return buf;
}

}  // namespace

TEST_CASE("llama-spm vocabulary reproduces llama.cpp test-tokenizer-0 cases", "[tokenizer]") {
  Loaded l = load("tokenizers/ggml-vocab-llama-spm.gguf");
  const Tokenizer& tok = *l.tok;
  REQUIRE(tok.n_vocab() == 32000);
  REQUIRE(tok.bos() == 1);
  REQUIRE(tok.eos() == 2);

  const std::string base = shared_dir() + "/models/tokenizers/ggml-vocab-llama-spm.gguf";
  std::vector<std::string> cases = read_cases(base + ".inp");
  std::vector<std::vector<Token>> expected = read_expected(base + ".out");
  REQUIRE(cases.size() == 46);
  REQUIRE(expected.size() == 46);

  int passed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<Token> got = tok.encode(cases[i], /*add_special=*/false);
    INFO("case " << i << ": '" << cases[i] << "'");
    CHECK(got == expected[i]);
    if (got == expected[i]) ++passed;
  }
  WARN("llama-spm tokenizer cases passing: " << passed << "/" << cases.size());
  CHECK(passed == 46);

  // Round trip: SentencePiece decoding restores these texts exactly.
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("case " << i << ": '" << cases[i] << "'");
    CHECK(tok.decode(expected[i]) == cases[i]);
  }

  // add_special prepends BOS (the vocabulary has add_bos_token = true).
  REQUIRE(tok.add_bos());
  std::vector<Token> with_bos = tok.encode(cases[0], true);
  REQUIRE(with_bos.size() == expected[0].size() + 1);
  CHECK(with_bos[0] == tok.bos());
  CHECK(std::vector<Token>(with_bos.begin() + 1, with_bos.end()) == expected[0]);
  CHECK(tok.encode("", true) == std::vector<Token>{tok.bos()});
  CHECK(tok.encode("", false).empty());
  CHECK(tok.decode(with_bos) == cases[0]);
}

TEST_CASE("pieces: spaces, byte tokens and control tokens", "[tokenizer]") {
  Loaded l = load("tokenizers/ggml-vocab-llama-spm.gguf");
  const Tokenizer& tok = *l.tok;
  CHECK(tok.piece(tok.bos()).empty());
  CHECK(tok.piece(tok.eos()).empty());
  CHECK(tok.piece(0).empty());  // <unk>
  // Byte tokens <0x00>..<0xFF> decode to their byte.
  for (int b = 0; b < 256; ++b) {
    Token id = Token(3 + b);
    REQUIRE(tok.token_text(id) == hex_of(Token(b)));
    CHECK(tok.piece(id) == std::string(1, char(b)));
  }
  // 15043 is "▁Hello" in the Llama-2 vocabulary (see the .out file).
  CHECK(tok.token_text(15043) == "\xE2\x96\x81Hello");
  CHECK(tok.piece(15043) == " Hello");
  CHECK_THROWS(tok.piece(Token(tok.n_vocab())));
  CHECK_THROWS(tok.piece(-1));
}

TEST_CASE("parse_special cuts control-token text out of the input", "[tokenizer]") {
  Loaded l = load("tokenizers/ggml-vocab-llama-spm.gguf");
  const Tokenizer& tok = *l.tok;
  // Without parse_special "<s>" is ordinary text.
  std::vector<Token> plain = tok.encode("<s>Hello", false);
  CHECK(std::find(plain.begin(), plain.end(), tok.bos()) == plain.end());
  // With it, "<s>" is the BOS token and the following text gets the space
  // prefix again (llama.cpp: the fragment follows a special token).
  std::vector<Token> special = tok.encode("<s>Hello", false, true);
  std::vector<Token> want{tok.bos()};
  for (Token t : tok.encode("Hello", false)) want.push_back(t);
  CHECK(special == want);
  std::vector<Token> mid = tok.encode("Hello</s> world", false, true);
  std::vector<Token> want_mid = tok.encode("Hello", false);
  want_mid.push_back(tok.eos());
  for (Token t : tok.encode(" world", false)) want_mid.push_back(t);
  CHECK(mid == want_mid);
}

TEST_CASE("gpt2 vocabularies load as byte-level BPE", "[tokenizer]") {
  Loaded l = load("tokenizers/ggml-vocab-gpt-2.gguf");
  CHECK(l.tok->kind() == defkv::text::VocabKind::bpe);
  CHECK(l.tok->pre() == "gpt-2");
  CHECK(l.tok->n_vocab() == 50257);
}

TEST_CASE("stories260K: golden greedy ids decode to the golden text", "[tokenizer]") {
  Loaded l = load("stories260K/stories260K.gguf");
  const Tokenizer& tok = *l.tok;
  REQUIRE(tok.n_vocab() == 512);
  CHECK(tok.bos() == 1);
  CHECK(tok.eos() == 2);

  auto j = nlohmann::json::parse(read_file(shared_dir() + "/models/stories260K/golden_greedy.json"));
  std::vector<Token> ids = j.at("greedy_ids_after_bos").get<std::vector<Token>>();
  std::string text = j.at("greedy_text").get<std::string>();
  REQUIRE(ids.size() == 256);

  CHECK(tok.decode(ids) == text);
  // BOS in front changes nothing.
  std::vector<Token> with_bos{tok.bos()};
  with_bos.insert(with_bos.end(), ids.begin(), ids.end());
  CHECK(tok.decode(with_bos) == text);

  // Round trip through encode (the ids may differ from the model's choices,
  // the text may not).
  std::vector<Token> enc = tok.encode(text, true);
  REQUIRE(!enc.empty());
  CHECK(enc[0] == tok.bos());
  CHECK(tok.decode(enc) == text);

  bool valid = false;
  CHECK(stream_decode(tok, ids, &valid) == text);
  CHECK(valid);
}

TEST_CASE("needle prompts encode to llama.cpp's token counts", "[tokenizer]") {
  Loaded l = load("needle/needle-llama-0.9M-f32.gguf");
  const Tokenizer& tok = *l.tok;
  // n_ctx_tokens is the prompt length llama.cpp saw (BOS included).
  for (auto [file, n_expected] : {std::pair<const char*, int>{"example_tasks.jsonl", 60},
                                  std::pair<const char*, int>{"eval_tasks.jsonl", 160}}) {
    std::ifstream in(shared_dir() + "/models/needle/" + file);
    REQUIRE(in);
    std::string line;
    int n_tasks = 0, n_match = 0;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line);
      std::string prompt = j.at("prompt").get<std::string>();
      size_t want = j.at("n_ctx_tokens").get<size_t>();
      std::vector<Token> ids = tok.encode(prompt, true);
      INFO(file << " seed " << j.at("seed").get<int>());
      CHECK(ids.size() == want);
      CHECK(ids.front() == tok.bos());
      CHECK(tok.decode(ids) == prompt);
      // Every needle starts at its recorded token position.
      for (const auto& nd : j.at("needles")) {
        size_t pos = nd.at("token_pos").get<size_t>();
        REQUIRE(pos < ids.size());
        std::string from_pos;
        for (size_t k = pos; k < ids.size() && from_pos.size() < 64; ++k) from_pos += tok.piece(ids[k]);
        std::string needle = "The secret number of the " + nd.at("key").get<std::string>() +
                             " is " + nd.at("digits").get<std::string>() + ".";
        INFO("needle '" << needle << "' at token " << pos << ": '" << from_pos << "'");
        CHECK((from_pos.rfind(needle, 0) == 0 || from_pos.rfind(" " + needle, 0) == 0));
      }
      ++n_tasks;
      if (ids.size() == want) ++n_match;
    }
    CHECK(n_tasks == n_expected);
    WARN("needle " << file << ": prompts with llama.cpp's token count: " << n_match << "/"
                   << n_tasks);
  }
}

TEST_CASE("StreamDecoder holds back partial UTF-8 and matches decode()", "[tokenizer]") {
  Loaded l = load("tokenizers/ggml-vocab-llama-spm.gguf");
  const Tokenizer& tok = *l.tok;
  auto byte_tok = [&](int b) { return Token(3 + b); };

  SECTION("multi-byte texts: concatenation equals decode, every push valid") {
    std::vector<std::string> texts = read_cases(
        shared_dir() + "/models/tokenizers/ggml-vocab-llama-spm.gguf.inp");
    texts.push_back("\xF0\x9F\x9A\x80 rocket, \xE1\x9E\x80\xE1\x9E\xB6 Khmer, "
                    "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xE4\xBD\xA0\xE5\xA5\xBD");
    int n_multibyte = 0;
    for (const std::string& t : texts) {
      std::vector<Token> ids = tok.encode(t, true);
      bool valid = false;
      std::string streamed = stream_decode(tok, ids, &valid);
      INFO("text '" << t << "'");
      CHECK(streamed == tok.decode(ids));
      CHECK(valid);
      bool has_multibyte = false;
      for (char c : t) has_multibyte |= static_cast<unsigned char>(c) >= 0x80;
      n_multibyte += has_multibyte;
    }
    CHECK(n_multibyte >= 8);
  }

  SECTION("an emoji split into four byte tokens appears once complete") {
    // U+1F680 ROCKET = F0 9F 9A 80; the vocabulary has no token for it.
    std::vector<Token> ids = tok.encode("\xF0\x9F\x9A\x80", false);
    REQUIRE(ids == std::vector<Token>{29871, byte_tok(0xF0), byte_tok(0x9F), byte_tok(0x9A),
                                      byte_tok(0x80)});
    StreamDecoder sd(tok, /*strip_leading_space=*/false);
    CHECK(sd.push(ids[0]) == " ");
    CHECK(sd.push(ids[1]).empty());
    CHECK(sd.push(ids[2]).empty());
    CHECK(sd.push(ids[3]).empty());
    CHECK(sd.push(ids[4]) == "\xF0\x9F\x9A\x80");
    CHECK(sd.flush().empty());
  }

  SECTION("invalid sequences become U+FFFD") {
    const std::string fffd = "\xEF\xBF\xBD";
    StreamDecoder sd(tok, false);
    CHECK(sd.push(byte_tok(0x80)) == fffd);           // stray continuation byte
    CHECK(sd.push(byte_tok(0xE4)).empty());           // lead of a 3-byte sequence
    CHECK(sd.push(byte_tok('A')) == fffd + "A");      // broken by ASCII
    CHECK(sd.push(byte_tok(0xC0)) == fffd);           // never-valid lead byte
    CHECK(sd.push(byte_tok(0xED)).empty());
    CHECK(sd.push(byte_tok(0xA0)) == fffd + fffd);    // surrogate: ED then A0
    CHECK(sd.push(byte_tok(0xF0)).empty());
    CHECK(sd.push(byte_tok(0x9F)).empty());
    CHECK(sd.flush() == fffd);                        // truncated at the end
    CHECK(sd.flush().empty());
  }

  SECTION("the first piece loses the prefix space, later ones keep theirs") {
    std::vector<Token> ids = tok.encode("Hello world", true);
    StreamDecoder sd(tok);
    std::string out;
    for (Token t : ids) out += sd.push(t);
    CHECK(out == "Hello world");
    StreamDecoder cont(tok, false);
    std::string out2;
    for (Token t : tok.encode("Hello world", false)) out2 += cont.push(t);
    CHECK(out2 == " Hello world");
  }
}
