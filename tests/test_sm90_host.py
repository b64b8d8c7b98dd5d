"""The index logic of the sm90 forward kernel without a GPU: its TMA boxes address exactly the tiles of the GNA policy.

``sm90/tma_gna_box.hpp`` (plain C++) turns a tile of ``GnaKvTileIterator`` into one TMA box of the 5-D view
(D, H, X2, X1, B * X0) of a heads-last tensor: start coordinate, extent and element stride per token dim, and per smem
row of the box whether it is a row of the tile and its group-local coordinates. The checker below compiles it with the
host compiler, simulates what TMA loads (box start + i * element stride per dim, innermost dim fastest, a coordinate
past the dim's length out of bounds) for random rank 1-3 problems with dilation, padded to rank 3 as the CUDA binding
pads them, and proves, for every Q tile and every KV tile it visits:

- the in-bounds rows of the box, in smem order, are the policy's ``tile_rows`` in order, with ``GnaTileBox::row``'s
  group-local coordinates; rows out of bounds (or in another sample, for dim 0) are exactly the rows flagged invalid;
- the kernel's element mask (window test on the box-row coordinates, flagged rows at x0 = -1) equals the policy's
  ``fill_mask`` on the tile rows and rejects every flagged row;
- a tile the iterator calls full has no flagged row and every (query, key) pair attended, so running it unmasked is
  exact.

A second check evaluates the kernel's CuTe layout algebra on the host (needs nvcc and the CUTLASS headers, no GPU),
for the 128-byte swizzle of head dims 64 / 128, the 64-byte swizzle of head dim 32, and D_v != D: DeepSeek's MLA
prefill shape D 192 / D_v 128 (Q / K rows of 3 boxes, V / V^T / O rows of 2) and D 64 / D_v 32 (Q / K on the 128-byte
swizzle, V / O on the 64-byte one). A third calls the GNA launcher (nvcc, no GPU) with problems it must refuse before
any CUDA call, with additional KV among them: it runs fused now, so only what its TMA view cannot express is refused
(cudaErrorNotSupported, the caller's cue to fall back to sm80), and a problem whose additional KV is fine gets as far as
the grid check; a D 192 / D_v 128 instance takes exactly that pair of head dims.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toolchain import needs_cxx, needs_nvcc, run_host_checker, run_nvcc_checker

CHECKER = r"""
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "random_problems.hpp"
#include "natten_like/sm90/tma_gna_box.hpp"

using namespace natten_like;

// What TMA loads for the box of `box` under tile shape `tile`: smem row r is box-local (i0, i1, i2) with i2 fastest, at
// token coordinate start + i * dilation per dim; it is in bounds (within the sample) iff every coordinate is below the
// dim's length. Checks the box against the policy's rows of the tile (rows[0:n]) and returns the smem row of each tile
// row in order (tile_row_of[k]) and each smem row's coordinates (x, flagged rows included).
int check_box(const policy::GnaPolicy<3>& pad, const sm80::GnaTileBox<3>& box, const int64_t* tile, const int64_t* rows,
              int64_t n, std::vector<int32_t>& box_x, long& checks) {
  int32_t start[3];
  sm90::tma_box_start(pad, box, start);
  for (int i = 0; i < 3; ++i) {
    const int64_t d = pad.dim[i].dilation;
    // elementStrides: TMA loads ceil(extent / stride) elements per dim, which must be the tile extent.
    if ((sm90::tma_box_extent(pad, tile, i) + d - 1) / d != tile[i]) return 20;
    if (start[i] != box.group[i] + box.rows[i].begin * d) return 21;
  }
  const int64_t box_rows = sm90::tma_box_rows<3>(tile);
  box_x.assign(box_rows * 3, 0);
  int64_t k = 0;
  for (int64_t r = 0; r < box_rows; ++r) {
    int64_t rem = r, coord[3];
    bool in_bounds = true;
    for (int i = 2; i >= 0; --i) {
      coord[i] = start[i] + (rem % tile[i]) * pad.dim[i].dilation;
      rem /= tile[i];
      in_bounds = in_bounds && coord[i] < pad.dim[i].length;
    }
    int32_t x[3];
    const bool valid = sm90::tma_box_row(box, tile, static_cast<int32_t>(r), x);
    for (int i = 0; i < 3; ++i) box_x[r * 3 + i] = x[i];
    ++checks;
    if (valid != in_bounds) return 22;
    if (!valid) {
      if (x[0] != -1) return 23;
      continue;
    }
    int64_t token = 0;
    for (int i = 0; i < 3; ++i) token += coord[i] * pad.token_stride(i);
    if (k >= n || token != rows[k]) return 24;
    if (sm90::tma_box_row_token(pad, box, x) != token) return 25;
    int32_t xr[3];
    if (box.row(pad, static_cast<int32_t>(k), xr) != token) return 26;
    for (int i = 0; i < 3; ++i) {
      if (xr[i] != x[i]) return 27;
    }
    ++k;
  }
  if (k != n) return 28;
  // Rows past the box (up to the kernel's block) are flagged too.
  for (int32_t r = static_cast<int32_t>(box_rows); r < static_cast<int32_t>(box_rows) + 16; ++r) {
    int32_t x[3];
    if (sm90::tma_box_row(box, tile, r, x) || x[0] != -1) return 29;
  }
  return 0;
}

