// defkv weight formats and matrix products. Bit-compatible with ggml's
// layouts: F32, F16 (IEEE half), BF16, Q8_0 (blocks of 32 int8 + one fp16
// scale d; value = d * q), the legacy 4/5-bit blocks Q4_0, Q4_1, Q5_0, Q5_1
// (32 values) and the K-quant super-blocks Q4_K, Q5_K, Q6_K (256 values; see
// quant/blocks.h for the layouts). Knows nothing about models.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace defkv::quant {

// Values are ggml's type ids (as stored in GGUF).
enum class DType : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q4_K = 12,
  q5_K = 13,
  q6_K = 14,
  bf16 = 30,
};
// Every type this library reads, in id order.
inline constexpr DType kWeightTypes[] = {DType::f32,  DType::f16,  DType::q4_0, DType::q4_1,
                                         DType::q5_0, DType::q5_1, DType::q8_0, DType::q4_K,
                                         DType::q5_K, DType::q6_K, DType::bf16};
// True when `ggml_type_id` (a GGUF tensor type) is one of kWeightTypes.
bool supported_weight_type(uint32_t ggml_type_id);
// "f32, f16, q4_0, ..." for error messages.
const char* supported_weight_types();
// True for the 4/5/6-bit block types (legacy and K-quants), whose products
// quantise the activations to int8 blocks (see matmul_impl).
bool is_low_bit(DType t);

constexpr size_t kQ8_0Block = 32;
struct BlockQ8_0 {
  uint16_t d;              // fp16 scale
  int8_t qs[kQ8_0Block];   // quants
};
static_assert(sizeof(BlockQ8_0) == 34);

// ggml's names: "f32", "q4_0", "q4_K", ...
const char* dtype_name(DType t);
// Parses a dtype_name (case-insensitive); returns false if unknown.
bool parse_dtype(std::string_view s, DType* out);
// Elements per block (1 for float types, 32 for q8_0 / q4_0 / q4_1 / q5_0 /
// q5_1, 256 for the K-quants). Throw std::runtime_error for other ids.
size_t block_elems(DType t);
// Bytes per block.
size_t block_bytes(DType t);
// Bytes for one row of n elements (n must be a multiple of block_elems).
size_t row_bytes(DType t, size_t n);

// Row conversion: quantize/convert n floats into a row of type t, and back.
// Quantisation is ggml's reference quantiser for the type (quantize_row_*_ref,
// i.e. what llama-quantize writes without an importance matrix).
// NaN or Inf in x: q8_0 stores the block as scale NaN (it dequantises to NaN);
// the low-bit types throw std::invalid_argument naming the index.
void from_f32(DType t, const float* x, void* row, size_t n);
void to_f32(DType t, const void* row, float* y, size_t n);

// A row-major weight matrix as stored in GGUF: `rows` rows of `cols`
// elements (ggml ne0 = cols, ne1 = rows), row stride row_bytes(type, cols).
struct Matrix {
  DType type = DType::f32;
  const void* data = nullptr;  // [rows, cols] in `type`
  size_t rows = 0;
  size_t cols = 0;
};

// y[t, r] = sum_c W[r, c] * x[t, c]  for t < n_tokens, r < W.rows
//   x: [n_tokens, W.cols] f32, y: [n_tokens, W.rows] f32 (row stride ldy)
// Threads with OpenMP over output rows (and tokens for large batches); call
// from outside a parallel region. Chooses the fastest available path
// (SIMD, int8 dot products, oneDNN for large batches when built with it).
void matmul(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy);
// A column slice of W: y[t, r] = sum_{c < n_cols} W[r, col0 + c] * x[t, c]
//   x: [n_tokens, n_cols] f32, y: [n_tokens, W.rows] f32 (row stride ldy)
// Any col0 / n_cols with col0 + n_cols <= W.cols (need not be block aligned,
// e.g. one head's slice of W_o for a per-head value-projection norm).
void matmul_cols(const Matrix& w, size_t col0, size_t n_cols, const float* x, float* y,
                 size_t n_tokens, size_t ldy);
// Reference implementation (scalar, dequantise-and-dot in double) for tests.
void matmul_ref(const Matrix& w, const float* x, float* y, size_t n_tokens, size_t ldy);

// The implementations matmul() chooses between, for tests and benchmarks.
// neon: ARMv8.0 (widening int8 multiplies); neon_dotprod: the int8 products on
// ARMv8.2 sdot (matmul() takes it when HWCAP_ASIMDDP says the core has it).
enum class MatmulImpl { scalar, avx2, avx512, neon, neon_dotprod, onednn };
const char* matmul_impl_name(MatmulImpl impl);
// Implementations this build and machine can run: scalar first, then the SIMD
// tiles (best last), then onednn when built with it. Returns the count written.
size_t available_matmul_impls(MatmulImpl* out, size_t max);
// matmul() forced onto one implementation (throws std::runtime_error if it is
// not available). For q8_0 weights every implementation quantises the
// activations per 32-block to int8 first (scale amax/127 in fp32, round to
// nearest even), as ggml does, so all of them agree up to float rounding (and
// differ from matmul_ref by that quantisation). onednn: f32 weights in
// f32; bf16 weights as a bf16 x bf16 product (activations rounded to bf16);
// f16 weights widened exactly to f32 in 256-row blocks; q8_0 goes to the best
// SIMD tiles. The low-bit types quantise the activations as ggml pairs them
// (q4_0 / q5_0 with Q8_0 blocks, q4_1 / q5_1 with Q8_1 blocks (Q8_0 plus the
// block sum), the K-quants with Q8_K super-blocks: d = max/-127 over 256
// values) and take exact int32 block dot products; every implementation
// agrees with the scalar one up to float rounding, and differs from
// matmul_ref by the activation rounding. matmul() itself uses onednn only for batches where it measured
// faster (>= 32 tokens, or >= 16 tokens with >= 256 rows).
void matmul_impl(MatmulImpl impl, const Matrix& w, const float* x, float* y, size_t n_tokens,
                 size_t ldy);

