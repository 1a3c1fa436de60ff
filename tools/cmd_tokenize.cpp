// `defkv tokenize -m MODEL (-p TEXT | -f FILE) [--no-bos] [--special] [--ids]`:
// prints the token ids of a text, like llama.cpp's llama-tokenize. Works on
// vocabulary-only GGUFs too (only the tokenizer.* metadata is read).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"
#include "runtime/text/tokenizer.h"
#include "tools/commands.h"

namespace defkv::cli {
namespace {

struct TokenizeOptions {
  std::string model;
  std::string prompt;
  std::string file;
  bool no_bos = false;
  bool special = false;
  bool ids = false;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read prompt file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int run_tokenize(const TokenizeOptions& o) {
  const std::string text = o.file.empty() ? o.prompt : read_bytes(o.file);
  auto file = gguf::File::open(o.model);
  auto tok = text::Tokenizer::from_gguf(*file);
  const std::vector<text::Token> ids = tok->encode(text, !o.no_bos, o.special);
  if (o.ids) {
    std::string line = "[";
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? ", " : "") + std::to_string(ids[i]);
    line += "]\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
    return 0;
  }
  // One line per token: the id and its piece, control tokens as their text
  // (llama-tokenize's "%6d -> '%s'"). Pieces are raw bytes: a character split
  // over byte tokens shows up in parts.
  for (text::Token id : ids) {
    const std::string piece = tok->piece(id, /*special=*/true);
    std::printf("%6d -> '", id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::printf("'\n");
  }
  return 0;
}

}  // namespace

Handler register_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* sub = app.add_subcommand("tokenize", "Print the token ids of a text (and each token's piece)");
  sub->add_option("-m,--model", o->model, "GGUF model or vocabulary-only file")->required()->check(CLI::ExistingFile);
  auto* p = sub->add_option("-p,--prompt", o->prompt, "Text to tokenize");
  auto* f = sub->add_option("-f,--file", o->file, "Read the text from this file (bytes as they are)")
                ->check(CLI::ExistingFile);
  p->excludes(f);
  f->excludes(p);
  sub->add_flag("--no-bos", o->no_bos, "Do not add BOS/EOS even where the vocabulary asks for them");
  sub->add_flag("--special", o->special,
                "Parse special-token text (e.g. <|eot_id|>, <|im_start|>) into its control token");
  sub->add_flag("--ids", o->ids, "Print only the ids, as [1, 2, 3]");
  sub->callback([sub, p, f] {
    if (p->count() == 0 && f->count() == 0) throw CLI::RequiredError("-p TEXT or -f FILE");
  });
  return [o] { return run_tokenize(*o); };
}

}  // namespace defkv::cli
