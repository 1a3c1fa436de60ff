// Chat templates in the library (runtime/text/chat_template.h).
//
// Oracles: the chat examples of ../shared/testdata/tokenizers (rendered by
// @huggingface/jinja and Python's jinja2 from the models' own templates), and
// for the other families renderings of their published templates
// (tests/chat_templates/*.jinja, sources in its README) by Python's jinja2
// 3.1 set up as HF transformers renders chat templates (sandboxed,
// trim_blocks, lstrip_blocks), each checked by hand against the template.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"
#include "runtime/text/chat_template.h"
#include "runtime/text/tokenizer.h"

using namespace defkv::text;
namespace fs = std::filesystem;

namespace {

std::string vectors_dir() {
  if (const char* v = std::getenv("DEFKV_TOKENIZER_VECTORS")) return v;
  const char* s = std::getenv("DEFKV_SHARED");
  return std::string(s ? s : "../shared") + "/testdata/tokenizers";
}
std::string templates_dir() {
  const char* b = std::getenv("DEFKV_SOURCE");
  return std::string(b ? b : ".") + "/tests/chat_templates";
}
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
std::string tmpl(const std::string& name) { return slurp(templates_dir() + "/" + name); }

std::vector<ChatMessage> messages_of(const nlohmann::json& j) {
  std::vector<ChatMessage> ms;
  for (const auto& m : j) ms.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  return ms;
}

// The conversation of the shared chat examples, with an assistant reply that
// has spaces around it (the trim filter matters) and a user turn ending in a
// newline.
const std::vector<ChatMessage> kConv = {
    {"system", "You are a concise assistant. Answer in one sentence."},
    {"user", "What is the capital of France?"},
    {"assistant", " The capital of France is Paris. "},
    {"user", "And how many people live there?  Give a rough number.\n"},
};
std::vector<ChatMessage> no_system() { return {kConv.begin() + 1, kConv.end()}; }

ChatRenderOptions opts(bool gen, std::string bos = "<s>", std::string eos = "</s>") {
  ChatRenderOptions o;
  o.add_generation_prompt = gen;
  o.bos_token = std::move(bos);
  o.eos_token = std::move(eos);
  return o;
}

}  // namespace

