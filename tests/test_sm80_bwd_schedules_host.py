"""The key-side schedules of the sm80 backward's dK/dV kernel (``sm80/fmha_bwd_schedules.hpp``) on the host.

The schedules are plain C++; each checker below compiles with the host compiler and, on random problems, runs every
kernel KV tile of every (batch, KV head) through the schedule exactly as the dK/dV kernel does (key rows, then every
step's query head, query rows and windows, the element mask of the rows' geometry), and proves that

- the (query head, query, key) triples the kernel attends, over all kernel KV tiles and steps, are exactly the
  policy's pairs of each query head of the group (``for_each_kv_tile`` + ``fill_mask`` of the forward lists), each
  attended once;
- every key row of every (batch, KV head) lies in exactly one kernel KV tile, tiles and steps fit the 64-row kernel
  block, and step heads stay in the KV head's GQA group;
- no step flagged ``full`` (run without the element mask) holds a pair the policy does not attend.

GNA problems are rank 1-3 with dilation, stride and causal dims and GQA (the iterator itself is checked in
tests/test_sm80_bwd_host.py; here the steps' head mapping). Strided-shard problems mix dense and sharded KV heads, GQA
groups, causal and not, block sizes 8 to 192 (128 and 192 run as several kernel blocks); block-sparse problems have
random full and partial lists per query head (broadcast batch / head dims), plain and packed varlen batches, Q and KV
block sizes 16 / 64 / 128 independently.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toolchain import needs_cxx, run_host_checker

# Shared by both checkers: the dK/dV kernel's use of a key schedule for one kernel KV tile, collecting the attended
# (query head, query token, key token) triples; `keys` counts how often each key token appears as a key row.
COMMON = r"""
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "random_problems.hpp"
#include "random_s2.hpp"
#include "natten_like/sm80/fmha_bwd_schedules.hpp"

using namespace natten_like;
using Triples = std::set<std::tuple<int64_t, int64_t, int64_t>>;
constexpr int kBlock = 64;

template <class KeySchedule>
int run_tile(const typename KeySchedule::Params& p, int64_t t, int h_kv, int64_t b, int group, Triples& got,
             std::vector<int>& keys, long& checks) {
  const KeySchedule s(p, t, h_kv, b);
  const int nk = s.kv_rows();
  if (nk < 0 || nk > kBlock) return 2;
  std::vector<int64_t> ktok(nk);
  std::vector<int32_t> kx(3 * nk);
  for (int c = 0; c < nk; ++c) {
    ktok[c] = s.kv_row(p, c, &kx[3 * c]);
    if (ktok[c] < 0 || ktok[c] >= static_cast<int64_t>(keys.size())) return 3;
    ++keys[ktok[c]];
  }
  for (int64_t e = 0; e < s.count(p); ++e) {
    int h, rows;
    bool full;
    const auto q = s.q_tile(p, e, h, rows, full);
    if (rows < 0 || rows > kBlock) return 4;
    if (h < h_kv * group || h >= (h_kv + 1) * group) return 5;
    for (int r = 0; r < rows; ++r) {
      int32_t wb[3], we[3];
      const int64_t qtok = s.q_row(p, q, r, wb, we);
      for (int c = 0; c < nk; ++c) {
        bool inside = true;
        for (int i = 0; i < 3; ++i) inside = inside && wb[i] <= kx[3 * c + i] && kx[3 * c + i] < we[i];
        if (full && !inside) return 6;  // a full step runs unmasked: every pair of it must be attended
        if (inside && !got.emplace(h, qtok, ktok[c]).second) return 7;  // a pair attended twice
        ++checks;
      }
    }
  }
  return 0;
}

int check(std::mt19937& rng, long& checks);

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  long checks = 0;
  for (int i = 0; i < 200; ++i) {
    const int bad = check(rng, checks);
    if (bad) {
      std::printf("mismatch %d in problem %d\n", bad, i);
      return 1;
    }
  }
  std::printf("ok %ld\n", checks);
  return 0;
}
"""

S2_CHECKER = (
    COMMON
    + r"""
int check(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  sm80::StridedShardBwdParams p{};
  auto& f = p.fwd;
  const int group = static_cast<int>(pick(1, 3));
  checkers::random_s2_problem(rng, f, group, kBlock);
  const int64_t block = f.pattern.block;
  for (int h_kv = 0; h_kv < f.kv_heads; ++h_kv) {
    Triples want, got;
    for (int h = h_kv * group; h < (h_kv + 1) * group; ++h) {
      // The policy of query head h, built as the CPU binding builds it.
      policy::StridedShardPolicy pol = f.pattern;
      const int64_t hk = h / (f.heads / f.kv_heads);
      pol.shift = (hk * f.head_step + f.sliding_offset) % pol.vert_stride;
      pol.dense = hk >= f.kv_heads - f.dense_heads;
      checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) { want.emplace(h, q, k); });
    }
    std::vector<int> keys(f.pattern.nkv, 0);
    for (int64_t t = 0; t < sm80::StridedShardKeySchedule::num_kv_tiles(p); ++t) {
      const int bad = run_tile<sm80::StridedShardKeySchedule>(p, t, h_kv, 0, group, got, keys, checks);
      if (bad) return bad;
    }
    for (int c : keys)
      if (c != 1) return 8;
    if (got != want) return 9;
  }
  return 0;
}
"""
)

BLOCK_SPARSE_CHECKER = (
    COMMON
    + r"""
