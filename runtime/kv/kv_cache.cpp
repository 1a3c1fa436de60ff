// KV cache mechanism: page pool, per-head run lists, append / retain / gather.
// See kv_cache.h for the storage layout.
#include "runtime/kv/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <string>

namespace defkv::kv {
namespace {

constexpr size_t kAlignBytes = 64;

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

std::string cfg_error(const std::string& what) { return "KvCache: invalid config: " + what; }

// Writes `head_dim` floats as one stored row of `row_elems` elements (the
// tail beyond head_dim, present only for q8_0, is zero). No allocation.
void write_row(quant::DType type, const float* x, uint8_t* row, uint32_t head_dim,
               uint32_t row_elems) {
  if (row_elems == head_dim) {
    quant::from_f32(type, x, row, head_dim);
    return;
  }
  const size_t full = head_dim / quant::kQ8_0Block * quant::kQ8_0Block;
  if (full > 0) quant::from_f32(type, x, row, full);
  float tail[quant::kQ8_0Block] = {};  // [32], zero padded
  std::copy(x + full, x + head_dim, tail);
  quant::from_f32(type, tail, row + quant::row_bytes(type, full), quant::kQ8_0Block);
}

// Inverse of write_row: y [head_dim] f32.
void read_row(quant::DType type, const uint8_t* row, float* y, uint32_t head_dim,
              uint32_t row_elems) {
  if (row_elems == head_dim) {
    quant::to_f32(type, row, y, head_dim);
    return;
  }
  const size_t full = head_dim / quant::kQ8_0Block * quant::kQ8_0Block;
  if (full > 0) quant::to_f32(type, row, y, full);
  float tail[quant::kQ8_0Block];  // [32]
  quant::to_f32(type, row + quant::row_bytes(type, full), tail, quant::kQ8_0Block);
  std::copy(tail, tail + (head_dim - full), y + full);
}

}  // namespace

void KvCache::Deleter::operator()(uint8_t* p) const {
  ::operator delete[](p, std::align_val_t(kAlignBytes));
}

KvCache::KvCache(const CacheConfig& cfg) : cfg_(cfg) {
  if (cfg.n_layer == 0) throw std::runtime_error(cfg_error("n_layer is 0"));
  if (cfg.n_head_kv == 0) throw std::runtime_error(cfg_error("n_head_kv is 0"));
  if (cfg.head_dim == 0) throw std::runtime_error(cfg_error("head_dim is 0"));
  if (cfg.page_tokens == 0) throw std::runtime_error(cfg_error("page_tokens is 0"));
  if (cfg.capacity_entries == 0) throw std::runtime_error(cfg_error("capacity_entries is 0"));
  using quant::DType;
  if (cfg.type != DType::f32 && cfg.type != DType::f16 && cfg.type != DType::q8_0)
    throw std::runtime_error(cfg_error(std::string("unsupported KV element type ") +
                                       quant::dtype_name(cfg.type) +
                                       " (expected f32, f16 or q8_0)"));

  const size_t block = quant::block_elems(cfg.type);
  row_elems_ = uint32_t(align_up(cfg.head_dim, block));
  row_bytes_ = quant::row_bytes(cfg.type, row_elems_);
  n_heads_ = cfg.n_layer * cfg.n_head_kv;
  if (uint64_t(cfg.n_layer) * cfg.n_head_kv > std::numeric_limits<uint32_t>::max())
    throw std::runtime_error(cfg_error("n_layer * n_head_kv overflows"));

  n_pages_ = (cfg.capacity_entries + cfg.page_tokens - 1) / cfg.page_tokens;
  if (n_pages_ > std::numeric_limits<uint32_t>::max())
    throw std::runtime_error(cfg_error("too many pages (" + std::to_string(n_pages_) + ")"));

  const size_t P = cfg.page_tokens;
  layout_.k = 0;
  layout_.v = layout_.k + align_up(P * row_bytes_, kAlignBytes);
  layout_.pos = layout_.v + align_up(P * row_bytes_, kAlignBytes);
  layout_.aux = layout_.pos + align_up(P * sizeof(int32_t), kAlignBytes);
  page_bytes_ = layout_.aux + align_up(P * cfg.n_aux * sizeof(float), kAlignBytes);
  if (n_pages_ > std::numeric_limits<size_t>::max() / page_bytes_)
    throw std::runtime_error(cfg_error("pool size overflows"));

  const size_t pool_bytes = size_t(n_pages_) * page_bytes_;
  pool_.reset(static_cast<uint8_t*>(::operator new[](pool_bytes, std::align_val_t(kAlignBytes))));
  std::memset(pool_.get(), 0, pool_bytes);

  heads_.resize(n_heads_);
  runs_.resize(n_pages_);
  page_.resize(n_pages_);
  free_.resize(n_pages_);
  clear();
}

void KvCache::reset_layout() {
  // Spread the run slots evenly over the heads; push_run rebalances on demand.
  for (uint32_t h = 0; h < n_heads_; ++h) {
    heads_[h].begin = uint64_t(h) * n_pages_ / n_heads_;
    heads_[h].n_runs = 0;
    heads_[h].size = 0;
  }
  std::fill(runs_.begin(), runs_.end(), Run{});
  std::fill(page_.begin(), page_.end(), 0u);
}

void KvCache::clear() {
  reset_layout();
  // Stack of free pages; popped from the top, so page 0 is used first.
  for (uint64_t i = 0; i < n_pages_; ++i) free_[i] = uint32_t(n_pages_ - 1 - i);
  n_free_ = n_pages_;
  n_entries_ = 0;
}

uint32_t KvCache::head_index(uint32_t layer, uint32_t head, const char* what) const {
  if (layer >= cfg_.n_layer || head >= cfg_.n_head_kv)
    throw std::runtime_error(std::string("KvCache::") + what + ": (layer " +
                             std::to_string(layer) + ", head " + std::to_string(head) +
                             ") out of range (n_layer " + std::to_string(cfg_.n_layer) +
                             ", n_head_kv " + std::to_string(cfg_.n_head_kv) + ")");
  return layer * cfg_.n_head_kv + head;
}

Run KvCache::make_run(uint32_t page, uint32_t n) const {
  const uint8_t* base = page_ptr(page);
  Run r;
  r.n = n;
  r.k = base + layout_.k;
  r.v = base + layout_.v;
  r.pos = reinterpret_cast<const int32_t*>(base + layout_.pos);
  r.aux = reinterpret_cast<const float*>(base + layout_.aux);
  return r;
}

void KvCache::push_run(uint32_t hi, uint32_t page) {
  auto cap_end = [&](uint32_t h) { return h + 1 < n_heads_ ? heads_[h + 1].begin : n_pages_; };
  auto has_slack = [&](uint32_t h) { return heads_[h].begin + heads_[h].n_runs < cap_end(h); };
  auto move_slots = [&](uint64_t first, uint64_t last, int64_t by) {  // [first, last) += by
    if (first == last) return;
    if (by > 0) {
      std::copy_backward(runs_.begin() + first, runs_.begin() + last, runs_.begin() + last + by);
      std::copy_backward(page_.begin() + first, page_.begin() + last, page_.begin() + last + by);
    } else {
      std::copy(runs_.begin() + first, runs_.begin() + last, runs_.begin() + first + by);
      std::copy(page_.begin() + first, page_.begin() + last, page_.begin() + first + by);
    }
  };

  if (!has_slack(hi)) {
    // Borrow one slot from the nearest head with slack: every head in
    // between is full, so the slots to shift are contiguous. A slack slot
    // exists because a free page (now being taken) had no run.
    uint32_t g = hi + 1;
    while (g < n_heads_ && !has_slack(g)) ++g;
    if (g < n_heads_) {
      move_slots(heads_[hi + 1].begin, heads_[g].begin + heads_[g].n_runs, +1);
      for (uint32_t x = hi + 1; x <= g; ++x) ++heads_[x].begin;
    } else {
      int64_t b = int64_t(hi) - 1;
      while (b >= 0 && !has_slack(uint32_t(b))) --b;
      if (b < 0) throw std::logic_error("KvCache: no free run slot (internal error)");
      const uint32_t from = uint32_t(b) + 1;
      move_slots(heads_[from].begin, heads_[hi].begin + heads_[hi].n_runs, -1);
      for (uint32_t x = from; x <= hi; ++x) --heads_[x].begin;
    }
  }
  Head& h = heads_[hi];
  const uint64_t slot = h.begin + h.n_runs;
  runs_[slot] = make_run(page, 0);
  page_[slot] = page;
  ++h.n_runs;
}

void KvCache::append(uint32_t layer, int32_t pos, const float* k, const float* v,
                     const float* aux) {
  const uint32_t h0 = head_index(layer, 0, "append");
  if (k == nullptr || v == nullptr) throw std::runtime_error("KvCache::append: k or v is null");
  const uint32_t P = cfg_.page_tokens;

  uint64_t need = 0;  // new pages this token needs
  for (uint32_t h = 0; h < cfg_.n_head_kv; ++h) need += (heads_[h0 + h].size % P == 0);
  if (need > n_free_)
    throw CacheFull("KV cache full: appending position " + std::to_string(pos) + " to layer " +
                    std::to_string(layer) + " needs " + std::to_string(need) +
                    " new page(s) but only " + std::to_string(n_free_) + " of " +
                    std::to_string(n_pages_) + " pages are free (pool: " +
                    std::to_string(n_pages_ * P) + " entries, " + std::to_string(P) +
                    " tokens/page, " + std::to_string(bytes_reserved()) + " bytes)");

  const size_t aux_bytes = size_t(cfg_.n_aux) * sizeof(float);
  for (uint32_t h = 0; h < cfg_.n_head_kv; ++h) {
    Head& hd = heads_[h0 + h];
    if (hd.size % P == 0) push_run(h0 + h, free_[--n_free_]);
    const uint64_t slot = hd.begin + hd.n_runs - 1;
    Run& r = runs_[slot];
    uint8_t* base = page_ptr(page_[slot]);
    const uint32_t i = r.n;
    write_row(cfg_.type, k + size_t(h) * cfg_.head_dim, base + layout_.k + i * row_bytes_,
              cfg_.head_dim, row_elems_);
    write_row(cfg_.type, v + size_t(h) * cfg_.head_dim, base + layout_.v + i * row_bytes_,
              cfg_.head_dim, row_elems_);
    std::memcpy(base + layout_.pos + i * sizeof(int32_t), &pos, sizeof(int32_t));
    uint8_t* a = base + layout_.aux + i * aux_bytes;
    if (aux != nullptr)
      std::memcpy(a, aux + size_t(h) * cfg_.n_aux, aux_bytes);
    else
      std::memset(a, 0, aux_bytes);
    ++r.n;
    ++hd.size;
  }
  n_entries_ += cfg_.n_head_kv;
}

bool KvCache::can_append(uint32_t n_tokens) const {
  const uint64_t P = cfg_.page_tokens;
  uint64_t need = 0;
  for (const Head& h : heads_) {
    const uint64_t now = (h.size + P - 1) / P;
    const uint64_t after = (h.size + uint64_t(n_tokens) + P - 1) / P;
    need += after - now;
    if (need > n_free_) return false;
  }
  return true;
}

uint32_t KvCache::size(uint32_t layer, uint32_t head) const {
  return heads_[head_index(layer, head, "size")].size;
}

uint64_t KvCache::entries() const { return n_entries_; }

std::span<const Run> KvCache::runs(uint32_t layer, uint32_t head) const {
  const Head& h = heads_[head_index(layer, head, "runs")];
  return {runs_.data() + h.begin, size_t(h.n_runs)};
}

void KvCache::retain(uint32_t layer, uint32_t head, const uint8_t* keep) {
  const uint32_t hi = head_index(layer, head, "retain");
  Head& h = heads_[hi];
  if (h.size == 0) return;
  if (keep == nullptr) throw std::runtime_error("KvCache::retain: keep is null");
  const uint32_t P = cfg_.page_tokens;
  const size_t aux_bytes = size_t(cfg_.n_aux) * sizeof(float);
  auto entry_base = [&](uint32_t i) { return page_ptr(page_[h.begin + i / P]); };

  // Compact kept entries to the front, in order: each run of kept entries
  // moves in pieces that stay within one source and one destination page
  // (memmove: within a page the piece can overlap its destination).
  uint32_t w = 0;
  for (uint32_t i = 0; i < h.size;) {
    if (!keep[i]) {
      ++i;
      continue;
    }
    uint32_t j = i + 1;
    while (j < h.size && keep[j]) ++j;  // kept run [i, j)
    if (i == w) {  // still in place
      w = j;
      i = j;
      continue;
    }
    while (i < j) {
      const uint32_t si = i % P, di = w % P;
      const uint32_t m = std::min({j - i, P - si, P - di});
      const uint8_t* src = entry_base(i);
      uint8_t* dst = entry_base(w);
      std::memmove(dst + layout_.k + di * row_bytes_, src + layout_.k + si * row_bytes_, m * row_bytes_);
      std::memmove(dst + layout_.v + di * row_bytes_, src + layout_.v + si * row_bytes_, m * row_bytes_);
      std::memmove(dst + layout_.pos + di * sizeof(int32_t), src + layout_.pos + si * sizeof(int32_t),
                   m * sizeof(int32_t));
      std::memmove(dst + layout_.aux + di * aux_bytes, src + layout_.aux + si * aux_bytes, m * aux_bytes);
      i += m;
      w += m;
    }
  }

  // Return emptied tail pages to the pool (last freed is reused first).
  const uint64_t new_runs = (uint64_t(w) + P - 1) / P;
  for (uint64_t r = h.n_runs; r-- > new_runs;) {
    free_[n_free_++] = page_[h.begin + r];
    runs_[h.begin + r] = Run{};
  }
  h.n_runs = new_runs;
  if (new_runs > 0) runs_[h.begin + new_runs - 1].n = w - uint32_t(new_runs - 1) * P;
  n_entries_ -= h.size - w;
  h.size = w;
}

float* KvCache::aux(uint32_t layer, uint32_t head, uint32_t i) {
  const Head& h = heads_[head_index(layer, head, "aux")];
  if (i >= h.size)
    throw std::runtime_error("KvCache::aux: entry " + std::to_string(i) + " out of range (size " +
                             std::to_string(h.size) + ")");
  if (cfg_.n_aux == 0) return nullptr;
  const uint32_t P = cfg_.page_tokens;
  uint8_t* base = page_ptr(page_[h.begin + i / P]);
  return reinterpret_cast<float*>(base + layout_.aux) + size_t(i % P) * cfg_.n_aux;
}

void KvCache::gather(uint32_t layer, uint32_t head, float* k_out, float* v_out,
                     int32_t* pos_out, float* aux_out) const {
  const Head& h = heads_[head_index(layer, head, "gather")];
  const uint32_t D = cfg_.head_dim, A = cfg_.n_aux;
  size_t e = 0;  // entries written so far
  for (uint64_t r = 0; r < h.n_runs; ++r) {
    const Run& run = runs_[h.begin + r];
    for (uint32_t i = 0; i < run.n; ++i, ++e) {
      if (k_out) read_row(cfg_.type, run.k + i * row_bytes_, k_out + e * D, D, row_elems_);
      if (v_out) read_row(cfg_.type, run.v + i * row_bytes_, v_out + e * D, D, row_elems_);
      if (pos_out) pos_out[e] = run.pos[i];
      if (aux_out && A > 0) std::copy(run.aux + size_t(i) * A, run.aux + size_t(i + 1) * A, aux_out + e * A);
    }
  }
}

size_t KvCache::bytes_reserved() const { return size_t(n_pages_) * page_bytes_; }

uint64_t KvCache::pool_bytes(const CacheConfig& cfg) {
  if (cfg.page_tokens == 0) return 0;
  // The page layout of the constructor: K rows, V rows, positions, aux.
  const uint64_t row = quant::row_bytes(cfg.type, align_up(cfg.head_dim, quant::block_elems(cfg.type)));
  const uint64_t P = cfg.page_tokens;
  const uint64_t page = 2 * align_up(P * row, kAlignBytes) + align_up(P * sizeof(int32_t), kAlignBytes) +
                        align_up(P * cfg.n_aux * sizeof(float), kAlignBytes);
  const uint64_t pages = cfg.capacity_entries / P + (cfg.capacity_entries % P != 0);
  if (page != 0 && pages > UINT64_MAX / page) return UINT64_MAX;
  return pages * page;
}

size_t KvCache::bytes_in_use() const { return size_t(n_pages_ - n_free_) * page_bytes_; }

uint64_t KvCache::pages_free() const { return n_free_; }

std::vector<int32_t> KvCache::positions(uint32_t layer, uint32_t head) const {
  std::vector<int32_t> out(size(layer, head));
  gather(layer, head, nullptr, nullptr, out.data(), nullptr);
  return out;
}

void KvCache::validate() const {
  auto fail = [](const std::string& m) { throw std::logic_error("KvCache::validate: " + m); };
  const uint32_t P = cfg_.page_tokens;
  if (n_free_ > n_pages_) fail("free count " + std::to_string(n_free_) + " > pages");

  // 0 = unseen, 1 = free, 2 = owned by a head.
  std::vector<uint8_t> state(n_pages_, 0);
  for (uint64_t i = 0; i < n_free_; ++i) {
    const uint32_t p = free_[i];
    if (p >= n_pages_) fail("free list holds bad page id " + std::to_string(p));
    if (state[p]) fail("page " + std::to_string(p) + " twice in the free list");
    state[p] = 1;
  }
  uint64_t total = 0, owned = 0;
  for (uint32_t hi = 0; hi < n_heads_; ++hi) {
    const Head& h = heads_[hi];
    const std::string who = "head " + std::to_string(hi) + ": ";
    const uint64_t end = hi + 1 < n_heads_ ? heads_[hi + 1].begin : n_pages_;
    if (h.begin > end || h.begin + h.n_runs > end)
      fail(who + "run slots overlap the next head's");
    if (h.n_runs != (uint64_t(h.size) + P - 1) / P)
      fail(who + std::to_string(h.n_runs) + " pages for " + std::to_string(h.size) + " entries");
    uint64_t n = 0;
    for (uint64_t r = 0; r < h.n_runs; ++r) {
      const Run& run = runs_[h.begin + r];
      const uint32_t p = page_[h.begin + r];
      if (p >= n_pages_) fail(who + "bad page id " + std::to_string(p));
      if (state[p] == 1) fail(who + "page " + std::to_string(p) + " is also free");
      if (state[p] == 2) fail(who + "page " + std::to_string(p) + " owned twice");
      state[p] = 2;
      ++owned;
      const Run expect = make_run(p, run.n);
      if (run.k != expect.k || run.v != expect.v || run.pos != expect.pos || run.aux != expect.aux)
        fail(who + "run " + std::to_string(r) + " does not point at page " + std::to_string(p));
      const bool last = r + 1 == h.n_runs;
      if (run.n == 0 || run.n > P || (!last && run.n != P))
        fail(who + "run " + std::to_string(r) + " holds " + std::to_string(run.n) + " entries");
      n += run.n;
    }
    if (n != h.size) fail(who + "runs hold " + std::to_string(n) + " entries, size " +
                          std::to_string(h.size));
    total += h.size;
  }
  if (owned + n_free_ != n_pages_)
    fail(std::to_string(n_pages_ - owned - n_free_) + " page(s) neither free nor owned");
  if (total != n_entries_)
    fail("entry count " + std::to_string(n_entries_) + " != sum of sizes " + std::to_string(total));
}

}  // namespace defkv::kv
