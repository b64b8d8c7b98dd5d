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
  NATTEN_LIKE_KERNEL_OBJECTS=DIR   link the kernel instantiations from objects that ``python setup.py build_kernels
                          --out DIR`` compiled earlier (on any machine with the same nvcc major version), instead of
                          compiling them: only the torch bindings are compiled. DIR's manifest must match this build
                          (archs, dtypes, instance set, flags, and a hash of every kernel source and header), else the
                          build stops and says which differs; stale objects are never linked.

The kernel units include no torch header, so their objects do not depend on the torch version: ``build_kernels`` on a
development machine, then a build on the GPU machine (another torch) with NATTEN_LIKE_KERNEL_OBJECTS, compiles in a
minute what takes most of the GPU check's time otherwise (bench/gpu_check.sh).

Install with ``pip install --no-build-isolation .`` so the build uses the torch already installed (never a second one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Command, setup

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


NVCC_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
MANIFEST = "manifest.json"


def nvcc_path() -> str:
    return shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")


def kernel_build() -> dict | None:
    """What the CUDA part of this build compiles, from the environment: None for a CPU-only build, else a dict of
    ``archs``, ``minimal``, ``dtypes``, ``units`` (the generated kernel sources), ``macros`` and ``gencode`` (the nvcc
    target flags)."""
    archs = cuda_archs()
    sources = read_sources(ROOT / "csrc" / "sources.txt")
    if not archs or not sources["cuda"]:
        return None
    minimal = os.environ.get("NATTEN_LIKE_MINIMAL_INSTANCES", "") == "1"
    dtypes = kernel_dtypes()
    generated = read_sources(ROOT / "csrc" / "generated" / "sources.txt", minimal, dtypes)
    nums = sorted((a.replace(".", "") for a in archs), key=lambda n: int(n.rstrip("a")))
    # SASS for each arch; the lowest plain arch also as PTX, which the driver compiles for GPUs newer than all.
    gencode = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in nums]
    plain = [n for n in nums if not n.endswith("a")]
    if plain:
        gencode.append(f"-gencode=arch=compute_{plain[0]},code=compute_{plain[0]}")
    with_sm90 = "90a" in nums
    macros = [("NATTEN_LIKE_WITH_CUDA", "1"), ("NATTEN_LIKE_WITH_SM90", "1" if with_sm90 else "0")]
    macros.append(("NATTEN_LIKE_MINIMAL_INSTANCES", "1" if minimal else "0"))
    macros += [(f"NATTEN_LIKE_WITH_{d.upper()}", "1" if d in dtypes else "0") for d in DTYPES]
    return {
        "archs": nums,
        "minimal": minimal,
        "dtypes": sorted(dtypes),
        "units": generated.get("sm80", []) + (generated.get("sm90", []) if with_sm90 else []),
        "macros": macros,
        "gencode": gencode,
    }


def unit_nvcc_flags(build: dict) -> list[str]:
    """nvcc flags of a kernel unit but include paths and macros: torch's own (the extension build adds them), ours."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    return [*COMMON_NVCC_FLAGS, *NVCC_FLAGS, *build["gencode"]]


def kernel_key(build: dict) -> str:
    """Hash of everything a kernel object depends on but the toolchain: flags, macros, the CUTLASS version, and the text
    of every kernel unit and every header under csrc/include and csrc/generated."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    digest.update(json.dumps([build["macros"], unit_nvcc_flags(build), version("nvidia-cutlass")]).encode())
    headers = [*ROOT.glob("csrc/include/**/*"), *ROOT.glob("csrc/generated/*.hpp")]
    files = sorted(path for path in headers if path.is_file())
    for path in files + [ROOT / unit for unit in build["units"]]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def object_name(unit: str) -> str:
    return Path(unit).with_suffix(".o").name


def prebuilt_objects(folder: Path, build: dict) -> list[str]:
    """The objects of ``folder`` (written by ``setup.py build_kernels``) for ``build``'s kernel units, after checking
    that its manifest describes this very build; raises RuntimeError naming the first difference otherwise."""
    path = folder / MANIFEST
    if not path.is_file():
        raise RuntimeError(f"NATTEN_LIKE_KERNEL_OBJECTS={folder}: no {MANIFEST} there (run setup.py build_kernels)")
    manifest = json.loads(path.read_text())
    for field in ("archs", "minimal", "dtypes", "units"):
        if manifest.get(field) != build[field]:
            raise RuntimeError(
                f"NATTEN_LIKE_KERNEL_OBJECTS={folder}: built for {field} {manifest.get(field)}, "
                f"this build needs {build[field]}"
            )
    if manifest.get("key") != kernel_key(build):
        raise RuntimeError(
            f"NATTEN_LIKE_KERNEL_OBJECTS={folder}: the kernel sources, flags or CUTLASS version changed since those "
            "objects were built (key mismatch): rebuild them with setup.py build_kernels"
        )
    objects = [folder / object_name(unit) for unit in build["units"]]
    missing = [str(o) for o in objects if not o.is_file()]
    if missing:
        raise RuntimeError(f"NATTEN_LIKE_KERNEL_OBJECTS={folder}: missing {', '.join(missing)}")
    return [str(o) for o in objects]


