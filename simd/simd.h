// defkv SIMD kernels: element-wise and reduction ops on contiguous float
// buffers. Kernels know nothing about models. Every op has a scalar reference
// (namespace defkv::simd::scalar) that is both the fallback and the test oracle.
//
// Dispatch: the table of kernels is chosen once, on first use, after checking
// CPUID *and* OS register support (XCR0). DEFKV_FORCE_SCALAR=1 forces the
// scalar table. Hot loops call through `simd::k()` (one indirect call per op
// invocation, never per element).
#pragma once

#include <cstddef>
#include <cstdint>

namespace defkv::simd {

enum class Isa { scalar, avx2, avx512, neon };
const char* isa_name(Isa isa);

struct Kernels {
  Isa isa;
  // sum_i a[i]*b[i]
  float (*dot)(const float* a, const float* b, size_t n);
  // sum_i a[i]*float(b[i]) where b is IEEE fp16 bits
  float (*dot_f16)(const float* a, const uint16_t* b, size_t n);
  // y[i] += alpha * x[i]
  void (*axpy)(float alpha, const float* x, float* y, size_t n);
  // y[i] += alpha * float(x[i]) (x fp16 bits)
  void (*axpy_f16)(float alpha, const uint16_t* x, float* y, size_t n);
  // x[i] *= alpha
  void (*scale)(float* x, float alpha, size_t n);
  // out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may alias x
  void (*rmsnorm)(float* out, const float* x, const float* w, size_t n, float eps);
  // in-place numerically stable softmax; returns sum_i exp(x[i] - max x), the
  // normaliser before dividing (log-sum-exp = max x + log(return value));
  // an all -inf input becomes all zeros and returns 0
  float (*softmax)(float* x, size_t n);
  // gate[i] = silu(gate[i]) * up[i]
  void (*silu_mul)(float* gate, const float* up, size_t n);
  // acc[i] = max(acc[i], x[i])
  void (*max_inplace)(float* acc, const float* x, size_t n);
  // acc[i] += x[i]
  void (*add_inplace)(float* acc, const float* x, size_t n);
  // max_i x[i] (-inf for n == 0)
  float (*reduce_max)(const float* x, size_t n);
  // sum_i x[i]
  float (*reduce_sum)(const float* x, size_t n);
  // sum_i |x[i]|
  float (*reduce_abs_sum)(const float* x, size_t n);
  // fp16 / bf16 <-> fp32 conversions (round to nearest even)
  void (*f16_to_f32)(const uint16_t* x, float* y, size_t n);
  void (*f32_to_f16)(const float* x, uint16_t* y, size_t n);
  void (*bf16_to_f32)(const uint16_t* x, float* y, size_t n);
  void (*f32_to_bf16)(const float* x, uint16_t* y, size_t n);

  // ---- eviction scoring (docs/eviction.md steps 1-3; callers: runtime/evict) ----
  // Window logits out[r, j] = sum_e q[r, e] * k[j, e], summed along e in order
  // (no 1/sqrt(d) scaling). q: [m, d], k: [n, d], out: [m, ldo] (ldo >= n;
  // columns n..ldo untouched). panels: scratch of window_logits_scratch(n, d)
  // floats (keys packed into 16-key panels; unused by the scalar table).
  // Register-blocked: a few queries x 16 keys per step, vectorised along keys.
  void (*window_logits)(const float* q, size_t m, const float* k, size_t n, size_t d,
                        float* out, size_t ldo, float* panels);
  // The same product with keys already packed by pack_window_keys (so one
  // packing serves every query head of a GQA group, a few rows at a time).
  void (*window_logits_packed)(const float* q, size_t m, const float* panels, size_t n,
                               size_t d, float* out, size_t ldo);
  // One causal window row: x[0, n_valid) <- softmax(scale * x[0, n_valid)),
  // x[n_valid, n) <- 0 (keys past the query). scale > 0. Returns the
  // normaliser sum exp(scale * (x - max x)); all -inf (or n_valid == 0) gives
  // all zeros and 0.
  float (*window_softmax)(float* x, size_t n, size_t n_valid, float scale);
  // 1-D average pooling, kernel k (odd), zero padding k/2, divide by k
  // everywhere (PyTorch avg_pool1d count_include_pad=True; docs/eviction.md step 2).
  // out must not alias x. k is not checked here (simd::avg_pool1d checks).
  void (*avg_pool)(const float* x, float* out, size_t n, size_t k);
  // Defensive aggregation of one attention row (docs/eviction.md step 2.1):
  // p = avg_pool(x, k); if sum p > 0, p *= sum x / sum p (same mass as x);
  // acc[j] = max(acc[j], p[j]). tmp: [n] scratch, receives p.
  void (*pool_rescale_max)(const float* x, float* tmp, float* acc, size_t n, size_t k);
  // x[i] = max(x[i], lo) (the defensive mean floor, docs/eviction.md step 2.2)
  void (*clamp_min)(float* x, float lo, size_t n);
  // Value-norm weighting (docs/eviction.md step 3): w = den[i] > 0 ? num[i] / den[i]
  // : 0; x[i] *= w; w_out[i] = w if w_out is non-null.
  void (*vnorm_weight)(float* x, float* w_out, const float* num, const float* den, size_t n);
  // The mean / max aggregations over window queries and group heads are
  // add_inplace / axpy / scale and max_inplace above.

