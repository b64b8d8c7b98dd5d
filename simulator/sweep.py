"""Explore GNA strides, windows or tile shapes around a base config and rank them by tile bound.

Per-dim counts are cached (``dim_summary``, ``dim_pairs``), so a candidate costs a few products: sweeps of tens of
thousands of candidates run in seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from types import ModuleType

from simulator.gna import GnaConfig, dim_pairs, gna_config, multidim_counts
from simulator.gna_policy import ceil_div

VARIES = ("stride", "window", "tile")
MAX_CANDIDATES = 200_000


@dataclass(frozen=True)
class SweepRow:
    """One candidate: its config's varied fields and predicted bounds."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    flop_bound: float
    tile_bound: float
    tile_bound_avg: float
    fully_block_sparse: bool
    masked_fraction: float

    @property
    def tile_efficiency(self) -> float:
        """Share of the FLOP bound the tiled kernel can reach (tile bound / FLOP bound)."""
        return self.tile_bound / self.flop_bound


@dataclass(frozen=True)
class SweepResult:
    """Ranked candidates; ``rows`` holds the top ones. Strides and tiles rank by tile bound; windows (where a smaller
    window always wins) by tile efficiency (tile bound / FLOP bound). Ties: fully block-sparse first, then nearest the
    base."""

    vary: str
    tiling: str
    base: GnaConfig
    evaluated: int
    rows: tuple[SweepRow, ...]
    all_rows: tuple[SweepRow, ...]

    def to_dict(self) -> dict:
        """JSON-ready (without ``all_rows``, which plots use)."""
        out = dataclasses.asdict(self)
        del out["all_rows"]
        return out


def _pow2_extents(limit: int) -> list[int]:
    return [1 << e for e in range(limit.bit_length()) if 1 << e <= limit]


def _tile_shapes(config: GnaConfig, total: int) -> list[tuple[int, ...]]:
    """Power-of-two tile shapes with ``total`` tokens, no extent above its dim's longest dilation group."""
    longest = [ceil_div(n, d) for n, d in zip(config.shape, config.dilation, strict=True)]
    per_dim = [_pow2_extents(min(total, n)) for n in longest]
    return [shape for shape in itertools.product(*per_dim) if math.prod(shape) == total]


def _candidates(config: GnaConfig, vary: str) -> list[GnaConfig]:
    if vary == "stride":
        axes = [range(1, k + 1) for k in config.window]
        return [dataclasses.replace(config, stride=s) for s in itertools.product(*axes)]
    if vary == "window":
        axes = [
            range(max(2, s), n // d + 1) for n, d, s in zip(config.shape, config.dilation, config.stride, strict=True)
        ]
        return [dataclasses.replace(config, window=w) for w in itertools.product(*axes)]
    q_shapes = _tile_shapes(config, math.prod(config.q_tile)) or [config.q_tile]
    kv_shapes = _tile_shapes(config, math.prod(config.kv_tile)) or [config.kv_tile]
    return [dataclasses.replace(config, q_tile=q, kv_tile=k) for q in q_shapes for k in kv_shapes]


def _count(config: GnaConfig, vary: str) -> int:
    if vary == "stride":
        return math.prod(config.window)
    if vary == "window":
        return math.prod(
            max(0, n // d - max(2, s) + 1) for n, d, s in zip(config.shape, config.dilation, config.stride, strict=True)
        )
    return 0


def sweep_gna(
    shape: int | tuple[int, ...],
    window: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    causal: bool | tuple[bool, ...] = False,
    q_tile: int | tuple[int, ...] | None = None,
    kv_tile: int | tuple[int, ...] | None = None,
    *,
    vary: str = "stride",
    arch: str = "sm90",
    tiling: str = "static",
    top: int = 10,
) -> SweepResult:
    """Rank GNA configs that differ from the base in ``vary``: every stride in [1, window] per dim ("stride"), every
    window in [max(2, stride), size / dilation] per dim ("window"), or every power-of-two Q and KV tile shape with the
    base's tokens per tile ("tile"). Returns the ``top`` best by tile bound."""
    base = gna_config(shape, window, stride, dilation, causal, q_tile, kv_tile, arch)
    if vary not in VARIES:
        raise ValueError(f"vary: must be one of {', '.join(VARIES)}, got {vary!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top: must be an integer >= 1, got {top!r}")
    if _count(base, vary) > MAX_CANDIDATES:
        raise ValueError(
            f"vary: {_count(base, vary)} candidates exceed the limit of {MAX_CANDIDATES}; shrink the problem"
        )
    dense_pairs = math.prod(dim_pairs(d) for d in base.dense_dims())
    rows = []
    for config in _candidates(base, vary):
        counts = multidim_counts(config, tiling)
        pairs = math.prod(dim_pairs(d) for d in config.dims())
        rows.append(
            SweepRow(
                window=config.window,
                stride=config.stride,
                q_tile=config.q_tile,
                kv_tile=config.kv_tile,
                flop_bound=dense_pairs / pairs,
                tile_bound=counts.tile_bound,
                tile_bound_avg=counts.tile_bound_avg,
                fully_block_sparse=counts.fully_block_sparse,
                masked_fraction=counts.masked_fraction,
            )
        )

    def distance(r: SweepRow) -> int:
        mine = r.window + r.stride + r.q_tile + r.kv_tile
        return sum(
            abs(a - b) for a, b in zip(mine, base.window + base.stride + base.q_tile + base.kv_tile, strict=True)
        )

    if vary == "window":
        ranked = sorted(rows, key=lambda r: (-r.tile_efficiency, not r.fully_block_sparse, distance(r)))
    else:
        ranked = sorted(rows, key=lambda r: (-r.tile_bound, not r.fully_block_sparse, distance(r)))
    return SweepResult(vary, tiling, base, len(rows), tuple(ranked[:top]), tuple(rows))


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend, or ValueError naming ``plot`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ValueError(f"plot: needs matplotlib, which is not importable ({err}); pip install matplotlib") from err
    return plt


def plot_sweep(result: SweepResult, path: str) -> None:
    """Draw tile and FLOP bounds of every candidate against the varied value (its product over dims) into ``path``."""
    plt = pyplot()

    def key(row: SweepRow) -> int:
        if result.vary == "stride":
            return math.prod(row.stride)
        if result.vary == "window":
            return math.prod(row.window)
        return math.prod(row.q_tile[:-1]) if len(row.q_tile) > 1 else row.q_tile[0]

    label = {
        "stride": "stride (product over dims)",
        "window": "window (product over dims)",
        "tile": "q tile extent of the leading dims",
    }
    rows = sorted(result.all_rows, key=key)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [key(r) for r in rows]
    ax.scatter(xs, [r.flop_bound for r in rows], s=8, label="FLOP bound", color="tab:gray")
    ax.scatter(xs, [r.tile_bound for r in rows], s=8, label="tile bound", color="tab:blue")
    fbs = [r for r in rows if r.fully_block_sparse]
    ax.scatter(
        [key(r) for r in fbs],
        [r.tile_bound for r in fbs],
        s=24,
        marker="o",
        facecolors="none",
        edgecolors="tab:green",
        label="fully block-sparse",
    )
    if result.vary == "window":
        ax.set_xscale("log")  # windows span orders of magnitude of volume
        ax.set_yscale("log")
    ax.set_xlabel(label[result.vary])
    ax.set_ylabel("speedup bound over dense (x)")
    ax.set_title(f"GNA {'x'.join(map(str, result.base.shape))}: {result.tiling} tiling")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise ValueError(f"plot: cannot write {path!r} ({err.strerror or err})") from err
    finally:
        plt.close(fig)
