"""Host check of the sm80 latent (MLA decode) forward's index logic (csrc/include/natten_like/sm80/latent_schedule.hpp).

A C++ checker, built with the host compiler against the very header the kernel includes, replays the kernel's walk over
random problems (paged and contiguous caches, causal or not, S_q 1..4, seqlens 0..300, 1..9 splits): per (batch, M
tile, split) the KV tiles the split visits, per position the cache row it loads (zero-filled past L_b) and per (row,
key) the mask. It proves that the (query row, cache position) pairs attended, unioned over splits, are exactly the
semantics of python/natten_like/latent.py, each pair once, that every query row is in exactly one M tile and that the
paged address equals the row the reference gathers through the block table.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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
                const int64_t row = latent::cache_row(paged ? table.data() : nullptr, max_pages, page_size, s_kv, b,
                                                      pos);
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
  std::printf("ok %lld pairs\n", (long long)pairs_checked);
  return 0;
}
"""


def _cxx() -> str | None:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(_cxx() is None, reason="no host C++ compiler to build the schedule checker")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latent_schedule_covers_semantics(tmp_path: Path, seed: int) -> None:
    src = tmp_path / "latent_checker.cpp"
    src.write_text(CHECKER)
    exe = tmp_path / "latent_checker"
    built = subprocess.run(
        [_cxx(), "-std=c++20", "-O1", f"-I{ROOT / 'csrc' / 'include'}", str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(exe), str(seed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok ")
