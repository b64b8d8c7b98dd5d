// Key-side schedules of the sm80 fused backward's dK/dV kernel: for one CTA (kernel KV tile, KV head, batch), its key
// rows and the query tiles that visit them over every query head of the KV head's GQA group, one schedule per family,
// each a thin adapter of that family's policy header (the transpose of the forward's schedules in fmha_schedules.hpp,
// whose Q-side iteration the dQ kernel reuses as is).
//
// Row geometry is the forward's (fmha_schedules.hpp): key row c has a token and a coordinate x per dim, query row r a
// token and a window [begin, end) per dim; on steps that need the element mask, key c is attended by query r iff
// begin[r][i] <= x[c][i] < end[r][i] for every dim i. Since the key rows are fixed for the CTA while the visiting query
// tiles change, anything that depends on the pair (a block-sparse full-list block attends all its keys) is carried by
// the query's window, never by the key coordinates.
//
// Interface (all NL_HOST_DEVICE, plain C++: tests/test_sm80_bwd_schedules_host.py runs the schedules on the host
// against the policies):
//   KeySchedule(p, kernel_kv_tile, h_kv, b)                built once per CTA (by one thread, kept in smem)
//   static int64_t num_kv_tiles(p)                         kernel KV tiles per (KV head, batch): the grid's x
//   int64_t count(p) const                                 steps: (query head of the group, visiting query tile)
//   int kv_rows() const                                    key rows of the tile (<= kBlockN)
//   int64_t kv_row(p, c, x) const                          token of key row c and its coordinate per dim
//   QTile q_tile(p, e, h, rows, full) const                step e: its query head h, the query tile, its rows
//                                                          (<= kBlockM) and whether the pair needs no element mask
//   int64_t q_row(p, tile, r, begin, end) const            token of query row r of the tile and its window per dim
// Steps are head-major (every visit of the group's first head, then the second's, ...); within a head, the order of
// the policy's for_each_q_tile (parts of a pattern block consecutive).
#pragma once

#include <cstdint>

#include "natten_like/policy/block_sparse.hpp"
#include "natten_like/policy/strided_shard.hpp"
#include "natten_like/sm80/fmha_schedules.hpp"
#include "natten_like/sm80/gna_q_tile_iterator.hpp"
#include "natten_like/sm80/sm80_fmha_bwd_params.hpp"

namespace natten_like::sm80 {

// GNA: the kernel's KV tiles are the policy's; the visiting Q tiles come from GnaQTileIterator, the same for every
// query head of the group.
struct GnaKeySchedule {
  using Params = GnaBwdParams;
  using QSchedule = GnaSchedule;
  using QTile = GnaTileBox<kRank>;
  GnaQTileIterator<kRank> it;
  int h_first;

