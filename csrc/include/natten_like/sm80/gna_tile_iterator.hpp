// The GNA policy (policy/gna.hpp) in the form a GPU mainloop consumes: random access to the i-th visited KV tile of a Q
// tile, and per-row token offsets and group-local coordinates so that each thread computes its own rows (the policy's
// tile_rows / fill_mask fill whole arrays serially, which a CTA cannot afford per tile).
//
// Plain C++ with NL_HOST_DEVICE: tests/test_cuda_build.py compiles it with the host compiler and proves it equal to
// GnaPolicy::for_each_kv_tile, tile_rows and fill_mask on random problems, so the CPU verifies the indexing the GPU runs.
// Group-local coordinates and window bounds fit int32 (a token dim is far below 2^31); token offsets are int64.
#pragma once

#include "natten_like/policy/gna.hpp"

namespace natten_like::sm80 {

using policy::GnaPolicy;
using policy::Range;

// One tile (Q or KV) of a GnaPolicy: its dilation group and group-local row range per dimension.
template <int Rank>
struct GnaTileBox {
  int64_t group[Rank];
  Range rows[Rank];

  NL_HOST_DEVICE int64_t num_rows() const {
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= rows[i].size();
    return n;
  }

  // Row r of the tile (row-major over dimensions, the order of GnaPolicy::tile_rows): its flat token index, and its
  // group-local coordinate per dimension in x. A tile holds far fewer than 2^31 rows, so r is decomposed in int32.
  NL_HOST_DEVICE int64_t row(const GnaPolicy<Rank>& pol, int32_t r, int32_t* x) const {
    int64_t token = 0;
    for (int i = Rank - 1; i >= 0; --i) {
      const int32_t n = static_cast<int32_t>(rows[i].size());
      x[i] = static_cast<int32_t>(rows[i].begin) + r % n;
      r /= n;
      token += (group[i] + x[i] * pol.dim[i].dilation) * pol.token_stride(i);
    }
    return token;
  }
};

// The Q tile t of a policy and the box of KV tiles it visits under static tiling; visit(e) is the e-th KV tile in the
// order of GnaPolicy::for_each_kv_tile. Everything that depends on the Q tile alone (group lengths, the full-tile range
// per dimension) is computed once here, so that visit() is a few int32 operations: it runs once per KV tile in the
// mainloop, where the policy's int64 divisions would cost registers the accumulators need.
template <int Rank>
struct GnaKvTileIterator {
  GnaTileBox<Rank> q;
  int64_t q_tile[Rank];      // group-local Q tile index per dimension
  Range kv_tiles[Rank];      // group-local KV tile indices visited per dimension
  Range full_tiles[Rank];    // gna_full_kv_tiles per dimension
  int64_t group_length[Rank];
  int64_t count;             // number of visited KV tiles (the host keeps it below 2^31)

  NL_HOST_DEVICE GnaKvTileIterator(const GnaPolicy<Rank>& pol, int64_t t) {
    pol.decode(t, pol.tq, q.group, q_tile);
    count = 1;
    for (int i = 0; i < Rank; ++i) {
      const policy::GnaDim& d = pol.dim[i];
      const int64_t Lg = d.group_length(q.group[i]);
      const int64_t Tk = pol.tk[i];
      group_length[i] = Lg;
      q.rows[i] = policy::gna_tile_rows(q_tile[i], pol.tq[i], Lg);
      kv_tiles[i] = policy::gna_tile_kv_tiles(q_tile[i], pol.tq[i], Tk, Lg, d.window, d.stride, d.causal);
      count *= kv_tiles[i].size();
      full_tiles[i] = policy::gna_full_kv_tiles(q_tile[i], pol.tq[i], Tk, Lg, d.window, d.stride, d.causal);
    }
  }

  // The e-th visited KV tile (0 <= e < count): its box, its group-local tile index per dimension in u, and whether it is
  // full (no element mask needed).
  NL_HOST_DEVICE GnaTileBox<Rank> visit(const GnaPolicy<Rank>& pol, int64_t e, int64_t* u, bool& full) const {
    GnaTileBox<Rank> kv;
    full = true;
    int32_t rem = static_cast<int32_t>(e);
    for (int i = Rank - 1; i >= 0; --i) {
      const int32_t n = static_cast<int32_t>(kv_tiles[i].size());
      u[i] = kv_tiles[i].begin + rem % n;
      rem /= n;
      kv.group[i] = q.group[i];
      kv.rows[i] = policy::gna_tile_rows(u[i], pol.tk[i], group_length[i]);
      full = full && full_tiles[i].contains(u[i]);
    }
    return kv;
  }

  // Window of Q row r per dimension (group-local [begin, end)), from the same gna_window the policy's mask uses.
  NL_HOST_DEVICE void q_row_window(const GnaPolicy<Rank>& pol, const int32_t* x, int32_t* begin, int32_t* end) const {
    for (int i = 0; i < Rank; ++i) {
      const policy::GnaDim& d = pol.dim[i];
      const Range w = policy::gna_window(x[i], group_length[i], d.window, d.stride, d.causal);
      begin[i] = static_cast<int32_t>(w.begin);
      end[i] = static_cast<int32_t>(w.end);
    }
  }
};

}  // namespace natten_like::sm80
