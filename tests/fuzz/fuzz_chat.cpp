// libFuzzer target: chat-template recognition and rendering through the C
// API (defkv_chat_apply_template, defkv_chat_template_get_info).
// Input: byte 0 = flags (bits 0-1: the DEFKV_CHAT_* flags, bit 2: pass the
// template text, else NULL = the model's own); the rest split at NUL bytes:
// field 0 the template text (a Jinja text or a format name), every further
// field one message whose first byte picks the role (mod 4: system, user,
// assistant, or the rest of the field up to ':' as a role name) and whose
// remainder is the content.
//
// Properties:
//  - the status is DEFKV_OK or DEFKV_ERR_INVALID_ARGUMENT, never another;
//    with only known roles and a format that does not require alternation
//    (everything but gemma and llama2) it is DEFKV_OK;
//  - the size query and the real call agree; the output is NUL-terminated
//    at the reported length; two renderings are identical;
//  - chatml and qwen3 write every user message verbatim between
//    "<|im_start|>user\n" and "<|im_end|>\n".
#include <cstring>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"
#include "tests/fuzz/fuzz_util.h"

using namespace defkv;

namespace {

defkv_model* g_model = nullptr;

void check(bool ok, const std::string& what) {
  if (!ok) fuzz::die("fuzz_chat", what);
}

std::string seed(uint8_t flags, const std::string& tmpl) {
  std::string s(1, char(flags));
  s += tmpl;
  for (const char* m : {"\0You are terse.", "\001Hello there", "\002Hi! How can I help?", "\001Tell me a story"})
    s.append(m, 1 + std::strlen(m + 1));
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string sh = fuzz::shared_dir();
  if (defkv_model_load_file((sh + "/models/stories260K/stories260K.gguf").c_str(), &g_model) != DEFKV_OK) {
    std::fprintf(stderr, "fuzz_chat: %s\n", defkv_last_error(nullptr));
    std::abort();
  }
  const char* files[] = {"/testdata/tokenizers/ggml-vocab-llama-bpe.chat_template.jinja",
                         "/testdata/tokenizers/ggml-vocab-qwen2.chat_template.jinja",
                         "/testdata/tokenizers/gemma3.chat_template.jinja"};
  int n = 0;
  for (const char* f : files) {
    std::vector<uint8_t> b = fuzz::read_file(sh + f);
    fuzz::write_seed("shared" + std::to_string(n++), seed(5, std::string(b.begin(), b.end())));
  }
  for (const char* f : {"gemma2-it", "llama2-chat", "llama3.2-instruct", "phi3-mini-2404", "phi3.5-mini-instruct",
                        "qwen2.5-instruct", "smollm2-instruct", "zephyr-7b-beta"}) {
    const char* root = std::getenv("DEFKV_SOURCE_ROOT");
    std::vector<uint8_t> b = fuzz::read_file(std::string(root ? root : ".") + "/tests/chat_templates/" + f + ".jinja");
    fuzz::write_seed(f, seed(5, std::string(b.begin(), b.end())));
  }
  for (const char* name : {"plain", "chatml", "qwen3", "llama2", "llama3", "zephyr", "phi3", "gemma"})
    fuzz::write_seed(name, seed(7, name));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 16384) return 0;
  const uint32_t flags = data[0] & 3;
  const bool pass_template = data[0] & 4;
  std::vector<std::string> fields;
  {
    const char* p = reinterpret_cast<const char*>(data + 1);
    const char* end = reinterpret_cast<const char*>(data + size);
    while (true) {
      const char* z = static_cast<const char*>(std::memchr(p, 0, size_t(end - p)));
      fields.emplace_back(p, z ? z : end);
      if (!z) break;
      p = z + 1;
    }
  }
  std::vector<std::string> roles, contents;
  bool known_roles = true;
  for (size_t i = 1; i < fields.size(); ++i) {
    const std::string& f = fields[i];
    const unsigned sel = f.empty() ? 1 : uint8_t(f[0]) % 4;
    std::string rest = f.empty() ? "" : f.substr(1);
    static const char* kRoles[3] = {"system", "user", "assistant"};
    if (sel < 3) {
      roles.push_back(kRoles[sel]);
      contents.push_back(rest);
    } else {
      const size_t colon = rest.find(':');
      roles.push_back(rest.substr(0, colon));
      contents.push_back(colon == std::string::npos ? "" : rest.substr(colon + 1));
      if (roles.back() != "system" && roles.back() != "user" && roles.back() != "assistant") known_roles = false;
    }
  }
  std::vector<defkv_chat_message> msgs(roles.size());
  for (size_t i = 0; i < roles.size(); ++i) msgs[i] = {roles[i].c_str(), contents[i].c_str()};
  const char* tmpl = pass_template ? fields[0].c_str() : nullptr;

  defkv_chat_template_info info{};
  info.struct_size = sizeof info;
  check(defkv_chat_template_get_info(g_model, tmpl, &info) == DEFKV_OK, "get_info failed");
  check(std::memchr(info.format, 0, sizeof info.format) != nullptr, "format not NUL-terminated");
  const std::string format = info.format;

  size_t need = 0;
  defkv_status s = defkv_chat_apply_template(g_model, tmpl, msgs.data(), msgs.size(), flags, nullptr, 0, &need);
  if (s == DEFKV_ERR_INVALID_ARGUMENT) {
    check(!known_roles || format == "gemma" || format == "llama2",
          std::string("rejected a conversation with known roles in format ") + format + ": " +
              defkv_last_error(nullptr));
    return 0;
  }
  check(s == DEFKV_ERR_BUFFER_TOO_SMALL, std::string("size query returned ") + defkv_status_name(s));
  check(known_roles, "accepted an unknown role");
  std::vector<char> buf(need + 1, '\x7f');
  size_t got = 0;
  s = defkv_chat_apply_template(g_model, tmpl, msgs.data(), msgs.size(), flags, buf.data(), buf.size(), &got);
  check(s == DEFKV_OK, std::string("render returned ") + defkv_status_name(s));
  check(got == need, "size query and render disagree");
  check(buf[got] == '\0' && std::strlen(buf.data()) == got, "output not NUL-terminated at its length");
  std::vector<char> again(need + 1);
  check(defkv_chat_apply_template(g_model, tmpl, msgs.data(), msgs.size(), flags, again.data(), again.size(),
                                  &got) == DEFKV_OK && again == buf,
        "two renderings differ");
  if (format == "chatml" || format == "qwen3") {
    const std::string out(buf.data(), need);
    for (size_t i = 0; i < roles.size(); ++i)
      if (roles[i] == "user")
        check(out.find("<|im_start|>user\n" + contents[i] + "<|im_end|>\n") != std::string::npos,
              "user message " + std::to_string(i) + " not written verbatim");
  }
  return 0;
}
