"""Speed-of-light model of strided-shard attention (S2-Attention): per KV head, a local band of blocks plus that head's
strided shard of KV blocks, so that the heads together cover the context. Block-level counts; one block is one tile.
"""

from __future__ import annotations

import numpy as np

from simulator.block_sparse import BlockSparseResult, block_sparse_result
from simulator.common import check_int, select_gpus
from simulator.gna_policy import ceil_div


def s2_block_mask(
    num_blocks: int,
    local_blocks: int,
    vert_stride: int,
    heads: int,
    kv_heads: int,
    causal: bool = True,
    homo_head: bool = False,
    num_dense_heads: int = 0,
    head_sliding_offset: int = 0,
) -> np.ndarray:
    """bool ``[kv_heads, num_blocks, num_blocks]``: KV block ``bk`` kept for query block ``bq`` and KV head ``h``.

    With ``step = max(1, vert_stride // heads)`` (0 when ``homo_head``): kept iff ``bq - bk < local_blocks`` (causal;
    ``|bq - bk| < local_blocks`` otherwise) or ``(bk + h * step + head_sliding_offset) % vert_stride == 0``; causal also
    needs ``bk <= bq``. The last ``num_dense_heads`` KV heads keep every (causal) block.
    """
    for name, value in (("num_blocks", num_blocks), ("local_blocks", local_blocks), ("vert_stride", vert_stride)):
        check_int(name, value)
    check_int("heads", heads)
    check_int("kv_heads", kv_heads)
    check_int("num_dense_heads", num_dense_heads, minimum=0)
    check_int("head_sliding_offset", head_sliding_offset, minimum=0)
    if heads % kv_heads:
        raise ValueError(f"kv_heads: must divide heads ({heads}), got {kv_heads}")
    if num_dense_heads > kv_heads:
        raise ValueError(f"num_dense_heads: must be <= kv_heads ({kv_heads}), got {num_dense_heads}")
    step = 0 if homo_head else max(1, vert_stride // heads)
    bq = np.arange(num_blocks)[:, None]
    bk = np.arange(num_blocks)[None, :]
    h = np.arange(kv_heads)[:, None, None]
    local = (bq - bk < local_blocks) if causal else (np.abs(bq - bk) < local_blocks)
    vertical = (bk + h * step + head_sliding_offset) % vert_stride == 0
    mask = local | vertical
    mask[kv_heads - num_dense_heads :] = True
    if causal:
        mask &= bk <= bq
    return mask


def simulate_strided_shard(
    *,
    seq_len: int,
    block_size: int = 64,
    local_blocks: int = 16,
    vert_stride: int = 8,
    heads: int = 1,
    kv_heads: int | None = None,
    causal: bool = True,
    homo_head: bool = False,
    num_dense_heads: int = 0,
    head_sliding_offset: int = 0,
    batch: int = 1,
    head_dim: int = 128,
    attention_share: float | None = None,
    sparse_fraction: float = 1.0,
    gpu: str | None = None,
    tflops: float | None = None,
    hbm_tbps: float | None = None,
) -> BlockSparseResult:
    """Predict S2-Attention self-attention on q ``[batch, seq_len, heads, head_dim]``, k/v with ``kv_heads`` heads
    (default ``heads``); query heads of a GQA group share their KV head's pattern."""
    check_int("seq_len", seq_len)
    check_int("block_size", block_size)
    check_int("batch", batch)
    check_int("head_dim", head_dim)
    kv_heads = heads if kv_heads is None else kv_heads
    mask = s2_block_mask(
        ceil_div(seq_len, block_size),
        local_blocks,
        vert_stride,
        heads,
        kv_heads,
        causal,
        homo_head,
        num_dense_heads,
        head_sliding_offset,
    )
    return block_sparse_result(
        "strided-shard",
        mask[None],
        seq_len_q=seq_len,
        seq_len_kv=seq_len,
        q_block=block_size,
        kv_block=block_size,
        causal=bool(causal),
        batch=batch,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        attention_share=attention_share,
        sparse_fraction=sparse_fraction,
        gpus=select_gpus(gpu, tflops, hbm_tbps),
    )
