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

# Head dims from which a target's KV tiles have half the rows: target -> (head dim, token rank -> kv_tile). sm90 at
# head dim 256: two KV stages of 128 rows (128 KB) and the Q tile (64 KB) exceed the 227 KB of shared memory a block
# may have; 64-row stages take 192 KB in all. The Q tiles stay GNA_TILES'.
GNA_WIDE_HEAD_KV_TILES: dict[str, tuple[int, dict[int, TileShape]]] = {
    "sm90": (256, {1: (64,), 2: (8, 8), 3: (2, 4, 8)}),
}

TARGETS = tuple(GNA_TILES)


def gna_tiles(target: str, rank: int, head_dim: int = 128) -> tuple[TileShape, TileShape]:
    """(q_tile, kv_tile) of the GNA kernel for ``target`` ("cpu", "sm80", "sm90", "sm100"), token rank 1-3 and the
    head dim of Q / K (the kernels of some targets take smaller KV tiles for wide heads: GNA_WIDE_HEAD_KV_TILES)."""
    if target not in GNA_TILES:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if rank not in GNA_TILES[target]:
        raise ValueError(f"rank must be 1, 2 or 3, got {rank}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int):
        raise TypeError(f"head_dim must be an int, got {type(head_dim).__name__}")
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    q_tile, kv_tile = GNA_TILES[target][rank]
    if target in GNA_WIDE_HEAD_KV_TILES and head_dim >= GNA_WIDE_HEAD_KV_TILES[target][0]:
        kv_tile = GNA_WIDE_HEAD_KV_TILES[target][1][rank]
    return q_tile, kv_tile


def cta_block(target: str, head_dim: int = 128) -> tuple[int, int]:
    """(query rows, key rows) of the CUDA kernels of ``target`` ("sm80", "sm90") for head dim ``head_dim``: every token
    rank runs on one rank-3 padded kernel, so its CTA block is the largest Q / KV tile row product over the ranks. The
    1-D families (strided-shard, block-sparse) run on the same block."""
    tiles = [gna_tiles(target, rank, head_dim) for rank in (1, 2, 3)]
    return max(_prod(q) for q, _ in tiles), max(_prod(kv) for _, kv in tiles)


def _prod(shape: TileShape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def clamp_tile(tile: TileShape, shape: TileShape, dilation: TileShape) -> TileShape:
    """Shrink each tile extent to the longest dilation group of its dimension (a tile never exceeds what it tiles)."""
    return tuple(min(t, -(-n // d)) for t, n, d in zip(tile, shape, dilation, strict=False))
