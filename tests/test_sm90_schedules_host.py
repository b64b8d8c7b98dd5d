"""The index logic of the sm90 forward for the 1-D families (strided-shard, block-sparse) without a GPU.

``sm90/sm90_schedules.hpp`` (plain C++) turns each Q tile and KV visit of the sm80 schedules into one TMA box of the
4-D view (D, H, tokens, B) of a heads-last tensor: a start token, box rows (the kernel rows of one pattern block), and
per smem row whether it is a row of the run and its coordinates. The checker below compiles it with the host compiler
and, for random problems of both families (block sizes 8-256 against the 128-row kernel block, so split and unsplit,
causal or not, GQA, dense heads, plain batches and packed varlen sequences), simulates what the kernel does:

- TMA loads smem row r < box rows from token start + r of the CTA's batch entry (zeros past the tokens); rows past the
  box are zeroed once by the kernel;
- the valid rows of each Q box and KV box are exactly the sm80 schedule's rows, in order, with the same tokens and
  coordinates; the rest are flagged (query token -1 / empty window, key x0 = -1); a run never exceeds its box;
- the kernel's element mask (window test on the smem-row coordinates, skipped where the producer clears the need-mask
  flag) attends exactly the (query, key) pairs of the policy (for_each_kv_tile + fill_mask), each once, never a padding
  row, and, packed, never a key of another sequence; every query token is a valid row of exactly one CTA;
- TMA coordinates stay within int32 and within a pattern block past the tokens (what the launcher bounds).

A second check proves the 4-D view's byte addressing (seq_tma_view) equals the sm80 kernel's element addressing, and
its TMA limits; a third (nvcc, no GPU) calls the launchers with bad arguments and checks that they refuse them before
any CUDA call, with the documented error codes.

The GNA forward's additional KV uses the same view and runs (additional_run): a fourth check proves that its tiles of
128 rows cover the additional rows [0, N_add) once each, in order, that the per-stage mask word (kv_mask_of_additional,
decoded as the consumers do by kv_mask_attends) attends exactly the real rows of a box and never its TMA zero-filled
padding, that full tiles need no mask, that the tile count is GnaFwdParams::num_additional_tiles(), and that the view
addresses add_k [B, N_add, H_kv, D] as the sm80 kernel does for any batch stride (batch is a TMA dim of its own).

A fifth check covers the persistent tile scheduler (sm90_tile_scheduler.hpp): the round robin runs every work tile
once, in the intended order, with int64 arithmetic past 2^31, the grid never exceeds the work, and the persistence
policy and the kernel's phase formulas hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toolchain import needs_cxx, needs_nvcc, run_host_checker, run_nvcc_checker

CHECKER = r"""
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "natten_like/sm90/sm90_schedules.hpp"
#include "random_problems.hpp"

using namespace natten_like;
using Pairs = std::set<std::pair<int64_t, int64_t>>;
constexpr int kBlock = 128;  // the sm90 kernel's kBlockM = kBlockN

int64_t split_for(int64_t block) { return block > kBlock ? block / kBlock : 1; }

