// Pre-tokenizers of byte-level BPE vocabularies (GGUF tokenizer.ggml.pre):
// split text into words before the BPE merges run, as llama.cpp's regexes do,
// with hand-written matchers over code points (no regex engine).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace defkv::text {

enum class PreKind {
  llama3,        // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  qwen2,         // the same with \p{N} (single digits)
  gpt2,          // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  starcoder,     // \p{N} (each digit alone), then gpt2
  deepseek_llm,  // [\r\n], \s?[cased letters]+, \s?[ASCII/fullwidth punctuation]+, \s+$, [CJK]+, \p{N}+
};

// What a tokenizer.ggml.pre value selects, with llama.cpp's per-pre defaults.
struct PreConfig {
  PreKind kind;
  bool ignore_merges;  // a word that is itself a token is emitted whole
  bool clean_spaces;   // decode drops the space before . , ? ! and 's 'm 're 've
  bool add_bos;        // default when the GGUF has no tokenizer.ggml.add_bos_token
};

// Throws std::runtime_error naming `pre` when it is not supported; the
// message lists the supported values.
PreConfig pre_config(std::string_view pre);

// Splits text into words (views into text, in order, covering it exactly).
void pretokenize(PreKind kind, std::string_view text, std::vector<std::string_view>& words);

}  // namespace defkv::text
