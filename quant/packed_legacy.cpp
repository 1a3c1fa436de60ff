// Packing of the 32-block types for the AVX-512 VNNI kernels (layout in
// packed_legacy.h): one skeleton walks groups, rows and blocks; a per-type
// function writes one block of one row into its place in the planes.
#include "quant/packed_legacy.h"

#include <cstring>

namespace defkv::quant::detail {

namespace {

struct PlaneBytes {
  size_t qs, qh, m;  // per (group, block); d is always 32 B
};

PlaneBytes plane_bytes(DType t) {
  switch (t) {
    case DType::q8_0: return {kPackRows * kQ8_0Block, 0, 0};
    case DType::q4_0: return {kPackRows * kQK / 2, 0, 0};
    case DType::q4_1: return {kPackRows * kQK / 2, 0, kPackRows * 2};
    case DType::q5_0: return {kPackRows * kQK / 2, 64, 0};
    case DType::q5_1: return {kPackRows * kQK / 2, 64, kPackRows * 2};
    default: return {0, 0, 0};
  }
}

size_t n_groups(size_t rows) { return (rows + kPackRows - 1) / kPackRows; }

// Where row r of a (group, block) tile goes.
struct TileOut {
  uint8_t* qs;   // the tile's qs bytes
  uint64_t* qh;  // the tile's 8 masks (Q5_x)
  uint16_t* d;   // the tile's 16 scales
  uint16_t* m;   // the tile's 16 mins (Q4_1, Q5_1)
};

void put_q8_0(const BlockQ8_0& b, size_t r, const TileOut& o) {
  for (size_t k4 = 0; k4 < kQ8_0Block / 4; ++k4)
    for (size_t j = 0; j < 4; ++j) o.qs[(k4 * kPackRows + r) * 4 + j] = uint8_t(int(b.qs[k4 * 4 + j]) + 128);
  o.d[r] = b.d;
}

// A 4-bit block's byte j holds the levels of columns j and j + 16, which is
// the packed byte for k = j / 4, i = j % 4: the quants move 4 bytes at a time.
void put_nibbles(const uint8_t* qs, size_t r, const TileOut& o) {
  for (size_t k = 0; k < 4; ++k) std::memcpy(o.qs + k * 64 + r * 4, qs + 4 * k, 4);
}

// The fifth bits (qh: bit j = column j) into the masks' bits 4r + i.
void put_fifth_bits(const uint8_t* qh_bytes, size_t r, const TileOut& o) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  for (size_t k = 0; k < 4; ++k)
    for (size_t i = 0; i < 4; ++i) {
      o.qh[2 * k] |= uint64_t((qh >> (4 * k + i)) & 1) << (4 * r + i);
      o.qh[2 * k + 1] |= uint64_t((qh >> (16 + 4 * k + i)) & 1) << (4 * r + i);
    }
}

void put_q4_0(const BlockQ4_0& b, size_t r, const TileOut& o) {
  put_nibbles(b.qs, r, o);
  o.d[r] = b.d;
}
void put_q4_1(const BlockQ4_1& b, size_t r, const TileOut& o) {
  put_nibbles(b.qs, r, o);
  o.d[r] = b.d;
  o.m[r] = b.m;
}
void put_q5_0(const BlockQ5_0& b, size_t r, const TileOut& o) {
  put_nibbles(b.qs, r, o);
  put_fifth_bits(b.qh, r, o);
  o.d[r] = b.d;
}
void put_q5_1(const BlockQ5_1& b, size_t r, const TileOut& o) {
  put_nibbles(b.qs, r, o);
  put_fifth_bits(b.qh, r, o);
  o.d[r] = b.d;
  o.m[r] = b.m;
}

// The shared skeleton: every (group, block) tile is cleared (padding rows
// stay zero: zero scales, zero mins) and each real row's block put in place.
template <class B>
void pack_blocks(const Matrix& w, uint8_t* out, void (*put)(const B&, size_t, const TileOut&)) {
  const size_t nb = w.cols / kQK, G = n_groups(w.rows);
  const LegacyPlanes pl = legacy_planes(w.type, out, w.rows, nb);
  const PlaneBytes pb = plane_bytes(w.type);
  auto* qs = const_cast<uint8_t*>(pl.qs);
  auto* qh = const_cast<uint64_t*>(pl.qh);
  auto* d = const_cast<uint16_t*>(pl.d);
  auto* m = const_cast<uint16_t*>(pl.m);
  const auto* src = static_cast<const B*>(w.data);
  const auto ng = static_cast<long long>(G);
#pragma omp parallel for schedule(static)
  for (long long gi = 0; gi < ng; ++gi) {
    const size_t g = size_t(gi);
    for (size_t b = 0; b < nb; ++b) {
      const size_t tile = g * nb + b;
      const TileOut o{qs + tile * pb.qs, qh ? qh + tile * 8 : nullptr, d + tile * kPackRows,
                      m ? m + tile * kPackRows : nullptr};
      std::memset(o.qs, 0, pb.qs);
      if (o.qh) std::memset(o.qh, 0, pb.qh);
      std::memset(o.d, 0, kPackRows * 2);
      if (o.m) std::memset(o.m, 0, kPackRows * 2);
      for (size_t r = 0; r < kPackRows && g * kPackRows + r < w.rows; ++r)
        put(src[(g * kPackRows + r) * nb + b], r, o);
    }
  }
}

}  // namespace

bool is_legacy_packed(DType t) { return plane_bytes(t).qs != 0; }

size_t legacy_packed_bytes(DType t, size_t rows, size_t cols) {
  const PlaneBytes pb = plane_bytes(t);
  return n_groups(rows) * (cols / kQK) * (pb.qs + pb.qh + kPackRows * 2 + pb.m);
}

LegacyPlanes legacy_planes(DType t, const uint8_t* base, size_t rows, size_t nb) {
  const PlaneBytes pb = plane_bytes(t);
  const size_t tiles = n_groups(rows) * nb;
  const uint8_t* qh = base + tiles * pb.qs;
  const uint8_t* d = qh + tiles * pb.qh;
  const uint8_t* m = d + tiles * kPackRows * 2;
  return {base, pb.qh ? reinterpret_cast<const uint64_t*>(qh) : nullptr, reinterpret_cast<const uint16_t*>(d),
          pb.m ? reinterpret_cast<const uint16_t*>(m) : nullptr};
}

void pack_legacy(const Matrix& w, uint8_t* out) {
  switch (w.type) {
    case DType::q8_0: return pack_blocks<BlockQ8_0>(w, out, &put_q8_0);
    case DType::q4_0: return pack_blocks<BlockQ4_0>(w, out, &put_q4_0);
    case DType::q4_1: return pack_blocks<BlockQ4_1>(w, out, &put_q4_1);
    case DType::q5_0: return pack_blocks<BlockQ5_0>(w, out, &put_q5_0);
    case DType::q5_1: return pack_blocks<BlockQ5_1>(w, out, &put_q5_1);
    default: break;
  }
}

}  // namespace defkv::quant::detail
