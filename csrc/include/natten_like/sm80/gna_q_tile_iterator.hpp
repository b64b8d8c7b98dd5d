// The key side of the GNA policy for backward mainloops: a CTA that owns KV tile u walks the Q tiles visiting it, in
// the order of GnaPolicy::for_each_q_tile, with random access to the e-th one and its full/partial classification.
//
// Plain C++ with NL_HOST_DEVICE: tests/test_sm80_bwd_host.py compiles it with the host compiler and proves it equal to
// GnaPolicy::for_each_q_tile, tile_rows and fill_mask on random problems (through the binding's rank-3 padding), so the
// CPU verifies the indexing the GPU runs. As in gna_tile_iterator.hpp, group-local coordinates fit int32, tokens int64.
#pragma once

#include "natten_like/policy/gna.hpp"
#include "natten_like/sm80/gna_tile_iterator.hpp"

namespace natten_like::sm80 {

// KV tile u of a policy and the box of Q tiles that visit it; visit(e) is the e-th such Q tile in the order of
// GnaPolicy::for_each_q_tile. Everything that depends on u alone (group lengths, the visiting and the full Q-tile
// ranges per dimension) is computed once here, so that visit() is a few int32 operations.
template <int Rank>
struct GnaQTileIterator {
  GnaTileBox<Rank> kv;
  int64_t kv_tile[Rank];    // group-local KV tile index per dimension
  Range q_tiles[Rank];      // group-local Q tiles visiting u per dimension (gna_kv_tile_q_tiles)
  Range full_tiles[Rank];   // those of them that attend u in full, per dimension
  int64_t group_length[Rank];
  int64_t count;            // number of visiting Q tiles (the host keeps it below 2^31)

  NL_HOST_DEVICE GnaQTileIterator(const GnaPolicy<Rank>& pol, int64_t u) {
    pol.decode(u, pol.tk, kv.group, kv_tile);
    count = 1;
    for (int i = 0; i < Rank; ++i) {
      const policy::GnaDim& d = pol.dim[i];
      const int64_t Lg = d.group_length(kv.group[i]);
      const int64_t Tq = pol.tq[i], Tk = pol.tk[i];
      group_length[i] = Lg;
      kv.rows[i] = policy::gna_tile_rows(kv_tile[i], Tk, Lg);
      q_tiles[i] = policy::gna_kv_tile_q_tiles(kv_tile[i], Tq, Tk, Lg, d.window, d.stride, d.causal);
      count *= q_tiles[i].size();
      // Q tile t attends u in full iff gna_full_kv_tiles(t) contains u. Both ends of gna_full_kv_tiles(t) are
      // non-decreasing in t (they come from the windows of the tile's first and last query, which are monotone), so
      // {t : begin(t) <= u} is a prefix and {t : end(t) > u} a suffix: the full Q tiles are one interval, found by two
      // binary searches over the visiting tiles (a full pair is always a visited pair).
      int64_t lo = q_tiles[i].begin, hi = q_tiles[i].end;
      while (lo < hi) {  // first t with end(t) > u
        const int64_t mid = (lo + hi) / 2;
        if (policy::gna_full_kv_tiles(mid, Tq, Tk, Lg, d.window, d.stride, d.causal).end > kv_tile[i]) hi = mid;
        else lo = mid + 1;
      }
      const int64_t first = lo;
      hi = q_tiles[i].end;
      while (lo < hi) {  // first t with begin(t) > u
        const int64_t mid = (lo + hi) / 2;
        if (policy::gna_full_kv_tiles(mid, Tq, Tk, Lg, d.window, d.stride, d.causal).begin > kv_tile[i]) hi = mid;
        else lo = mid + 1;
      }
      full_tiles[i] = Range{first, lo};
    }
  }

  // The e-th visiting Q tile (0 <= e < count): its box, its group-local tile index per dimension in t, and whether the
  // pair (Q tile, u) is full (no element mask needed).
  NL_HOST_DEVICE GnaTileBox<Rank> visit(const GnaPolicy<Rank>& pol, int64_t e, int64_t* t, bool& full) const {
    GnaTileBox<Rank> q;
    full = true;
    int32_t rem = static_cast<int32_t>(e);
    for (int i = Rank - 1; i >= 0; --i) {
      const int32_t n = static_cast<int32_t>(q_tiles[i].size());
      t[i] = q_tiles[i].begin + rem % n;
      rem /= n;
      q.group[i] = kv.group[i];
      q.rows[i] = policy::gna_tile_rows(t[i], pol.tq[i], group_length[i]);
      full = full && full_tiles[i].contains(t[i]);
    }
    return q;
  }

  // Window of a visiting query with group-local coordinates x, per dimension (group-local [begin, end)), from the same
  // gna_window the policy's mask and the forward kernel use: key y of u is attended iff begin[i] <= y[i] < end[i] for
  // every dimension i.
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