// One CTA (kernel Q tile t, head h, batch entry b): simulates the kernel's geometry and adds the attended pairs to
// `got` (tokens: query index / packed row, key index / packed row). q_seq_range(token) gives the query's sequence.
template <class Sched, class Params, class SeqOf>
int run_cta(const Params& p, int64_t t, int h, int64_t b, int64_t q_tokens, int64_t kv_tokens, int64_t q_block,
            int64_t kv_block, Pairs& got, std::vector<int>& seen, SeqOf&& q_seq_range, long& checks) {
  using S90 = sm90::Sm90SeqSchedule<Sched>;
  const S90 s(p, t, h, b);
  const Sched ref(p, t, h, b);
  const int qbox = sm90::seq_q_box_rows(p), kvbox = sm90::seq_kv_box_rows(p);
  if (qbox < 1 || qbox > kBlock || kvbox < 1 || kvbox > kBlock) return 10;
  if (s.q_rows() != ref.q_rows() || s.q_rows() > qbox || s.count() != ref.count()) return 11;
  const int64_t q_start = s.q_start(p);
  if (q_start < 0 || q_start > q_tokens + q_block || q_start + qbox > int64_t{0x7fffffff}) return 12;
  // Q smem rows: token and window (kernel: smem.q_token / q_begin / q_end).
  std::vector<int64_t> qtok(kBlock);
  std::vector<int32_t> wb(3 * kBlock), we(3 * kBlock);
  for (int r = 0; r < kBlock; ++r) {
    qtok[r] = s.q_row(p, r, &wb[3 * r], &we[3 * r]);
    if (r < s.q_rows()) {
      int32_t rb[3], re[3];
      const int64_t tok = ref.q_row(p, r, rb, re);
      // The box row r holds token q_start + r: the schedule's row r.
      if (r >= qbox || tok != q_start + r || qtok[r] != tok || tok >= q_tokens) return 13;
      for (int i = 0; i < 3; ++i)
        if (rb[i] != wb[3 * r + i] || re[i] != we[3 * r + i]) return 14;
      ++seen[tok];
    } else {
      if (qtok[r] != -1) return 15;
      for (int i = 0; i < 3; ++i)
        if (wb[3 * r + i] != 0 || we[3 * r + i] != 0) return 16;
    }
    ++checks;
  }
  const auto range = q_seq_range(q_start);  // the sequence of the tile's tokens (packed), else [0, tokens)
  for (int r = 0; r < s.q_rows(); ++r)
    if (qtok[r] < range.first || qtok[r] >= range.second) return 17;
  for (int64_t e = 0; e < s.count(); ++e) {
    typename Sched::KvTile kv;
    const sm90::SeqRun run = s.kv_run(p, e, kv);
    int rows;
    bool full;
    const auto rkv = ref.kv_tile(p, e, rows, full);
    if (run.rows != rows || run.full != full || run.rows > kvbox || run.rows < 0) return 20;
    if (run.token < 0 || run.token > kv_tokens + kv_block || run.token + kvbox > int64_t{0x7fffffff}) return 21;
    const bool need_mask = !run.full || run.rows < kBlock;  // the producer's kv_need_mask
    std::vector<int32_t> x(3 * kBlock);
    std::vector<int64_t> ktok(kBlock, -1);
    for (int c = 0; c < kBlock; ++c) {
      const bool valid = s.kv_row(p, kv, run, c, &x[3 * c]);
      if (valid != (c < run.rows)) return 22;
      if (valid) {
        int32_t xr[3];
        const int64_t tok = ref.kv_row(p, rkv, c, xr);
        // Box row c holds token run.token + c (c < kvbox): the schedule's key row c, same coordinates.
        if (c >= kvbox || tok != run.token + c || tok >= kv_tokens) return 23;
        for (int i = 0; i < 3; ++i)
          if (xr[i] != x[3 * c + i]) return 24;
        ktok[c] = tok;
      } else if (x[3 * c] != -1 || x[3 * c + 1] != 0 || x[3 * c + 2] != 0) {
        return 25;
      }
    }
    for (int r = 0; r < kBlock; ++r) {
      if (qtok[r] < 0) continue;  // never stored
      for (int c = 0; c < kBlock; ++c) {
        bool inside = true;
        for (int i = 0; i < 3; ++i) inside = inside && wb[3 * r + i] <= x[3 * c + i] && x[3 * c + i] < we[3 * r + i];
        const bool attended = need_mask ? inside : true;
        ++checks;
        if (!attended) continue;
        if (ktok[c] < 0) return 26;                               // a padding row attended
        if (!got.emplace(qtok[r], ktok[c]).second) return 27;    // a pair attended twice
      }
    }
  }
  return 0;
}