// block_sparse_plan.hpp's transpose_lists: per KV block, the query blocks whose list holds it, in increasing order.
void transpose(const std::vector<int64_t>& num, const std::vector<int64_t>& idx, int64_t bh, int64_t rows, int64_t cap,
               int64_t cols, std::vector<int64_t>& tnum, std::vector<int64_t>& tidx, int64_t& tcap) {
  tcap = std::max<int64_t>(rows, 1);
  tnum.assign(bh * cols, 0);
  tidx.assign(bh * cols * tcap, 0);
  for (int64_t g = 0; g < bh; ++g)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < num[g * rows + r]; ++i) {
        const int64_t c = idx[(g * rows + r) * cap + i];
        tidx[(g * cols + c) * tcap + tnum[g * cols + c]++] = r;
      }
}

int check(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const bool packed = pick(0, 2) == 0;
  const int64_t batch = packed ? 1 : pick(1, 2), kv_heads = pick(1, 2);
  const int group = static_cast<int>(pick(1, 3));
  const int64_t heads = kv_heads * group;
  const checkers::RandomBlockSparse bs(rng, packed, batch, heads, {16, 64, 128}, 300);
  const std::vector<int64_t>& kv_seq = bs.kv_seq;
  const bool with_full = pick(0, 1) == 1;
  std::vector<int64_t> tpnum, tpidx, tfnum, tfidx;
  int64_t tcap = 1;
  transpose(bs.pnum, bs.pidx, bs.lb * bs.lh, bs.QB, bs.cap, bs.KB, tpnum, tpidx, tcap);
  transpose(bs.fnum, bs.fidx, bs.lb * bs.lh, bs.QB, bs.cap, bs.KB, tfnum, tfidx, tcap);
  sm80::BlockSparseBwdParams p{};
  auto& f = p.fwd;
  f.heads = static_cast<int>(heads);
  f.kv_heads = static_cast<int>(kv_heads);
  bs.set_pattern(f.pattern, pick(0, 1) == 1);
  f.kv_partial = bs.partial();
  p.q_partial = bs.array(tpnum, tpidx, bs.KB, tcap);
  if (with_full) {
    f.kv_full = bs.full();
    p.q_full = bs.array(tfnum, tfidx, bs.KB, tcap);
  }
  f.packed = packed;
  f.total_q_tiles = bs.q_tiles.back();
  p.total_kv_tiles = bs.kv_tiles.back();
  f.q_split = bs.qbs > kBlock ? static_cast<int>(bs.qbs / kBlock) : 1;
  f.kv_split = bs.kbs > kBlock ? static_cast<int>(bs.kbs / kBlock) : 1;
  for (int64_t b = 0; b < batch; ++b)
    for (int h_kv = 0; h_kv < kv_heads; ++h_kv) {
      Triples want, got;
      for (int h = h_kv * group; h < (h_kv + 1) * group; ++h) {
        policy::BlockSparsePolicy pol = f.pattern;
        pol.kv_partial = f.kv_partial.at(b, h, packed);
        pol.kv_full = f.kv_full.at(b, h, packed);
        checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) { want.emplace(h, q, k); });
      }
      std::vector<int> keys(kv_seq.back(), 0);
      for (int64_t t = 0; t < sm80::BlockSparseKeySchedule::num_kv_tiles(p); ++t) {
        const int bad = run_tile<sm80::BlockSparseKeySchedule>(p, t, h_kv, b, group, got, keys, checks);
        if (bad) return bad;
      }
      for (int c : keys)
        if (c != 1) return 8;
      if (got != want) return 9;
    }
  return 0;
}
"""
)


GNA_CHECKER = (
    COMMON
    + r"""
// GNA, rank 1-3 with dilation, stride and causal dims, padded to rank 3 as the CUDA binding pads it (as
// tests/test_sm80_bwd_host.py); every query head of a group has the KV head's pattern.
template <int R>
int check_rank(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  policy::GnaPolicy<R> pol;
  policy::GnaPolicy<3> pad;
  checkers::random_gna_problem<R>(rng, pol, pad);
  int64_t tokens = 1;
  for (int i = 0; i < R; ++i) tokens *= pol.dim[i].length;
  sm80::GnaBwdParams p{};
  p.fwd.kv_heads = static_cast<int>(pick(1, 2));
  const int group = static_cast<int>(pick(1, 3));
  p.fwd.heads = p.fwd.kv_heads * group;
  p.fwd.policy = pad;
  for (int h_kv = 0; h_kv < p.fwd.kv_heads; ++h_kv) {
    Triples want, got;
    checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) {
      for (int h = h_kv * group; h < (h_kv + 1) * group; ++h) want.emplace(h, q, k);
    });
    std::vector<int> keys(tokens, 0);
    for (int64_t u = 0; u < sm80::GnaKeySchedule::num_kv_tiles(p); ++u) {
      const int bad = run_tile<sm80::GnaKeySchedule>(p, u, h_kv, 0, group, got, keys, checks);
      if (bad) return bad;
    }
    for (int c : keys)
      if (c != 1) return 8;
    if (got != want) return 9;
  }
  return 0;
}

int check(std::mt19937& rng, long& checks) {
  const int rank = static_cast<int>(std::uniform_int_distribution<int>(1, 3)(rng));
  return rank == 1 ? check_rank<1>(rng, checks) : rank == 2 ? check_rank<2>(rng, checks) : check_rank<3>(rng, checks);
}
"""
)


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("family", ["gna", "strided_shard", "block_sparse"])
def test_key_schedule_matches_policy(tmp_path: Path, family: str, seed: int) -> None:
    source = {"gna": GNA_CHECKER, "strided_shard": S2_CHECKER, "block_sparse": BLOCK_SPARSE_CHECKER}[family]
    out = run_host_checker(tmp_path, f"{family}_key_checker", source, [str(seed)], cuda_headers=True)
    assert out.startswith("ok ")
