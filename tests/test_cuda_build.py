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

ROOT = Path(__file__).resolve().parent.parent

# Checks GnaKvTileIterator (what the kernel runs) against GnaPolicy (the definition) for random problems of rank 1-3,
# with the problem padded to rank 3 exactly as csrc/bindings/gna_cuda.cpp pads it.
CHECKER = r"""
#include <cstdio>
#include <random>
#include <vector>

#include "natten_like/sm80/gna_tile_iterator.hpp"

using namespace natten_like;

template <int R>
int check(std::mt19937& rng, long& checks) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  policy::GnaPolicy<R> pol;
  policy::GnaPolicy<3> pad;
  const int off = 3 - R;
  for (int i = 0; i < off; ++i) {
    pad.dim[i] = policy::GnaDim{1, 1, 1, 1, false};
    pad.tq[i] = pad.tk[i] = 1;
  }
  for (int i = 0; i < R; ++i) {
    const int64_t L = pick(2, R == 1 ? 150 : (R == 2 ? 24 : 11));
    const int64_t d = pick(1, std::max<int64_t>(1, L / 2));
    const int64_t lg = L / d;  // shortest group
    const int64_t k = pick(std::min<int64_t>(2, lg), lg);
    const int64_t s = pick(1, k);
    pol.dim[i] = policy::GnaDim{L, k, s, d, pick(0, 1) == 1};
    pol.tq[i] = pick(1, R == 1 ? 64 : (R == 2 ? 8 : 4));
    pol.tk[i] = pick(1, R == 1 ? 64 : (R == 2 ? 8 : 4));
    pad.dim[off + i] = pol.dim[i];
    pad.tq[off + i] = pol.tq[i];
    pad.tk[off + i] = pol.tk[i];
  }
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

#include "natten_like/sm80/sm80_fmha_fwd_kernel.hpp"

using namespace cute;
namespace nl = natten_like::sm80;

template <class Element, int D>
int check() {
  using T = nl::Sm80FmhaFwdTraits<Element, D, 64, 64>;
  typename T::TiledMma mma;
  int bad = 0;
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
  const int bad = check<cutlass::half_t, 64>() + check<cutlass::bfloat16_t, 128>();
  std::printf(bad ? "mismatch %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


def _cxx() -> str | None:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(_cxx() is None, reason="no host C++ compiler to build the iterator checker")
@pytest.mark.parametrize("seed", [0, 1])
def test_tile_iterator_matches_policy(tmp_path: Path, seed: int) -> None:
    src = tmp_path / "checker.cpp"
    src.write_text(CHECKER)
    exe = tmp_path / "checker"
    subprocess.run(
        [_cxx(), "-std=c++20", "-O1", f"-I{ROOT / 'csrc' / 'include'}", str(src), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    result = subprocess.run([str(exe), str(seed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok ")


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)


def _cutlass_include() -> str | None:
    try:
        import cutlass_library
    except ImportError:
        return None
    path = Path(cutlass_library.__file__).parent / "source" / "include"
    return str(path) if (path / "cute").is_dir() else None


@pytest.mark.skipif(_nvcc() is None or _cutlass_include() is None, reason="needs nvcc and the nvidia-cutlass headers")
def test_register_layouts_of_the_kernel(tmp_path: Path) -> None:
    src = tmp_path / "layouts.cu"
    src.write_text(LAYOUT_CHECKER)
    exe = tmp_path / "layouts"
    include = ROOT / "csrc" / "include"
    cmd = [_nvcc(), "-std=c++20", "-arch=sm_80", "--expt-relaxed-constexpr", f"-I{include}", f"-I{_cutlass_include()}"]
    subprocess.run([*cmd, str(src), "-o", str(exe)], check=True, capture_output=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_generated_instantiations_are_current() -> None:
    script = ROOT / "tools" / "generate_instantiations.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, "run python tools/generate_instantiations.py:\n" + result.stdout + result.stderr


def _cuda_build() -> bool:
    import natten_like  # noqa: F401  (loads the extension)
    import torch

    return hasattr(torch.ops.natten_like, "sm80_gna_forward_instances")


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


def kernel_sass(library: Path, cuobjdump: str) -> dict[str, str]:
    """Mangled kernel name -> its SASS text, for every kernel of ``library``."""
    text = subprocess.run([cuobjdump, "-sass", str(library)], capture_output=True, text=True, check=True).stdout
    kernels: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        match = re.match(r"\s*Function : (\S+)", line)
        if match:
            name = match.group(1)
            kernels[name] = ""
        elif name is not None:
            kernels[name] += line + "\n"
    return kernels


def kernel_registers(library: Path, cuobjdump: str) -> dict[str, int]:
    """Mangled kernel name -> registers per thread, from the ELF resource usage."""
    text = subprocess.run([cuobjdump, "-res-usage", str(library)], capture_output=True, text=True, check=True).stdout
    regs: dict[str, int] = {}
    name = None
    for line in text.splitlines():
        match = re.match(r"\s*Function (\S+):", line)
        if match:
            name = match.group(1)
        match = re.search(r"REG:(\d+)", line)
        if match and name is not None:
            regs[name] = int(match.group(1))
    return regs


def test_sm80_kernels_use_tensor_cores_without_spills() -> None:
    if not _cuda_build():
        pytest.skip("extension built without NATTEN_LIKE_CUDA_ARCH")
    cuobjdump = _cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton's copy)")
    import natten_like

    library = next(Path(natten_like.__file__).parent.glob("_C*.so"))
    sass = {n: s for n, s in kernel_sass(library, cuobjdump).items() if "sm80_gna_fwd_kernel" in n}
    assert len(sass) >= 1, "no sm80_gna_fwd_kernel in the built library"
    regs = kernel_registers(library, cuobjdump)
    for name, body in sorted(sass.items()):
        hmma = len(re.findall(r"\bHMMA\.", body))
        cp_async = len(re.findall(r"\bLDGSTS\b", body))
        ldmatrix = len(re.findall(r"\bLDSM\.", body))
        local = len(re.findall(r"\b(LDL|STL)\b", body))
        counts = f"{hmma} HMMA, {cp_async} LDGSTS, {ldmatrix} LDSM, {local} LDL/STL"
        print(f"{name}: {counts}, {regs.get(name, '?')} registers")
        assert hmma > 0, f"{name} has no tensor-core instructions"
        assert cp_async > 0 and ldmatrix > 0, f"{name} loads without cp.async / ldmatrix"
        assert local == 0, f"{name} spills to local memory ({local} LDL/STL)"
