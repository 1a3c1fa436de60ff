// Eviction scoring (docs/eviction.md steps 1-4): observation-window attention,
// SnapKV / defensive aggregation, CriticalKV value-norm weighting and stage 1,
// window padding. One layer per call; buffers live in Scratch.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include <omp.h>

#include "runtime/evict/evict.h"
#include "simd/simd.h"

namespace defkv::evict {

namespace {

// Window scoring below this many multiply-adds per layer stays on the
// calling thread (a parallel region costs microseconds).
constexpr uint64_t kParallelMinMacs = uint64_t(1) << 20;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool uses_snap(Policy p) { return traits(p).scored && !traits(p).defensive; }
bool uses_defensive(Policy p) { return traits(p).defensive; }
bool uses_vnorm(Policy p) { return traits(p).value_norms; }

[[noreturn]] void bad(const std::string& what) {
  throw std::invalid_argument("evict::score_layer: " + what);
}

void validate(const LayerView& v, const Params& p) {
  if (v.n_head_kv == 0 || v.n_head == 0 || v.head_dim == 0) bad("empty layer shape");
  if (v.n_head % v.n_head_kv != 0)
    bad("n_head " + std::to_string(v.n_head) + " is not a multiple of n_head_kv " +
        std::to_string(v.n_head_kv));
  if (v.heads.size() != v.n_head_kv)
    bad("heads.size() " + std::to_string(v.heads.size()) + " != n_head_kv " +
        std::to_string(v.n_head_kv));
  for (uint32_t hk = 0; hk < v.n_head_kv; ++hk) {
    const HeadView& h = v.heads[hk];
    if (h.n < v.n_window)
      bad("head " + std::to_string(hk) + " holds " + std::to_string(h.n) +
          " entries, fewer than the window " + std::to_string(v.n_window));
    if (h.n > 0 && (h.k == nullptr || h.pos == nullptr))
      bad("head " + std::to_string(hk) + " has no keys or positions");
    if (v.n_seen != 0 && h.n > v.n_seen)
      bad("head " + std::to_string(hk) + " holds " + std::to_string(h.n) +
          " entries, more than the n_seen " + std::to_string(v.n_seen) + " positions seen");
  }
  if (!traits(p.policy).scored) return;
  if (p.kernel % 2 == 0)
    bad("pooling kernel " + std::to_string(p.kernel) + " is not odd");
  if (v.n_window == 0 || v.q_window == nullptr || v.q_pos == nullptr)
    bad("scored policies need at least one window query");
  if (p.kernel == 0 || p.kernel % 2 == 0)
    bad("pooling kernel must be odd, got " + std::to_string(p.kernel));
  for (uint32_t hk = 0; hk < v.n_head_kv; ++hk) {
    const HeadView& h = v.heads[hk];
    for (uint32_t i = 0; i < v.n_window; ++i)
      if (h.pos[h.n - v.n_window + i] != v.q_pos[i])
        bad("head " + std::to_string(hk) + ": window entry " + std::to_string(i) +
            " has position " + std::to_string(h.pos[h.n - v.n_window + i]) +
            ", the window query has " + std::to_string(v.q_pos[i]));
    if (uses_vnorm(p.policy) && h.vnorm == nullptr && h.n > v.n_window)
      bad("head " + std::to_string(hk) + " has no vnorm (needed by " +
          policy_name(p.policy) + ")");
  }
}

// Every per-head vector reserves the layer's total entries: head-adaptive
// budgets move entries between heads from round to round, and a head may hold
// up to all of them, so capacity tracks the layer total (which the bounded
// schedule caps), not each head's own high-water mark.
void resize_zero(std::vector<std::vector<float>>& vv, const LayerView& v, uint32_t drop,
                 float fill) {
  size_t total = 0;
  for (const HeadView& h : v.heads) total += h.n;
  vv.resize(v.n_head_kv);
  for (uint32_t hk = 0; hk < v.n_head_kv; ++hk) {
    vv[hk].reserve(total);
    vv[hk].assign(v.heads[hk].n - drop, fill);
  }
}

// Grow-only buffer holding `need` elements, with capacity for `cap` (>= need).
// Buffers sized by the largest head get the capacity of the layer total, for
// the reason above: no allocation once warm while the layer total is steady.
template <class T>
void fit(std::vector<T>& v, size_t need, size_t cap) {
  if (v.capacity() < cap) v.reserve(cap);
  if (v.size() < need) v.resize(need);
}

// Value-norm weights w[hk, j] = vnorm[hk, j] / sum over the heads holding the
// same position. Positions ascend in every head, so a k-way merge matches them.
// Writes the denominators into s.denom[hk][j] (non-window entries only).
void vnorm_denominators(const LayerView& v, Scratch& s) {
  const uint32_t Hkv = v.n_head_kv, W = v.n_window;
  s.ptr.assign(Hkv, 0);
  for (;;) {
    int32_t p = std::numeric_limits<int32_t>::max();
    bool any = false;
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const HeadView& h = v.heads[hk];
      if (s.ptr[hk] < h.n - W) { p = std::min(p, h.pos[s.ptr[hk]]); any = true; }
    }
    if (!any) break;
    float sum = 0.0f;
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const HeadView& h = v.heads[hk];
      if (s.ptr[hk] < h.n - W && h.pos[s.ptr[hk]] == p) sum += h.vnorm[s.ptr[hk]];
    }
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const HeadView& h = v.heads[hk];
      if (s.ptr[hk] < h.n - W && h.pos[s.ptr[hk]] == p) s.denom[hk][s.ptr[hk]++] = sum;
    }
  }
}

