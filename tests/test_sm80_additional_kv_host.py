"""GNA's fused additional KV in the sm80 schedules, on the host (no GPU).

The forward's schedule (``GnaSchedule``, also the dQ kernel's) visits the neighbourhood KV tiles, then the additional
tiles; the dK/dV kernel covers the additional keys with ``GnaAdditionalKeySchedule``. The checker below compiles with
the host compiler and, on random rank 1-3 problems with GQA and 0 to 200 additional tokens, runs every CTA through the
schedules as the kernels do, including each visited tile's mask mode (``kv_mask_mode``: no mask, the per-dim window
test, or padding rows only), and proves that

- forward / dQ: every query attends exactly the policy's neighbourhood pairs plus every additional row, each once; the
  additional rows are read from add_k / add_v (row indices in [0, N_add)); tiles fit the 64-row kernel block;
- dK/dV: over all additional key tiles and their steps, the (query head, query token, additional row) triples are
  every such triple of the KV head's group, each once; every additional row is a key row of exactly one tile.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toolchain import needs_cxx, run_host_checker

CHECKER = r"""
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "random_problems.hpp"
#include "natten_like/sm80/fmha_bwd_schedules.hpp"

using namespace natten_like;
constexpr int kBlock = 64;

// The forward kernel's decision for key row c (of `rows`; c >= rows is padding, x[0] = -1) of a tile with mask mode
// `mode`, for a query with window [wb, we).
bool attended(int32_t mode, const int32_t* x, const int32_t* wb, const int32_t* we) {
  if (mode == sm80::kMaskNone) return true;
  if (mode == sm80::kMaskAll) return x[0] >= 0;
  bool inside = true;
  for (int i = 0; i < 3; ++i) inside = inside && wb[i] <= x[i] && x[i] < we[i];
  return inside;
}

