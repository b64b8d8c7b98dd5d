// Strided-shard attention (S2-Attention) semantics: per KV head, a local band of blocks plus that head's strided shard of
// KV blocks, so that the heads together cover the context. KV block lists are computed on the fly from the formula (no
// per-head index tensors).
//
// On blocks of `block_size` tokens, query block bq, KV block bk, KV head h, step = max(1, vert_stride / H_q) (0 when
// homo_head): bk is kept for bq iff
//   bq - bk < local_blocks (non-causal: |bq - bk| < local_blocks)  or  (bk + h * step + head_sliding_offset) % vert_stride == 0,
// and, when causal, bk <= bq with the element mask q_pos >= k_pos inside the diagonal block. The last num_dense_heads KV
// heads keep every block. Queries are aligned to the end of the keys (query i sits at position i + N_kv - N_q, N_q <= N_kv,
// as in decode), so query blocks are blocks of key positions and the first one may hold fewer queries. Tiles are blocks.
// The torch-free Python twin is simulator/strided_shard.py (s2_block_mask); tests/test_strided_shard.py proves them equal.
#pragma once

#include "natten_like/policy/common.hpp"

namespace natten_like::policy {

struct StridedShardPolicy {
  int64_t nq = 0;          // queries (N_q <= N_kv)
  int64_t nkv = 0;         // keys
  int64_t block = 1;       // block_size in tokens
  int64_t local = 0;       // local_blocks
  int64_t vert_stride = 1;
  int64_t shift = 0;       // h * step + head_sliding_offset of this head's KV head
  bool causal = true;
  bool dense = false;      // one of the last num_dense_heads KV heads

  NL_HOST_DEVICE int64_t offset() const { return nkv - nq; }
  NL_HOST_DEVICE int64_t first_q_block() const { return offset() / block; }
  NL_HOST_DEVICE int64_t num_kv_blocks() const { return ceil_div(nkv, block); }

  NL_HOST_DEVICE int64_t num_q_tiles() const { return nq == 0 ? 0 : num_kv_blocks() - first_q_block(); }
  NL_HOST_DEVICE int64_t num_kv_tiles() const { return num_kv_blocks(); }
  NL_HOST_DEVICE int64_t max_q_rows() const { return block; }
  NL_HOST_DEVICE int64_t max_kv_rows() const { return block; }

  NL_HOST_DEVICE int64_t q_tile_rows(int64_t t, int64_t* rows) const {
    const int64_t bq = first_q_block() + t;
    const Range r{max64(bq * block, offset()), min64((bq + 1) * block, nkv)};
    for (int64_t i = 0; i < r.size(); ++i) rows[i] = r.begin + i - offset();
    return r.size();
  }
  NL_HOST_DEVICE int64_t kv_tile_rows(int64_t u, int64_t* rows) const {
    const Range r{u * block, min64((u + 1) * block, nkv)};
    for (int64_t i = 0; i < r.size(); ++i) rows[i] = r.begin + i;
    return r.size();
  }

  NL_HOST_DEVICE bool vertical(int64_t bk) const { return (bk + shift) % vert_stride == 0; }
  NL_HOST_DEVICE bool local_pair(int64_t bq, int64_t bk) const {
    const int64_t d = bq - bk;
    return causal ? d < local : (d < local && -d < local);
  }
  NL_HOST_DEVICE bool kept(int64_t bq, int64_t bk) const {
    if (causal && bk > bq) return false;
    return dense || local_pair(bq, bk) || vertical(bk);
  }
  // A kept block needs the element mask on the causal diagonal and where the keys' last block is cut by N_kv (a GPU
  // mainloop must mask its out-of-range rows, as in the GNA policy).
  NL_HOST_DEVICE bool full(int64_t bq, int64_t bk) const { return !(causal && bk == bq) && (bk + 1) * block <= nkv; }

