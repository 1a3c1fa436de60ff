// KV cache mechanism against a model-free oracle: a plain std::vector mirror
// of what every (layer, head) should hold, driven by random appends / retains.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "quant/quant.h"
#include "runtime/kv/kv_cache.h"

// ---- allocation counter (replaces global operator new for this binary) ----
// GCC flags free() of memory from the replaced operator new as mismatched when
// it inlines both into one caller; they are the matching pair defined here.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<bool> g_count_allocs{false};
std::atomic<uint64_t> g_allocs{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_allocs.fetch_add(1);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_allocs.fetch_add(1);
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept {
  return ::operator new(n, t);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

using defkv::kv::CacheConfig;
using defkv::kv::CacheFull;
using defkv::kv::KvCache;
using defkv::kv::Run;
using defkv::quant::DType;

struct AllocWindow {  // counts operator new calls while alive
  uint64_t start;
  AllocWindow() : start(g_allocs.load()) { g_count_allocs = true; }
  uint64_t stop() {
    g_count_allocs = false;
    return g_allocs.load() - start;
  }
  ~AllocWindow() { g_count_allocs = false; }
};

struct Entry {
  int32_t pos;
  std::vector<float> k, v, aux;  // [head_dim], [head_dim], [n_aux]
};

// What the cache should hold: [n_layer * n_head_kv] lists of entries.
struct Mirror {
  CacheConfig cfg;
  std::vector<std::vector<Entry>> heads;
  explicit Mirror(const CacheConfig& c) : cfg(c), heads(size_t(c.n_layer) * c.n_head_kv) {}
  std::vector<Entry>& at(uint32_t l, uint32_t h) { return heads[size_t(l) * cfg.n_head_kv + h]; }
  uint64_t pages_total() const {
    return (cfg.capacity_entries + cfg.page_tokens - 1) / cfg.page_tokens;
  }
  uint64_t pages_used() const {
    uint64_t n = 0;
    for (auto& h : heads) n += (h.size() + cfg.page_tokens - 1) / cfg.page_tokens;
    return n;
  }
  uint64_t pages_needed(uint32_t layer) const {  // new pages one append to `layer` takes
    uint64_t n = 0;
    for (uint32_t h = 0; h < cfg.n_head_kv; ++h)
      n += heads[size_t(layer) * cfg.n_head_kv + h].size() % cfg.page_tokens == 0;
    return n;
  }
  bool can_append(uint64_t n_tok) const {
    const uint64_t P = cfg.page_tokens;
    uint64_t need = 0;
    for (auto& h : heads) need += (h.size() + n_tok + P - 1) / P - (h.size() + P - 1) / P;
    return need <= pages_total() - pages_used();
  }
  uint64_t entries() const {
    uint64_t n = 0;
    for (auto& h : heads) n += h.size();
    return n;
  }
};

uint32_t padded_dim(DType t, uint32_t d) { return t == DType::q8_0 ? (d + 31) / 32 * 32 : d; }

// Independent encoding of one row: zero-pad to the stored width, convert.
std::vector<uint8_t> encode(DType t, const std::vector<float>& x) {
  const uint32_t pd = padded_dim(t, uint32_t(x.size()));
  std::vector<float> padded(pd, 0.0f);
  std::copy(x.begin(), x.end(), padded.begin());
  std::vector<uint8_t> row(defkv::quant::row_bytes(t, pd));
  defkv::quant::from_f32(t, padded.data(), row.data(), pd);
  return row;
}

// |got - x| within the element type's rounding bound (exact for f32).
bool within_quant_bound(DType t, const std::vector<float>& x, const float* got) {
  const size_t D = x.size();
  if (t == DType::f32) {
    for (size_t j = 0; j < D; ++j)
      if (got[j] != x[j]) return false;
  } else if (t == DType::f16) {
    for (size_t j = 0; j < D; ++j)
      if (!(std::fabs(got[j] - x[j]) <= std::fabs(x[j]) * 0x1p-11f + 0x1p-24f)) return false;
  } else {
    // q8_0: d = amax/127 per 32-block (stored as fp16): |err| <= d/2 + 127 |d - fp16(d)|.
    for (size_t b0 = 0; b0 < D; b0 += 32) {
      const size_t b1 = std::min(D, b0 + 32);
      float amax = 0.0f;
      for (size_t j = b0; j < b1; ++j) amax = std::max(amax, std::fabs(x[j]));
      const float d = amax / 127.0f;
      const float bound = d * (0.5f + 127.0f * 0x1p-11f) * 1.001f + 1e-30f;
      for (size_t j = b0; j < b1; ++j)
        if (!(std::fabs(got[j] - x[j]) <= bound)) return false;
    }
  }
  return true;
}

// Collects the first few mismatches (one REQUIRE per check keeps Catch fast).
struct Problems {
  std::vector<std::string> list;
  void expect(bool ok, const std::string& what) {
    if (!ok && list.size() < 8) list.push_back(what);
  }
  std::string text() const {
    std::string s;
    for (auto& x : list) s += x + "\n";
    return s;
  }
};

// Compares everything observable about the cache with the mirror.
void check_all(const KvCache& c, Mirror& m, const uint8_t* pool0) {
  const CacheConfig& cfg = c.config();
  const uint32_t D = cfg.head_dim, A = cfg.n_aux;
  REQUIRE_NOTHROW(c.validate());
  REQUIRE(c.pool_data() == pool0);
  REQUIRE(c.entries() == m.entries());
  REQUIRE(c.pages_total() == m.pages_total());
  REQUIRE(c.pages_free() == m.pages_total() - m.pages_used());
  REQUIRE(c.bytes_in_use() == m.pages_used() * c.page_bytes());
  REQUIRE(c.bytes_reserved() == m.pages_total() * c.page_bytes());
  const uint8_t* pool_end = pool0 + c.bytes_reserved();
  auto in_pool = [&](const void* p, size_t bytes) {
    auto* b = static_cast<const uint8_t*>(p);
    return b >= pool0 && b + bytes <= pool_end;
  };
  std::vector<float> k, v, aux, row(padded_dim(cfg.type, D));
  std::vector<int32_t> pos;
  Problems pr;
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    for (uint32_t h = 0; h < cfg.n_head_kv; ++h) {
      const std::string lh = "layer " + std::to_string(l) + " head " + std::to_string(h) + ": ";
      const auto& want = m.at(l, h);
      const size_t n = want.size();
      pr.expect(c.size(l, h) == n, lh + "size " + std::to_string(c.size(l, h)) + " != " +
                                       std::to_string(n));
      if (c.size(l, h) != n) continue;
      k.assign(n * D, NAN);
      v.assign(n * D, NAN);
      aux.assign(n * A, NAN);
      pos.assign(n, -1);
      c.gather(l, h, k.data(), v.data(), pos.data(), aux.data());
      pr.expect(c.positions(l, h) == pos, lh + "positions() != gather() positions");
      for (size_t i = 0; i < n; ++i) {
        const std::string at = lh + "entry " + std::to_string(i) + ": ";
        pr.expect(pos[i] == want[i].pos, at + "pos " + std::to_string(pos[i]) + " != " +
                                             std::to_string(want[i].pos));
        pr.expect(i == 0 || pos[i] > pos[i - 1], at + "positions not ascending");
        pr.expect(within_quant_bound(cfg.type, want[i].k, &k[i * D]), at + "K out of bound");
        pr.expect(within_quant_bound(cfg.type, want[i].v, &v[i * D]), at + "V out of bound");
        for (uint32_t a = 0; a < A; ++a)
          pr.expect(aux[i * A + a] == want[i].aux[a], at + "aux differs");
      }
      // Runs cover exactly the live entries, in order, inside the pool, and
      // hold the exact bytes an independent encoding of the mirror gives.
      const auto runs = c.runs(l, h);
      pr.expect(runs.size() == (n + cfg.page_tokens - 1) / cfg.page_tokens,
                lh + std::to_string(runs.size()) + " runs");
      size_t e = 0;
      for (size_t r = 0; r < runs.size(); ++r) {
        const Run& run = runs[r];
        const std::string at = lh + "run " + std::to_string(r) + ": ";
        pr.expect(run.n >= 1 && run.n <= cfg.page_tokens, at + "bad n");
        pr.expect(r + 1 == runs.size() || run.n == cfg.page_tokens, at + "not full");
        pr.expect(in_pool(run.k, run.n * c.row_bytes()), at + "k outside pool");
        pr.expect(in_pool(run.v, run.n * c.row_bytes()), at + "v outside pool");
        pr.expect(in_pool(run.pos, run.n * sizeof(int32_t)), at + "pos outside pool");
        pr.expect(in_pool(run.aux, run.n * A * sizeof(float)), at + "aux outside pool");
        for (uint32_t i = 0; i < run.n && e < n; ++i, ++e) {
          pr.expect(run.pos[i] == want[e].pos, at + "pos differs at " + std::to_string(i));
          const auto kb = encode(cfg.type, want[e].k), vb = encode(cfg.type, want[e].v);
          pr.expect(kb.size() == c.row_bytes(), at + "row_bytes differs from encoding");
          pr.expect(std::memcmp(run.k + i * c.row_bytes(), kb.data(), kb.size()) == 0,
                    at + "K bytes differ at " + std::to_string(i));
          pr.expect(std::memcmp(run.v + i * c.row_bytes(), vb.data(), vb.size()) == 0,
                    at + "V bytes differ at " + std::to_string(i));
          for (uint32_t a = 0; a < A; ++a)
            pr.expect(run.aux[i * A + a] == want[e].aux[a], at + "aux differs");
          // q8_0 padding decodes to zeros.
          defkv::quant::to_f32(cfg.type, run.k + i * c.row_bytes(), row.data(), row.size());
          for (size_t j = D; j < row.size(); ++j) pr.expect(row[j] == 0.0f, at + "padding not 0");
        }
      }
      pr.expect(e == n, lh + "runs hold " + std::to_string(e) + " entries");
    }
  }
  INFO(pr.text());
  REQUIRE(pr.list.empty());
}

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  uint32_t below(uint32_t n) { return uint32_t(g() % n); }
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(g) < p; }
};

