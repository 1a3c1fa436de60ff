// The C API's saved state: a versioned, checksummed blob holding the
// context's pending token, logits flag and sampler state ahead of the
// engine's own state (the evicted KV cache with its positions, logits and
// counters: engine::Context::save_state), tied to the model by its
// fingerprint. defkv_state_* save and load it in memory or through a file.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"
#include "runtime/api/internal.h"

using namespace defkv;
using namespace defkv::api;

namespace {

constexpr char kStateMagic[8] = {'D', 'E', 'F', 'K', 'V', 'S', 'T', '\n'};

struct StateHeader {
  char magic[8];
  uint32_t format_version;
  uint32_t abi_version;
  uint64_t model_fingerprint;
  uint64_t payload_bytes;
  uint64_t checksum;  // FNV-1a 64 of the payload
};
static_assert(sizeof(StateHeader) == 40, "packed header");

std::vector<uint8_t> build_state(const defkv_context* c) {
  std::vector<uint8_t> payload;
  auto put = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    payload.insert(payload.end(), b, b + n);
  };
  const int32_t pending = c->pending;
  const uint8_t have_logits = c->have_logits;
  const std::string ss = c->sampler->state();
  const uint32_t ss_len = uint32_t(ss.size());
  put(&pending, sizeof pending);
  put(&have_logits, sizeof have_logits);
  put(&ss_len, sizeof ss_len);
  put(ss.data(), ss.size());
  c->ctx->save_state(payload);

  StateHeader h{};
  std::memcpy(h.magic, kStateMagic, sizeof h.magic);
  h.format_version = DEFKV_STATE_FORMAT_VERSION;
  h.abi_version = DEFKV_ABI_VERSION;
  h.model_fingerprint = c->model->fingerprint;
  h.payload_bytes = payload.size();
  h.checksum = fnv1a(payload.data(), payload.size());
  std::vector<uint8_t> out(sizeof h + payload.size());
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, payload.data(), payload.size());
  return out;
}

void restore_state(defkv_context* c, const uint8_t* data, size_t size) {
  if (size < sizeof(StateHeader))
    raise(DEFKV_ERR_FORMAT, "state of " + std::to_string(size) + " bytes is shorter than its header (" +
                                std::to_string(sizeof(StateHeader)) + " bytes)");
  StateHeader h;
  std::memcpy(&h, data, sizeof h);
  if (std::memcmp(h.magic, kStateMagic, sizeof h.magic) != 0)
    raise(DEFKV_ERR_FORMAT, "not a defkv state (bad magic)");
  if (h.format_version != DEFKV_STATE_FORMAT_VERSION)
    raise(DEFKV_ERR_FORMAT, "state format version " + std::to_string(h.format_version) +
                                " is not supported (this library reads version " +
                                std::to_string(DEFKV_STATE_FORMAT_VERSION) + ")");
  if (h.payload_bytes != size - sizeof h)
    raise(DEFKV_ERR_FORMAT, "state is truncated or has trailing bytes: header says " +
                                std::to_string(h.payload_bytes) + " payload bytes, " +
                                std::to_string(size - sizeof h) + " present");
  const uint8_t* p = data + sizeof h;
  const size_t n = size - sizeof h;
  if (fnv1a(p, n) != h.checksum) raise(DEFKV_ERR_FORMAT, "state checksum mismatch: the data is corrupt");
  if (h.model_fingerprint != c->model->fingerprint)
    raise(DEFKV_ERR_MISMATCH, "the state was saved with a different model (fingerprint " +
                                  std::to_string(h.model_fingerprint) + ", this model " +
                                  std::to_string(c->model->fingerprint) + ")");
  size_t off = 0;
  auto take = [&](void* dst, size_t k) {
    if (k > n - off) raise(DEFKV_ERR_FORMAT, "state payload truncated");
    std::memcpy(dst, p + off, k);
    off += k;
  };
  int32_t pending;
  uint8_t have_logits;
  uint32_t ss_len;
  take(&pending, sizeof pending);
  take(&have_logits, sizeof have_logits);
  take(&ss_len, sizeof ss_len);
  if (ss_len > n - off) raise(DEFKV_ERR_FORMAT, "state payload truncated (sampler)");
  std::string ss(reinterpret_cast<const char*>(p + off), ss_len);
  off += ss_len;
  if (pending < -1 || pending >= int32_t(c->model->model->config().n_vocab) || have_logits > 1)
    raise(DEFKV_ERR_FORMAT, "corrupt state (pending token " + std::to_string(pending) + ")");
  text::Sampler tmp = *c->sampler;
  try {
    tmp.set_state(ss);
  } catch (const std::exception& e) {
    raise(DEFKV_ERR_FORMAT, e.what());
  }
  try {
    c->ctx->load_state(std::span<const uint8_t>(p + off, n - off));  // validates before changing anything
  } catch (const engine::StateMismatch&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    raise(DEFKV_ERR_FORMAT, e.what());
  }
  *c->sampler = std::move(tmp);
  c->pending = pending;
  c->have_logits = have_logits != 0;
  c->sampled = -1;
}

}  // namespace

