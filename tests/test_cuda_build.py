"""The sm80 CUDA path without a GPU: its index logic on the host, its generated files, and the SASS of its kernels.

- The tile iterator the kernel runs (``sm80/gna_tile_iterator.hpp``, plain C++) is compiled with the host compiler and
  proved equal to the GNA policy (``for_each_kv_tile``, ``tile_rows``, ``fill_mask``) on random problems, through the
  same rank-3 padding the CUDA binding applies.
- The kernel's register-layout algebra (softmax rows, the S accumulator reused as the P operand) is evaluated on the
  host with CuTe (needs nvcc, no GPU).
- ``tools/generate_instantiations.py --check``: the committed instantiations match the tile table.
- When the extension was built with ``NATTEN_LIKE_CUDA_ARCH``, ``cuobjdump -sass`` of the built library shows the
  attention kernels using tensor cores (``HMMA``) without local-memory spills (``LDL``/``STL``); registers are reported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import ROOT, needs_cxx, needs_nvcc, run_host_checker, run_nvcc_checker

# Checks GnaKvTileIterator (what the kernel runs) against GnaPolicy (the definition) for random problems of rank 1-3,
# with the problem padded to rank 3 exactly as csrc/bindings/gna_cuda.cpp pads it.
CHECKER = r"""
#include <cstdio>
#include <random>
#include <vector>

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
  for (int64_t t = 0; t < pol.num_q_tiles(); ++t) {
    std::vector<std::pair<int64_t, bool>> visits;
    pol.for_each_kv_tile(t, [&](int64_t u, bool full) { visits.emplace_back(u, full); });
    const sm80::GnaKvTileIterator<3> it(pad, t);
    if (it.count != static_cast<int64_t>(visits.size())) return 2;
    const int64_t nq = pol.q_tile_rows(t, qrows.data());
    if (it.q.num_rows() != nq) return 3;
    std::vector<int32_t> wb(nq * 3), we(nq * 3);
    for (int64_t r = 0; r < nq; ++r) {
      int32_t x[3];
      if (it.q.row(pad, static_cast<int32_t>(r), x) != qrows[r]) return 4;
      it.q_row_window(pad, x, &wb[r * 3], &we[r * 3]);
    }
    for (int64_t e = 0; e < it.count; ++e) {
      int64_t u[3];
      bool full;
      const sm80::GnaTileBox<3> kv = it.visit(pad, e, u, full);
      if (pad.encode(pad.tk, kv.group, u) != visits[e].first || full != visits[e].second) return 5;
      const int64_t nk = pol.kv_tile_rows(visits[e].first, kvrows.data());
      if (kv.num_rows() != nk) return 6;
      pol.fill_mask(t, visits[e].first, mask.data());
      for (int64_t c = 0; c < nk; ++c) {
        int32_t x[3];
        if (kv.row(pad, static_cast<int32_t>(c), x) != kvrows[c]) return 7;
        for (int64_t r = 0; r < nq; ++r) {
          bool inside = true;
          for (int i = 0; i < 3; ++i) inside = inside && wb[r * 3 + i] <= x[i] && x[i] < we[r * 3 + i];
          if (inside != (mask[r * nk + c] != 0)) return 8;
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
  std::printf("ok %ld mask elements\n", checks);
  return 0;
}
"""


# The register-layout algebra of the kernel, evaluated on the host with CuTe's identity tensors: the row/column view of
# the S accumulator keeps each row in one warp and one lane quad (the softmax reductions' assumption), and the
# accumulator reinterpreted as P holds exactly the (query, key) coordinates the MMA's A operand expects.
LAYOUT_CHECKER = r"""
#include <cstdio>
#include <vector>

#include "natten_like/sm80/sm80_fmha_fwd_kernel.hpp"

using namespace cute;
namespace nl = natten_like::sm80;

template <class Element, int D, int DV = D>
int check() {
  using T = nl::Sm80FmhaFwdTraits<Element, D, 64, 64, DV>;
  typename T::TiledMma mma;
  int bad = 0;
  // V's (head dim, keys) view is the transpose of its (keys, head dim) tile, whose elements have distinct slots; the
  // output tile (staged over Q) has one slot per element, within Q's storage.
  typename T::SmemLayoutV v;
  typename T::SmemLayoutVt vt;
  typename T::SmemLayoutO o;
  bad += cosize(v) < T::kBlockN * DV || cosize(o) != T::kBlockM * DV;  // V rows may be padded (head dim 256)
  bad += static_cast<int>(sizeof(typename T::SharedStorage{}.q)) < cosize(o) * static_cast<int>(sizeof(Element));
  std::vector<int> slots(cosize(v), 0);
  for (int n = 0; n < T::kBlockN; ++n)
    for (int d = 0; d < DV; ++d) bad += vt(d, n) != v(n, d) || slots[v(n, d)]++ != 0;
  for (int tid = 0; tid < T::kThreads; ++tid) {
    auto thr = mma.get_slice(tid);
    Tensor cS = thr.partition_C(make_identity_tensor(Shape<Int<T::kBlockM>, Int<T::kBlockN>>{}));
    Tensor rc = make_tensor(cS.data(), nl::detail::acc_rowcol(cS.layout()));
    for (int mi = 0; mi < size<0>(rc); ++mi) {
      for (int ni = 0; ni < size<1>(rc); ++ni) {
        bad += get<0>(rc(mi, ni)) != get<0>(rc(mi, 0)) || get<1>(rc(mi, ni)) != get<1>(rc(0, ni));
      }
      bad += get<0>(rc(mi, 0)) / 16 != tid / 32 || get<0>(rc(mi, 0)) % 8 != (tid % 32) / 4;
    }
    Tensor p = make_tensor(cS.data(), nl::detail::acc_as_a_operand(cS.layout()));
    Tensor cA = thr.partition_A(make_identity_tensor(Shape<Int<T::kBlockM>, Int<T::kBlockN>>{}));
    bad += size(p) != size(cA);
    for (int i = 0; i < size(cA); ++i) bad += p(i) != cA(i);
  }
  return bad;
}

int main() {
  const int bad = check<cutlass::half_t, 32>() + check<cutlass::half_t, 64>() + check<cutlass::bfloat16_t, 128>() +
                  check<cutlass::bfloat16_t, 192, 128>() + check<cutlass::half_t, 64, 128>() +
                  check<cutlass::bfloat16_t, 256>();
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


# Runs the strided-shard schedule the sm80 kernel uses (fmha_schedules.hpp: kernel blocks split from pattern blocks,
# the policy's runs fetched by index, the 1-D row geometry) on the host, and checks, per head, that the (query, key)
# pairs it attends are exactly those of the policy (for_each_kv_tile + fill_mask), each once, and that every query row
# belongs to exactly one kernel Q tile.
S2_CHECKER = r"""
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "natten_like/sm80/fmha_schedules.hpp"
#include "random_problems.hpp"
#include "random_s2.hpp"

using namespace natten_like;

int check(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t kernel_block = 64;
  sm80::StridedShardFwdParams p{};
  checkers::random_s2_problem(rng, p, static_cast<int>(pick(1, 2)), kernel_block);
  const int64_t block = p.pattern.block;
  for (int h = 0; h < p.heads; ++h) {
    // The policy of head h, built as the CPU binding builds it.
    policy::StridedShardPolicy pol = p.pattern;
    const int64_t hk = h / (p.heads / p.kv_heads);
    pol.shift = (hk * p.head_step + p.sliding_offset) % pol.vert_stride;
    pol.dense = hk >= p.kv_heads - p.dense_heads;
    std::set<std::pair<int64_t, int64_t>> want, got;
    checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) { want.emplace(q, k); });
    std::vector<int> seen(p.pattern.nq, 0);
    for (int64_t t = 0; t < sm80::StridedShardSchedule::num_q_tiles(p); ++t) {
      const sm80::StridedShardSchedule s(p, t, h, 0);
      if (s.q_rows() > kernel_block) return 2;
      std::vector<int64_t> qtok(s.q_rows());
      std::vector<int32_t> wb(3 * s.q_rows()), we(3 * s.q_rows());
      for (int r = 0; r < s.q_rows(); ++r) {
        qtok[r] = s.q_row(p, r, &wb[3 * r], &we[3 * r]);
        if (qtok[r] < 0 || qtok[r] >= p.pattern.nq) return 3;
        ++seen[qtok[r]];
      }
      for (int64_t e = 0; e < s.count(); ++e) {
        int rows;
        bool full;
        const auto kv = s.kv_tile(p, e, rows, full);
        if (rows > kernel_block) return 4;
        for (int c = 0; c < rows; ++c) {
          int32_t x[3];
          const int64_t ktok = s.kv_row(p, kv, c, x);
          for (int r = 0; r < s.q_rows(); ++r) {
            bool inside = true;
            for (int i = 0; i < 3; ++i) inside = inside && wb[3 * r + i] <= x[i] && x[i] < we[3 * r + i];
            // A full tile runs unmasked: every pair of it must be one the policy attends.
            if (full && !inside) return 5;
            if (inside && !got.emplace(qtok[r], ktok).second) return 6;  // a pair attended twice
            ++checks;
          }
        }
      }
    }
    for (int c : seen)
      if (c != 1) return 7;
    if (got != want) return 8;
  }
  return 0;
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 0);
  long checks = 0;
  for (int i = 0; i < 300; ++i) {
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


# The same for the block-sparse schedule: random compressed lists (full and partial, disjoint, broadcast batch / head
# dims), plain batches and packed varlen sequences, block sizes below and above the kernel's block.
BLOCK_SPARSE_CHECKER = r"""
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "natten_like/sm80/fmha_schedules.hpp"
#include "random_problems.hpp"

using namespace natten_like;
using Pairs = std::set<std::pair<int64_t, int64_t>>;

int check(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t kernel_block = 64;
  const bool packed = pick(0, 2) == 0;
  const int64_t batch = packed ? 1 : pick(1, 2), heads = pick(1, 3);
  const checkers::RandomBlockSparse bs(rng, packed, batch, heads, {16, 64, 128}, 300);
  const std::vector<int64_t>& q_seq = bs.q_seq;
  sm80::BlockSparseFwdParams p{};
  p.heads = static_cast<int>(heads);
  bs.set_pattern(p.pattern, pick(0, 1) == 1);
  p.kv_partial = bs.partial();
  if (pick(0, 1)) p.kv_full = bs.full();
  p.packed = packed;
  p.total_q_tiles = bs.q_tiles.back();
  p.q_split = bs.qbs > kernel_block ? static_cast<int>(bs.qbs / kernel_block) : 1;
  p.kv_split = bs.kbs > kernel_block ? static_cast<int>(bs.kbs / kernel_block) : 1;
  for (int64_t b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h) {
      policy::BlockSparsePolicy pol = p.pattern;
      pol.kv_partial = p.kv_partial.at(b, h, packed);
      pol.kv_full = p.kv_full.at(b, h, packed);
      Pairs want, got;
      checkers::for_each_policy_pair(pol, [&](int64_t q, int64_t k) { want.emplace(q, k); });
      std::vector<int> seen(q_seq.back(), 0);
      for (int64_t t = 0; t < sm80::BlockSparseSchedule::num_q_tiles(p); ++t) {
        const sm80::BlockSparseSchedule s(p, t, h, b);
        if (s.q_rows() > kernel_block) return 2;
        std::vector<int64_t> qtok(s.q_rows());
        std::vector<int32_t> wb(3 * s.q_rows()), we(3 * s.q_rows());
        for (int r = 0; r < s.q_rows(); ++r) {
          qtok[r] = s.q_row(p, r, &wb[3 * r], &we[3 * r]);
          if (qtok[r] < 0 || qtok[r] >= q_seq.back()) return 3;
          ++seen[qtok[r]];
        }
        for (int64_t e = 0; e < s.count(); ++e) {
          int rows;
          bool full;
          const auto kv = s.kv_tile(p, e, rows, full);
          if (rows > kernel_block) return 4;
          for (int c = 0; c < rows; ++c) {
            int32_t x[3];
            const int64_t ktok = s.kv_row(p, kv, c, x);
            for (int r = 0; r < s.q_rows(); ++r) {
              bool inside = true;
              for (int i = 0; i < 3; ++i) inside = inside && wb[3 * r + i] <= x[i] && x[i] < we[3 * r + i];
              if (full && !inside) return 5;
              if (inside && !got.emplace(qtok[r], ktok).second) return 6;
              ++checks;
            }
          }
        }
      }
      for (int c : seen)
        if (c != 1) return 7;
      if (got != want) return 8;
    }
  return 0;
}

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


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1])
def test_tile_iterator_matches_policy(tmp_path: Path, seed: int) -> None:
    assert run_host_checker(tmp_path, "checker", CHECKER, [str(seed)]).startswith("ok ")


@needs_cxx
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("family", ["strided_shard", "block_sparse"])
def test_schedule_matches_policy(tmp_path: Path, family: str, seed: int) -> None:
    source = {"strided_shard": S2_CHECKER, "block_sparse": BLOCK_SPARSE_CHECKER}[family]
    assert run_host_checker(tmp_path, f"{family}_checker", source, [str(seed)], cuda_headers=True).startswith("ok ")


@needs_nvcc
def test_register_layouts_of_the_kernel(tmp_path: Path) -> None:
    assert run_nvcc_checker(tmp_path, "layouts", LAYOUT_CHECKER).strip() == "ok"


def test_generated_instantiations_are_current() -> None:
    script = ROOT / "tools" / "generate_instantiations.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, "run python tools/generate_instantiations.py:\n" + result.stdout + result.stderr


def _cuda_build() -> bool:
    import natten_like  # noqa: F401  (loads the extension)
    import torch

    return hasattr(torch.ops.natten_like, "cuda_kernels")


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    for candidate in (Path("/usr/local/cuda/bin/cuobjdump"),):
        if candidate.exists():
            return str(candidate)
    try:
        import triton
    except ImportError:
        return None
    candidate = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(candidate) if candidate.exists() else None


def kernel_sass(library: Path, cuobjdump: str) -> dict[tuple[str, str], str]:
    """(arch, mangled kernel name) -> its SASS text, for every kernel of every cubin of ``library``."""
    text = subprocess.run([cuobjdump, "-sass", str(library)], capture_output=True, text=True, check=True).stdout
    kernels: dict[tuple[str, str], str] = {}
    arch, key = "?", None
    for line in text.splitlines():
        match = re.match(r"\s*arch = (\S+)", line)
        if match:
            arch = match.group(1)
            continue
        match = re.match(r"\s*Function : (\S+)", line)
        if match:
            key = (arch, match.group(1))
            kernels[key] = ""
        elif key is not None:
            kernels[key] += line + "\n"
    return kernels


def kernel_registers(library: Path, cuobjdump: str) -> dict[tuple[str, str], int]:
    """(arch, mangled kernel name) -> registers per thread, from the ELF resource usage."""
    text = subprocess.run([cuobjdump, "-res-usage", str(library)], capture_output=True, text=True, check=True).stdout
    regs: dict[tuple[str, str], int] = {}
    arch, name = "?", None
    for line in text.splitlines():
        match = re.search(r"arch = (\S+)", line)
        if match:
            arch = match.group(1)
        match = re.match(r"\s*Function (\S+):", line)
        if match:
            name = match.group(1)
        match = re.search(r"REG:(\d+)", line)
        if match and name is not None:
            regs[(arch, name)] = int(match.group(1))
    return regs


def _built_sass() -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], int]]:
    if not _cuda_build():
        pytest.skip("extension built without NATTEN_LIKE_CUDA_ARCH")
    cuobjdump = _cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton's copy)")
    import natten_like

    library = next(Path(natten_like.__file__).parent.glob("_C*.so"))
    return kernel_sass(library, cuobjdump), kernel_registers(library, cuobjdump)


