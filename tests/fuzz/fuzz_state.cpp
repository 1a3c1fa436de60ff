// libFuzzer target: restoring saved context state (defkv_state_load).
// Input: byte 0 bit 0 picks the context (0: full cache, 1: a 16-token budget
// with DefensiveKV, bounded schedule); bit 1 set: the rest is the payload and
// the harness puts a valid header in front (magic, version, this model's
// fingerprint, size, checksum), so that mutations reach the payload's own
// checks instead of stopping at the checksum; clear: the rest is the whole
// blob.
//
// Properties:
//  - the status is DEFKV_OK, DEFKV_ERR_FORMAT or DEFKV_ERR_MISMATCH (an empty
//    blob, passed as NULL: DEFKV_ERR_INVALID_ARGUMENT);
//  - on failure the context is unchanged (its saved state is byte-identical
//    before and after);
//  - on success, saving again gives back the same bytes, and the context
//    generates (or reports a full context / missing logits), never fails
//    otherwise.
#include <cstring>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"
#include "tests/fuzz/fuzz_util.h"

using namespace defkv;

namespace {

defkv_model* g_model = nullptr;
defkv_context* g_ctx[2] = {nullptr, nullptr};
std::vector<uint8_t> g_header[2];  // a valid header from each context, for bit 1

constexpr size_t kHeaderBytes = 40;  // magic[8], version, abi, fingerprint, payload bytes, checksum

void check(bool ok, const std::string& what) {
  if (!ok) fuzz::die("fuzz_state", what);
}

std::vector<uint8_t> save(defkv_context* c) {
  size_t n = 0;
  check(defkv_state_size(c, &n) == DEFKV_OK, "state_size failed");
  std::vector<uint8_t> b(n);
  check(defkv_state_save(c, b.data(), b.size(), &n) == DEFKV_OK, std::string("save failed: ") + defkv_last_error(c));
  b.resize(n);
  return b;
}

uint64_t fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

std::vector<uint8_t> with_header(int which, const uint8_t* payload, size_t n) {
  std::vector<uint8_t> b(g_header[which]);
  const uint64_t size = n, sum = fnv1a(payload, n);
  std::memcpy(b.data() + 24, &size, 8);
  std::memcpy(b.data() + 32, &sum, 8);
  b.insert(b.end(), payload, payload + n);
  return b;
}

int on_token(int32_t, const char*, size_t, void*) { return 0; }

void seed(int which, const std::string& name) {
  const std::vector<uint8_t> b = save(g_ctx[which]);
  fuzz::write_seed(name + ".blob", std::string(1, char(which)) + std::string(b.begin(), b.end()));
  fuzz::write_seed(name + ".payload",
                   std::string(1, char(which | 2)) + std::string(b.begin() + kHeaderBytes, b.end()));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string path = fuzz::shared_dir() + "/models/stories260K/stories260K.gguf";
  check(defkv_model_load_file(path.c_str(), &g_model) == DEFKV_OK, "cannot load stories260K");
  for (int which = 0; which < 2; ++which) {
    defkv_context_params p;
    defkv_context_params_init(&p);
    p.n_threads = 1;
    p.n_ctx = 96;
    p.temperature = 0;
    if (which == 1) {
      p.kv_budget_tokens = 16;
      p.kv_window = 8;
      p.kv_sinks = 2;
    }
    check(defkv_context_create(g_model, &p, &g_ctx[which]) == DEFKV_OK, "context_create failed");
    defkv_context* c = g_ctx[which];
    const std::vector<uint8_t> empty = save(c);
    g_header[which].assign(empty.begin(), empty.begin() + kHeaderBytes);
    seed(which, "ctx" + std::to_string(which) + ".empty");
    int32_t toks[64];
    size_t n = 0;
    check(defkv_tokenize(g_model, "Once upon a time there was a little girl named Lily. She liked to play.", -1, 1, 0,
                         toks, 64, &n) == DEFKV_OK,
          "tokenize failed");
    check(defkv_eval(c, toks, n, nullptr, nullptr) == DEFKV_OK, "eval failed");
    seed(which, "ctx" + std::to_string(which) + ".prompt");
    check(defkv_generate(c, 12, on_token, nullptr, nullptr) == DEFKV_OK, "generate failed");
    seed(which, "ctx" + std::to_string(which) + ".generated");
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int which = data[0] & 1;
  defkv_context* c = g_ctx[which];
  const std::vector<uint8_t> blob =
      (data[0] & 2) ? with_header(which, data + 1, size - 1) : std::vector<uint8_t>(data + 1, data + size);
  const std::vector<uint8_t> before = save(c);
  const defkv_status s = defkv_state_load(c, blob.data(), blob.size());
  if (s != DEFKV_OK) {
    check(s == DEFKV_ERR_FORMAT || s == DEFKV_ERR_MISMATCH || (blob.empty() && s == DEFKV_ERR_INVALID_ARGUMENT),
          std::string("load returned ") + defkv_status_name(s) + ": " + defkv_last_error(c));
    check(save(c) == before, "a failed load changed the context");
    return 0;
  }
  check(save(c) == blob, "saving a loaded state gives other bytes");
  const defkv_status g = defkv_generate(c, 2, on_token, nullptr, nullptr);
  check(g == DEFKV_OK || g == DEFKV_ERR_CONTEXT_FULL || g == DEFKV_ERR_BAD_STATE,
        std::string("generate after load returned ") + defkv_status_name(g) + ": " + defkv_last_error(c));
  return 0;
}
