// Generalized Neighborhood Attention (GNA) semantics: which keys each query sees, which KV tiles each Q tile visits, which
// visited tiles are full (no element mask) and the element mask of partial tiles.
//
// This header is *the* definition of GNA for every kernel (CPU, sm80, sm90, sm100). Its torch-free Python twin is
// simulator/gna_policy.py; tests/test_policy.py proves the two identical on exhaustive small grids.
//
// Per dimension (length L, window k, stride s, dilation d, causal c): dilation splits the dimension into d interleaved groups
// (token x belongs to group x % d, at group-local position x / d); group g has length ceil((L - g) / d), and attention runs
// inside each group. All window/tile arithmetic below is in group-local coordinates. Multi-dimensional = AND over dimensions.
#pragma once

#include "natten_like/policy/common.hpp"

namespace natten_like::policy {

// Length of dilation group g of a dimension of length L with dilation d.
NL_HOST_DEVICE int64_t gna_group_length(int64_t L, int64_t d, int64_t g) { return (L - g + d - 1) / d; }

// Keys [begin, end) seen by group-local query i in a group of length Lg (Lg >= k is guaranteed by k * d <= L).
NL_HOST_DEVICE Range gna_window(int64_t i, int64_t Lg, int64_t k, int64_t s, bool causal) {
  if (causal) {
    int64_t leader = min64((i / s) * s + s - 1, Lg - 1);
    return Range{max64(leader - k + 1, 0), i + 1};
  }
  int64_t leader = min64((i / s) * s + s / 2, Lg - 1);
  int64_t start = clamp64(leader - k / 2, 0, Lg - k);
  return Range{start, start + k};
}

// Group-local queries of Q tile t (tile size T) in a group of length Lg.
NL_HOST_DEVICE Range gna_tile_rows(int64_t t, int64_t T, int64_t Lg) { return Range{t * T, min64((t + 1) * T, Lg)}; }

// Union of the windows of the queries of Q tile t. Window begins and ends are non-decreasing in the query and consecutive
// windows overlap or touch (s <= k), so the union is one interval.
NL_HOST_DEVICE Range gna_tile_kv_range(int64_t t, int64_t Tq, int64_t Lg, int64_t k, int64_t s, bool causal) {
  Range q = gna_tile_rows(t, Tq, Lg);
  return Range{gna_window(q.begin, Lg, k, s, causal).begin, gna_window(q.end - 1, Lg, k, s, causal).end};
}

// KV tiles (size Tk) visited by Q tile t under static tiling: the KV range snapped outward to the KV tile grid.
NL_HOST_DEVICE Range gna_tile_kv_tiles(int64_t t, int64_t Tq, int64_t Tk, int64_t Lg, int64_t k, int64_t s, bool causal) {
  Range r = gna_tile_kv_range(t, Tq, Lg, k, s, causal);
  return Range{r.begin / Tk, ceil_div(r.end, Tk)};
}

// KV tiles u that Q tile t attends in full (every (query, key) pair of t x u attended: no element mask). Full iff the
// tile lies inside the group ((u + 1) Tk <= Lg), the last query's window begins at or before u Tk and the first query's
// window ends at or after (u + 1) Tk; window begins and ends are non-decreasing in the query, so this is an interval.
// A KV tile cut by the group's end is never full (the kernel must mask its out-of-range rows).
NL_HOST_DEVICE Range gna_full_kv_tiles(int64_t t, int64_t Tq, int64_t Tk, int64_t Lg, int64_t k, int64_t s, bool causal) {
  Range q = gna_tile_rows(t, Tq, Lg);
  const Range first = gna_window(q.begin, Lg, k, s, causal);
  const Range last = gna_window(q.end - 1, Lg, k, s, causal);
  return Range{ceil_div(last.begin, Tk), min64(first.end, Lg) / Tk};
}

NL_HOST_DEVICE bool gna_tile_is_full(int64_t t, int64_t u, int64_t Tq, int64_t Tk, int64_t Lg, int64_t k, int64_t s,
                                     bool causal) {
  return gna_full_kv_tiles(t, Tq, Tk, Lg, k, s, causal).contains(u);
}

// Q tiles that visit KV tile u (the inverse of gna_tile_kv_tiles), for backward passes that iterate over KV tiles.
// Both ends of gna_tile_kv_tiles(t) are non-decreasing in t, so the answer is one interval, found by binary search.
NL_HOST_DEVICE Range gna_kv_tile_q_tiles(int64_t u, int64_t Tq, int64_t Tk, int64_t Lg, int64_t k, int64_t s, bool causal) {
  int64_t n = ceil_div(Lg, Tq);
  int64_t lo = 0, hi = n;  // first t with kv_tiles(t).end > u
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (gna_tile_kv_tiles(mid, Tq, Tk, Lg, k, s, causal).end > u) hi = mid; else lo = mid + 1;
  }
  int64_t first = lo;
  hi = n;  // first t with kv_tiles(t).begin > u
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (gna_tile_kv_tiles(mid, Tq, Tk, Lg, k, s, causal).begin > u) hi = mid; else lo = mid + 1;
  }
  return Range{first, lo};
}