def _count(pattern: str, body: str) -> int:
    return len(re.findall(pattern, body))


# The sm80 attention kernels (forward of every family, backward dK/dV and dQ, latent decode): tensor cores fed by
# cp.async and ldmatrix, no local memory. They are built for every arch named (sm_90a too, as Hopper's fallback).
SM80_MMA_KERNELS = (
    "sm80_fmha_fwd_kernel",
    *(f"sm80_{family}_bwd_{part}_kernel" for family in ("gna", "s2", "block_sparse") for part in ("dkdv", "dq")),
    "sm80_gna_bwd_additional_dkdv_kernel",
    "sm80_latent_fwd_kernel",
)


# The same kernels compiled for a newer arch (sm_90a: Hopper's fallback for what the sm90 kernels do not cover) are a
# different register allocation: at the 255-register cap, sm_90's ptxas spills a few registers in the additional-KV
# GNA dK/dV kernels (hd128 6 LDL/STL, D 192 / D_v 128 5, hd256 4) and the MLA decode kernel (8). Known performance
# debt, bounded here so that it cannot grow unnoticed; on their own arch (sm_80 cubins) no spill is allowed.
FALLBACK_MAX_LOCAL = 16


def test_sm80_kernels_use_tensor_cores_without_spills() -> None:
    sass, regs = _built_sass()
    found = {k: body for k, body in sass.items() if any(n in k[1] for n in SM80_MMA_KERNELS)}
    for kind in SM80_MMA_KERNELS:
        assert any(kind in name for _, name in found), f"no {kind} in the built library"
    problems = []
    for (arch, name), body in sorted(found.items()):
        hmma, local = _count(r"\bHMMA\.", body), _count(r"\b(LDL|STL)\b", body)
        cp_async, ldmatrix = _count(r"\bLDGSTS\b", body), _count(r"\bLDSM\.", body)
        counts = f"{hmma} HMMA, {cp_async} LDGSTS, {ldmatrix} LDSM, {local} LDL/STL"
        print(f"{arch} {name}: {counts}, {regs.get((arch, name), '?')} registers")
        if hmma == 0 or cp_async == 0 or ldmatrix == 0 or local > (0 if arch == "sm_80" else FALLBACK_MAX_LOCAL):
            problems.append(f"{arch} {name}: {counts}")
    assert not problems, "kernels without tensor cores / cp.async / ldmatrix, or with spills:\n" + "\n".join(problems)


