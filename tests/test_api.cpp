// C API (runtime/api/defkv.h) tests: misuse returns errors (run under ASan +
// UBSan by scripts/test.d/api-sanitizers.sh), greedy decoding against the
// independent numpy golden file, streaming UTF-8, save -> restore -> continue
// equals continuing (with and without eviction), corrupt / foreign states,
// cancellation in prefill, eviction and decoding, concurrent contexts, chat
// template rendering (defkv_chat_apply_template).
//
// Uses only the C API (like an application would).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <vector>

#include "defkv.h"

namespace {

std::string shared_path(const std::string& rel) {
  const char* s = std::getenv("DEFKV_SHARED");
  return std::string(s ? s : "../shared") + "/" + rel;
}
std::string model_path() { return shared_path("models/stories260K/stories260K.gguf"); }

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A model shared by the tests (loaded once).
defkv_model* model() {
  static defkv_model* m = [] {
    defkv_model* p = nullptr;
    const defkv_status s = defkv_model_load_file(model_path().c_str(), &p);
    if (s != DEFKV_OK) FAIL("cannot load " << model_path() << ": " << defkv_last_error(nullptr));
    return p;
  }();
  return m;
}

std::vector<int32_t> tokenize(defkv_model* m, const std::string& text, bool bos = true) {
  size_t n = 0;
  REQUIRE(defkv_tokenize(m, text.c_str(), int64_t(text.size()), bos, 0, nullptr, 0, &n) == DEFKV_OK);
  std::vector<int32_t> t(n);
  REQUIRE(defkv_tokenize(m, text.c_str(), int64_t(text.size()), bos, 0, t.data(), t.size(), &n) == DEFKV_OK);
  REQUIRE(n == t.size());
  return t;
}

std::string story_text() { return read_text(shared_path("models/data/tinystories_sample.txt")); }

defkv_context_params greedy_params() {
  defkv_context_params p;
  defkv_context_params_init(&p);
  p.temperature = 0;  // the default repeat penalty is off: greedy is plain argmax
  p.n_threads = 1;
  return p;
}

defkv_context_params sampling_params(uint64_t seed) {
  defkv_context_params p;
  defkv_context_params_init(&p);
  p.temperature = 0.9f;
  p.seed = seed;
  p.n_threads = 1;
  return p;
}

defkv_context_params evicting_params(uint64_t seed) {
  defkv_context_params p = sampling_params(seed);
  p.kv_budget_tokens = 48;
  p.kv_window = 16;
  return p;
}

struct Ctx {
  defkv_context* c = nullptr;
  explicit Ctx(const defkv_context_params& p, defkv_model* m = model()) {
    const defkv_status s = defkv_context_create(m, &p, &c);
    INFO(defkv_last_error(nullptr));
    REQUIRE(s == DEFKV_OK);
  }
  ~Ctx() {
    if (c) defkv_context_free(c);
  }
  Ctx(const Ctx&) = delete;
  Ctx& operator=(const Ctx&) = delete;
  operator defkv_context*() const { return c; }
};

struct Collected {
  std::vector<int32_t> tokens;
  std::vector<std::string> pieces;
  std::string text;
  int stop_after = -1;                 // return non-zero after this many tokens
  defkv_context* cancel_ctx = nullptr; // call defkv_cancel on it instead of returning non-zero
};

int collect(int32_t token, const char* text, size_t len, void* user) {
  auto* c = static_cast<Collected*>(user);
  if (token >= 0) c->tokens.push_back(token);
  c->pieces.emplace_back(text, len);
  c->text.append(text, len);
  if (c->stop_after >= 0 && int(c->tokens.size()) >= c->stop_after && token >= 0) {
    if (c->cancel_ctx) {
      defkv_cancel(c->cancel_ctx);
      return 0;
    }
    return 1;
  }
  return 0;
}

// Cancels a context from a thread of its own once armed. A call's callback
// arms it at one point and, at a later point, waits until defkv_cancel has
// returned: the cancel lands anywhere in between (a forward pass, the
// sampler, an eviction round) and certainly before the call goes past the
// later point, so a test asserts on outcomes, never on timing.
class Canceller {
 public:
  explicit Canceller(defkv_context* c)
      : th_([this, c] {
          std::unique_lock<std::mutex> l(m_);
          cv_.wait(l, [this] { return armed_ || quit_; });
          if (!armed_) return;
          l.unlock();
          defkv_cancel(c);
          l.lock();
          done_.store(true);
          cv_.notify_all();
        }) {}
  ~Canceller() {
    {
      std::lock_guard<std::mutex> l(m_);
      quit_ = true;
    }
    cv_.notify_all();
    th_.join();
  }
  Canceller(const Canceller&) = delete;
  Canceller& operator=(const Canceller&) = delete;
  void arm() {
    {
      std::lock_guard<std::mutex> l(m_);
      armed_ = true;
    }
    cv_.notify_all();
  }
  void await() {  // only after arm()
    std::unique_lock<std::mutex> l(m_);
    cv_.wait(l, [this] { return done_.load(); });
  }
  bool done() const { return done_.load(); }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool armed_ = false, quit_ = false;
  std::atomic<bool> done_{false};
  std::thread th_;  // last: starts once the members above exist
};

std::vector<int32_t> gen(defkv_context* c, uint32_t n, defkv_status expect = DEFKV_OK) {
  Collected col;
  uint32_t ng = 0;
  const defkv_status s = defkv_generate(c, n, collect, &col, &ng);
  INFO(defkv_last_error(c));
  REQUIRE(s == expect);
  REQUIRE(ng == col.tokens.size());
  return col.tokens;
}

void eval(defkv_context* c, const std::vector<int32_t>& t) {
  const defkv_status s = defkv_eval(c, t.data(), t.size(), nullptr, nullptr);
  INFO(defkv_last_error(c));
  REQUIRE(s == DEFKV_OK);
}

std::vector<uint8_t> save(defkv_context* c) {
  size_t n = 0;
  REQUIRE(defkv_state_size(c, &n) == DEFKV_OK);
  std::vector<uint8_t> buf(n);
  size_t w = 0;
  REQUIRE(defkv_state_save(c, buf.data(), buf.size(), &w) == DEFKV_OK);
  REQUIRE(w == n);
  return buf;
}

std::vector<uint32_t> entries(defkv_context* c) {
  size_t n = 0;
  REQUIRE(defkv_kv_entries(c, nullptr, 0, &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
  std::vector<uint32_t> v(n);
  REQUIRE(defkv_kv_entries(c, v.data(), v.size(), &n) == DEFKV_OK);
  return v;
}

std::vector<int32_t> positions(defkv_context* c, uint32_t l, uint32_t h) {
  size_t n = 0;
  defkv_status s = defkv_kv_positions(c, l, h, nullptr, 0, &n);
  REQUIRE((s == DEFKV_OK || s == DEFKV_ERR_BUFFER_TOO_SMALL));
  std::vector<int32_t> v(n);
  REQUIRE(defkv_kv_positions(c, l, h, v.data(), v.size(), &n) == DEFKV_OK);
  return v;
}

defkv_kv_stats kv_stats(defkv_context* c) {
  defkv_kv_stats s;
  REQUIRE(defkv_get_kv_stats(c, &s) == DEFKV_OK);
  return s;
}

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      const unsigned char d = s[i + k];
      if ((d >> 6) != 2) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n;
  }
  return true;
}

}  // namespace

TEST_CASE("api: version macros and runtime version agree", "[api]") {
  int ma = -1, mi = -1, pa = -1;
  const char* v = defkv_version(&ma, &mi, &pa);
  CHECK(ma == DEFKV_VERSION_MAJOR);
  CHECK(mi == DEFKV_VERSION_MINOR);
  CHECK(pa == DEFKV_VERSION_PATCH);
  CHECK(std::string(v) == DEFKV_VERSION_STRING);
  CHECK(defkv_abi_version() == DEFKV_ABI_VERSION);
  CHECK(std::string(defkv_status_name(DEFKV_ERR_BUSY)) == "DEFKV_ERR_BUSY");
  CHECK(std::string(defkv_status_name(defkv_status(999))) == "unknown status");
}

