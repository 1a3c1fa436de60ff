// libFuzzer target: the tokenizers (SentencePiece and byte-level BPE) on
// arbitrary bytes. Input: byte 0 picks the vocabulary (low 2 bits) and the
// flags (bit 2 add_special, bit 3 parse_special); the rest is the text.
//
// Properties:
//  - encode never throws or crashes, and every id is inside the vocabulary;
//  - piece() and decode() of those ids never throw;
//  - round trip, for valid UTF-8 text without flags (where llama.cpp's
//    tokenizers are lossless, see ../shared/testdata/tokenizers/README.md):
//    BPE: the concatenated pieces are the text (byte-level, every vocab);
//    SPM: decode() is the text (the prefix space dropped again);
//    qwen2 (no clean-up of spaces): decode() is the text as well.
#include <memory>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"
#include "runtime/text/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace defkv;

namespace {

struct Vocab {
  std::string name;
  std::vector<uint8_t> bytes;
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<text::Tokenizer> tok;
};

std::vector<Vocab>& vocabs() {
  static std::vector<Vocab> v;
  return v;
}

constexpr const char* kNames[4] = {"llama-spm", "qwen2", "llama-bpe", "gpt-2"};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string dir = fuzz::shared_dir() + "/testdata/tokenizers/";
  for (int i = 0; i < 4; ++i) {
    Vocab v;
    v.name = kNames[i];
    v.bytes = fuzz::read_file(dir + "ggml-vocab-" + v.name + ".gguf");
    v.file = gguf::File::from_buffer(v.bytes.data(), v.bytes.size());
    v.tok = text::Tokenizer::from_gguf(*v.file);
    // Seeds: llama.cpp's test inputs for this vocabulary, with each flag setting.
    for (const char* suffix : {".gguf.inp", ".gguf.extra.inp"}) {
      std::vector<std::string> cases = fuzz::split_vocab_cases(fuzz::read_file(dir + "ggml-vocab-" + v.name + suffix));
      for (size_t c = 0; c < cases.size(); ++c) {
        const uint8_t flags = uint8_t(c % 4) << 2;
        fuzz::write_seed(v.name + suffix + "." + std::to_string(c), std::string(1, char(i | flags)) + cases[c]);
      }
    }
    vocabs().push_back(std::move(v));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Vocab& v = vocabs()[data[0] & 3];
  const bool add_special = data[0] & 4, parse_special = data[0] & 8;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const text::Tokenizer& tok = *v.tok;

  const std::vector<text::Token> ids = tok.encode(text, add_special, parse_special);
  std::string pieces;
  for (text::Token t : ids) {
    if (t < 0 || size_t(t) >= tok.n_vocab())
      fuzz::die("fuzz_tokenizer", v.name + ": id " + std::to_string(t) + " outside the vocabulary");
    pieces += tok.piece(t);
  }
  const std::string decoded = tok.decode(ids);
  (void)tok.decode(ids, true);

  if (add_special || parse_special || !fuzz::valid_utf8(text)) return 0;
  if (tok.kind() == text::VocabKind::bpe && pieces != text)
    fuzz::die("fuzz_tokenizer", v.name + ": pieces of encode(x) are not x");
  if ((tok.kind() == text::VocabKind::spm || v.name == "qwen2") && decoded != text)
    fuzz::die("fuzz_tokenizer", v.name + ": decode(encode(x)) != x");
  return 0;
}