template <int R>
int check(std::mt19937& rng, long& checks) {
  // The random problem and its rank-3 padding, as tests/test_cuda_build.py (and csrc/bindings/gna_cuda.cpp) pad it.
  policy::GnaPolicy<R> pol;
  policy::GnaPolicy<3> pad;
  checkers::random_gna_problem<R>(rng, pol, pad);
  std::vector<int64_t> qrows(pol.max_q_rows()), kvrows(pol.max_kv_rows());
  std::vector<unsigned char> mask(pol.max_q_rows() * pol.max_kv_rows());
  std::vector<int32_t> q_x, kv_x;
  for (int64_t t = 0; t < pol.num_q_tiles(); ++t) {
    std::vector<std::pair<int64_t, bool>> visits;
    pol.for_each_kv_tile(t, [&](int64_t u, bool full) { visits.emplace_back(u, full); });
    const sm80::GnaKvTileIterator<3> it(pad, t);
    if (it.count != static_cast<int64_t>(visits.size())) return 1;
    const int64_t nq = pol.q_tile_rows(t, qrows.data());
    if (int err = check_box(pad, it.q, pad.tq, qrows.data(), nq, q_x, checks)) return err;
    const int64_t q_box_rows = sm90::tma_box_rows<3>(pad.tq);
    // Windows of the valid Q box rows (the kernel gives flagged Q rows an empty window and never stores them).
    std::vector<int32_t> wb(q_box_rows * 3), we(q_box_rows * 3), q_index(q_box_rows, -1);
    for (int64_t r = 0, k = 0; r < q_box_rows; ++r) {
      if (q_x[r * 3] < 0) continue;
      q_index[r] = static_cast<int32_t>(k++);
      it.q_row_window(pad, &q_x[r * 3], &wb[r * 3], &we[r * 3]);
    }
    for (int64_t e = 0; e < it.count; ++e) {
      int64_t u[3];
      bool full;
      const sm80::GnaTileBox<3> kv = it.visit(pad, e, u, full);
      const int64_t nk = pol.kv_tile_rows(visits[e].first, kvrows.data());
      if (int err = check_box(pad, kv, pad.tk, kvrows.data(), nk, kv_x, checks)) return err;
      pol.fill_mask(t, visits[e].first, mask.data());
      const int64_t kv_box_rows = sm90::tma_box_rows<3>(pad.tk);
      if (full && nk != kv_box_rows) return 30;  // a full tile has no flagged key row
      std::vector<int32_t> kv_index(kv_box_rows, -1);
      for (int64_t c = 0, k = 0; c < kv_box_rows; ++c) {
        if (kv_x[c * 3] >= 0) kv_index[c] = static_cast<int32_t>(k++);
      }
      for (int64_t r = 0; r < q_box_rows; ++r) {
        if (q_index[r] < 0) continue;
        for (int64_t c = 0; c < kv_box_rows; ++c) {
          bool inside = true;
          for (int i = 0; i < 3; ++i) {
            const int32_t x = kv_x[c * 3 + i];
            inside = inside && wb[r * 3 + i] <= x && x < we[r * 3 + i];
          }
          const bool expected = kv_index[c] >= 0 && mask[q_index[r] * nk + kv_index[c]] != 0;
          if (inside != expected) return 31;
          if (full && !inside) return 32;
          ++checks;
        }
      }
    }
  }
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
  std::printf("ok %ld checks\n", checks);
  return 0;
}
"""


# The kernel's layout algebra, evaluated on the host with CuTe (nvcc, no GPU): the row/column view of the wgmma
# accumulators keeps each row in one warp and one group of 4 lanes (the softmax reductions' assumption) and gives O the
# rows of S; the S accumulator reinterpreted as P holds exactly the (query, key) coordinates the P V wgmma's register A
# operand expects; the epilogue's smem copy puts each O value at its own coordinate; the Q/K/V/O smem layouts put
# element (row, col) where TMA writes it (O: where the epilogue's chunk copy expects it) and the V^T view addresses the
# same bytes as V. TMA's swizzle is emulated here from its definition, not taken from the traits, per operand: rows of W
# bytes, W the widest swizzle span not past the operand's row (D columns for Q / K, D_v for V / O: 128 bytes for 64
# columns and up, 64 for 32), box j = columns [W/2 j, W/2 (j + 1)) at j * rows * W bytes, element (row, col) of a box
# at byte row * W + 2 col, XORed by SWIZZLE_128B (bits [4:6] ^= bits [7:9], Swizzle<3,4,3>) or SWIZZLE_64B (bits [4:5]
# ^= bits [7:8], Swizzle<2,4,3>); the traits must name that TMA mode and box width per operand, the stage strides of
# K (kBlockN * D * 2 bytes) and V (kBlockN * D_v * 2), and the GMMA descriptors of the tiles that layout type (SW128 /
# SW64). The epilogue's chunk copy reads 16 contiguous bytes per (row, chunk) of O, one address plus steps of
# kOutRowStep rows of W_v bytes per thread (and whole boxes further per 128-column pass, D_v 256), O's layout (its
# swizzle on element offsets) puts every element where TMA's swizzle would; O, staged in the Q buffer, fits in it and
# puts row r in Q row r W_v / W_q
# (r itself when the widths agree: the other warpgroup's Q rows are untouched, which the kernel relies on unless it
# syncs the warpgroups first).
LAYOUT_CHECKER = r"""
#include <cstdio>
#include <vector>

