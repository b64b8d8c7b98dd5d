"""The build's own logic (setup.py): the sources lists, and the prebuilt kernel objects' manifest check, which must
refuse any object set that was built from other sources, flags or instance choices (a stale kernel linked silently
would be a wrong answer nobody sees). No compiler runs here."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def setup_py(monkeypatch):
    pytest.importorskip("cutlass_library", reason="the kernel key hashes the nvidia-cutlass version")
    spec = importlib.util.spec_from_file_location("natten_like_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, runs no setup()
    monkeypatch.setenv("NATTEN_LIKE_CUDA_ARCH", "9.0a")
    monkeypatch.setenv("NATTEN_LIKE_DTYPES", "bf16")
    monkeypatch.delenv("NATTEN_LIKE_MINIMAL_INSTANCES", raising=False)
    return module


def test_read_sources_sections_dtypes_and_minimal(setup_py, tmp_path):
    listing = tmp_path / "sources.txt"
    listing.write_text("# comment\n[a]\nx.cu bf16 minimal\ny.cu fp16\nz.cu bf16  # trailing\n[b]\nw.cpp\n")
    assert setup_py.read_sources(listing) == {"a": ["x.cu", "y.cu", "z.cu"], "b": ["w.cpp"]}
    assert setup_py.read_sources(listing, minimal=True) == {"a": ["x.cu"], "b": ["w.cpp"]}
    assert setup_py.read_sources(listing, dtypes=frozenset({"bf16"})) == {"a": ["x.cu", "z.cu"], "b": ["w.cpp"]}
    listing.write_text("orphan.cu\n")
    with pytest.raises(RuntimeError, match="not under a"):
        setup_py.read_sources(listing)


def test_kernel_build_follows_the_environment(setup_py, monkeypatch):
    build = setup_py.kernel_build()
    assert build["archs"] == ["90a"] and build["dtypes"] == ["bf16"] and not build["minimal"]
    assert build["gencode"] == ["-gencode=arch=compute_90a,code=sm_90a"]  # no plain arch: no PTX
    assert any("/sm90_" in u for u in build["units"]) and all("_fp16_" not in u for u in build["units"])
    monkeypatch.setenv("NATTEN_LIKE_CUDA_ARCH", "9.0a;8.0")
    assert setup_py.kernel_build()["gencode"][-1] == "-gencode=arch=compute_80,code=compute_80"
    monkeypatch.setenv("NATTEN_LIKE_CUDA_ARCH", "8.0")
    assert all("/sm90_" not in u for u in setup_py.kernel_build()["units"])
    monkeypatch.setenv("NATTEN_LIKE_CUDA_ARCH", "")
    assert setup_py.kernel_build() is None


def write_prebuilt(setup_py, folder: Path, build: dict, **changes) -> None:
    folder.mkdir(exist_ok=True)
    manifest = {k: build[k] for k in ("archs", "minimal", "dtypes", "units")}
    manifest.update(key=setup_py.kernel_key(build), nvcc="test")
    manifest.update(changes)
    (folder / setup_py.MANIFEST).write_text(json.dumps(manifest))
    for unit in build["units"]:
        (folder / setup_py.object_name(unit)).write_bytes(b"")


def test_prebuilt_objects_are_linked_only_when_their_manifest_matches(setup_py, tmp_path):
    build = setup_py.kernel_build()
    folder = tmp_path / "kernels"
    with pytest.raises(RuntimeError, match="no manifest.json"):
        setup_py.prebuilt_objects(folder, build)

    write_prebuilt(setup_py, folder, build)
    objects = setup_py.prebuilt_objects(folder, build)
    assert [Path(o).name for o in objects] == [Path(u).with_suffix(".o").name for u in build["units"]]

    write_prebuilt(setup_py, folder, build, dtypes=["bf16", "fp16"])
    with pytest.raises(RuntimeError, match=r"built for dtypes \['bf16', 'fp16'\], this build needs \['bf16'\]"):
        setup_py.prebuilt_objects(folder, build)
    write_prebuilt(setup_py, folder, build, minimal=True)
    with pytest.raises(RuntimeError, match="built for minimal"):
        setup_py.prebuilt_objects(folder, build)
    write_prebuilt(setup_py, folder, build, key="0" * 64)
    with pytest.raises(RuntimeError, match="key mismatch"):
        setup_py.prebuilt_objects(folder, build)

    write_prebuilt(setup_py, folder, build)
    (folder / setup_py.object_name(build["units"][-1])).unlink()
    with pytest.raises(RuntimeError, match="missing"):
        setup_py.prebuilt_objects(folder, build)


def test_kernel_key_covers_headers_units_macros_and_flags(setup_py, tmp_path, monkeypatch):
    """Any edit a kernel object depends on changes the key: a header, a unit, a macro, an nvcc flag."""
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    monkeypatch.setattr(setup_py, "ROOT", tmp_path)
    build = setup_py.kernel_build()
    key = setup_py.kernel_key(build)
    assert key == setup_py.kernel_key(setup_py.kernel_build())

    header = tmp_path / "csrc/include/natten_like/policy/gna.hpp"
    text = header.read_text()
    header.write_text(text + "\n")
    assert setup_py.kernel_key(build) != key
    header.write_text(text)
    assert setup_py.kernel_key(build) == key

    unit = tmp_path / build["units"][0]
    unit.write_text(unit.read_text() + "// edited\n")
    assert setup_py.kernel_key(build) != key
    unit.write_text(unit.read_text().removesuffix("// edited\n"))

    other = dict(build, macros=[*build["macros"][:-1], ("NATTEN_LIKE_WITH_FP16", "1")])
    assert setup_py.kernel_key(other) != key
    monkeypatch.setattr(setup_py, "NVCC_FLAGS", [*setup_py.NVCC_FLAGS, "-G"])
    assert setup_py.kernel_key(build) != key