extern "C" {

defkv_status defkv_state_size(const defkv_context* ctx, size_t* out) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, {out, "out"}, [&](defkv_context* c) {
    *out = build_state(c).size();
    return DEFKV_OK;
  });
}

defkv_status defkv_state_save(const defkv_context* ctx, void* buf, size_t capacity, size_t* out_len) {
  return context_call(ctx, __func__, DEFKV_ERR_INTERNAL, {out_len, "out_len"}, [&](defkv_context* c) {
    const std::vector<uint8_t> s = build_state(c);
    *out_len = s.size();
    if (capacity < s.size())
      raise(DEFKV_ERR_BUFFER_TOO_SMALL, "buffer of " + std::to_string(capacity) + " bytes, the state needs " +
                                            std::to_string(s.size()));
    if (!buf) raise(DEFKV_ERR_INVALID_ARGUMENT, "buf is NULL");
    std::memcpy(buf, s.data(), s.size());
    return DEFKV_OK;
  });
}

defkv_status defkv_state_load(defkv_context* ctx, const void* buf, size_t size) {
  return context_call(ctx, __func__, DEFKV_ERR_FORMAT, {buf, "buf"}, [&](defkv_context* c) {
    restore_state(c, static_cast<const uint8_t*>(buf), size);
    return DEFKV_OK;
  });
}

defkv_status defkv_state_save_file(const defkv_context* ctx, const char* path) {
  return context_call(ctx, __func__, DEFKV_ERR_IO, {path, "path"}, [&](defkv_context* c) {
    const std::vector<uint8_t> s = build_state(c);
    const std::string tmp = std::string(path) + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) raise(DEFKV_ERR_IO, "cannot create " + tmp + ": " + std::strerror(errno));
    const bool ok = std::fwrite(s.data(), 1, s.size(), f) == s.size();
    const bool closed = std::fclose(f) == 0;
    if (!ok || !closed) {
      std::remove(tmp.c_str());
      raise(DEFKV_ERR_IO, "cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path) != 0) {
      const int err = errno;
      std::remove(tmp.c_str());
      raise(DEFKV_ERR_IO, "cannot rename " + tmp + " to " + path + ": " + std::strerror(err));
    }
    return DEFKV_OK;
  });
}

defkv_status defkv_state_load_file(defkv_context* ctx, const char* path) {
  return context_call(ctx, __func__, DEFKV_ERR_FORMAT, {path, "path"}, [&](defkv_context* c) {
    FILE* f = std::fopen(path, "rb");
    if (!f) raise(DEFKV_ERR_IO, std::string("cannot open ") + path + ": " + std::strerror(errno));
    std::vector<uint8_t> data;
    uint8_t chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) data.insert(data.end(), chunk, chunk + n);
    const bool err = std::ferror(f);
    std::fclose(f);
    if (err) raise(DEFKV_ERR_IO, std::string("cannot read ") + path);
    restore_state(c, data.data(), data.size());
    return DEFKV_OK;
  });
}

}  // extern "C"
