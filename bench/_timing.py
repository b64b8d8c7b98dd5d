"""Timing, memory and machine-description helpers shared by the benchmarks in ``bench/``.

Times are wall-clock (``time.perf_counter``) around one synchronous CPU call, warm-up excluded, summarised by the
median. Peak memory is read from the torch profiler's allocation events (``profile_memory=True``): the highest sum of
bytes of torch tensors allocated and still alive during the call, above what was alive when it started. Memory that
does not go through torch's CPU allocator (e.g. a kernel's ``std::vector`` scratch, Inductor's C++ stack arrays) is
not seen.

NVTX: every measured call can run inside a named NVTX push/pop range (:func:`nvtx_range`), so that ``nsys``/``ncu``
timelines and filters can find it. Ranges are real only when enabled (:func:`set_nvtx`; by default when CUDA is
available), else a no-op context manager; the range encloses the timed window, so its cost (a push and a pop, about a
microsecond with no tool attached) is not in the samples.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

_nvtx_enabled: bool | None = None  # None: decide on first use (CUDA available)


def set_nvtx(mode: str = "auto") -> bool:
    """Turn NVTX ranges "on", "off", or "auto" (on when ``torch.cuda.is_available()``); returns whether they are on.

    "on" works without a GPU when torch was built with NVTX (``nsys -t nvtx`` then sees CPU-only runs too); a torch
    without it raises here rather than in the middle of a benchmark.
    """
    global _nvtx_enabled
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"nvtx mode must be auto, on or off, got {mode!r}")
    enabled = torch.cuda.is_available() if mode == "auto" else mode == "on"
    if enabled:
        try:
            torch.cuda.nvtx.range_push("natten_like/nvtx-check")
            torch.cuda.nvtx.range_pop()
        except Exception as e:  # noqa: BLE001 - torch built without NVTX: auto runs without ranges
            if mode == "on":
                raise RuntimeError(f"NVTX ranges requested but torch.cuda.nvtx fails: {type(e).__name__}: {e}") from e
            enabled = False
    _nvtx_enabled = enabled
    return enabled


def nvtx_range(name: str | None) -> AbstractContextManager[object]:
    """``torch.cuda.nvtx.range(name)`` when NVTX is on (see :func:`set_nvtx`) and ``name`` is given, else a no-op."""
    if name is None:
        return nullcontext()
    if _nvtx_enabled is None:
        set_nvtx("auto")
    return torch.cuda.nvtx.range(name) if _nvtx_enabled else nullcontext()


def nvtx_wrap(name: str | None, fn: Callable[[], object] | None) -> Callable[[], object] | None:
    """``fn`` run inside :func:`nvtx_range` (``None`` stays ``None``); for untimed calls such as setups."""
    if fn is None or name is None:
        return fn

    def wrapped() -> object:
        with nvtx_range(name):
            return fn()

    return wrapped


@dataclass
class Timing:
    """Wall-clock samples of one measured call, in milliseconds."""

    samples_ms: list[float] = field(default_factory=list)
    warmup_ms: float = 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def reps(self) -> int:
        return len(self.samples_ms)


def time_call(
    fn: Callable[[], object],
    reps: int,
    *,
    warmup: int = 1,
    setup: Callable[[], None] | None = None,
    slow_ms: float = 3000.0,
    slow_reps: int = 3,
    nvtx: str | None = None,
) -> Timing:
    """Median-able wall-clock samples of ``fn()`` after ``warmup`` untimed calls.

    ``setup`` runs untimed before every call (e.g. a forward pass whose backward is timed). When a warm-up call takes
    longer than ``slow_ms``, warm-up stops there and the number of timed repetitions drops to ``min(reps, slow_reps)``
    so that dense baselines on large problems finish; the count actually used is kept in :attr:`Timing.reps`.
    Every call of ``fn`` (warm-up too) runs inside the NVTX range ``nvtx`` (:func:`nvtx_range`), outside the timer.
    """
    result = Timing()
    for _ in range(max(warmup, 1)):
        if setup is not None:
            setup()
        with nvtx_range(nvtx):
            t0 = time.perf_counter()
            fn()
            result.warmup_ms = (time.perf_counter() - t0) * 1e3
        if result.warmup_ms > slow_ms:
            break
    if result.warmup_ms > slow_ms:
        reps = min(reps, slow_reps)
    for _ in range(reps):
        if setup is not None:
            setup()
        with nvtx_range(nvtx):
            t0 = time.perf_counter()
            fn()
            result.samples_ms.append((time.perf_counter() - t0) * 1e3)
    return result


@dataclass
class Measured:
    """One contender of :func:`time_interleaved`: the timed call, an optional untimed setup run before each call, and
    the name of the NVTX range each call of ``fn`` runs in (None: no range)."""

    fn: Callable[[], object]
    setup: Callable[[], None] | None = None
    nvtx: str | None = None


def time_interleaved(
    contenders: dict[str, Measured],
    reps: int,
    *,
    warmup: int = 1,
    slow_ms: float = 3000.0,
    slow_reps: int = 3,
) -> dict[str, Timing]:
    """Samples of several calls taken in alternation, so that machine load drifting over time hits all of them alike.

    Each contender is warmed up like :func:`time_call` (and gets ``min(reps, slow_reps)`` samples when slower than
    ``slow_ms``); then rounds run round-robin, each contender's samples spread evenly over the rounds.
    """
    results: dict[str, Timing] = {}
    targets: dict[str, int] = {}
    for name, c in contenders.items():
        results[name] = time_call(
            c.fn, 0, warmup=warmup, setup=c.setup, slow_ms=slow_ms, slow_reps=slow_reps, nvtx=c.nvtx
        )
        targets[name] = min(reps, slow_reps) if results[name].warmup_ms > slow_ms else reps
    rounds = max(targets.values(), default=0)
    for r in range(rounds):
        for name, c in contenders.items():
            n = targets[name]
            if (r + 1) * n // rounds == r * n // rounds:
                continue
            if c.setup is not None:
                c.setup()
            with nvtx_range(c.nvtx):
                t0 = time.perf_counter()
                c.fn()
                results[name].samples_ms.append((time.perf_counter() - t0) * 1e3)
    return results


def peak_alloc_bytes(fn: Callable[[], object], setup: Callable[[], None] | None = None, nvtx: str | None = None) -> int:
    """Peak bytes of torch CPU tensors allocated during one ``fn()`` call and alive at once (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    if setup is not None:
        setup()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, nvtx_range(nvtx):
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def cpu_model() -> str:
    """CPU model name as ``lscpu`` reports it (falls back to :func:`platform.processor`)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    """Short hash of HEAD of the checkout this file lives in, with ``+dirty`` when tracked files differ."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = ["git", "status", "--porcelain", "-uno"]
        dirty = subprocess.run(status, cwd=here, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def machine_info() -> dict[str, object]:
    """What a results table must state: CPU, threads, torch version, load average, date, commit."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_1m": os.getloadavg()[0],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