#include "natten_like/sm90/sm90_fmha_fwd_kernel.hpp"

using namespace cute;
namespace nl = natten_like::sm90;

template <class Element, int D, int Dv = D, int N = 128>
int check() {
  using T = nl::Sm90FmhaFwdTraits<Element, D, 128, N, Dv>;
  typename T::TiledMmaQK mma_qk;
  typename T::TiledMmaPV mma_pv;
  int bad = 0;
  for (int ctid = 0; ctid < T::kConsumerThreads; ++ctid) {
    auto thr = mma_qk.get_thread_slice(ctid);
    Tensor cS = thr.partition_C(make_identity_tensor(Shape<Int<T::kBlockM>, Int<T::kBlockN>>{}));
    Tensor rc = make_tensor(cS.data(), nl::detail::acc_rowcol(cS.layout()));
    const int lane = ctid % 32, warp = ctid / 32;
    for (int mi = 0; mi < size<0>(rc); ++mi) {
      for (int ni = 0; ni < size<1>(rc); ++ni) {
        bad += get<0>(rc(mi, ni)) != get<0>(rc(mi, 0)) || get<1>(rc(mi, ni)) != get<1>(rc(0, ni));
      }
      const int r = get<0>(rc(mi, 0));
      bad += r / 16 != warp || r % 8 != lane / 4;
    }
    bad += size(rc) != size(cS);
    auto thr_pv = mma_pv.get_thread_slice(ctid);
    Tensor cO = thr_pv.partition_C(make_identity_tensor(Shape<Int<T::kBlockM>, Int<Dv>>{}));
    Tensor orc = make_tensor(cO.data(), nl::detail::acc_rowcol(cO.layout()));
    bad += size<0>(orc) != size<0>(rc);
    for (int mi = 0; mi < size<0>(orc); ++mi) {
      for (int ni = 0; ni < size<1>(orc); ++ni) bad += get<0>(orc(mi, ni)) != get<0>(rc(mi, 0));
    }
    Tensor p = make_tensor(cS.data(), nl::detail::acc_as_a_operand(cS.layout()));
    Tensor cA = thr_pv.partition_A(make_identity_tensor(Shape<Int<T::kBlockM>, Int<T::kBlockN>>{}));
    bad += size(p) != size(cA) || size<2>(p) != size<2>(cA);
    for (int i = 0; i < size(cA); ++i) bad += p(i) != cA(i);
    // The epilogue's 32-bit stores of O into smem: value i of the accumulator lands at its own (row, col).
    auto copy_o = make_tiled_copy_C(typename T::SmemCopyAtomO{}, mma_pv);
    auto thr_copy = copy_o.get_slice(ctid);
    Tensor src = thr_copy.retile_S(cO);
    Tensor dst = thr_copy.partition_D(make_identity_tensor(Shape<Int<T::kBlockM>, Int<Dv>>{}));
    bad += size(src) != size(dst) || size(src) != size(cO);
    for (int i = 0; i < size(dst); ++i) bad += src(i) != dst(i);
  }
  // TMA's view of the smem tiles: W-byte box rows, box j of a tile of `rows` rows at j * rows * W bytes; Q / K rows of
  // D columns (W = WQ), V / O rows of Dv (W = WV).
  constexpr int WQ = D * 2 >= 128 ? 128 : 64, WV = Dv * 2 >= 128 ? 128 : 64;
  auto mode = [](int w) { return w == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B; };
  bad += T::kTmaSwizzle != mode(WQ) || T::kBoxCols != WQ / 2 || T::kBoxesPerRow != D / (WQ / 2);
  bad += T::kTmaSwizzleV != mode(WV) || T::kBoxColsV != WV / 2 || T::kBoxesPerRowV != Dv / (WV / 2);
  bad += T::kQBytesPerBox != T::kBlockM * WQ || T::kKBytesPerBox != T::kBlockN * WQ;
  bad += T::kVBytesPerBox != T::kBlockN * WV;
  bad += T::kKStageBytes != T::kBlockN * D * 2 || T::kVStageBytes != T::kBlockN * Dv * 2;
  auto swizzle = [](int w, int lin) { return lin ^ (((lin >> 7) & (w == 128 ? 7 : 3)) << 4); };
  auto tma = [&](int w, int rows, int r, int c) {
    return (c / (w / 2)) * rows * w + swizzle(w, r * w + (c % (w / 2)) * 2);
  };
  // A fake 1024-byte aligned smem address: the swizzle acts on address bits.
  Element* base = reinterpret_cast<Element*>(uintptr_t{1} << 20);
  Tensor sK = make_tensor(make_smem_ptr(base), typename T::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(base), typename T::SmemLayoutV{});
  Tensor sVt = make_tensor(make_smem_ptr(base), typename T::SmemLayoutVt{});
  Tensor sQ = make_tensor(make_smem_ptr(base), typename T::SmemLayoutQ{});
  Tensor sO = make_tensor(make_smem_ptr(base), typename T::SmemLayoutO{});
  auto off = [&](auto& ref) { return int(reinterpret_cast<const char*>(&ref) - reinterpret_cast<const char*>(base)); };
  for (int s = 0; s < T::kStages; ++s) {
    for (int r = 0; r < T::kBlockN; ++r) {
      for (int c = 0; c < D; ++c) bad += off(sK(r, c, s)) != s * T::kKStageBytes + tma(WQ, T::kBlockN, r, c);
      for (int c = 0; c < Dv; ++c) {
        const int want = s * T::kVStageBytes + tma(WV, T::kBlockN, r, c);
        bad += off(sV(r, c, s)) != want || off(sVt(c, r, s)) != want;
      }
    }
  }
  bad += cosize(sK.layout()) != T::kStages * T::kBlockN * D || cosize(sV.layout()) != T::kStages * T::kBlockN * Dv;
  // Q, and O staged over it: which Q row each byte of the Q buffer belongs to.
  std::vector<int> q_row(T::kBlockM * D * 2, -1);
  for (int r = 0; r < T::kBlockM; ++r) {
    for (int c = 0; c < D; ++c) {
      const int at = off(sQ(r, c));
      bad += at != tma(WQ, T::kBlockM, r, c);
      if (at >= 0 && at + 2 <= int(q_row.size())) q_row[at] = q_row[at + 1] = r;
    }
  }
  for (int r = 0; r < T::kBlockM; ++r) {
    for (int c = 0; c < Dv; ++c) {
      const int at = off(sO(r, c));
      bad += at != tma(WV, T::kBlockM, r, c);
      bad += at < 0 || at + 2 > int(q_row.size()) || q_row[at] != r * WV / WQ;
    }
  }
  // What GMMA is told: the descriptors' layout type is the swizzle's (the smem layouts' swizzle functor decides it).
  auto gmma = [](int w) { return w == 128 ? SM90::GMMA::LayoutType::B128 : SM90::GMMA::LayoutType::B64; };
  bad += SM90::GMMA::layout_type(recast<uint128_t const>(sQ)) != gmma(WQ);
  bad += SM90::GMMA::layout_type(recast<uint128_t const>(sK)) != gmma(WQ);
  bad += SM90::GMMA::layout_type(recast<uint128_t const>(sVt)) != gmma(WV);
  // The epilogue (sm90_fmha_fwd_kernel.hpp): thread wtid of a warpgroup reads the 16-byte chunk at column
  // c + pass * 128 of O rows r0 + k * kOutRowStep, each chunk contiguous, at the address of its first chunk plus
  // k * kOutRowStep * kBoxColsV + pass * kOutPassElems elements, and the threads together read every chunk of the
  // warpgroup's 64 rows once.
  bad += T::kChunksPerRow * T::kChunk != Dv || T::kOutThreadsPerRow * T::kOutColPasses != T::kChunksPerRow;
  std::vector<int> seen(T::kBlockM * Dv, 0);
  for (int wg = 0; wg < 2; ++wg) {
    for (int wtid = 0; wtid < 128; ++wtid) {
      const int r0 = wg * 64 + wtid / T::kOutThreadsPerRow, c0 = (wtid % T::kOutThreadsPerRow) * T::kChunk;
      for (int k = 0; k < 64 / T::kOutRowStep; ++k) {
        for (int pass = 0; pass < T::kOutColPasses; ++pass) {
          const int r = r0 + k * T::kOutRowStep, c = c0 + pass * T::kOutThreadsPerRow * T::kChunk;
          const int want = off(sO(r0, c0)) + (k * T::kOutRowStep * T::kBoxColsV + pass * T::kOutPassElems) * 2;
          bad += r >= (wg + 1) * 64 || off(sO(r, c)) != want;
          for (int j = 0; j < T::kChunk; ++j) {
            bad += off(sO(r, c + j)) != off(sO(r, c)) + j * 2;
            ++seen[r * Dv + c + j];
          }
        }
      }
    }
  }
  for (int n : seen) bad += n != 1;
  return bad;
}

