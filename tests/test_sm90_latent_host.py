"""Host checks of the sm90 latent (MLA decode) forward (csrc/include/natten_like/sm90/sm90_latent_kernel.hpp), no GPU.

The first checker compiles the header's index part alone (NL_SM90_LATENT_INDEX_ONLY: plain C++, the host compiler)
and replays the kernel's walk over random problems (paged caches with page sizes that are multiples of 64, contiguous
caches, causal or not, S_q 1..4, heads 1..80, seqlens 0..400, 1..9 splits). Per (batch, M tile, split) and KV tile it
emulates the TMA box the producer issues (box row i at row + i of the page / batch entry, zero-filled past the view's
extent) and proves:

- every box row holding a position below L_b is the cache row the sm80 kernel gathers (latent::cache_row) and lies in
  the box's page (a paged box never crosses a page), and the page index fits TMA's int32 coordinate;
- the (query row, position) pairs the consumers attend (the tile's keys below tile_key_limit of the row), unioned over
  the splits, are exactly a brute-force model of the semantics (positions < L_b, causal: < L_b - S_q + s + 1), each
  pair once;
- every key a row attends is below v_valid_rows (V rows the consumers zero are masked for every row);
- the Q box of each M tile starts at its first row;
- a block-table entry that is not a page of the cache (a device-resident table is checked by the kernel) gives page
  -1, which the producer flags (its box loads page 0 instead).

A second check (nvcc, evaluated on the host) checks the kernel's CuTe layouts: each consumer warpgroup's 32 keys of S
(and K rows), the P store (every S value lands at its own (row, key) of P), each thread's S rows are its O rows, each
warpgroup's O and V columns are its 256, the epilogue's adjacent column pairs, and the smem offsets of Q, K, V^T and P
against TMA's / GMMA's 128-byte swizzle per 8 KB block.

The third check builds the launcher with nvcc for sm_80 (where the kernel body is an empty stub) and calls it with
problems it must refuse before any CUDA call: sm80's own refusals (cudaErrorInvalidValue), what the TMA scheme cannot
express (cudaErrorNotSupported, the caller's cue to fall back to the sm80 kernel), and supported problems whose grid is
too large (cudaErrorInvalidConfiguration, reached only after every TMA check has passed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toolchain import needs_cxx, needs_nvcc, run_host_checker, run_nvcc_checker

INDEX_CHECKER = r"""
#define NL_SM90_LATENT_INDEX_ONLY
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "natten_like/sm90/sm90_latent_kernel.hpp"

using namespace natten_like;
namespace l80 = natten_like::sm80::latent;
namespace l90 = natten_like::sm90::latent;

