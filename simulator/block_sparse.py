"""Speed-of-light model of block-sparse attention: a kernel that visits exactly the KV blocks listed per (batch, head,
Q block), Q and KV block sizes free. One KV block is one KV tile of the kernel.

Causal masks align queries to the end of the keys (as in decode); a kept block holding no causal pair is dropped, as a
causal kernel skips blocks wholly above the diagonal. A visited block is full (no element mask) when every pair in it is
attended and it holds ``kv_block`` keys (a block cut by the sequence end must mask its missing rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.common import (
    Endtoend,
    Roofline,
    attention_bytes,
    check_fraction,
    check_int,
    endtoend,
    roofline,
    select_gpus,
)
from simulator.gna import TileCounts, TiledResult, summarise
from simulator.gna_policy import ceil_div

PATTERNS = ("random", "band")


def _clipped_ramp_sum(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_{j < x} clip(j, 0, w): the pairs of queries before x when query j sees clip(j, 0, w) keys."""
    x = np.maximum(x, 0)
    return np.where(x <= w + 1, x * (x - 1) // 2, w * (w + 1) // 2 + (x - w - 1) * w)


def block_pairs(seq_q: int, seq_kv: int, q_block: int, kv_block: int, causal: bool) -> np.ndarray:
    """int64 ``[ceil(seq_q / q_block), ceil(seq_kv / kv_block)]``: attended (query, key) pairs of each block if kept.

    Causal: query q (aligned to the end of the keys) sees keys k <= q + seq_kv - seq_q, so within a block of keys
    [kb, ke) it sees clip(q + seq_kv - seq_q + 1 - kb, 0, ke - kb) of them; summed in closed form.
    """
    qb = np.arange(ceil_div(seq_q, q_block), dtype=np.int64)[:, None] * q_block
    qe = np.minimum(qb + q_block, seq_q)
    kb = np.arange(ceil_div(seq_kv, kv_block), dtype=np.int64)[None, :] * kv_block
    width = np.minimum(kb + kv_block, seq_kv) - kb
    if not causal:
        return (qe - qb) * width
    shift = seq_kv - seq_q + 1 - kb
    return _clipped_ramp_sum(qe + shift, width) - _clipped_ramp_sum(qb + shift, width)


def make_block_mask(
    seq_len_q: int,
    seq_len_kv: int,
    q_block: int,
    kv_block: int,
    density: float,
    pattern: str = "random",
    heads: int = 1,
    seed: int = 0,
    causal: bool = False,
) -> np.ndarray:
    """bool ``[heads, ceil(seq_len_q / q_block), ceil(seq_len_kv / kv_block)]`` keeping about ``density`` of the blocks
    a query block may see (all, or those holding a causal pair).

    ``random``: every block kept independently with probability ``density`` (seeded, per head), plus the diagonal block
    of a row left empty. ``band``: each Q block keeps the ``ceil(density * KB)`` KV blocks around its diagonal block
    (ending at it when ``causal``). The diagonal block holds the query block's middle query (last when causal), queries
    aligned to the end of the keys.
    """
    for name, value in (("seq_len_q", seq_len_q), ("seq_len_kv", seq_len_kv), ("q_block", q_block)):
        check_int(name, value)
    check_int("kv_block", kv_block)
    check_int("heads", heads)
    if check_fraction("density", density) == 0.0:
        raise ValueError("density: must be > 0 (a mask keeping nothing has no speed)")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern: must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    allowed = block_pairs(seq_len_q, seq_len_kv, q_block, kv_block, causal) > 0
    num_q_blocks, num_kv_blocks = allowed.shape
    qb = np.arange(num_q_blocks) * q_block
    anchor = np.minimum(qb + q_block, seq_len_q) - 1 if causal else (qb + np.minimum(qb + q_block, seq_len_q)) // 2
    anchor = anchor + seq_len_kv - seq_len_q if causal else anchor * seq_len_kv // seq_len_q
    diagonal = np.clip(anchor // kv_block, 0, num_kv_blocks - 1)
    kv = np.arange(num_kv_blocks)
    if pattern == "random":
        rng = np.random.default_rng(seed)
        mask = (rng.random((heads, num_q_blocks, num_kv_blocks)) < density) & allowed
        # A query block with no KV block outputs zeros: keep one so the pattern stays a usable attention.
        h, r = np.nonzero(~mask.any(axis=2))
        mask[h, r, diagonal[r]] = True
        return mask
    width = min(math.ceil(density * num_kv_blocks), num_kv_blocks)
    start = diagonal - width + 1 if causal else diagonal - (width - 1) // 2
    start = np.clip(start, 0, num_kv_blocks - width)
    band = (kv[None, :] >= start[:, None]) & (kv[None, :] < (start + width)[:, None]) & allowed
    return np.broadcast_to(band, (heads, num_q_blocks, num_kv_blocks)).copy()


@dataclass(frozen=True)
class BlockSparseResult(TiledResult):
    """Predictions for a block-sparse (or strided-shard) problem, forward pass, bf16."""

    family: str
    seq_len_q: int
    seq_len_kv: int
    q_block: int
    kv_block: int
    causal: bool
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    density: float
    dense_pairs: int
    sparse_pairs: int
    flop_bound: float
    tiles: TileCounts
    endtoend: Endtoend | None
    roofline: tuple[Roofline, ...]


def _as_4d(block_mask: np.ndarray, batch: int, heads: int, n_q: int, n_kv: int) -> np.ndarray:
    mask = np.asarray(block_mask)
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"block_mask: must hold booleans or 0/1 integers, got dtype {mask.dtype}")
        mask = mask.astype(bool)
    if not 2 <= mask.ndim <= 4:
        raise ValueError(f"block_mask: must be [QB, KB], [H, QB, KB] or [B, H, QB, KB], got {mask.ndim} dims")
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if mask.shape[2:] != (n_q, n_kv):
        raise ValueError(
            f"block_mask: last two dims must be (ceil(seq_len_q / q_block), ceil(seq_len_kv / kv_block)) = "
            f"{(n_q, n_kv)}, got {mask.shape[2:]}"
        )
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"block_mask: batch dim must be 1 or batch ({batch}), got {mask.shape[0]}")
    if mask.shape[1] not in (1, heads):
        raise ValueError(f"block_mask: head dim must be 1 or the number of its heads ({heads}), got {mask.shape[1]}")
    return mask


