// KV cache state import: append one stored entry to one head (used to
// restore a saved conversation, where heads hold different numbers of entries).
#include <cstring>
#include <string>

#include "runtime/kv/kv_cache.h"

namespace defkv::kv {

void KvCache::append_raw(uint32_t layer, uint32_t head, int32_t pos, const uint8_t* k_row,
                         const uint8_t* v_row, const float* aux) {
  const uint32_t hi = head_index(layer, head, "append_raw");
  if (k_row == nullptr || v_row == nullptr) throw std::runtime_error("KvCache::append_raw: k or v is null");
  const uint32_t P = cfg_.page_tokens;
  Head& hd = heads_[hi];
  if (hd.size > 0) {
    const Run& last = runs_[hd.begin + hd.n_runs - 1];
    if (pos <= last.pos[last.n - 1])
      throw std::runtime_error("KvCache::append_raw: position " + std::to_string(pos) + " does not ascend in layer " +
                               std::to_string(layer) + " head " + std::to_string(head));
  }
  if (hd.size % P == 0) {
    if (n_free_ == 0)
      throw CacheFull("KV cache full: restoring position " + std::to_string(pos) + " of layer " +
                      std::to_string(layer) + " head " + std::to_string(head) + " needs a page, none of " +
                      std::to_string(n_pages_) + " is free");
    push_run(hi, free_[--n_free_]);
  }
  const uint64_t slot = hd.begin + hd.n_runs - 1;
  Run& r = runs_[slot];
  uint8_t* base = page_ptr(page_[slot]);
  const uint32_t i = r.n;
  const size_t aux_bytes = size_t(cfg_.n_aux) * sizeof(float);
  std::memcpy(base + layout_.k + i * row_bytes_, k_row, row_bytes_);
  std::memcpy(base + layout_.v + i * row_bytes_, v_row, row_bytes_);
  std::memcpy(base + layout_.pos + i * sizeof(int32_t), &pos, sizeof(int32_t));
  uint8_t* a = base + layout_.aux + i * aux_bytes;
  if (aux != nullptr)
    std::memcpy(a, aux, aux_bytes);
  else
    std::memset(a, 0, aux_bytes);
  ++r.n;
  ++hd.size;
  ++n_entries_;
}

}  // namespace defkv::kv
