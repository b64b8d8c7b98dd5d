// Block-sparse attention semantics: per (batch, query head, query block) a list of KV blocks, Q and KV block sizes free and
// possibly different, optionally causal, optionally over a variable-length (packed) batch.
//
// The lists use FlexAttention's compressed layout: for query block r, `num[r]` KV blocks `idx[r][0 .. num[r])`; blocks of the
// optional *full* list are attended entirely, blocks of the *partial* list through the element mask (causal: q_pos + (L_kv -
// L_q) >= k_pos, queries aligned to the end of their sequence's keys; non-causal: every element). The backward's dK/dV pass
// walks the transposed lists (per KV block, its query blocks), which the caller builds once from the forward lists.
//
// Tiles are blocks: Q tile = one query block, KV tile = one KV block. A packed batch of several sequences is one policy whose
// tiles are enumerated sequence after sequence (tile t of the whole batch -> sequence s, block t - tile_offset[s]); token
// indices are global rows of the packed tensors. A plain [B, N, ...] batch uses one sequence per (batch, head) policy.
#pragma once

#include "natten_like/policy/common.hpp"

namespace natten_like::policy {

// One direction of a compressed block list. For sequence s and block r: num[s * num_seq + r] blocks, the i-th being
// idx[s * idx_seq + r * cap + i]. A null `num` is an empty list (no full blocks given).
struct BlockList {
  const int64_t* num = nullptr;
  const int64_t* idx = nullptr;
  int64_t num_seq = 0;
  int64_t idx_seq = 0;
  int64_t cap = 0;

  NL_HOST_DEVICE int64_t count(int64_t s, int64_t r) const { return num ? num[s * num_seq + r] : 0; }
  NL_HOST_DEVICE int64_t at(int64_t s, int64_t r, int64_t i) const { return idx[s * idx_seq + r * cap + i]; }
  NL_HOST_DEVICE bool contains(int64_t s, int64_t r, int64_t x) const {
    const int64_t n = count(s, r);
    for (int64_t i = 0; i < n; ++i)
      if (at(s, r, i) == x) return true;
    return false;
  }
};

// The lists of one direction for every (batch, head): counts [Bm, Hm, R] and indices [Bm, Hm, R, cap] (Bm in {1, B},
// Hm in {1, H}) with element strides, a broadcast dim given stride 0. at(b, h) is the BlockList of (batch b, head h); in
// a packed (varlen) batch the batch dim of the lists indexes the sequences, which are the policy's segments.
struct BlockListArray {
  const int64_t* num = nullptr;
  const int64_t* idx = nullptr;
  int64_t num_stride_b = 0, num_stride_h = 0;
  int64_t idx_stride_b = 0, idx_stride_h = 0;
  int64_t cap = 0;

