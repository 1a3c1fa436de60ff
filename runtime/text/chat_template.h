// Chat templates: renders a conversation (role/content messages) into the
// prompt text a chat model was trained on, as the model's own Jinja chat
// template (GGUF tokenizer.chat_template) renders it with HF transformers'
// settings (trim_blocks, lstrip_blocks).
//
// The known templates are recognised by their markers, as llama.cpp's
// llama_chat_apply_template does, and each family is rendered by C++ code
// that follows its published Jinja template byte for byte. Variants inside a
// family (a default system prompt, whether BOS or the generation prompt is
// written, Llama 3.1's date header, ...) are read from the template text too.
// A template that is not recognised falls back to the "plain" format
// (recognised = false; the caller should warn):
//
//   SYSTEM\n\n                 (a system message)
//   User: CONTENT\n            (a user message)
//   Assistant: CONTENT\n       (an assistant message)
//   Assistant:                 (the generation prompt)
//
// Why recognition rather than a Jinja engine: no C++ Jinja engine is packaged
// for Debian, and a hand-written subset would meet the Python-isms of real
// templates (namespace(), [::-1], str.split/strip, tests, loop variables)
// one at a time, failing on some and mis-rendering others silently. A
// recognised family renders what its published template renders (tested
// against the templates themselves), and anything else is reported as the
// fallback, so the application can warn instead of feeding a wrong prompt.
//
// Only the roles system, user and assistant are accepted. Knows nothing of
// models beyond the template text and the BOS/EOS token texts it is given.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace defkv::text {

enum class ChatFormat { plain, chatml, qwen3, llama2, llama3, zephyr, phi3, gemma };

// A recognised template: its family and the variant details read from its text.
struct ChatTemplate {
  ChatFormat format = ChatFormat::plain;
  bool recognised = false;     // false: plain is a fallback (no or unknown template)
  bool bos = false;            // writes bos_token (llama2/llama3/gemma/phi3 legacy)
  bool generation_prompt = true;  // llama3: false when the template always ends with the assistant header
  bool thinking_switch = false;  // qwen3: the template reads enable_thinking
  std::string default_system;  // chatml: system prompt used when the conversation has none (Qwen2.5, SmolLM2)
  bool llama3_date_header = false;  // Llama 3.1/3.2: system block with "Cutting Knowledge Date"
  bool llama3_date_today = false;   //   its date is today's (strftime_now) ...
  std::string llama3_date;          //   ... else this literal ("26 Jul 2024")
  bool phi3_legacy = false;         // Phi-3 first release: no system, <|assistant|> after each user turn
  bool phi3_skip_empty_system = false;  // Phi-3.5: a system message with empty content is left out
  bool phi3_eos_at_end = false;     // Phi-3.5: eos_token ends a conversation without generation prompt
};

// Recognises a Jinja chat template by its markers; an empty or unknown text
// gives the plain format with recognised = false.
ChatTemplate detect_chat_template(std::string_view jinja);
// A format by name: plain, chatml, qwen3, llama2, llama3, zephyr, phi3, gemma
// (each the family's current published variant). Throws
// std::invalid_argument naming the known names for another name.
ChatTemplate chat_template_by_name(std::string_view name);
// True when `name` is one of the names above.
bool is_chat_format_name(std::string_view name);
const char* chat_format_name(ChatFormat f);

struct ChatMessage {
  std::string role;     // system, user or assistant
  std::string content;
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;  // end with the header that opens the assistant's reply
  bool enable_thinking = true;        // qwen3: false writes an empty <think></think> block (no reasoning)
  std::string bos_token, eos_token;   // texts of the model's BOS/EOS tokens
  std::string date;                   // llama3 date header: overrides the date ("06 Dec 2026")
};

// Renders the conversation. Throws std::invalid_argument naming the message
// for an unknown role, or when the template itself would raise (Gemma and
// Llama 2 require user/assistant turns to alternate).
std::string render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                        const ChatRenderOptions& opt);

// The text that closes an assistant turn in this format ("<|im_end|>",
// "<|eot_id|>", ...); eos_token for the formats that close turns with EOS
// (llama2, zephyr); "" for plain.
std::string chat_end_of_turn(const ChatTemplate& t, const std::string& eos_token);
// Plain only: text after which a reply is over ("\nUser:"), else "".
std::string chat_stop_text(const ChatTemplate& t);

}  // namespace defkv::text