int check_s2(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  sm80::StridedShardFwdParams p{};
  const int64_t block = std::vector<int64_t>{8, 16, 64, 128, 256}[pick(0, 4)];
  p.kv_heads = static_cast<int>(pick(1, 3));
  p.heads = p.kv_heads * static_cast<int>(pick(1, 2));
  p.batch = pick(1, 2);
  p.pattern.nkv = pick(1, 4 * block);
  p.pattern.nq = pick(1, p.pattern.nkv);
  p.tokens = p.pattern.nq;
  p.pattern.block = block;
  p.pattern.local = pick(1, 3);
  p.pattern.vert_stride = pick(1, 5);
  p.pattern.causal = pick(0, 1) == 1;
  p.head_step = pick(0, 3) == 0 ? 0 : std::max<int64_t>(1, p.pattern.vert_stride / p.heads);
  p.sliding_offset = pick(0, 3);
  p.dense_heads = static_cast<int>(pick(0, p.kv_heads));
  p.q_split = p.kv_split = static_cast<int>(split_for(block));
  if (!sm90::seq_split_matches(block, p.q_split, kBlock)) return 1;
  if (sm90::seq_split_matches(block, p.q_split + 1, kBlock)) return 1;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int h = 0; h < p.heads; ++h) {
      policy::StridedShardPolicy pol = p.pattern;
      const int64_t hk = h / (p.heads / p.kv_heads);
      pol.shift = (hk * p.head_step + p.sliding_offset) % pol.vert_stride;
      pol.dense = hk >= p.kv_heads - p.dense_heads;
      Pairs want, got;
      checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) { want.emplace(q, k); });
      std::vector<int> seen(p.tokens, 0);
      auto whole = [&](int64_t) { return std::pair<int64_t, int64_t>{0, p.tokens}; };
      for (int64_t t = 0; t < sm90::Sm90StridedShardSchedule::num_q_tiles(p); ++t) {
        const int bad = run_cta<sm80::StridedShardSchedule>(p, t, h, b, p.tokens, p.pattern.nkv, block, block, got,
                                                            seen, whole, checks);
        if (bad) return bad;
      }
      for (int c : seen)
        if (c != 1) return 2;
      if (got != want) return 3;
    }
  return 0;
}

int check_bs(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const bool packed = pick(0, 2) == 0;
  const int64_t batch = packed ? 1 : pick(1, 2), heads = pick(1, 3);
  const checkers::RandomBlockSparse bs(rng, packed, batch, heads, {16, 64, 128, 256}, 400);
  const std::vector<int64_t>& q_seq = bs.q_seq;
  const std::vector<int64_t>& kv_seq = bs.kv_seq;
  const int64_t seqs = bs.seqs, qbs = bs.qbs, kbs = bs.kbs;
  sm80::BlockSparseFwdParams p{};
  p.heads = static_cast<int>(heads);
  p.kv_heads = 1;
  p.batch = batch;
  p.tokens = q_seq.back();
  bs.set_pattern(p.pattern, pick(0, 1) == 1);
  p.kv_partial = bs.partial();
  if (pick(0, 1)) p.kv_full = bs.full();
  p.packed = packed;
  p.total_q_tiles = bs.q_tiles.back();
  p.q_split = static_cast<int>(split_for(qbs));
  p.kv_split = static_cast<int>(split_for(kbs));
  if (!sm90::seq_split_matches(qbs, p.q_split, kBlock) || !sm90::seq_split_matches(kbs, p.kv_split, kBlock)) return 1;
  // The sequence of a query row (packed) and of a key row, to prove no key of another sequence is attended.
  auto seq_of = [](const std::vector<int64_t>& off, int64_t tok) {
    return static_cast<int64_t>(std::upper_bound(off.begin(), off.end(), tok) - off.begin()) - 1;
  };
  for (int64_t b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h) {
      policy::BlockSparsePolicy pol = p.pattern;
      pol.kv_partial = p.kv_partial.at(b, h, packed);
      pol.kv_full = p.kv_full.at(b, h, packed);
      Pairs want, got;
      checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) { want.emplace(q, k); });
      std::vector<int> seen(q_seq.back(), 0);
      auto seq_range = [&](int64_t tok) {
        const int64_t s = std::min<int64_t>(seq_of(q_seq, tok), seqs - 1);
        return std::pair<int64_t, int64_t>{q_seq[s], q_seq[s + 1]};
      };
      for (int64_t t = 0; t < sm90::Sm90BlockSparseSchedule::num_q_tiles(p); ++t) {
        const int bad = run_cta<sm80::BlockSparseSchedule>(p, t, h, b, q_seq.back(), kv_seq.back(), qbs, kbs, got,
                                                           seen, seq_range, checks);
        if (bad) return bad;
      }
      for (int c : seen)
        if (c != 1) return 2;
      for (const auto& [q, k] : got)
        if (seq_of(q_seq, q) != seq_of(kv_seq, k)) return 4;  // a key of another sequence
      if (got != want) return 3;
    }
  return 0;
}

