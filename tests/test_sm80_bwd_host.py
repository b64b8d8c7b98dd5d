"""The index logic of the sm80 GNA backward, checked on the host (no GPU).

The dK/dV kernel walks, for each KV tile, the Q tiles that visit it through ``sm80/gna_q_tile_iterator.hpp`` (plain
C++). This test compiles that header with the host compiler and proves it equal to the policy's definition
(``GnaPolicy::for_each_q_tile``: tiles, order and full flags; ``tile_rows``; ``fill_mask`` through the per-query window
test the kernel runs) on random problems of rank 1-3 with dilation, stride and causal dims, padded to rank 3 exactly as
the CUDA binding pads them. It also checks that the Q-side and KV-side iterators describe the same set of (Q tile, KV
tile, full) triples, which is what makes the dQ and dK/dV kernels agree on every pair. With nvcc and the CUTLASS
headers it also evaluates the kernels' register and smem layout algebra with CuTe on the host.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from toolchain import needs_cxx, needs_nvcc, run_host_checker, run_nvcc_checker

CHECKER = r"""
#include <cstdio>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "natten_like/sm80/gna_q_tile_iterator.hpp"
#include "random_problems.hpp"
#include "natten_like/sm80/gna_tile_iterator.hpp"

using namespace natten_like;

template <int R>
int check(std::mt19937& rng, long& checks) {
  policy::GnaPolicy<R> pol;
  policy::GnaPolicy<3> pad;
  checkers::random_gna_problem<R>(rng, pol, pad);
  if (pad.num_q_tiles() != pol.num_q_tiles() || pad.num_kv_tiles() != pol.num_kv_tiles()) return 1;
  std::vector<int64_t> qrows(pol.max_q_rows()), kvrows(pol.max_kv_rows());
  std::vector<unsigned char> mask(pol.max_q_rows() * pol.max_kv_rows());
  std::set<std::tuple<int64_t, int64_t, bool>> from_kv, from_q;
  for (int64_t t = 0; t < pol.num_q_tiles(); ++t) {
    const sm80::GnaKvTileIterator<3> it(pad, t);
    for (int64_t e = 0; e < it.count; ++e) {
      int64_t u[3];
      bool full;
      const sm80::GnaTileBox<3> kv = it.visit(pad, e, u, full);
      from_q.emplace(t, pad.encode(pad.tk, kv.group, u), full);
    }
  }
  for (int64_t u = 0; u < pol.num_kv_tiles(); ++u) {
    std::vector<std::pair<int64_t, bool>> visits;
    pol.for_each_q_tile(u, [&](int64_t t, bool full) { visits.emplace_back(t, full); });
    const sm80::GnaQTileIterator<3> it(pad, u);
    if (it.count != static_cast<int64_t>(visits.size())) return 2;
    const int64_t nk = pol.kv_tile_rows(u, kvrows.data());
    if (it.kv.num_rows() != nk) return 3;
    std::vector<int32_t> kx(nk * 3);
    for (int64_t c = 0; c < nk; ++c) {
      if (it.kv.row(pad, static_cast<int32_t>(c), &kx[c * 3]) != kvrows[c]) return 4;
    }
    for (int64_t e = 0; e < it.count; ++e) {
      int64_t t[3];
      bool full;
      const sm80::GnaTileBox<3> q = it.visit(pad, e, t, full);
      if (pad.encode(pad.tq, q.group, t) != visits[e].first || full != visits[e].second) return 5;
      from_kv.emplace(visits[e].first, u, full);
      const int64_t nq = pol.q_tile_rows(visits[e].first, qrows.data());
      if (q.num_rows() != nq) return 6;
      pol.fill_mask(visits[e].first, u, mask.data());
      bool all = true;
      for (int64_t r = 0; r < nq; ++r) {
        int32_t x[3], wb[3], we[3];
        if (q.row(pad, static_cast<int32_t>(r), x) != qrows[r]) return 7;
        it.q_row_window(pad, x, wb, we);
        for (int64_t c = 0; c < nk; ++c) {
          bool inside = true;
          for (int i = 0; i < 3; ++i) inside = inside && wb[i] <= kx[c * 3 + i] && kx[c * 3 + i] < we[i];
          if (inside != (mask[r * nk + c] != 0)) return 8;
          all = all && inside;
          ++checks;
        }
      }
      // A full pair must need no mask at all (the kernel skips the window test on it).
      if (full && !all) return 9;
    }
  }
  if (from_kv != from_q) return 10;
  return 0;
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  long checks = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int rank = 1 + trial % 3;
    const int err = rank == 1 ? check<1>(rng, checks) : rank == 2 ? check<2>(rng, checks) : check<3>(rng, checks);
    if (err != 0) {
      std::printf("mismatch %d in trial %d (rank %d)\n", err, trial, rank);
      return 1;
    }
  }
  std::printf("ok %ld mask elements\n", checks);
  return 0;
}
"""


# The register and smem layout algebra of the backward kernels, evaluated on the host with CuTe (needs nvcc, no GPU):
# - each S^T chunk of the dK/dV kernel (keys x kQChunk queries) and each S tile of the dQ kernel keeps a row in one warp
#   and one lane quad, and its accumulator reinterpreted as the A operand holds exactly the coordinates the MMA expects
#   (so P^T / dS^T / dS feed dV, dK, dQ without smem);
# - a chunk of kQChunk query rows (dK/dV kernel) or kKvChunk key rows (dQ kernel) of a gathered (64, cols) tile is the
#   chunk layout at offset chunk * rows * row stride, for the swizzled and the row-padded (D + D_v > 256) layouts, with
#   D_v != D too; the padded rows keep 16-byte chunks contiguous and an ldmatrix's 8 rows in 8 distinct bank groups;
# - the transposed views (cols, rows) address the same element as the row views;
# - the tiles fit the storage the kernels declare for them.
LAYOUT_CHECKER = r"""
#include <cstdio>