#define CHECK(cond, ...)                \
  do {                                  \
    if (!(cond)) {                      \
      std::printf("FAIL %s: ", #cond);  \
      std::printf(__VA_ARGS__);         \
      std::printf("\n");                \
      std::exit(1);                     \
    }                                   \
  } while (0)

int main(int argc, char** argv) {
  std::mt19937_64 rng(argc > 1 ? std::atoll(argv[1]) : 0);
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  long pairs = 0, boxes = 0;
  constexpr int64_t kNumPages = 1001;
  // A block-table entry that is not a page of the cache (what a device-resident table may hold: the kernel checks it)
  // gives page -1, which the producer flags.
  for (int iter = 0; iter < 1000; ++iter) {
    const int64_t page_size = 64 * uni(1, 4), max_pages = uni(1, 5), b = uni(0, 1);
    const int64_t tile = uni(0, max_pages * page_size / 64 - 1);
    const std::vector<int64_t> invalid = {-1, kNumPages, 1LL << 33};
    std::vector<int64_t> table(2 * max_pages);
    for (auto& t : table) t = uni(0, 2) ? uni(0, kNumPages - 1) : invalid[uni(0, 2)];
    const int64_t entry = table[b * max_pages + tile * 64 / page_size];
    const l90::KvBoxCoord c = l90::kv_box_coord(table.data(), max_pages, page_size, kNumPages, b, tile);
    CHECK(c.page == (entry >= 0 && entry < kNumPages ? entry : -1), "page of entry %lld", (long long)entry);
  }
  CHECK(!l90::paged_box_supported(0) && !l90::paged_box_supported(16) && !l90::paged_box_supported(96), "page sizes");
  CHECK(l90::paged_box_supported(64) && l90::paged_box_supported(256), "page sizes");
  for (int iter = 0; iter < 300; ++iter) {
    const bool paged = iter % 2 == 0, causal = uni(0, 1) == 1;
    const int64_t B = uni(1, 3), sq = uni(1, 4), H = uni(1, 80), num_splits = uni(1, 9);
    const int64_t page_size = 64 * uni(1, 4);
    std::vector<int64_t> lens(B);
    for (auto& L : lens) L = uni(0, 5) == 0 ? uni(0, 3) : uni(0, 400);
    int64_t s_kv = 0;
    for (auto L : lens) s_kv = std::max(s_kv, L);
    s_kv += uni(0, 70);  // contiguous: rows between L_b and s_kv exist (garbage), rows past s_kv are TMA's zeros
    const int64_t max_pages = paged ? (s_kv + page_size - 1) / page_size + uni(0, 2) : 0;
    std::vector<int64_t> table(B * max_pages);
    for (auto& t : table) t = uni(0, kNumPages - 1);
    const int64_t* bt = paged ? table.data() : nullptr;
    const int64_t extent = paged ? page_size : s_kv;
    const int64_t rows_total = l80::num_rows(sq, H);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = lens[b];
      // seen[r * s_kv + pos]: how often row r attended position pos over all M tiles and splits.
      std::vector<int> seen(rows_total * std::max<int64_t>(s_kv, 1), 0);
      for (int64_t t = 0; t < l80::num_m_tiles(rows_total); ++t) {
        const policy::Range rows = l80::m_tile_rows(rows_total, t);
        CHECK(l90::q_box_row(t) == rows.begin, "q box of tile %lld", (long long)t);
        for (int64_t split = 0; split < num_splits; ++split) {
          const policy::Range tiles = l80::split_kv_tiles(L, sq, H, causal, t, num_splits, split);
          for (int64_t e = tiles.begin; e < tiles.end; ++e) {
            const l90::KvBoxCoord c = l90::kv_box_coord(bt, max_pages, page_size, kNumPages, b, e);
            ++boxes;
            CHECK(c.row >= 0 && c.row + l90::kBlockN <= l90::kMaxCoord && c.page >= 0 && c.page <= l90::kMaxCoord,
                  "coordinates");
            if (paged) CHECK(c.row % 64 == 0 && c.row + 64 <= page_size, "box inside its page");
            const int valid = l90::v_valid_rows(L, e);
            for (int i = 0; i < l90::kBlockN; ++i) {
              const int64_t pos = e * l90::kBlockN + i;
              if (pos >= L) continue;  // a row the consumers mask (and zero in V)
              CHECK(i < valid, "valid rows");
              CHECK(c.row + i < extent, "in the view: not a zero-filled row");
              const int64_t cache_row = c.page * extent + c.row + i;
              CHECK(cache_row == l80::cache_row(bt, max_pages, page_size, kNumPages, s_kv, b, pos),
                    "cache row of pos %lld", (long long)pos);
            }
            for (int64_t r = rows.begin; r < rows.end; ++r) {
              const int lim = l80::tile_key_limit(l80::row_limit(L, sq, H, causal, r), e * l90::kBlockN);
              CHECK(lim <= valid, "a zeroed V row is attended");
              for (int i = 0; i < lim; ++i) ++seen[r * s_kv + e * l90::kBlockN + i];
            }
          }
        }
      }
      for (int64_t r = 0; r < rows_total; ++r) {
        const int64_t s = r / H;
        const int64_t end = causal ? std::min(L, std::max<int64_t>(0, L - sq + s + 1)) : L;  // brute-force model
        for (int64_t pos = 0; pos < s_kv; ++pos) {
          CHECK(seen[r * s_kv + pos] == (pos < end ? 1 : 0), "pair (r %lld, pos %lld) seen %d times, L %lld",
                (long long)r, (long long)pos, seen[r * s_kv + pos], (long long)L);
          pairs += pos < end;
        }
      }
    }
  }
  std::printf("ok %ld pairs %ld boxes\n", pairs, boxes);
  return 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latent_boxes_and_masks(tmp_path: Path, seed: int) -> None:
    assert run_host_checker(tmp_path, "latent90", INDEX_CHECKER, [str(seed)]).startswith("ok ")


CODES_CHECKER = r"""
#include <cstdio>
#include "natten_like/sm90/sm90_latent_kernel.hpp"

using namespace natten_like;

// A decode problem (S_q 1, 128 heads, D 576) over a paged (page_size > 0) or contiguous cache.
sm80::LatentFwdParams latent(int64_t B, int64_t page_size) {
  static char buf[256] __attribute__((aligned(256)));
  static int64_t table[1] = {0};
  static float ws[1];
  sm80::LatentFwdParams p{};
  p.q = p.cache = p.out = buf;
  p.o_partial = p.lse_partial = ws;
  p.block_table = page_size > 0 ? table : nullptr;
  p.batch = B;
  p.sq = 1;
  p.heads = 128;
  p.q_row_stride = 576;
  p.q_batch_stride = 128 * 576;
  p.o_row_stride = 512;
  p.o_batch_stride = 128 * 512;
  p.cache_row_stride = 576;
  p.s_kv = 4096;
  p.page_size = page_size;
  p.max_pages = page_size > 0 ? 4096 / page_size : 0;
  p.num_pages = B * p.max_pages;
  p.scale = 0.1f;
  return p;
}

template <class E>
int run() {
  int bad = 0;
  auto expect = [&](const char* what, cudaError_t got, cudaError_t want) {
    if (got != want) {
      std::printf("%s: got %d want %d\n", what, int(got), int(want));
      ++bad;
    }
  };
  auto launch = [](const sm80::LatentFwdParams& p) { return sm90::launch_sm90_latent_fwd<E>(p, nullptr); };
  // Supported problems reach the grid check (70000 batch entries or splits) only after every TMA check passed.
  for (int64_t ps : {0, 64, 128, 256, 4096}) {
    auto p = latent(70000, ps);
    expect("grid: batch", launch(p), cudaErrorInvalidConfiguration);
    p = latent(2, ps);
    p.num_splits = 70000;
    expect("grid: splits", launch(p), cudaErrorInvalidConfiguration);
  }
  auto p = latent(70000, 64);
  p.q_row_stride = 1024;  // padded rows, any 16-byte multiple: TMA strides
  p.cache_row_stride = 640;
  expect("padded strides", launch(p), cudaErrorInvalidConfiguration);
  // sm80's refusals, same codes.
  p = latent(2, 64);
  p.dim = 512;
  expect("dim", launch(p), cudaErrorInvalidValue);
  p = latent(2, 64);
  p.dim_v = 576;
  expect("dim_v", launch(p), cudaErrorInvalidValue);
  p = latent(2, 64);
  p.num_splits = 0;
  expect("splits 0", launch(p), cudaErrorInvalidValue);
  p = latent(2, 64);
  p.num_splits = 2;
  p.o_partial = nullptr;
  expect("workspace", launch(p), cudaErrorInvalidValue);
  p = latent(2, 64);
  p.cache_row_stride = 580;
  expect("cache stride % 8", launch(p), cudaErrorInvalidValue);
  p = latent(2, 0);
  p.q_row_stride = 577;
  expect("q stride % 8", launch(p), cudaErrorInvalidValue);
  // Empty problems.
  p = latent(0, 64);
  expect("batch 0", launch(p), cudaSuccess);
  p = latent(2, 64);
  p.heads = 0;
  expect("no rows", launch(p), cudaSuccess);
  // What the TMA scheme cannot express: the caller falls back to sm80.
  for (int64_t ps : {16, 32, 96, 100, 200}) {
    p = latent(2, ps);
    expect("page size", launch(p), cudaErrorNotSupported);
  }
  p = latent(2, 64);
  p.page_size = 0;
  expect("page size 0", launch(p), cudaErrorNotSupported);
  p = latent(2, 64);
  p.num_pages = 0;
  expect("no pages", launch(p), cudaErrorNotSupported);
  p = latent(2, 64);
  p.num_pages = int64_t{1} << 31;
  expect("2^31 pages (int32 coordinates)", launch(p), cudaErrorNotSupported);
  p = latent(2, 64);
  p.q = static_cast<const char*>(p.q) + 8;
  expect("misaligned q", launch(p), cudaErrorNotSupported);
  p = latent(2, 0);
  p.cache = static_cast<const char*>(p.cache) + 2;
  expect("misaligned cache", launch(p), cudaErrorNotSupported);
  p = latent(2, 64);
  p.cache_row_stride = 0;
  expect("cache stride 0", launch(p), cudaErrorNotSupported);
  p = latent(2, 64);
  p.q_batch_stride = int64_t{1} << 40;
  expect("q batch stride 2^40 elements", launch(p), cudaErrorNotSupported);
  p = latent(2, 0);
  p.s_kv = int64_t{1} << 31;
  expect("s_kv past int32", launch(p), cudaErrorNotSupported);
  p = latent(2, 0);
  p.s_kv = int64_t{1} << 30;  // 2^30 rows of 1152 bytes: a batch stride past 2^40 bytes
  expect("contiguous batch stride", launch(p), cudaErrorNotSupported);
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad;
}

int main() { return run<cutlass::bfloat16_t>() + run<cutlass::half_t>(); }
"""


@needs_nvcc
def test_latent_launcher_codes(tmp_path: Path) -> None:
    arch = ("-gencode=arch=compute_80,code=sm_80",)
    out = run_nvcc_checker(tmp_path, "latent90_codes", CODES_CHECKER, arch)
    assert out.strip().splitlines() == ["ok", "ok"], out


LAYOUT_CHECKER = r"""
#include <cstdio>

#include "natten_like/sm90/sm90_latent_kernel.hpp"

using namespace cute;
namespace nl = natten_like::sm90;

template <class Element>
int check() {
  using T = nl::Sm90LatentTraits<Element>;
  typename T::TiledMmaQK mma_qk;
  typename T::TiledMmaPV mma_pv;
  int bad = 0;
  for (int ctid = 0; ctid < T::kConsumerThreads; ++ctid) {
    const int wg = ctid / 128, lane = ctid % 32, warp = (ctid % 128) / 32;
    // S: warpgroup wg holds keys [32 wg, 32 wg + 32) of all 64 rows; a thread's 2 rows are those of its warp and quad.
    auto thr = mma_qk.get_thread_slice(ctid);
    Tensor cS = thr.partition_C(make_identity_tensor(Shape<_64, _64>{}));
    Tensor rc = make_tensor(cS.data(), nl::detail::acc_rowcol(cS.layout()));
    bad += size<0>(rc) != 2 || size(cS) != 16;
    for (int mi = 0; mi < size<0>(rc); ++mi) {
      for (int ni = 0; ni < size<1>(rc); ++ni) {
        bad += get<0>(rc(mi, ni)) != get<0>(rc(mi, 0)) || get<1>(rc(mi, ni)) != get<1>(rc(0, ni));
        bad += get<1>(rc(mi, ni)) / 32 != wg;
      }
      const int r = get<0>(rc(mi, 0));
      bad += r / 16 != warp || r % 8 != lane / 4;
    }
    Tensor cK = thr.partition_B(make_identity_tensor(Shape<_64, Int<T::kDim>>{}));
    for (int i = 0; i < size(cK); ++i) bad += get<0>(cK(i)) / 32 != wg;
    // The P store: value i of the S accumulator lands at its own (row, key) of the 64 x 64 P tile.
    auto copy_p = make_tiled_copy_C(typename T::SmemCopyAtomP{}, mma_qk);
    auto thr_copy = copy_p.get_slice(ctid);
    Tensor src = thr_copy.retile_S(cS);
    Tensor dst = thr_copy.partition_D(make_identity_tensor(Shape<_64, _64>{}));
    bad += size(src) != size(dst) || size(src) != size(cS);
    for (int i = 0; i < size(dst); ++i) bad += src(i) != dst(i);
    // O: the same rows as the thread's S rows (its softmax statistics), this warpgroup's 256 columns, and adjacent
    // column pairs (k, k + 1) for the epilogue's paired stores.
    auto thr_pv = mma_pv.get_thread_slice(ctid);
    Tensor cO = thr_pv.partition_C(make_identity_tensor(Shape<_64, Int<T::kDimV>>{}));
    Tensor orc = make_tensor(cO.data(), nl::detail::acc_rowcol(cO.layout()));
    bad += size(cO) != 128 || size<0>(orc) != size<0>(rc);
    for (int mi = 0; mi < size<0>(orc); ++mi) {
      for (int ni = 0; ni < size<1>(orc); ++ni) bad += get<0>(orc(mi, ni)) != get<0>(rc(mi, 0));
    }
    for (int k = 0; k < size(cO); k += 2) {
      bad += get<0>(cO(k + 1)) != get<0>(cO(k)) || get<1>(cO(k + 1)) != get<1>(cO(k)) + 1;
      bad += get<1>(cO(k)) / 256 != wg;
    }
    // V: this warpgroup's B operand spans exactly its 256 columns of D_v; its A operand is all of P.
    Tensor cB = thr_pv.partition_B(make_identity_tensor(Shape<Int<T::kDimV>, _64>{}));
    bad += size(cB) != 256 * 64;
    for (int i = 0; i < size(cB); ++i) bad += get<0>(cB(i)) / 256 != wg;
    Tensor cA = thr_pv.partition_A(make_identity_tensor(Shape<_64, _64>{}));
    bad += size(cA) != 64 * 64;
  }
  // Smem: box j of a tile (columns [64 j, 64 j + 64)) is the 8 KB block j, rows of 128 bytes under the 128-byte
  // swizzle; V^T is the K stage's first 512 columns at the K layout's stage stride (64 x 576, not 64 x 512). The
  // consumers zero warpgroup w's V rows as whole rows of blocks 4 (w - 1) .. 4 (w - 1) + 3, which the formula implies.
  Element* base = reinterpret_cast<Element*>(uintptr_t{1} << 20);  // a fake 1024-byte aligned smem address
  Tensor q = make_tensor(make_smem_ptr(base), typename T::SmemLayoutQ{});
  Tensor k = make_tensor(make_smem_ptr(base), typename T::SmemLayoutK{});
  Tensor vt = make_tensor(make_smem_ptr(base), typename T::SmemLayoutVt{});
  Tensor sp = make_tensor(make_smem_ptr(base), typename T::SmemLayoutP{});
  Tensor spo = make_tensor(make_smem_ptr(base), typename T::SmemLayoutPOffsets{});
  auto off = [&](auto& ref) { return int(reinterpret_cast<const char*>(&ref) - reinterpret_cast<const char*>(base)); };
  auto sw128 = [](int lin) { return lin ^ (((lin >> 7) & 7) << 4); };
  for (int s = 0; s < T::kStages; ++s) {
    for (int r = 0; r < 64; ++r) {
      for (int c = 0; c < T::kDim; ++c) {
        const int want = s * T::kTileBytes + (c / 64) * T::kBoxBytes + sw128(r * 128 + (c % 64) * 2);
        bad += off(k(r, c, s)) != want;
        if (c < T::kDimV) bad += off(vt(c, r, s)) != want;
        if (s == 0) bad += off(q(r, c)) != want;
        if (s == 0 && c < 64) bad += off(sp(r, c)) != want || off(spo(r, c)) != want;
      }
    }
  }
  bad += sizeof(typename T::SharedStorage) != 231424;
  return bad;
}

int main() {
  const int bad = check<cutlass::bfloat16_t>() + check<cutlass::half_t>();
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


@needs_nvcc
def test_latent_layouts_of_the_kernel(tmp_path: Path) -> None:
    arch = ("-gencode=arch=compute_90a,code=sm_90a",)
    assert run_nvcc_checker(tmp_path, "latent90_layouts", LAYOUT_CHECKER, arch).strip() == "ok"