// The 4-D view: byte address of (d, h, t, b) through the view's strides equals the sm80 kernel's element address
// (b * batch_stride + h * head_stride + t * token_stride + d) * bytes; the TMA limits are enforced.
int check_view(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t bytes = 2, D = std::array<int64_t, 3>{32, 64, 128}[pick(0, 2)], H = pick(1, 8), N = pick(1, 5000);
  const int64_t B = pick(1, 3);
  // Heads-last contiguous, sometimes with padded rows / batch gaps (multiples of 8 elements keep 16-byte strides).
  const int64_t hs = D + 8 * pick(0, 1), ts = H * hs + 8 * pick(0, 2), bs = N * ts + 8 * pick(0, 3);
  const int rows = static_cast<int>(pick(1, 128));
  const sm90::SeqTmaView v = sm90::seq_tma_view(bytes, D, H, N, B, hs, ts, bs, rows);
  if (!v.ok) return 30;
  if (v.dims[0] != uint64_t(D) || v.dims[1] != uint64_t(H) || v.dims[2] != uint64_t(N) || v.dims[3] != uint64_t(B))
    return 31;
  // One swizzle span of head-dim columns: 128 bytes, or the whole row where it is shorter (head dim 32: 64 bytes).
  if (v.box[0] * bytes != std::min<int64_t>(128, D * bytes) || v.box[1] != 1 || v.box[2] != uint32_t(rows) ||
      v.box[3] != 1) {
    return 32;
  }
  for (int i = 0; i < 64; ++i) {
    const int64_t d = pick(0, D - 1), h = pick(0, H - 1), t = pick(0, N - 1), b = pick(0, B - 1);
    const uint64_t view = d * bytes + h * v.strides[0] + t * v.strides[1] + b * v.strides[2];
    if (view != uint64_t((b * bs + h * hs + t * ts + d) * bytes)) return 33;
    ++checks;
  }
  // Refusals: a stride not a multiple of 16 bytes, a token count reaching int32 with a box, more than 256 box rows.
  if (sm90::seq_tma_view(bytes, D, H, N, 2, hs, ts + 1, bs, rows).ok) return 34;
  if (sm90::seq_tma_view(bytes, D, H, N, 2, hs, ts, bs + 4, rows).ok) return 35;
  if (sm90::seq_tma_view(bytes, D, H, int64_t{0x7fffffff} - rows + 1, 1, hs, ts, 0, rows).ok) return 36;
  if (sm90::seq_tma_view(bytes, D, H, N, B, hs, ts, bs, 257).ok) return 37;
  // One batch entry: whatever batch stride the caller passes is replaced by tokens * token stride.
  const sm90::SeqTmaView one = sm90::seq_tma_view(bytes, D, H, N, 1, hs, ts, 3, rows);
  if (!one.ok || one.strides[2] != uint64_t(N * ts * bytes)) return 38;
  return 0;
}

