"""Speed-of-light model of Generalized Neighborhood Attention (GNA): FLOP-wise bound, tile bound, block sparsity.

Every count follows the policy (``gna_policy.py``, the twin of ``policy/gna.hpp``): a Q tile lives in one dilation group
per dim, its KV tiles form a box that is the product of per-dim ranges, and a visited KV tile is full iff it is full in
every dim. So all multi-dim counts are products of per-dim counts, computed here per dim with numpy.

The dense baseline is the same problem with the window opened to the whole extent (window = length, stride 1,
dilation 1, same causal flags), tiled the same way: "the same kernel, running dense".
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass
from functools import reduce

import numpy as np

from simulator.common import (
    Endtoend,
    Roofline,
    attention_bytes,
    check_int,
    endtoend,
    per_dim,
    roofline,
    select_gpus,
)
from simulator.gna_policy import GnaDim, ceil_div, gna_window_np
from simulator.tile_configs import TARGETS, clamp_tile, gna_tiles

TILINGS = ("static", "dynamic")
# Flattened 1-D counts cost about (Q blocks) x (tokens) x (boxes per block) numpy element operations; beyond this the
# comparison is reported as skipped rather than stalling the command for minutes.
FLATTENED_BUDGET = 2_000_000_000


@dataclass(frozen=True)
class GnaConfig:
    """A validated GNA problem with its (clamped) tile shapes; every tuple has one entry per token dim."""

    shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    tile_source: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def tokens(self) -> int:
        return math.prod(self.shape)

    def dims(self) -> tuple[GnaDim, ...]:
        return tuple(
            GnaDim(*p) for p in zip(self.shape, self.window, self.stride, self.dilation, self.causal, strict=True)
        )

    def dense_dims(self) -> tuple[GnaDim, ...]:
        return tuple(GnaDim(n, n, 1, 1, c) for n, c in zip(self.shape, self.causal, strict=True))


def gna_config(
    shape: int | tuple[int, ...],
    window: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    causal: bool | tuple[bool, ...] = False,
    q_tile: int | tuple[int, ...] | None = None,
    kv_tile: int | tuple[int, ...] | None = None,
    arch: str = "sm90",
    head_dim: int = 128,
) -> GnaConfig:
    """Validate a GNA problem (rules of DESIGN.md) and pick its tiles.

    Scalars broadcast to every token dim. Tiles not given come from ``tile_configs.gna_tiles(arch, rank, head_dim)``
    (wide heads take smaller KV tiles on some archs); all tiles
    are then clamped to the longest dilation group of their dim, as the dispatcher does, so the counts are those the
    kernel runs.
    """
    shape_t = (check_int("shape", shape),) if isinstance(shape, int) else tuple(shape)
    if not 1 <= len(shape_t) <= 3:
        raise ValueError(f"shape: must have 1, 2 or 3 token dims, got {len(shape_t)}")
    rank = len(shape_t)
    shape_t = per_dim("shape", shape_t, rank)
    window_t = per_dim("window", window, rank, minimum=2)
    stride_t = per_dim("stride", stride, rank)
    dilation_t = per_dim("dilation", dilation, rank)
    causal_t = per_dim("causal", causal, rank, minimum=0)
    for i in range(rank):
        if window_t[i] * dilation_t[i] > shape_t[i]:
            raise ValueError(
                f"window: window * dilation must be <= size in every dim; dim {i}: "
                f"{window_t[i]} * {dilation_t[i]} > {shape_t[i]}"
            )
        if stride_t[i] > window_t[i]:
            raise ValueError(f"stride: must be <= window in every dim; dim {i}: {stride_t[i]} > {window_t[i]}")
        if causal_t[i] > 1:
            raise ValueError(f"causal[{i}]: must be 0 or 1, got {causal_t[i]}")
    if arch not in TARGETS:
        raise ValueError(f"arch: must be one of {', '.join(TARGETS)}, got {arch!r}")
    table_q, table_kv = gna_tiles(arch, rank, check_int("head_dim", head_dim))
    q_t = table_q if q_tile is None else per_dim("q_tile", q_tile, rank)
    kv_t = table_kv if kv_tile is None else per_dim("kv_tile", kv_tile, rank)
    source = "given" if q_tile is not None and kv_tile is not None else f"{arch} table"
    return GnaConfig(
        shape=shape_t,
        window=window_t,
        stride=stride_t,
        dilation=dilation_t,
        causal=tuple(bool(c) for c in causal_t),
        q_tile=clamp_tile(q_t, shape_t, dilation_t),
        kv_tile=clamp_tile(kv_t, shape_t, dilation_t),
        tile_source=source,
    )


def dim_tile_counts(dim: GnaDim, tq: int, tk: int, tiling: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per Q slot of one dim (group-major, as ``GnaDim.slots``): (KV tiles visited, of them full, Q rows), int64.

    Static: the KV range snapped outward to the KV tile grid (``gna_tile_kv_tiles``); a tile is full as in
    ``gna_tile_is_full``. Full tiles form one interval [lo, hi) because window begins and ends are non-decreasing.
    Dynamic: KV tiles start at the range's begin, ``ceil((end - begin) / T_kv)`` of them; the same fullness rule on the
    shifted grid (a tile running past the range's end is partial).
    """
    if tiling not in TILINGS:
        raise ValueError(f"tiling: must be one of {', '.join(TILINGS)}, got {tiling!r}")
    visited, full, rows = [], [], []
    for g in range(dim.dilation):
        lg = dim.group_length(g)
        qb = np.arange(ceil_div(lg, tq), dtype=np.int64) * tq
        qe = np.minimum(qb + tq, lg)
        first_b, first_e = gna_window_np(qb, lg, dim.window, dim.stride, dim.causal)
        last_b, last_e = gna_window_np(qe - 1, lg, dim.window, dim.stride, dim.causal)
        if tiling == "static":
            begin, end = first_b // tk, -(-last_e // tk)
            lo, hi = np.maximum(begin, -(-last_b // tk)), np.minimum(end, first_e // tk)
            count = end - begin
        else:
            count = -(-(last_e - first_b) // tk)
            lo, hi = np.maximum(-(-(last_b - first_b) // tk), 0), np.minimum(count, (first_e - first_b) // tk)
        visited.append(count)
        full.append(np.maximum(hi - lo, 0))
        rows.append(qe - qb)
    return np.concatenate(visited), np.concatenate(full), np.concatenate(rows)


@functools.lru_cache(maxsize=65536)
def dim_pairs(dim: GnaDim) -> int:
    """Attended (query, key) pairs of one dim: the sum of window sizes over its queries."""
    total = 0
    for g in range(dim.dilation):
        lg = dim.group_length(g)
        b, e = gna_window_np(np.arange(lg, dtype=np.int64), lg, dim.window, dim.stride, dim.causal)
        total += int((e - b).sum())
    return total


@dataclass(frozen=True)
class TileCounts:
    """KV tile work of one tiling. ``worst_``/``avg_kv_tiles`` are per Q tile. ``tile_bound`` = dense worst / sparse
    worst (Q tiles run concurrently, the slowest sets the pace); ``tile_bound_avg`` = dense total / sparse total visited
    KV tiles (= the ratio of the means when both have as many Q tiles); ``masked_fraction``: visited tiles needing a
    mask."""

    tiling: str
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    num_q_tiles: int
    worst_kv_tiles: int
    avg_kv_tiles: float
    visited_kv_tiles: int
    full_kv_tiles: int
    dense_worst_kv_tiles: int
    dense_avg_kv_tiles: float
    tile_bound: float
    tile_bound_avg: float
    masked_fraction: float
    fully_block_sparse: bool


def headline(flop_bound: float, tiles: TileCounts, e2e: Endtoend | None) -> dict:
    """The figures a JSON answer leads with (the same keys for every family with tiles)."""
    head = {
        "flop_bound": flop_bound,
        "tile_bound": tiles.tile_bound,
        "tile_bound_avg": tiles.tile_bound_avg,
        "fully_block_sparse": tiles.fully_block_sparse,
        "masked_fraction": tiles.masked_fraction,
    }
    if e2e is not None:
        head |= {"e2e_speedup_flop": e2e.e2e_speedup_flop, "e2e_speedup_tile": e2e.e2e_speedup_tile}
    return head


class TiledResult:
    """Base of the result dataclasses that hold ``flop_bound``, ``tiles`` (:class:`TileCounts`) and ``endtoend``."""

    @property
    def tile_bound(self) -> float:
        return self.tiles.tile_bound

    @property
    def tile_bound_avg(self) -> float:
        return self.tiles.tile_bound_avg

    @property
    def fully_block_sparse(self) -> bool:
        return self.tiles.fully_block_sparse

    def to_dict(self) -> dict:
        """JSON-ready: the headline figures first, then every field."""
        return headline(self.flop_bound, self.tiles, self.endtoend) | dataclasses.asdict(self)


def summarise(
    tiling: str,
    q_tile: tuple[int, ...],
    kv_tile: tuple[int, ...],
    sparse: tuple[int, int, int, int],
    dense: tuple[int, int, int],
) -> TileCounts:
    """TileCounts from totals: ``sparse`` = (Q tiles, worst, total visited, total full); ``dense`` = (Q tiles, worst,
    total visited) of the dense baseline over the same problem."""
    n_q, worst, total, full_total = sparse
    n_dense, dense_worst, dense_total = dense
    return TileCounts(
        tiling=tiling,
        q_tile=q_tile,
        kv_tile=kv_tile,
        num_q_tiles=n_q,
        worst_kv_tiles=worst,
        avg_kv_tiles=total / n_q,
        visited_kv_tiles=total,
        full_kv_tiles=full_total,
        dense_worst_kv_tiles=dense_worst,
        dense_avg_kv_tiles=dense_total / n_dense,
        tile_bound=dense_worst / worst,
        tile_bound_avg=dense_total / total,
        masked_fraction=(total - full_total) / total,
        fully_block_sparse=full_total == total,
    )


def summarise_arrays(
    tiling: str,
    q_tile: tuple[int, ...],
    kv_tile: tuple[int, ...],
    visited: np.ndarray,
    full: np.ndarray,
    dense_visited: np.ndarray,
) -> TileCounts:
    """TileCounts from per-Q-tile counts (sparse ``visited`` / ``full``, the dense baseline's ``dense_visited``)."""
    sparse = (int(visited.size), int(visited.max()), int(visited.sum()), int(full.sum()))
    dense = (int(dense_visited.size), int(dense_visited.max()), int(dense_visited.sum()))
    return summarise(tiling, q_tile, kv_tile, sparse, dense)


def _outer(vectors: list[np.ndarray]) -> np.ndarray:
    """Row-major (last dim fastest) flattening of the outer product: the policy's flat tile order."""
    return reduce(np.multiply.outer, vectors).ravel()


def gna_tile_visits(config: GnaConfig, tiling: str = "static") -> np.ndarray:
    """int64 ``[num_q_tiles, 3]``: (KV tiles visited, full KV tiles, Q rows) per Q tile in the policy's tile order —
    the same table as the C++ op ``natten_like::gna_visits`` for static tiling."""
    per = [
        dim_tile_counts(d, tq, tk, tiling)
        for d, tq, tk in zip(config.dims(), config.q_tile, config.kv_tile, strict=True)
    ]
    return np.stack([_outer([p[j] for p in per]) for j in range(3)], axis=1)


@functools.lru_cache(maxsize=65536)
def dim_summary(dim: GnaDim, tq: int, tk: int, tiling: str) -> tuple[int, int, int, int]:
    """(Q slots, worst visited, total visited, total full) of one dim; cached, as sweeps revisit the same dims."""
    visited, full, _ = dim_tile_counts(dim, tq, tk, tiling)
    return visited.size, int(visited.max()), int(visited.sum()), int(full.sum())


def multidim_counts(config: GnaConfig, tiling: str) -> TileCounts:
    """Counts of the multi-dim tiling. Per-tile counts are products over dims, so their max and sum factor too."""
    tiles = list(zip(config.q_tile, config.kv_tile, strict=True))
    sparse = [dim_summary(d, tq, tk, tiling) for d, (tq, tk) in zip(config.dims(), tiles, strict=True)]
    dense = [dim_summary(d, tq, tk, tiling) for d, (tq, tk) in zip(config.dense_dims(), tiles, strict=True)]
    return summarise(
        tiling,
        config.q_tile,
        config.kv_tile,
        tuple(math.prod(p[j] for p in sparse) for j in range(4)),
        tuple(math.prod(p[j] for p in dense) for j in range(3)),
    )


class _DimCoverage:
    """For one dim: how many queries of a global interval [a, b) attend each global key (dilation included)."""

    def __init__(self, dim: GnaDim):
        n, d = dim.length, dim.dilation
        x = np.arange(n, dtype=np.int64)
        offsets = np.cumsum([0] + [dim.group_length(g) for g in range(d)])
        self.start = np.empty(n, dtype=np.int64)
        self.end = np.empty(n, dtype=np.int64)
        for g in range(d):
            lg = dim.group_length(g)
            b, e = gna_window_np(np.arange(lg, dtype=np.int64), lg, dim.window, dim.stride, dim.causal)
            self.start[g::d], self.end[g::d] = offsets[g] + b, offsets[g] + e
        # Windows stay inside their group, so counting in group-major key order is one difference array.
        self.group_major = offsets[x % d] + x // d
        self.length = n
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, a: int, b: int) -> np.ndarray:
        if (a, b) not in self.cache:
            n = self.length
            diff = np.bincount(self.start[a:b], minlength=n + 1) - np.bincount(self.end[a:b], minlength=n + 1)
            self.cache[(a, b)] = np.cumsum(diff)[:n][self.group_major]
        return self.cache[(a, b)]


def _flat_boxes(a: int, b: int, shape: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Decompose the row-major flat token range [a, b) of a grid ``shape`` into at most 2 * rank - 1 boxes."""
    if len(shape) == 1:
        return [((a, b),)]
    inner = math.prod(shape[1:])
    first, last = a // inner, (b - 1) // inner
    if first == last:
        return [((first, first + 1), *box) for box in _flat_boxes(a - first * inner, b - first * inner, shape[1:])]
    boxes = []
    full_begin, full_end = -(-a // inner), b // inner
    if a % inner:
        boxes += [((first, first + 1), *box) for box in _flat_boxes(a % inner, inner, shape[1:])]
    if full_end > full_begin:
        boxes.append(((full_begin, full_end), *((0, n) for n in shape[1:])))
    if b % inner:
        boxes += [((full_end, full_end + 1), *box) for box in _flat_boxes(0, b % inner, shape[1:])]
    return boxes


def _flat_visits(dims: tuple[GnaDim, ...], tq: int, tk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block of ``tq`` consecutive flat queries: KV blocks (``tk`` consecutive flat keys) holding an attended key,
    and of them those every query attends entirely (a block cut by the sequence end is never full)."""
    shape = tuple(d.length for d in dims)
    n = math.prod(shape)
    n_q, n_kv = ceil_div(n, tq), ceil_div(n, tk)
    coverage = [_DimCoverage(d) for d in dims]
    visited = np.empty(n_q, dtype=np.int64)
    full = np.empty(n_q, dtype=np.int64)
    counts = np.zeros(n_kv * tk, dtype=np.int64)
    for j in range(n_q):
        a, b = j * tq, min((j + 1) * tq, n)
        counts[:] = 0
        for box in _flat_boxes(a, b, shape):
            counts[:n] += _outer([cov(lo, hi) for cov, (lo, hi) in zip(coverage, box, strict=True)])
        blocks = counts.reshape(n_kv, tk)
        visited[j] = np.count_nonzero(blocks.max(axis=1))
        full[j] = np.count_nonzero(blocks.min(axis=1) == b - a)
    return visited, full


def flattened_counts(config: GnaConfig) -> TileCounts:
    """Counts of 1-D flattened tiling: Q/KV blocks of prod(q_tile)/prod(kv_tile) consecutive row-major tokens, each Q
    block visiting exactly the KV blocks its element mask touches (an ideal block-sparse kernel on the flat tokens)."""
    tq, tk = math.prod(config.q_tile), math.prod(config.kv_tile)
    visited, full = _flat_visits(config.dims(), tq, tk)
    if any(config.causal):
        dense = _flat_visits(config.dense_dims(), tq, tk)[0]
    else:
        dense = np.full(visited.size, ceil_div(config.tokens, tk), dtype=np.int64)
    return summarise_arrays("flattened", (tq,), (tk,), visited, full, dense)


def flattened_cost(config: GnaConfig) -> int:
    """Rough numpy element operations of :func:`flattened_counts` (checked against ``FLATTENED_BUDGET``)."""
    n = config.tokens
    return ceil_div(n, math.prod(config.q_tile)) * n * (2 * config.rank - 1) * (2 if any(config.causal) else 1)


@dataclass(frozen=True)
class Suggestion:
    """A nearby configuration that is fully block-sparse (no element masking), with its static/dynamic tile bound."""

    stride: tuple[int, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    tile_bound: float
    changes: str


def _tile_extents(longest: int, total: int, original: int, rank: int) -> list[int]:
    """Candidate tile extents of one dim: the original, and for rank > 1 the powers of two dividing the tile's total
    size, not above the dim's longest group (a 1-D tile's extent is its size, which the search keeps)."""
    extents = {original}
    e = 1
    while rank > 1 and e <= min(longest, total):
        if total % e == 0:
            extents.add(e)
        e *= 2
    return sorted(extents)


# Strides tried per (Q extent, KV extent) of a dim, nearest the original first: bounds the search on long dims.
SUGGEST_STRIDES = 64


def suggest_fully_block_sparse(config: GnaConfig, tiling: str = "static", limit: int = 5) -> tuple[Suggestion, ...]:
    """Nearby strides / tile shapes (same tokens per Q and KV tile) under which every visited tile is full.

    A config is fully block-sparse iff every dim is (a multi-dim tile is full iff full in every dim, and visited boxes
    are products), so each dim is searched alone — strides in [1, window] that are multiples of the Q tile extent,
    power-of-two tile extents — keeping per (q extent, kv extent) the stride nearest the original; then extents are
    combined across dims under the constraint that the tile sizes stay what the kernel runs. Ranked by distance to the
    original, then by tile bound.
    """
    if multidim_counts(config, tiling).fully_block_sparse:
        return ()
    size_q, size_kv = math.prod(config.q_tile), math.prod(config.kv_tile)
    options: list[dict[tuple[int, int], int]] = []
    for d, tq0, tk0, s0 in zip(config.dims(), config.q_tile, config.kv_tile, config.stride, strict=True):
        longest = d.group_length(0)
        found: dict[tuple[int, int], int] = {}
        for tq in _tile_extents(longest, size_q, tq0, config.rank):
            for tk in _tile_extents(longest, size_kv, tk0, config.rank):
                # A Q tile spanning two stride groups unions two shifted windows, so some visited tile is partial
                # unless border clamping makes the windows equal: only strides that are multiples of the Q tile (plus
                # the original and the window, for those border cases) can be fully block-sparse.
                strides = set(range(tq, d.window + 1, tq)) | {s0, d.window}
                for s in sorted(strides, key=lambda s: (abs(s - s0), -s))[:SUGGEST_STRIDES]:
                    _, _, visited, full = dim_summary(
                        GnaDim(d.length, d.window, s, d.dilation, d.causal), tq, tk, tiling
                    )
                    if visited == full:
                        found[(tq, tk)] = s
                        break
        options.append(found)
    candidates = []
    for combo in itertools.product(*(sorted(o.items()) for o in options)):
        q_tile = tuple(k[0] for k, _ in combo)
        kv_tile = tuple(k[1] for k, _ in combo)
        if math.prod(q_tile) != size_q or math.prod(kv_tile) != size_kv:
            continue
        stride = tuple(s for _, s in combo)
        distance = sum(abs(s - s0) / d.window for s, s0, d in zip(stride, config.stride, config.dims(), strict=True))
        distance += 0.25 * sum(a != b for a, b in zip(q_tile + kv_tile, config.q_tile + config.kv_tile, strict=True))
        candidates.append((distance, stride, q_tile, kv_tile))
    ranked = []
    for distance, stride, q_tile, kv_tile in sorted(candidates)[: 4 * limit]:
        trial = GnaConfig(
            config.shape, config.window, stride, config.dilation, config.causal, q_tile, kv_tile, "suggested"
        )
        changes = [
            f"{name} {_fmt(old)} -> {_fmt(new)}"
            for name, old, new in (
                ("stride", config.stride, stride),
                ("q_tile", config.q_tile, q_tile),
                ("kv_tile", config.kv_tile, kv_tile),
            )
            if old != new
        ]
        bound = multidim_counts(trial, tiling).tile_bound
        ranked.append((distance, -bound, Suggestion(stride, q_tile, kv_tile, bound, ", ".join(changes))))
    ranked.sort(key=lambda r: r[:2])
    return tuple(r[2] for r in ranked[:limit])


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in shape)


@dataclass(frozen=True)
class GnaResult(TiledResult):
    """Everything the simulator predicts for one GNA config (forward pass, bf16, D_v = D)."""

    config: GnaConfig
    batch: int
    heads: int
    head_dim: int
    dense_pairs: int
    sparse_pairs: int
    flop_bound: float
    tiles: TileCounts
    flattened: TileCounts | None
    flattened_note: str
    suggestions: tuple[Suggestion, ...]
    endtoend: Endtoend | None
    roofline: tuple[Roofline, ...]


def simulate_gna(
    shape: int | tuple[int, ...],
    window: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    causal: bool | tuple[bool, ...] = False,
    q_tile: int | tuple[int, ...] | None = None,
    kv_tile: int | tuple[int, ...] | None = None,
    *,
    arch: str = "sm90",
    tiling: str = "static",
    batch: int = 1,
    heads: int = 1,
    head_dim: int = 128,
    attention_share: float | None = None,
    sparse_fraction: float = 1.0,
    gpu: str | None = None,
    tflops: float | None = None,
    hbm_tbps: float | None = None,
    flattened: bool = True,
    suggest: bool = True,
) -> GnaResult:
    """Predict the speed-of-light of GNA on tokens ``shape`` (1-3 dims) with q/k/v ``[batch, *shape, heads, head_dim]``.

    ``flattened`` adds the 1-D flattened tiling for comparison (skipped, with a note, past ``FLATTENED_BUDGET``);
    ``suggest`` searches nearby fully block-sparse configs when this one is not. ``gpu`` None reports every preset.
    """
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
        check_int(name, value)
    config = gna_config(shape, window, stride, dilation, causal, q_tile, kv_tile, arch, head_dim)
    gpus = select_gpus(gpu, tflops, hbm_tbps)
    tiles = multidim_counts(config, tiling)
    sparse_pairs = math.prod(dim_pairs(d) for d in config.dims())
    dense_pairs = math.prod(dim_pairs(d) for d in config.dense_dims())
    flop_bound = dense_pairs / sparse_pairs
    flat, note = None, ""
    if not flattened:
        note = "not requested"
    elif config.rank == 1 and config.dilation == (1,):
        flat, note = tiles, "identical to the multi-dim tiling (1-D, no dilation)"
    elif flattened_cost(config) > FLATTENED_BUDGET:
        note = f"skipped: ~{flattened_cost(config):.1e} element operations exceed the budget of {FLATTENED_BUDGET:.0e}"
    else:
        flat = flattened_counts(config)
    flops_per_pair = 4 * batch * heads * head_dim
    bytes_moved = attention_bytes(config.tokens, config.tokens, batch, heads, heads, head_dim)
    return GnaResult(
        config=config,
        batch=batch,
        heads=heads,
        head_dim=head_dim,
        dense_pairs=dense_pairs,
        sparse_pairs=sparse_pairs,
        flop_bound=flop_bound,
        tiles=tiles,
        flattened=flat,
        flattened_note=note,
        suggestions=suggest_fully_block_sparse(config, tiling) if suggest else (),
        endtoend=endtoend(flop_bound, tiles.tile_bound_avg, attention_share, sparse_fraction),
        roofline=tuple(
            roofline(g, dense_pairs * flops_per_pair, sparse_pairs * flops_per_pair, tiles.tile_bound_avg, bytes_moved)
            for g in gpus
        ),
    )