// Queries whose windows intersect keys [kb, ke): one interval, since window begins and ends are non-decreasing.
NL_HOST_DEVICE Range gna_key_range_queries(int64_t kb, int64_t ke, int64_t Lg, int64_t k, int64_t s, bool causal) {
  int64_t lo = 0, hi = Lg;  // first query whose window ends after kb
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (gna_window(mid, Lg, k, s, causal).end > kb) hi = mid; else lo = mid + 1;
  }
  int64_t first = lo;
  hi = Lg;  // first query whose window begins at or after ke
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (gna_window(mid, Lg, k, s, causal).begin >= ke) hi = mid; else lo = mid + 1;
  }
  return Range{first, lo};
}

// One token dimension of a GNA problem.
struct GnaDim {
  int64_t length = 1;
  int64_t window = 1;
  int64_t stride = 1;
  int64_t dilation = 1;
  bool causal = false;

  NL_HOST_DEVICE int64_t group_length(int64_t g) const { return gna_group_length(length, dilation, g); }
  // Tiles of size T over all dilation groups ("slots"), enumerated group by group.
  NL_HOST_DEVICE int64_t num_slots(int64_t T) const {
    int64_t n = 0;
    for (int64_t g = 0; g < dilation; ++g) n += ceil_div(group_length(g), T);
    return n;
  }
  // Slot p -> (group, group-local tile index).
  NL_HOST_DEVICE void slot_to_tile(int64_t p, int64_t T, int64_t& g, int64_t& t) const {
    for (g = 0; g < dilation; ++g) {
      int64_t n = ceil_div(group_length(g), T);
      if (p < n) break;
      p -= n;
    }
    t = p;
  }
  NL_HOST_DEVICE int64_t tile_to_slot(int64_t g, int64_t t, int64_t T) const {
    int64_t p = t;
    for (int64_t h = 0; h < g; ++h) p += ceil_div(group_length(h), T);
    return p;
  }
};

// A GNA problem of Rank token dimensions tiled with Q tile shape tq and KV tile shape tk (both per dimension). Tiles live in
// one dilation group per dimension; tile indices enumerate slots in row-major order over dimensions (last fastest).
template <int Rank>
struct GnaPolicy {
  GnaDim dim[Rank];
  int64_t tq[Rank];
  int64_t tk[Rank];

  NL_HOST_DEVICE int64_t num_q_tiles() const {
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= dim[i].num_slots(tq[i]);
    return n;
  }
  NL_HOST_DEVICE int64_t num_kv_tiles() const {
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= dim[i].num_slots(tk[i]);
    return n;
  }
  NL_HOST_DEVICE int64_t max_q_rows() const {
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= tq[i];
    return n;
  }
  NL_HOST_DEVICE int64_t max_kv_rows() const {
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= tk[i];
    return n;
  }
  // Tokens per unit step of each dimension in the flattened (row-major) token index.
  NL_HOST_DEVICE int64_t token_stride(int i) const {
    int64_t s = 1;
    for (int j = Rank - 1; j > i; --j) s *= dim[j].length;
    return s;
  }

  // Flat tile index -> per-dimension (group, group-local tile).
  NL_HOST_DEVICE void decode(int64_t flat, const int64_t* tile_shape, int64_t* g, int64_t* t) const {
    for (int i = Rank - 1; i >= 0; --i) {
      int64_t n = dim[i].num_slots(tile_shape[i]);
      dim[i].slot_to_tile(flat % n, tile_shape[i], g[i], t[i]);
      flat /= n;
    }
  }
  NL_HOST_DEVICE int64_t encode(const int64_t* tile_shape, const int64_t* g, const int64_t* t) const {
    int64_t flat = 0;
    for (int i = 0; i < Rank; ++i) flat = flat * dim[i].num_slots(tile_shape[i]) + dim[i].tile_to_slot(g[i], t[i], tile_shape[i]);
    return flat;
  }

