// How a GNA tile (GnaTileBox: one dilation group, group-local row ranges per dim) becomes one TMA box of the 5-D view
// (head x head dim, x2, x1, x0, batch) of a heads-last [B, X0, X1, X2, H, D] tensor, and which rows of the smem tile
// that box fills are rows of the tile.
//
// The box of a tile shape T (per dim) starting at group-local row b of group g: token coordinate g + b * d, extent
// T * d tokens, element stride d (cuTensorMapEncodeTiled's elementStrides), so it loads exactly T tokens per dim, all
// of group g: a dilated tile is one box. TMA writes the box to smem innermost coordinate fastest (x2, then x1, then
// x0), i.e. smem row r = (i0 * T1 + i1) * T2 + i2 for box-local indices i: row-major over dims, the order of
// GnaTileBox::row.
// Where the tile is cut by its group's end (group-local b + i >= group length) the token coordinate is past the dim's
// length (g + x * d >= L exactly when x >= ceil((L - g) / d)), so TMA zero-fills the row, in every dim (the batch
// entry is a TMA dim of its own, so dim 0 never runs into the next entry's rows). They are not rows of the tile:
// tma_box_row flags them, the kernel masks them as keys and never stores them as queries.
//
// Plain C++ with NL_HOST_DEVICE: tests/test_sm90_host.py proves it against GnaPolicy::tile_rows and GnaTileBox::row.
#pragma once

#include "natten_like/sm80/gna_tile_iterator.hpp"

namespace natten_like::sm90 {

using policy::GnaPolicy;
using sm80::GnaTileBox;

// TMA limits the box parameters: an element stride is at most 8, a box extent at most 256 elements.
constexpr int64_t kTmaMaxElementStride = 8;
constexpr int64_t kTmaMaxBoxExtent = 256;

// Smem rows of the box of a tile shape (the tile's row product: every box of a launch fills this many).
template <int Rank>
NL_HOST_DEVICE int64_t tma_box_rows(const int64_t* tile) {
  int64_t n = 1;
  for (int i = 0; i < Rank; ++i) n *= tile[i];
  return n;
}

// Box extent (tokens traversed) and element stride of dim i for a tile shape: T * d and d.
template <int Rank>
NL_HOST_DEVICE int64_t tma_box_extent(const GnaPolicy<Rank>& pol, const int64_t* tile, int i) {
  return tile[i] * pol.dim[i].dilation;
}

// Whether TMA can express the boxes of a tile shape (element strides and extents within the hardware limits).
template <int Rank>
NL_HOST_DEVICE bool tma_box_supported(const GnaPolicy<Rank>& pol, const int64_t* tile) {
  for (int i = 0; i < Rank; ++i) {
    if (pol.dim[i].dilation > kTmaMaxElementStride || tma_box_extent(pol, tile, i) > kTmaMaxBoxExtent) return false;
  }
  return true;
}

// First token coordinate per dim of the box of a tile (dim 0 within the sample; the kernel adds batch * X0).
template <int Rank>
NL_HOST_DEVICE void tma_box_start(const GnaPolicy<Rank>& pol, const GnaTileBox<Rank>& box, int32_t* start) {
  for (int i = 0; i < Rank; ++i) {
    start[i] = static_cast<int32_t>(box.group[i] + box.rows[i].begin * pol.dim[i].dilation);
  }
}

// Smem row r of the box of `box` under tile shape `tile`: true iff it is a row of the tile, with x its group-local
// coordinates (those GnaTileBox::row gives for the same row). Rows that are not get x = (-1, 0, ...): -1 lies outside
// every window (windows begin at 0), so a key row flagged here is masked by the window test alone.
template <int Rank>
NL_HOST_DEVICE bool tma_box_row(const GnaTileBox<Rank>& box, const int64_t* tile, int32_t r, int32_t* x) {
  bool valid = r < static_cast<int32_t>(tma_box_rows<Rank>(tile));
  for (int i = Rank - 1; i >= 0; --i) {
    const int32_t n = static_cast<int32_t>(tile[i]);
    const int32_t j = r % n;
    r /= n;
    valid = valid && j < static_cast<int32_t>(box.rows[i].size());
    x[i] = static_cast<int32_t>(box.rows[i].begin) + j;
  }
  if (!valid) {
    x[0] = -1;
    for (int i = 1; i < Rank; ++i) x[i] = 0;
  }
  return valid;
}

// Flat token index (within the sample) of group-local coordinates x of the tile's group.
template <int Rank>
NL_HOST_DEVICE int64_t tma_box_row_token(const GnaPolicy<Rank>& pol, const GnaTileBox<Rank>& box, const int32_t* x) {
  int64_t token = 0;
  for (int i = 0; i < Rank; ++i) token += (box.group[i] + x[i] * pol.dim[i].dilation) * pol.token_stride(i);
  return token;
}

}  // namespace natten_like::sm90