void random_run(CacheConfig cfg, uint64_t seed, int steps) {
  KvCache c(cfg);
  Mirror m(cfg);
  Rng rng(seed);
  const uint8_t* pool0 = c.pool_data();
  const uint32_t H = cfg.n_head_kv, D = cfg.head_dim, A = cfg.n_aux;
  std::vector<int32_t> next_pos(cfg.n_layer, 0);
  std::vector<float> k(size_t(H) * D), v(size_t(H) * D), aux(size_t(H) * A);
  int n_full = 0, n_appended = 0, n_freed_pages = 0;
  check_all(c, m, pool0);

  for (int step = 0; step < steps; ++step) {
    INFO("step " << step);
    const uint32_t op = rng.below(100);
    if (op < 72) {  // append one token to a layer
      const uint32_t l = rng.below(cfg.n_layer);
      const int32_t p = next_pos[l] += 1 + int32_t(rng.below(3));
      for (auto& x : k) x = rng.uniform(-4, 4) * (rng.chance(0.1) ? 1e-3f : 1.0f);
      for (auto& x : v) x = rng.uniform(-4, 4);
      for (auto& x : aux) x = rng.uniform(-1, 1);
      const bool with_aux = A > 0 && rng.chance(0.8);
      const uint64_t tok = 1 + rng.below(2 * cfg.page_tokens);
      REQUIRE(c.can_append(1) == m.can_append(1));
      REQUIRE(c.can_append(uint32_t(tok)) == m.can_append(tok));
      const bool fits = m.pages_needed(l) <= m.pages_total() - m.pages_used();
      if (!fits) {
        REQUIRE_THROWS_AS(c.append(l, p, k.data(), v.data(), with_aux ? aux.data() : nullptr),
                          CacheFull);
        ++n_full;  // and nothing changed: check_all below compares to the unchanged mirror
      } else {
        REQUIRE_NOTHROW(c.append(l, p, k.data(), v.data(), with_aux ? aux.data() : nullptr));
        ++n_appended;
        for (uint32_t h = 0; h < H; ++h) {
          Entry e{p, std::vector<float>(k.begin() + h * D, k.begin() + (h + 1) * D),
                  std::vector<float>(v.begin() + h * D, v.begin() + (h + 1) * D),
                  std::vector<float>(A, 0.0f)};
          if (with_aux) std::copy(aux.begin() + h * A, aux.begin() + (h + 1) * A, e.aux.begin());
          m.at(l, h).push_back(std::move(e));
        }
      }
    } else if (op < 94) {  // retain a random mask on one head, or on every head of a layer
      const uint32_t l = rng.below(cfg.n_layer);
      const bool whole_layer = op >= 90;
      for (uint32_t h = 0; h < H; ++h) {
        if (!whole_layer && h != rng.below(H)) continue;
        auto& want = m.at(l, h);
        const double keep_p = std::array<double, 5>{0.0, 0.3, 0.7, 1.0, 0.9}[rng.below(5)];
        std::vector<uint8_t> keep(want.size());
        for (auto& x : keep) x = rng.chance(keep_p) ? uint8_t(1 + rng.below(255)) : 0;
        const uint64_t free_before = c.pages_free();
        c.retain(l, h, keep.data());
        std::vector<Entry> kept;
        for (size_t i = 0; i < want.size(); ++i)
          if (keep[i]) kept.push_back(want[i]);
        const uint64_t P = cfg.page_tokens;
        const uint64_t freed = (want.size() + P - 1) / P - (kept.size() + P - 1) / P;
        want = std::move(kept);
        REQUIRE(c.pages_free() == free_before + freed);
        n_freed_pages += int(freed);
      }
    } else if (op < 95) {  // retain nothing anywhere: everything returns to the pool
      for (uint32_t l = 0; l < cfg.n_layer; ++l)
        for (uint32_t h = 0; h < H; ++h) {
          std::vector<uint8_t> keep(c.size(l, h), 0);
          c.retain(l, h, keep.data());
          m.at(l, h).clear();
        }
      REQUIRE(c.bytes_in_use() == 0);
      REQUIRE(c.pages_free() == c.pages_total());
      REQUIRE(c.entries() == 0);
    } else if (op < 96) {
      c.clear();
      for (auto& h : m.heads) h.clear();
      REQUIRE(c.bytes_in_use() == 0);
    } else if (A > 0) {  // write aux of a random live entry through aux()
      const uint32_t l = rng.below(cfg.n_layer), h = rng.below(H);
      auto& want = m.at(l, h);
      if (!want.empty()) {
        const uint32_t i = rng.below(uint32_t(want.size()));
        float* a = c.aux(l, h, i);
        REQUIRE(a != nullptr);
        for (uint32_t j = 0; j < A; ++j) a[j] = want[i].aux[j] = rng.uniform(-9, 9);
      }
    }
    check_all(c, m, pool0);
  }
  // The sequence must actually have exercised the interesting paths.
  CHECK(n_full > 0);
  CHECK(n_appended > 50);
  CHECK(n_freed_pages > 0);
}