// Additional KV of the GNA forward: kBlock-row tiles over N_add rows, masked by row index.
int check_additional(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  // Small counts, exact multiples of the block (no padding tile) and counts near the int32 limit of TMA coordinates.
  const int64_t n = std::vector<int64_t>{pick(1, 3), pick(1, 1000), kBlock * pick(1, 5),
                                         int64_t{0x7fffffff} - kBlock - pick(0, 300)}[pick(0, 3)];
  sm80::GnaFwdParams p{};
  p.num_additional = n;
  p.additional_block = kBlock;
  const int64_t tiles = sm90::additional_tiles(n, kBlock);
  if (tiles != p.num_additional_tiles() || tiles != (n + kBlock - 1) / kBlock) return 40;
  // Only the last tiles are visited for the huge counts (the cover check needs all of them).
  const bool whole = n <= 100000;
  int64_t next = whole ? 0 : (tiles - 3) * kBlock;
  for (int64_t a = whole ? 0 : tiles - 3; a < tiles; ++a) {
    const sm90::SeqRun run = sm90::additional_run(n, kBlock, a);
    if (run.token != next || run.rows < 1 || run.rows > kBlock || run.token + run.rows > n) return 41;
    if (run.full != (run.rows == kBlock) || (a + 1 < tiles && !run.full)) return 42;
    // The box's TMA coordinates: the first row stays within int32 with a whole box after it (the launcher's bound).
    if (run.token + kBlock > int64_t{0x7fffffff}) return 43;
    const int32_t mask = sm90::kv_mask_of_additional(run, kBlock);
    if (run.full != (mask == sm90::kKvMaskNone) || mask == sm90::kKvMaskWindow || mask > 0) return 44;
    for (int c = 0; c < kBlock; ++c) {
      // Box row c is additional row token + c, zero-filled by TMA past N_add; the window test plays no part.
      const bool real = run.token + c < n;
      const bool inside = pick(0, 1) == 1;
      if (sm90::kv_mask_attends(mask, inside, c) != real) return 45;
      ++checks;
    }
    next = run.token + run.rows;
  }
  if (next != n) return 46;
  if (sm90::additional_tiles(0, kBlock) != 0 || sm90::additional_tiles(-3, kBlock) != 0) return 47;
  // Neighbourhood tiles and 1-D runs: the old need-mask flag (!full || rows < block), with the window test.
  for (int rows = 0; rows <= kBlock; rows += 16) {
    for (bool full : {false, true}) {
      const int32_t mask = sm90::kv_mask_of_tile(full, rows, kBlock);
      if ((mask == sm90::kKvMaskWindow) != (!full || rows < kBlock) || mask < 0) return 48;
      for (bool inside : {false, true}) {
        if (sm90::kv_mask_attends(mask, inside, 0) != (mask == sm90::kKvMaskNone || inside)) return 49;
      }
    }
  }
  // The view of add_k [B, N_add, H_kv, D]: any batch stride (here a gap, or a packed K|V tensor's token stride).
  const int64_t bytes = 2, D = pick(0, 1) ? 64 : 128, H = pick(1, 4), N = pick(1, 3000), B = pick(1, 3);
  const int64_t packs = pick(1, 2), hs = D, ts = packs * H * D, bs = N * ts + 8 * pick(0, 5);
  const sm90::SeqTmaView v = sm90::seq_tma_view(bytes, D, H, N, B, hs, ts, bs, kBlock);
  if (!v.ok || v.dims[2] != uint64_t(N) || v.dims[3] != uint64_t(B) || v.box[2] != uint32_t(kBlock)) return 50;
  for (int i = 0; i < 64; ++i) {
    const int64_t d = pick(0, D - 1), h = pick(0, H - 1), t = pick(0, N - 1), b = pick(0, B - 1);
    const uint64_t view = d * bytes + h * v.strides[0] + t * v.strides[1] + b * v.strides[2];
    if (view != uint64_t((b * bs + h * hs + t * ts + d) * bytes)) return 51;
    ++checks;
  }
  // N_add + a box reaching int32 is refused (the launcher then falls back to sm80).
  if (sm90::seq_tma_view(bytes, D, H, int64_t{0x7fffffff} - kBlock + 1, B, hs, ts, bs, kBlock).ok) return 52;
  return 0;
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  long checks = 0;
  for (int i = 0; i < 50; ++i) {
    int bad = check_s2(rng, checks);
    if (bad) {
      std::printf("strided-shard mismatch %d in problem %d\n", bad, i);
      return 1;
    }
    bad = check_bs(rng, checks);
    if (bad) {
      std::printf("block-sparse mismatch %d in problem %d\n", bad, i);
      return 1;
    }
    bad = check_view(rng, checks);
    if (bad) {
      std::printf("view mismatch %d in problem %d\n", bad, i);
      return 1;
    }
    bad = check_additional(rng, checks);
    if (bad) {
      std::printf("additional KV mismatch %d in problem %d\n", bad, i);
      return 1;
    }
  }
  std::printf("ok %ld\n", checks);
  return 0;
}
"""


# The launchers' error-code contract, checked on the host: every refusal happens before any CUDA call, so the program
# runs without a GPU. Built for sm_80 only (the kernel body is the empty stub there), which keeps the build short.
CODES_CHECKER = r"""
#include <cstdio>

#include "launcher_args.hpp"
#include "natten_like/sm90/sm90_fmha_fwd_kernel.hpp"

using namespace natten_like;
using E = cutlass::bfloat16_t;

