// Packing of Q4_K / Q5_K / Q6_K matrices for the AVX-512 VNNI kernels (layouts in packed_q4k.h).
#include "quant/packed_q4k.h"

#include <cstring>
#include <type_traits>

namespace defkv::quant::detail {

namespace {

// Q4_K (B = BlockQ4_K) and Q5_K (BlockQ5_K, with the fifth-bit plane).
template <class B>
void pack_q45k(const Matrix& w, uint8_t* out) {
  constexpr bool five = std::is_same_v<B, BlockQ5_K>;
  constexpr size_t bytes = five ? kQ5KPackedBytes : kQ4KPackedBytes;
  constexpr size_t sc_off = five ? kQ5KScalesOffset : kQ4KScalesOffset, mn_off = five ? kQ5KMinsOffset : kQ4KMinsOffset;
  constexpr size_t d_off = five ? kQ5KDOffset : kQ4KDOffset, dmin_off = five ? kQ5KDminOffset : kQ4KDminOffset;
  const size_t nsb = w.cols / kQK_K, G = (w.rows + kPackRows - 1) / kPackRows;
  const auto* src = static_cast<const B*>(w.data);
  const auto ng = static_cast<long long>(G);
#pragma omp parallel for schedule(static)
  for (long long gi = 0; gi < ng; ++gi) {
    const size_t g = size_t(gi);
    for (size_t sb = 0; sb < nsb; ++sb) {
      uint8_t* p = out + (g * nsb + sb) * bytes;
      std::memset(p, 0, bytes);
      auto* d = reinterpret_cast<uint16_t*>(p + d_off);
      auto* dmin = reinterpret_cast<uint16_t*>(p + dmin_off);
      for (size_t r = 0; r < kPackRows; ++r) {
        const size_t row = g * kPackRows + r;
        if (row >= w.rows) continue;
        const B& b = src[row * nsb + sb];
        d[r] = b.d;
        dmin[r] = b.dmin;
        uint8_t q[kQK_K];  // the row's 256 quants in column order (Q5_K: 0..31)
        for (size_t c = 0; c < 4; ++c)
          for (size_t l = 0; l < 32; ++l) {
            q[64 * c + l] = b.qs[32 * c + l] & 0xF;
            q[64 * c + 32 + l] = b.qs[32 * c + l] >> 4;
            if constexpr (five) {
              q[64 * c + l] |= uint8_t(((b.qh[l] >> (2 * c)) & 1) << 4);
              q[64 * c + 32 + l] |= uint8_t(((b.qh[l] >> (2 * c + 1)) & 1) << 4);
            }
          }
        for (size_t j = 0; j < 8; ++j) {
          uint8_t sc, m;
          k4_scale_min(j, b.scales, &sc, &m);
          p[sc_off + j * 16 + r] = sc;
          p[mn_off + (j / 2) * 32 + r * 2 + j % 2] = m;
          for (size_t k = 0; k < 4; ++k)
            for (size_t i = 0; i < 4; ++i) {
              const uint8_t a = q[32 * j + 4 * k + i], c = q[32 * j + 16 + 4 * k + i];
              p[j * 256 + k * 64 + r * 4 + i] = uint8_t((a & 0xF) | ((c & 0xF) << 4));
              if constexpr (five)
                p[kQ5KQhOffset + j * 64 + r * 4 + i] |= uint8_t(((a >> 4) << k) | ((c >> 4) << (4 + k)));
            }
        }
      }
    }
  }
}

// The 256 quants (0..63) of a Q6_K block in column order.
void q6k_levels(const BlockQ6_K& b, uint8_t* q) {
  for (size_t h = 0; h < 2; ++h) {
    const uint8_t* ql = b.ql + 64 * h;
    const uint8_t* qh = b.qh + 32 * h;
    uint8_t* y = q + 128 * h;
    for (size_t l = 0; l < 32; ++l) {
      y[l] = uint8_t((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
      y[l + 32] = uint8_t((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
      y[l + 64] = uint8_t((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      y[l + 96] = uint8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
  }
}

void pack_q6k(const Matrix& w, uint8_t* out) {
  const size_t nsb = w.cols / kQK_K, G = (w.rows + kPackRows - 1) / kPackRows;
  const auto* src = static_cast<const BlockQ6_K*>(w.data);
  const auto ng = static_cast<long long>(G);
#pragma omp parallel for schedule(static)
  for (long long gi = 0; gi < ng; ++gi) {
    const size_t g = size_t(gi);
    for (size_t sb = 0; sb < nsb; ++sb) {
      uint8_t* p = out + (g * nsb + sb) * kQ6KPackedBytes;
      std::memset(p, 0, kQ6KPackedBytes);
      auto* d = reinterpret_cast<uint16_t*>(p + kQ6KDOffset);
      for (size_t r = 0; r < kPackRows; ++r) {
        const size_t row = g * kPackRows + r;
        if (row >= w.rows) continue;
        const BlockQ6_K& b = src[row * nsb + sb];
        d[r] = b.d;
        uint8_t q[kQK_K];
        q6k_levels(b, q);
        for (size_t j = 0; j < 8; ++j) {
          p[kQ6KScalesOffset + j * 32 + r * 2] = uint8_t(b.scales[2 * j]);
          p[kQ6KScalesOffset + j * 32 + r * 2 + 1] = uint8_t(b.scales[2 * j + 1]);
          for (size_t k = 0; k < 4; ++k)
            for (size_t i = 0; i < 4; ++i) {
              const uint8_t a = q[32 * j + 4 * k + i], c = q[32 * j + 16 + 4 * k + i];
              p[j * 256 + k * 64 + r * 4 + i] = uint8_t((a & 0xF) | ((c & 0xF) << 4));
              p[kQ6KHbOffset + j * 128 + r * 4 + i] |= uint8_t((a >> 4) << (2 * k));
              p[kQ6KHbOffset + j * 128 + 64 + r * 4 + i] |= uint8_t((c >> 4) << (2 * k));
            }
        }
      }
    }
  }
}

}  // namespace

size_t k_packed_bytes(DType t, size_t rows, size_t cols) {
  const size_t per = t == DType::q6_K ? kQ6KPackedBytes : t == DType::q5_K ? kQ5KPackedBytes : kQ4KPackedBytes;
  return (rows + kPackRows - 1) / kPackRows * (cols / kQK_K) * per;
}

void pack_k(const Matrix& w, uint8_t* out) {
  if (w.type == DType::q6_K) pack_q6k(w, out);
  else if (w.type == DType::q5_K) pack_q45k<BlockQ5_K>(w, out);
  else pack_q45k<BlockQ4_K>(w, out);
}

}  // namespace defkv::quant::detail
