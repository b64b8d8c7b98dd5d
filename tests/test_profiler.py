"""Tests of ``python -m natten_like.profiler``: dry runs list every backend with its refusals, tiny CPU timing runs of
every family give the documented JSON, bad flags exit 2 with one line naming the flag, and booleans are parsed as
booleans ("False" is false).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from natten_like import profiler
from natten_like.backends import registered_backends

TINY = ["--reps", "2", "--warmup", "1", "-b", "1", "-n", "2"]
TINY_PROBLEMS = {
    "gna": ["-i", "8x8", "-w", "3", "-d", "8"],
    "attention": ["-i", "32", "-d", "8"],
    "block-sparse": ["-i", "64", "--q-block", "16", "--kv-block", "8", "--density", "0.5", "-d", "8"],
    "strided-shard": ["-i", "64", "--block-size", "8", "--local-blocks", "2", "--vert-stride", "3", "-d", "8"],
    "latent": ["--kv-len", "40", "--q-len", "2", "--page-size", "16", "--latent-dim", "16", "--rope-dim", "8"],
}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert profiler.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def run_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert profiler.main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_dry_run_lists_every_backend_with_tiles_and_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    assert profiler.main(["--dry-run", "-i", "16x16", "-w", "5", "-s", "2", "--causal", "0x1"]) == 0
    out = capsys.readouterr().out
    assert "window 5x5  stride 2x2  dilation 1x1  causal 0x1" in out
    for name in registered_backends("gna"):
        assert f"\n  {name} " in out
    # The CPU row carries the CPU tile table's shape and the simulator's tile bound for it.
    assert "8x8 / 8x8 (cpu)" in out
    assert "cuda: " in out and "tensors are not on a CUDA device" in out
    assert "auto-dispatch picks: cpu" in out
    assert "fwd ms" not in out  # nothing timed


@pytest.mark.parametrize("family", profiler.FAMILIES)
def test_dry_run_json_matches_the_registry(capsys: pytest.CaptureFixture[str], family: str) -> None:
    report = run_json(capsys, "--family", family, "--dry-run", *TINY_PROBLEMS[family])
    names = [b["name"] for b in report["backends"]]
    assert names == list(registered_backends(profiler.REGISTRY_NAME[family]))
    for b in report["backends"]:
        assert b["can_run"] == (not b["reasons"])
    assert report["dispatch"] == next(b["name"] for b in report["backends"] if b["can_run"])
    assert "baseline" not in report
    assert report["simulator"]["flop_bound"] >= 1.0


def test_backward_problem_reaches_the_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "--family", "latent", "--dry-run", "--backward", *TINY_PROBLEMS["latent"])
    cpu = next(b for b in report["backends"] if b["name"] == "cpu")
    assert not cpu["can_run"]
    assert any("forward only" in r for r in cpu["reasons"])
    assert report["dispatch"] == "reference"


@pytest.mark.parametrize("family", profiler.FAMILIES)
def test_tiny_cpu_timing_json(capsys: pytest.CaptureFixture[str], family: str) -> None:
    backward = [] if family == "latent" else ["--backward"]
    report = run_json(capsys, "--family", family, *TINY, *TINY_PROBLEMS[family], *backward)
    assert report["device"] == "cpu"
    base = report["baseline"]
    assert base["forward_ms"] > 0 and len(base["forward_samples_ms"]) == 2
    timed = [b for b in report["backends"] if "forward_ms" in b]
    assert {b["name"] for b in timed} == {b["name"] for b in report["backends"] if b["can_run"]} >= {"cpu", "reference"}
    for b in timed:
        assert b["forward_ms"] > 0 and len(b["forward_samples_ms"]) == 2
        assert b["speedup_forward"] == pytest.approx(base["forward_ms"] / b["forward_ms"])
        assert b["forward_gflops"] > 0
        assert ("backward_ms" in b) == bool(backward)
        if backward:
            assert b["speedup_backward"] == pytest.approx(base["backward_ms"] / b["backward_ms"])
    cpu = next(b for b in report["backends"] if b["name"] == "cpu")
    if family in ("gna", "block-sparse", "strided-shard"):
        assert cpu["predicted"]["tile_bound"] >= 1.0 and cpu["predicted"]["tile_bound_avg"] >= 1.0


def test_backends_flag_times_only_those(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, *TINY, *TINY_PROBLEMS["gna"], "--backends", "cpu")
    assert [b["name"] for b in report["backends"] if "forward_ms" in b] == ["cpu"]


def test_reference_left_out_of_large_problems(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(profiler, "REFERENCE_SCORE_BUDGET", 0)
    report = run_json(capsys, *TINY, *TINY_PROBLEMS["gna"])
    runnable = {b["name"] for b in report["backends"] if b["can_run"]}
    assert {b["name"] for b in report["backends"] if "forward_ms" in b} == runnable - {"reference"}
    assert any(n.startswith("reference not timed") for n in report["notes"])
    forced = run_json(capsys, *TINY, *TINY_PROBLEMS["gna"], "--backends", "cpu,reference")
    assert {b["name"] for b in forced["backends"] if "forward_ms" in b} == {"cpu", "reference"}


def test_forward_flops_count_the_exact_mask() -> None:
    args = profiler.build_parser().parse_args(["-i", "6x10", "-w", "6x10", "-b", "2", "-n", "3", "-d", "4"])
    full = profiler.gna_case(profiler.resolve(args), profiler.DTYPES["fp32"])
    assert full.forward_flops == 4 * 60 * 60 * 4 * 2 * 3  # window = input: dense, 4 * D FLOPs per pair and head
    args = profiler.build_parser().parse_args(["-i", "6x10", "-w", "3x10", "-b", "2", "-n", "3", "-d", "4"])
    assert profiler.gna_case(profiler.resolve(args), profiler.DTYPES["fp32"]).forward_flops == full.forward_flops / 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("False", False), ("false", False), ("0", False), ("no", False), ("True", True), ("1", True), ("ON", True)],
)
def test_bool_arg_is_not_truthiness(text: str, expected: bool) -> None:
    assert profiler.bool_arg(text) is expected


def test_bools_arg_per_dim() -> None:
    assert profiler.bools_arg("0x1") == (False, True)
    assert profiler.bools_arg("truexFalse") == (True, False)
    assert profiler.bools_arg("False") == (False,)


@pytest.mark.parametrize(("text", "causal"), [("False", False), ("false", False), ("0", False), ("true", True)])
def test_causal_flag_reaches_the_problem(capsys: pytest.CaptureFixture[str], text: str, causal: bool) -> None:
    report = run_json(capsys, "--dry-run", "-i", "16", "-w", "4", "--causal", text)
    assert report["flags"]["causal"] == [causal]
    assert f"causal {int(causal)}" in report["problem"]
    # Causal windows hold fewer keys: the exact pair count tells the two apart.
    assert (report["simulator"]["sparse_pairs"] < 16 * 4) == causal
    report = run_json(capsys, "--family", "attention", *TINY, *TINY_PROBLEMS["attention"], "--causal", text)
    assert report["baseline"]["causal"] is causal


def test_causal_per_dim_reaches_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "--dry-run", "-i", "8x8", "-w", "3", "--causal", "0x1")
    assert report["flags"]["causal"] == [False, True]
    assert "causal 0x1" in report["problem"]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--causal", "maybe"], "--causal"),
        (["-i", "8x8", "-w", "9"], "--window"),
        (["-i", "16x16", "-w", "7", "-s", "8"], "--stride"),
        (["-i", "16x16", "--causal", "0x1x1"], "--causal"),
        (["--family", "attention", "-w", "3"], "--window"),
        (["--family", "latent", "-d", "64"], "--dim"),
        (["--family", "attention", "-i", "8x8"], "--input"),
        (["-i", "8x8x8x8"], "--input"),
        (["-n", "6", "--heads-kv", "4"], "--heads-kv"),
        (["-b", "0"], "--batch"),
        (["--backends", "cpu,nope"], "--backends"),
        (["--family", "block-sparse", "--density", "0"], "--density"),
        (["--family", "block-sparse", "--q-block", "0"], "--q-block"),
        (["--family", "strided-shard", "--num-dense-heads", "9"], "--num-dense-heads"),
        (["--family", "latent", "--q-len", "8", "--kv-len", "4"], "--kv-len"),
        (["--dtype", "fp64"], "--dtype"),
        (["--reps", "0"], "--reps"),
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> None:
    err = run_error(capsys, "--dry-run", *argv)
    assert err.count("\n") == 1
    assert err.startswith("natten_like.profiler: error: ")
    assert flag in err


def test_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "natten_like.profiler", "--dry-run", "-i", "8", "-w", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "auto-dispatch picks: cpu" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "natten_like.profiler", "--causal", "x"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