class BuildKernels(Command):
    """``python setup.py build_kernels [--out DIR]``: compile the kernel units of the build the environment describes
    (NATTEN_LIKE_CUDA_ARCH, NATTEN_LIKE_DTYPES, NATTEN_LIKE_MINIMAL_INSTANCES; MAX_JOBS jobs) into DIR with a manifest,
    for a later build with NATTEN_LIKE_KERNEL_OBJECTS=DIR."""

    description = "compile the CUDA kernel units into prebuilt objects (see NATTEN_LIKE_KERNEL_OBJECTS)"
    user_options = [("out=", None, "output folder (default: build/kernels)")]

    def initialize_options(self) -> None:
        self.out = None

    def finalize_options(self) -> None:
        self.out = Path(self.out or ROOT / "build" / "kernels").resolve()

    def run(self) -> None:
        build = kernel_build()
        nvcc = nvcc_path()
        if build is None or not os.path.exists(nvcc):
            raise SystemExit("build_kernels: set NATTEN_LIKE_CUDA_ARCH and install a CUDA toolkit (nvcc) first")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MANIFEST).unlink(missing_ok=True)  # a partial set must never look complete
        flags = [f"-D{k}={v}" for k, v in build["macros"]]
        flags += ["-I", str(ROOT / "csrc" / "include"), "-I", cutlass_include(), *unit_nvcc_flags(build)]
        flags += ["-Xcompiler", "-fPIC"]
        units = build["units"]
        key = kernel_key(build)  # of the sources as they are now: an edit during the build must not pass as built
        done = []

        def compile_unit(unit: str) -> None:
            target = self.out / object_name(unit)
            start = time.time()
            proc = subprocess.run(
                [nvcc, *flags, "-c", str(ROOT / unit), "-o", f"{target}.tmp"], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{unit}: nvcc failed\n{proc.stderr[-4000:]}")
            os.replace(f"{target}.tmp", target)
            done.append(unit)
            print(f"build_kernels: [{len(done)}/{len(units)}] {unit} ({time.time() - start:.0f}s)", flush=True)

        jobs = max(1, int(os.environ.get("MAX_JOBS", "") or os.cpu_count() or 1))
        with ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(compile_unit, unit) for unit in units]:
                try:
                    future.result()
                except RuntimeError as error:
                    pool.shutdown(cancel_futures=True)
                    raise SystemExit(f"build_kernels: {error}") from None
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        if kernel_key(build) != key:
            raise SystemExit("build_kernels: the kernel sources changed during the build; run it again")
        fields = {k: build[k] for k in ("archs", "minimal", "dtypes", "units")}
        manifest = {**fields, "key": key, "nvcc": version}
        (self.out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"build_kernels: {len(units)} objects in {self.out}", file=sys.stderr)


def extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = read_sources(ROOT / "csrc" / "sources.txt")
    include_dirs = [str(ROOT / "csrc" / "include")]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    archs = cuda_archs()
    build = kernel_build()
    nvcc = nvcc_path()
    if build is not None and os.path.exists(nvcc):
        prebuilt = os.environ.get("NATTEN_LIKE_KERNEL_OBJECTS", "")
        objects = prebuilt_objects(Path(prebuilt).resolve(), build) if prebuilt else []
        if objects:
            print(f"natten_like: linking {len(objects)} prebuilt kernel objects from {prebuilt}")
        return [
            CUDAExtension(
                "natten_like._C",
                sources["cpu"] + sources["cuda"] + ([] if objects else build["units"]),
                include_dirs=include_dirs + [cutlass_include()],
                define_macros=build["macros"],
                extra_compile_args={"cxx": cxx_flags, "nvcc": NVCC_FLAGS + build["gencode"]},
                extra_objects=objects,
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


if __name__ == "__main__":  # also under pip: setuptools runs this file as __main__ (tests import it for its helpers)
    setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": build_ext_cls(), "build_kernels": BuildKernels},
    )
