// Schedules of the sm90 forward for the 1-D families (strided-shard, block-sparse): the sm80 schedules
// (sm80/fmha_schedules.hpp) give each CTA its query rows and the KV tiles it visits, with their row geometry; here each
// of those becomes one TMA box of a 4-D view (D, H, tokens, B) of the heads-last [B, N, H, D] tensors (a packed
// varlen batch is B = 1, sequences as segments of the token dim).
//
// A Q tile and a KV visit of these families are runs of consecutive tokens of one batch entry (and, packed, of one
// sequence): q_row / kv_row give token(0) + r for row r. A run of `rows` tokens is the box of `box_rows` rows starting
// at token(0): smem row r holds token token(0) + r of the same batch entry. The box has the kernel block's rows of one
// pattern block (the pattern block, or block / split when it is split), so a run never exceeds it; rows of the box past
// the run are padding: zero-filled by TMA past the token dim's end, otherwise another block's (packed: the next
// sequence's) finite tokens. Padding key rows get x = (-1, 0, 0), outside every window (1-D windows are [0, 1) in dims
// 0 and 1), so the element mask drops them; padding query rows get token -1 and empty windows and are never stored.
// Smem rows past box_rows (pattern blocks below the kernel block) are never written by TMA; the kernel zeroes them once
// per CTA.
//
// The GNA forward's additional KV (every query also attends add_k / add_v [B, N_add, H_kv, D]) reuses the same 4-D
// view and runs: additional tile a is the run of additional rows [a * block, min((a + 1) * block, N_add)), one box of
// `block` rows of the view (D, H_kv, N_add, B) (additional_run below).
//
// Plain C++ with NL_HOST_DEVICE: tests/test_sm90_schedules_host.py checks, against the sm80 schedules and the policies,
// that every box addresses exactly the schedule's tokens in order, with the padding flagged and masked, and that the
// additional runs cover the additional rows once each.
#pragma once

#include <cstdint>

#include "natten_like/sm80/fmha_schedules.hpp"

namespace natten_like::sm90 {

using sm80::kRank;

// Kernel rows of one pattern block: the box rows of every Q tile / KV visit of a launch (<= the kernel's block).
NL_HOST_DEVICE int seq_q_box_rows(const sm80::StridedShardFwdParams& p) {
  return static_cast<int>(p.pattern.block / p.q_split);
}
NL_HOST_DEVICE int seq_kv_box_rows(const sm80::StridedShardFwdParams& p) {
  return static_cast<int>(p.pattern.block / p.kv_split);
}
NL_HOST_DEVICE int seq_q_box_rows(const sm80::BlockSparseFwdParams& p) {
  return static_cast<int>(p.pattern.q_block / p.q_split);
}
NL_HOST_DEVICE int seq_kv_box_rows(const sm80::BlockSparseFwdParams& p) {
  return static_cast<int>(p.pattern.kv_block / p.kv_split);
}

// Whether `split` kernel blocks of `kernel_block` rows cover a pattern block of `block` rows as the sm80 schedules
// split it: one kernel block when the pattern block fits, else exactly block / kernel_block of them.
NL_HOST_DEVICE bool seq_split_matches(int64_t block, int64_t split, int64_t kernel_block) {
  if (block < 1 || split < 1) return false;
  return block <= kernel_block ? split == 1 : split * kernel_block == block;
}

// One KV visit: the TMA token coordinate of its box (row 0, within the batch entry), the rows of the run (<= box rows;
// 0 for a listed block with nothing to attend) and whether it needs no element mask within its rows.
struct SeqRun {
  int64_t token;
  int32_t rows;
  bool full;
};

// The sm80 schedule Sched (StridedShardSchedule or BlockSparseSchedule) with its rows as TMA box rows.
template <class Sched>
struct Sm90SeqSchedule {
  using Params = typename Sched::Params;
  using KvTile = typename Sched::KvTile;
  Sched s;

  static NL_HOST_DEVICE int64_t num_q_tiles(const Params& p) { return Sched::num_q_tiles(p); }
  NL_HOST_DEVICE Sm90SeqSchedule(const Params& p, int64_t t, int h, int64_t b) : s(p, t, h, b) {}
  NL_HOST_DEVICE int64_t count() const { return s.count(); }
  NL_HOST_DEVICE int q_rows() const { return s.q_rows(); }

  // TMA token coordinate of the Q box: the token of query row 0 (the formula holds for a tile with no rows too).
  NL_HOST_DEVICE int64_t q_start(const Params& p) const {
    int32_t begin[kRank], end[kRank];
    return s.q_row(p, 0, begin, end);
  }
  // Smem Q row r: the sm80 row's token and window for r < q_rows(); -1 and an empty window (never stored) otherwise.
  NL_HOST_DEVICE int64_t q_row(const Params& p, int r, int32_t* begin, int32_t* end) const {
    if (r < s.q_rows()) return s.q_row(p, r, begin, end);
    for (int i = 0; i < kRank; ++i) begin[i] = end[i] = 0;
    return -1;
  }

