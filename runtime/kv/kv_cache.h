// KV cache mechanism: a fixed pool of pages shared by every (layer, KV head).
// Memory is allocated once, at construction; appends take free pages, eviction
// (retain) compacts a head's entries in place and returns emptied pages to the
// pool. Which entries to keep is decided elsewhere (runtime/evict): this file
// is mechanism only.
//
// Storage, per page of `page_tokens` entries of one (layer, KV head):
//   keys   [page_tokens, row_bytes(type, head_dim_padded)]   post-RoPE
//   values [page_tokens, row_bytes(type, head_dim_padded)]
//   pos    [page_tokens] int32 absolute positions
//   aux    [page_tokens, n_aux] float per-entry policy data (e.g. value norms,
//          running max scores), moved together with the entry
// Entries of one head stay in ascending append order; attention reads a head
// as a list of contiguous runs (one per page): every run of a head is full
// (page_tokens entries) except the last. Each section starts 64-byte aligned;
// the pool holds ceil(capacity_entries / page_tokens) pages.
//
// Only the constructor (and the introspection helpers) allocate. Bad indices
// or configs throw std::runtime_error. Const methods may run concurrently with
// each other; mutations (append, retain, aux writes, clear) need exclusive use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <vector>

#include "quant/quant.h"

namespace defkv::kv {

struct CacheFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct CacheConfig {
  uint32_t n_layer = 0;
  uint32_t n_head_kv = 0;
  uint32_t head_dim = 0;
  quant::DType type = quant::DType::f16;  // f32 | f16 | q8_0 (q8_0 rows padded to 32)
  uint32_t page_tokens = 16;
  uint32_t n_aux = 0;                      // floats of policy data per entry
  uint64_t capacity_entries = 0;           // pool size in entries, all layers and heads
};

// A contiguous run of entries of one head (one page or part of it).
struct Run {
  uint32_t n = 0;
  const uint8_t* k = nullptr;   // [n, row_bytes]
  const uint8_t* v = nullptr;   // [n, row_bytes]
  const int32_t* pos = nullptr; // [n]
  const float* aux = nullptr;   // [n, n_aux]
};

class KvCache {
 public:
  explicit KvCache(const CacheConfig& cfg);  // allocates the whole pool
  // Bytes the pool of a cache with this config takes (what bytes_reserved()
  // will say), computed without allocating; saturates at UINT64_MAX.
  static uint64_t pool_bytes(const CacheConfig& cfg);
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const CacheConfig& config() const { return cfg_; }
  size_t row_bytes() const { return row_bytes_; }  // bytes of one K (or V) row
  // Elements stored per K (or V) row: head_dim, rounded up to a multiple of 32
  // for q8_0 (the padding elements are stored as zeros).
  uint32_t row_elems() const { return row_elems_; }

  // Append one token to every KV head of `layer`.
  //   k, v: [n_head_kv, head_dim] f32 (k after RoPE); aux: [n_head_kv, n_aux] or null
  // Throws CacheFull when some head of the layer needs a new page and not
  // enough pages are free (nothing is modified then). Does not allocate.
  void append(uint32_t layer, int32_t pos, const float* k, const float* v, const float* aux);
  // Whether `n_tokens` more tokens can be appended to every head of every layer.
  bool can_append(uint32_t n_tokens) const;

  uint32_t size(uint32_t layer, uint32_t head) const;  // live entries
  uint64_t entries() const;                            // live entries, all heads
  // Runs of (layer, head) in order. The span is valid until the next mutation.
  std::span<const Run> runs(uint32_t layer, uint32_t head) const;

  // Keep entry i of (layer, head) iff keep[i] != 0 (keep: [size(layer, head)]).
  // Order is preserved; emptied pages return to the pool. No allocation.
  void retain(uint32_t layer, uint32_t head, const uint8_t* keep);
  // Mutable per-entry aux data of entry i.
  float* aux(uint32_t layer, uint32_t head, uint32_t i);

  // f32 copies of (layer, head): k_out, v_out [size, head_dim], pos_out [size],
  // aux_out [size, n_aux]; any pointer may be null to skip it.
  void gather(uint32_t layer, uint32_t head, float* k_out, float* v_out,
              int32_t* pos_out, float* aux_out) const;

  void clear();
  size_t bytes_reserved() const;  // pool bytes allocated at construction
  size_t bytes_in_use() const;    // bytes of pages holding live entries
  uint64_t pages_free() const;

  // ---- introspection (not hot; may allocate) ----
  uint64_t pages_total() const { return n_pages_; }  // ceil(capacity_entries / page_tokens)
  size_t page_bytes() const { return page_bytes_; }  // bytes of one page (all sections)
  // Start of the pool; constant for the cache's lifetime (every Run points into
  // [pool_data(), pool_data() + bytes_reserved())).
  const uint8_t* pool_data() const { return pool_.get(); }
  // Positions of (layer, head) in storage order.  [size(layer, head)]
  std::vector<int32_t> positions(uint32_t layer, uint32_t head) const;

  // ---- state import (kv_state.cpp) ----
  // Appends one entry to (layer, head) from rows as stored (row_bytes() bytes
  // each, e.g. copied from runs()), its position and aux [n_aux] (null: 0).
  // Positions of a head must ascend. Throws CacheFull when no page is free.
  void append_raw(uint32_t layer, uint32_t head, int32_t pos, const uint8_t* k_row,
                  const uint8_t* v_row, const float* aux);
  // Checks internal invariants (page ownership, free list, run layout, counts);
  // throws std::logic_error describing the first violation found.
  void validate() const;

 private:
  // Page layout: byte offsets of the sections inside one page.
  struct PageLayout {
    size_t k = 0, v = 0, pos = 0, aux = 0;
  };
  // One (layer, KV head): its runs live in runs_[begin, begin + n_runs);
  // slots [begin + n_runs, next head's begin) are slack. Run r holds page
  // page_[begin + r]. All runs are full (page_tokens entries) except the last.
  struct Head {
    uint64_t begin = 0;   // first slot in runs_ / page_
    uint64_t n_runs = 0;  // pages held
    uint32_t size = 0;    // live entries
  };
  struct Deleter {
    void operator()(uint8_t* p) const;
  };

  uint32_t head_index(uint32_t layer, uint32_t head, const char* what) const;
  uint8_t* page_ptr(uint32_t page) { return pool_.get() + uint64_t(page) * page_bytes_; }
  const uint8_t* page_ptr(uint32_t page) const {
    return pool_.get() + uint64_t(page) * page_bytes_;
  }
  Run make_run(uint32_t page, uint32_t n) const;
  void push_run(uint32_t hi, uint32_t page);  // gives head hi one more (empty) run
  void reset_layout();

  CacheConfig cfg_;
  size_t row_bytes_ = 0;
  uint32_t row_elems_ = 0;
  uint32_t n_heads_ = 0;       // n_layer * n_head_kv
  uint64_t n_pages_ = 0;
  size_t page_bytes_ = 0;
  PageLayout layout_;
  std::unique_ptr<uint8_t[], Deleter> pool_;  // [n_pages, page_bytes], 64-byte aligned
  std::vector<Head> heads_;        // [n_layer * n_head_kv]
  std::vector<Run> runs_;          // [n_pages] run slots shared by all heads (see Head)
  std::vector<uint32_t> page_;     // [n_pages] page id of each run slot
  std::vector<uint32_t> free_;     // [n_pages] free-page stack; free_[0, n_free_) are free
  uint64_t n_free_ = 0;
  uint64_t n_entries_ = 0;
};

}  // namespace defkv::kv