// CriticalKV stage 1 for one head: how many of the top entries by mean
// attention (ave, N entries) reach `threshold` of the normalised mass, capped.
// Leaves the chosen entries' indices in s.idx[0, count).
uint32_t critical_count(const float* ave, uint32_t N, float threshold, uint32_t cap,
                        Scratch& s) {
  cap = std::min(cap, N);
  if (cap == 0) return 0;
  const float total = simd::k().reduce_sum(ave, N);
  if (!(total > 0.0f)) return 0;
  s.idx.resize(N);
  for (uint32_t j = 0; j < N; ++j) s.idx[j] = j;
  auto desc = [ave](uint32_t a, uint32_t b) {
    return ave[a] > ave[b] || (ave[a] == ave[b] && a < b);
  };
  // The top cap by one linear selection; then only the prefix the cumulative
  // sum walks through gets ordered, in doubling chunks (each chunk: the next
  // entries of the strict order `desc` by nth_element within the top cap,
  // then sorted), so the sums run in exactly the reference's sorted order
  // without sorting entries past the crossing.
  if (cap < N) std::nth_element(s.idx.begin(), s.idx.begin() + (cap - 1), s.idx.end(), desc);
  float cum = 0.0f;
  for (uint32_t lo = 0, chunk = 64; lo < cap; lo += chunk, chunk *= 2) {
    const uint32_t hi = std::min(cap, lo + chunk);
    if (hi < cap)
      std::nth_element(s.idx.begin() + lo, s.idx.begin() + (hi - 1), s.idx.begin() + cap, desc);
    std::sort(s.idx.begin() + lo, s.idx.begin() + hi, desc);
    for (uint32_t r = lo; r < hi; ++r) {
      cum += ave[s.idx[r]] / total;
      if (cum >= threshold) return r;  // the reference marks the r entries before the crossing
    }
  }
  // First crossing lies at or beyond the cap (clamped to it) unless the whole
  // mass never reaches the threshold (then the reference's argmax gives 0).
  return threshold <= 1.0f ? cap : 0;
}

}  // namespace

// The product itself is simd::Kernels::window_logits (register-blocked per
// ISA, scalar reference in simd/kernels_scalar.cpp); panels only grows.
void window_logits(const float* q, uint32_t m, const float* k, uint32_t n, uint32_t d, float* out,
                   size_t ldo, std::vector<float>& panels) {
  if (m == 0 || n == 0 || d == 0) return;
  const size_t need = simd::window_logits_scratch(n, d);
  if (panels.size() < need) panels.resize(need);
  simd::k().window_logits(q, m, k, n, d, out, ldo, panels.data());
}

void window_logits_ref(const float* q, uint32_t m, const float* k, uint32_t n, uint32_t d,
                       float* out, size_t ldo) {
  simd::scalar_kernels().window_logits(q, m, k, n, d, out, ldo, nullptr);
}

