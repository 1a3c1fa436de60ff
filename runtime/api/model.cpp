// The C API's models: loading from a file or a caller's buffer (refused
// up front when the weights do not fit in the memory available), the model
// fingerprint a saved state is checked against, and the model's info and
// metadata.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "runtime/api/defkv.h"
#include "runtime/api/internal.h"
#include "runtime/engine/context.h"
#include "runtime/gguf/gguf.h"
#include "runtime/model/model.h"
#include "runtime/text/tokenizer.h"

using namespace defkv;
using namespace defkv::api;

namespace {

// Up to 3 x 256 bytes of every tensor's data (start, middle, end), in the
// file's tensor order: the weight part of the fingerprint. Read before the
// model is loaded: loading packs the matrices and drops their mapped pages,
// and a later read would fault whole page-cache folios (up to megabytes on
// file systems with large folios) back into the resident set.
std::vector<uint8_t> tensor_samples(const gguf::File& f) {
  std::vector<uint8_t> out;
  for (const gguf::TensorInfo& t : f.tensors()) {
    const size_t n = size_t(t.size_bytes), k = std::min<size_t>(256, n);
    if (t.data && n)
      for (size_t at : {size_t(0), (n - k) / 2, n - k}) out.insert(out.end(), t.data + at, t.data + at + k);
  }
  return out;
}

// Identifies a model without reading all its weights: configuration, every
// tensor's name/type/shape and up to 3 x 256 bytes of its data (samples, from
// tensor_samples), the vocabulary.
uint64_t model_fingerprint(const model::Model& m, const text::Tokenizer& tok, const std::vector<uint8_t>& samples) {
  const model::Config& c = m.config();
  uint64_t h = fnv1a(&c.n_vocab, sizeof(uint32_t));
  for (uint32_t v : {c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_rot}) h = fnv1a(&v, sizeof v, h);
  const uint8_t* s = samples.data();
  for (const gguf::TensorInfo& t : m.file().tensors()) {
    h = fnv1a(t.name.data(), t.name.size(), h);
    h = fnv1a(&t.type, sizeof t.type, h);
    h = fnv1a(t.ne, sizeof t.ne, h);
    const size_t n = size_t(t.size_bytes), k = std::min<size_t>(256, n);
    if (t.data && n)
      for (int i = 0; i < 3; ++i, s += k) h = fnv1a(s, k, h);
  }
  for (size_t i = 0; i < tok.n_vocab(); ++i) {
    const std::string& str = tok.token_text(text::Token(i));
    h = fnv1a(str.data(), str.size(), h);
  }
  return h;
}

defkv_status load_model(std::unique_ptr<ModelImpl> impl, std::unique_ptr<gguf::File> file, defkv_model** out) {
  // The weights are re-laid out for the kernels at load (a resident copy of
  // about their size): a model that does not fit in the memory still
  // available is refused before that copy swaps or gets the process killed.
  uint64_t weight_bytes = 0;
  for (const gguf::TensorInfo& t : file->tensors()) weight_bytes += t.size_bytes;
  const std::optional<uint64_t> avail = engine::available_memory_bytes();
  if (avail && weight_bytes > *avail)
    raise(DEFKV_ERR_OUT_OF_MEMORY, "the model's weights take " + std::to_string(weight_bytes) +
                                       " bytes, more than the " + std::to_string(*avail) +
                                       " bytes of memory available (of " +
                                       std::to_string(engine::usable_memory_bytes()) + " in all)");
  const std::vector<uint8_t> samples = tensor_samples(*file);
  impl->model = model::Model::from_file(std::move(file));
  impl->tok = text::Tokenizer::from_gguf(impl->model->file());
  if (impl->tok->n_vocab() != impl->model->config().n_vocab)
    raise(DEFKV_ERR_FORMAT, "the tokenizer has " + std::to_string(impl->tok->n_vocab()) + " tokens, the model " +
                                std::to_string(impl->model->config().n_vocab));
  impl->fingerprint = model_fingerprint(*impl->model, *impl->tok, samples);
  auto* m = new defkv_model();
  m->impl = std::shared_ptr<ModelImpl>(impl.release());
  reg_add(m, Kind::model);
  *out = m;
  return DEFKV_OK;
}

}  // namespace

extern "C" {

defkv_status defkv_model_load_file(const char* path, defkv_model** out) {
  return guarded(nullptr, __func__, DEFKV_ERR_FORMAT, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!path) raise(DEFKV_ERR_INVALID_ARGUMENT, "path is NULL");
    if (FILE* f = std::fopen(path, "rb")) {
      std::fclose(f);
    } else {
      raise(DEFKV_ERR_IO, std::string("cannot open ") + path + ": " + std::strerror(errno));
    }
    return load_model(std::make_unique<ModelImpl>(), gguf::File::open(path), out);
  });
}

defkv_status defkv_model_load_buffer(const void* data, size_t size, int copy, defkv_model** out) {
  return guarded(nullptr, __func__, DEFKV_ERR_FORMAT, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!data || size == 0) raise(DEFKV_ERR_INVALID_ARGUMENT, "empty buffer");
    auto impl = std::make_unique<ModelImpl>();
    const void* base = data;
    if (copy) {
      // 64-byte aligned like a mapping, so tensor alignment is preserved.
      const size_t cap = (size + 63) / 64 * 64;
      auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, cap));
      if (!p) throw std::bad_alloc();
      impl->owned.reset(p);
      std::memcpy(p, data, size);
      base = p;
    }
    return load_model(std::move(impl), gguf::File::from_buffer(base, size), out);
  });
}

defkv_status defkv_model_free(defkv_model* model) {
  if (!reg_remove(model, Kind::model))
    return fail(nullptr, DEFKV_ERR_INVALID_HANDLE,
                std::string(__func__) + ": " + (model ? "not a live model handle (freed twice?)" : "model is NULL"));
  delete model;  // contexts keep ModelImpl alive through their shared_ptr
  return DEFKV_OK;
}

defkv_status defkv_model_get_info(const defkv_model* model, defkv_model_info* out) {
  return model_call(model, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!out) raise(DEFKV_ERR_INVALID_ARGUMENT, "out is NULL");
    const ModelImpl& m = *model->impl;
    const model::Config& c = m.model->config();
    defkv_model_info i{};
    i.n_vocab = c.n_vocab;
    i.n_embd = c.n_embd;
    i.n_layer = c.n_layer;
    i.n_head = c.n_head;
    i.n_head_kv = c.n_head_kv;
    i.head_dim = c.head_dim;
    i.n_ff = c.n_ff;
    i.n_ctx_train = c.n_ctx_train;
    i.bos = m.tok->bos();
    i.eos = m.tok->eos();
    i.weight_bytes = m.model->weight_bytes();
    *out = i;
    return DEFKV_OK;
  });
}

defkv_status defkv_model_meta_string(const defkv_model* model, const char* key, char* buf, size_t capacity,
                                     size_t* out_len) {
  return model_call(model, __func__, DEFKV_ERR_INTERNAL, [&] {
    if (!key) raise(DEFKV_ERR_INVALID_ARGUMENT, "key is NULL");
    const gguf::File& f = model->impl->model->file();
    const gguf::Value* v = f.find(key);
    if (!v) raise(DEFKV_ERR_INVALID_ARGUMENT, std::string("no metadata key ") + key);
    const std::string* s = std::get_if<std::string>(&v->v);
    if (!s) raise(DEFKV_ERR_INVALID_ARGUMENT, std::string("metadata key ") + key + " is not a string");
    return put_string(*s, buf, capacity, out_len);
  });
}

}  // extern "C"
