"""Build of natten_like: the torch extension ``natten_like._C`` (CPU kernels always; CUDA kernels on request).

Environment:
  NATTEN_LIKE_CUDA_ARCH   archs to build CUDA kernels for, e.g. "8.0;9.0a"; unset or empty = CPU only. The sm80
                          kernels are built for every arch named (they are the fallback on newer GPUs); the Hopper
                          kernels only when 9.0a is named. The lowest arch's PTX is embedded for newer GPUs.
  NATTEN_LIKE_MINIMAL_INSTANCES=1   build only the kernel instantiations marked minimal in csrc/generated/sources.txt
                          (bfloat16, few head dims): what CI uses to compile-check every arch path in minutes.
  NATTEN_LIKE_DTYPES      comma-separated kernel dtypes to build, of "bf16" and "fp16" (default both); the GPU check
                          builds bf16 only, to fit its time.
  MAX_JOBS                parallel compile jobs (ninja); keep it at 1-2 on small machines, CUDA units are heavy.

Install with ``pip install --no-build-isolation .`` so the build uses the torch already installed (never a second one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
DTYPES = ("bf16", "fp16")  # kernel dtypes, as csrc/generated/sources.txt marks them


def kernel_dtypes() -> frozenset[str]:
    value = os.environ.get("NATTEN_LIKE_DTYPES", "").replace(";", ",")
    chosen = frozenset(d.strip() for d in value.split(",") if d.strip()) or frozenset(DTYPES)
    if not chosen <= set(DTYPES):
        raise RuntimeError(f"NATTEN_LIKE_DTYPES={value!r}: the kernel dtypes are {', '.join(DTYPES)}")
    return chosen


def read_sources(path: Path, minimal: bool = False, dtypes: frozenset[str] | None = None) -> dict[str, list[str]]:
    """Parse a sources list ("[section]" lines, "#" comments, "path [dtype] [minimal]" entries) into {section: [paths]}.

    With ``minimal``, entries not marked minimal are left out of sections that mark any entry minimal; with ``dtypes``,
    entries marked with another dtype are left out.
    """
    groups: dict[str, list[tuple[str, bool]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line.strip("[]")
            groups.setdefault(current, [])
            continue
        if current is None:
            raise RuntimeError(f"{path}: '{line}' is not under a [section]")
        name, *flags = line.split()
        if dtypes is not None and any(f in DTYPES and f not in dtypes for f in flags):
            continue
        groups[current].append((name, "minimal" in flags))
    result = {}
    for section, entries in groups.items():
        marked = any(m for _, m in entries)
        result[section] = [name for name, m in entries if m or not (minimal and marked)]
    return result


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

    sources = read_sources(ROOT / "csrc" / "sources.txt")
    minimal = os.environ.get("NATTEN_LIKE_MINIMAL_INSTANCES", "") == "1"
    dtypes = kernel_dtypes()
    generated = read_sources(ROOT / "csrc" / "generated" / "sources.txt", minimal, dtypes)
    include_dirs = [str(ROOT / "csrc" / "include")]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    archs = cuda_archs()
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    if archs and sources["cuda"] and os.path.exists(nvcc):
        nums = sorted((a.replace(".", "") for a in archs), key=lambda n: int(n.rstrip("a")))
        # SASS for each arch; the lowest plain arch also as PTX, which the driver compiles for GPUs newer than all.
        gencode = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in nums]
        plain = [n for n in nums if not n.endswith("a")]
        if plain:
            gencode.append(f"-gencode=arch=compute_{plain[0]},code=compute_{plain[0]}")
        with_sm90 = "90a" in nums
        cuda_sources = sources["cuda"] + generated.get("sm80", []) + (generated.get("sm90", []) if with_sm90 else [])
        macros = [("NATTEN_LIKE_WITH_CUDA", "1"), ("NATTEN_LIKE_WITH_SM90", "1" if with_sm90 else "0")]
        macros.append(("NATTEN_LIKE_MINIMAL_INSTANCES", "1" if minimal else "0"))
        macros += [(f"NATTEN_LIKE_WITH_{d.upper()}", "1" if d in dtypes else "0") for d in DTYPES]
        return [
            CUDAExtension(
                "natten_like._C",
                sources["cpu"] + cuda_sources,
                include_dirs=include_dirs + [cutlass_include()],
                define_macros=macros,
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