const DType kTypes[] = {DType::f32, DType::f16, DType::q8_0};

}  // namespace

TEST_CASE("kv: row sizes and pool geometry", "[kv]") {
  struct Case {
    DType t;
    uint32_t d;
    size_t row_bytes;
    uint32_t row_elems;
  };
  for (const Case& cs : {Case{DType::f32, 8, 32, 8}, Case{DType::f32, 64, 256, 64},
                         Case{DType::f16, 8, 16, 8}, Case{DType::f16, 64, 128, 64},
                         Case{DType::q8_0, 8, 34, 32}, Case{DType::q8_0, 64, 68, 64},
                         Case{DType::q8_0, 40, 68, 64}}) {
    CacheConfig cfg;
    cfg.n_layer = 2;
    cfg.n_head_kv = 3;
    cfg.head_dim = cs.d;
    cfg.type = cs.t;
    cfg.page_tokens = 5;
    cfg.n_aux = 2;
    cfg.capacity_entries = 23;  // not a multiple of page_tokens: rounds up to 5 pages
    KvCache c(cfg);
    INFO(defkv::quant::dtype_name(cs.t) << " head_dim " << cs.d);
    REQUIRE(c.row_bytes() == cs.row_bytes);
    REQUIRE(c.row_elems() == cs.row_elems);
    REQUIRE(c.pages_total() == 5);
    REQUIRE(c.pages_free() == 5);
    REQUIRE(c.page_bytes() >= 5 * (2 * cs.row_bytes + 4 + 2 * 4));
    REQUIRE(c.bytes_reserved() == 5 * c.page_bytes());
    REQUIRE(KvCache::pool_bytes(cfg) == c.bytes_reserved());  // known before allocating
    REQUIRE(c.bytes_in_use() == 0);
    REQUIRE(c.entries() == 0);
    REQUIRE(c.runs(1, 2).empty());
    REQUIRE(reinterpret_cast<uintptr_t>(c.pool_data()) % 64 == 0);
    REQUIRE_NOTHROW(c.validate());
  }
}

