// `defkv chat` end to end (the CLI binary, stdin piped): a conversation
// saved with /save and continued in another process after /load gives the
// same reply as continuing in the first; a conversation longer than the KV
// budget keeps going within it; the GGUF chat template is recognised.
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
  for (const std::string opts : {std::string("--temp 0.8 --seed 7"), std::string("--temp 0.8 --seed 9 --kv-budget 48 --kv-window 16")}) {
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

#include "runtime/gguf/gguf.h"

TEST_CASE("chat: common GGUF chat templates are recognised", "[chat]") {
  // stories260K with tokenizer.chat_template set to the usual Jinja texts
  // (abridged to their distinguishing markers).
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}", "chatml"},
      {"{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}", "llama3"},
      {"{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}", "llama2"},
      {"{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}{% endif %}", "zephyr"},
      {"{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}", "gemma"},
      {"{{ message['content'] }}", "plain"},
  };
  auto f = defkv::gguf::File::open(model());
  for (const auto& [jinja, want] : cases) {
    defkv::gguf::Writer w;
    w.copy_metadata(*f);
    w.set_string("tokenizer.chat_template", jinja);
    for (const defkv::gguf::TensorInfo& t : f->tensors())
      w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), t.data, t.size_bytes);
    const std::string path = tmp("tmpl.gguf");
    w.write(path);
    const std::string err = tmp("banner.txt");
    const std::string cmd = defkv_bin() + " chat -m " + path + " </dev/null >/dev/null 2>" + err;
    REQUIRE(std::system(cmd.c_str()) == 0);
    INFO(jinja);
    CHECK(slurp(err).find("template " + want + " (auto)") != std::string::npos);
    std::remove(err.c_str());
    std::remove(path.c_str());
  }
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