  // Calls f(kv_tile, full) for every kept KV block of Q tile t, in increasing order.
  template <class F>
  NL_HOST_DEVICE void for_each_kv_tile(int64_t t, F&& f) const {
    const int64_t bq = first_q_block() + t;
    const int64_t last = causal ? bq : num_kv_blocks() - 1;  // bq < num_kv_blocks always
    if (dense) {
      for (int64_t bk = 0; bk <= last; ++bk) f(bk, full(bq, bk));
      return;
    }
    // Local band [lo, hi], vertical columns below it, then above it: every kept block once, in order.
    const int64_t lo = max64(bq - local + 1, 0);
    const int64_t hi = local > 0 ? (causal ? bq : min64(bq + local - 1, last)) : lo - 1;
    const int64_t first_col = ((-shift) % vert_stride + vert_stride) % vert_stride;
    for (int64_t bk = first_col; bk < lo && bk <= last; bk += vert_stride) f(bk, full(bq, bk));
    for (int64_t bk = lo; bk <= hi; ++bk) f(bk, full(bq, bk));
    const int64_t above = max64(hi + 1, lo);
    for (int64_t bk = above + ((first_col - above) % vert_stride + vert_stride) % vert_stride; bk <= last;
         bk += vert_stride)
      f(bk, full(bq, bk));
  }

  // Random access to the sequence for_each_kv_tile visits, for GPU mainloops that fetch the e-th tile: its three runs
  // (vertical columns below the band, the band, vertical columns above it), from kv_runs(t), and kv_tile_at(runs, e).
  struct KvRuns {
    int64_t below_first, below;  // below[j] = below_first + j * vert_stride, j < below
    int64_t band_first, band;    // band[j] = band_first + j
    int64_t above_first, above;  // above[j] = above_first + j * vert_stride
    NL_HOST_DEVICE int64_t count() const { return below + band + above; }
  };
  NL_HOST_DEVICE KvRuns kv_runs(int64_t t) const {
    const int64_t bq = first_q_block() + t;
    const int64_t last = causal ? bq : num_kv_blocks() - 1;
    if (dense) return KvRuns{0, 0, 0, last + 1, 0, 0};
    const int64_t lo = max64(bq - local + 1, 0);
    const int64_t hi = local > 0 ? (causal ? bq : min64(bq + local - 1, last)) : lo - 1;
    const int64_t first_col = ((-shift) % vert_stride + vert_stride) % vert_stride;
    const int64_t below_end = min64(lo, last + 1);
    const int64_t below = first_col < below_end ? ceil_div(below_end - first_col, vert_stride) : 0;
    const int64_t above = max64(hi + 1, lo);
    const int64_t above_first = above + ((first_col - above) % vert_stride + vert_stride) % vert_stride;
    const int64_t n_above = above_first <= last ? (last - above_first) / vert_stride + 1 : 0;
    return KvRuns{first_col, below, lo, max64(hi - lo + 1, 0), above_first, n_above};
  }
  NL_HOST_DEVICE int64_t kv_tile_at(const KvRuns& r, int64_t e) const {
    if (e < r.below) return r.below_first + e * vert_stride;
    e -= r.below;
    if (e < r.band) return r.band_first + e;
    return r.above_first + (e - r.band) * vert_stride;
  }

  // The Q tiles that keep KV block u (the inverse of for_each_kv_tile): one range, possibly empty.
  NL_HOST_DEVICE Range q_tile_range(int64_t u) const {
    const int64_t first = first_q_block(), last = num_kv_blocks() - 1;
    int64_t lo = causal ? u : 0, hi = last;
    if (!dense && !vertical(u)) {  // only the local band reaches u
      lo = causal ? u : u - local + 1;
      hi = u + local - 1;
    }
    return Range{max64(lo, first) - first, min64(hi, last) + 1 - first};
  }
  // Calls f(q_tile, full) for every Q tile of q_tile_range(u), in increasing order.
  template <class F>
  NL_HOST_DEVICE void for_each_q_tile(int64_t u, F&& f) const {
    const Range r = q_tile_range(u);
    for (int64_t t = r.begin; t < r.end; ++t) f(t, full(first_q_block() + t, u));
  }

  // Element mask of Q tile t x KV tile u, row-major [q rows][kv rows]. 1 = attend.
  NL_HOST_DEVICE void fill_mask(int64_t t, int64_t u, unsigned char* mask) const {
    const int64_t bq = first_q_block() + t;
    const Range qr{max64(bq * block, offset()), min64((bq + 1) * block, nkv)};  // key positions of the queries
    const Range kr{u * block, min64((u + 1) * block, nkv)};
    for (int64_t i = 0; i < qr.size(); ++i)
      for (int64_t j = 0; j < kr.size(); ++j) mask[i * kr.size() + j] = (!causal || qr.begin + i >= kr.begin + j) ? 1 : 0;
  }
};

}  // namespace natten_like::policy