TEST_CASE("kv: bad configs and indices throw", "[kv]") {
  CacheConfig ok;
  ok.n_layer = 1;
  ok.n_head_kv = 1;
  ok.head_dim = 8;
  ok.capacity_entries = 16;
  REQUIRE_NOTHROW(KvCache(ok));
  for (int which = 0; which < 6; ++which) {
    CacheConfig bad = ok;
    if (which == 0) bad.n_layer = 0;
    if (which == 1) bad.n_head_kv = 0;
    if (which == 2) bad.head_dim = 0;
    if (which == 3) bad.page_tokens = 0;
    if (which == 4) bad.capacity_entries = 0;
    if (which == 5) bad.type = DType::bf16;
    REQUIRE_THROWS_AS(KvCache(bad), std::runtime_error);
  }
  KvCache c(ok);
  float x[8] = {};
  REQUIRE_THROWS_AS(c.append(1, 0, x, x, nullptr), std::runtime_error);
  REQUIRE_THROWS_AS(c.size(0, 1), std::runtime_error);
  REQUIRE_THROWS_AS(c.runs(1, 0), std::runtime_error);
  c.append(0, 0, x, x, nullptr);
  REQUIRE_THROWS_AS(c.aux(0, 0, 1), std::runtime_error);
  REQUIRE(c.aux(0, 0, 0) == nullptr);  // n_aux == 0
}