TEST_CASE("chat template: every shared chat example renders byte for byte", "[chat][template]") {
  int examples = 0;
  for (const auto& e : fs::directory_iterator(vectors_dir())) {
    const std::string path = e.path().string();
    const std::string suffix = ".chat_example.json";
    if (path.size() < suffix.size() || path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string stem = path.substr(0, path.size() - suffix.size());
    const nlohmann::json ex = nlohmann::json::parse(slurp(path));
    const std::string jinja = slurp(stem + ".chat_template.jinja");
    INFO(path);
    const ChatTemplate t = detect_chat_template(jinja);
    CHECK(t.recognised);
    ChatRenderOptions o;
    o.add_generation_prompt = ex.at("add_generation_prompt").get<bool>();
    const nlohmann::json& vars = ex.at("template_variables");
    o.bos_token = vars.value("bos_token", "");
    o.eos_token = vars.value("eos_token", "");
    const std::vector<ChatMessage> ms = messages_of(ex.at("messages"));
    const std::string rendered = render_chat(t, ms, o);
    CHECK(rendered == ex.at("rendered").get<std::string>());
    for (const auto& v : ex.value("variants", nlohmann::json::array())) {
      ChatRenderOptions ov = o;
      ov.enable_thinking = v.at("extra_variables").value("enable_thinking", true);
      CHECK(render_chat(t, ms, ov) == v.at("rendered").get<std::string>());
    }
    ++examples;

    // The vocab GGUF beside it carries the same template; its ids for the
    // rendered text (parse_special, no BOS added) are checked when this
    // build's tokenizer reads that vocabulary.
    if (!ex.contains("tokens") || !fs::exists(stem + ".gguf")) continue;
    const auto f = defkv::gguf::File::open(stem + ".gguf");
    CHECK(f->get_string("tokenizer.chat_template") == jinja);
    std::unique_ptr<Tokenizer> tok;
    try {
      tok = Tokenizer::from_gguf(*f);
    } catch (const std::exception& err) {
      WARN("token ids of " << stem << " NOT checked: tokenizer.ggml.model = "
                           << f->get_string("tokenizer.ggml.model") << " is not supported here (" << err.what() << ")");
      continue;
    }
    CHECK(tok->encode(rendered, false, true) == ex.at("tokens").get<std::vector<int32_t>>());
  }
  CHECK(examples >= 3);  // Llama 3, Qwen3, Gemma 3
}

TEST_CASE("chat template: recognised families render as their published templates", "[chat][template]") {
  struct Case {
    const char* file;
    std::vector<ChatMessage> ms;
    ChatRenderOptions o;
    const char* format;
    std::string want;
  };
  const std::string gemma_bos = "<bos>";
  const std::vector<Case> cases = {
      {"qwen2.5-instruct.jinja", kConv, opts(true), "chatml",
       "<|im_start|>system\nYou are a concise assistant. Answer in one sentence.<|im_end|>\n<|im_start|>user\nWhat is "
       "the capital of France?<|im_end|>\n<|im_start|>assistant\n The capital of France is Paris. <|im_end|>\n<|im_start|>"
       "user\nAnd how many people live there?  Give a rough number.\n<|im_end|>\n<|im_start|>assistant\n"},
      // No system message: Qwen2.5's default system prompt.
      {"qwen2.5-instruct.jinja", no_system(), opts(true), "chatml",
       "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>"
       "user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n The capital of France is Paris. "
       "<|im_end|>\n<|im_start|>user\nAnd how many people live there?  Give a rough number.\n<|im_end|>\n"
       "<|im_start|>assistant\n"},
      {"smollm2-instruct.jinja", no_system(), opts(false), "chatml",
       "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
       "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n The capital of France is "
       "Paris. <|im_end|>\n<|im_start|>user\nAnd how many people live there?  Give a rough number.\n<|im_end|>\n"},
      {"phi3.5-mini-instruct.jinja", kConv, opts(true, "<s>", "<|endoftext|>"), "phi3",
       "<|system|>\nYou are a concise assistant. Answer in one sentence.<|end|>\n<|user|>\nWhat is the capital of "
       "France?<|end|>\n<|assistant|>\n The capital of France is Paris. <|end|>\n<|user|>\nAnd how many people live "
       "there?  Give a rough number.\n<|end|>\n<|assistant|>\n"},
      // An empty system message is left out; without a generation prompt the text ends with EOS.
      {"phi3.5-mini-instruct.jinja", {{"system", ""}, kConv[1], kConv[2]}, opts(false, "<s>", "<|endoftext|>"), "phi3",
       "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n The capital of France is Paris. "
       "<|end|>\n<|endoftext|>"},
      // Phi-3-mini's first template: BOS, no system, the assistant header after each user turn.
      {"phi3-mini-2404.jinja", kConv, opts(true, "<s>", "<|endoftext|>"), "phi3",
       "<s><|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n The capital of France is Paris. <|end|>\n"
       "<|user|>\nAnd how many people live there?  Give a rough number.\n<|end|>\n<|assistant|>\n"},
      {"llama2-chat.jinja", kConv, opts(true), "llama2",
       "<s>[INST] <<SYS>>\nYou are a concise assistant. Answer in one sentence.\n<</SYS>>\n\nWhat is the capital of "
       "France? [/INST] The capital of France is Paris. </s><s>[INST] And how many people live there?  Give a rough "
       "number. [/INST]"},
      {"llama2-chat.jinja", no_system(), opts(true), "llama2",
       "<s>[INST] What is the capital of France? [/INST] The capital of France is Paris. </s><s>[INST] And how many "
       "people live there?  Give a rough number. [/INST]"},
      {"zephyr-7b-beta.jinja", kConv, opts(true), "zephyr",
       "<|system|>\nYou are a concise assistant. Answer in one sentence.</s>\n<|user|>\nWhat is the capital of "
       "France?</s>\n<|assistant|>\n The capital of France is Paris. </s>\n<|user|>\nAnd how many people live there?  "
       "Give a rough number.\n</s>\n<|assistant|>\n"},
      {"gemma2-it.jinja", no_system(), opts(true, gemma_bos, "<eos>"), "gemma",
       "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nThe capital of "
       "France is Paris.<end_of_turn>\n<start_of_turn>user\nAnd how many people live there?  Give a rough "
       "number.<end_of_turn>\n<start_of_turn>model\n"},
      // Gemma 2's template raises on a system message; it is folded into the
      // first user turn the way Gemma 3's template does (documented deviation).
      {"gemma2-it.jinja", kConv, opts(true, gemma_bos, "<eos>"), "gemma",
       "<bos><start_of_turn>user\nYou are a concise assistant. Answer in one sentence.\n\nWhat is the capital of "
       "France?<end_of_turn>\n<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n<start_of_turn>user\n"
       "And how many people live there?  Give a rough number.<end_of_turn>\n<start_of_turn>model\n"},
      // trim removes Unicode whitespace as Python's str.strip() does (not U+200B).
      {"gemma2-it.jinja",
       {{"user", "\u00a0\u2003Hi\u200b\u3000\x1f\n"}, {"assistant", "\u2028Hello\u0085"}},
       opts(true, gemma_bos, "<eos>"),
       "gemma",
       "<bos><start_of_turn>user\nHi\u200b<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>"
       "model\n"},
      [] {
        ChatRenderOptions o = opts(true, "<|begin_of_text|>", "<|eot_id|>");
        o.date = "26 Jul 2024";
        return Case{"llama3.2-instruct.jinja", kConv, o, "llama3",
                    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
                    "2023\nToday Date: 26 Jul 2024\n\nYou are a concise assistant. Answer in one "
                    "sentence.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of "
                    "France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nThe capital of France is "
                    "Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd how many people live there?  "
                    "Give a rough number.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"};
      }(),
      // No system message: the header block is still written, empty; no generation prompt.
      [] {
        ChatRenderOptions o = opts(false, "<|begin_of_text|>", "<|eot_id|>");
        o.date = "26 Jul 2024";
        return Case{"llama3.2-instruct.jinja", {kConv[1]}, o, "llama3",
                    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
                    "2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is "
                    "the capital of France?<|eot_id|>"};
      }(),
  };
  for (const Case& c : cases) {
    INFO(c.file << ", " << c.ms.size() << " messages, generation prompt " << c.o.add_generation_prompt);
    const ChatTemplate t = detect_chat_template(tmpl(c.file));
    CHECK(t.recognised);
    CHECK(std::string(chat_format_name(t.format)) == c.format);
    CHECK(render_chat(t, c.ms, c.o) == c.want);
  }
}

TEST_CASE("chat template: a ChatML default system prompt is read from the template's literal", "[chat][template]") {
  // Qwen2.5-Math's default, with an escaped backslash and braces, in a
  // single-quoted literal; and a double-quoted one holding an apostrophe.
  const ChatTemplate math = detect_chat_template(
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
      "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nPlease reason step by step, and put your final "
      "answer within \\\\boxed{}.<|im_end|>\\n' }}{%- endif %}");
  CHECK(math.default_system == "Please reason step by step, and put your final answer within \\boxed{}.");
  const ChatTemplate apostrophe = detect_chat_template(
      "{{ \"<|im_start|>system\\nYou're helpful.<|im_end|>\\n\" }}{{'<|im_start|>' + message['role']}}");
  CHECK(apostrophe.default_system == "You're helpful.");
  // Only a system turn written from a message: no default.
  CHECK(detect_chat_template("{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>' }}")
            .default_system.empty());
}

TEST_CASE("chat template: Qwen3 reasoning and the thinking switch", "[chat][template]") {
  const ChatTemplate t = detect_chat_template(slurp(vectors_dir() + "/ggml-vocab-qwen2.chat_template.jinja"));
  REQUIRE(t.format == ChatFormat::qwen3);
  CHECK(t.thinking_switch);
  const std::vector<ChatMessage> q = {{"user", "2+2?"},
                                      {"assistant", "<think>\nAdd them.\n</think>\n\n4"},
                                      {"user", "Times 3?"},
                                      {"assistant", "<think>\n4*3\n</think>\n\n12"}};
  // History turns lose their reasoning; the reply after the last query keeps it.
  CHECK(render_chat(t, q, opts(false)) ==
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nTimes "
        "3?<|im_end|>\n<|im_start|>assistant\n<think>\n4*3\n</think>\n\n12<|im_end|>\n");
  ChatRenderOptions no_think = opts(true);
  no_think.enable_thinking = false;
  CHECK(render_chat(t, {q[0], q[1], q[2]}, no_think) ==
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nTimes "
        "3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  // The last reply without reasoning still gets an (empty) think block.
  CHECK(render_chat(t, {q[0], q[1], q[2], {"assistant", "12"}}, opts(false)) ==
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nTimes "
        "3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n12<|im_end|>\n");
  // A system message that is not the first is an ordinary turn.
  CHECK(render_chat(t, {{"user", "a"}, {"system", "late"}, {"user", "b"}}, opts(true)) ==
        "<|im_start|>user\na<|im_end|>\n<|im_start|>system\nlate<|im_end|>\n<|im_start|>user\nb<|im_end|>\n"
        "<|im_start|>assistant\n");
}

TEST_CASE("chat template: Meta's first Llama 3 template always opens the reply", "[chat][template]") {
  const ChatTemplate t = detect_chat_template(slurp(vectors_dir() + "/ggml-vocab-llama-bpe.chat_template.jinja"));
  REQUIRE(t.format == ChatFormat::llama3);
  CHECK_FALSE(t.generation_prompt);
  CHECK_FALSE(t.llama3_date_header);
  CHECK(render_chat(t, {{"user", "2+2?"}}, opts(false, "<|begin_of_text|>")) ==
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\n");
  const ChatTemplate t32 = detect_chat_template(tmpl("llama3.2-instruct.jinja"));
  CHECK(t32.llama3_date_today);  // strftime_now: today's date unless one is given
  CHECK(t32.llama3_date == "26 Jul 2024");
}

TEST_CASE("chat template: unknown or missing templates fall back to plain", "[chat][template]") {
  // Alpaca-style template: none of the known markers.
  const ChatTemplate t = detect_chat_template(
      "{% for message in messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + "
      "'\\n\\n' }}{% else %}{{ '### Response:\\n' + message['content'] + '\\n\\n' }}{% endif %}{% endfor %}");
  CHECK_FALSE(t.recognised);
  CHECK(t.format == ChatFormat::plain);
  CHECK_FALSE(detect_chat_template("").recognised);
  // Near misses of known families are not taken for them: Phi-4 (ChatML
  // markers with <|im_sep|>), QwQ-style reasoning ChatML, GLM-Edge (<|user|>
  // without EOS), Mistral's [INST] without <<SYS>>, Llama 2 with a default
  // system prompt.
  for (const char* near : {
           "{{'<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>'}}",
           "{%- set content = message.content.split('</think>')[-1] %}{{'<|im_start|>assistant\n<think>\n'}}",
           "{% if item['role'] == 'user' %}<|user|>\n{{ item['content'] }}{% endif %}<|assistant|>",
           "{{ bos_token }}{{ '[INST] ' + message['content'] + ' [/INST]' }}",
           "{% elif true == true and not '<<SYS>>' in messages[0]['content'] %}{% set system_message = 'Be "
           "safe.' %}{% endif %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}",
       }) {
    INFO(near);
    CHECK_FALSE(detect_chat_template(near).recognised);
  }
  CHECK(render_chat(t, kConv, opts(true)) ==
        "You are a concise assistant. Answer in one sentence.\n\nUser: What is the capital of France?\nAssistant:  The "
        "capital of France is Paris. \nUser: And how many people live there?  Give a rough number.\n\nAssistant:");
  CHECK(chat_stop_text(t) == "\nUser:");
  CHECK(chat_end_of_turn(t, "</s>").empty());
  // Chosen by name, plain is not a fallback.
  CHECK(chat_template_by_name("plain").recognised);
}

TEST_CASE("chat template: names, end-of-turn texts, bad input", "[chat][template]") {
  for (const char* n : {"plain", "chatml", "qwen3", "llama2", "llama3", "zephyr", "phi3", "gemma"}) {
    CHECK(is_chat_format_name(n));
    CHECK(std::string(chat_format_name(chat_template_by_name(n).format)) == n);
  }
  CHECK_FALSE(is_chat_format_name("vicuna"));
  CHECK_THROWS_WITH(chat_template_by_name("vicuna"), Catch::Contains("unknown chat template 'vicuna'"));
  CHECK(chat_end_of_turn(chat_template_by_name("chatml"), "</s>") == "<|im_end|>");
  CHECK(chat_end_of_turn(chat_template_by_name("llama3"), "</s>") == "<|eot_id|>");
  CHECK(chat_end_of_turn(chat_template_by_name("gemma"), "</s>") == "<end_of_turn>");
  CHECK(chat_end_of_turn(chat_template_by_name("phi3"), "</s>") == "<|end|>");
  CHECK(chat_end_of_turn(chat_template_by_name("zephyr"), "</s>") == "</s>");

  // An unknown role names the message, in every format.
  for (const char* n : {"plain", "chatml", "qwen3", "gemma"})
    CHECK_THROWS_WITH(render_chat(chat_template_by_name(n), {{"user", "a"}, {"tool", "b"}}, opts(true)),
                      Catch::Contains("message 1: unknown role 'tool'"));
  // Gemma and Llama 2 reject turns that do not alternate, as their templates do.
  const ChatTemplate gemma = detect_chat_template(tmpl("gemma2-it.jinja"));
  CHECK_THROWS_WITH(render_chat(gemma, {kConv[1], kConv[1]}, opts(true)),
                    Catch::Contains("message 1: conversation roles must alternate"));
  CHECK_THROWS_WITH(render_chat(gemma, {{"assistant", "hi"}}, opts(true)), Catch::Contains("message 0"));
  CHECK_THROWS_WITH(render_chat(detect_chat_template(tmpl("llama2-chat.jinja")), {kConv[0], kConv[2]}, opts(true)),
                    Catch::Contains("message 1: conversation roles must alternate"));
  // An empty conversation is no error.
  CHECK(render_chat(chat_template_by_name("chatml"), {}, opts(true)) == "<|im_start|>assistant\n");
}
