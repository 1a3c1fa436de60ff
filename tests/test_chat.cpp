// `defkv chat` end to end (the CLI binary, stdin piped): a conversation
// saved with /save and continued in another process after /load gives the
// same reply as continuing in the first; a conversation longer than the KV
// budget keeps going within it; the GGUF chat template is recognised and
// rendered through the C API. The rendering itself is tested against the
// models' templates in test_chat_template.cpp.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string env_or(const char* name, const char* def) {
  const char* v = std::getenv(name);
  return v ? v : def;
}
// The defkv binary of the build this test belongs to: $DEFKV_BUILD (set by
// meson test) or next to this executable's directory.
std::string defkv_bin() {
  if (const char* b = std::getenv("DEFKV_BUILD")) return std::string(b) + "/tools/defkv";
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "build/tools/defkv";
  std::string dir(self, size_t(n));
  dir = dir.substr(0, dir.rfind('/'));  // .../tests
  return dir.substr(0, dir.rfind('/')) + "/tools/defkv";
}
std::string model() { return env_or("DEFKV_SHARED", "../shared") + "/models/stories260K/stories260K.gguf"; }
std::string tmp(const std::string& name) { return "/tmp/defkv_test_chat_" + std::to_string(::getpid()) + "_" + name; }

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `defkv chat ARGS` with `input` on stdin; returns stdout.
std::string chat(const std::string& args, const std::string& input, int* rc = nullptr) {
  const std::string in = tmp("in.txt"), out = tmp("out.txt"), err = tmp("err.txt");
  std::ofstream(in) << input;
  const std::string cmd = defkv_bin() + " chat -q -m " + model() + " " + args + " <" + in + " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  INFO(cmd << "\nstderr: " << slurp(err));
  if (rc) *rc = status;
  else REQUIRE(status == 0);
  std::string o = slurp(out);
  std::remove(in.c_str());
  std::remove(out.c_str());
  std::remove(err.c_str());
  return o;
}

// The text after the line `marker` (the replies that follow it).
std::string after(const std::string& text, const std::string& marker) {
  const size_t at = text.find(marker + "\n");
  REQUIRE(at != std::string::npos);
  return text.substr(at + marker.size() + 1);
}

}  // namespace

TEST_CASE("chat: /save in one process, /load in another, same continuation", "[chat]") {
  const std::string state = tmp("conv.state");
  for (const std::string& opts : {std::string("--temp 0.8 --seed 7"), std::string("--temp 0.8 --seed 9 --kv-budget 48 --kv-window 16")}) {
    const std::string args = opts + " -n 40";
    const std::string a = chat(args, "Once upon a time\nTell me about the dog\n/save " + state +
                                         "\nWhat happened next?\nAnd then?\n/quit\n");
    const std::string b = chat(args, "/load " + state + "\nWhat happened next?\nAnd then?\n/quit\n");
    const std::string cont_a = after(a, "(saved to " + state + ")");
    const std::string cont_b = after(b, "(loaded " + state + ")");
    INFO(opts << "\nA:\n" << a << "\nB:\n" << b);
    CHECK(cont_a.size() > 20);
    CHECK(cont_a == cont_b);
    // Without the saved conversation the same turn gives another reply.
    const std::string fresh = chat(args, "What happened next?\nAnd then?\n/quit\n");
    CHECK(fresh != cont_a);
  }
  std::remove(state.c_str());
  int rc = 0;
  const std::string bad = chat("", "/load /nonexistent/state\n/quit\n", &rc);
  CHECK(rc == 0);  // an error message, not an exit
  CHECK(bad.find("(loaded") == std::string::npos);
}