void score_layer(const LayerView& view, const Params& params, const Budget& budget,
                 Scratch& s, std::vector<std::vector<float>>& scores, Introspection* dbg) {
  validate(view, params);
  const Policy pol = params.policy;
  const uint32_t Hkv = view.n_head_kv, H = view.n_head, d = view.head_dim, W = view.n_window;
  const uint32_t G = H / Hkv;
  resize_zero(scores, view, 0, 0.0f);
  if (!traits(pol).scored) return;

  const simd::Kernels& K = simd::k();
  const bool need_snap = uses_snap(pol) || dbg != nullptr;
  const bool need_def = uses_defensive(pol) || dbg != nullptr;
  const bool need_vn = uses_vnorm(pol);
  bool have_vnorm = true;
  for (const HeadView& h : view.heads) have_vnorm = have_vnorm && (h.vnorm || h.n == W);
  const bool need_ave = need_vn || (dbg != nullptr && have_vnorm);

  uint32_t n_max = 0;
  size_t n_total = 0;
  for (const HeadView& h : view.heads) {
    n_max = std::max(n_max, h.n);
    n_total += h.n;
  }
  fit(s.pooled, n_max, n_total);
  if (s.idx.capacity() < n_total) s.idx.reserve(n_total);  // critical_count
  if (need_snap) resize_zero(s.mean, view, W, 0.0f);
  if (need_def) resize_zero(s.maxv, view, W, kNegInf);
  if (need_ave) resize_zero(s.ave, view, W, 0.0f);
  if (dbg) {
    dbg->window_attn.resize(H);
    for (uint32_t h = 0; h < H; ++h) dbg->window_attn[h].resize(size_t(W) * (view.heads[h / G].n - W));
  }

  // Step 1 (and the per-row parts of step 2). A KV head's keys are packed
  // once for its group; each query head's logits [W, d] x [n, d]^T -> [W, n]
  // are then used while they are still in cache (W * n floats: 512 KiB at
  // 4000 entries, where the whole group's [G*W, n] would be 4 MiB).
  const float inv_sqrt_d = 1.0f / std::sqrt(float(d));
  // KV heads are independent here: OpenMP over them (one Scratch::Thread
  // each), the window mass summed per KV head then in head order, so the
  // result does not depend on the thread count.
  uint64_t macs = 0;
  for (const HeadView& h : view.heads) macs += uint64_t(h.n) * W * G * d;
  // Called from inside a parallel region (the engine scores layers in
  // parallel), the heads of this layer stay on the calling thread.
  const int n_thr = macs >= kParallelMinMacs && !omp_in_parallel()
                        ? std::min<int>(omp_get_max_threads(), int(Hkv)) : 1;
  if (s.threads.size() < size_t(n_thr)) s.threads.resize(size_t(n_thr));
  for (int t = 0; t < n_thr; ++t) {
    Scratch::Thread& ts = s.threads[size_t(t)];
    fit(ts.logits, size_t(W) * n_max, size_t(W) * n_total);
    fit(ts.pooled, n_max, n_total);
    fit(ts.acc, n_max, n_total);
    fit(ts.panels, simd::window_logits_scratch(n_max, d), simd::window_logits_scratch(uint32_t(n_total), d));
  }
  s.mass.assign(Hkv, 0.0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_thr) if (n_thr > 1)
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    Scratch::Thread& ts = s.threads[size_t(n_thr > 1 ? omp_get_thread_num() : 0)];
    const HeadView& hv = view.heads[hk];
    const uint32_t n = hv.n, N = n - W;
    if (n == 0) continue;  // then W == 0 too: nothing to score
    simd::pack_window_keys(hv.k, n, d, ts.panels.data());
    for (uint32_t g = 0; g < G; ++g) {
      const uint32_t h = hk * G + g;
      K.window_logits_packed(view.q_window + size_t(h) * W * d, W, ts.panels.data(), n, d,
                             ts.logits.data(), n);  // [W, n]
      if (need_snap) std::fill_n(ts.acc.data(), N, 0.0f);
      for (uint32_t i = 0; i < W; ++i) {
        float* row = ts.logits.data() + size_t(i) * n;  // [n]
        const uint32_t c = uint32_t(std::upper_bound(hv.pos, hv.pos + n, view.q_pos[i]) - hv.pos);
        K.window_softmax(row, n, c, inv_sqrt_d);  // causal: keys after the query get 0
        s.mass[hk] += K.reduce_sum(row + N, W);
        if (dbg) std::copy_n(row, N, dbg->window_attn[h].data() + size_t(i) * N);
        if (N == 0) continue;
        if (need_snap) K.add_inplace(ts.acc.data(), row, N);
        if (need_ave) K.add_inplace(s.ave[hk].data(), row, N);
        if (need_def) {
          // Pool the row, rescale it to the unpooled row's mass, max over (g, i).
          K.pool_rescale_max(row, ts.pooled.data(), s.maxv[hk].data(), N, params.kernel);
        }
      }
      if (need_snap && N > 0) {
        // SnapKV: mean over the window, pool, mean over the group.
        K.scale(ts.acc.data(), 1.0f / float(W), N);
        K.avg_pool(ts.acc.data(), ts.pooled.data(), N, params.kernel);
        K.axpy(1.0f / float(G), ts.pooled.data(), s.mean[hk].data(), N);
      }
    }
  }
  double window_mass = 0.0;
  for (uint32_t hk = 0; hk < Hkv; ++hk) window_mass += s.mass[hk];
  const float window_bias = float(window_mass / (double(H) * W));

  // Step 2, defensive: the mean floor, over every non-window position the
  // sequence has seen (evicted ones count as 0; evict.h).
  if (need_def) {
    const uint32_t seen = view.n_seen > W ? view.n_seen - W : 0;
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const uint32_t N = view.heads[hk].n - W;
      if (N == 0) continue;
      float* m = s.maxv[hk].data();
      K.clamp_min(m, K.reduce_sum(m, N) / float(std::max(N, seen)), N);
    }
  }

  // Base scores of the policy.
  for (uint32_t hk = 0; hk < Hkv; ++hk) {
    const uint32_t N = view.heads[hk].n - W;
    const float* base = uses_defensive(pol) ? s.maxv[hk].data() : s.mean[hk].data();
    std::copy_n(base, N, scores[hk].data());
  }

  // Step 3: CriticalKV value-norm weighting and stage 1.
  if (dbg) dbg->critical_count.assign(Hkv, 0);
  if (need_vn || (dbg && have_vnorm)) {
    resize_zero(s.denom, view, W, 0.0f);
    vnorm_denominators(view, s);
    if (dbg) resize_zero(dbg->vnorm_weight, view, W, 0.0f);
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const HeadView& hv = view.heads[hk];
      const uint32_t N = hv.n - W;
      // Introspection of a policy without the weighting: weight a scratch copy.
      float* x = need_vn ? scores[hk].data() : s.pooled.data();
      K.vnorm_weight(x, dbg ? dbg->vnorm_weight[hk].data() : nullptr, hv.vnorm,
                     s.denom[hk].data(), N);
    }
  }
  float layer_max = kNegInf;
  for (uint32_t hk = 0; hk < Hkv; ++hk)
    layer_max = std::max(layer_max, K.reduce_max(scores[hk].data(), view.heads[hk].n - W));
  if (!std::isfinite(layer_max)) layer_max = 1.0f;  // no scored entry: any value
  if (need_vn) {
    const float threshold = params.critical_mass - window_bias;
    for (uint32_t hk = 0; hk < Hkv; ++hk) {
      const HeadView& hv = view.heads[hk];
      const uint32_t N = hv.n - W;
      const double keep_ratio =
          budget.keep_ratio >= 0.0 ? budget.keep_ratio
                                   : std::min(1.0, double(budget.per_head) / double(hv.n));
      const double cap_f = double(N) * keep_ratio - double(W);
      const uint32_t cap = cap_f > 0.0 ? uint32_t(cap_f) : 0u;
      const float inv = 1.0f / float(G * W);
      K.scale(s.ave[hk].data(), inv, N);
      const uint32_t count = critical_count(s.ave[hk].data(), N, threshold, cap, s);
      for (uint32_t r = 0; r < count; ++r) scores[hk][s.idx[r]] = layer_max;
      if (dbg) dbg->critical_count[hk] = count;
    }
  }

  // Step 4: the window gets the layer maximum.
  for (uint32_t hk = 0; hk < Hkv; ++hk)
    std::fill(scores[hk].begin() + (view.heads[hk].n - W), scores[hk].end(), layer_max);

  if (dbg) {
    dbg->window_bias = window_bias;
    dbg->snapkv = s.mean;
    dbg->defensive = s.maxv;
    dbg->final_scores = scores;
  }
}

void score_layer(const LayerView& view, const Params& params, uint32_t budget_per_head,
                 Scratch& scratch, std::vector<std::vector<float>>& scores) {
  score_layer(view, params, entries_budget(budget_per_head, view.n_head_kv, 1), scratch, scores);
}

}  // namespace defkv::evict
