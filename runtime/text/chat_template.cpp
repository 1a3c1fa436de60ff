// Recognising chat templates by their markers, and the formats by name.
// Rendering is in chat_render.cpp.
#include "runtime/text/chat_template.h"

#include <stdexcept>

namespace defkv::text {
namespace {

bool has(std::string_view s, std::string_view what) { return s.find(what) != std::string_view::npos; }

// Unescapes the body of a Jinja (Python-style) string literal: \n \t \r \\ \' \".
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The default system prompt of a ChatML template: a string literal that
// writes a whole system turn, '<|im_start|>system\nTEXT<|im_end|>' (Qwen2.5's
// "You are Qwen, ...", SmolLM2's "You are a helpful AI assistant named
// SmolLM, ..."). A literal that closes before <|im_end|> (the system turn of
// a message, '<|im_start|>system\n' + content) does not count.
std::string chatml_default_system(std::string_view j) {
  const std::string_view head = "<|im_start|>system";
  for (size_t at = j.find(head); at != std::string_view::npos; at = j.find(head, at + 1)) {
    const char quote = at > 0 ? j[at - 1] : '\0';
    if (quote != '\'' && quote != '"') continue;
    size_t p = at + head.size();
    if (j.compare(p, 2, "\\n") == 0) p += 2;
    else if (p < j.size() && j[p] == '\n') p += 1;
    else continue;
    const size_t end = j.find("<|im_end|>", p);
    if (end == std::string_view::npos) break;
    const std::string_view body = j.substr(p, end - p);
    bool closed = false;  // an unescaped quote ends the literal inside body
    for (size_t k = 0; k < body.size() && !closed; ++k) {
      if (body[k] == '\\') ++k;
      else closed = body[k] == quote;
    }
    if (body.empty() || closed) continue;
    return unescape(body);
  }
  return "";
}

// Llama 3.1's default date: `set date_string = "26 Jul 2024"`.
std::string llama3_default_date(std::string_view j) {
  for (const std::string_view key : {"date_string = \"", "date_string = '"}) {
    const size_t at = j.find(key);
    if (at == std::string_view::npos) continue;
    const size_t p = at + key.size();
    const size_t end = j.find(key.back(), p);
    if (end != std::string_view::npos) return std::string(j.substr(p, end - p));
  }
  return "26 Jul 2024";
}

}  // namespace

ChatTemplate detect_chat_template(std::string_view j) {
  ChatTemplate t;
  if (j.empty()) return t;
  t.recognised = true;
  t.bos = has(j, "bos_token");
  if (has(j, "<|im_start|>") && !has(j, "<|im_sep|>")) {  // <|im_sep|>: Phi-4, another format
    // Qwen3's thinking-aware template: history turns lose their <think>
    // block, the turns after the last user query keep it.
    if (has(j, "reasoning_content") && has(j, "last_query_index")) {
      t.format = ChatFormat::qwen3;
      t.thinking_switch = has(j, "enable_thinking");
    } else if (has(j, "</think>")) {
      t = ChatTemplate{};  // another reasoning template (QwQ, DeepSeek-R1 distills): not plain ChatML
    } else {
      t.format = ChatFormat::chatml;
      t.default_system = chatml_default_system(j);
    }
  } else if (has(j, "<|start_header_id|>")) {
    t.format = ChatFormat::llama3;
    // Meta's first Llama 3 template writes the assistant header whatever
    // add_generation_prompt says.
    t.generation_prompt = has(j, "add_generation_prompt");
    if (has(j, "Cutting Knowledge Date")) {
      t.llama3_date_header = true;
      t.llama3_date_today = has(j, "strftime_now");
      t.llama3_date = llama3_default_date(j);
    }
  } else if (has(j, "<start_of_turn>")) {
    t.format = ChatFormat::gemma;
  } else if (has(j, "<|user|>") && has(j, "<|end|>")) {
    t.format = ChatFormat::phi3;
    t.phi3_legacy = !has(j, "<|system|>") && !has(j, "message['role'] + '|>'");
    t.phi3_skip_empty_system = has(j, "'system' and message['content']");
    t.phi3_eos_at_end = has(j, "eos_token");
  } else if (has(j, "<|user|>") && has(j, "<|assistant|>") && has(j, "eos_token")) {
    t.format = ChatFormat::zephyr;
  } else if (has(j, "[INST]") && has(j, "<<SYS>>") && !has(j, "set system_message = '")) {
    // (A Llama 2 template with a default system prompt literal, HF's old
    // default_chat_template and its fine-tunes, is not this one.)
    t.format = ChatFormat::llama2;
  } else {
    t = ChatTemplate{};  // unknown: plain, not recognised
  }
  return t;
}

bool is_chat_format_name(std::string_view name) {
  for (const ChatFormat f : {ChatFormat::plain, ChatFormat::chatml, ChatFormat::qwen3, ChatFormat::llama2,
                             ChatFormat::llama3, ChatFormat::zephyr, ChatFormat::phi3, ChatFormat::gemma})
    if (name == chat_format_name(f)) return true;
  return false;
}

ChatTemplate chat_template_by_name(std::string_view name) {
  ChatTemplate t;
  t.recognised = true;
  if (name == "plain") {
    t.format = ChatFormat::plain;
  } else if (name == "chatml") {
    t.format = ChatFormat::chatml;
  } else if (name == "qwen3") {
    t.format = ChatFormat::qwen3;
    t.thinking_switch = true;
  } else if (name == "llama2") {
    t.format = ChatFormat::llama2;
    t.bos = true;
  } else if (name == "llama3") {
    t.format = ChatFormat::llama3;
    t.bos = true;
  } else if (name == "zephyr") {
    t.format = ChatFormat::zephyr;
  } else if (name == "phi3") {
    t.format = ChatFormat::phi3;
    t.phi3_skip_empty_system = true;
    t.phi3_eos_at_end = true;
  } else if (name == "gemma") {
    t.format = ChatFormat::gemma;
    t.bos = true;
  } else {
    throw std::invalid_argument("unknown chat template '" + std::string(name) +
                                "' (plain, chatml, qwen3, llama2, llama3, zephyr, phi3, gemma)");
  }
  return t;
}

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::plain: return "plain";
    case ChatFormat::chatml: return "chatml";
    case ChatFormat::qwen3: return "qwen3";
    case ChatFormat::llama2: return "llama2";
    case ChatFormat::llama3: return "llama3";
    case ChatFormat::zephyr: return "zephyr";
    case ChatFormat::phi3: return "phi3";
    case ChatFormat::gemma: return "gemma";
  }
  return "plain";
}

std::string chat_end_of_turn(const ChatTemplate& t, const std::string& eos_token) {
  switch (t.format) {
    case ChatFormat::chatml:
    case ChatFormat::qwen3: return "<|im_end|>";
    case ChatFormat::llama3: return "<|eot_id|>";
    case ChatFormat::gemma: return "<end_of_turn>";
    case ChatFormat::phi3: return "<|end|>";
    case ChatFormat::llama2:
    case ChatFormat::zephyr: return eos_token;
    case ChatFormat::plain: return "";
  }
  return "";
}

std::string chat_stop_text(const ChatTemplate& t) { return t.format == ChatFormat::plain ? "\nUser:" : ""; }

}  // namespace defkv::text