  static NL_HOST_DEVICE int64_t num_kv_tiles(const Params& p) { return p.fwd.policy.num_kv_tiles(); }
  NL_HOST_DEVICE GnaKeySchedule(const Params& p, int64_t u, int h_kv, int64_t)
      : it(p.fwd.policy, u), h_first(h_kv * (p.fwd.heads / p.fwd.kv_heads)) {}
  NL_HOST_DEVICE int64_t count(const Params& p) const { return it.count * (p.fwd.heads / p.fwd.kv_heads); }
  NL_HOST_DEVICE int kv_rows() const { return static_cast<int>(it.kv.num_rows()); }
  NL_HOST_DEVICE int64_t kv_row(const Params& p, int c, int32_t* x) const { return it.kv.row(p.fwd.policy, c, x); }
  // Steps stay below 2^31 (each is a Q tile visit; the host keeps the counts below the grid limits), so the head and
  // the visit come from one int32 division, not the int64 division routine in the mainloop.
  NL_HOST_DEVICE QTile q_tile(const Params& p, int64_t e, int& h, int& rows, bool& full) const {
    const int32_t n = static_cast<int32_t>(it.count), step = static_cast<int32_t>(e);
    h = h_first + step / n;
    int64_t t[kRank];
    const QTile q = it.visit(p.fwd.policy, step % n, t, full);
    rows = static_cast<int>(q.num_rows());
    return q;
  }
  NL_HOST_DEVICE int64_t q_row(const Params& p, const QTile& q, int r, int32_t* begin, int32_t* end) const {
    int32_t x[kRank];
    const int64_t token = q.row(p.fwd.policy, r, x);
    it.q_row_window(p.fwd.policy, x, begin, end);
    return token;
  }
};

// GNA's additional KV (fused forward: every query attends every additional key, fmha_schedules.hpp): kernel KV tile u
// holds additional rows [u * additional_block, ...) cut to N_add; it is visited by every query of every head of the
// group, in tiles of kBlockM consecutive flat tokens (the queries need no neighbourhood order here). Query windows are
// [0, 1) in every dim and real key rows sit at coordinate 0, so the element mask leaves out only padding rows. The
// dK/dV kernel runs it on a problem whose keys and values are the additional ones: launch_sm80_gna_bwd passes params
// with fwd.k / fwd.v and dk / dv (and their strides) pointing at add_k / add_v and d_add_k / d_add_v, so the tokens
// here index those tensors.
template <int kBlockM>
struct GnaAdditionalKeySchedule {
  using Params = GnaBwdParams;
  using QSchedule = GnaSchedule;
  struct QTile {
    int64_t begin;  // flat token of query row 0
  };
  int64_t k_begin;   // additional row of key row 0
  int32_t n_k;       // key rows
  int32_t n_q_tiles; // query tiles per head
  int h_first;

  static NL_HOST_DEVICE int64_t num_kv_tiles(const Params& p) { return p.fwd.num_additional_tiles(); }
  NL_HOST_DEVICE GnaAdditionalKeySchedule(const Params& p, int64_t u, int h_kv, int64_t) {
    k_begin = u * p.fwd.additional_block;
    n_k = static_cast<int32_t>(policy::min64(p.fwd.additional_block, p.fwd.num_additional - k_begin));
    n_q_tiles = static_cast<int32_t>((p.fwd.tokens + kBlockM - 1) / kBlockM);
    h_first = h_kv * (p.fwd.heads / p.fwd.kv_heads);
  }
  NL_HOST_DEVICE int64_t count(const Params& p) const {
    return static_cast<int64_t>(n_q_tiles) * (p.fwd.heads / p.fwd.kv_heads);
  }
  NL_HOST_DEVICE int kv_rows() const { return n_k; }
  NL_HOST_DEVICE int64_t kv_row(const Params&, int c, int32_t* x) const {
    for (int i = 0; i < kRank; ++i) x[i] = 0;
    return k_begin + c;
  }
  NL_HOST_DEVICE QTile q_tile(const Params& p, int64_t e, int& h, int& rows, bool& full) const {
    const int32_t step = static_cast<int32_t>(e);
    h = h_first + step / n_q_tiles;
    const int64_t begin = static_cast<int64_t>(step % n_q_tiles) * kBlockM;
    rows = static_cast<int>(policy::min64(kBlockM, p.fwd.tokens - begin));
    full = true;
    return QTile{begin};
  }
  NL_HOST_DEVICE int64_t q_row(const Params&, const QTile& q, int r, int32_t* begin, int32_t* end) const {
    for (int i = 0; i < kRank; ++i) {
      begin[i] = 0;
      end[i] = 1;
    }
    return q.begin + r;
  }
};

// Strided-shard (S2): kernel KV tile t is part t % kv_split of pattern KV block u = t / kv_split. The pattern depends
// on the KV head only, so every query head of the group visits the same query blocks: for_each_q_tile(u)'s range
// [bq_first, bq_first + n_bq), each as q_split parts; step e is part e % q_split of the (e / q_split)-th block of head
// h_first + e / (n_bq * q_split). A part's rows are the block's key positions cut to the part, to the queries' offset
// (the first query block may start inside a block) and to the keys.
struct StridedShardKeySchedule {
  using Params = StridedShardBwdParams;
  using QSchedule = StridedShardSchedule;
  struct QTile {
    int64_t begin;  // key position of query row 0
    int64_t bq;     // pattern query block
  };
  policy::StridedShardPolicy pol;  // this KV head's pattern
  int64_t u;                       // pattern KV block
  int64_t k_begin;                 // key position of key row 0
  int64_t bq_first, n_bq;          // visiting pattern query blocks
  int32_t n_k;                     // key rows
  int32_t q_part_rows, q_split;
  int h_first;

