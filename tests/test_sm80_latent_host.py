"""Host check of the sm80 latent (MLA decode) forward's index logic (csrc/include/natten_like/sm80/latent_schedule.hpp).

A C++ checker, built with the host compiler against the very header the kernel includes, replays the kernel's walk over
random problems (paged and contiguous caches, causal or not, S_q 1..4, seqlens 0..300, 1..9 splits): per (batch, M
tile, split) the KV tiles the split visits, per position the cache row it loads (zero-filled past L_b) and per (row,
key) the mask. It proves that the (query row, cache position) pairs attended, unioned over splits, are exactly the
semantics of python/natten_like/latent.py, each pair once, that every query row is in exactly one M tile and that the
paged address equals the row the reference gathers through the block table; and that the kernels' own checks of
device-resident lengths and block-table entries (what makes a decode call capturable) flag exactly the invalid ones.
A second check (nvcc, host only) evaluates the kernel's CuTe layouts: the warp pair that shares rows, the P store, the
epilogue's column pairs, V^T as the K tile's first 512 columns and the gather's constant atom stride.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from natten_like.backends import cuda as cuda_backend
from toolchain import needs_cxx, needs_nvcc, run_host_checker, run_nvcc_checker

CHECKER = r"""
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "natten_like/sm80/latent_schedule.hpp"

using namespace natten_like::sm80;

#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (!(cond)) {                                        \
      std::printf("FAIL %s: ", #cond);                    \
      std::printf(__VA_ARGS__);                           \
      std::printf("\n");                                  \
      std::exit(1);                                       \
    }                                                     \
  } while (0)