TEST_CASE("kv: CacheFull exactly when the pool is exhausted; failed append changes nothing",
          "[kv]") {
  for (DType t : kTypes) {
    INFO(defkv::quant::dtype_name(t));
    CacheConfig cfg;
    cfg.n_layer = 1;
    cfg.n_head_kv = 2;
    cfg.head_dim = 8;
    cfg.type = t;
    cfg.page_tokens = 4;
    cfg.capacity_entries = 16;  // 4 pages
    KvCache c(cfg);
    Mirror m(cfg);
    std::vector<float> k(16), v(16);
    auto push = [&](int32_t p) {
      for (int j = 0; j < 16; ++j) k[j] = float(p * 16 + j) / 64, v[j] = -k[j];
      c.append(0, p, k.data(), v.data(), nullptr);
      for (uint32_t h = 0; h < 2; ++h)
        m.at(0, h).push_back({p, {k.begin() + h * 8, k.begin() + h * 8 + 8},
                              {v.begin() + h * 8, v.begin() + h * 8 + 8}, {}});
    };
    for (int32_t p = 0; p < 8; ++p) {
      REQUIRE(c.can_append(1));
      push(p);
    }
    REQUIRE(c.pages_free() == 0);
    REQUIRE_FALSE(c.can_append(1));
    REQUIRE_THROWS_AS(push(8), CacheFull);
    REQUIRE_THROWS_WITH(c.append(0, 8, k.data(), v.data(), nullptr),
                        Catch::Contains("of 4 pages") && Catch::Contains("16 entries"));
    check_all(c, m, c.pool_data());

    // Head 0 keeps 4 entries (one page freed); both heads need a page: still full.
    uint8_t keep0[8] = {1, 0, 1, 0, 1, 0, 1, 0};
    c.retain(0, 0, keep0);
    m.at(0, 0) = {m.at(0, 0)[0], m.at(0, 0)[2], m.at(0, 0)[4], m.at(0, 0)[6]};
    REQUIRE(c.pages_free() == 1);
    REQUIRE_FALSE(c.can_append(1));
    REQUIRE_THROWS_AS(c.append(0, 8, k.data(), v.data(), nullptr), CacheFull);
    check_all(c, m, c.pool_data());

    // Head 1 drops to 5 entries: it keeps 2 pages but has room in the last.
    uint8_t keep1[8] = {1, 1, 0, 1, 1, 0, 0, 1};
    c.retain(0, 1, keep1);
    auto& h1 = m.at(0, 1);
    h1 = {h1[0], h1[1], h1[3], h1[4], h1[7]};
    REQUIRE(c.pages_free() == 1);
    REQUIRE(c.can_append(1));
    REQUIRE_FALSE(c.can_append(4));  // head 0 would need 1 page, head 1 another
    push(8);
    REQUIRE(c.pages_free() == 0);
    check_all(c, m, c.pool_data());
  }
}