TEST_CASE("chat: a conversation longer than the KV budget stays within it", "[chat]") {
  std::string input;
  for (int i = 0; i < 8; ++i) input += "Tell me a story about a cat and a ball\n/stats\n";
  input += "/quit\n";
  const std::string out = chat("--temp 0.8 --kv-budget 48 --kv-window 16 -n 60", input);
  const std::regex re(R"(\(positions (\d+), KV entries (\d+) \(([\d.]+) per head\).*budget (\d+), (\d+) eviction rounds\))");
  std::vector<double> per_head;
  unsigned last_pos = 0, last_rounds = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it) {
    last_pos = unsigned(std::stoul((*it)[1]));
    per_head.push_back(std::stod((*it)[3]));
    CHECK(std::stoul((*it)[4]) == 48);
    last_rounds = unsigned(std::stoul((*it)[5]));
  }
  INFO(out);
  REQUIRE(per_head.size() == 8);
  CHECK(last_pos > 4 * 48);     // the conversation is several budgets long
  CHECK(last_rounds > 4);
  for (double x : per_head) CHECK(x <= 48 + 64);  // budget + one prefill chunk
}

TEST_CASE("chat: template from the GGUF, plain for stories260K", "[chat]") {
  const std::string err = tmp("banner.txt");
  const std::string cmd = defkv_bin() + " chat -m " + model() + " </dev/null >/dev/null 2>" + err;
  REQUIRE(std::system(cmd.c_str()) == 0);
  CHECK(slurp(err).find("template plain (auto)") != std::string::npos);
  CHECK(slurp(err).find("warning: the model has no tokenizer.chat_template") != std::string::npos);
  std::remove(err.c_str());
  // An explicit template is honoured.
  const std::string cmd2 = defkv_bin() + " chat -m " + model() + " --template chatml </dev/null >/dev/null 2>" + err;
  REQUIRE(std::system(cmd2.c_str()) == 0);
  CHECK(slurp(err).find("template chatml") != std::string::npos);
  std::remove(err.c_str());
  const std::string cmd3 = defkv_bin() + " chat -m " + model() + " --template nonsense </dev/null >/dev/null 2>" + err;
  CHECK(std::system(cmd3.c_str()) != 0);
  CHECK(slurp(err).find("unknown chat template") != std::string::npos);
  std::remove(err.c_str());
}

#include <nlohmann/json.hpp>

#include "runtime/api/defkv.h"
#include "runtime/gguf/gguf.h"

namespace {

// stories260K with tokenizer.chat_template set to `jinja`, written to `path`.
void write_with_template(const std::string& path, const std::string& jinja) {
  auto f = defkv::gguf::File::open(model());
  defkv::gguf::Writer w;
  w.copy_metadata(*f);
  w.set_string("tokenizer.chat_template", jinja);
  for (const defkv::gguf::TensorInfo& t : f->tensors())
    w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), t.data, t.size_bytes);
  w.write(path);
}

std::string shared_tokenizers() { return env_or("DEFKV_SHARED", "../shared") + "/testdata/tokenizers/"; }

}  // namespace

