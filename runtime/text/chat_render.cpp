// Rendering a conversation in each recognised chat format. Every function
// follows its family's published Jinja template, statement by statement; the
// comment above each names the template. Jinja's `trim` filter and Python's
// str.strip() remove what Python calls whitespace (str.isspace), Unicode
// spaces included, as HF transformers' jinja2 does.
#include <cstdint>
#include <ctime>
#include <stdexcept>

#include "runtime/text/chat_template.h"

namespace defkv::text {
namespace {

using Messages = std::vector<ChatMessage>;

// Python's str.isspace() code points.
bool is_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}
// Length in bytes of the whitespace character at s[i] (0 if none). Invalid
// UTF-8 is never whitespace.
size_t space_at(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return uint32_t(uint8_t(s[k])); };
  const uint32_t c0 = b(i);
  if (c0 < 0x80) return is_space(c0) ? 1 : 0;
  const size_t n = c0 >= 0xf0 ? 4 : c0 >= 0xe0 ? 3 : c0 >= 0xc0 ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  uint32_t c = c0 & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
    c = (c << 6) | (b(i + k) & 0x3f);
  }
  return is_space(c) ? n : 0;
}
// Python's str.strip() without arguments (Jinja's trim filter).
std::string strip(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    const size_t n = space_at(s, b);
    if (n == 0) break;
    b += n;
  }
  while (e > b) {
    size_t start = e - 1;  // the first byte of the last character
    while (start > b && (uint8_t(s[start]) & 0xc0) == 0x80 && e - start < 4) --start;
    const size_t n = space_at(s, start);
    if (n == 0 || start + n != e) break;
    e = start;
  }
  return std::string(s.substr(b, e - b));
}
std::string strip(std::string_view s, std::string_view chars) {
  const size_t b = s.find_first_not_of(chars);
  if (b == std::string_view::npos) return "";
  return std::string(s.substr(b, s.find_last_not_of(chars) - b + 1));
}
std::string lstrip(std::string_view s, std::string_view chars) {
  const size_t b = s.find_first_not_of(chars);
  return b == std::string_view::npos ? "" : std::string(s.substr(b));
}
std::string rstrip(std::string_view s, std::string_view chars) {
  const size_t e = s.find_last_not_of(chars);
  return e == std::string_view::npos ? "" : std::string(s.substr(0, e + 1));
}
bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

[[noreturn]] void alternation_error(size_t i) {
  throw std::invalid_argument("message " + std::to_string(i) +
                              ": conversation roles must alternate user/assistant/user/assistant/... "
                              "(after an optional first system message), as the chat template requires");
}

// The fallback (documented in chat_template.h).
std::string render_plain(const Messages& ms, const ChatRenderOptions& o) {
  std::string s;
  for (const ChatMessage& m : ms) {
    if (m.role == "system") s += m.content + "\n\n";
    else if (m.role == "user") s += "User: " + m.content + "\n";
    else s += "Assistant: " + m.content + "\n";
  }
  if (o.add_generation_prompt) s += "Assistant:";
  return s;
}

// ChatML, as in teknium/OpenHermes-2.5-Mistral-7B; with a default system
// prompt written when the first message is not a system one, as in
// Qwen/Qwen2.5-*-Instruct (no tools) and HuggingFaceTB/SmolLM2-*-Instruct.
std::string render_chatml(const ChatTemplate& t, const Messages& ms, const ChatRenderOptions& o) {
  std::string s;
  if (!t.default_system.empty() && !ms.empty() && ms[0].role != "system")
    s += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
  for (const ChatMessage& m : ms) s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (o.add_generation_prompt) s += "<|im_start|>assistant\n";
  return s;
}