TEST_CASE("kv: run slots rebalance between heads of skewed sizes", "[kv]") {
  // 4 layers x 1 head, 8 pages: one layer can take the whole pool, whichever it is.
  for (uint32_t grow : {0u, 3u, 1u}) {
    INFO("grown layer " << grow);
    CacheConfig cfg;
    cfg.n_layer = 4;
    cfg.n_head_kv = 1;
    cfg.head_dim = 8;
    cfg.type = DType::f32;
    cfg.page_tokens = 2;
    cfg.capacity_entries = 16;
    cfg.n_aux = 1;
    KvCache c(cfg);
    Mirror m(cfg);
    const uint8_t* pool0 = c.pool_data();
    float k[8], v[8], a[1];
    auto push = [&](uint32_t l, int32_t p) {
      for (int j = 0; j < 8; ++j) k[j] = float(p + j), v[j] = float(p - j);
      a[0] = float(p) * 0.5f;
      c.append(l, p, k, v, a);
      m.at(l, 0).push_back({p, {k, k + 8}, {v, v + 8}, {a[0]}});
    };
    // Every other layer gets one token, then is emptied again.
    for (uint32_t l = 0; l < 4; ++l) push(l, 0);
    for (uint32_t l = 0; l < 4; ++l)
      if (l != grow) {
        uint8_t none[1] = {0};
        c.retain(l, 0, none);
        m.at(l, 0).clear();
      }
    for (int32_t p = 1; p < 16; ++p) {
      push(grow, p);
      check_all(c, m, pool0);
    }
    REQUIRE(c.pages_free() == 0);
    REQUIRE(c.runs(grow, 0).size() == 8);
    REQUIRE_THROWS_AS(push(grow, 16), CacheFull);
    // Free half, then let every other layer grow into the freed pages.
    std::vector<uint8_t> keep(16);
    for (int i = 0; i < 16; ++i) keep[i] = i >= 8;
    c.retain(grow, 0, keep.data());
    m.at(grow, 0).erase(m.at(grow, 0).begin(), m.at(grow, 0).begin() + 8);
    check_all(c, m, pool0);
    int32_t p = 100;
    for (uint32_t l = 0; l < 4; ++l)
      if (l != grow)
        while (m.pages_needed(l) <= m.pages_total() - m.pages_used() && m.at(l, 0).size() < 3)
          push(l, p++);
    check_all(c, m, pool0);
  }
}

