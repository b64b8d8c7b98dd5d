// Schedules of the sm80 fused forward: for one CTA (kernel Q tile, head, batch), its query rows and the KV tiles it visits,
// in the form the mainloop (sm80_fmha_fwd_kernel.hpp) consumes, one schedule per family, each a thin adapter of that
// family's policy header.
//
// Row geometry, common to every family: each query row has a token (flat index into the tensor's token rows) and a
// window [begin, end) per dim of kRank; each key row of a visited tile has a token and a coordinate x per dim. On tiles
// that need the element mask, key c is attended by query r iff begin[r][i] <= x[c][i] < end[r][i] for every dim i. GNA
// fills it with group-local coordinates and windows (policy/gna.hpp); the 1-D families use dims 0 and 1 as trivial dims
// (x = 0, window [0, 1)) and dim 2 for key positions against the causal limit. Key rows past a tile's rows are padding:
// the mainloop gives them x[0] = -1, outside every window.
//
// Interface (all NL_HOST_DEVICE, plain C++: tests/test_cuda_build.py runs the schedules on the host against the policies):
//   Schedule(p, kernel_q_tile, h, b)                        built once per CTA (by one thread, kept in smem)
//   static int64_t num_q_tiles(p)                           kernel Q tiles per (head, batch): the grid's x
//   int64_t count() const                                   KV tiles visited
//   int q_rows() const                                      query rows of the tile (<= kBlockM)
//   int64_t q_row(p, r, begin, end) const                   token of query row r and its window per dim
//   KvTile kv_tile(p, e, rows, full) const                  the e-th visited KV tile, its rows (<= kBlockN) and whether
//                                                           it needs no element mask
//   int64_t kv_row(p, tile, c, x) const                     token of key row c and its coordinate per dim
// and, in a schedule with kAdditionalKv = true (GNA), static bool additional(tile): the tile's rows are rows of add_k /
// add_v (their tokens index those tensors), attended by every query (padding rows excepted).
#pragma once

#include <cstdint>

#include "natten_like/policy/block_sparse.hpp"
#include "natten_like/policy/strided_shard.hpp"
#include "natten_like/sm80/gna_tile_iterator.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"

namespace natten_like::sm80 {

// How the mainloops mask a visited KV tile (the storages' kv_need_mask): not at all (a full tile with a row per block
// row); by each query's window per dim; or, for additional KV, which every query attends, only its padding rows (-1 in
// dim 0). The last is a branch of its own in the kernels: routing it through the window test (a per-row window
// select) costs the hd64 forward a spill.
enum : int32_t { kMaskNone = 0, kMaskWindow = 1, kMaskAll = 2 };

NL_HOST_DEVICE int32_t kv_mask_mode(bool additional, bool full, int rows, int block) {
  // A full tile with fewer rows than the block (a tile shape smaller than the kernel's) still has padding keys.
  if (full && rows >= block) return kMaskNone;
  return additional ? kMaskAll : kMaskWindow;
}

// GNA: the kernel's Q tiles are the policy's; the KV tiles come from GnaKvTileIterator, then, with additional KV, the
// p.num_additional_tiles() tiles of p.additional_block additional rows each. Every query attends every additional key:
// the mainloops mask only their padding rows (x[0] = -1; real rows have coordinate 0 in every dim), whatever the
// query's own window.
struct GnaSchedule {
  using Params = GnaFwdParams;
  static constexpr bool kAdditionalKv = true;
  struct KvTile {
    GnaTileBox<kRank> box;
    int64_t add_begin;  // additional tiles: the first additional row; -1 for a neighbourhood tile
  };
  GnaKvTileIterator<kRank> it;
  int64_t add_tiles;