  // KV visit e: its run, and the sm80 tile for kv_row.
  NL_HOST_DEVICE SeqRun kv_run(const Params& p, int64_t e, KvTile& kv) const {
    int rows;
    bool full;
    kv = s.kv_tile(p, e, rows, full);
    int32_t x[kRank];
    const int64_t token = s.kv_row(p, kv, 0, x);
    return SeqRun{token, static_cast<int32_t>(rows), full};
  }
  // Smem key row c of a visit: true with the sm80 row's coordinates for c < rows, false with x = (-1, 0, 0) (padding,
  // outside every window) otherwise.
  NL_HOST_DEVICE bool kv_row(const Params& p, const KvTile& kv, const SeqRun& run, int c, int32_t* x) const {
    if (c < run.rows) {
      s.kv_row(p, kv, c, x);
      return true;
    }
    x[0] = -1;
    for (int i = 1; i < kRank; ++i) x[i] = 0;
    return false;
  }
};

// How the consumers mask the keys of a KV stage (the word the producer writes next to the stage's data,
// SharedStorage::kv_mask): kKvMaskNone, every (query, key) pair is attended (a full tile); kKvMaskWindow, the element
// mask (each query's window per dim against the key rows' coordinates); -n for n in [1, block), an additional KV tile
// with n real rows: key rows c < n are attended by every query, rows c >= n are padding. One word keeps the consumers'
// test of a tile without a mask a single comparison with zero.
constexpr int32_t kKvMaskNone = 0;
constexpr int32_t kKvMaskWindow = 1;

// The mask word of a neighbourhood tile / 1-D run: a tile with fewer rows than the block has padding keys even when
// the policy calls it full.
NL_HOST_DEVICE int32_t kv_mask_of_tile(bool full, int rows, int block) {
  return full && rows >= block ? kKvMaskNone : kKvMaskWindow;
}

// Whether key row c of a stage with mask word `mask` is attended by a query whose window test on the row gives `inside`
// (what the consumers compute; the host tests simulate it with this).
NL_HOST_DEVICE bool kv_mask_attends(int32_t mask, bool inside, int c) {
  if (mask == kKvMaskNone) return true;
  if (mask == kKvMaskWindow) return inside;
  return c < -mask;
}

// Additional KV tiles of `block` rows over num_additional rows (0 when there are none): GnaFwdParams's
// num_additional_tiles() with additional_block = block.
NL_HOST_DEVICE int64_t additional_tiles(int64_t num_additional, int block) {
  return num_additional > 0 ? (num_additional + block - 1) / block : 0;
}

// Additional tile a (a < additional_tiles): TMA token coordinate of its box (its first row), its real rows and whether
// all `block` rows are real. Box row c holds additional row token + c; past N_add TMA zero-fills it (padding).
NL_HOST_DEVICE SeqRun additional_run(int64_t num_additional, int block, int64_t a) {
  const int64_t token = a * block;
  const int64_t left = num_additional - token;
  const int32_t rows = static_cast<int32_t>(left < block ? left : block);
  return SeqRun{token, rows, rows == block};
}

// The mask word of an additional tile: none when every row is real, else its row count, negated.
NL_HOST_DEVICE int32_t kv_mask_of_additional(const SeqRun& run, int block) {
  return run.rows >= block ? kKvMaskNone : -run.rows;
}

using Sm90StridedShardSchedule = Sm90SeqSchedule<sm80::StridedShardSchedule>;
using Sm90BlockSparseSchedule = Sm90SeqSchedule<sm80::BlockSparseSchedule>;

// TMA global strides: positive multiples of 16 bytes below 2^40.
NL_HOST_DEVICE bool tma_stride_ok(int64_t bytes) {
  return bytes > 0 && bytes % 16 == 0 && bytes < (int64_t{1} << 40);
}

// The 4-D TMA view (D, H, tokens, B) of a heads-last tensor with element strides (head, token, batch): extents, byte
// strides of dims 1-3 and the box (the head-dim columns of one swizzle span, min(head_dim, 128 bytes), x 1 head x
// box_rows tokens x 1 batch entry). Element
// (d, h, t, b) sits at byte (d + h * head_stride + t * token_stride + b * batch_stride) * bytes from the base, the
// address the sm80 kernel reads. `ok` is false where TMA cannot express it: byte strides not positive multiples of 16
// or not below 2^40, extents beyond 2^32, or token coordinates (up to tokens - 1 + box_rows) beyond int32. With one
// batch entry the batch stride is never applied; it is replaced by tokens * token_stride so that any stride the caller
// passes is accepted.
struct SeqTmaView {
  uint64_t dims[4];
  uint64_t strides[3];  // bytes, of dims 1, 2, 3
  uint32_t box[4];
  bool ok;
};

NL_HOST_DEVICE SeqTmaView seq_tma_view(int64_t bytes, int64_t head_dim, int64_t heads, int64_t tokens,
                                              int64_t batch, int64_t head_stride, int64_t token_stride,
                                              int64_t batch_stride, int box_rows) {
  SeqTmaView v{};
  if (batch == 1) batch_stride = tokens * token_stride;
  const int64_t strides[3] = {head_stride * bytes, token_stride * bytes, batch_stride * bytes};
  const int64_t dims[4] = {head_dim, heads, tokens, batch};
  v.ok = box_rows >= 1 && box_rows <= 256 && tokens + box_rows <= int64_t{0x7fffffff};
  for (int i = 0; i < 3; ++i) {
    v.ok = v.ok && tma_stride_ok(strides[i]);
    v.strides[i] = static_cast<uint64_t>(strides[i] > 0 ? strides[i] : 0);
  }
  for (int i = 0; i < 4; ++i) {
    v.ok = v.ok && dims[i] >= 1 && dims[i] <= (int64_t{1} << 32);
    v.dims[i] = static_cast<uint64_t>(dims[i] > 0 ? dims[i] : 0);
  }
  v.box[0] = static_cast<uint32_t>(head_dim * bytes < 128 ? head_dim : 128 / bytes);
  v.box[1] = 1;
  v.box[2] = static_cast<uint32_t>(box_rows);
  v.box[3] = 1;
  return v;
}

}  // namespace natten_like::sm90