#include "natten_like/sm80/sm80_fmha_bwd_kernel.hpp"

using namespace cute;
namespace nl = natten_like::sm80;

template <class Mma, int M, int N>
int check_acc(Mma& mma, int threads) {
  int bad = 0;
  for (int tid = 0; tid < threads; ++tid) {
    auto thr = mma.get_slice(tid);
    Tensor cS = thr.partition_C(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
    Tensor rc = make_tensor(cS.data(), nl::detail::acc_rowcol(cS.layout()));
    for (int mi = 0; mi < size<0>(rc); ++mi) {
      for (int ni = 0; ni < size<1>(rc); ++ni) {
        bad += get<0>(rc(mi, ni)) != get<0>(rc(mi, 0)) || get<1>(rc(mi, ni)) != get<1>(rc(0, ni));
      }
      bad += get<0>(rc(mi, 0)) / 16 != tid / 32 || get<0>(rc(mi, 0)) % 8 != (tid % 32) / 4;
    }
    Tensor p = make_tensor(cS.data(), nl::detail::acc_as_a_operand(cS.layout()));
    Tensor cA = thr.partition_A(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
    bad += size(p) != size(cA);
    for (int i = 0; i < size(cA); ++i) bad += p(i) != cA(i);
  }
  return bad;
}

// A (64, kCols) tile of layout L and its chunks of kRows rows (layout C).
template <class T, int kCols, int kRows, class L, class C>
int check_chunks(L tile, C chunk) {
  constexpr int kStride = T::template kRowStride<kCols>;
  int bad = cosize(tile) > 64 * kStride;
  for (int r = 0; r < 64; ++r) {
    for (int d = 0; d < kCols; ++d) {
      const int c = r / kRows, rc = r % kRows;
      bad += tile(r, d) != c * kRows * kStride + chunk(rc, d);
      if (d % 8 == 0) {
        bad += tile(r, d) % 8 != 0;  // 16-byte chunks: 8 contiguous elements at 16-byte aligned offsets
        for (int j = 1; j < 8; ++j) bad += tile(r, d + j) != tile(r, d) + j;
      }
    }
    if (r % 8 == 0) {  // the 16-byte bank group of column 0 of rows r .. r + 7 (one ldmatrix): all distinct
      int seen = 0;
      for (int j = 0; j < 8; ++j) seen |= 1 << ((tile(r + j, 0) * 2 / 16) % 8);
      bad += seen != 0xff;
    }
  }
  return bad;
}

// A transposed (kCols, kRows) view Ct of a (kRows, kCols) layout C.
template <int kRows, int kCols, class C, class Ct>
int check_transposed(C chunk, Ct chunk_t) {
  int bad = 0;
  for (int r = 0; r < kRows; ++r) {
    for (int d = 0; d < kCols; ++d) bad += chunk_t(d, r) != chunk(r, d);
  }
  return bad;
}

template <class Element, int D, int DV = D>
int check() {
  using T = nl::Sm80FmhaBwdTraits<Element, D, 64, 64, DV>;
  typename T::TiledMma mma;
  int bad = check_acc<decltype(mma), T::kBlockN, T::kQChunk>(mma, T::kThreads);
  bad += check_acc<decltype(mma), T::kBlockM, T::kKvChunk>(mma, T::kThreads);
  bad += T::kPadded != (D + DV > 256) || T::kDkDvGroups != (D + DV > 256 ? 2 : 1);
  bad += cosize(typename T::SmemLayoutQ{}) > T::kTileElems || cosize(typename T::SmemLayoutK{}) > T::kTileElems;
  bad += cosize(typename T::SmemLayoutDO{}) > T::kTileElemsV || cosize(typename T::SmemLayoutV{}) > T::kTileElemsV;
  bad += check_chunks<T, D, T::kQChunk>(typename T::SmemLayoutQ{}, typename T::SmemLayoutQc{});
  bad += check_chunks<T, DV, T::kQChunk>(typename T::SmemLayoutDO{}, typename T::SmemLayoutDOc{});
  bad += check_chunks<T, D, T::kKvChunk>(typename T::SmemLayoutK{}, typename T::SmemLayoutKc{});
  bad += check_chunks<T, DV, T::kKvChunk>(typename T::SmemLayoutV{}, typename T::SmemLayoutVc{});
  bad += check_transposed<T::kQChunk, D>(typename T::SmemLayoutQc{}, typename T::SmemLayoutQct{});
  bad += check_transposed<T::kQChunk, DV>(typename T::SmemLayoutDOc{}, typename T::SmemLayoutDOct{});
  bad += check_transposed<T::kKvChunk, D>(typename T::SmemLayoutKc{}, typename T::SmemLayoutKct{});
  return bad;
}

int main() {
  const int bad = check<cutlass::half_t, 32>() + check<cutlass::bfloat16_t, 32>() + check<cutlass::half_t, 64>() +
                  check<cutlass::bfloat16_t, 64>() + check<cutlass::half_t, 128>() + check<cutlass::bfloat16_t, 128>() +
                  check<cutlass::bfloat16_t, 192, 128>() + check<cutlass::half_t, 256>();
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


# The backward's tile algorithm, emulated on the host step by step as the kernels run it (same iterators, same row
# geometry and padding conventions: zero-filled padding rows, lse -> +inf for padding rows, the need_mask rule, exp2 of
# log2-domain scores, GQA head loop in the dK/dV CTA, rows stored only below the tile's row count), against dense
# gradients computed from the definition (gna_window per dim and dilation group) in double precision. It proves the
# decomposition (every (query, key) pair counted once, every dQ/dK/dV row written once) and the conventions; the CuTe
# register plumbing is covered by the layout check and, on a GPU, by the binding's tests.
EMULATOR = r"""
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "natten_like/sm80/gna_q_tile_iterator.hpp"
#include "natten_like/sm80/gna_tile_iterator.hpp"

using namespace natten_like;
constexpr int kBlock = 64;
constexpr int D = 4;

float lse_to_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f; }

template <int R>
int check(std::mt19937& rng, double& worst, long& unmasked) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::normal_distribution<float> normal;
  policy::GnaPolicy<3> pad;
  const int off = 3 - R;
  const bool table = pick(0, 1) == 1;
  for (int i = 0; i < off; ++i) {
    pad.dim[i] = policy::GnaDim{1, 1, 1, 1, false};
    pad.tq[i] = pad.tk[i] = 1;
  }
  for (int i = off; i < 3; ++i) {
    const int64_t L = pick(2, R == 1 ? 300 : (R == 2 ? 24 : 10));
    const int64_t d = table ? 1 : pick(1, std::max<int64_t>(1, L / 3));
    const int64_t lg = L / d;
    // Tile-table problems get wide windows, so that some tile pairs are full.
    const int64_t k = pick(std::min<int64_t>(2, lg), lg);
    const int64_t kw = table ? std::max(k, pick(lg / 2, lg)) : k;
    pad.dim[i] = policy::GnaDim{L, kw, pick(1, kw), d, pick(0, 1) == 1};
    pad.tq[i] = pick(1, R == 1 ? 64 : (R == 2 ? 8 : 4));
    pad.tk[i] = pick(1, R == 1 ? 64 : (R == 2 ? 8 : 4));
    // Half the problems use the sm80 tile table (64 / 8x8 / 4x4x4): tiles of exactly kBlock rows, the only ones
    // that can run unmasked.
    if (table) pad.tq[i] = pad.tk[i] = R == 1 ? 64 : (R == 2 ? 8 : 4);
  }
  const int kv_heads = static_cast<int>(pick(1, 2)), group = static_cast<int>(pick(1, 3)), heads = kv_heads * group;
  int64_t N = 1;
  for (int i = 0; i < 3; ++i) N *= pad.dim[i].length;
  const float scale = std::uniform_real_distribution<float>(0.2f, 1.5f)(rng);
  auto randv = [&](int64_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = normal(rng);
    return v;
  };
  // [tokens, heads, D] and [tokens, heads]
  const auto q = randv(N * heads * D), dO = randv(N * heads * D), glse = randv(N * heads);
  const auto k = randv(N * kv_heads * D), v = randv(N * kv_heads * D);
  auto attends = [&](int64_t qi, int64_t kj) {
    for (int i = 2; i >= 0; --i) {
      const policy::GnaDim& dm = pad.dim[i];
      const int64_t xq = qi % dm.length, xk = kj % dm.length;
      qi /= dm.length;
      kj /= dm.length;
      if (xq % dm.dilation != xk % dm.dilation) return false;
      const int64_t g = xq % dm.dilation;
      const policy::Range w = policy::gna_window(xq / dm.dilation, dm.group_length(g), dm.window, dm.stride, dm.causal);
      if (!w.contains(xk / dm.dilation)) return false;
    }
    return true;
  };
  // Dense reference in double.
  std::vector<double> rdq(N * heads * D, 0.0), rdk(N * kv_heads * D, 0.0), rdv(N * kv_heads * D, 0.0);
  std::vector<float> lse(N * heads), out(N * heads * D), delta(N * heads);
  for (int h = 0; h < heads; ++h) {
    const int hk = h / group;
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> sc(N, -INFINITY);
      double m = -INFINITY;
      for (int64_t j = 0; j < N; ++j) {
        if (!attends(i, j)) continue;
        double s = 0;
        for (int c = 0; c < D; ++c) s += double(q[(i * heads + h) * D + c]) * k[(j * kv_heads + hk) * D + c];
        sc[j] = scale * s;
        m = std::max(m, sc[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < N; ++j) sum += std::isinf(sc[j]) ? 0.0 : std::exp(sc[j] - m);
      const double l = m + std::log(sum);
      lse[i * heads + h] = static_cast<float>(l);
      double o[D] = {0, 0, 0, 0};
      for (int64_t j = 0; j < N; ++j) {
        if (std::isinf(sc[j])) continue;
        for (int c = 0; c < D; ++c) o[c] += std::exp(sc[j] - l) * v[(j * kv_heads + hk) * D + c];
      }
      double dl = 0;
      for (int c = 0; c < D; ++c) {
        out[(i * heads + h) * D + c] = static_cast<float>(o[c]);
        dl += double(dO[(i * heads + h) * D + c]) * o[c];
      }
      dl -= glse[i * heads + h];
      delta[i * heads + h] = static_cast<float>(dl);
      for (int64_t j = 0; j < N; ++j) {
        if (std::isinf(sc[j])) continue;
        const double pij = std::exp(sc[j] - l);
        double dp = 0;
        for (int c = 0; c < D; ++c) dp += double(dO[(i * heads + h) * D + c]) * v[(j * kv_heads + hk) * D + c];
        const double ds = pij * (dp - dl);
        for (int c = 0; c < D; ++c) {
          rdv[(j * kv_heads + hk) * D + c] += pij * dO[(i * heads + h) * D + c];
          rdk[(j * kv_heads + hk) * D + c] += scale * ds * q[(i * heads + h) * D + c];
          rdq[(i * heads + h) * D + c] += scale * ds * k[(j * kv_heads + hk) * D + c];
        }
      }
    }
  }
  const float scale_log2 = scale * 1.4426950408889634f;
  std::vector<float> dq(N * heads * D, NAN), dk(N * kv_heads * D, NAN), dv(N * kv_heads * D, NAN);
  std::vector<int> written_q(N * heads, 0), written_kv(N * kv_heads, 0);

  // dK/dV kernel: one CTA per (KV tile, KV head).
  for (int64_t u = 0; u < pad.num_kv_tiles(); ++u) {
    for (int hk = 0; hk < kv_heads; ++hk) {
      const sm80::GnaQTileIterator<3> it(pad, u);
      const int kv_rows = static_cast<int>(it.kv.num_rows());
      if (kv_rows > kBlock) return 1;
      float K[kBlock][D] = {}, V[kBlock][D] = {}, dK[kBlock][D] = {}, dV[kBlock][D] = {};
      int64_t kv_token[kBlock] = {};
      int32_t kx[kBlock][3];
      for (int r = 0; r < kBlock; ++r) {
        kx[r][0] = -1;
        kx[r][1] = kx[r][2] = 0;
        if (r < kv_rows) kv_token[r] = it.kv.row(pad, r, kx[r]);
        for (int c = 0; c < D && r < kv_rows; ++c) {
          K[r][c] = k[(kv_token[r] * kv_heads + hk) * D + c];
          V[r][c] = v[(kv_token[r] * kv_heads + hk) * D + c];
        }
      }
      for (int64_t step = 0; step < it.count * group; ++step) {
        const int h = hk * group + static_cast<int>(step / it.count);
        int64_t t[3];
        bool full;
        const sm80::GnaTileBox<3> qb = it.visit(pad, step % it.count, t, full);
        const int rows = static_cast<int>(qb.num_rows());
        if (rows > kBlock) return 2;
        float Q[kBlock][D] = {}, dOt[kBlock][D] = {}, lse2[kBlock], dl[kBlock];
        int32_t wb[kBlock][3] = {}, we[kBlock][3] = {};
        for (int r = 0; r < kBlock; ++r) {
          lse2[r] = INFINITY;
          dl[r] = 0.f;
          if (r >= rows) continue;
          int32_t x[3];
          const int64_t token = qb.row(pad, r, x);
          it.q_row_window(pad, x, wb[r], we[r]);
          lse2[r] = lse_to_log2(lse[token * heads + h]);
          dl[r] = delta[token * heads + h];
          for (int c = 0; c < D; ++c) {
            Q[r][c] = q[(token * heads + h) * D + c];
            dOt[r][c] = dO[(token * heads + h) * D + c];
          }
        }
        const bool need_mask = !full || rows < kBlock || kv_rows < kBlock;
        unmasked += !need_mask;
        for (int j = 0; j < kBlock; ++j) {
          for (int i = 0; i < kBlock; ++i) {
            float s = 0, dp = 0;
            for (int c = 0; c < D; ++c) {
              s += K[j][c] * Q[i][c];
              dp += V[j][c] * dOt[i][c];
            }
            float x = s * scale_log2;
            if (need_mask) {
              bool inside = true;
              for (int d = 0; d < 3; ++d) inside = inside && wb[i][d] <= kx[j][d] && kx[j][d] < we[i][d];
              if (!inside) x = -INFINITY;
            }
            const float p = std::exp2(x - lse2[i]);
            const float ds = p * (dp - dl[i]);
            for (int c = 0; c < D; ++c) {
              dV[j][c] += p * dOt[i][c];
              dK[j][c] += ds * Q[i][c];
            }
          }
        }
      }
      for (int r = 0; r < kv_rows; ++r) {
        ++written_kv[kv_token[r] * kv_heads + hk];
        for (int c = 0; c < D; ++c) {
          dk[(kv_token[r] * kv_heads + hk) * D + c] = dK[r][c] * scale;
          dv[(kv_token[r] * kv_heads + hk) * D + c] = dV[r][c];
        }
      }
    }
  }

  // dQ kernel: one CTA per (Q tile, head).
  for (int64_t t = 0; t < pad.num_q_tiles(); ++t) {
    for (int h = 0; h < heads; ++h) {
      const int hk = h / group;
      const sm80::GnaKvTileIterator<3> it(pad, t);
      const int q_rows = static_cast<int>(it.q.num_rows());
      float Q[kBlock][D] = {}, dOt[kBlock][D] = {}, dQ[kBlock][D] = {}, lse2[kBlock], dl[kBlock];
      int64_t q_token[kBlock] = {};
      int32_t wb[kBlock][3] = {}, we[kBlock][3] = {};
      for (int r = 0; r < kBlock; ++r) {
        lse2[r] = INFINITY;
        dl[r] = 0.f;
        if (r >= q_rows) continue;
        int32_t x[3];
        q_token[r] = it.q.row(pad, r, x);
        it.q_row_window(pad, x, wb[r], we[r]);
        lse2[r] = lse_to_log2(lse[q_token[r] * heads + h]);
        dl[r] = delta[q_token[r] * heads + h];
        for (int c = 0; c < D; ++c) {
          Q[r][c] = q[(q_token[r] * heads + h) * D + c];
          dOt[r][c] = dO[(q_token[r] * heads + h) * D + c];
        }
      }
      for (int64_t e = 0; e < it.count; ++e) {
        int64_t u[3];
        bool full;
        const sm80::GnaTileBox<3> kb = it.visit(pad, e, u, full);
        const int rows = static_cast<int>(kb.num_rows());
        float K[kBlock][D] = {}, V[kBlock][D] = {};
        int32_t kx[kBlock][3];
        for (int r = 0; r < kBlock; ++r) {
          kx[r][0] = -1;
          kx[r][1] = kx[r][2] = 0;
          if (r >= rows) continue;
          const int64_t token = kb.row(pad, r, kx[r]);
          for (int c = 0; c < D; ++c) {
            K[r][c] = k[(token * kv_heads + hk) * D + c];
            V[r][c] = v[(token * kv_heads + hk) * D + c];
          }
        }
        const bool need_mask = !full || rows < kBlock;
        unmasked += !need_mask;
        for (int i = 0; i < kBlock; ++i) {
          for (int j = 0; j < kBlock; ++j) {
            float s = 0, dp = 0;
            for (int c = 0; c < D; ++c) {
              s += Q[i][c] * K[j][c];
              dp += dOt[i][c] * V[j][c];
            }
            float x = s * scale_log2;
            if (need_mask) {
              bool inside = true;
              for (int d = 0; d < 3; ++d) inside = inside && wb[i][d] <= kx[j][d] && kx[j][d] < we[i][d];
              if (!inside) x = -INFINITY;
            }
            const float ds = std::exp2(x - lse2[i]) * (dp - dl[i]);
            for (int c = 0; c < D; ++c) dQ[i][c] += ds * K[j][c];
          }
        }
      }
      for (int r = 0; r < q_rows; ++r) {
        ++written_q[q_token[r] * heads + h];
        for (int c = 0; c < D; ++c) dq[(q_token[r] * heads + h) * D + c] = dQ[r][c] * scale;
      }
    }
  }

  for (int w : written_q) if (w != 1) return 3;
  for (int w : written_kv) if (w != 1) return 4;
  auto compare = [&](const std::vector<float>& got, const std::vector<double>& want) {
    for (size_t i = 0; i < got.size(); ++i) {
      const double err = std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i]));
      if (!(err <= 1e-3)) return false;
      worst = std::max(worst, err);
    }
    return true;
  };
  if (!compare(dq, rdq)) return 5;
  if (!compare(dk, rdk)) return 6;
  if (!compare(dv, rdv)) return 7;
  return 0;
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  double worst = 0;
  long unmasked = 0;
  for (int trial = 0; trial < 30; ++trial) {
    const int rank = 1 + trial % 3;
    const int err = rank == 1 ? check<1>(rng, worst, unmasked)
                    : rank == 2 ? check<2>(rng, worst, unmasked)
                                : check<3>(rng, worst, unmasked);
    if (err != 0) {
      std::printf("mismatch %d in trial %d (rank %d)\n", err, trial, rank);
      return 1;
    }
  }
  if (unmasked == 0) {
    std::printf("no unmasked tile pair exercised\n");
    return 1;
  }
  std::printf("ok worst relative error %g, %ld unmasked tile pairs\n", worst, unmasked);
  return 0;
}
"""


# On a machine with a GPU: the kernels themselves (no torch, no binding), on random GNA problems of rank 1-3 with the
# sm80 tile table, GQA, dilation, stride and causal dims, against dense double-precision gradients of the
# bf16/fp16-rounded inputs. Out and lse come from the same dense reference, so this checks the backward alone.
GPU_CHECKER = r"""
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "natten_like/sm80/sm80_fmha_bwd_kernel.hpp"

using namespace natten_like;

#define CHECK_CUDA(x)                                                                     \
  do {                                                                                    \
    cudaError_t err_ = (x);                                                               \
    if (err_ != cudaSuccess) {                                                            \
      std::printf("cuda error %s at line %d\n", cudaGetErrorString(err_), __LINE__);      \
      std::exit(2);                                                                       \
    }                                                                                     \
  } while (0)

template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, sizeof(T) * std::max<size_t>(h.size(), 1)));
  CHECK_CUDA(cudaMemcpy(d, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice));
  return d;
}

template <class Element, int D>
int run(std::mt19937& rng, int rank, double& worst) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::normal_distribution<float> normal;
  policy::GnaPolicy<3> pol;
  const int off = 3 - rank;
  for (int i = 0; i < off; ++i) {
    pol.dim[i] = policy::GnaDim{1, 1, 1, 1, false};
    pol.tq[i] = pol.tk[i] = 1;
  }
  for (int i = off; i < 3; ++i) {
    const int64_t L = pick(2, rank == 1 ? 300 : (rank == 2 ? 20 : 8));
    const int64_t d = pick(0, 2) == 0 ? pick(1, std::max<int64_t>(1, L / 3)) : 1;
    const int64_t lg = L / d;
    const int64_t k = pick(std::min<int64_t>(2, lg), lg);
    pol.dim[i] = policy::GnaDim{L, k, pick(1, k), d, pick(0, 1) == 1};
    pol.tq[i] = pol.tk[i] = rank == 1 ? 64 : (rank == 2 ? 8 : 4);
  }
  const int B = static_cast<int>(pick(1, 2)), kv_heads = static_cast<int>(pick(1, 2));
  const int group = static_cast<int>(pick(1, 2)), H = kv_heads * group;
  int64_t N = 1;
  for (int i = 0; i < 3; ++i) N *= pol.dim[i].length;
  const float scale = 1.f / std::sqrt(float(D));
  auto rnd = [&](int64_t n) {
    std::vector<Element> v(n);
    for (auto& x : v) x = Element(normal(rng));
    return v;
  };
  const auto q = rnd(B * N * H * D), dO = rnd(B * N * H * D);
  const auto k = rnd(B * N * kv_heads * D), v = rnd(B * N * kv_heads * D);
  std::vector<float> glse(B * N * H);
  for (auto& x : glse) x = 0.1f * normal(rng);
  auto attends = [&](int64_t qi, int64_t kj) {
    for (int i = 2; i >= 0; --i) {
      const policy::GnaDim& dm = pol.dim[i];
      const int64_t xq = qi % dm.length, xk = kj % dm.length;
      qi /= dm.length;
      kj /= dm.length;
      if (xq % dm.dilation != xk % dm.dilation) return false;
      const policy::Range w =
          policy::gna_window(xq / dm.dilation, dm.group_length(xq % dm.dilation), dm.window, dm.stride, dm.causal);
      if (!w.contains(xk / dm.dilation)) return false;
    }
    return true;
  };
  auto f = [](Element x) { return double(float(x)); };
  std::vector<Element> out(B * N * H * D);
  std::vector<float> lse(B * N * H);
  std::vector<double> rdq(B * N * H * D, 0.0), rdk(B * N * kv_heads * D, 0.0), rdv(B * N * kv_heads * D, 0.0);
  std::vector<double> sc(N);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      const int hk = h / group;
      auto Q = [&](int64_t i, int c) { return f(q[((b * N + i) * H + h) * D + c]); };
      auto G = [&](int64_t i, int c) { return f(dO[((b * N + i) * H + h) * D + c]); };
      auto K = [&](int64_t j, int c) { return f(k[((b * N + j) * kv_heads + hk) * D + c]); };
      auto V = [&](int64_t j, int c) { return f(v[((b * N + j) * kv_heads + hk) * D + c]); };
      for (int64_t i = 0; i < N; ++i) {
        double m = -INFINITY;
        for (int64_t j = 0; j < N; ++j) {
          sc[j] = -INFINITY;
          if (!attends(i, j)) continue;
          double s = 0;
          for (int c = 0; c < D; ++c) s += Q(i, c) * K(j, c);
          sc[j] = scale * s;
          m = std::max(m, sc[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < N; ++j) sum += std::isinf(sc[j]) ? 0.0 : std::exp(sc[j] - m);
        const double l = m + std::log(sum);
        const int64_t row = (b * N + i) * H + h;
        lse[row] = float(l);
        std::vector<double> o(D, 0.0);
        for (int64_t j = 0; j < N; ++j) {
          if (std::isinf(sc[j])) continue;
          for (int c = 0; c < D; ++c) o[c] += std::exp(sc[j] - l) * V(j, c);
        }
        double dl = 0;
        for (int c = 0; c < D; ++c) {
          out[row * D + c] = Element(float(o[c]));
          dl += G(i, c) * f(out[row * D + c]);
        }
        dl -= glse[row];
        for (int64_t j = 0; j < N; ++j) {
          if (std::isinf(sc[j])) continue;
          const double pij = std::exp(sc[j] - double(lse[row]));
          double dp = 0;
          for (int c = 0; c < D; ++c) dp += G(i, c) * V(j, c);
          const double ds = pij * (dp - dl);
          const int64_t kvrow = (b * N + j) * kv_heads + hk;
          for (int c = 0; c < D; ++c) {
            rdv[kvrow * D + c] += pij * G(i, c);
            rdk[kvrow * D + c] += scale * ds * Q(i, c);
            rdq[row * D + c] += scale * ds * K(j, c);
          }
        }
      }
    }
  }

  sm80::GnaBwdParams p{};
  p.fwd.q = upload(q);
  p.fwd.k = upload(k);
  p.fwd.v = upload(v);
  p.fwd.out = upload(out);
  p.fwd.lse = upload(lse);
  p.fwd.q_batch_stride = N * H * D, p.fwd.q_token_stride = H * D, p.fwd.q_head_stride = D;
  p.fwd.k_batch_stride = N * kv_heads * D, p.fwd.k_token_stride = kv_heads * D, p.fwd.k_head_stride = D;
  p.fwd.v_batch_stride = N * kv_heads * D, p.fwd.v_token_stride = kv_heads * D, p.fwd.v_head_stride = D;
  p.fwd.o_batch_stride = N * H * D, p.fwd.o_token_stride = H * D, p.fwd.o_head_stride = D;
  p.fwd.batch = B;
  p.fwd.tokens = N;
  p.fwd.heads = H;
  p.fwd.kv_heads = kv_heads;
  p.fwd.head_dim = D;
  p.fwd.head_dim_v = D;
  p.fwd.scale = scale;
  p.fwd.policy = pol;
  p.d_out = upload(dO);
  p.do_batch_stride = N * H * D, p.do_token_stride = H * D, p.do_head_stride = D;
  p.grad_lse = upload(glse);
  std::vector<Element> nan_q(q.size(), Element(NAN)), nan_kv(k.size(), Element(NAN));
  Element* dq = upload(nan_q);
  Element* dk = upload(nan_kv);
  Element* dv = upload(nan_kv);
  p.dq = dq, p.dk = dk, p.dv = dv;
  p.dq_batch_stride = N * H * D, p.dq_token_stride = H * D, p.dq_head_stride = D;
  p.dk_batch_stride = N * kv_heads * D, p.dk_token_stride = kv_heads * D, p.dk_head_stride = D;
  p.dv_batch_stride = N * kv_heads * D, p.dv_token_stride = kv_heads * D, p.dv_head_stride = D;
  std::vector<float> zeros(B * N * H, 0.f);
  p.delta = upload(zeros);
  CHECK_CUDA((sm80::launch_sm80_gna_bwd<Element, D, 64, 64>(p, nullptr)));
  CHECK_CUDA(cudaDeviceSynchronize());
  auto compare = [&](Element* d, const std::vector<double>& want) {
    std::vector<Element> got(want.size());
    CHECK_CUDA(cudaMemcpy(got.data(), d, sizeof(Element) * got.size(), cudaMemcpyDeviceToHost));
    double peak = 1e-3;
    for (double w : want) peak = std::max(peak, std::fabs(w));
    for (size_t i = 0; i < got.size(); ++i) {
      const double err = std::fabs(f(got[i]) - want[i]) / peak;
      if (!(err <= 2e-2)) {
        std::printf("element %zu: got %g want %g (peak %g)\n", i, f(got[i]), want[i], peak);
        return false;
      }
      worst = std::max(worst, err);
    }
    return true;
  };
  const bool ok = compare(dq, rdq) && compare(dk, rdk) && compare(dv, rdv);
  for (const void* ptr : {p.fwd.q, p.fwd.k, p.fwd.v, static_cast<const void*>(p.fwd.out),
                          static_cast<const void*>(p.fwd.lse), p.d_out, static_cast<const void*>(p.grad_lse),
                          static_cast<const void*>(p.delta), static_cast<const void*>(dq), static_cast<const void*>(dk),
                          static_cast<const void*>(dv)}) {
    CHECK_CUDA(cudaFree(const_cast<void*>(ptr)));
  }
  return ok ? 0 : 1;
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  double worst = 0;
  for (int trial = 0; trial < 12; ++trial) {
    const int rank = 1 + trial % 3;
    const int err = trial % 2 == 0 ? run<cutlass::bfloat16_t, 64>(rng, rank, worst)
                                   : run<cutlass::half_t, 128>(rng, rank, worst);
    if (err != 0) {
      std::printf("mismatch in trial %d (rank %d)\n", trial, rank);
      return 1;
    }
  }
  std::printf("ok worst error / peak %g\n", worst);
  return 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q_tile_iterator_matches_policy(tmp_path: Path, seed: int) -> None:
    assert run_host_checker(tmp_path, "checker", CHECKER, [str(seed)]).startswith("ok ")


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1])
def test_backward_tile_algorithm_matches_dense_gradients(tmp_path: Path, seed: int) -> None:
    out = run_host_checker(tmp_path, "emulator", EMULATOR, [str(seed)], opt="-O2", timeout=600)
    assert out.startswith("ok ")


@needs_nvcc
def test_register_and_smem_layouts_of_the_backward(tmp_path: Path) -> None:
    assert run_nvcc_checker(tmp_path, "layouts", LAYOUT_CHECKER).strip() == "ok"


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    result = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return result.returncode == 0 and "GPU" in result.stdout


@needs_nvcc
@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU (nvidia-smi -L lists none)")
def test_backward_kernels_on_gpu(tmp_path: Path) -> None:
    arch = ("-O2", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_80,code=compute_80")
    assert run_nvcc_checker(tmp_path, "gpu_check", GPU_CHECKER, arch).startswith("ok ")