TEST_CASE("chat: the model's chat template is recognised and used", "[chat]") {
  // The published templates (tests/chat_templates/README.md and the shared
  // tokenizer test data), in a GGUF's tokenizer.chat_template.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {shared_tokenizers() + "ggml-vocab-llama-bpe.chat_template.jinja", "llama3"},
      {shared_tokenizers() + "ggml-vocab-qwen2.chat_template.jinja", "qwen3"},
      {shared_tokenizers() + "gemma3.chat_template.jinja", "gemma"},
      {"tests/chat_templates/llama3.2-instruct.jinja", "llama3"},
      {"tests/chat_templates/qwen2.5-instruct.jinja", "chatml"},
      {"tests/chat_templates/smollm2-instruct.jinja", "chatml"},
      {"tests/chat_templates/phi3.5-mini-instruct.jinja", "phi3"},
      {"tests/chat_templates/phi3-mini-2404.jinja", "phi3"},
      {"tests/chat_templates/llama2-chat.jinja", "llama2"},
      {"tests/chat_templates/zephyr-7b-beta.jinja", "zephyr"},
      {"tests/chat_templates/gemma2-it.jinja", "gemma"},
  };
  const std::string path = tmp("tmpl.gguf"), err = tmp("banner.txt");
  for (const auto& [file, want] : cases) {
    INFO(file);
    write_with_template(path, slurp(file));
    const std::string cmd = defkv_bin() + " chat -m " + path + " </dev/null >/dev/null 2>" + err;
    REQUIRE(std::system(cmd.c_str()) == 0);
    const std::string banner = slurp(err);
    CHECK(banner.find("template " + want + " (auto)") != std::string::npos);
    CHECK(banner.find("not one the library recognises") == std::string::npos);
  }
  // A template the library does not know: plain, with a warning.
  write_with_template(path, "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] }}{% endfor %}");
  const std::string cmd = defkv_bin() + " chat -m " + path + " </dev/null >/dev/null 2>" + err;
  REQUIRE(std::system(cmd.c_str()) == 0);
  CHECK(slurp(err).find("template plain (auto)") != std::string::npos);
  CHECK(slurp(err).find("warning: the chat template is not one the library recognises") != std::string::npos);

  // Through the C API with the model's own template: Qwen3's shared example,
  // byte for byte, with and without thinking.
  const nlohmann::json ex = nlohmann::json::parse(slurp(shared_tokenizers() + "ggml-vocab-qwen2.chat_example.json"));
  write_with_template(path, slurp(shared_tokenizers() + "ggml-vocab-qwen2.chat_template.jinja"));
  defkv_model* m = nullptr;
  REQUIRE(defkv_model_load_file(path.c_str(), &m) == DEFKV_OK);
  std::vector<std::string> roles, contents;
  for (const auto& msg : ex.at("messages")) {
    roles.push_back(msg.at("role"));
    contents.push_back(msg.at("content"));
  }
  std::vector<defkv_chat_message> ms;
  for (size_t i = 0; i < roles.size(); ++i) ms.push_back({roles[i].c_str(), contents[i].c_str()});
  for (const uint32_t flags : {DEFKV_CHAT_ADD_GENERATION_PROMPT,
                               DEFKV_CHAT_ADD_GENERATION_PROMPT | DEFKV_CHAT_DISABLE_THINKING}) {
    std::string buf(4096, '\0');
    size_t n = 0;
    REQUIRE(defkv_chat_apply_template(m, nullptr, ms.data(), ms.size(), flags, buf.data(), buf.size(), &n) ==
            DEFKV_OK);
    buf.resize(n);
    CHECK(buf == (flags & DEFKV_CHAT_DISABLE_THINKING ? ex.at("variants").at(0).at("rendered") : ex.at("rendered"))
                     .get<std::string>());
  }
  defkv_chat_template_info info{};
  info.struct_size = sizeof info;
  REQUIRE(defkv_chat_template_get_info(m, nullptr, &info) == DEFKV_OK);
  CHECK(std::string(info.format) == "qwen3");
  CHECK(info.recognised == 1);
  CHECK(info.has_template == 1);
  CHECK(std::string(info.end_of_turn) == "<|im_end|>");
  defkv_model_free(m);
  std::remove(err.c_str());
  std::remove(path.c_str());
}

TEST_CASE("chat: Ctrl-C cancels the running reply without exiting", "[chat]") {
  const std::string out = tmp("sigint.out"), err = tmp("sigint.err");
  // The first reply could run for 100000 tokens; SIGINT arrives after 1 s,
  // then the session goes on (/stats) and ends normally.
  const std::string script =
      "{ echo 'Once upon a time'; sleep 3; echo '/stats'; echo '/quit'; } | " + defkv_bin() + " chat -q -m " +
      model() + " --kv-budget 48 --kv-window 16 -n 100000 >" + out + " 2>" + err +
      " & pid=\\$!; sleep 1; kill -INT \\$pid; wait \\$pid";
  const int rc = std::system(("bash -c \"" + script + "\"").c_str());
  const std::string o = slurp(out), e = slurp(err);
  INFO("stdout:\n" << o.substr(0, 2000) << "\nstderr:\n" << e);
  CHECK(rc == 0);
  CHECK(e.find("(cancelled)") != std::string::npos);
  CHECK(o.find("(positions ") != std::string::npos);  // /stats ran after the cancel
  std::remove(out.c_str());
  std::remove(err.c_str());
}

