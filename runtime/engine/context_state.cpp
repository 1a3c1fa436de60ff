// Context support for the embedding API: cancellation, prefill progress, and
// state save/restore (the evicted cache with original positions, per-head
// lengths and aux data, the eviction query ring, logits and counters).
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "runtime/engine/context.h"

namespace defkv::engine {
namespace {

constexpr char kTag[8] = {'D', 'K', 'V', 'C', 'T', 'X', 0, 0};
constexpr uint32_t kVersion = 1;

struct Writer {
  std::vector<uint8_t>& out;
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
};

struct Reader {
  std::span<const uint8_t> in;
  size_t off = 0;
  const uint8_t* take(size_t n, const char* what) {
    if (n > in.size() - off)
      throw std::runtime_error(std::string("context state: truncated (") + what + " needs " + std::to_string(n) +
                               " bytes at offset " + std::to_string(off) + ", " + std::to_string(in.size() - off) +
                               " left)");
    const uint8_t* p = in.data() + off;
    off += n;
    return p;
  }
  template <class T>
  T get(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
};

void expect_eq(uint64_t saved, uint64_t here, const char* what) {
  if (saved != here)
    throw StateMismatch("context state: saved with " + std::string(what) + " = " + std::to_string(saved) +
                        ", this context has " + std::to_string(here));
}

}  // namespace

void Context::set_cancel_flag(const std::atomic<bool>* flag) {
  cancel_ = flag;  // the model checks it per layer; run_batch() rolls a cancelled batch back
}

void Context::set_progress(std::function<void(uint64_t, uint64_t)> fn) { progress_ = std::move(fn); }

void Context::set_round_observer(RoundObserver fn) { observer_ = std::move(fn); }

void Context::check_cancel() const {
  if (cancel_ && cancel_->load(std::memory_order_relaxed)) throw model::Cancelled("cancelled");
}

void Context::rollback_batch(uint32_t first_pos, uint32_t n) {
  const model::Config& mc = model_.config();
  std::vector<uint8_t> keep;  // rare path: allocation is fine
  for (uint32_t l = 0; l < mc.n_layer; ++l)
    for (uint32_t hk = 0; hk < mc.n_head_kv; ++hk) {
      const uint32_t sz = cache_->size(l, hk);
      if (sz == 0) continue;
      const std::vector<int32_t> pos = cache_->positions(l, hk);
      if (pos.back() < int32_t(first_pos)) continue;
      keep.assign(sz, 0);
      for (uint32_t i = 0; i < sz; ++i) keep[i] = pos[i] < int32_t(first_pos);
      cache_->retain(l, hk, keep.data());
    }
  recorder_->restore_ring(first_pos, n);  // saved by run_batch()
}

void Context::save_state(std::vector<uint8_t>& out) {
  flush_value_norms();  // a state holds no pending norms
  const model::Config& mc = model_.config();
  const kv::CacheConfig& cc = cache_->config();
  Writer w{out};
  w.bytes(kTag, sizeof(kTag));
  w.put(kVersion);
  for (uint32_t v : {mc.n_layer, mc.n_head_kv, mc.n_head, mc.head_dim, mc.n_vocab}) w.put(v);
  for (uint32_t v : {uint32_t(cc.type), cc.page_tokens, cc.n_aux, uint32_t(cache_->row_bytes())}) w.put(v);
  for (uint32_t v : {uint32_t(plan_.budgeted), uint32_t(plan_.schedule), uint32_t(params_.evict.policy), plan_.window, plan_.chunk,
                     plan_.slack, plan_.n_ctx})
    w.put(v);
  w.put(uint8_t(params_.kv_ratio.has_value()));
  w.put(params_.kv_ratio.value_or(0.0));
  for (uint32_t v : {budget_, n_past_, prompt_len_, uint32_t(oneshot_done_)}) w.put(v);
  // Counters (so stats continue across a restore).
  w.put(stats_.prompt_tokens);
  w.put(stats_.decode_tokens);
  w.put(stats_.prompt_seconds);
  w.put(stats_.decode_seconds);
  w.put(stats_.evict_seconds);
  w.put(stats_.evict_rounds);
  w.put(uint64_t(stats_.kv_bytes_peak));
  w.put(stats_.kv_entries_peak);
  // Logits of the last token.
  w.put(uint32_t(logits_.size()));
  w.bytes(logits_.data(), logits_.size() * sizeof(float));
  // Query ring.
  const std::span<const int32_t> ring_pos = recorder_->ring_positions();
  const std::span<const float> ring = recorder_->ring();
  w.put(uint32_t(ring_pos.size()));
  w.bytes(ring_pos.data(), ring_pos.size_bytes());
  w.bytes(ring.data(), ring.size_bytes());
  // Entries, head by head, as stored.
  const size_t rb = cache_->row_bytes(), ab = size_t(cc.n_aux) * sizeof(float);
  for (uint32_t l = 0; l < mc.n_layer; ++l)
    for (uint32_t hk = 0; hk < mc.n_head_kv; ++hk) {
      // [n] positions, [n] K rows, [n] V rows, [n, n_aux] aux.
      w.put(cache_->size(l, hk));
      const std::span<const kv::Run> runs = cache_->runs(l, hk);
      for (const kv::Run& r : runs) w.bytes(r.pos, r.n * sizeof(int32_t));
      for (const kv::Run& r : runs) w.bytes(r.k, r.n * rb);
      for (const kv::Run& r : runs) w.bytes(r.v, r.n * rb);
      if (ab)
        for (const kv::Run& r : runs) w.bytes(r.aux, r.n * ab);
    }
}

void Context::load_state(std::span<const uint8_t> data) {
  const model::Config& mc = model_.config();
  const kv::CacheConfig& cc = cache_->config();
  Reader r{data};
  if (std::memcmp(r.take(sizeof(kTag), "tag"), kTag, sizeof(kTag)) != 0)
    throw std::runtime_error("context state: not a defkv context state (bad tag)");
  const uint32_t version = r.get<uint32_t>("version");
  if (version != kVersion)
    throw std::runtime_error("context state: version " + std::to_string(version) + " is not supported (this build reads " +
                             std::to_string(kVersion) + ")");
  expect_eq(r.get<uint32_t>("n_layer"), mc.n_layer, "model n_layer");
  expect_eq(r.get<uint32_t>("n_head_kv"), mc.n_head_kv, "model n_head_kv");
  expect_eq(r.get<uint32_t>("n_head"), mc.n_head, "model n_head");
  expect_eq(r.get<uint32_t>("head_dim"), mc.head_dim, "model head_dim");
  expect_eq(r.get<uint32_t>("n_vocab"), mc.n_vocab, "model n_vocab");
  const uint32_t kv_type = r.get<uint32_t>("kv_type");
  if (kv_type != uint32_t(cc.type))
    throw StateMismatch(std::string("context state: saved with KV type ") +
                        quant::dtype_name(quant::DType(kv_type)) + ", this context uses " + quant::dtype_name(cc.type));
  expect_eq(r.get<uint32_t>("page_tokens"), cc.page_tokens, "KV page_tokens");
  expect_eq(r.get<uint32_t>("n_aux"), cc.n_aux, "KV aux floats per entry (policy)");
  expect_eq(r.get<uint32_t>("row_bytes"), cache_->row_bytes(), "KV row bytes");
  const uint32_t budgeted = r.get<uint32_t>("budgeted");
  if (budgeted != uint32_t(plan_.budgeted))
    throw StateMismatch(std::string("context state: saved by a context ") + (budgeted ? "with" : "without") +
                        " a KV budget, this context has " + (plan_.budgeted ? "one" : "none"));
  const uint32_t schedule = r.get<uint32_t>("schedule");
  if (schedule != uint32_t(plan_.schedule))
    throw StateMismatch(std::string("context state: saved with the ") + schedule_name(Schedule(schedule & 1)) +
                        " schedule, this context uses " + schedule_name(plan_.schedule));
  const uint32_t policy = r.get<uint32_t>("policy");
  if (plan_.budgeted && policy != uint32_t(params_.evict.policy))
    throw StateMismatch(std::string("context state: saved with policy ") +
                        (policy <= uint32_t(evict::Policy::layer_defensivekv) ? evict::policy_name(evict::Policy(policy)) : "?") +
                        ", this context uses " + evict::policy_name(params_.evict.policy));
  expect_eq(r.get<uint32_t>("window"), plan_.window, "observation window");
  expect_eq(r.get<uint32_t>("chunk"), plan_.chunk, "prefill chunk tokens");
  expect_eq(r.get<uint32_t>("slack"), plan_.slack, "decode slack");
  (void)r.get<uint32_t>("n_ctx");  // informational: positions are checked against this n_ctx below
  const uint8_t has_ratio = r.get<uint8_t>("has_ratio");
  const double ratio = r.get<double>("ratio");
  if (bool(has_ratio) != params_.kv_ratio.has_value() || (has_ratio && ratio != *params_.kv_ratio))
    throw StateMismatch("context state: saved with another kv_ratio setting");
  const uint32_t budget = r.get<uint32_t>("budget");
  if (plan_.budgeted && !params_.kv_ratio) expect_eq(budget, budget_, "KV budget tokens per head");
  const uint32_t n_past = r.get<uint32_t>("n_past");
  const uint32_t prompt_len = r.get<uint32_t>("prompt_len");
  const uint32_t oneshot_done = r.get<uint32_t>("oneshot_done");
  if (n_past > plan_.n_ctx)
    throw StateMismatch("context state: " + std::to_string(n_past) + " positions used, this context's n_ctx is " +
                        std::to_string(plan_.n_ctx));
  if (oneshot_done > 1) throw std::runtime_error("context state: corrupt flag");
  Stats st{};
  st.prompt_tokens = r.get<uint64_t>("stats");
  st.decode_tokens = r.get<uint64_t>("stats");
  st.prompt_seconds = r.get<double>("stats");
  st.decode_seconds = r.get<double>("stats");
  st.evict_seconds = r.get<double>("stats");
  st.evict_rounds = r.get<uint32_t>("stats");
  st.kv_bytes_peak = size_t(r.get<uint64_t>("stats"));
  st.kv_entries_peak = r.get<uint64_t>("stats");
  expect_eq(r.get<uint32_t>("n_logits"), logits_.size(), "logits");
  const uint8_t* logits = r.take(logits_.size() * sizeof(float), "logits");
  const size_t ring_len = recorder_->ring_positions().size(), ring_floats = recorder_->ring().size();
  expect_eq(r.get<uint32_t>("ring length"), ring_len, "query ring length");
  std::vector<int32_t> ring_pos(ring_len);
  std::vector<float> ring(ring_floats);
  if (ring_len) std::memcpy(ring_pos.data(), r.take(ring_len * sizeof(int32_t), "ring positions"), ring_len * sizeof(int32_t));
  if (ring_floats) std::memcpy(ring.data(), r.take(ring_floats * sizeof(float), "ring"), ring_floats * sizeof(float));
  for (size_t i = 0; i < ring_len; ++i) {
    const int32_t p = ring_pos[i];
    if (p < -1 || p >= int32_t(n_past) || (p >= 0 && size_t(p) % ring_len != i))
      throw std::runtime_error("context state: corrupt query ring position " + std::to_string(p));
  }

  // Entries: validate every head before touching the cache.
  const size_t rb = cache_->row_bytes(), ab = size_t(cc.n_aux) * sizeof(float);
  const uint32_t L = mc.n_layer, Hkv = mc.n_head_kv, P = cc.page_tokens;
  struct HeadData { uint32_t n; const uint8_t *pos, *k, *v, *aux; };
  std::vector<HeadData> heads(size_t(L) * Hkv);
  uint64_t pages = 0;
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      HeadData& h = heads[size_t(l) * Hkv + hk];
      h.n = r.get<uint32_t>("head size");
      if (h.n > n_past)
        throw std::runtime_error("context state: layer " + std::to_string(l) + " head " + std::to_string(hk) +
                                 " holds " + std::to_string(h.n) + " entries for " + std::to_string(n_past) +
                                 " positions (corrupt)");
      h.pos = r.take(size_t(h.n) * sizeof(int32_t), "positions");
      h.k = r.take(size_t(h.n) * rb, "keys");
      h.v = r.take(size_t(h.n) * rb, "values");
      h.aux = ab ? r.take(size_t(h.n) * ab, "aux") : nullptr;
      int32_t prev = -1;
      for (uint32_t i = 0; i < h.n; ++i) {
        int32_t p;
        std::memcpy(&p, h.pos + size_t(i) * sizeof(int32_t), sizeof(p));
        if (p <= prev || p >= int32_t(n_past))
          throw std::runtime_error("context state: layer " + std::to_string(l) + " head " + std::to_string(hk) +
                                   ": position " + std::to_string(p) + " out of order or beyond n_past (corrupt)");
        prev = p;
      }
      pages += (uint64_t(h.n) + P - 1) / P;
    }
  if (r.off != data.size())
    throw std::runtime_error("context state: " + std::to_string(data.size() - r.off) + " trailing bytes (corrupt)");
  if (pages > cache_->pages_total())
    throw StateMismatch("context state: needs " + std::to_string(pages) + " KV pages, this context's pool has " +
                        std::to_string(cache_->pages_total()) + " (smaller budget or n_ctx)");

  // Apply.
  cache_->clear();
  recorder_->clear();
  if (lookahead_) lookahead_->clear();  // another sequence: its sinks and tail are unknown
  std::vector<float> aux(cc.n_aux);
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const HeadData& h = heads[size_t(l) * Hkv + hk];
      for (uint32_t i = 0; i < h.n; ++i) {
        int32_t p;
        std::memcpy(&p, h.pos + size_t(i) * sizeof(int32_t), sizeof(p));
        if (ab) std::memcpy(aux.data(), h.aux + i * ab, ab);
        cache_->append_raw(l, hk, p, h.k + i * rb, h.v + i * rb, ab ? aux.data() : nullptr);
      }
    }
  std::memcpy(logits_.data(), logits, logits_.size() * sizeof(float));
  recorder_->set_ring(ring_pos, ring);
  budget_ = budget;
  n_past_ = n_past;
  prompt_len_ = prompt_len;
  oneshot_done_ = oneshot_done != 0;
  st.kv_bytes_reserved = cache_->bytes_reserved();
  st.kv_bytes_in_use = cache_->bytes_in_use();
  stats_ = st;
}

}  // namespace defkv::engine