  NL_HOST_DEVICE BlockList at(int64_t b, int64_t h, bool packed) const {
    BlockList v;
    if (!num) return v;
    const int64_t sb = packed ? 0 : b;
    v.num = num + sb * num_stride_b + h * num_stride_h;
    v.idx = idx + sb * idx_stride_b + h * idx_stride_h;
    v.num_seq = packed ? num_stride_b : 0;
    v.idx_seq = packed ? idx_stride_b : 0;
    v.cap = cap;
    return v;
  }
};

// Index of the segment of `offsets[0 .. n]` (non-decreasing, offsets[0] = 0) that holds x: the last s with offsets[s] <= x
// and offsets[s + 1] > x.
NL_HOST_DEVICE int64_t segment_of(const int64_t* offsets, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

struct BlockSparsePolicy {
  int64_t q_block = 1;
  int64_t kv_block = 1;
  bool causal = false;
  int64_t num_seqs = 1;
  // [num_seqs + 1] cumulative token counts (queries, keys) and tile counts (ceil_div of each length by its block size).
  const int64_t* q_seq = nullptr;
  const int64_t* kv_seq = nullptr;
  const int64_t* q_tiles = nullptr;
  const int64_t* kv_tiles = nullptr;
  BlockList kv_partial, kv_full;  // per query block: KV blocks
  BlockList q_partial, q_full;    // per KV block: query blocks (transposed; backward only)

  NL_HOST_DEVICE int64_t num_q_tiles() const { return q_tiles[num_seqs]; }
  NL_HOST_DEVICE int64_t num_kv_tiles() const { return kv_tiles[num_seqs]; }
  NL_HOST_DEVICE int64_t max_q_rows() const { return q_block; }
  NL_HOST_DEVICE int64_t max_kv_rows() const { return kv_block; }

  NL_HOST_DEVICE int64_t q_len(int64_t s) const { return q_seq[s + 1] - q_seq[s]; }
  NL_HOST_DEVICE int64_t kv_len(int64_t s) const { return kv_seq[s + 1] - kv_seq[s]; }
  // Sequence-local rows [begin, end) of query block r / KV block c of sequence s.
  NL_HOST_DEVICE Range q_block_rows(int64_t s, int64_t r) const {
    return Range{r * q_block, min64((r + 1) * q_block, q_len(s))};
  }
  NL_HOST_DEVICE Range kv_block_rows(int64_t s, int64_t c) const {
    return Range{c * kv_block, min64((c + 1) * kv_block, kv_len(s))};
  }

  NL_HOST_DEVICE int64_t q_tile_rows(int64_t t, int64_t* rows) const {
    const int64_t s = segment_of(q_tiles, num_seqs, t);
    const Range r = q_block_rows(s, t - q_tiles[s]);
    for (int64_t i = 0; i < r.size(); ++i) rows[i] = q_seq[s] + r.begin + i;
    return r.size();
  }
  NL_HOST_DEVICE int64_t kv_tile_rows(int64_t u, int64_t* rows) const {
    const int64_t s = segment_of(kv_tiles, num_seqs, u);
    const Range r = kv_block_rows(s, u - kv_tiles[s]);
    for (int64_t i = 0; i < r.size(); ++i) rows[i] = kv_seq[s] + r.begin + i;
    return r.size();
  }

  // Classifies query block r x KV block c of sequence s, listed in the full list (`listed_full`) or the partial one:
  // 0 = nothing attended (skip), 1 = partial (element mask needed), 2 = full. A KV block cut by the sequence end is never
  // full (a GPU mainloop must mask its out-of-range rows), as in the GNA policy.
  NL_HOST_DEVICE int classify(int64_t s, int64_t r, int64_t c, bool listed_full) const {
    const Range qr = q_block_rows(s, r), kr = kv_block_rows(s, c);
    if (qr.size() == 0 || kr.size() == 0) return 0;
    const bool cut = (c + 1) * kv_block > kv_len(s);
    if (listed_full || !causal) return cut ? 1 : 2;
    const int64_t offset = kv_len(s) - q_len(s);
    if (qr.end - 1 + offset < kr.begin) return 0;  // above the diagonal: the last query sees none of the keys
    return (qr.begin + offset >= kr.end - 1 && !cut) ? 2 : 1;
  }

  // Calls f(kv_tile, full) for every KV tile Q tile t visits: full-list blocks first, then partial-list blocks.
  template <class F>
  NL_HOST_DEVICE void for_each_kv_tile(int64_t t, F&& f) const {
    const int64_t s = segment_of(q_tiles, num_seqs, t);
    const int64_t r = t - q_tiles[s];
    const int64_t nkb = kv_tiles[s + 1] - kv_tiles[s];
    for (int pass = 0; pass < 2; ++pass) {
      const BlockList& list = pass == 0 ? kv_full : kv_partial;
      const int64_t n = list.count(s, r);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = list.at(s, r, i);
        if (c >= nkb) continue;  // a shorter sequence of a packed batch: block past its end
        const int kind = classify(s, r, c, pass == 0);
        if (kind) f(kv_tiles[s] + c, kind == 2);
      }
    }
  }

  // Calls f(q_tile, full) for every Q tile that visits KV tile u (the inverse of for_each_kv_tile), from the transposed lists.
  template <class F>
  NL_HOST_DEVICE void for_each_q_tile(int64_t u, F&& f) const {
    const int64_t s = segment_of(kv_tiles, num_seqs, u);
    const int64_t c = u - kv_tiles[s];
    const int64_t nqb = q_tiles[s + 1] - q_tiles[s];
    for (int pass = 0; pass < 2; ++pass) {
      const BlockList& list = pass == 0 ? q_full : q_partial;
      const int64_t n = list.count(s, c);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = list.at(s, c, i);
        if (r >= nqb) continue;
        const int kind = classify(s, r, c, pass == 0);
        if (kind) f(q_tiles[s] + r, kind == 2);
      }
    }
  }

  // Element mask of Q tile t x KV tile u, row-major [q rows][kv rows]. 1 = attend.
  NL_HOST_DEVICE void fill_mask(int64_t t, int64_t u, unsigned char* mask) const {
    const int64_t s = segment_of(q_tiles, num_seqs, t);
    const int64_t r = t - q_tiles[s], c = u - kv_tiles[s];
    const Range qr = q_block_rows(s, r), kr = kv_block_rows(s, c);
    const bool all = !causal || kv_full.contains(s, r, c);
    const int64_t offset = kv_len(s) - q_len(s);
    for (int64_t i = 0; i < qr.size(); ++i)
      for (int64_t j = 0; j < kr.size(); ++j)
        mask[i * kr.size() + j] = (all || qr.begin + i + offset >= kr.begin + j) ? 1 : 0;
  }
};

}  // namespace natten_like::policy