  static NL_HOST_DEVICE int64_t num_q_tiles(const Params& p) { return p.policy.num_q_tiles(); }
  NL_HOST_DEVICE GnaSchedule(const Params& p, int64_t t, int, int64_t)
      : it(p.policy, t), add_tiles(p.num_additional_tiles()) {}
  NL_HOST_DEVICE int64_t count() const { return it.count + add_tiles; }
  NL_HOST_DEVICE int q_rows() const { return static_cast<int>(it.q.num_rows()); }
  NL_HOST_DEVICE int64_t q_row(const Params& p, int r, int32_t* begin, int32_t* end) const {
    int32_t x[kRank];
    const int64_t token = it.q.row(p.policy, r, x);
    it.q_row_window(p.policy, x, begin, end);
    return token;
  }
  NL_HOST_DEVICE KvTile kv_tile(const Params& p, int64_t e, int& rows, bool& full) const {
    KvTile kv{};
    if (e >= it.count) {
      kv.add_begin = (e - it.count) * p.additional_block;
      rows = static_cast<int>(policy::min64(p.additional_block, p.num_additional - kv.add_begin));
      full = true;
      return kv;
    }
    int64_t u[kRank];
    kv.box = it.visit(p.policy, e, u, full);
    kv.add_begin = -1;
    rows = static_cast<int>(kv.box.num_rows());
    return kv;
  }
  NL_HOST_DEVICE int64_t kv_row(const Params& p, const KvTile& kv, int c, int32_t* x) const {
    if (additional(kv)) {
      for (int i = 0; i < kRank; ++i) x[i] = 0;
      return kv.add_begin + c;  // row of add_k / add_v
    }
    return kv.box.row(p.policy, c, x);
  }
  static NL_HOST_DEVICE bool additional(const KvTile& kv) { return kv.add_begin >= 0; }
};

// Whether visited tile `kv` of a schedule is additional KV (only GNA's schedule has any).
template <class Schedule>
NL_HOST_DEVICE bool is_additional(const typename Schedule::KvTile& kv) {
  if constexpr (requires { Schedule::additional(kv); }) {
    return Schedule::additional(kv);
  } else {
    return false;
  }
}

// Row geometry of the 1-D families: query at key position `pos` sees keys [INT32_MIN, pos + 1) when causal, every key
// otherwise; dims 0 and 1 are trivial.
NL_HOST_DEVICE void causal_window_1d(int64_t pos, bool causal, int32_t* begin, int32_t* end) {
  begin[0] = begin[1] = 0;
  end[0] = end[1] = 1;
  begin[2] = INT32_MIN;
  end[2] = causal ? static_cast<int32_t>(pos + 1) : INT32_MAX;
}

NL_HOST_DEVICE void key_coord_1d(int64_t pos, int32_t* x) {
  x[0] = x[1] = 0;
  x[2] = static_cast<int32_t>(pos);
}

// Strided-shard (S2): pattern blocks split into kernel blocks (q_split x kv_split). Kernel Q tile t is part t % q_split
// of pattern Q tile t / q_split; visit e is part e % kv_split of the (e / kv_split)-th kept KV block. A part's rows are
// the pattern block's key positions [start + part * kernel block, ...) cut to the block and to the tokens; rows before the
// queries' offset (the first query block may start inside a block) are not queries.
struct StridedShardSchedule {
  using Params = StridedShardFwdParams;
  struct KvTile {
    int64_t begin;  // first key position
  };
  policy::StridedShardPolicy pol;  // this head's pattern
  policy::StridedShardPolicy::KvRuns runs;
  int64_t bq;        // pattern query block
  int64_t q_begin;   // key position of query row 0
  int32_t n_q;       // query rows
  int32_t kv_block;  // key rows per kernel KV block: block / kv_split

  static NL_HOST_DEVICE int64_t num_q_tiles(const Params& p) { return p.pattern.num_q_tiles() * p.q_split; }

  NL_HOST_DEVICE StridedShardSchedule(const Params& p, int64_t t, int h, int64_t) : pol(p.pattern) {
    const int64_t h_kv = h / (p.heads / p.kv_heads);
    pol.shift = (h_kv * p.head_step + p.sliding_offset) % pol.vert_stride;
    pol.dense = h_kv >= p.kv_heads - p.dense_heads;
    const int64_t tile = t / p.q_split, part = t % p.q_split;
    runs = pol.kv_runs(tile);
    bq = pol.first_q_block() + tile;
    const int64_t q_block = pol.block / p.q_split;
    const int64_t begin = policy::max64(bq * pol.block + part * q_block, pol.offset());
    const int64_t end = policy::min64(bq * pol.block + (part + 1) * q_block, pol.nkv);
    q_begin = begin;
    n_q = static_cast<int32_t>(policy::max64(end - begin, 0));
    kv_block = static_cast<int32_t>(pol.block / p.kv_split);
  }
  NL_HOST_DEVICE int64_t count() const { return runs.count() * (pol.block / kv_block); }
  NL_HOST_DEVICE int q_rows() const { return n_q; }
  NL_HOST_DEVICE int64_t q_row(const Params&, int r, int32_t* begin, int32_t* end) const {
    causal_window_1d(q_begin + r, pol.causal, begin, end);
    return q_begin + r - pol.offset();
  }
  NL_HOST_DEVICE KvTile kv_tile(const Params&, int64_t e, int& rows, bool& full) const {
    const int64_t split = pol.block / kv_block;
    const int64_t bk = pol.kv_tile_at(runs, e / split);
    const int64_t begin = bk * pol.block + (e % split) * kv_block;
    rows = static_cast<int>(policy::max64(policy::min64(begin + kv_block, pol.nkv) - begin, 0));
    full = pol.full(bq, bk);
    return KvTile{begin};
  }
  NL_HOST_DEVICE int64_t kv_row(const Params&, const KvTile& kv, int c, int32_t* x) const {
    key_coord_1d(kv.begin + c, x);
    return kv.begin + c;
  }
};

// Block-sparse: kernel Q tile t is part t % q_split of the policy's Q tile t / q_split (a query block of a sequence);
// visit e is part e % kv_split of the (e / kv_split)-th listed KV block, full-list blocks first (the order of
// for_each_kv_tile). A listed block the policy skips (past a shorter sequence's end, or above the causal diagonal)
// stays a visit with no rows: all its keys are padding. Key coordinates are key positions, compared with the causal
// limit of each query (q_pos + N_kv - N_q of its sequence); blocks of the full list, and every block of a non-causal
// problem, attend all their keys, so their coordinate is INT32_MIN, inside every window.
struct BlockSparseSchedule {
  using Params = BlockSparseFwdParams;
  struct KvTile {
    int64_t token0;  // packed row of the sequence's first key
    int64_t begin;   // first key position of the visit
    bool all;        // no causal mask inside the block
  };
  policy::BlockSparsePolicy pol;  // the pattern with this (batch, head)'s lists
  int64_t seq, block;             // sequence, query block
  int64_t q_begin, q_token0, offset;
  int32_t n_q, kv_part_rows, kv_split;
  int64_t n_full, n_listed;

