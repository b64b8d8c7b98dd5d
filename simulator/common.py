"""Shared pieces of the simulator: input validation, GPU presets, roofline time and Amdahl's law.

Every check raises ``ValueError`` whose message starts with the argument's name and states the rule, so the CLI can
print it as its one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

BF16_BYTES = 2


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools refused: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    """``value`` as a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def per_dim(
    name: str, value: int | bool | Sequence[int] | Sequence[bool], rank: int, minimum: int = 1
) -> tuple[int, ...]:
    """One int per token dim: a scalar or a one-entry sequence is broadcast to ``rank`` dims; otherwise a sequence must
    have exactly ``rank`` entries."""
    values = [value] if isinstance(value, (int, bool)) else list(value)
    values = values * rank if len(values) == 1 else values
    if len(values) != rank:
        raise ValueError(f"{name}: needs {rank} entries (one per token dim of the input), got {len(values)}")
    return tuple(
        int(check_int(f"{name}[{i}]", int(v) if isinstance(v, bool) else v, minimum)) for i, v in enumerate(values)
    )


@dataclass(frozen=True)
class Gpu:
    """Peak rates of one GPU: dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s and HBM TB/s."""

    name: str
    arch: str
    tflops: float
    hbm_tbps: float
    source: str


# Datasheet figures, SXM parts. Measured rates are usually 70-85% of these; pass them with --tflops / --hbm-tbps.
GPUS: dict[str, Gpu] = {
    "a100": Gpu("A100-SXM4-80GB", "sm80", 312.0, 2.039, "NVIDIA A100 datasheet: BF16 312 TFLOP/s, HBM2e 2,039 GB/s"),
    "h100": Gpu("H100-SXM5-80GB", "sm90", 989.4, 3.35, "NVIDIA H100 datasheet: BF16 1,979 TFLOP/s sparse, 3.35 TB/s"),
    "h200": Gpu("H200-SXM-141GB", "sm90", 989.4, 4.8, "NVIDIA H200 datasheet: BF16 1,979 TFLOP/s sparse, 4.8 TB/s"),
    "b200": Gpu("B200-SXM-180GB", "sm100", 2250.0, 8.0, "NVIDIA HGX B200 datasheet: BF16 4.5 PFLOP/s sparse, 8 TB/s"),
}


def select_gpus(gpu: str | None, tflops: float | None = None, hbm_tbps: float | None = None) -> tuple[Gpu, ...]:
    """The GPUs to report: every preset when ``gpu`` is None, else that one, measured rates replacing its datasheet."""
    if gpu is None:
        if tflops is not None or hbm_tbps is not None:
            raise ValueError("tflops: a measured rate needs gpu to say which preset it replaces")
        return tuple(GPUS.values())
    key = gpu.lower()
    if key not in GPUS:
        raise ValueError(f"gpu: must be one of {', '.join(GPUS)}, got {gpu!r}")
    base = GPUS[key]
    if tflops is None and hbm_tbps is None:
        return (base,)
    return (
        Gpu(
            base.name,
            base.arch,
            base.tflops if tflops is None else check_positive("tflops", tflops),
            base.hbm_tbps if hbm_tbps is None else check_positive("hbm_tbps", hbm_tbps),
            "measured (given on the command line)",
        ),
    )


@dataclass(frozen=True)
class Roofline:
    """Speed-of-light forward time on one GPU: max(compute time, memory time) for the dense and the sparse problem."""

    gpu: str
    dense_ms: float
    sparse_ms_flop: float
    sparse_ms_tile: float
    bound: str


def roofline(gpu: Gpu, dense_flops: float, sparse_flops: float, tile_bound: float, bytes_moved: float) -> Roofline:
    """Times in ms. ``tile_bound`` is the total-work (mean-based) one: the roofline assumes every SM busy, so total
    tile work, not the slowest Q tile, sets the compute time; ``sparse_ms_tile`` is the tiled kernel's floor."""
    compute_s = dense_flops / (gpu.tflops * 1e12)
    memory_s = bytes_moved / (gpu.hbm_tbps * 1e12)
    sparse_flop_s = max(sparse_flops / (gpu.tflops * 1e12), memory_s)
    sparse_tile_s = max(compute_s / tile_bound, memory_s)
    return Roofline(
        gpu=gpu.name,
        dense_ms=max(compute_s, memory_s) * 1e3,
        sparse_ms_flop=sparse_flop_s * 1e3,
        sparse_ms_tile=sparse_tile_s * 1e3,
        bound="memory" if memory_s >= sparse_tile_s else "compute",
    )


def amdahl(speedup: float, attention_share: float, sparse_fraction: float = 1.0) -> float:
    """End-to-end speedup when ``attention_share`` of the runtime is attention and ``sparse_fraction`` of it turns
    sparse with ``speedup``: 1 / ((1 - F) + F * ((1 - P) + P / S))."""
    f = check_fraction("attention_share", attention_share)
    p = check_fraction("sparse_fraction", sparse_fraction)
    check_positive("speedup", speedup)
    return 1.0 / ((1.0 - f) + f * ((1.0 - p) + p / speedup))


@dataclass(frozen=True)
class Endtoend:
    """Amdahl end-to-end model speedups from the FLOP bound and from the total-work tile bound (``tile_bound_avg``: a
    model step launches many waves of Q tiles, so total tile work, not the slowest tile, sets attention time)."""

    attention_share: float
    sparse_fraction: float
    e2e_speedup_flop: float
    e2e_speedup_tile: float


def endtoend(
    flop_bound: float, tile_bound: float, attention_share: float | None, sparse_fraction: float
) -> Endtoend | None:
    """None when no attention share is given (there is nothing to scale)."""
    if attention_share is None:
        check_fraction("sparse_fraction", sparse_fraction)
        return None
    return Endtoend(
        attention_share=attention_share,
        sparse_fraction=sparse_fraction,
        e2e_speedup_flop=amdahl(flop_bound, attention_share, sparse_fraction),
        e2e_speedup_tile=amdahl(tile_bound, attention_share, sparse_fraction),
    )


def attention_bytes(tokens_q: int, tokens_kv: int, batch: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """Bytes a fused forward must move at least once: Q and O (per query head), K and V (per KV head), bf16."""
    return BF16_BYTES * batch * head_dim * (2 * tokens_q * heads + 2 * tokens_kv * kv_heads)