TEST_CASE("api: greedy decoding reproduces the independent numpy golden run", "[api]") {
  const nlohmann::json g = nlohmann::json::parse(read_text(shared_path("models/stories260K/golden_greedy.json")));
  const std::vector<int32_t> golden = g["greedy_ids_after_bos"].get<std::vector<int32_t>>();
  defkv_model_info info;
  REQUIRE(defkv_model_get_info(model(), &info) == DEFKV_OK);
  CHECK(info.n_vocab == 512);
  CHECK(info.n_layer == 5);
  CHECK(info.n_head_kv == 4);
  CHECK(info.bos == 1);
  CHECK(info.eos == 2);
  // The stories vocabulary's end-of-generation set is its EOS alone.
  CHECK(defkv_token_is_eog(model(), 2) == 1);
  CHECK(defkv_token_is_eog(model(), 1) == 0);
  CHECK(defkv_token_is_eog(model(), 512) == 0);
  CHECK(defkv_token_is_eog(nullptr, 2) == 0);
  defkv_context_params p = greedy_params();
  p.kv_type = DEFKV_KV_F32;
  Ctx c(p);
  eval(c, {info.bos});
  Collected col;
  uint32_t ng = 0;
  REQUIRE(defkv_generate(c, uint32_t(golden.size()), collect, &col, &ng) == DEFKV_OK);
  CHECK(ng == golden.size());
  CHECK(col.tokens == golden);
  // Streamed text: the golden text, except that streaming keeps the first
  // piece's leading space (the continuation of BOS).
  std::string text = col.text;
  if (!text.empty() && text[0] == ' ') text.erase(0, 1);
  CHECK(text == g["greedy_text"].get<std::string>());
  // detokenize([BOS] + ids) strips that space like SentencePiece.
  std::vector<int32_t> all{info.bos};
  all.insert(all.end(), golden.begin(), golden.end());
  size_t len = 0;
  REQUIRE(defkv_detokenize(model(), all.data(), all.size(), nullptr, 0, &len) == DEFKV_ERR_BUFFER_TOO_SMALL);
  std::string d(len + 1, '\0');
  REQUIRE(defkv_detokenize(model(), all.data(), all.size(), d.data(), d.size(), &len) == DEFKV_OK);
  d.resize(len);
  CHECK(d == g["greedy_text"].get<std::string>());
}