  static NL_HOST_DEVICE int64_t num_kv_tiles(const Params& p) { return p.fwd.pattern.num_kv_tiles() * p.fwd.kv_split; }

  NL_HOST_DEVICE StridedShardKeySchedule(const Params& p, int64_t t, int h_kv, int64_t) : pol(p.fwd.pattern) {
    const StridedShardFwdParams& f = p.fwd;
    pol.shift = (h_kv * f.head_step + f.sliding_offset) % pol.vert_stride;
    pol.dense = h_kv >= f.kv_heads - f.dense_heads;
    u = t / f.kv_split;
    const int64_t part = t % f.kv_split, kv_block = pol.block / f.kv_split;
    k_begin = u * pol.block + part * kv_block;
    n_k = static_cast<int32_t>(policy::max64(policy::min64(k_begin + kv_block, pol.nkv) - k_begin, 0));
    // for_each_q_tile(u) walks one increasing range of query tiles (closed form: no walk over the tiles per CTA).
    const policy::Range tiles = pol.q_tile_range(u);
    bq_first = pol.first_q_block() + (tiles.size() > 0 ? tiles.begin : 0);
    n_bq = tiles.size();
    q_split = f.q_split;
    q_part_rows = static_cast<int32_t>(pol.block / f.q_split);
    h_first = h_kv * (f.heads / f.kv_heads);
  }
  NL_HOST_DEVICE int64_t count(const Params& p) const { return n_bq * q_split * (p.fwd.heads / p.fwd.kv_heads); }
  NL_HOST_DEVICE int kv_rows() const { return n_k; }
  NL_HOST_DEVICE int64_t kv_row(const Params&, int c, int32_t* x) const {
    key_coord_1d(k_begin + c, x);
    return k_begin + c;
  }
  NL_HOST_DEVICE QTile q_tile(const Params&, int64_t e, int& h, int& rows, bool& full) const {
    const int64_t per_head = n_bq * q_split;
    h = h_first + static_cast<int>(e / per_head);
    const int64_t j = e % per_head;
    const int64_t bq = bq_first + j / q_split, part = j % q_split;
    const int64_t begin = policy::max64(bq * pol.block + part * q_part_rows, pol.offset());
    const int64_t end = policy::min64(bq * pol.block + (part + 1) * q_part_rows, pol.nkv);
    rows = static_cast<int>(policy::max64(end - begin, 0));
    full = pol.full(bq, u);
    return QTile{begin, bq};
  }
  NL_HOST_DEVICE int64_t q_row(const Params&, const QTile& q, int r, int32_t* begin, int32_t* end) const {
    causal_window_1d(q.begin + r, pol.causal, begin, end);
    return q.begin + r - pol.offset();
  }
};

// Block-sparse: kernel KV tile t is part t % kv_split of the policy's KV tile t / kv_split (KV block c of a sequence).
// Query head h of the group visits the query blocks of its own transposed lists for (sequence, c), full list first
// (the order of for_each_q_tile), each as q_split parts; a listed block the policy skips (past a shorter sequence's
// end, or above the causal diagonal) stays a visit with no rows. Key coordinates are key positions; a query's window
// holds every key when its block came from the full list or the problem is not causal, else the keys up to its causal
// limit q_pos + N_kv - N_q of its sequence. The heads' visit counts are found by a scan over the group at each step
// (two list counts per head), so the schedule stays fixed-size whatever the group.
struct BlockSparseKeySchedule {
  using Params = BlockSparseBwdParams;
  using QSchedule = BlockSparseSchedule;
  struct QTile {
    int64_t begin;  // sequence-local position of query row 0
    bool all;       // the block attends every key of the KV block (full list, or not causal)
  };
  policy::BlockSparsePolicy pol;  // the pattern (lists are read per head from the arrays)
  int64_t seq, c;                 // sequence, KV block
  int64_t k_begin, k_token0, q_token0, offset, nqb;
  int32_t n_k, q_part_rows, q_split;
  int h_first, group;
  int64_t b;