#include "tools/chat_session.h"

TEST_CASE("chat: each turn feeds only what the rendering adds to what the model has seen", "[chat][session]") {
  defkv_model* m = nullptr;
  REQUIRE(defkv_model_load_file(model().c_str(), &m) == DEFKV_OK);
  {
    defkv::cli::ChatSession s(m, std::string("chatml"), 0, "Be brief.");
    CHECK(s.begin_turn("Hi") == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                "<|im_start|>assistant\n");
    s.end_turn("Hello.", "Hello.", true);  // the model was fed <|im_end|> too
    CHECK(s.begin_turn("Bye") == "\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n");
    // A reply cut short: the next turn closes it first.
    s.end_turn("Good", "Good", false);
    CHECK(s.begin_turn("Again") == "<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n");
    s.reset();
    CHECK(s.begin_turn("Hi").compare(0, 19, "<|im_start|>system\n") == 0);
  }
  {
    // Qwen3 drops the reasoning of earlier replies from the rendering; the
    // model keeps its own text and the next turn starts after <|im_end|>.
    defkv::cli::ChatSession s(m, std::string("qwen3"), 0, "");
    s.begin_turn("2+2?");
    s.end_turn("<think>\nAdd.\n</think>\n\n4", "<think>\nAdd.\n</think>\n\n4", true);
    CHECK(s.begin_turn("Times 3?") == "\n<|im_start|>user\nTimes 3?<|im_end|>\n<|im_start|>assistant\n");
  }
  {
    // Llama 3 trims replies; the model's reply had a trailing space.
    defkv::cli::ChatSession s(m, std::string("llama3"), 0, "");
    CHECK(s.begin_turn("Hi") == "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>"
                                "assistant<|end_header_id|>\n\n");
    s.end_turn("Hello. ", "Hello. ", true);
    CHECK(s.begin_turn("Bye") ==
          "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    CHECK(s.info().writes_bos == 1);
  }
  {
    // Plain: a reply ends at "\nUser:", which the model has already been fed.
    defkv::cli::ChatSession s(m, std::nullopt, 0, "");
    CHECK(s.begin_turn("Hi") == "User: Hi\nAssistant:");
    s.end_turn("Hello.", " Hello.\nUser:", true);
    CHECK(s.begin_turn("Bye") == " Bye\nAssistant:");
    // /save and /load keep the session's text beside the state.
    const std::string state = tmp("session.state");
    s.save(state);
    defkv::cli::ChatSession t(m, std::nullopt, 0, "");
    CHECK(t.load(state));
    s.end_turn("Bye.", " Bye.", true);
    t.end_turn("Bye.", " Bye.", true);
    CHECK(t.begin_turn("Again") == s.begin_turn("Again"));
    CHECK_FALSE(t.load(state + ".missing"));
    std::remove((state + ".chat").c_str());
  }
  {
    // Plain: a reply the rendering writes otherwise than the model's text
    // (no leading space: "Assistant: \nOnce." rendered, "Assistant:\nOnce."
    // fed). Found by the 500-turn soak: every later turn fed the whole history
    // again from that point, so positions grew quadratically until the
    // context was full. Each turn feeds its own text only.
    defkv::cli::ChatSession s(m, std::nullopt, 0, "");
    CHECK(s.begin_turn("Hi") == "User: Hi\nAssistant:");
    s.end_turn("\nOnce.", "\nOnce.", true);
    for (const std::string u : {"A", "B", "C"}) {
      CHECK(s.begin_turn(u) == "\nUser: " + u + "\nAssistant:");
      s.end_turn("It was " + u + ".", " It was " + u + ".", true);
    }
  }
  defkv_model_free(m);
}
