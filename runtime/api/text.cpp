// The C API's text side: tokenizing and detokenizing with the model's
// tokenizer, token pieces and end-of-generation tokens, and chat templates
// (the model's own, a named format or caller-given Jinja text) rendered and
// described.
#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "runtime/api/defkv.h"
#include "runtime/api/internal.h"
#include "runtime/gguf/gguf.h"
#include "runtime/text/chat_template.h"
#include "runtime/text/tokenizer.h"

using namespace defkv;
using namespace defkv::api;

namespace {

// The text of a special token (its piece is empty), "" for no token.
std::string special_text(const text::Tokenizer& tok, int32_t id) {
  return id >= 0 && size_t(id) < tok.n_vocab() ? tok.token_text(id) : std::string();
}

// The template defkv_chat_* use for (model, tmpl): tmpl NULL -> the model's
// tokenizer.chat_template; a format name -> that format; else Jinja text.
text::ChatTemplate chat_template_for(const ModelImpl& m, const char* tmpl, bool* has_template) {
  if (tmpl) {
    *has_template = true;
    if (text::is_chat_format_name(tmpl)) return text::chat_template_by_name(tmpl);
    return text::detect_chat_template(tmpl);
  }
  const gguf::Value* v = m.model->file().find("tokenizer.chat_template");
  const std::string* s = v ? std::get_if<std::string>(&v->v) : nullptr;
  if (v && !s) raise(DEFKV_ERR_FORMAT, "metadata key tokenizer.chat_template is not a string");
  *has_template = s && !s->empty();
  return text::detect_chat_template(s ? std::string_view(*s) : std::string_view());
}

void copy_field(char* dst, size_t cap, const std::string& src, const char* field) {
  if (src.size() + 1 > cap)
    raise(DEFKV_ERR_FORMAT, std::string(field) + " text of " + std::to_string(src.size()) + " bytes does not fit (" +
                                std::to_string(cap - 1) + " at most)");
  std::memcpy(dst, src.c_str(), src.size() + 1);
}

}  // namespace

extern "C" {

// ---- tokenizer ----

defkv_status defkv_tokenize(const defkv_model* model, const char* text, int64_t len, int add_bos, int parse_special,
                            int32_t* tokens, size_t capacity, size_t* n_out) {
  return model_call(model, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!text && len != 0) raise(DEFKV_ERR_INVALID_ARGUMENT, "text is NULL");
    const std::string_view sv = !text ? std::string_view() : len < 0 ? std::string_view(text) : std::string_view(text, size_t(len));
    const std::vector<int32_t> t = model->impl->tok->encode(sv, add_bos != 0, parse_special != 0);
    if (!n_out) raise(DEFKV_ERR_INVALID_ARGUMENT, "n_out is NULL");
    if (tokens == nullptr && capacity == 0) {
      *n_out = t.size();
      return DEFKV_OK;  // size query
    }
    return put_array(t, tokens, capacity, n_out);
  });
}

defkv_status defkv_detokenize(const defkv_model* model, const int32_t* tokens, size_t n_tokens, char* buf,
                              size_t capacity, size_t* out_len) {
  return model_call(model, __func__, DEFKV_ERR_INTERNAL, [&] {
    check_tokens(*model->impl, tokens, n_tokens);
    text::StreamDecoder dec(*model->impl->tok);
    std::string s;
    for (size_t i = 0; i < n_tokens; ++i) s += dec.push(tokens[i]);
    s += dec.flush();
    return put_string(s, buf, capacity, out_len);
  });
}

int defkv_token_is_eog(const defkv_model* model, int32_t token) {
  if (!reg_has(model, Kind::model)) return 0;
  return model->impl->tok->is_eog(token) ? 1 : 0;
}

defkv_status defkv_token_piece(const defkv_model* model, int32_t token, char* buf, size_t capacity,
                               size_t* out_len) {
  return model_call(model, __func__, DEFKV_ERR_INTERNAL, [&] {
    check_tokens(*model->impl, &token, 1);
    return put_string(model->impl->tok->piece(token), buf, capacity, out_len);
  });
}

// ---- chat templates ----

defkv_status defkv_chat_apply_template(const defkv_model* model, const char* tmpl, const defkv_chat_message* messages,
                                       size_t n_messages, uint32_t flags, char* buf, size_t capacity,
                                       size_t* out_len) {
  return model_call(model, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!messages && n_messages > 0) raise(DEFKV_ERR_INVALID_ARGUMENT, "messages is NULL");
    if (flags & ~(DEFKV_CHAT_ADD_GENERATION_PROMPT | DEFKV_CHAT_DISABLE_THINKING))
      raise(DEFKV_ERR_INVALID_ARGUMENT, "unknown flags " + std::to_string(flags));
    std::vector<text::ChatMessage> ms(n_messages);
    for (size_t i = 0; i < n_messages; ++i) {
      if (!messages[i].role) raise(DEFKV_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + ": role is NULL");
      if (!messages[i].content)
        raise(DEFKV_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + ": content is NULL");
      ms[i] = {messages[i].role, messages[i].content};
    }
    const ModelImpl& m = *model->impl;
    bool has_template = false;
    const text::ChatTemplate t = chat_template_for(m, tmpl, &has_template);
    text::ChatRenderOptions o;
    o.add_generation_prompt = (flags & DEFKV_CHAT_ADD_GENERATION_PROMPT) != 0;
    o.enable_thinking = (flags & DEFKV_CHAT_DISABLE_THINKING) == 0;
    o.bos_token = special_text(*m.tok, m.tok->bos());
    o.eos_token = special_text(*m.tok, m.tok->eos());
    return put_string(text::render_chat(t, ms, o), buf, capacity, out_len);
  });
}

defkv_status defkv_chat_template_get_info(const defkv_model* model, const char* tmpl, defkv_chat_template_info* out) {
  return model_call(model, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    if (out->struct_size < sizeof(uint32_t))
      raise(DEFKV_ERR_INVALID_ARGUMENT, "out->struct_size = " + std::to_string(out->struct_size) +
                                            " (set it to sizeof(defkv_chat_template_info))");
    const ModelImpl& m = *model->impl;
    bool has_template = false;
    const text::ChatTemplate t = chat_template_for(m, tmpl, &has_template);
    defkv_chat_template_info i{};
    i.struct_size = uint32_t(std::min<size_t>(out->struct_size, sizeof i));
    i.recognised = t.recognised ? 1 : 0;
    i.has_template = has_template ? 1 : 0;
    i.writes_bos = t.bos && (t.format == text::ChatFormat::llama2 || t.format == text::ChatFormat::llama3 ||
                             t.format == text::ChatFormat::gemma || t.format == text::ChatFormat::phi3);
    copy_field(i.format, sizeof i.format, text::chat_format_name(t.format), "format");
    copy_field(i.end_of_turn, sizeof i.end_of_turn, text::chat_end_of_turn(t, special_text(*m.tok, m.tok->eos())),
               "end-of-turn");
    copy_field(i.stop_text, sizeof i.stop_text, text::chat_stop_text(t), "stop");
    std::memcpy(static_cast<void*>(out), &i, i.struct_size);
    return DEFKV_OK;
  });
}

}  // extern "C"