int main(int argc, char** argv) {
  std::mt19937_64 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  int64_t pairs_checked = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t batch = uni(1, 3), sq = uni(1, 4);
    const int64_t heads = std::vector<int64_t>{1, 3, 16, 20, 64, 128}[uni(0, 5)];
    const bool causal = uni(0, 1), paged = uni(0, 1);
    const int64_t splits = uni(1, 9);
    const int64_t page_size = std::vector<int64_t>{1, 16, 64, 100}[uni(0, 3)];
    std::vector<int64_t> lens(batch);
    for (auto& l : lens) l = uni(0, 1) ? uni(0, 300) : uni(0, 3);
    const int64_t max_pages = paged ? natten_like::policy::ceil_div(300, page_size) : 0;
    const int64_t num_pages = paged ? batch * max_pages + 5 : 0;
    const int64_t s_kv = 300;
    // Block table: a random permutation of pages; unused slots hold garbage the schedule must never read.
    std::vector<int64_t> perm(num_pages), table(batch * max_pages);
    for (int64_t i = 0; i < num_pages; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int64_t i = 0; i < batch * max_pages; ++i) table[i] = perm[i];
    const int64_t rows = latent::num_rows(sq, heads);
    const int64_t m_tiles = latent::num_m_tiles(rows);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t len = lens[b];
      // Reference rows of the cache: contiguous b * s_kv + pos; paged, the gathered pages in table order.
      std::vector<int64_t> ref_row;
      if (paged) {
        for (int64_t i = 0; i < max_pages; ++i)
          for (int64_t k = 0; k < page_size; ++k) ref_row.push_back(table[b * max_pages + i] * page_size + k);
      }
      std::vector<int> seen(rows * len, 0), tile_of(rows, 0);
      for (int64_t t = 0; t < m_tiles; ++t) {
        const auto mr = latent::m_tile_rows(rows, t);
        CHECK(mr.size() >= 1 && mr.size() <= latent::kBlockM, "tile %lld", (long long)t);
        for (int64_t r = mr.begin; r < mr.end; ++r) ++tile_of[r];
        int64_t prev_end = 0;
        for (int64_t s = 0; s < splits; ++s) {
          const auto kv = latent::split_kv_tiles(len, sq, heads, causal, t, splits, s);
          CHECK(kv.begin == prev_end || kv.size() == 0, "splits not contiguous");
          if (kv.size() > 0) prev_end = kv.end;
          for (int64_t e = kv.begin; e < kv.end; ++e) {
            const int64_t j0 = e * latent::kBlockN;
            for (int64_t c = 0; c < latent::kBlockN; ++c) {
              const int64_t pos = j0 + c;
              const bool loaded = pos < len;  // the kernel zero-fills rows past the cache
              if (loaded) {
                const int64_t row = latent::cache_row(paged ? table.data() : nullptr, max_pages, page_size,
                                                      num_pages, s_kv, b, pos);
                CHECK(row == (paged ? ref_row[pos] : b * s_kv + pos), "cache row of pos %lld", (long long)pos);
                if (paged) CHECK(row >= 0 && row < num_pages * page_size, "row outside the cache");
              }
              for (int64_t i = 0; i < latent::kBlockM; ++i) {
                const int64_t r = mr.begin + i;
                const int64_t limit = i < mr.size() ? latent::row_limit(len, sq, heads, causal, r) : 0;
                if (c < latent::tile_key_limit(limit, j0)) {
                  CHECK(i < mr.size() && loaded, "masked-in pair on a padding row or an unloaded position");
                  ++seen[r * len + pos];
                }
              }
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        CHECK(tile_of[r] == 1, "row %lld in %d M tiles", (long long)r, tile_of[r]);
        const int64_t s_idx = r / heads;  // row r = s * H + h
        for (int64_t pos = 0; pos < len; ++pos) {
          const bool want = !causal || pos <= len - sq + s_idx;
          CHECK(seen[r * len + pos] == (want ? 1 : 0), "b=%lld r=%lld pos=%lld len=%lld sq=%lld H=%lld causal=%d "
                "splits=%lld: seen %d times", (long long)b, (long long)r, (long long)pos, (long long)len,
                (long long)sq, (long long)heads, causal, (long long)splits, seen[r * len + pos]);
          ++pairs_checked;
        }
      }
    }
  }
  // The kernels' own checks of device-resident contents: a length outside [0, capacity] is 0 and invalid; a block-table
  // entry outside [0, num_pages) gives row -1 (zero-filled, the entry poisoned), any other the page's row.
  for (int trial = 0; trial < 2000; ++trial) {
    const int64_t cap = uni(0, 500), given = uni(-3, 503);
    const latent::CheckedLength c = latent::checked_length(given, cap);
    CHECK(c.valid == (given >= 0 && given <= cap) && c.len == (c.valid ? given : 0), "length %lld of %lld",
          (long long)given, (long long)cap);
    const int64_t page_size = uni(1, 100), num_pages = uni(1, 9), max_pages = uni(1, 4);
    std::vector<int64_t> table(2 * max_pages);
    const std::vector<int64_t> invalid = {-1, -7, num_pages, 1LL << 40};
    for (auto& t : table) t = uni(0, 3) ? uni(0, num_pages - 1) : invalid[uni(0, 3)];
    const int64_t b = uni(0, 1), pos = uni(0, max_pages * page_size - 1);
    const int64_t entry = table[b * max_pages + pos / page_size];
    const bool ok = entry >= 0 && entry < num_pages;
    const int64_t row = latent::cache_row(table.data(), max_pages, page_size, num_pages, 0, b, pos);
    CHECK(row == (ok ? entry * page_size + pos % page_size : -1), "page entry %lld of %lld pages", (long long)entry,
          (long long)num_pages);
    CHECK(latent::checked_page(table.data(), max_pages, page_size, num_pages, b, pos) == (ok ? entry : -1), "page");
  }
  CHECK(latent::capacity(true, 999, 16, 5) == 80 && latent::capacity(false, 999, 16, 5) == 999, "capacity");
  std::printf("ok %lld pairs\n", (long long)pairs_checked);
  return 0;
}
"""

LAYOUT_CHECKER = r"""
#include <cstdio>
#include <set>
#include <vector>

#include "natten_like/sm80/sm80_latent_kernel.hpp"

using namespace cute;
using T = natten_like::sm80::Sm80LatentTraits<cutlass::half_t>;
using natten_like::sm80::detail::acc_rowcol;

int main() {
  int bad = 0;
  // smem: the gather's constant atom stride, V^T as the K tile's first 512 columns, 16-byte chunks contiguous.
  auto L = T::SmemLayoutQK{};
  auto Vt = T::SmemLayoutVt{};
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < 576; ++c) {
      bad += L(r, c) != L(r, c % 64) + (c / 64) * 64 * 64;
      bad += c < 512 && Vt(c, r) != L(r, c);
      for (int e = 1; e < 8 && c % 8 == 0; ++e) bad += L(r, c + e) != L(r, c) + e;
    }
  typename T::TiledMma mma;
  std::vector<int> count_s(64 * 64, 0), count_o(64 * 512, 0);
  std::vector<std::set<int>> rows_of(T::kThreads);
  for (int tid = 0; tid < T::kThreads; ++tid) {
    auto thr = mma.get_slice(tid);
    Tensor cs = thr.partition_C(make_identity_tensor(Shape<_64, _64>{}));
    Tensor rc = make_tensor(cs.data(), acc_rowcol(cs.layout()));
    for (int i = 0; i < size(cs); ++i) ++count_s[get<0>(cs(i)) * 64 + get<1>(cs(i))];
    for (int mi = 0; mi < size<0>(rc); ++mi) {
      rows_of[tid].insert(get<0>(rc(mi, 0)));
      for (int ni = 0; ni < size<1>(rc); ++ni)
        bad += get<0>(rc(mi, ni)) != get<0>(rc(mi, 0)) || get<1>(rc(mi, ni)) != get<1>(rc(0, ni));
    }
    Tensor co = thr.partition_C(make_identity_tensor(Shape<_64, _512>{}));
    Tensor rco = make_tensor(co.data(), acc_rowcol(co.layout()));
    for (int i = 0; i < size(co); ++i) ++count_o[get<0>(co(i)) * 512 + get<1>(co(i))];
    // The epilogue's stores: accumulators (i, i + 1) are adjacent columns of one row, the first even.
    for (int i = 0; i < size(co); i += 2)
      bad += get<0>(co(i + 1)) != get<0>(co(i)) || get<1>(co(i + 1)) != get<1>(co(i)) + 1 || get<1>(co(i)) % 2;
    // O's rows per mi are S's: one row_max / row_sum per mi rescales both.
    for (int mi = 0; mi < size<0>(rco); ++mi)
      for (int ni = 0; ni < size<1>(rco); ++ni) bad += get<0>(rco(mi, ni)) != get<0>(rc(mi, 0));
  }
  for (int x : count_s) bad += x != 1;
  for (int x : count_o) bad += x != 1;
  // Warps w and w + 4 (the kernel's warp_n = warp / 4 pair) hold the same rows lane by lane; a quad shares its rows.
  for (int tid = 0; tid < T::kThreads / 2; ++tid) bad += rows_of[tid] != rows_of[tid + T::kThreads / 2];
  for (int tid = 0; tid < T::kThreads; ++tid) bad += rows_of[tid] != rows_of[tid - tid % 4];
  // The P store (tiled C copy of 32-bit pairs) puts accumulator (r, c) at sP(r, c): rows, then columns, as values.
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<cutlass::half_t> buf(64 * 64, cutlass::half_t(-1.f));
    Tensor sp = make_tensor(buf.data(), typename T::SmemLayoutP{});
    auto copy_p = make_tiled_copy_C(typename T::SmemCopyAtomP{}, mma);
    for (int tid = 0; tid < T::kThreads; ++tid) {
      Tensor cs = mma.get_slice(tid).partition_C(make_identity_tensor(Shape<_64, _64>{}));
      Tensor frag = make_tensor<cutlass::half_t>(cs.shape());
      for (int i = 0; i < size(cs); ++i) frag(i) = cutlass::half_t(float(pass ? get<1>(cs(i)) : get<0>(cs(i))));
      auto tc = copy_p.get_slice(tid);
      Tensor dst = tc.partition_D(sp);
      copy(copy_p, tc.retile_S(frag), dst);
    }
    for (int r = 0; r < 64; ++r)
      for (int c = 0; c < 64; ++c) bad += float(sp(r, c)) != float(pass ? c : r);
  }
  if (bad) {
    std::printf("bad %d\n", bad);
    return 1;
  }
  std::printf("ok %d\n", static_cast<int>(sizeof(T::SharedStorage)));
  return 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latent_schedule_covers_semantics(tmp_path: Path, seed: int) -> None:
    assert run_host_checker(tmp_path, "latent_checker", CHECKER, [str(seed)]).startswith("ok ")


@needs_nvcc
def test_latent_kernel_layouts(tmp_path: Path) -> None:
    """The kernel's register and smem layouts, evaluated on the host: the warp pair sharing rows, the P store, the
    epilogue's column pairs, V^T as the K tile's first 512 columns and the gather's constant atom stride; and its
    shared memory, which the CUDA backend's launch check (``SM80_LATENT_SMEM``) must state exactly."""
    ok, smem = run_nvcc_checker(tmp_path, "latent_layouts", LAYOUT_CHECKER).split()
    assert ok == "ok" and int(smem) == cuda_backend.SM80_LATENT_SMEM