  static NL_HOST_DEVICE int64_t num_kv_tiles(const Params& p) { return p.total_kv_tiles * p.fwd.kv_split; }

  NL_HOST_DEVICE BlockSparseKeySchedule(const Params& p, int64_t t, int h_kv, int64_t b_) : pol(p.fwd.pattern) {
    const BlockSparseFwdParams& f = p.fwd;
    const int64_t tile = t / f.kv_split, part = t % f.kv_split;
    seq = policy::segment_of(pol.kv_tiles, pol.num_seqs, tile);
    c = tile - pol.kv_tiles[seq];
    const policy::Range kr = pol.kv_block_rows(seq, c);
    const int64_t rows = pol.kv_block / f.kv_split;
    k_begin = kr.begin + part * rows;
    n_k = static_cast<int32_t>(policy::max64(policy::min64(k_begin + rows, kr.end) - k_begin, 0));
    k_token0 = pol.kv_seq[seq];
    q_token0 = pol.q_seq[seq];
    offset = pol.kv_len(seq) - pol.q_len(seq);
    nqb = pol.q_tiles[seq + 1] - pol.q_tiles[seq];
    q_split = f.q_split;
    q_part_rows = static_cast<int32_t>(pol.q_block / f.q_split);
    group = f.heads / f.kv_heads;
    h_first = h_kv * group;
    b = b_;
  }
  // Listed query blocks of head h for this KV block: full-list ones, then the total.
  NL_HOST_DEVICE void listed(const Params& p, int h, int64_t& n_full, int64_t& n_all) const {
    n_full = p.q_full.at(b, h, p.fwd.packed).count(seq, c);
    n_all = n_full + p.q_partial.at(b, h, p.fwd.packed).count(seq, c);
  }
  NL_HOST_DEVICE int64_t count(const Params& p) const {
    int64_t n = 0;
    for (int g = 0; g < group; ++g) {
      int64_t n_full, n_all;
      listed(p, h_first + g, n_full, n_all);
      n += n_all;
    }
    return n * q_split;
  }
  NL_HOST_DEVICE int kv_rows() const { return n_k; }
  NL_HOST_DEVICE int64_t kv_row(const Params&, int r, int32_t* x) const {
    key_coord_1d(k_begin + r, x);
    return k_token0 + k_begin + r;
  }
  NL_HOST_DEVICE QTile q_tile(const Params& p, int64_t e, int& h, int& rows, bool& full) const {
    int64_t i = e / q_split, n_full = 0, n_all = 0;
    const int64_t part = e % q_split;
    h = h_first;
    for (;; ++h) {  // the head of step e: a step below count() always finds one
      listed(p, h, n_full, n_all);
      if (i < n_all || h + 1 >= h_first + group) break;
      i -= n_all;
    }
    const bool listed_full = i < n_full;
    const int64_t r = listed_full ? p.q_full.at(b, h, p.fwd.packed).at(seq, c, i)
                                  : p.q_partial.at(b, h, p.fwd.packed).at(seq, c, i - n_full);
    // classify reads only the block sizes, causality and sequence offsets, none of the lists.
    const int kind = r < nqb ? pol.classify(seq, r, c, listed_full) : 0;
    QTile q{0, listed_full || !pol.causal};
    rows = 0;
    full = false;
    if (kind != 0) {
      const policy::Range qr = pol.q_block_rows(seq, r);
      q.begin = qr.begin + part * q_part_rows;
      rows = static_cast<int>(policy::max64(policy::min64(q.begin + q_part_rows, qr.end) - q.begin, 0));
      full = kind == 2;
    }
    return q;
  }
  NL_HOST_DEVICE int64_t q_row(const Params&, const QTile& q, int r, int32_t* begin, int32_t* end) const {
    causal_window_1d(q.begin + r + offset, pol.causal && !q.all, begin, end);
    return q_token0 + q.begin + r;
  }
};

}  // namespace natten_like::sm80
