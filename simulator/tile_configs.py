"""The one table of tile shapes: which Q and KV tile shapes each kernel family runs, per target and token rank.

Read by the dispatcher (python/natten_like/backends), the simulator and (later) the CUDA instantiation generator.
Nothing else hard-codes a tile shape. Torch-free.

Shapes are per token dimension (``(8, 8)`` is an 8x8 tile of a 2-D token grid). CUDA entries describe the kernels
the arch paths are designed around (NATTEN-style multi-dimensional tiles of 64 / 128 / 256 queries); the CPU entries
are what the fused CPU kernel runs.
"""

from __future__ import annotations

TileShape = tuple[int, ...]

# target -> token rank -> (q_tile, kv_tile)
GNA_TILES: dict[str, dict[int, tuple[TileShape, TileShape]]] = {
    "cpu": {1: ((64,), (64,)), 2: ((8, 8), (8, 8)), 3: ((4, 4, 4), (4, 4, 4))},
    "sm80": {1: ((64,), (64,)), 2: ((8, 8), (8, 8)), 3: ((4, 4, 4), (4, 4, 4))},
    "sm90": {1: ((128,), (128,)), 2: ((16, 8), (16, 8)), 3: ((4, 4, 8), (2, 8, 8))},
    "sm100": {1: ((256,), (128,)), 2: ((16, 16), (16, 8)), 3: ((4, 8, 8), (2, 8, 8))},
}

TARGETS = tuple(GNA_TILES)


def gna_tiles(target: str, rank: int) -> tuple[TileShape, TileShape]:
    """(q_tile, kv_tile) of the GNA kernel for ``target`` ("cpu", "sm80", "sm90", "sm100") and token rank 1-3."""
    if target not in GNA_TILES:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if rank not in GNA_TILES[target]:
        raise ValueError(f"rank must be 1, 2 or 3, got {rank}")
    return GNA_TILES[target][rank]


def cta_block(target: str) -> tuple[int, int]:
    """(query rows, key rows) of the CUDA kernels of ``target`` ("sm80", "sm90"): every token rank runs on one rank-3
    padded kernel, so its CTA block is the largest Q / KV tile row product over the ranks. The 1-D families
    (strided-shard) run on the same block."""
    tiles = gna_tiles(target, 1), gna_tiles(target, 2), gna_tiles(target, 3)
    return max(_prod(q) for q, _ in tiles), max(_prod(kv) for _, kv in tiles)


def _prod(shape: TileShape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def clamp_tile(tile: TileShape, shape: TileShape, dilation: TileShape) -> TileShape:
    """Shrink each tile extent to the longest dilation group of its dimension (a tile never exceeds what it tiles)."""
    return tuple(min(t, -(-n // d)) for t, n, d in zip(tile, shape, dilation, strict=False))