def block_sparse_result(
    family: str,
    mask: np.ndarray,
    *,
    seq_len_q: int,
    seq_len_kv: int,
    q_block: int,
    kv_block: int,
    causal: bool,
    batch: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    attention_share: float | None,
    sparse_fraction: float,
    gpus: tuple,
) -> BlockSparseResult:
    """Shared by block-sparse and strided-shard: ``mask`` is a validated ``[B|1, M, QB, KB]``, each of its M heads
    standing for ``heads / M`` query heads."""
    pairs = block_pairs(seq_len_q, seq_len_kv, q_block, kv_block, causal)
    allowed = pairs > 0
    kept = mask & allowed
    if not kept.any(axis=3).all():
        raise ValueError("block_mask: every query block needs at least one kept block (with a causal pair if causal)")
    cols = (
        np.minimum(np.arange(pairs.shape[1]) * kv_block + kv_block, seq_len_kv) - np.arange(pairs.shape[1]) * kv_block
    )
    rows = np.minimum(np.arange(pairs.shape[0]) * q_block + q_block, seq_len_q) - np.arange(pairs.shape[0]) * q_block
    full_block = (pairs == rows[:, None] * cols[None, :]) & (cols == kv_block)[None, :]
    visited = kept.sum(axis=3)  # [B|1, H|1, QB]
    dense_visited = allowed.sum(axis=1)  # [QB]
    tiles = summarise(
        "static",
        (q_block,),
        (kv_block,),
        (int(visited.size), int(visited.max()), int(visited.sum()), int((kept & full_block).sum())),
        # The dense baseline runs every (batch, head) the mask stands for, as the sparse one does.
        (int(visited.size), int(dense_visited.max()), int(dense_visited.sum()) * (visited.size // dense_visited.size)),
    )
    # Each mask entry stands for the (batch, query head) pairs it is broadcast over.
    weight = (batch // mask.shape[0]) * (heads // mask.shape[1])
    sparse_pairs = int((kept * pairs).sum()) * weight
    dense_pairs = int(pairs.sum()) * batch * heads
    flop_bound = dense_pairs / sparse_pairs
    flops_per_pair = 4 * head_dim
    bytes_moved = attention_bytes(seq_len_q, seq_len_kv, batch, heads, kv_heads, head_dim)
    return BlockSparseResult(
        family=family,
        seq_len_q=seq_len_q,
        seq_len_kv=seq_len_kv,
        q_block=q_block,
        kv_block=kv_block,
        causal=causal,
        batch=batch,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        density=float(kept.sum()) / (allowed.sum() * mask.shape[0] * mask.shape[1]),
        dense_pairs=dense_pairs,
        sparse_pairs=sparse_pairs,
        flop_bound=flop_bound,
        tiles=tiles,
        endtoend=endtoend(flop_bound, tiles.tile_bound_avg, attention_share, sparse_fraction),
        roofline=tuple(
            roofline(g, dense_pairs * flops_per_pair, sparse_pairs * flops_per_pair, tiles.tile_bound_avg, bytes_moved)
            for g in gpus
        ),
    )


def simulate_block_sparse(
    block_mask: np.ndarray | None = None,
    *,
    seq_len: int,
    seq_len_kv: int | None = None,
    q_block: int = 128,
    kv_block: int = 128,
    density: float | None = None,
    pattern: str = "random",
    seed: int = 0,
    causal: bool = False,
    batch: int = 1,
    heads: int = 1,
    head_dim: int = 128,
    attention_share: float | None = None,
    sparse_fraction: float = 1.0,
    gpu: str | None = None,
    tflops: float | None = None,
    hbm_tbps: float | None = None,
) -> BlockSparseResult:
    """Predict block-sparse attention with q ``[batch, seq_len, heads, head_dim]``, k/v ``[batch, seq_len_kv, ...]``.

    Give either ``block_mask`` (bool ``[QB, KB]``, ``[H|1, QB, KB]`` or ``[B|1, H|1, QB, KB]`` with
    ``QB = ceil(seq_len / q_block)``, ``KB = ceil(seq_len_kv / kv_block)``) or ``density`` (and ``pattern``, ``seed``).
    """
    for name, value in (("seq_len", seq_len), ("q_block", q_block), ("kv_block", kv_block)):
        check_int(name, value)
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
        check_int(name, value)
    seq_len_kv = seq_len if seq_len_kv is None else check_int("seq_len_kv", seq_len_kv)
    if causal and seq_len > seq_len_kv:
        raise ValueError(
            f"seq_len: must be <= seq_len_kv when causal (queries align to the end), {seq_len} > {seq_len_kv}"
        )
    n_q, n_kv = ceil_div(seq_len, q_block), ceil_div(seq_len_kv, kv_block)
    if (block_mask is None) == (density is None):
        raise ValueError("block_mask: give exactly one of block_mask and density")
    if block_mask is None:
        block_mask = make_block_mask(
            seq_len, seq_len_kv, q_block, kv_block, density, pattern, heads, seed, bool(causal)
        )
    mask = _as_4d(block_mask, batch, heads, n_q, n_kv)
    return block_sparse_result(
        "block-sparse",
        mask,
        seq_len_q=seq_len,
        seq_len_kv=seq_len_kv,
        q_block=q_block,
        kv_block=kv_block,
        causal=bool(causal),
        batch=batch,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        attention_share=attention_share,
        sparse_fraction=sparse_fraction,
        gpus=select_gpus(gpu, tflops, hbm_tbps),
    )