int main() {
  const int bad = check<cutlass::bfloat16_t, 128>() + check<cutlass::half_t, 64>() + check<cutlass::half_t, 32>() +
                  check<cutlass::bfloat16_t, 32>() + check<cutlass::bfloat16_t, 192, 128>() +
                  check<cutlass::half_t, 64, 32>() + check<cutlass::bfloat16_t, 256, 256, 64>() +
                  check<cutlass::half_t, 256, 256, 64>();
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tma_boxes_match_policy(tmp_path: Path, seed: int) -> None:
    assert run_host_checker(tmp_path, "checker", CHECKER, [str(seed)]).startswith("ok ")


@needs_nvcc
def test_layouts_of_the_kernel(tmp_path: Path) -> None:
    arch = ("-gencode=arch=compute_90a,code=sm_90a",)
    assert run_nvcc_checker(tmp_path, "layouts", LAYOUT_CHECKER, arch).strip() == "ok"


# The GNA launcher's error-code contract (launch_sm90_gna_fwd), checked on the host: every case below is decided before
# any CUDA call, so the program runs without a GPU. Built for sm_80 only (the kernel body is the empty stub there).
GNA_CODES_CHECKER = r"""
#include <cstdio>

#include "launcher_args.hpp"
#include "natten_like/sm90/sm90_fmha_fwd_kernel.hpp"

using namespace natten_like;
using E = cutlass::bfloat16_t;
constexpr int64_t D = 128;

// A 1-D GNA problem of N tokens (rank 3, two leading dims of length 1), window 15, tiles of 128, with N_add additional
// KV rows in separate [B, N_add, H_kv, D] / [B, N_add, H_kv, D_v] tensors; head dims d (Q, K) and dv (V, out).
sm80::GnaFwdParams gna(int64_t B, int64_t N, int64_t H, int64_t Hkv, int64_t n_add, int64_t d = D, int64_t dv = D) {
  sm80::GnaFwdParams p{};
  checkers::fill_contiguous_args(p, B, N, H, Hkv, d);
  p.head_dim_v = static_cast<int>(dv);
  p.v_head_stride = p.o_head_stride = dv;
  p.v_token_stride = Hkv * dv;
  p.o_token_stride = H * dv;
  p.v_batch_stride = N * Hkv * dv;
  p.o_batch_stride = N * H * dv;
  p.policy.dim[2].length = N;
  p.policy.dim[2].window = 15;
  for (int i = 0; i < 3; ++i) p.policy.tq[i] = p.policy.tk[i] = i == 2 ? 128 : 1;
  p.add_k = p.add_v = n_add > 0 ? p.k : nullptr;  // the aligned buffer
  p.add_k_head_stride = d;
  p.add_v_head_stride = dv;
  p.add_k_token_stride = Hkv * d;
  p.add_v_token_stride = Hkv * dv;
  p.add_k_batch_stride = n_add * Hkv * d;
  p.add_v_batch_stride = n_add * Hkv * dv;
  p.num_additional = n_add;
  p.additional_block = 7;  // ignored: the launcher uses its kBlockN
  return p;
}

int main() {
  int bad = 0;
  auto expect = [&](const char* what, cudaError_t got, cudaError_t want) {
    if (got != want) {
      std::printf("%s: got %d want %d\n", what, int(got), int(want));
      ++bad;
    }
  };
  auto launch = [](const sm80::GnaFwdParams& p) { return sm90::launch_sm90_gna_fwd<E, 128, 128, 128>(p, nullptr); };
  // A grid with 70000 batch entries is refused last (cudaErrorInvalidConfiguration): reaching it proves that every TMA
  // check before it passed.
  auto p = gna(70000, 1000, 4, 2, 300);
  expect("additional KV runs fused", launch(p), cudaErrorInvalidConfiguration);
  p = gna(70000, 1000, 4, 2, 300);
  p.add_k_batch_stride = 301 * p.add_k_token_stride;  // batch is its own TMA dim: any 16-byte multiple works
  p.add_v_batch_stride = 5000 * p.add_v_token_stride;
  expect("additional KV batch strides", launch(p), cudaErrorInvalidConfiguration);
  p = gna(70000, 1000, 4, 2, 1);
  p.add_k_token_stride = p.add_v_token_stride = 2 * 2 * D;  // a packed [B, N_add, 2, H_kv, D] K|V tensor
  expect("additional KV packed", launch(p), cudaErrorInvalidConfiguration);
  p = gna(70000, 1000, 4, 2, 0);
  expect("no additional KV", launch(p), cudaErrorInvalidConfiguration);
  // What the additional KV's TMA view cannot express: the caller falls back to sm80.
  p = gna(2, 1000, 4, 2, 300);
  p.add_k = static_cast<const char*>(p.add_k) + 8;
  expect("misaligned add_k", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, 300);
  p.add_v = static_cast<const char*>(p.add_v) + 2;
  expect("misaligned add_v", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, 300);
  p.add_v = nullptr;
  expect("null add_v", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, 300);
  p.add_k_token_stride += 4;  // 8 bytes more: not a multiple of 16
  expect("add_k token stride", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, 300);
  p.add_v_head_stride = 0;
  expect("add_v head stride", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, 300);
  p.add_k_batch_stride += 1;
  expect("add_k batch stride", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, int64_t{0x7fffffff} - 100);  // N_add + a box of 128 rows beyond int32
  expect("N_add coordinates", launch(p), cudaErrorNotSupported);
  // The producer's int32 KV tile count: tokens per batch entry plus additional tiles (300 rows: 3) below 2^31. Batch 1
  // (no batch stride rule) and 70000 heads, so that an accepted problem stops at the grid check.
  p = gna(1, 1000, 70000, 70000, 300);
  p.tokens = int64_t{0x7fffffff} - 3;
  expect("tokens + additional tiles = 2^31 - 1", launch(p), cudaErrorInvalidConfiguration);
  p.tokens += 1;
  expect("tokens + additional tiles = 2^31", launch(p), cudaErrorNotSupported);
  // Unchanged refusals of the neighbourhood part, and the empty problem.
  p = gna(2, 1000, 4, 2, 300);
  p.policy.dim[2].dilation = 9;
  p.policy.tq[2] = p.policy.tk[2] = 16;
  expect("dilation 9", launch(p), cudaErrorNotSupported);
  // The batch entry is a TMA dim of its own in the neighbourhood views too: any batch stride of a 16-byte multiple
  // (the heads and head dim share TMA dim 0, so the heads must be contiguous).
  p = gna(70000, 1000, 4, 2, 300);
  p.k_batch_stride += 8;
  expect("k batch stride", launch(p), cudaErrorInvalidConfiguration);
  p = gna(1, 1000, 70000, 70000, 300);
  p.q_batch_stride = 3;  // one batch entry: never applied
  expect("q batch stride of one entry", launch(p), cudaErrorInvalidConfiguration);
  p = gna(2, 1000, 4, 2, 300);
  p.v_batch_stride += 4;  // 8 bytes more: not a multiple of 16
  expect("v batch stride", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, 300);
  p.q_token_stride = 4 * 2 * D;
  p.q_head_stride = 2 * D;  // heads not contiguous
  expect("q head stride", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 2, 300);
  p.k_token_stride += 4;
  expect("k token stride", launch(p), cudaErrorNotSupported);
  p = gna(2, 1000, 4, 3, 300);
  expect("kv heads", launch(p), cudaErrorInvalidValue);
  p = gna(0, 1000, 4, 2, 300);
  expect("empty", launch(p), cudaSuccess);
  // D 192 / D_v 128 (DeepSeek's MLA prefill shape): its instance passes every TMA check, additional KV included (V's
  // views and boxes of 128 columns, K's of 192), and takes no other pair of head dims; the D 128 instance not this one.
  auto launch_dv = [](const sm80::GnaFwdParams& p) {
    return sm90::launch_sm90_gna_fwd<E, 192, 128, 128, 128>(p, nullptr);
  };
  p = gna(70000, 1000, 4, 2, 300, 192, 128);
  expect("D 192 / D_v 128", launch_dv(p), cudaErrorInvalidConfiguration);
  expect("D 192 / D_v 128 on the D 128 instance", launch(p), cudaErrorInvalidValue);
  p = gna(70000, 1000, 4, 2, 0, 192, 128);
  expect("D 192 / D_v 128 without additional KV", launch_dv(p), cudaErrorInvalidConfiguration);
  p = gna(2, 1000, 4, 2, 300, 192, 192);
  expect("D_v 192 on the D_v 128 instance", launch_dv(p), cudaErrorInvalidValue);
  p = gna(2, 1000, 4, 2, 300, 128, 128);
  expect("D 128 on the D 192 instance", launch_dv(p), cudaErrorInvalidValue);
  p = gna(2, 1000, 4, 2, 300, 192, 128);
  p.add_v_token_stride += 4;  // 8 bytes more: not a multiple of 16 (V's view)
  expect("D 192 / D_v 128 add_v token stride", launch_dv(p), cudaErrorNotSupported);
  // Head dim 256: the instance of 64-row KV stages takes KV tiles of up to 64 rows (additional KV in boxes of 64).
  auto launch_256 = [](const sm80::GnaFwdParams& p) {
    return sm90::launch_sm90_gna_fwd<E, 256, 128, 64, 256>(p, nullptr);
  };
  p = gna(70000, 1000, 4, 2, 300, 256, 256);
  p.policy.tk[2] = 64;
  expect("D 256, KV tiles of 64", launch_256(p), cudaErrorInvalidConfiguration);
  p = gna(70000, 1000, 4, 2, 0, 256, 256);
  p.policy.tk[2] = 64;
  expect("D 256 without additional KV", launch_256(p), cudaErrorInvalidConfiguration);
  p = gna(2, 1000, 4, 2, 300, 256, 256);
  expect("D 256, KV tiles of 128", launch_256(p), cudaErrorInvalidValue);
  p = gna(2, 1000, 4, 2, 300, 128, 128);
  p.policy.tk[2] = 64;
  expect("D 128 on the D 256 instance", launch_256(p), cudaErrorInvalidValue);
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


@needs_nvcc
def test_gna_launcher_codes_with_additional_kv(tmp_path: Path) -> None:
    arch = ("-gencode=arch=compute_80,code=sm_80",)
    assert run_nvcc_checker(tmp_path, "gna_codes", GNA_CODES_CHECKER, arch).strip() == "ok"