  // ---- blocked (flash) attention (callers: runtime/model) ----
  // Logits and probabilities are stored key-major, st[j, r] = st[j * ldst + r]
  // for keys j < n and query rows r < m, so every per-row reduction is a
  // vertical vector op over rows (the block comes from window_logits_packed
  // with the keys as its "queries" and the packed query rows as its panels).
  // One online-softmax step over such a block (-inf marks a masked entry),
  // for each row r:
  //   mx = max(row_max[r], max_j st[j, r])
  //   corr[r] = exp(row_max[r] - mx)   (1 while mx is still -inf)
  //   st[j, r] <- exp(st[j, r] - mx)   (0 for -inf entries)
  //   row_sum[r] <- row_sum[r] * corr[r] + sum_j st[j, r];  row_max[r] <- mx
  // Start a row with row_max = -inf, row_sum = 0. ldst >= m.
  void (*attn_softmax_step)(float* st, size_t n, size_t m, size_t ldst, float* row_max,
                            float* row_sum, float* corr);
  // Rescale-and-accumulate P.V with key-major probabilities: for r < m, c < d
  //   o[r, c] <- corr[r] * o[r, c] + sum_j pt[j, r] * v[j, c]   (j < n ascending)
  // pt: [n, ldpt] (ldpt >= m), v: [n, ldv], o: [m, ldo]; corr == nullptr
  // means 1. Register-blocked: a few rows x a few vectors of columns per
  // step, each row of v loaded once per block of rows.
  void (*attn_accumulate)(const float* pt, size_t m, size_t n, size_t ldpt, const float* v,
                          size_t ldv, size_t d, const float* corr, float* o, size_t ldo);
};

// Floats of panel scratch Kernels::window_logits needs for n keys of dim d
// (the same for every table).
size_t window_logits_scratch(size_t n, size_t d);
// Packs keys k[n, d] into panels[ceil(n/16)][d][16] (zero-padded), the layout
// window_logits_packed reads (the same for every table).
void pack_window_keys(const float* k, size_t n, size_t d, float* panels);

// CPU features that kernel selection depends on, detected once. x86 entries
// are already AND-ed with OS support for the registers (XCR0 via xgetbv).
struct CpuFeatures {
  bool avx2 = false;         // AVX2 + FMA + F16C, OS saves YMM state
  bool avx512 = false;       // AVX-512 F/BW/DQ/VL, OS saves ZMM + opmask state
  bool avx512_vnni = false;  // avx512 + VNNI (vpdpbusd)
  bool avx512_bf16 = false;  // avx512 + BF16 (vdpbf16ps)
  bool avx_vnni = false;     // avx2 + VEX-encoded VNNI
  bool neon = false;         // AArch64 Advanced SIMD (always on AArch64)
  bool neon_dotprod = false; // AArch64 SDOT/UDOT
};
const CpuFeatures& cpu_features();

// The active kernel table (selected once, thread-safe).
const Kernels& k();
// The scalar table (reference / oracle).
const Kernels& scalar_kernels();
// Every table this machine can run (scalar first), for tests and benchmarks.
// Returns the count written into out (at most max).
size_t available_kernels(const Kernels** out, size_t max);

// Rotary embedding on one head vector x[head_dim], rotating the first n_rot
// dims. cos/sin hold n_rot/2 values for this position.
//   neox == false: GGUF "normal" mode, adjacent pairs (x[2i], x[2i+1])
//   neox == true : split halves (x[i], x[i + n_rot/2])
void rope(float* x, size_t n_rot, const float* cos, const float* sin, bool neox);

// gate[i] = gelu_tanh(gate[i]) * up[i], with
// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in float.
void gelu_tanh_mul(float* gate, const float* up, size_t n);

// Soft-capping: x[i] = cap * tanh(x[i] / cap) (cap > 0; -inf becomes -cap,
// so mask after capping).
void softcap(float* x, size_t n, float cap);

// 1-D average pooling along x[n] with kernel k (odd), zero padding k/2 and
// division by k everywhere (PyTorch avg_pool1d, count_include_pad=True).
// out must not alias x.
void avg_pool1d(const float* x, float* out, size_t n, size_t k);

// Scalar scalar conversions, exact IEEE round-to-nearest-even.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

}  // namespace defkv::simd