// Qwen/Qwen3-* (tokenizer_config.json chat_template; ../shared/testdata/
// tokenizers/ggml-vocab-qwen2.chat_template.jinja), without tools: reasoning
// in an assistant message is the text between <think> and </think>; it is
// kept only for the turns after the last user query.
std::string render_qwen3(const ChatTemplate& t, const Messages& ms, const ChatRenderOptions& o) {
  std::string s;
  if (!ms.empty() && ms[0].role == "system") s += "<|im_start|>system\n" + ms[0].content + "<|im_end|>\n";
  size_t last_query = ms.empty() ? 0 : ms.size() - 1;
  for (size_t k = ms.size(); k-- > 0;) {
    const std::string& c = ms[k].content;
    if (ms[k].role == "user" && !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < ms.size(); ++i) {
    const ChatMessage& m = ms[i];
    if (m.role == "user" || (m.role == "system" && i > 0)) {
      s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content = m.content, reasoning;
      const size_t close = m.content.rfind("</think>");
      if (close != std::string::npos) {
        content = lstrip(std::string_view(m.content).substr(close + 8), "\n");  // split('</think>')[-1]
        const std::string before = rstrip(m.content.substr(0, m.content.find("</think>")), "\n");
        const size_t open = before.rfind("<think>");
        reasoning = lstrip(open == std::string::npos ? before : before.substr(open + 7), "\n");
      }
      if (i > last_query && (i + 1 == ms.size() || !reasoning.empty()))
        s += "<|im_start|>assistant\n<think>\n" + strip(reasoning, "\n") + "\n</think>\n\n" + lstrip(content, "\n");
      else
        s += "<|im_start|>assistant\n" + content;
      s += "<|im_end|>\n";
    }
  }
  if (o.add_generation_prompt) {
    s += "<|im_start|>assistant\n";
    if (t.thinking_switch && !o.enable_thinking) s += "<think>\n\n</think>\n\n";
  }
  return s;
}

std::string today() {
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::strftime(buf, sizeof buf, "%d %b %Y", &tm);
  return buf;
}

// Meta-Llama-3-8B-Instruct (first release; ../shared/testdata/tokenizers/
// ggml-vocab-llama-bpe.chat_template.jinja) and, with the date header,
// meta-llama/Llama-3.1-8B-Instruct and Llama-3.2-1B/3B-Instruct (no tools).
std::string render_llama3(const ChatTemplate& t, const Messages& ms, const ChatRenderOptions& o) {
  std::string s;
  size_t first = 0;
  if (t.llama3_date_header) {
    if (t.bos) s += o.bos_token;
    std::string system;
    if (!ms.empty() && ms[0].role == "system") {
      system = strip(ms[0].content);
      first = 1;
    }
    const std::string date = !o.date.empty() ? o.date : t.llama3_date_today ? today() : t.llama3_date;
    s += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: " + date +
         "\n\n" + system + "<|eot_id|>";
  }
  for (size_t i = first; i < ms.size(); ++i) {
    if (i == 0 && t.bos && !t.llama3_date_header) s += o.bos_token;
    s += "<|start_header_id|>" + ms[i].role + "<|end_header_id|>\n\n" + strip(ms[i].content) + "<|eot_id|>";
  }
  if (o.add_generation_prompt || !t.generation_prompt) s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return s;
}

// google/gemma-3-*-it (../shared/testdata/tokenizers/gemma3.chat_template.jinja)
// and google/gemma-2-*-it. Gemma 2's template raises on a system message;
// here it is folded into the first user turn as Gemma 3's template does.
std::string render_gemma(const ChatTemplate& t, const Messages& ms, const ChatRenderOptions& o) {
  std::string s = t.bos ? o.bos_token : "";
  std::string first_user_prefix;
  size_t first = 0;
  if (!ms.empty() && ms[0].role == "system") {
    first_user_prefix = ms[0].content + "\n\n";
    first = 1;
  }
  for (size_t i = first; i < ms.size(); ++i) {
    const ChatMessage& m = ms[i];
    if ((m.role == "user") != ((i - first) % 2 == 0)) alternation_error(i);
    s += "<start_of_turn>" + (m.role == "assistant" ? std::string("model") : m.role) + "\n" +
         (i == first ? first_user_prefix : "") + strip(m.content) + "<end_of_turn>\n";
  }
  if (o.add_generation_prompt) s += "<start_of_turn>model\n";
  return s;
}

// microsoft/Phi-3.5-mini-instruct and Phi-3-mini-*-instruct (June 2024
// update); with phi3_legacy, the first Phi-3-mini/medium release (system
// messages dropped, the assistant header written after each user turn).
std::string render_phi3(const ChatTemplate& t, const Messages& ms, const ChatRenderOptions& o) {
  std::string s = t.bos ? o.bos_token : "";
  if (t.phi3_legacy) {
    for (const ChatMessage& m : ms) {
      if (m.role == "user") s += "<|user|>\n" + m.content + "<|end|>\n<|assistant|>\n";
      else if (m.role == "assistant") s += m.content + "<|end|>\n";
    }
    return s;
  }
  for (const ChatMessage& m : ms) {
    if (m.role == "system" && m.content.empty() && t.phi3_skip_empty_system) continue;
    s += "<|" + m.role + "|>\n" + m.content + "<|end|>\n";
  }
  if (o.add_generation_prompt) s += "<|assistant|>\n";
  else if (t.phi3_eos_at_end) s += o.eos_token;
  return s;
}

// HuggingFaceH4/zephyr-7b-beta (also TinyLlama-1.1B-Chat-v1.0's template).
// The generation prompt is written inside the message loop, so not for an
// empty conversation.
std::string render_zephyr(const Messages& ms, const ChatRenderOptions& o) {
  std::string s;
  for (const ChatMessage& m : ms) s += "<|" + m.role + "|>\n" + m.content + o.eos_token + "\n";
  if (o.add_generation_prompt && !ms.empty()) s += "<|assistant|>\n";
  return s;
}

// meta-llama/Llama-2-7b-chat-hf: the system prompt goes inside the first
// [INST]; BOS before each user turn, EOS after each reply; there is no
// generation prompt (a conversation ending with a user turn ends with [/INST]).
std::string render_llama2(const ChatTemplate& t, const Messages& ms, const ChatRenderOptions& o) {
  std::string s, system;
  size_t first = 0;
  bool has_system = false;
  if (!ms.empty() && ms[0].role == "system") {
    system = ms[0].content;
    has_system = true;
    first = 1;
  }
  for (size_t i = first; i < ms.size(); ++i) {
    const ChatMessage& m = ms[i];
    if ((m.role == "user") != ((i - first) % 2 == 0)) alternation_error(i);
    const std::string content =
        i == first && has_system ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + m.content : m.content;
    if (m.role == "user") {
      if (t.bos) s += o.bos_token;
      s += "[INST] " + strip(content) + " [/INST]";
    } else if (m.role == "assistant") {
      s += ' ';
      s += strip(content) + " " + o.eos_token;
    }
  }
  return s;
}

}  // namespace

std::string render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& ms, const ChatRenderOptions& o) {
  for (size_t i = 0; i < ms.size(); ++i)
    if (ms[i].role != "system" && ms[i].role != "user" && ms[i].role != "assistant")
      throw std::invalid_argument("message " + std::to_string(i) + ": unknown role '" + ms[i].role +
                                  "' (system, user or assistant)");
  switch (t.format) {
    case ChatFormat::plain: return render_plain(ms, o);
    case ChatFormat::chatml: return render_chatml(t, ms, o);
    case ChatFormat::qwen3: return render_qwen3(t, ms, o);
    case ChatFormat::llama3: return render_llama3(t, ms, o);
    case ChatFormat::gemma: return render_gemma(t, ms, o);
    case ChatFormat::phi3: return render_phi3(t, ms, o);
    case ChatFormat::zephyr: return render_zephyr(ms, o);
    case ChatFormat::llama2: return render_llama2(t, ms, o);
  }
  throw std::logic_error("render_chat: unhandled chat format");
}

}  // namespace defkv::text