TEST_CASE("kv: random appends and retains match the mirror", "[kv]") {
  uint64_t seed = 1;
  for (DType t : kTypes) {
    for (uint32_t d : {8u, 64u}) {
      struct Shape {
        uint32_t n_layer, n_head_kv, page_tokens, n_aux;
        uint64_t capacity;
      };
      for (const Shape& s : {Shape{2, 3, 4, 2, 96}, Shape{3, 4, 1, 0, 40},
                             Shape{1, 2, 16, 1, 48}, Shape{4, 2, 3, 3, 30}}) {
        CacheConfig cfg;
        cfg.n_layer = s.n_layer;
        cfg.n_head_kv = s.n_head_kv;
        cfg.head_dim = d;
        cfg.type = t;
        cfg.page_tokens = s.page_tokens;
        cfg.n_aux = s.n_aux;
        cfg.capacity_entries = s.capacity;
        INFO(defkv::quant::dtype_name(t) << " head_dim " << d << " layers " << s.n_layer
                                         << " heads " << s.n_head_kv << " page " << s.page_tokens
                                         << " aux " << s.n_aux << " capacity " << s.capacity);
        random_run(cfg, seed++, 1500);
      }
    }
  }
}

TEST_CASE("kv: append, retain, runs, gather, aux and can_append do not allocate", "[kv]") {
  for (DType t : kTypes) {
    INFO(defkv::quant::dtype_name(t));
    CacheConfig cfg;
    cfg.n_layer = 2;
    cfg.n_head_kv = 4;
    cfg.head_dim = 40;  // q8_0: padded tail block
    cfg.type = t;
    cfg.page_tokens = 4;
    cfg.n_aux = 2;
    cfg.capacity_entries = 4096;
    KvCache c(cfg);
    std::vector<float> k(4 * 40, 0.25f), v(4 * 40, -0.5f), a(4 * 2, 1.0f);
    std::vector<float> kout(200 * 40), vout(200 * 40), aout(200 * 2);
    std::vector<int32_t> pout(200);
    std::vector<uint8_t> keep(200);
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = (i * 7) % 3 != 0;
    const uint8_t* pool0 = c.pool_data();
    uint64_t sum_runs = 0;

    AllocWindow w;
    for (int32_t p = 0; p < 120; ++p) {
      for (uint32_t l = 0; l < 2; ++l) c.append(l, p, k.data(), v.data(), p % 2 ? a.data() : nullptr);
      if (p % 10 == 9)
        for (uint32_t h = 0; h < 4; ++h) c.retain(p % 20 == 9, h, keep.data() + h);
      for (uint32_t h = 0; h < 4; ++h) sum_runs += c.runs(0, h).size();
      (void)c.can_append(3);
      *c.aux(1, 2, 0) += 1.0f;
    }
    for (uint32_t h = 0; h < 4; ++h)
      c.gather(1, h, kout.data(), vout.data(), pout.data(), aout.data());
    c.clear();
    const uint64_t allocs = w.stop();

    REQUIRE(allocs == 0);
    REQUIRE(sum_runs > 0);
    REQUIRE(c.pool_data() == pool0);
    REQUIRE_NOTHROW(c.validate());
  }
}