TEST_CASE("api: misuse returns errors and never crashes", "[api]") {
  SECTION("null and foreign handles") {
    uint32_t u = 0;
    size_t n = 0;
    int32_t t = 1;
    CHECK(defkv_eval(nullptr, &t, 1, nullptr, nullptr) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(std::string(defkv_last_error(nullptr)).find("defkv_eval") != std::string::npos);
    CHECK(defkv_generate(nullptr, 1, nullptr, nullptr, &u) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_cancel(nullptr) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_reset(nullptr) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_n_past(nullptr, &u) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_context_free(nullptr) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_model_free(nullptr) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_tokenize(nullptr, "a", -1, 1, 0, nullptr, 0, &n) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_state_save_file(nullptr, "/tmp/x") == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_state_load(nullptr, "x", 1) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(defkv_kv_entries(nullptr, nullptr, 0, &n) == DEFKV_ERR_INVALID_HANDLE);
    defkv_model_info info;
    CHECK(defkv_model_get_info(nullptr, &info) == DEFKV_ERR_INVALID_HANDLE);
    // A model handle where a context is expected (and vice versa), a stack address.
    CHECK(defkv_eval(reinterpret_cast<defkv_context*>(model()), &t, 1, nullptr, nullptr) == DEFKV_ERR_INVALID_HANDLE);
    Ctx c(greedy_params());
    CHECK(defkv_tokenize(reinterpret_cast<defkv_model*>(c.c), "a", -1, 1, 0, nullptr, 0, &n) ==
          DEFKV_ERR_INVALID_HANDLE);
    int local = 0;
    CHECK(defkv_context_free(reinterpret_cast<defkv_context*>(&local)) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(std::string(defkv_last_error(nullptr)).size() > 0);
  }
  SECTION("double free is reported") {
    defkv_context* c = nullptr;
    defkv_context_params p = greedy_params();
    REQUIRE(defkv_context_create(model(), &p, &c) == DEFKV_OK);
    REQUIRE(defkv_context_free(c) == DEFKV_OK);
    CHECK(defkv_context_free(c) == DEFKV_ERR_INVALID_HANDLE);
    CHECK(std::string(defkv_last_error(nullptr)).find("not a live context handle") != std::string::npos);
    uint32_t u;
    CHECK(defkv_n_past(c, &u) == DEFKV_ERR_INVALID_HANDLE);  // use after free: registry check, no dereference
    defkv_model* m = nullptr;
    REQUIRE(defkv_model_load_file(model_path().c_str(), &m) == DEFKV_OK);
    REQUIRE(defkv_model_free(m) == DEFKV_OK);
    CHECK(defkv_model_free(m) == DEFKV_ERR_INVALID_HANDLE);
  }
  SECTION("a context outlives the freed model handle") {
    defkv_model* m = nullptr;
    REQUIRE(defkv_model_load_file(model_path().c_str(), &m) == DEFKV_OK);
    defkv_context* c = nullptr;
    defkv_context_params p = greedy_params();
    REQUIRE(defkv_context_create(m, &p, &c) == DEFKV_OK);
    REQUIRE(defkv_model_free(m) == DEFKV_OK);
    size_t n;
    CHECK(defkv_tokenize(m, "a", -1, 1, 0, nullptr, 0, &n) == DEFKV_ERR_INVALID_HANDLE);
    const int32_t bos = 1;
    REQUIRE(defkv_eval(c, &bos, 1, nullptr, nullptr) == DEFKV_OK);
    CHECK(gen(c, 8).size() == 8);
    REQUIRE(defkv_context_free(c) == DEFKV_OK);
  }
  SECTION("null out-pointers and bad arguments") {
    CHECK(defkv_model_load_file(model_path().c_str(), nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
    defkv_model* m = reinterpret_cast<defkv_model*>(0x1);
    CHECK(defkv_model_load_file(nullptr, &m) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(m == nullptr);
    CHECK(defkv_model_load_file("/nonexistent/model.gguf", &m) == DEFKV_ERR_IO);
    CHECK(std::string(defkv_last_error(nullptr)).find("/nonexistent/model.gguf") != std::string::npos);
    const char junk[64] = "GGUF this is not a model";
    CHECK(defkv_model_load_buffer(junk, sizeof junk, 1, &m) == DEFKV_ERR_FORMAT);
    CHECK(defkv_model_load_buffer(nullptr, 10, 1, &m) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(defkv_context_create(model(), nullptr, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
    Ctx c(greedy_params());
    CHECK(defkv_n_past(c, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(std::string(defkv_last_error(c)).find("out is NULL") != std::string::npos);
    CHECK(defkv_eval(c, nullptr, 3, nullptr, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(defkv_eval(c, nullptr, 0, nullptr, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);  // nothing to evaluate
    const int32_t bad[2] = {1, 512};
    CHECK(defkv_eval(c, bad, 2, nullptr, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(std::string(defkv_last_error(c)).find("512") != std::string::npos);
    uint32_t np = 99;
    REQUIRE(defkv_n_past(c, &np) == DEFKV_OK);
    CHECK(np == 0);  // nothing was evaluated
    CHECK(defkv_kv_positions(c, 5, 0, nullptr, 0, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(defkv_state_load(c, nullptr, 10) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(defkv_state_load_file(c, "/nonexistent/state") == DEFKV_ERR_IO);
  }
  SECTION("bad context parameters are rejected with a message") {
    defkv_context* c = nullptr;
    defkv_context_params p;
    std::memset(&p, 0, sizeof p);  // not initialised
    CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(std::string(defkv_last_error(nullptr)).find("defkv_context_params_init") != std::string::npos);
    defkv_context_params_init(&p);
    p.kv_budget_tokens = 64;
    p.kv_ratio = 0.5;
    CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(std::string(defkv_last_error(nullptr)).find("at most one") != std::string::npos);
    defkv_context_params_init(&p);
    p.kv_budget_tokens = 8;  // below window + sinks
    CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
    defkv_context_params_init(&p);
    p.kv_policy = 42;
    CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
    defkv_context_params_init(&p);
    p.repeat_last_n = -1;
    CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(c == nullptr);
  }
  SECTION("calls in the wrong order") {
    Ctx c(greedy_params());
    uint32_t ng = 7;
    CHECK(defkv_generate(c, 4, nullptr, nullptr, &ng) == DEFKV_ERR_BAD_STATE);
    CHECK(ng == 0);
    CHECK(std::string(defkv_last_error(c)).find("defkv_eval") != std::string::npos);
    eval(c, {1});
    CHECK(gen(c, 3).size() == 3);
    REQUIRE(defkv_reset(c) == DEFKV_OK);
    CHECK(defkv_generate(c, 4, nullptr, nullptr, &ng) == DEFKV_ERR_BAD_STATE);
  }
  SECTION("a call on a busy context returns DEFKV_ERR_BUSY") {
    Ctx c(greedy_params());
    eval(c, {1});
    struct U {
      defkv_context* c;
      defkv_status inner = DEFKV_OK;
    } u{c};
    auto cb = [](int32_t, const char*, size_t, void* p) -> int {
      auto* uu = static_cast<U*>(p);
      const int32_t t = 5;
      uu->inner = defkv_eval(uu->c, &t, 1, nullptr, nullptr);
      return 1;
    };
    REQUIRE(defkv_generate(c, 4, cb, &u, nullptr) == DEFKV_OK);
    CHECK(u.inner == DEFKV_ERR_BUSY);
    // From another thread while a generation runs: eval and free are refused.
    std::atomic<int> phase{0};
    defkv_status from_thread[2] = {DEFKV_OK, DEFKV_OK};
    std::string thread_msg;
    auto wait_cb = [](int32_t, const char*, size_t, void* p) -> int {
      auto* ph = static_cast<std::atomic<int>*>(p);
      if (ph->load() == 0) ph->store(1);
      while (ph->load() == 1) std::this_thread::yield();  // hold the call open until the thread is done
      return 1;
    };
    std::thread th([&] {
      while (phase.load() == 0) std::this_thread::yield();
      const int32_t t = 5;
      from_thread[0] = defkv_eval(c, &t, 1, nullptr, nullptr);
      thread_msg = defkv_last_error(nullptr);
      from_thread[1] = defkv_context_free(c);
      phase.store(2);
    });
    REQUIRE(defkv_generate(c, 4, wait_cb, &phase, nullptr) == DEFKV_OK);
    th.join();
    CHECK(from_thread[0] == DEFKV_ERR_BUSY);
    CHECK(from_thread[1] == DEFKV_ERR_BUSY);
    CHECK(thread_msg.find("another call") != std::string::npos);
    CHECK(defkv_context_free(c) == DEFKV_OK);  // not busy any more
    c.c = nullptr;
  }
  SECTION("buffers too small report the size needed") {
    size_t n = 0;
    int32_t one[1];
    CHECK(defkv_tokenize(model(), "Once upon a time", -1, 1, 0, one, 1, &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
    CHECK(n == tokenize(model(), "Once upon a time").size());
    char small[3];
    const int32_t toks[3] = {403, 407, 261};
    CHECK(defkv_detokenize(model(), toks, 3, small, sizeof small, &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
    std::string big(n + 1, '\0');
    CHECK(defkv_detokenize(model(), toks, 3, big.data(), big.size(), &n) == DEFKV_OK);
    CHECK(std::strlen(big.c_str()) == n);
    char key[4];
    CHECK(defkv_model_meta_string(model(), "general.architecture", key, sizeof key, &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 5);  // "llama"
    char arch[6];
    CHECK(defkv_model_meta_string(model(), "general.architecture", arch, sizeof arch, &n) == DEFKV_OK);
    CHECK(std::string(arch) == "llama");
    CHECK(defkv_model_meta_string(model(), "no.such.key", arch, sizeof arch, &n) == DEFKV_ERR_INVALID_ARGUMENT);
    Ctx c(greedy_params());
    eval(c, tokenize(model(), "Once upon a time"));
    size_t need = 0;
    REQUIRE(defkv_state_size(c, &need) == DEFKV_OK);
    std::vector<uint8_t> buf(need - 1);
    size_t w = 0;
    CHECK(defkv_state_save(c, buf.data(), buf.size(), &w) == DEFKV_ERR_BUFFER_TOO_SMALL);
    CHECK(w == need);
    CHECK(defkv_kv_positions(c, 0, 0, nullptr, 0, &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
    CHECK(n == tokenize(model(), "Once upon a time").size());
  }
  SECTION("the context is bounded by n_ctx") {
    defkv_context_params p = greedy_params();
    p.n_ctx = 16;
    Ctx c(p);
    std::vector<int32_t> t(17, 300);
    CHECK(defkv_eval(c, t.data(), t.size(), nullptr, nullptr) == DEFKV_ERR_CONTEXT_FULL);
    t.resize(12);
    eval(c, t);
    uint32_t ng = 0;
    CHECK(defkv_generate(c, 100, nullptr, nullptr, &ng) == DEFKV_ERR_CONTEXT_FULL);
    CHECK(ng == 5);  // positions 12..15 fed, the 5th sampled token is pending
    uint32_t np = 0;
    REQUIRE(defkv_n_past(c, &np) == DEFKV_OK);
    CHECK(np == 16);
  }
}

TEST_CASE("api: model from a memory buffer equals the mapped file", "[api]") {
  const std::string bytes = read_text(model_path());
  REQUIRE(bytes.size() > 1000);
  for (int copy : {1, 0}) {
    defkv_model* m = nullptr;
    REQUIRE(defkv_model_load_buffer(bytes.data(), bytes.size(), copy, &m) == DEFKV_OK);
    Ctx a(sampling_params(7), m);
    Ctx b(sampling_params(7));
    const std::vector<int32_t> prompt = tokenize(m, "Once upon a time");
    CHECK(prompt == tokenize(model(), "Once upon a time"));
    eval(a, prompt);
    eval(b, prompt);
    CHECK(gen(a, 40) == gen(b, 40));
    // A state from one model image restores into a context of the other.
    const std::vector<uint8_t> st = save(a);
    { const defkv_status ls = defkv_state_load(b, st.data(), st.size()); INFO(defkv_last_error(b)); REQUIRE(ls == DEFKV_OK); }
    REQUIRE(defkv_model_free(m) == DEFKV_OK);
  }
}

TEST_CASE("api: streamed pieces are valid UTF-8 and add up to the tokens' bytes", "[api]") {
  // Hot sampling over the whole vocabulary draws byte tokens (<0x80>..<0xFF>)
  // that split or break multi-byte characters.
  defkv_context_params p = sampling_params(1234);
  p.temperature = 6.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  Ctx c(p);
  eval(c, {1});
  Collected col;
  REQUIRE(defkv_generate(c, 1500, collect, &col, nullptr) == DEFKV_OK);
  size_t byte_tokens = 0;
  std::string raw;
  for (int32_t t : col.tokens) {
    byte_tokens += (t >= 3 + 0x80 && t <= 3 + 0xff);
    char buf[64];
    size_t n = 0;
    REQUIRE(defkv_token_piece(model(), t, buf, sizeof buf, &n) == DEFKV_OK);
    raw.append(buf, n);
  }
  CHECK(byte_tokens > 0);
  for (const std::string& s : col.pieces) CHECK(valid_utf8(s));
  CHECK(valid_utf8(col.text));
  if (valid_utf8(raw)) CHECK(col.text == raw);
  // Split a 2-byte and a 3-byte character over byte tokens: detokenize joins them.
  const int32_t split[] = {1, 3 + 0xC3, 3 + 0xA9, 3 + 0xE2, 3 + 0x82, 3 + 0xAC, 3 + 0xFF};
  char out[32];
  size_t n = 0;
  REQUIRE(defkv_detokenize(model(), split, 7, out, sizeof out, &n) == DEFKV_OK);
  CHECK(std::string(out, n) == "\xC3\xA9\xE2\x82\xAC\xEF\xBF\xBD");  // e-acute, euro, U+FFFD for the lone 0xFF
}

TEST_CASE("api: introspection reports entries, positions and bytes", "[api]") {
  Ctx full(greedy_params());
  const std::vector<int32_t> prompt = tokenize(model(), story_text());
  REQUIRE(prompt.size() > 300);
  const std::vector<int32_t> head(prompt.begin(), prompt.begin() + 300);
  eval(full, head);
  defkv_kv_stats s = kv_stats(full);
  CHECK(s.n_past == 300);
  CHECK(s.entries == 300ull * s.n_layer * s.n_head_kv);
  CHECK(s.bytes_in_use > 0);
  CHECK(s.bytes_in_use <= s.bytes_reserved);
  CHECK(s.evict_rounds == 0);
  std::vector<int32_t> all(300);
  for (int i = 0; i < 300; ++i) all[i] = i;
  CHECK(positions(full, 4, 3) == all);

  Ctx ev(evicting_params(1));
  eval(ev, head);
  s = kv_stats(ev);
  CHECK(s.n_past == 300);
  CHECK(s.evict_rounds > 0);
  CHECK(s.budget_tokens == 48);
  const std::vector<uint32_t> e = entries(ev);
  REQUIRE(e.size() == size_t(s.n_layer) * s.n_head_kv);
  uint64_t total = 0;
  bool differ = false;
  for (uint32_t x : e) {
    total += x;
    differ |= x != e[0];
  }
  CHECK(total == s.entries);
  CHECK(total <= (48ull + 64) * e.size());  // budget + one chunk per head
  CHECK(differ);                             // DefensiveKV is head-adaptive
  const std::vector<int32_t> pos = positions(ev, 2, 1);
  REQUIRE(pos.size() == e[2 * s.n_head_kv + 1]);
  for (size_t i = 1; i < pos.size(); ++i) CHECK(pos[i] > pos[i - 1]);
  CHECK(pos.back() == 299);  // the window is always kept
  CHECK(pos.size() < 300);
  CHECK(s.bytes_in_use < kv_stats(full).bytes_in_use);
}

namespace {

// Runs prompt -> generate(n1) -> [save] -> generate(n2) and checks that a
// fresh context restored from the save continues with the same n2 tokens,
// the same cache (per-head lengths, original positions) and the same stats.
void check_round_trip(const defkv_context_params& p, const std::vector<int32_t>& prompt, uint32_t n1, uint32_t n2,
                      bool via_file) {
  Ctx a(p);
  eval(a, prompt);
  const std::vector<int32_t> first = gen(a, n1);
  REQUIRE(first.size() == n1);
  const std::vector<uint8_t> st = save(a);
  const std::string file = "/tmp/defkv_test_api_state_" + std::to_string(::getpid()) + ".bin";
  if (via_file) REQUIRE(defkv_state_save_file(a, file.c_str()) == DEFKV_OK);
  const std::vector<uint32_t> e_saved = entries(a);
  const defkv_kv_stats s_saved = kv_stats(a);
  const std::vector<int32_t> pos_saved = positions(a, 3, 2);
  const std::vector<int32_t> cont = gen(a, n2);

  Ctx b(p);
  if (via_file) {
    REQUIRE(defkv_state_load_file(b, file.c_str()) == DEFKV_OK);
    std::remove(file.c_str());
  } else {
    { const defkv_status ls = defkv_state_load(b, st.data(), st.size()); INFO(defkv_last_error(b)); REQUIRE(ls == DEFKV_OK); }
  }
  CHECK(entries(b) == e_saved);
  CHECK(positions(b, 3, 2) == pos_saved);
  const defkv_kv_stats sb = kv_stats(b);
  CHECK(sb.n_past == s_saved.n_past);
  CHECK(sb.entries == s_saved.entries);
  CHECK(sb.evict_rounds == s_saved.evict_rounds);
  CHECK(sb.pending_token == 1);
  CHECK(gen(b, n2) == cont);
  // Rewinding the original context to the save gives the same continuation too.
  REQUIRE(defkv_state_load(a, st.data(), st.size()) == DEFKV_OK);
  CHECK(gen(a, n2) == cont);
  // And more conversation after the continuation stays identical.
  const std::vector<int32_t> more = tokenize(model(), " The end. Then", false);
  eval(a, more);
  eval(b, more);
  CHECK(gen(a, 30) == gen(b, 30));
}

}  // namespace

TEST_CASE("api: save -> restore -> continue equals continuing, without eviction", "[api][state]") {
  const std::vector<int32_t> prompt = tokenize(model(), "Once upon a time, there was a little dog");
  check_round_trip(sampling_params(11), prompt, 20, 60, false);
  defkv_context_params q = sampling_params(12);
  q.kv_type = DEFKV_KV_Q8_0;
  check_round_trip(q, prompt, 10, 40, true);
}

TEST_CASE("api: save -> restore -> continue equals continuing, with eviction", "[api][state]") {
  std::vector<int32_t> prompt = tokenize(model(), story_text());
  prompt.resize(250);
  SECTION("defensivekv, bounded, f16") {
    check_round_trip(evicting_params(21), prompt, 70, 90, false);
  }
  SECTION("layer-defensivekv, q8_0, via a file") {
    defkv_context_params p = evicting_params(22);
    p.kv_policy = DEFKV_POLICY_LAYER_DEFENSIVEKV;
    p.kv_type = DEFKV_KV_Q8_0;
    check_round_trip(p, prompt, 40, 70, true);
  }
  SECTION("oneshot with kv_ratio") {
    defkv_context_params p = sampling_params(23);
    p.kv_ratio = 0.3;
    p.kv_window = 16;
    p.kv_schedule = DEFKV_SCHEDULE_ONESHOT;
    check_round_trip(p, prompt, 30, 50, false);
  }
}

TEST_CASE("api: corrupt or foreign states are rejected and leave the context unchanged", "[api][state]") {
  Ctx a(evicting_params(31));
  std::vector<int32_t> prompt = tokenize(model(), story_text());
  prompt.resize(200);
  eval(a, prompt);
  gen(a, 10);
  const std::vector<uint8_t> st = save(a);
  const std::vector<uint8_t> st_before = save(a);
  REQUIRE(st == st_before);

  auto expect = [&](const std::vector<uint8_t>& bad, defkv_status want, const char* needle) {
    const defkv_status s = defkv_state_load(a, bad.data(), bad.size());
    INFO(defkv_last_error(a));
    CHECK(s == want);
    CHECK(std::string(defkv_last_error(a)).find(needle) != std::string::npos);
    CHECK(save(a) == st_before);  // unchanged
  };
  std::vector<uint8_t> bad = st;
  bad[bad.size() / 2] ^= 0x40;
  expect(bad, DEFKV_ERR_FORMAT, "checksum");
  bad = st;
  bad.resize(bad.size() - 100);
  expect(bad, DEFKV_ERR_FORMAT, "truncated");
  bad = st;
  bad[0] = 'X';
  expect(bad, DEFKV_ERR_FORMAT, "magic");
  bad = st;
  bad[8] = 99;  // format version
  expect(bad, DEFKV_ERR_FORMAT, "version");
  expect(std::vector<uint8_t>(10, 0), DEFKV_ERR_FORMAT, "header");

  // Another model (same architecture, F16 weights) and another geometry.
  for (const char* other : {"models/stories260K/stories260K-f16.gguf", "models/needle/needle-llama-0.9M-f32.gguf"}) {
    defkv_model* m = nullptr;
    REQUIRE(defkv_model_load_file(shared_path(other).c_str(), &m) == DEFKV_OK);
    Ctx o(evicting_params(31), m);
    const defkv_status s = defkv_state_load(o, st.data(), st.size());
    CHECK(s == DEFKV_ERR_MISMATCH);
    CHECK(std::string(defkv_last_error(o)).find("different model") != std::string::npos);
    defkv_model_free(m);
  }
  // Same model, incompatible KV parameters.
  defkv_context_params p = evicting_params(31);
  p.kv_budget_tokens = 64;
  Ctx other_budget(p);
  CHECK(defkv_state_load(other_budget, st.data(), st.size()) == DEFKV_ERR_MISMATCH);
  CHECK(std::string(defkv_last_error(other_budget)).find("budget") != std::string::npos);
  p = evicting_params(31);
  p.kv_type = DEFKV_KV_F32;
  Ctx other_type(p);
  CHECK(defkv_state_load(other_type, st.data(), st.size()) == DEFKV_ERR_MISMATCH);
  CHECK(std::string(defkv_last_error(other_type)).find("KV type") != std::string::npos);
  Ctx no_budget(sampling_params(31));
  CHECK(defkv_state_load(no_budget, st.data(), st.size()) == DEFKV_ERR_MISMATCH);

  // The original still continues like a fresh restore.
  Ctx b(evicting_params(31));
  { const defkv_status ls = defkv_state_load(b, st.data(), st.size()); INFO(defkv_last_error(b)); REQUIRE(ls == DEFKV_OK); }
  CHECK(gen(a, 30) == gen(b, 30));
}

TEST_CASE("api: cancellation in each phase leaves the context usable", "[api][cancel]") {
  std::vector<int32_t> prompt = tokenize(model(), story_text());
  prompt.resize(600);

  SECTION("decode: from the token callback, then continue exactly") {
    Ctx ref(greedy_params());
    eval(ref, prompt);
    const std::vector<int32_t> want = gen(ref, 60);
    Ctx c(greedy_params());
    eval(c, prompt);
    Collected col;
    col.stop_after = 25;
    col.cancel_ctx = c;
    uint32_t ng = 0;
    CHECK(defkv_generate(c, 60, collect, &col, &ng) == DEFKV_ERR_CANCELLED);
    CHECK(ng == 25);
    CHECK(std::string(defkv_last_error(c)).find("cancel") != std::string::npos);
    std::vector<int32_t> got = col.tokens;
    const std::vector<int32_t> rest = gen(c, 35);
    got.insert(got.end(), rest.begin(), rest.end());
    CHECK(got == want);
  }
  SECTION("prefill: from the progress callback") {
    defkv_context_params p = greedy_params();
    Ctx c(p);
    struct P {
      defkv_context* c;
      int calls = 0;
      uint64_t last_done = 0, total = 0;
    } u{c};
    auto progress = [](uint64_t done, uint64_t total, void* user) -> int {
      auto* pp = static_cast<P*>(user);
      ++pp->calls;
      pp->last_done = done;
      pp->total = total;
      if (pp->calls == 1) defkv_cancel(pp->c);
      return 0;
    };
    CHECK(defkv_eval(c, prompt.data(), prompt.size(), progress, &u) == DEFKV_ERR_CANCELLED);
    CHECK(u.calls == 1);
    CHECK(u.total == prompt.size());
    uint32_t np = 0;
    REQUIRE(defkv_n_past(c, &np) == DEFKV_OK);
    CHECK(np == u.last_done);
    CHECK(np < prompt.size());
    uint32_t ng;
    CHECK(defkv_generate(c, 4, nullptr, nullptr, &ng) == DEFKV_ERR_BAD_STATE);  // prompt incomplete
    // Feed the rest: same result as evaluating the prompt in one go.
    eval(c, std::vector<int32_t>(prompt.begin() + np, prompt.end()));
    Ctx ref(greedy_params());
    eval(ref, prompt);
    CHECK(gen(c, 30) == gen(ref, 30));
    // A progress callback returning non-zero cancels too.
    Ctx d(greedy_params());
    auto stop = [](uint64_t, uint64_t, void*) -> int { return 1; };
    CHECK(defkv_eval(d, prompt.data(), prompt.size(), stop, nullptr) == DEFKV_ERR_CANCELLED);
  }
  SECTION("eviction: cancel requested after the last chunk stops the oneshot compression round") {
    defkv_context_params p = sampling_params(41);
    p.kv_budget_tokens = 48;
    p.kv_window = 16;
    p.kv_schedule = DEFKV_SCHEDULE_ONESHOT;
    Ctx c(p);
    struct P {
      defkv_context* c;
      uint64_t total = 0;
    } u{c};
    auto progress = [](uint64_t done, uint64_t total, void* user) -> int {
      auto* pp = static_cast<P*>(user);
      pp->total = total;
      if (done == total) defkv_cancel(pp->c);  // every chunk is in; the round comes next
      return 0;
    };
    CHECK(defkv_eval(c, prompt.data(), prompt.size(), progress, &u) == DEFKV_ERR_CANCELLED);
    CHECK(u.total == prompt.size());
    const defkv_kv_stats s = kv_stats(c);
    CHECK(s.n_past == prompt.size());                                  // the prompt was evaluated
    CHECK(s.evict_rounds == 0);                                        // the round was cancelled
    CHECK(s.entries > 48ull * s.n_layer * s.n_head_kv);
    // Usable: the logits of the last prompt token are there, generation runs.
    CHECK(gen(c, 20).size() == 20);
    CHECK(kv_stats(c).n_past == prompt.size() + 19);
  }
  SECTION("prefill, cancelled from another thread inside a chosen chunk: resuming gives the uninterrupted result") {
    constexpr uint32_t kChunk = 64;
    for (bool budget : {false, true}) {
      INFO((budget ? "budget" : "full cache"));
      defkv_context_params p = budget ? evicting_params(61) : greedy_params();
      p.prefill_chunk_tokens = kChunk;
      Ctx ref(p);
      eval(ref, prompt);
      const std::vector<int32_t> want = gen(ref, 40);
      Ctx c(p);
      int cancels = 0;
      for (int round = 0;; ++round) {
        uint32_t np = 0;
        REQUIRE(defkv_n_past(c, &np) == DEFKV_OK);
        if (np == prompt.size()) break;
        const uint32_t left = uint32_t(prompt.size()) - np;
        const uint32_t n_chunks = (left + kChunk - 1) / kChunk;
        // The progress callback after chunk j arms the canceller; the one
        // after chunk j + 1 waits until its cancel has returned. The cancel
        // lands in chunk j + 1 (rolled back) or after its forward pass (in
        // the eviction round), and before chunk j + 2 starts.
        const uint32_t j = 1 + uint32_t(round % 3);
        if (j + 1 >= n_chunks) {  // too few chunks left to land a cancel inside one
          REQUIRE(defkv_eval(c, prompt.data() + np, left, nullptr, nullptr) == DEFKV_OK);
          continue;
        }
        Canceller cancel(c);
        struct U {
          Canceller* cancel;
          uint32_t j, calls = 0;
        } u{&cancel, j};
        auto progress = [](uint64_t, uint64_t, void* user) -> int {
          auto* pu = static_cast<U*>(user);
          ++pu->calls;
          if (pu->calls == pu->j) pu->cancel->arm();
          if (pu->calls == pu->j + 1) pu->cancel->await();
          return 0;
        };
        INFO("round " << round << " at position " << np << ", cancel armed after chunk " << j);
        CHECK(defkv_eval(c, prompt.data() + np, left, progress, &u) == DEFKV_ERR_CANCELLED);
        cancels += 1;
        const defkv_kv_stats st = kv_stats(c);
        CHECK((st.n_past == np + j * kChunk || st.n_past == np + (j + 1) * kChunk));
        if (budget) CHECK(st.entries <= (48ull + kChunk) * st.n_layer * st.n_head_kv);
        else CHECK(st.entries == uint64_t(st.n_past) * st.n_layer * st.n_head_kv);  // nothing half-appended
        uint32_t ng = 0;
        CHECK(defkv_generate(c, 4, nullptr, nullptr, &ng) == DEFKV_ERR_BAD_STATE);  // the prompt is incomplete
      }
      CHECK(cancels >= 3);
      REQUIRE(kv_stats(c).n_past == prompt.size());
      const std::vector<int32_t> got = gen(c, 40);
      if (!budget) CHECK(got == want);  // exact: cancelled batches were rolled back
      else CHECK(got.size() == 40);     // a cancelled eviction round may leave some layers unevicted
    }
  }
  SECTION("from another thread during a long generation: honoured at the next token") {
    for (bool budget : {false, true}) {
      INFO((budget ? "budget" : "full cache"));
      defkv_context_params p = budget ? evicting_params(51) : sampling_params(51);
      p.n_ctx = 8192;
      Ctx c(p);
      eval(c, prompt);
      // The first token arms the canceller, which cancels while the
      // generation runs on; token 200 waits for it, so the call cannot end
      // uncancelled however the threads are scheduled.
      Canceller cancel(c);
      struct U {
        Canceller* cancel;
        uint32_t n = 0, after = 0;
      } u{&cancel};
      auto cb = [](int32_t tok, const char*, size_t, void* user) -> int {
        auto* pu = static_cast<U*>(user);
        if (tok < 0) return 0;
        ++pu->n;
        if (pu->cancel->done()) ++pu->after;  // tokens delivered once defkv_cancel had returned
        if (pu->n == 1) pu->cancel->arm();
        if (pu->n == 200) pu->cancel->await();
        return 0;
      };
      uint32_t ng = 0;
      CHECK(defkv_generate(c, 7000, cb, &u, &ng) == DEFKV_ERR_CANCELLED);
      CHECK(ng == u.n);
      CHECK(ng <= 201);
      // The flag is read before each step and between the layers of each
      // forward pass, so at most the token sampled before that read follows.
      CHECK(u.after <= 1);
      CHECK(gen(c, 10).size() == 10);  // usable afterwards
    }
  }
  SECTION("from another thread at chosen tokens: greedy output is unchanged") {
    Ctx ref(greedy_params());
    eval(ref, prompt);
    const std::vector<int32_t> want = gen(ref, 300);
    REQUIRE(want.size() == 300);
    Ctx c(greedy_params());
    eval(c, prompt);
    std::vector<int32_t> got;
    int cancels = 0;
    for (int round = 0; got.size() < want.size(); ++round) {
      const uint32_t left = uint32_t(want.size() - got.size());
      // Token k's callback arms the canceller, token k + 1's waits for it:
      // the cancel lands in the forward pass of token k (rolled back; the
      // call returns k tokens) or after it (k + 1 tokens).
      const uint32_t k = 1 + uint32_t(round % 7);
      Collected col;
      if (k + 1 >= left) {  // too few tokens left to land a cancel before the end
        REQUIRE(defkv_generate(c, left, collect, &col, nullptr) == DEFKV_OK);
        got.insert(got.end(), col.tokens.begin(), col.tokens.end());
        continue;
      }
      Canceller cancel(c);
      struct U {
        Collected* col;
        Canceller* cancel;
        uint32_t k;
      } u{&col, &cancel, k};
      auto cb = [](int32_t tok, const char* text, size_t len, void* user) -> int {
        auto* pu = static_cast<U*>(user);
        collect(tok, text, len, pu->col);
        if (tok < 0) return 0;
        if (pu->col->tokens.size() == pu->k) pu->cancel->arm();
        if (pu->col->tokens.size() == pu->k + 1) pu->cancel->await();
        return 0;
      };
      uint32_t ng = 0;
      INFO("round " << round << " after " << got.size() << " tokens, cancel armed at token " << k);
      CHECK(defkv_generate(c, left, cb, &u, &ng) == DEFKV_ERR_CANCELLED);
      CHECK((ng == k || ng == k + 1));
      cancels += 1;
      got.insert(got.end(), col.tokens.begin(), col.tokens.end());
    }
    CHECK(cancels >= 30);
    CHECK(got == want);
  }
}

TEST_CASE("api: concurrent contexts on one model match their single-threaded outputs", "[api][threads]") {
  constexpr int kThreads = 4;
  std::vector<int32_t> story = tokenize(model(), story_text());
  struct Job {
    defkv_context_params p;
    std::vector<int32_t> prompt;
    std::vector<int32_t> want, got;
  };
  std::vector<Job> jobs(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    jobs[i].p = (i % 2) ? evicting_params(100 + i) : sampling_params(100 + i);
#if defined(__SANITIZE_THREAD__)
    // libgomp is not instrumented: its barriers look like races to TSan, so
    // under TSan every thread is one of the test's (scripts/test-sanitizers.sh)
    jobs[i].p.n_threads = 1;
#else
    jobs[i].p.n_threads = 1 + (i % 2);
#endif
    jobs[i].prompt.assign(story.begin(), story.begin() + 100 + 60 * i);
  }
  auto run = [](Job& j, std::vector<int32_t>& out) {
    defkv_context* c = nullptr;
    if (defkv_context_create(model(), &j.p, &c) != DEFKV_OK) return;
    if (defkv_eval(c, j.prompt.data(), j.prompt.size(), nullptr, nullptr) == DEFKV_OK) {
      Collected col;
      if (defkv_generate(c, 150, collect, &col, nullptr) == DEFKV_OK) out = col.tokens;
      const int32_t more[3] = {261, 300, 400};
      if (defkv_eval(c, more, 3, nullptr, nullptr) == DEFKV_OK) {
        Collected col2;
        if (defkv_generate(c, 50, collect, &col2, nullptr) == DEFKV_OK)
          out.insert(out.end(), col2.tokens.begin(), col2.tokens.end());
      }
    }
    defkv_context_free(c);
  };
  for (Job& j : jobs) run(j, j.want);
  for (int rep = 0; rep < 2; ++rep) {
    std::vector<std::thread> threads;
    for (Job& j : jobs) {
      j.got.clear();
      threads.emplace_back([&j, &run] { run(j, j.got); });
    }
    for (std::thread& t : threads) t.join();
    for (const Job& j : jobs) {
      REQUIRE(j.want.size() > 150);
      CHECK(j.got == j.want);
    }
  }
}

// ---------------------------------------------------------------------------
// Additions after the first ABI: defkv_decode / defkv_sample /
// defkv_get_logits, defkv_context_get_info, versioned context params.

namespace {

defkv_context_info context_info(defkv_context* c) {
  defkv_context_info i;
  std::memset(&i, 0, sizeof i);
  i.struct_size = sizeof i;
  const defkv_status s = defkv_context_get_info(c, &i);
  INFO(defkv_last_error(c));
  REQUIRE(s == DEFKV_OK);
  REQUIRE(i.struct_size == sizeof i);
  return i;
}

std::vector<float> logits(defkv_context* c) {
  size_t n = 0;
  REQUIRE(defkv_get_logits(c, nullptr, 0, &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
  std::vector<float> l(n);
  REQUIRE(defkv_get_logits(c, l.data(), l.size(), &n) == DEFKV_OK);
  return l;
}

// The caller's own loop: sample, and feed all but the last token (as
// defkv_generate leaves the last one pending).
std::vector<int32_t> own_loop(defkv_context* c, uint32_t n) {
  std::vector<int32_t> out;
  for (uint32_t i = 0; i < n; ++i) {
    int32_t t = -1;
    { const defkv_status s = defkv_sample(c, &t); INFO(defkv_last_error(c)); REQUIRE(s == DEFKV_OK); }
    out.push_back(t);
    if (i + 1 < n) {
      const defkv_status s = defkv_decode(c, t);
      INFO(defkv_last_error(c));
      REQUIRE(s == DEFKV_OK);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("api: defkv_decode + defkv_sample reproduce the numpy golden greedy run", "[api][decode]") {
  const nlohmann::json g = nlohmann::json::parse(read_text(shared_path("models/stories260K/golden_greedy.json")));
  const std::vector<int32_t> golden = g["greedy_ids_after_bos"].get<std::vector<int32_t>>();
  defkv_context_params p = greedy_params();
  p.kv_type = DEFKV_KV_F32;
  Ctx c(p);
  const int32_t bos = 1;
  REQUIRE(defkv_decode(c, bos) == DEFKV_OK);  // a decode step from an empty context
  // Greedy sampling is the argmax of the logits defkv_get_logits returns.
  const std::vector<float> l = logits(c);
  REQUIRE(l.size() == 512);
  int32_t t = -1;
  REQUIRE(defkv_sample(c, &t) == DEFKV_OK);
  CHECK(t == int32_t(std::max_element(l.begin(), l.end()) - l.begin()));
  CHECK(t == golden[0]);
  REQUIRE(defkv_decode(c, t) == DEFKV_OK);
  std::vector<int32_t> got{t};
  const std::vector<int32_t> rest = own_loop(c, uint32_t(golden.size() - 1));
  got.insert(got.end(), rest.begin(), rest.end());
  CHECK(got == golden);
}

TEST_CASE("api: a defkv_decode loop equals defkv_generate, with decode-time eviction", "[api][decode]") {
  const std::vector<int32_t> story = tokenize(model(), story_text());
  const std::vector<int32_t> prompt(story.begin(), story.begin() + 120);
  for (const defkv_context_params& p : {sampling_params(21), evicting_params(22)}) {
    Ctx a(p), b(p);
    eval(a, prompt);
    eval(b, prompt);
    const std::vector<int32_t> want = gen(a, 150);
    CHECK(own_loop(b, 150) == want);
    CHECK(entries(b) == entries(a));
    const defkv_kv_stats sa = kv_stats(a), sb = kv_stats(b);
    CHECK(sb.n_past == sa.n_past);
    CHECK(sb.evict_rounds == sa.evict_rounds);
    CHECK(sb.decode_tokens == sa.decode_tokens);
    CHECK(sb.pending_token == 0);  // the caller keeps the last sampled token
    CHECK(sa.pending_token == 1);
    if (p.kv_budget_tokens) {
      const defkv_context_info ib = context_info(b);
      CHECK(sb.evict_rounds > 0);
      // Bounded decoding: live entries stay within (budget + decode slack) per head on average.
      CHECK(sb.entries <= uint64_t(ib.budget_tokens + ib.decode_slack_tokens) * sb.n_layer * sb.n_head_kv);
    }
    // After defkv_generate, defkv_decode feeds the pending token first: both
    // contexts then hold the same conversation.
    const int32_t next = 300;
    REQUIRE(defkv_decode(b, want.back()) == DEFKV_OK);
    REQUIRE(defkv_decode(b, next) == DEFKV_OK);
    REQUIRE(defkv_decode(a, next) == DEFKV_OK);
    CHECK(kv_stats(a).n_past == kv_stats(b).n_past);
    CHECK(logits(a) == logits(b));
    CHECK(gen(a, 20) == gen(b, 20));
  }
}

TEST_CASE("api: defkv_decode / defkv_sample / defkv_get_logits misuse", "[api][decode]") {
  defkv_context_params p = greedy_params();
  p.n_ctx = 4;
  Ctx c(p);
  int32_t t = 0;
  size_t n = 0;
  CHECK(defkv_sample(c, &t) == DEFKV_ERR_BAD_STATE);
  CHECK(defkv_get_logits(c, nullptr, 0, &n) == DEFKV_ERR_BAD_STATE);
  CHECK(defkv_sample(c, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(defkv_decode(c, -1) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(defkv_decode(c, 512) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(defkv_decode(nullptr, 1) == DEFKV_ERR_INVALID_HANDLE);
  CHECK(defkv_sample(nullptr, &t) == DEFKV_ERR_INVALID_HANDLE);
  CHECK(defkv_get_logits(nullptr, nullptr, 0, &n) == DEFKV_ERR_INVALID_HANDLE);
  eval(c, {1});
  std::vector<float> small(10);
  CHECK(defkv_get_logits(c, small.data(), small.size(), &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
  CHECK(n == 512);
  CHECK(defkv_get_logits(c, small.data(), small.size(), nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
  // A token pending from defkv_generate has no logits yet: sampling again is refused.
  REQUIRE(gen(c, 1).size() == 1);
  CHECK(defkv_sample(c, &t) == DEFKV_ERR_BAD_STATE);
  CHECK(std::string(defkv_last_error(c)).find("pending") != std::string::npos);
  // n_ctx = 4: position 0 used, the pending token and 2 more fit, then full.
  REQUIRE(defkv_decode(c, 300) == DEFKV_OK);  // pending + 300: positions 1, 2
  REQUIRE(defkv_decode(c, 301) == DEFKV_OK);  // position 3
  CHECK(defkv_decode(c, 302) == DEFKV_ERR_CONTEXT_FULL);
  uint32_t np = 0;
  REQUIRE(defkv_n_past(c, &np) == DEFKV_OK);
  CHECK(np == 4);
  REQUIRE(defkv_sample(c, &t) == DEFKV_OK);  // the context is still usable
}

TEST_CASE("api: no sampling from stale logits after a cancelled defkv_eval", "[api][decode]") {
  const std::vector<int32_t> story = tokenize(model(), story_text());
  const std::vector<int32_t> prompt(story.begin(), story.begin() + 300);
  Ctx c(greedy_params());  // full cache: 256-token chunks
  auto stop_after_first = [](uint64_t done, uint64_t, void*) -> int { return done >= 64 ? 1 : 0; };
  REQUIRE(defkv_eval(c, prompt.data(), prompt.size(), stop_after_first, nullptr) == DEFKV_ERR_CANCELLED);
  uint32_t np = 0;
  REQUIRE(defkv_n_past(c, &np) == DEFKV_OK);
  REQUIRE(np > 0);
  REQUIRE(np < prompt.size());
  int32_t t = -1;
  size_t n = 0;
  CHECK(defkv_sample(c, &t) == DEFKV_ERR_BAD_STATE);
  CHECK(std::string(defkv_last_error(c)).find("cancelled") != std::string::npos);
  CHECK(defkv_get_logits(c, nullptr, 0, &n) == DEFKV_ERR_BAD_STATE);
  // The rest of the prompt completes it: then both work, and greedy = argmax.
  eval(c, std::vector<int32_t>(prompt.begin() + np, prompt.end()));
  const std::vector<float> l = logits(c);
  REQUIRE(defkv_sample(c, &t) == DEFKV_OK);
  CHECK(t == int32_t(std::max_element(l.begin(), l.end()) - l.begin()));
}

TEST_CASE("api: defkv_context_get_info resolves the defaults", "[api][info]") {
  defkv_model_info mi;
  REQUIRE(defkv_model_get_info(model(), &mi) == DEFKV_OK);
  {
    defkv_context_params p = greedy_params();
    Ctx c(p);
    const defkv_context_info i = context_info(c);
    CHECK(i.n_ctx == mi.n_ctx_train);
    CHECK(i.n_threads == 1);
    CHECK(i.has_budget == 0);
    CHECK(i.kv_schedule == DEFKV_SCHEDULE_ONESHOT);
    CHECK(i.kv_type == DEFKV_KV_F16);
    CHECK(i.kv_row_bytes == mi.head_dim * 2);  // f16
    CHECK(i.prefill_chunk_tokens == 256);        // the engine's full-cache default
    CHECK(i.kv_window == 32);
    CHECK(i.kv_sinks == 4);
    CHECK(i.kv_pool == 5);
    CHECK(i.budget_tokens == 0);
    CHECK(i.last_stop_reason == DEFKV_STOP_NONE);
    CHECK(i.kv_bytes_reserved == kv_stats(c).bytes_reserved);
  }
  {
    defkv_context_params p = evicting_params(3);  // budget 48, window 16
    p.kv_type = DEFKV_KV_F32;
    p.kv_pool = 3;
    Ctx c(p);
    const defkv_context_info i = context_info(c);
    CHECK(i.has_budget == 1);
    CHECK(i.kv_policy == DEFKV_POLICY_DEFENSIVEKV);
    CHECK(i.kv_schedule == DEFKV_SCHEDULE_BOUNDED);
    CHECK(i.kv_row_bytes == mi.head_dim * 4);  // f32
    CHECK(i.budget_tokens == 48);
    CHECK(i.kv_window == 16);
    CHECK(i.decode_slack_tokens == 16);        // = window
    CHECK(i.prefill_chunk_tokens == 64);       // max(64, 2 * window)
    CHECK(i.kv_pool == 3);
  }
  {
    defkv_context_params p = evicting_params(3);
    p.kv_pool = 4;  // the pooling kernel must be odd
    defkv_context* c = nullptr;
    CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(std::string(defkv_last_error(nullptr)).find("odd") != std::string::npos);
  }
  SECTION("a smaller info struct is filled only as far as it reaches") {
    Ctx c(greedy_params());
    defkv_context_info i;
    std::memset(&i, 0xAB, sizeof i);
    i.struct_size = 8;  // struct_size and n_ctx
    REQUIRE(defkv_context_get_info(c, &i) == DEFKV_OK);
    CHECK(i.struct_size == 8);
    CHECK(i.n_ctx == mi.n_ctx_train);
    CHECK(i.n_threads == 0xABABABABu);
    i.struct_size = 2;
    CHECK(defkv_context_get_info(c, &i) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK(defkv_context_get_info(c, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
  }
  SECTION("stop reasons of defkv_generate") {
    defkv_context_params p = sampling_params(5);
    p.n_ctx = 40;
    Ctx c(p);
    CHECK(std::string(defkv_stop_reason_name(DEFKV_STOP_CONTEXT_FULL)) == "context_full");
    CHECK(std::string(defkv_stop_reason_name(99)) == "unknown");
    eval(c, {1});
    gen(c, 5);
    CHECK(context_info(c).last_stop_reason == DEFKV_STOP_N_PREDICT);
    Collected col;
    col.stop_after = 2;
    REQUIRE(defkv_generate(c, 10, collect, &col, nullptr) == DEFKV_OK);
    CHECK(context_info(c).last_stop_reason == DEFKV_STOP_CALLBACK);
    Collected col2;
    col2.stop_after = 1;
    col2.cancel_ctx = c;
    CHECK(defkv_generate(c, 10, collect, &col2, nullptr) == DEFKV_ERR_CANCELLED);
    CHECK(context_info(c).last_stop_reason == DEFKV_STOP_CANCELLED);
    Collected col3;
    const defkv_status s = defkv_generate(c, 100, collect, &col3, nullptr);
    if (!col3.tokens.empty() && col3.tokens.back() == 2) {  // EOS before the context filled up
      CHECK(s == DEFKV_OK);
      CHECK(context_info(c).last_stop_reason == DEFKV_STOP_EOS);
    } else {
      CHECK(s == DEFKV_ERR_CONTEXT_FULL);
      CHECK(context_info(c).last_stop_reason == DEFKV_STOP_CONTEXT_FULL);
    }
    REQUIRE(defkv_reset(c) == DEFKV_OK);
    CHECK(context_info(c).last_stop_reason == DEFKV_STOP_NONE);
  }
}

TEST_CASE("api: context params of another struct size are refused with a message", "[api][abi]") {
  defkv_context_params p;
  defkv_context_params_init(&p);
  CHECK(p.struct_size == sizeof(defkv_context_params));
  CHECK(p.kv_pool == 5);
  defkv_context* c = nullptr;
  for (uint32_t size : {uint32_t(sizeof p) - 8, uint32_t(sizeof p) + 8}) {
    p.struct_size = size;
    CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
    CHECK_THAT(defkv_last_error(nullptr), Catch::Contains("struct_size") && Catch::Contains("ABI"));
  }
  CHECK(c == nullptr);
}

TEST_CASE("api: kv_sinks defaults to the engine's 4 sinks", "[api][abi]") {
  defkv_context_params d;
  defkv_context_params_init(&d);
  CHECK(d.kv_sinks == -1);
  defkv_context_params p = evicting_params(3);
  p.kv_sinks = -1;
  Ctx c(p);
  CHECK(context_info(c).kv_sinks == 4);
}

TEST_CASE("api: kv_sinks 0 keeps no sinks; -1 is the default 4", "[api][abi]") {
  // Oracle: StreamingLLM's definition. After a bounded prefill of n tokens the
  // streaming policy keeps the sinks and the newest budget - sinks positions.
  const std::vector<int32_t> prompt = tokenize(model(), story_text().substr(0, 1200));
  const int32_t n = int32_t(prompt.size());
  auto expected = [&](int32_t sinks, int32_t budget) {
    std::vector<int32_t> v;
    for (int32_t i = 0; i < sinks; ++i) v.push_back(i);
    for (int32_t i = n - (budget - sinks); i < n; ++i) v.push_back(i);
    return v;
  };
  for (const auto& [sinks_field, want] :
       {std::pair<int32_t, int32_t>{0, 0}, {-1, 4}, {2, 2}}) {
    INFO("kv_sinks " << sinks_field);
    defkv_context_params p = evicting_params(3);
    p.kv_policy = DEFKV_POLICY_STREAMING;
    p.kv_sinks = sinks_field;
    Ctx c(p);
    CHECK(context_info(c).kv_sinks == uint32_t(want));
    eval(c, prompt);
    for (uint32_t l = 0; l < 5; ++l)
      for (uint32_t h = 0; h < 4; ++h) {
        std::vector<int32_t> got = positions(c, l, h);
        std::sort(got.begin(), got.end());
        CHECK(got == expected(want, 48));
      }
  }
  // With 0 sinks the minimum budget is the window alone.
  defkv_context_params p = evicting_params(3);
  p.kv_sinks = 0;
  p.kv_budget_tokens = 16;
  defkv_context* c = nullptr;
  CHECK(defkv_context_create(model(), &p, &c) == DEFKV_OK);
  CHECK(defkv_context_free(c) == DEFKV_OK);
  p.kv_sinks = -1;
  CHECK(defkv_context_create(model(), &p, &c) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK_THAT(defkv_last_error(nullptr), Catch::Contains("window + sinks = 20"));
}

// ---- chat templates ----

namespace {

std::string apply_template(const char* tmpl, const std::vector<defkv_chat_message>& ms, uint32_t flags) {
  size_t n = 0;
  REQUIRE(defkv_chat_apply_template(model(), tmpl, ms.data(), ms.size(), flags, nullptr, 0, &n) ==
          DEFKV_ERR_BUFFER_TOO_SMALL);
  std::string buf(n + 1, '\x7f');
  size_t n2 = 0;
  REQUIRE(defkv_chat_apply_template(model(), tmpl, ms.data(), ms.size(), flags, buf.data(), buf.size(), &n2) ==
          DEFKV_OK);
  REQUIRE(n2 == n);
  REQUIRE(buf[n] == '\0');
  buf.resize(n);
  return buf;
}

}  // namespace

TEST_CASE("api: defkv_chat_apply_template renders the chat examples and reports its format", "[api][chat]") {
  // The Qwen3 and Llama 3 examples of the shared tokenizer data, rendered with
  // their templates given as text (stories260K has none of its own).
  for (const std::string stem : {"ggml-vocab-qwen2", "ggml-vocab-llama-bpe"}) {
    INFO(stem);
    const nlohmann::json ex =
        nlohmann::json::parse(read_text(shared_path("testdata/tokenizers/" + stem + ".chat_example.json")));
    const std::string jinja = read_text(shared_path("testdata/tokenizers/" + stem + ".chat_template.jinja"));
    std::vector<std::string> roles, contents;
    for (const auto& m : ex.at("messages")) {
      roles.push_back(m.at("role"));
      contents.push_back(m.at("content"));
    }
    std::vector<defkv_chat_message> ms;
    for (size_t i = 0; i < roles.size(); ++i) ms.push_back({roles[i].c_str(), contents[i].c_str()});
    std::string want = ex.at("rendered");
    // BOS is the model's: stories260K's "<s>" where Llama 3 has <|begin_of_text|>.
    const std::string llama3_bos = "<|begin_of_text|>";
    if (want.compare(0, llama3_bos.size(), llama3_bos) == 0) want = "<s>" + want.substr(llama3_bos.size());
    CHECK(apply_template(jinja.c_str(), ms, DEFKV_CHAT_ADD_GENERATION_PROMPT) == want);
    if (ex.contains("variants"))
      CHECK(apply_template(jinja.c_str(), ms, DEFKV_CHAT_ADD_GENERATION_PROMPT | DEFKV_CHAT_DISABLE_THINKING) ==
            ex.at("variants").at(0).at("rendered").get<std::string>());
    defkv_chat_template_info info{};
    info.struct_size = sizeof info;
    REQUIRE(defkv_chat_template_get_info(model(), jinja.c_str(), &info) == DEFKV_OK);
    CHECK(info.recognised == 1);
    CHECK(info.has_template == 1);
    CHECK(std::string(info.format) == (stem == "ggml-vocab-qwen2" ? "qwen3" : "llama3"));
    CHECK(info.writes_bos == (stem == "ggml-vocab-qwen2" ? 0 : 1));
  }

  // A format by name uses the model's BOS/EOS texts.
  const std::vector<defkv_chat_message> conv = {{"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}};
  CHECK(apply_template("llama2", conv, DEFKV_CHAT_ADD_GENERATION_PROMPT) ==
        "<s>[INST] Hi [/INST] Hello. </s><s>[INST] Bye [/INST]");
  CHECK(apply_template("zephyr", conv, 0) == "<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n<|user|>\nBye</s>\n");
  defkv_chat_template_info info{};
  info.struct_size = sizeof info;
  REQUIRE(defkv_chat_template_get_info(model(), "zephyr", &info) == DEFKV_OK);
  CHECK(std::string(info.end_of_turn) == "</s>");

  // The model has no template: the plain fallback, reported as such.
  CHECK(apply_template(nullptr, conv, DEFKV_CHAT_ADD_GENERATION_PROMPT) ==
        "User: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:");
  REQUIRE(defkv_chat_template_get_info(model(), nullptr, &info) == DEFKV_OK);
  CHECK(info.recognised == 0);
  CHECK(info.has_template == 0);
  CHECK(std::string(info.format) == "plain");
  CHECK(std::string(info.stop_text) == "\nUser:");
  CHECK(std::string(info.end_of_turn).empty());
  // An unknown template text: plain too, but there was a template.
  REQUIRE(defkv_chat_template_get_info(model(), "{{ messages[0]['content'] }}", &info) == DEFKV_OK);
  CHECK(info.recognised == 0);
  CHECK(info.has_template == 1);
  // An empty conversation renders the generation prompt only.
  CHECK(apply_template("chatml", {}, DEFKV_CHAT_ADD_GENERATION_PROMPT) == "<|im_start|>assistant\n");
}

TEST_CASE("api: defkv_chat_apply_template rejects bad input with a message", "[api][chat]") {
  const std::vector<defkv_chat_message> conv = {{"user", "Hi"}, {"assistant", "Hello."}};
  char buf[256];
  size_t n = 0;
  auto call = [&](const defkv_model* m, const char* tmpl, const defkv_chat_message* ms, size_t count, uint32_t flags,
                  char* b, size_t cap, size_t* out) {
    return defkv_chat_apply_template(m, tmpl, ms, count, flags, b, cap, out);
  };
  CHECK(call(nullptr, "chatml", conv.data(), conv.size(), 0, buf, sizeof buf, &n) == DEFKV_ERR_INVALID_HANDLE);
  CHECK(call(model(), "chatml", nullptr, 2, 0, buf, sizeof buf, &n) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(std::string(defkv_last_error(nullptr)).find("messages is NULL") != std::string::npos);
  CHECK(call(model(), "chatml", conv.data(), conv.size(), 0, buf, sizeof buf, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(call(model(), "chatml", conv.data(), conv.size(), 4, buf, sizeof buf, &n) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(std::string(defkv_last_error(nullptr)).find("unknown flags 4") != std::string::npos);

  const std::vector<defkv_chat_message> null_role = {{"user", "Hi"}, {nullptr, "x"}};
  CHECK(call(model(), "chatml", null_role.data(), 2, 0, buf, sizeof buf, &n) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(std::string(defkv_last_error(nullptr)).find("message 1: role is NULL") != std::string::npos);
  const std::vector<defkv_chat_message> null_content = {{"user", nullptr}};
  CHECK(call(model(), "chatml", null_content.data(), 1, 0, buf, sizeof buf, &n) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(std::string(defkv_last_error(nullptr)).find("message 0: content is NULL") != std::string::npos);
  const std::vector<defkv_chat_message> tool = {{"user", "Hi"}, {"tool", "42"}};
  CHECK(call(model(), "chatml", tool.data(), 2, 0, buf, sizeof buf, &n) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(std::string(defkv_last_error(nullptr)).find("message 1: unknown role 'tool'") != std::string::npos);
  const std::vector<defkv_chat_message> twice = {{"user", "Hi"}, {"user", "Hi"}};
  CHECK(call(model(), "gemma", twice.data(), 2, 0, buf, sizeof buf, &n) == DEFKV_ERR_INVALID_ARGUMENT);
  CHECK(std::string(defkv_last_error(nullptr)).find("must alternate") != std::string::npos);

  // Buffer too small: nothing written, the size needed reported.
  const std::string want = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n";
  std::memset(buf, 'x', sizeof buf);
  CHECK(call(model(), "chatml", conv.data(), conv.size(), 0, buf, want.size(), &n) == DEFKV_ERR_BUFFER_TOO_SMALL);
  CHECK(n == want.size());
  CHECK(buf[0] == 'x');
  CHECK(call(model(), "chatml", conv.data(), conv.size(), 0, buf, want.size() + 1, &n) == DEFKV_OK);
  CHECK(std::string(buf) == want);

  defkv_chat_template_info info{};
  CHECK(defkv_chat_template_get_info(model(), nullptr, &info) == DEFKV_ERR_INVALID_ARGUMENT);  // struct_size 0
  CHECK(defkv_chat_template_get_info(model(), nullptr, nullptr) == DEFKV_ERR_INVALID_ARGUMENT);
  info.struct_size = sizeof info;
  CHECK(defkv_chat_template_get_info(nullptr, nullptr, &info) == DEFKV_ERR_INVALID_HANDLE);
}