  static NL_HOST_DEVICE int64_t num_q_tiles(const Params& p) { return p.total_q_tiles * p.q_split; }

  NL_HOST_DEVICE BlockSparseSchedule(const Params& p, int64_t t, int h, int64_t b) : pol(p.pattern) {
    pol.kv_partial = p.kv_partial.at(b, h, p.packed);
    pol.kv_full = p.kv_full.at(b, h, p.packed);
    const int64_t tile = t / p.q_split, part = t % p.q_split;
    seq = policy::segment_of(pol.q_tiles, pol.num_seqs, tile);
    block = tile - pol.q_tiles[seq];
    const policy::Range qr = pol.q_block_rows(seq, block);
    const int64_t rows = pol.q_block / p.q_split;
    q_begin = qr.begin + part * rows;
    n_q = static_cast<int32_t>(policy::max64(policy::min64(q_begin + rows, qr.end) - q_begin, 0));
    q_token0 = pol.q_seq[seq];
    offset = pol.kv_len(seq) - pol.q_len(seq);
    n_full = pol.kv_full.count(seq, block);
    n_listed = n_full + pol.kv_partial.count(seq, block);
    kv_split = p.kv_split;
    kv_part_rows = static_cast<int32_t>(pol.kv_block / p.kv_split);
  }
  NL_HOST_DEVICE int64_t count() const { return n_listed * kv_split; }
  NL_HOST_DEVICE int q_rows() const { return n_q; }
  NL_HOST_DEVICE int64_t q_row(const Params&, int r, int32_t* begin, int32_t* end) const {
    causal_window_1d(q_begin + r + offset, pol.causal, begin, end);
    return q_token0 + q_begin + r;
  }
  NL_HOST_DEVICE KvTile kv_tile(const Params&, int64_t e, int& rows, bool& full) const {
    const int64_t i = e / kv_split, part = e % kv_split;
    const bool listed_full = i < n_full;
    const int64_t c = listed_full ? pol.kv_full.at(seq, block, i) : pol.kv_partial.at(seq, block, i - n_full);
    const int64_t blocks = pol.kv_tiles[seq + 1] - pol.kv_tiles[seq];
    const int kind = c < blocks ? pol.classify(seq, block, c, listed_full) : 0;
    KvTile kv{pol.kv_seq[seq], 0, listed_full || !pol.causal};
    rows = 0;
    full = false;
    if (kind != 0) {
      const policy::Range kr = pol.kv_block_rows(seq, c);
      kv.begin = kr.begin + part * kv_part_rows;
      rows = static_cast<int>(policy::max64(policy::min64(kv.begin + kv_part_rows, kr.end) - kv.begin, 0));
      full = kind == 2;
    }
    return kv;
  }
  NL_HOST_DEVICE int64_t kv_row(const Params&, const KvTile& kv, int c, int32_t* x) const {
    key_coord_1d(kv.begin + c, x);
    if (kv.all) x[2] = INT32_MIN;
    return kv.token0 + kv.begin + c;
  }
};

}  // namespace natten_like::sm80