// Row r of W converted to f32 (embedding lookup). out: [W.cols]
void get_row(const Matrix& w, size_t r, float* out);

// ---- load-time packed weights ---------------------------------------------------------
// A weight matrix re-laid-out ONCE (at model load) for the packed kernels.
// q8_0 (AVX-512 VNNI): rows in groups of 16, and per (group, 32-column block)
// the 16 rows x 32 quants interleaved 4 columns at a time (one zmm per 4
// columns, one lane per row) stored as unsigned q + 128, followed by the 16
// fp16 scales. The kernel multiplies with vpdpbusd against int8 activations
// quantised exactly as matmul() does (per 32-block, d = amax/127, nearest
// even), so results agree with matmul() on q8_0 up to float accumulation order.
// f16 / bf16 (AVX-512 + F16C): panels of 16 rows, per column the panel's 16
// fp16 (bf16) values (one vcvtph2ps = 16 rows of one column); f32 FMAs,
// results agree with matmul_ref up to float accumulation order. On CPUs with
// AVX512-BF16, calls of kPackedBf16MinTokens tokens or more (prefill) instead
// round the weights (f16) and the activations to bf16 (nearest even) and sum
// the exact bf16 products in f32 (vdpbf16ps, twice the multiply-adds of an f32
// FMA per instruction): they agree with matmul_ref on those roundings (each
// <= 2^-8 relative) up to float accumulation order; fewer tokens (decode)
// stay exact.
// q4_0 / q4_1 / q5_0 / q5_1 (AVX-512 VNNI): as q8_0, with the 4-bit levels
// nibble-packed (two columns 16 apart per byte), q5's fifth bits in a plane
// of byte masks, the level offsets (8, 16) applied through the activation
// sums and the _1 types' mins through the activation block sums
// (quant/packed_legacy.h); the size of the original tensor.
// q4_K / q6_K (AVX-512 VNNI): the same 16-row groups, per (group, 256-column
// super-block) the quants nibble-packed 8 columns per zmm lane group (q6_K's
// top two bits beside them) plus the rows' sub-block scales, mins and fp16
// super-block scales (quant/packed_q4k.h); vpdpbusd against Q8_K activations
// quantised exactly as matmul() does, so results agree with matmul() up to
// float accumulation order. Size: the original blocks plus 64 B (q4_K) or
// 32 B (q6_K) per 16 x 256 weights.
// Memory (q8_0, f16, bf16): bytes == ceil(rows/16)*16 * row_bytes(type, cols), i.e. the size of
// the original tensor (plus < 16 rows of padding); the mmapped original is not
// read again by matmul_packed (see release_source below to drop its pages).
// Other dtypes, other CPUs, and DEFKV_FORCE_SCALAR: no copy is made
// (packed() == false, bytes == 0) and matmul_packed() is exactly matmul(source).
inline constexpr size_t kPackedBf16MinTokens = 12;  // 8 ran level with the f32 FMAs (docs/tuning.md)
struct Packed {
  Matrix source;                         // the original weights (kept valid by the caller)
  std::shared_ptr<const uint8_t> data;   // packed copy, or null
  size_t bytes = 0;                      // size of the packed copy
  size_t source_released_bytes = 0;     // source bytes dropped from RSS by pack_for_gemm(w, true)
  bool packed() const { return data != nullptr; }
};
// Builds the packed copy (threads with OpenMP; ~1 s per GB). w.data must stay
// valid for as long as the Packed is used (it is the fallback).
Packed pack_for_gemm(const Matrix& w);
// The same, and when release_source is true and a packed copy was made, then
// release_source_pages(w): the source's resident pages leave RSS (the packed
// copy does not double resident weight memory). Use it only for matrices
// whose source is not read again on the hot path (NOT the token embedding or
// a tied output matrix, whose rows get_row reads every token): a released page
// stays valid but costs a page fault and a file read when touched again.
Packed pack_for_gemm(const Matrix& w, bool release_source);
// Drops the resident pages wholly inside [w.data, w.data + size) with
// madvise(MADV_DONTNEED), but only if that range lies in a read-only private
// FILE mapping (e.g. the GGUF mmap), where they refault unchanged from the
// file; heap, anonymous or writable memory is left alone. Linux only.
// Returns the bytes released (0 if nothing was done).
size_t release_source_pages(const Matrix& w);
// Same contract as matmul(p.source, x, y, n_tokens, ldy).
void matmul_packed(const Packed& p, const float* x, float* y, size_t n_tokens, size_t ldy);

// One product of a matmul_packed_multi call: y = x . W^T
//   y: [n_tokens, w->source.rows] f32 (row stride ldy)
struct PackedProduct {
  const Packed* w;
  float* y;
  size_t ldy;
};
// Several products sharing the same input x: [n_tokens, cols] (all matrices
// have the same cols, e.g. q/k/v or gate/up), with the activations quantised
// once and ALL products in ONE OpenMP parallel region (one fork/join instead
// of n_products). Results are identical to calling matmul_packed on each.
// Falls back to one matmul_packed per product when they are not all packed
// with dtypes sharing one activation format (q8_0 with q4_0 / q4_1 / q5_0 /
// q5_1, q4_K with q5_K / q6_K,
// f16 with bf16), or more than 8. Throws std::invalid_argument on
// different column counts.
void matmul_packed_multi(const PackedProduct* products, size_t n_products, const float* x,
                         size_t n_tokens);

}  // namespace defkv::quant
