"""Build of natten_like: the torch extension ``natten_like._C`` (CPU kernels always; CUDA kernels on request).

Environment:
  NATTEN_LIKE_CUDA_ARCH   archs to build CUDA kernels for, e.g. "8.0;9.0a;10.0a"; unset or empty = CPU only.
  MAX_JOBS                parallel compile jobs (ninja); keep it at 1-2 on small machines, CUDA units are heavy.

Install with ``pip install --no-build-isolation .`` so the build uses the torch already installed (never a second one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()


def read_sources() -> dict[str, list[str]]:
    """Parse csrc/sources.txt into {"cpu": [...], "cuda": [...]}."""
    groups: dict[str, list[str]] = {"cpu": [], "cuda": []}
    current = None
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current is None:
            raise RuntimeError(f"csrc/sources.txt: '{line}' is not under a [cpu] or [cuda] section")
        groups[current].append(line)
    return groups


def cutlass_include() -> str:
    import cutlass_library

    path = Path(cutlass_library.__file__).parent / "source" / "include"
    if not (path / "cute").is_dir():
        raise RuntimeError(f"nvidia-cutlass wheel found but {path} has no CuTe headers")
    return str(path)


def cuda_archs() -> list[str]:
    value = os.environ.get("NATTEN_LIKE_CUDA_ARCH", "").replace(",", ";")
    return [a.strip() for a in value.split(";") if a.strip()]


def extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = read_sources()
    include_dirs = [str(ROOT / "csrc" / "include")]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    archs = cuda_archs()
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    if archs and sources["cuda"] and os.path.exists(nvcc):
        gencode = []
        for arch in archs:
            num = arch.replace(".", "")
            gencode += [f"-gencode=arch=compute_{num},code=sm_{num}"]
        return [
            CUDAExtension(
                "natten_like._C",
                sources["cpu"] + sources["cuda"],
                include_dirs=include_dirs + [cutlass_include()],
                define_macros=[("NATTEN_LIKE_WITH_CUDA", "1")],
                extra_compile_args={
                    "cxx": cxx_flags,
                    "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", *gencode],
                },
                extra_link_args=["-fopenmp"],
            )
        ]
    if archs and not sources["cuda"]:
        print(
            "natten_like: NATTEN_LIKE_CUDA_ARCH is set but this version has no CUDA sources; building CPU kernels only"
        )
    elif archs:
        print(f"natten_like: NATTEN_LIKE_CUDA_ARCH is set but nvcc was not found at {nvcc}; building CPU kernels only")
    return [
        CppExtension(
            "natten_like._C",
            sources["cpu"],
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ]


def build_ext_cls():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_cls()},
)