int main() {
  int bad = 0;
  auto expect = [&](const char* what, cudaError_t got, cudaError_t want) {
    if (got != want) {
      std::printf("%s: got %d want %d\n", what, int(got), int(want));
      ++bad;
    }
  };
  auto s2 = [](int64_t block, int split) {
    sm80::StridedShardFwdParams p{};
    checkers::fill_contiguous_args(p, 2, 1000, 4, 2, 128);
    p.pattern.nq = p.pattern.nkv = 1000;
    p.pattern.block = block;
    p.pattern.local = 1;
    p.pattern.vert_stride = 2;
    p.q_split = p.kv_split = split;
    return p;
  };
  auto launch_s2 = [](const sm80::StridedShardFwdParams& p) {
    return sm90::launch_sm90_s2_fwd<E, 128, 128, 128>(p, nullptr);
  };
  auto p = s2(64, 1);
  p.head_dim = p.head_dim_v = 64;
  expect("s2 head dim", launch_s2(p), cudaErrorInvalidValue);
  expect("s2 split 2 of 64", launch_s2(s2(64, 2)), cudaErrorInvalidValue);
  expect("s2 split 1 of 256", launch_s2(s2(256, 1)), cudaErrorInvalidValue);
  expect("s2 192 (not a multiple of 128)", launch_s2(s2(192, 3)), cudaErrorInvalidValue);
  p = s2(256, 2);
  p.kv_heads = 3;
  expect("s2 kv heads", launch_s2(p), cudaErrorInvalidValue);
  p = s2(256, 2);
  p.k_token_stride += 4;  // 8 bytes: not a multiple of 16
  expect("s2 token stride", launch_s2(p), cudaErrorNotSupported);
  p = s2(64, 1);
  p.q_batch_stride += 1;
  expect("s2 batch stride", launch_s2(p), cudaErrorNotSupported);
  p = s2(64, 1);
  p.q = static_cast<const char*>(p.q) + 8;
  expect("s2 misaligned q", launch_s2(p), cudaErrorNotSupported);
  p = s2(64, 1);
  p.pattern.nq = p.tokens = int64_t{0x7fffffff} - 32;
  p.pattern.nkv = p.pattern.nq;
  expect("s2 int32 coordinates", launch_s2(p), cudaErrorNotSupported);
  p = s2(64, 1);
  p.batch = 0;
  expect("s2 empty", launch_s2(p), cudaSuccess);
  p = s2(64, 1);
  p.batch = 70000;
  expect("s2 grid", launch_s2(p), cudaErrorInvalidConfiguration);

  auto bs = []() {
    sm80::BlockSparseFwdParams p{};
    checkers::fill_contiguous_args(p, 2, 1000, 4, 4, 128);
    p.pattern.q_block = 64;
    p.pattern.kv_block = 256;
    p.q_split = 1;
    p.kv_split = 2;
    p.total_q_tiles = 16;
    return p;
  };
  auto launch_bs = [](const sm80::BlockSparseFwdParams& p) {
    return sm90::launch_sm90_block_sparse_fwd<E, 128, 128, 128>(p, nullptr);
  };
  auto q = bs();
  q.kv_split = 1;
  expect("bs split", launch_bs(q), cudaErrorInvalidValue);
  q = bs();
  q.k_batch_stride += 8;  // 16 bytes, but not a whole number of tokens: no KV extent
  expect("bs kv extent", launch_bs(q), cudaErrorNotSupported);
  q = bs();
  q.v_batch_stride = 999 * q.v_token_stride;  // V extent differs from K's
  expect("bs kv extents differ", launch_bs(q), cudaErrorNotSupported);
  q = bs();
  q.total_q_tiles = 0;
  expect("bs empty", launch_bs(q), cudaSuccess);
  q = bs();
  q.heads = 70000;
  q.kv_heads = 70000;
  expect("bs grid", launch_bs(q), cudaErrorInvalidConfiguration);
  // Head dim 256: KV blocks of 64 rows, so the kv_block of 256 splits in 4 (and the split of 2 is refused).
  auto launch_bs256 = [](const sm80::BlockSparseFwdParams& p) {
    return sm90::launch_sm90_block_sparse_fwd<E, 256, 128, 64>(p, nullptr);
  };
  auto wide = [&](int kv_split) {
    sm80::BlockSparseFwdParams p = bs();
    checkers::fill_contiguous_args(p, 2, 1000, 4, 4, 256);
    p.kv_split = kv_split;
    p.heads = p.kv_heads = 70000;
    return p;
  };
  expect("bs D 256 split 4", launch_bs256(wide(4)), cudaErrorInvalidConfiguration);
  expect("bs D 256 split 2", launch_bs256(wide(2)), cudaErrorInvalidValue);
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sm90_runs_match_schedules_and_policies(tmp_path: Path, seed: int) -> None:
    assert run_host_checker(tmp_path, "checker", CHECKER, [str(seed)], cuda_headers=True).startswith("ok ")


@needs_nvcc
def test_launchers_refuse_before_any_cuda_call(tmp_path: Path) -> None:
    arch = ("-gencode=arch=compute_80,code=sm_80",)
    assert run_nvcc_checker(tmp_path, "codes", CODES_CHECKER, arch).strip() == "ok"


# The persistent tile scheduler (sm90/sm90_tile_scheduler.hpp), plain C++: for random work spaces (small ones walked in
# full, large ones past 2^31 and up to the launchers' limits sampled), every work tile is run by exactly one CTA of the
# round robin, each CTA's sequence is the one the kernel computes (blockIdx.x + i * gridDim.x with its uint32 local
# index i), the linearisation puts the Q tile fastest within a (batch, head) (reference: nested loops), the grid never
# exceeds the work or the capacity, the kAuto policy and the forced modes decide as documented, and the phase formulas
# of the kernel's state buffers and KV ring (uint32 counters) match a count of completions.
SCHEDULER_CHECKER = r"""
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "natten_like/sm90/sm90_tile_scheduler.hpp"

using namespace natten_like::sm90;

int main(int argc, char** argv) {
  std::mt19937_64 rng(std::strtoull(argv[1], nullptr, 10));
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  long checks = 0;
  int bad = 0;
  auto fail = [&](const char* what, long long a, long long b) {
    if (bad++ < 10) std::printf("%s: %lld %lld\n", what, a, b);
  };
  // Small spaces: walk every CTA's sequence in full.
  for (int trial = 0; trial < 300; ++trial) {
    const Sm90TileScheduler s{uni(1, 40), uni(1, 9), uni(1, 7)};
    const int64_t sms = uni(1, 140), per_sm = uni(0, 3);
    const int64_t grid = sm90_persistent_grid(s.total(), sms, per_sm);
    const int64_t capacity = sms * (per_sm > 0 ? per_sm : 1);
    if (grid < 1 || grid > s.total() || grid != std::min(s.total(), capacity)) fail("grid", grid, s.total());
    // Reference order: Q tile fastest, then head, then batch entry.
    std::vector<Sm90WorkTile> ref;
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t q = 0; q < s.q_tiles; ++q) ref.push_back(Sm90WorkTile{q, static_cast<int>(h), b});
    if (static_cast<int64_t>(ref.size()) != s.total()) fail("total", s.total(), ref.size());
    std::vector<int> seen(s.total(), 0);
    for (int64_t cta = 0; cta < grid; ++cta) {
      int64_t expect = cta;
      // The kernel: the first work tile is blockIdx.x, the next of local tile i is blockIdx.x + (i + 1) * gridDim.x.
      for (uint32_t i = 0;; ++i) {
        const int64_t w = static_cast<int64_t>(cta) + static_cast<int64_t>(i) * grid;
        if (w >= s.total()) break;
        if (w != expect) fail("sequence", w, expect);
        expect += grid;
        const Sm90WorkTile t = s.tile(w);
        const Sm90WorkTile& r = ref[w];
        if (t.q_tile != r.q_tile || t.h != r.h || t.b != r.b) fail("order", w, t.q_tile);
        if (s.linear(t) != w) fail("linear", w, s.linear(t));
        ++seen[w];
        ++checks;
      }
    }
    for (int64_t w = 0; w < s.total(); ++w) {
      if (seen[w] != 1) fail("visited", w, seen[w]);
    }
  }
  // Large spaces (products past 2^31, up to q_tiles < 2^31, heads and batch < 2^16): sampled work tiles, boundaries.
  for (int trial = 0; trial < 2000; ++trial) {
    const int64_t q = trial % 3 == 0 ? 0x7fffffff : uni(1, 0x7fffffff);
    const Sm90TileScheduler s{q, trial % 5 == 0 ? 65535 : uni(1, 65535), trial % 7 == 0 ? 65535 : uni(1, 65535)};
    const __int128 product = static_cast<__int128>(s.q_tiles) * s.heads * s.batch;
    if (static_cast<__int128>(s.total()) != product || s.total() <= 0) fail("large total", s.total(), 0);
    const int64_t grid = sm90_persistent_grid(s.total(), uni(1, 200), uni(1, 2));
    if (grid < 1 || grid > s.total()) fail("large grid", grid, s.total());
    for (int k = 0; k < 20; ++k) {
      const int64_t w = k == 0 ? 0 : k == 1 ? s.total() - 1 : uni(0, s.total() - 1);
      const Sm90WorkTile t = s.tile(w);
      if (t.q_tile < 0 || t.q_tile >= s.q_tiles || t.h < 0 || t.h >= s.heads || t.b < 0 || t.b >= s.batch) {
        fail("large range", w, t.q_tile);
      }
      // The same decode in 128-bit arithmetic.
      const __int128 hb = w / s.q_tiles;
      if (t.q_tile != w % s.q_tiles || t.h != static_cast<int64_t>(hb % s.heads) || t.b != hb / s.heads) {
        fail("large decode", w, t.q_tile);
      }
      if (s.linear(t) != w) fail("large linear", w, s.linear(t));
      // The next work tile of the CTA holding w: one grid further, the same CTA (w mod grid).
      if (w + grid < s.total() && s.linear(s.tile(w + grid)) - w != grid) fail("large step", w, grid);
      ++checks;
    }
  }
  // The policy: kOff never, kOn always (within the uint32 per-CTA count), kAuto from kSm90PersistentMinWaves waves.
  for (int trial = 0; trial < 10000; ++trial) {
    const int64_t capacity = uni(1, 1000), work = trial % 2 ? uni(1, 20 * capacity) : uni(1, int64_t{1} << 62);
    const bool fits = (work + capacity - 1) / capacity < (int64_t{1} << 31);
    if (sm90_use_persistent(Sm90Persistence::kOff, work, capacity)) fail("off", work, capacity);
    if (sm90_use_persistent(Sm90Persistence::kOn, work, capacity) != fits) fail("on", work, capacity);
    const bool autov = fits && work >= kSm90PersistentMinWaves * capacity;
    if (sm90_use_persistent(Sm90Persistence::kAuto, work, capacity) != autov) fail("auto", work, capacity);
    ++checks;
  }
  if (sm90_use_persistent(Sm90Persistence::kAuto, 4 * 132 - 1, 132)) fail("auto below", 0, 0);
  if (!sm90_use_persistent(Sm90Persistence::kAuto, 4 * 132, 132)) fail("auto at", 0, 0);
  if (sm90_use_persistent(Sm90Persistence::kOn, 0, 132)) fail("on empty", 0, 0);
  // Phases. State buffer k = i % 2 of producer work tile i >= 1 is published when the consumers start work tile i - 1:
  // the kernel waits for completion parity ((i - 1) >> 1) & 1. KV ring: stage / phase from a uint32 count, also across
  // its wrap at 2^32, equal to those of the true count.
  {
    // Consumer work tile j publishes buffer (j + 1) % 2 for producer work tile i = j + 1; an mbarrier's completed phase
    // parity is its completion count - 1, mod 2.
    int completions[2] = {0, 0};
    for (uint32_t j = 0; j < 1000; ++j) {
      const uint32_t i = j + 1, k = i & 1;
      completions[(j + 1) & 1] += 1;
      if (static_cast<uint32_t>(completions[k] - 1) % 2 != (((i - 1) >> 1) & 1)) fail("state phase", i, completions[k]);
      ++checks;
    }
    for (int trial = 0; trial < 10000; ++trial) {
      const uint64_t total = trial % 2 ? uni(0, 1000) : (uint64_t{1} << 32) - uni(0, 100) + uni(0, 100);
      const uint32_t ring = static_cast<uint32_t>(total);
      for (int e = 0; e < 4; ++e) {
        const uint64_t g = total + e;
        const uint32_t count = ring + static_cast<uint32_t>(e);  // the kernel's stage_of / phase_of
        const uint32_t stage = count % 2, phase = (count / 2) & 1;
        if (stage != g % 2 || phase != (g / 2) % 2) fail("ring phase", static_cast<long long>(total), e);
        ++checks;
      }
    }
  }
  std::printf(bad ? "mismatch %d\n" : "ok %ld\n", bad, checks);
  return bad != 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_persistent_tile_scheduler_visits_every_work_tile_once(tmp_path: Path, seed: int) -> None:
    assert run_host_checker(tmp_path, "scheduler", SCHEDULER_CHECKER, [str(seed)]).startswith("ok ")
