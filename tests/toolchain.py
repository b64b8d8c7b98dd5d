"""The compilers and headers the host-side kernel tests build with, and the compile-and-run step they share.

The kernels' index logic (policies, schedules, iterators, TMA boxes) is plain C++ that these tests compile with the host
compiler and run on random problems; the CuTe layout algebra is compiled with nvcc and evaluated on the host. Neither
needs a GPU.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "csrc" / "include"
CHECKERS = ROOT / "tests" / "checkers"  # headers shared by the checkers
CUDA_INCLUDE = Path("/usr/local/cuda/include")  # cuda_runtime_api.h, for the kernel params headers' launch types


def cxx() -> str | None:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def nvcc() -> str | None:
    return shutil.which("nvcc") or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)


def cutlass_include() -> str | None:
    try:
        import cutlass_library
    except ImportError:
        return None
    path = Path(cutlass_library.__file__).parent / "source" / "include"
    return str(path) if (path / "cute").is_dir() else None


needs_cxx = pytest.mark.skipif(cxx() is None, reason="no host C++ compiler to build the checker")
needs_nvcc = pytest.mark.skipif(
    nvcc() is None or cutlass_include() is None, reason="needs nvcc and the nvidia-cutlass headers"
)


def _run(exe: Path, args: Sequence[str], timeout: float | None) -> str:
    result = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def run_host_checker(
    tmp_path: Path,
    name: str,
    source: str,
    args: Sequence[str] = (),
    *,
    opt: str = "-O1",
    cuda_headers: bool = False,
    timeout: float | None = None,
) -> str:
    """Compiles ``source`` with the host compiler against csrc/include (and the CUDA toolkit's headers when
    ``cuda_headers``; skips when they are missing), runs it with ``args``, asserts it exits 0 and returns its stdout."""
    src, exe = tmp_path / f"{name}.cpp", tmp_path / name
    src.write_text(source)
    cmd = [cxx(), "-std=c++20", opt, f"-I{INCLUDE}", f"-I{CHECKERS}", *([f"-I{CUDA_INCLUDE}"] if cuda_headers else [])]
    built = subprocess.run([*cmd, str(src), "-o", str(exe)], capture_output=True, text=True)
    if built.returncode != 0 and cuda_headers and "cuda_runtime_api.h" in built.stderr:
        pytest.skip("no CUDA toolkit headers (cuda_runtime_api.h)")
    assert built.returncode == 0, built.stderr[-4000:]
    return _run(exe, args, timeout)


def run_nvcc_checker(
    tmp_path: Path, name: str, source: str, arch: Sequence[str] = ("-arch=sm_80",), args: Sequence[str] = ()
) -> str:
    """Compiles ``source`` with nvcc (CuTe / CUTLASS headers, ``arch`` flags) into a host program, runs it, asserts it
    exits 0 and returns its stdout."""
    src, exe = tmp_path / f"{name}.cu", tmp_path / name
    src.write_text(source)
    cmd = [nvcc(), "-std=c++20", "--expt-relaxed-constexpr", *arch, f"-I{INCLUDE}", f"-I{CHECKERS}"]
    cmd.append(f"-I{cutlass_include()}")
    built = subprocess.run([*cmd, str(src), "-o", str(exe)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    return _run(exe, args, None)
