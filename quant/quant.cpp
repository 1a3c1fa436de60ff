// Weight formats: dtype helpers and row conversion (ggml-compatible).
#include "quant/quant.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "quant/blocks.h"
#include "simd/simd.h"

namespace defkv::quant {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::q8_0: return "q8_0";
    case DType::bf16: return "bf16";
    case DType::q4_0: return "q4_0";
    case DType::q4_1: return "q4_1";
    case DType::q5_0: return "q5_0";
    case DType::q5_1: return "q5_1";
    case DType::q4_K: return "q4_K";
    case DType::q5_K: return "q5_K";
    case DType::q6_K: return "q6_K";
  }
  return "unknown";
}

bool parse_dtype(std::string_view s, DType* out) {
  auto lower = [](std::string_view v) {
    std::string r(v);
    for (char& c : r) c = char(std::tolower(static_cast<unsigned char>(c)));
    return r;
  };
  const std::string want = lower(s);
  for (DType t : kWeightTypes) {
    if (want == lower(dtype_name(t))) {
      *out = t;
      return true;
    }
  }
  return false;
}

bool supported_weight_type(uint32_t id) {
  for (DType t : kWeightTypes)
    if (uint32_t(t) == id) return true;
  return false;
}

const char* supported_weight_types() {
  return "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K";
}

bool is_low_bit(DType t) {
  switch (t) {
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1:
    case DType::q4_K:
    case DType::q5_K:
    case DType::q6_K: return true;
    default: return false;
  }
}

static std::runtime_error bad_dtype(const char* where, DType t) {
  return std::runtime_error(std::string(where) + ": unsupported dtype id " +
                            std::to_string(uint32_t(t)));
}

size_t block_elems(DType t) {
  switch (t) {
    case DType::f32:
    case DType::f16:
    case DType::bf16: return 1;
    case DType::q8_0: return kQ8_0Block;
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1: return kQK;
    case DType::q4_K:
    case DType::q5_K:
    case DType::q6_K: return kQK_K;
  }
  throw bad_dtype("block_elems", t);
}

size_t block_bytes(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16:
    case DType::bf16: return 2;
    case DType::q8_0: return sizeof(BlockQ8_0);
    case DType::q4_0: return sizeof(BlockQ4_0);
    case DType::q4_1: return sizeof(BlockQ4_1);
    case DType::q5_0: return sizeof(BlockQ5_0);
    case DType::q5_1: return sizeof(BlockQ5_1);
    case DType::q4_K: return sizeof(BlockQ4_K);
    case DType::q5_K: return sizeof(BlockQ5_K);
    case DType::q6_K: return sizeof(BlockQ6_K);
  }
  throw bad_dtype("block_bytes", t);
}

size_t row_bytes(DType t, size_t n) {
  const size_t be = block_elems(t);
  if (n % be != 0)
    throw std::runtime_error(std::string("row_bytes: ") + std::to_string(n) +
                             " elements is not a multiple of the " + dtype_name(t) +
                             " block size " + std::to_string(be));
  return n / be * block_bytes(t);
}

// Same as ggml quantize_row_q8_0_ref: d = amax/127 stored as fp16, q = roundf(x/d)
// (scaled by the fp32 1/d, not the rounded fp16 one). A block holding NaN or
// Inf gets d = fp16 NaN and q = 0: it dequantises to NaN (the KV cache's q8_0
// rows keep a non-finite value visible) instead of converting NaN to int.
static void quantize_q8_0(const float* x, BlockQ8_0* y, size_t n) {
  for (size_t b = 0; b < n / kQ8_0Block; ++b) {
    const float* xb = x + b * kQ8_0Block;
    float amax = 0.0f;
    bool finite = true;
    for (size_t j = 0; j < kQ8_0Block; ++j) {
      finite &= std::fabs(xb[j]) <= std::numeric_limits<float>::max();  // false for NaN and Inf
      amax = std::fmax(amax, std::fabs(xb[j]));
    }
    if (!finite) {
      y[b].d = 0x7e00;  // fp16 quiet NaN
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      continue;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = simd::f32_to_f16(d);
    for (size_t j = 0; j < kQ8_0Block; ++j) y[b].qs[j] = int8_t(std::roundf(xb[j] * id));
  }
}

static void dequantize_q8_0(const BlockQ8_0* x, float* y, size_t n) {
  for (size_t b = 0; b < n / kQ8_0Block; ++b) {
    const float d = simd::f16_to_f32(x[b].d);
    for (size_t j = 0; j < kQ8_0Block; ++j) y[b * kQ8_0Block + j] = d * float(x[b].qs[j]);
  }
}

void from_f32(DType t, const float* x, void* row, size_t n) {
  (void)row_bytes(t, n);  // validates n
  if (n == 0) return;     // x and row may be null (memcpy's arguments may not)
  if (is_low_bit(t)) {
    // the low-bit quantisers convert x / scale to int (undefined for NaN) and
    // have no way to represent NaN or Inf; they are never on a hot path
    for (size_t i = 0; i < n; ++i)
      if (!(std::fabs(x[i]) <= std::numeric_limits<float>::max()))
        throw std::invalid_argument("from_f32: non-finite value (" + std::string(std::isnan(x[i]) ? "nan" : "inf") +
                                    ") at index " + std::to_string(i) + " cannot be quantised to " + dtype_name(t));
  }
  switch (t) {
    case DType::f32: std::memcpy(row, x, n * sizeof(float)); return;
    case DType::f16: simd::k().f32_to_f16(x, static_cast<uint16_t*>(row), n); return;
    case DType::bf16: simd::k().f32_to_bf16(x, static_cast<uint16_t*>(row), n); return;
    case DType::q8_0: quantize_q8_0(x, static_cast<BlockQ8_0*>(row), n); return;
    default: quantize_low_bit(t, x, row, n); return;
  }
}

void to_f32(DType t, const void* row, float* y, size_t n) {
  (void)row_bytes(t, n);
  if (n == 0) return;
  switch (t) {
    case DType::f32: std::memcpy(y, row, n * sizeof(float)); return;
    case DType::f16: simd::k().f16_to_f32(static_cast<const uint16_t*>(row), y, n); return;
    case DType::bf16: simd::k().bf16_to_f32(static_cast<const uint16_t*>(row), y, n); return;
    case DType::q8_0: dequantize_q8_0(static_cast<const BlockQ8_0*>(row), y, n); return;
    default: dequantize_low_bit(t, row, y, n); return;
  }
}

void get_row(const Matrix& w, size_t r, float* out) {
  if (r >= w.rows)
    throw std::out_of_range("get_row: row " + std::to_string(r) + " out of range (rows " +
                            std::to_string(w.rows) + ")");
  const auto* base = static_cast<const uint8_t*>(w.data);
  to_f32(w.type, base + r * row_bytes(w.type, w.cols), out, w.cols);
}

}  // namespace defkv::quant
