"""bench/gpu_smoke.py, the small per-kernel problems run under compute-sanitizer on a GPU, run here on the CPU kernels:
every case must call its family's public API correctly and match the float64 reference, so that the script works the
first time a GPU is lent; and its comparison must be able to fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def smoke(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "bench" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("NATTEN_LIKE_SM90", "NATTEN_LIKE_SM90_PERSISTENT"):  # main() sets them per mode
        monkeypatch.setenv(name, "off")
    return module


def test_every_case_matches_the_reference_on_the_cpu_kernels(smoke, capsys) -> None:
    assert smoke.main(["--backend", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("ok", "FAIL"))]
    assert len(lines) == 8 and all(line.startswith("ok") for line in lines)


def test_a_case_off_the_reference_fails(smoke, monkeypatch, capsys) -> None:
    monkeypatch.setattr(smoke, "TOL", 1e-9)  # bf16 inputs cannot meet it
    assert smoke.main(["--backend", "cpu"]) == 1
    assert "gpu_smoke: 8 failed" in capsys.readouterr().out
