"""Speed-of-light model of compressed-latent attention decode (DeepSeek MLA, absorbed form).

Every query head reads the same latent cache row (``latent_dim + rope_dim`` values) per token, so decode moves the cache
once per batch element and does little arithmetic per byte: memory-bound on every GPU unless many query tokens share a
cache (large ``q_len``). Keys are whole rows (``latent_dim + rope_dim``), values their first ``latent_dim`` entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from simulator.common import BF16_BYTES, Gpu, check_int, select_gpus
from simulator.gna_policy import ceil_div


@dataclass(frozen=True)
class LatentTime:
    """Roofline time of one decode step on one GPU."""

    gpu: str
    compute_ms: float
    memory_ms: float
    ms: float
    bound: str


@dataclass(frozen=True)
class LatentResult:
    """Predictions for one MLA decode step (forward, bf16)."""

    batch: int
    kv_len: tuple[int, ...]
    q_len: int
    heads: int
    latent_dim: int
    rope_dim: int
    page_size: int
    causal: bool
    flops: int
    bytes_moved: int
    cache_bytes: int
    arithmetic_intensity: float
    flop_bound: float
    times: tuple[LatentTime, ...]

    def to_dict(self) -> dict:
        """JSON-ready: the headline figures first, then every field."""
        head = {"bytes_moved": self.bytes_moved, "flops": self.flops, "flop_bound": self.flop_bound}
        return head | dataclasses.asdict(self)


def latent_time(gpu: Gpu, flops: int, bytes_moved: int) -> LatentTime:
    """max(compute, memory) in ms."""
    compute = flops / (gpu.tflops * 1e12) * 1e3
    memory = bytes_moved / (gpu.hbm_tbps * 1e12) * 1e3
    return LatentTime(gpu.name, compute, memory, max(compute, memory), "memory" if memory >= compute else "compute")


def simulate_latent(
    *,
    batch: int = 1,
    kv_len: int | Sequence[int] = 4096,
    q_len: int = 1,
    heads: int = 128,
    latent_dim: int = 512,
    rope_dim: int = 64,
    page_size: int = 64,
    causal: bool | None = None,
    gpu: str | None = None,
    tflops: float | None = None,
    hbm_tbps: float | None = None,
) -> LatentResult:
    """Predict one MLA decode step: q ``[batch, q_len, heads, latent_dim + rope_dim]`` against a paged latent cache of
    ``kv_len`` tokens per batch element (one int, or one per element) in pages of ``page_size`` tokens.

    Bytes: the cache pages touched (whole pages), the queries and the outputs ``[batch, q_len, heads, latent_dim]``.
    FLOPs: 2 * heads * (attended pairs) * ((latent + rope) for QK + latent for PV). ``causal`` (default: ``q_len > 1``)
    aligns the queries to the end of each cache; ``flop_bound`` is then the non-causal pairs over the causal ones.
    """
    for name, value in (("batch", batch), ("q_len", q_len), ("heads", heads), ("latent_dim", latent_dim)):
        check_int(name, value)
    check_int("rope_dim", rope_dim, minimum=0)
    check_int("page_size", page_size)
    lengths = (kv_len,) * batch if isinstance(kv_len, int) else tuple(kv_len)
    if len(lengths) != batch:
        raise ValueError(f"kv_len: needs one length or one per batch element ({batch}), got {len(lengths)}")
    for i, n in enumerate(lengths):
        check_int(f"kv_len[{i}]", n)
        if n < q_len:
            raise ValueError(f"kv_len[{i}]: must be >= q_len ({q_len}), the new tokens are in the cache, got {n}")
    causal = q_len > 1 if causal is None else bool(causal)
    row = latent_dim + rope_dim
    if causal:
        # Query j of q_len sees n - q_len + j + 1 keys.
        pairs = sum(q_len * (n - q_len) + q_len * (q_len + 1) // 2 for n in lengths)
    else:
        pairs = q_len * sum(lengths)
    flops = 2 * heads * pairs * (row + latent_dim)
    cache_bytes = BF16_BYTES * row * sum(ceil_div(n, page_size) * page_size for n in lengths)
    bytes_moved = cache_bytes + BF16_BYTES * batch * q_len * heads * (row + latent_dim)
    return LatentResult(
        batch=batch,
        kv_len=lengths,
        q_len=q_len,
        heads=heads,
        latent_dim=latent_dim,
        rope_dim=rope_dim,
        page_size=page_size,
        causal=causal,
        flops=flops,
        bytes_moved=bytes_moved,
        cache_bytes=cache_bytes,
        arithmetic_intensity=flops / bytes_moved,
        flop_bound=q_len * sum(lengths) / pairs,
        times=tuple(latent_time(g, flops, bytes_moved) for g in select_gpus(gpu, tflops, hbm_tbps)),
    )
