// The conversation of `defkv chat` as text: its messages, rendered with the
// model's chat template through the C API (defkv_chat_apply_template), and
// the text the model has already been fed, so each turn feeds only what the
// new rendering adds.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"

namespace defkv::cli {

class ChatSession {
 public:
  // tmpl: nullopt for the model's own template, else a format name or the
  // text of a Jinja template. flags: DEFKV_CHAT_DISABLE_THINKING or 0.
  ChatSession(const defkv_model* model, std::optional<std::string> tmpl, uint32_t flags, std::string system);

  const defkv_chat_template_info& info() const { return info_; }

  // Adds the user's message and returns the text to feed: the rendered
  // conversation (with the generation prompt) past what the model has seen.
  // When the template rewrote the history the model has seen (a reply
  // trimmed, Qwen3's reasoning dropped), the model keeps its own version and
  // the new text starts after the end-of-turn marker that closes it.
  std::string begin_turn(const std::string& user);
  // Records the reply: `shown` (the history's content), `raw` (every byte
  // generated, as fed), `closed` (the reply ended with the end-of-turn token
  // or EOS, which the model is fed too).
  void end_turn(const std::string& shown, const std::string& raw, bool closed);
  void reset();
  // The session beside a saved state: PATH.chat (JSON). load() returns false
  // when there is no such file (the history is then empty).
  void save(const std::string& state_path) const;
  bool load(const std::string& state_path);

 private:
  std::string render() const;
  std::string render(const std::vector<std::pair<std::string, std::string>>& messages) const;
  // Offset in render() where the last assistant message's content ends
  // (npos when there is none).
  size_t end_of_last_reply() const;

  const defkv_model* model_;
  std::optional<std::string> tmpl_;
  uint32_t flags_;
  defkv_chat_template_info info_{};
  std::vector<std::pair<std::string, std::string>> messages_;  // role, content
  std::string fed_;     // text the model has been fed so far
  bool closed_ = true;  // fed_ ends with a closed assistant turn (or nothing)
  std::string system_;
};

}  // namespace defkv::cli