  // Flat token indices of the rows of a tile (row-major within the tile). Returns the row count.
  NL_HOST_DEVICE int64_t tile_rows(int64_t flat, const int64_t* tile_shape, int64_t* rows) const {
    int64_t g[Rank], t[Rank];
    decode(flat, tile_shape, g, t);
    Range r[Rank];
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) {
      r[i] = gna_tile_rows(t[i], tile_shape[i], dim[i].group_length(g[i]));
      n *= r[i].size();
    }
    for (int64_t e = 0; e < n; ++e) {
      int64_t rem = e, token = 0;
      for (int i = Rank - 1; i >= 0; --i) {
        int64_t x = r[i].begin + rem % r[i].size();
        rem /= r[i].size();
        token += (g[i] + x * dim[i].dilation) * token_stride(i);
      }
      rows[e] = token;
    }
    return n;
  }
  NL_HOST_DEVICE int64_t q_tile_rows(int64_t t, int64_t* rows) const { return tile_rows(t, tq, rows); }
  NL_HOST_DEVICE int64_t kv_tile_rows(int64_t u, int64_t* rows) const { return tile_rows(u, tk, rows); }

  // Calls f(kv_tile, full) for every KV tile Q tile t visits, in row-major order.
  template <class F>
  NL_HOST_DEVICE void for_each_kv_tile(int64_t t, F&& f) const {
    int64_t g[Rank], qt[Rank];
    decode(t, tq, g, qt);
    Range box[Rank];
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) {
      const GnaDim& d = dim[i];
      box[i] = gna_tile_kv_tiles(qt[i], tq[i], tk[i], d.group_length(g[i]), d.window, d.stride, d.causal);
      n *= box[i].size();
    }
    for (int64_t e = 0; e < n; ++e) {
      int64_t u[Rank], rem = e;
      bool full = true;
      for (int i = Rank - 1; i >= 0; --i) {
        const GnaDim& d = dim[i];
        u[i] = box[i].begin + rem % box[i].size();
        rem /= box[i].size();
        full = full && gna_tile_is_full(qt[i], u[i], tq[i], tk[i], d.group_length(g[i]), d.window, d.stride, d.causal);
      }
      f(encode(tk, g, u), full);
    }
  }

  // Calls f(q_tile, full) for every Q tile that visits KV tile u (the inverse of for_each_kv_tile).
  template <class F>
  NL_HOST_DEVICE void for_each_q_tile(int64_t u, F&& f) const {
    int64_t g[Rank], kt[Rank];
    decode(u, tk, g, kt);
    Range box[Rank];
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) {
      const GnaDim& d = dim[i];
      box[i] = gna_kv_tile_q_tiles(kt[i], tq[i], tk[i], d.group_length(g[i]), d.window, d.stride, d.causal);
      n *= box[i].size();
    }
    for (int64_t e = 0; e < n; ++e) {
      int64_t t[Rank], rem = e;
      bool full = true;
      for (int i = Rank - 1; i >= 0; --i) {
        const GnaDim& d = dim[i];
        t[i] = box[i].begin + rem % box[i].size();
        rem /= box[i].size();
        full = full && gna_tile_is_full(t[i], kt[i], tq[i], tk[i], d.group_length(g[i]), d.window, d.stride, d.causal);
      }
      f(encode(tq, g, t), full);
    }
  }

  // ---- Exact-box iteration (CPU kernels) --------------------------------------------------------------------------
  // A CPU kernel gathers rows anyway, so it visits the exact union of the windows of a Q tile (no snapping to a KV grid)
  // in chunks: sub-boxes that split only the outermost dimension, at most `chunk_rows` rows each (or one outermost slice
  // when a slice alone is larger). The backward's dK/dV pass does the same from the key side: for a KV tile (of tk), the
  // exact box of queries whose windows intersect it.

  // Upper bound on the rows of any chunk for a row budget: a chunk holds min(budget / inner, outer) outermost slices, at
  // least one, where inner = rows of one slice. Query boxes of a KV tile span at most tk + 4 k per dimension (a key is seen
  // by queries within window + stride of it); KV boxes of a Q tile at most tq + 2 k.
  NL_HOST_DEVICE int64_t max_chunk_rows(int64_t chunk_rows, bool key_side) const {
    int64_t inner = 1;
    for (int i = 1; i < Rank; ++i) {
      const int64_t span = key_side ? tq[i] + 2 * dim[i].window : tk[i] + 4 * dim[i].window;
      inner *= min64(span, ceil_div(dim[i].length, dim[i].dilation));
    }
    return max64(chunk_rows, inner);
  }

  template <class F>
  NL_HOST_DEVICE void for_each_chunk_(const int64_t* g, const Range* self, const Range* box, bool queries_are_self,
                                      int64_t chunk_rows, int64_t* rows, unsigned char* mask, F&& f) const {
    int64_t inner = 1;
    for (int i = 1; i < Rank; ++i) inner *= box[i].size();
    if (inner == 0 || box[0].size() == 0) return;
    // Balanced chunks: as few as the budget allows, of equal size (575 rows -> 3 x 192, not 256 + 256 + 63).
    const int64_t max_slices = max64(chunk_rows / inner, 1);
    const int64_t slices = ceil_div(box[0].size(), ceil_div(box[0].size(), max_slices));
    for (int64_t c0 = box[0].begin; c0 < box[0].end; c0 += slices) {
      Range chunk[Rank];
      chunk[0] = Range{c0, min64(c0 + slices, box[0].end)};
      for (int i = 1; i < Rank; ++i) chunk[i] = box[i];
      // Full iff, per dimension, every query's window covers every key of the chunk; begins/ends are monotone, so the
      // extreme queries decide.
      const Range* qr = queries_are_self ? self : chunk;
      const Range* kr = queries_are_self ? chunk : self;
      bool full = true;
      for (int i = 0; i < Rank && full; ++i) {
        const GnaDim& d = dim[i];
        const int64_t Lg = d.group_length(g[i]);
        full = gna_window(qr[i].end - 1, Lg, d.window, d.stride, d.causal).begin <= kr[i].begin &&
               gna_window(qr[i].begin, Lg, d.window, d.stride, d.causal).end >= kr[i].end;
      }
      const int64_t n = fill_rows_(g, chunk, rows);
      if (!full) fill_box_mask_(g, qr, kr, mask);
      f(n, full);
    }
  }

  // Calls f(n, full) once per KV chunk of Q tile t, with rows[0:n] the chunk's tokens and, when !full, mask [q rows x n]
  // (q rows in q_tile_rows order).
  template <class F>
  NL_HOST_DEVICE void for_each_kv_chunk(int64_t t, int64_t chunk_rows, int64_t* rows, unsigned char* mask, F&& f) const {
    int64_t g[Rank], qt[Rank];
    decode(t, tq, g, qt);
    Range self[Rank], box[Rank];
    for (int i = 0; i < Rank; ++i) {
      const GnaDim& d = dim[i];
      const int64_t Lg = d.group_length(g[i]);
      self[i] = gna_tile_rows(qt[i], tq[i], Lg);
      box[i] = gna_tile_kv_range(qt[i], tq[i], Lg, d.window, d.stride, d.causal);
    }
    for_each_chunk_(g, self, box, true, chunk_rows, rows, mask, f);
  }

  // Calls f(n, full) once per chunk of the queries that attend to KV tile u, rows[0:n] their tokens and, when !full,
  // mask [n x kv rows] (kv rows in kv_tile_rows order).
  template <class F>
  NL_HOST_DEVICE void for_each_q_chunk(int64_t u, int64_t chunk_rows, int64_t* rows, unsigned char* mask, F&& f) const {
    int64_t g[Rank], kt[Rank];
    decode(u, tk, g, kt);
    Range self[Rank], box[Rank];
    for (int i = 0; i < Rank; ++i) {
      const GnaDim& d = dim[i];
      const int64_t Lg = d.group_length(g[i]);
      self[i] = gna_tile_rows(kt[i], tk[i], Lg);
      box[i] = gna_key_range_queries(self[i].begin, self[i].end, Lg, d.window, d.stride, d.causal);
    }
    for_each_chunk_(g, self, box, false, chunk_rows, rows, mask, f);
  }

  // Flat token indices of a box (group-local ranges per dimension, row-major). Returns the row count.
  NL_HOST_DEVICE int64_t fill_rows_(const int64_t* g, const Range* r, int64_t* rows) const {
    int64_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= r[i].size();
    for (int64_t e = 0; e < n; ++e) {
      int64_t rem = e, token = 0;
      for (int i = Rank - 1; i >= 0; --i) {
        const int64_t x = r[i].begin + rem % r[i].size();
        rem /= r[i].size();
        token += (g[i] + x * dim[i].dilation) * token_stride(i);
      }
      rows[e] = token;
    }
    return n;
  }

  // mask[a][b] for queries box qr x keys box kr (both row-major over dimensions). A window is an interval per dimension,
  // so each query's row is built from per-dimension intervals: zero the row, then set the covered runs.
  NL_HOST_DEVICE void fill_box_mask_(const int64_t* g, const Range* qr, const Range* kr, unsigned char* mask) const {
    int64_t nk = 1, nq = 1;
    for (int i = 0; i < Rank; ++i) {
      nk *= kr[i].size();
      nq *= qr[i].size();
    }
    for (int64_t a = 0; a < nq; ++a) {
      Range w[Rank];  // the window of query a intersected with the key box, in box-local coordinates
      int64_t rem = a;
      for (int i = Rank - 1; i >= 0; --i) {
        const GnaDim& d = dim[i];
        const int64_t x = qr[i].begin + rem % qr[i].size();
        rem /= qr[i].size();
        const Range win = gna_window(x, d.group_length(g[i]), d.window, d.stride, d.causal);
        w[i] = Range{max64(win.begin, kr[i].begin) - kr[i].begin, min64(win.end, kr[i].end) - kr[i].begin};
      }
      unsigned char* m = mask + a * nk;
      for (int64_t b = 0; b < nk; ++b) m[b] = 0;
      const int64_t last = kr[Rank - 1].size();
      const int64_t rows = nk / (last > 0 ? last : 1);
      for (int64_t r = 0; r < rows; ++r) {  // r enumerates the outer dimensions of the key box
        bool inside = true;
        int64_t rem2 = r;
        for (int i = Rank - 2; i >= 0; --i) {
          const int64_t y = rem2 % kr[i].size();
          rem2 /= kr[i].size();
          inside = inside && w[i].contains(y);
        }
        if (!inside) continue;
        for (int64_t b = w[Rank - 1].begin; b < w[Rank - 1].end; ++b) m[r * last + b] = 1;
      }
    }
  }

  // Element mask of Q tile t x KV tile u, row-major [q rows][kv rows] in the order of tile_rows. 1 = attend.
  // Rows of u outside t's dilation group (never visited) get 0.
  NL_HOST_DEVICE void fill_mask(int64_t t, int64_t u, unsigned char* mask) const {
    int64_t gq[Rank], qt[Rank], gk[Rank], kt[Rank];
    decode(t, tq, gq, qt);
    decode(u, tk, gk, kt);
    Range qr[Rank], kr[Rank];
    int64_t nq = 1, nk = 1;
    for (int i = 0; i < Rank; ++i) {
      qr[i] = gna_tile_rows(qt[i], tq[i], dim[i].group_length(gq[i]));
      kr[i] = gna_tile_rows(kt[i], tk[i], dim[i].group_length(gk[i]));
      nq *= qr[i].size();
      nk *= kr[i].size();
    }
    for (int64_t a = 0; a < nq; ++a) {
      Range w[Rank];
      bool same_group = true;
      int64_t rem = a;
      for (int i = Rank - 1; i >= 0; --i) {
        const GnaDim& d = dim[i];
        int64_t x = qr[i].begin + rem % qr[i].size();
        rem /= qr[i].size();
        w[i] = gna_window(x, d.group_length(gq[i]), d.window, d.stride, d.causal);
        same_group = same_group && gq[i] == gk[i];
      }
      for (int64_t b = 0; b < nk; ++b) {
        bool ok = same_group;
        int64_t rem2 = b;
        for (int i = Rank - 1; i >= 0 && ok; --i) {
          int64_t y = kr[i].begin + rem2 % kr[i].size();
          rem2 /= kr[i].size();
          ok = w[i].contains(y);
        }
        mask[a * nk + b] = ok ? 1 : 0;
      }
    }
  }
};

}  // namespace natten_like::policy