template <int R>
int check(std::mt19937& rng, long& checks) {
  policy::GnaPolicy<R> pol;
  policy::GnaPolicy<3> pad;
  checkers::random_gna_problem<R>(rng, pol, pad);
  int64_t tokens = 1;
  for (int i = 0; i < R; ++i) tokens *= pol.dim[i].length;
  sm80::GnaBwdParams p{};
  sm80::GnaFwdParams& f = p.fwd;
  f.policy = pad;
  f.tokens = tokens;
  f.kv_heads = static_cast<int>(checkers::pick(rng, 1, 2));
  const int group = static_cast<int>(checkers::pick(rng, 1, 3));
  f.heads = f.kv_heads * group;
  f.num_additional = checkers::pick(rng, 0, 3) == 0 ? 0 : checkers::pick(rng, 1, 200);
  f.additional_block = kBlock;  // what the launchers set
  const int64_t n_add = f.num_additional;

  // Forward / dQ: per Q tile, the pairs the kernel attends.
  std::set<std::pair<int64_t, int64_t>> want, got;  // (query token, key token or tokens + additional row)
  checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) { want.emplace(q, k); });
  for (int64_t q = 0; q < tokens; ++q)
    for (int64_t a = 0; a < n_add; ++a) want.emplace(q, tokens + a);
  for (int64_t t = 0; t < sm80::GnaSchedule::num_q_tiles(f); ++t) {
    const sm80::GnaSchedule s(f, t, 0, 0);
    const int nq = s.q_rows();
    if (nq > kBlock) return 2;
    std::vector<int64_t> qtok(nq);
    std::vector<int32_t> wb(3 * nq), we(3 * nq);
    for (int r = 0; r < nq; ++r) qtok[r] = s.q_row(f, r, &wb[3 * r], &we[3 * r]);
    int64_t additional_tiles = 0;
    for (int64_t e = 0; e < s.count(); ++e) {
      int rows;
      bool full;
      const auto kv = s.kv_tile(f, e, rows, full);
      if (rows < 0 || rows > kBlock) return 3;
      const bool add = sm80::is_additional<sm80::GnaSchedule>(kv);
      if (add && e < s.count() - f.num_additional_tiles()) return 4;  // additional tiles come last
      additional_tiles += add;
      const int32_t mode = sm80::kv_mask_mode(add, full, rows, kBlock);
      for (int c = 0; c < kBlock; ++c) {
        int32_t x[3] = {-1, 0, 0};  // padding rows, as the kernel fills them
        int64_t key = -1;
        if (c < rows) {
          key = s.kv_row(f, kv, c, x);
          if (add && (key < 0 || key >= n_add || x[0] != 0 || x[1] != 0 || x[2] != 0)) return 5;
          if (!add && (key < 0 || key >= tokens)) return 6;
        }
        for (int r = 0; r < nq; ++r) {
          if (!attended(mode, x, &wb[3 * r], &we[3 * r])) continue;
          if (c >= rows) return 7;  // a padding key attended
          if (!got.emplace(qtok[r], add ? tokens + key : key).second) return 8;  // a pair attended twice
          ++checks;
        }
      }
    }
    if (additional_tiles != f.num_additional_tiles()) return 9;
  }
  if (got != want) return 10;

  // dK/dV of the additional keys: the dK/dV kernel's use of the key schedule (window test on real rows).
  using AddSchedule = sm80::GnaAdditionalKeySchedule<kBlock>;
  for (int h_kv = 0; h_kv < f.kv_heads; ++h_kv) {
    std::set<std::tuple<int, int64_t, int64_t>> triples;
    std::vector<int> keys(n_add, 0);
    for (int64_t u = 0; u < AddSchedule::num_kv_tiles(p); ++u) {
      const AddSchedule s(p, u, h_kv, 0);
      const int nk = s.kv_rows();
      if (nk < 1 || nk > kBlock) return 11;
      std::vector<int64_t> ktok(nk);
      std::vector<int32_t> kx(3 * nk);
      for (int c = 0; c < nk; ++c) {
        ktok[c] = s.kv_row(p, c, &kx[3 * c]);
        if (ktok[c] < 0 || ktok[c] >= n_add) return 12;
        ++keys[ktok[c]];
      }
      for (int64_t e = 0; e < s.count(p); ++e) {
        int h, rows;
        bool full;
        const auto q = s.q_tile(p, e, h, rows, full);
        if (rows < 1 || rows > kBlock || h < h_kv * group || h >= (h_kv + 1) * group) return 13;
        for (int r = 0; r < rows; ++r) {
          int32_t wb[3], we[3];
          const int64_t qtok = s.q_row(p, q, r, wb, we);
          if (qtok < 0 || qtok >= tokens) return 14;
          for (int c = 0; c < nk; ++c) {
            bool inside = true;
            for (int i = 0; i < 3; ++i) inside = inside && wb[i] <= kx[3 * c + i] && kx[3 * c + i] < we[i];
            if (!inside) return 15;  // every query attends every additional key
            if (!triples.emplace(h, qtok, ktok[c]).second) return 16;
            ++checks;
          }
        }
      }
    }
    for (int c : keys)
      if (c != 1) return 17;
    if (static_cast<int64_t>(triples.size()) != group * tokens * n_add) return 18;
  }
  return 0;
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  long checks = 0;
  for (int i = 0; i < 150; ++i) {
    const int rank = 1 + i % 3;
    const int bad = rank == 1 ? check<1>(rng, checks) : rank == 2 ? check<2>(rng, checks) : check<3>(rng, checks);
    if (bad) {
      std::printf("mismatch %d in problem %d (rank %d)\n", bad, i, rank);
      return 1;
    }
  }
  std::printf("ok %ld\n", checks);
  return 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1])
def test_additional_kv_schedules_match_policy(tmp_path: Path, seed: int) -> None:
    out = run_host_checker(tmp_path, "additional_kv_checker", CHECKER, [str(seed)], opt="-O2", cuda_headers=True)
    assert out.startswith("ok ")