def test_sm90_kernels_use_wgmma_and_tma_without_spills() -> None:
    sass, regs = _built_sass()
    import torch

    kinds, *_ = torch.ops.natten_like.cuda_kernels()
    if "sm90_gna_fwd" not in kinds:
        pytest.skip("extension built without 9.0a in NATTEN_LIKE_CUDA_ARCH")
    # GNA through multi-dimensional boxes; block-sparse and S2 (built with it) through the 1-D run kernel; MLA decode.
    names = ("sm90_gna_fwd_kernel", "sm90_seq_fwd_kernel", "sm90_latent_fwd_kernel")
    found = {k: body for k, body in sass.items() if k[0] == "sm_90a" and any(n in k[1] for n in names)}
    for n in names:
        assert any(n in name for _, name in found), f"no sm_90a {n} in the built library"
    for (arch, name), body in sorted(found.items()):
        hgmma, tma, local = _count(r"\bHGMMA\.", body), _count(r"\bUTMALDG\b", body), _count(r"\b(LDL|STL)\b", body)
        # Generic stores: the kernels store to global memory with STG and to smem with STS; ST.E is a store through a
        # generic address, which is what CuTe's address swizzle makes of a swizzled smem store (the layouts the kernels
        # store through take the swizzle on offsets instead).
        generic = _count(r"\bST\.E", body)
        print(f"{arch} {name}: {hgmma} HGMMA, {tma} UTMALDG, {local} LDL/STL, {generic} ST.E, "
              f"{regs.get((arch, name), '?')} registers")  # fmt: skip
        assert hgmma > 0, f"{name} has no wgmma (HGMMA) instructions"
        assert tma > 0, f"{name} has no TMA loads (UTMALDG)"
        assert local == 0, f"{name} spills to local memory ({local} LDL/STL)"
        assert generic == 0, f"{name} stores through generic addresses ({generic} ST.E)"
