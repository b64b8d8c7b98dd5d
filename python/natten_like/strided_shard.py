"""Strided-shard attention (S2-Attention): each KV head sees a local band of blocks plus its own strided shard of KV
blocks, so that the heads together cover the context.

Semantics (``csrc/include/natten_like/policy/strided_shard.hpp`` for the kernels, ``simulator/strided_shard.py``'s
``s2_block_mask`` as the torch-free twin): on blocks of ``block_size`` tokens, query block ``bq``, KV block ``bk``, KV
head ``h`` (query heads of a GQA group share their KV head's pattern), ``step = max(1, vert_stride // H_q)`` (0 when
``homo_head``), ``bk`` is kept for ``bq`` iff ``bq - bk < local_blocks`` (non-causal: ``|bq - bk| < local_blocks``) or
``(bk + h * step + head_sliding_offset) % vert_stride == 0``; causal also needs ``bk <= bq`` and masks per token
(``q_pos >= k_pos``). The last ``num_dense_heads`` KV heads are dense. Query ``i`` sits at key position
``i + N_kv - N_q`` (``N_q <= N_kv``; decode-style queries at the end of the keys), which also fixes its block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulator.strided_shard import s2_block_mask

from . import ops
from ._validation import (
    check_backend,
    check_bool,
    check_int,
    check_same_floating,
    check_scale,
    check_sequence_qkv,
    check_tensor,
)
from .backends import Problem, cpu, cuda, dispatch, reference, register_backend
from .backends.reference import masked_attention

__all__ = [
    "StridedShardParams",
    "is_kv_cache_efficient",
    "strided_shard_attention",
    "strided_shard_block_mask",
    "strided_shard_reference",
]


@dataclass(frozen=True)
class StridedShardParams:
    """Normalised arguments of one strided-shard call."""

    num_heads: int
    num_kv_heads: int
    num_q: int
    num_kv: int
    block_size: int
    local_blocks: int
    vert_stride: int
    is_causal: bool
    homo_head: bool
    num_dense_heads: int
    head_sliding_offset: int
    scale: float
    head_dim: int
    head_dim_v: int

    def pattern_args(self) -> tuple[int, int, int, bool, bool, int, int]:
        """The pattern arguments in the order of the compiled ops."""
        return (
            self.block_size,
            self.local_blocks,
            self.vert_stride,
            self.is_causal,
            self.homo_head,
            self.num_dense_heads,
            self.head_sliding_offset,
        )


def validate_strided_shard(
    q: object,
    k: object,
    v: object,
    block_size: object,
    local_blocks: object,
    vert_stride: object,
    is_causal: object,
    homo_head: object,
    num_dense_heads: object,
    head_sliding_offset: object,
    scale: object,
) -> StridedShardParams:
    """Check every argument of :func:`strided_shard_attention` and return them normalised."""
    q, k, v = check_sequence_qkv(q, k, v)
    heads, kv_heads = q.shape[2], k.shape[2]
    if v.shape[2] != kv_heads or kv_heads < 1 or heads % kv_heads != 0:
        raise ValueError(
            f"head counts must satisfy H % H_kv == 0 with v's H_kv equal to k's, got H={heads}, H_kv={kv_heads}, "
            f"v's {v.shape[2]}"
        )
    if k.shape[3] != q.shape[3] or q.shape[3] < 1 or v.shape[3] < 1:
        raise ValueError(
            f"k must have q's head dim and head dims must be >= 1, got D={q.shape[3]}, k's {k.shape[3]}, "
            f"D_v={v.shape[3]}"
        )
    if k.shape[1] < 1:
        raise ValueError(f"k must hold at least one token, got N_kv={k.shape[1]}")
    if q.shape[1] > k.shape[1]:
        raise ValueError(
            f"N_q must be <= N_kv (queries sit at the end of the keys), got N_q={q.shape[1]}, N_kv={k.shape[1]}"
        )
    check_same_floating({"q": q, "k": k, "v": v})
    block_size = check_int(block_size, "block_size")
    local_blocks = check_int(local_blocks, "local_blocks")
    vert_stride = check_int(vert_stride, "vert_stride")
    num_dense_heads = check_int(num_dense_heads, "num_dense_heads")
    head_sliding_offset = check_int(head_sliding_offset, "head_sliding_offset")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if local_blocks < 1:
        raise ValueError(f"local_blocks must be >= 1 (a query block always sees its own block), got {local_blocks}")
    if vert_stride < 1:
        raise ValueError(f"vert_stride must be >= 1, got {vert_stride}")
    if not 0 <= num_dense_heads <= kv_heads:
        raise ValueError(f"num_dense_heads must be in [0, H_kv={kv_heads}], got {num_dense_heads}")
    if head_sliding_offset < 0:
        raise ValueError(f"head_sliding_offset must be >= 0, got {head_sliding_offset}")
    return StridedShardParams(
        num_heads=heads,
        num_kv_heads=kv_heads,
        num_q=q.shape[1],
        num_kv=k.shape[1],
        block_size=block_size,
        local_blocks=local_blocks,
        vert_stride=vert_stride,
        is_causal=check_bool(is_causal, "is_causal"),
        homo_head=check_bool(homo_head, "homo_head"),
        num_dense_heads=num_dense_heads,
        head_sliding_offset=head_sliding_offset,
        scale=check_scale(scale, q.shape[3]),
        head_dim=q.shape[3],
        head_dim_v=v.shape[3],
    )


def strided_shard_block_mask(params: StridedShardParams) -> torch.Tensor:
    """Bool ``[H, QB, KB]`` per query head: KV blocks kept by each query block (query blocks start at the block holding
    key position ``N_kv - N_q``)."""
    kb = -(-params.num_kv // params.block_size)
    per_kv_head = s2_block_mask(
        kb,
        params.local_blocks,
        params.vert_stride,
        params.num_heads,
        params.num_kv_heads,
        params.is_causal,
        params.homo_head,
        params.num_dense_heads,
        params.head_sliding_offset,
    )
    first = (params.num_kv - params.num_q) // params.block_size if params.num_q else kb
    group = params.num_heads // params.num_kv_heads
    return torch.from_numpy(per_kv_head[:, first:]).repeat_interleave(group, dim=0)


def element_mask(params: StridedShardParams) -> torch.Tensor:
    """Bool ``[H, N_q, N_kv]``: True where query i of head h attends key j."""
    offset = params.num_kv - params.num_q
    q_pos = torch.arange(params.num_q) + offset
    k_pos = torch.arange(params.num_kv)
    first = offset // params.block_size
    blocks = strided_shard_block_mask(params)
    mask = blocks[:, q_pos // params.block_size - first][:, :, k_pos // params.block_size]
    if params.is_causal:
        mask = mask & (q_pos[:, None] >= k_pos[None, :])
    return mask


def strided_shard_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: StridedShardParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention with the S2 mask; any dtype incl. float64, autograd by PyTorch.

    q ``[B, N_q, H, D]``, k/v ``[B, N_kv, H_kv, D / D_v]``. Returns (out ``[B, N_q, H, D_v]``, lse ``[B, N_q, H]``).
    """
    return masked_attention(q, k, v, element_mask(params)[None].to(q.device), params.scale)


def is_kv_cache_efficient(pattern: torch.Tensor, q_block: int, kv_block: int | None = None) -> bool:
    """Whether a block pattern is KV-cache efficient as S2-Attention defines it: once a query block past KV block ``c``
    stops attending ``c``, no later query block attends it again, so a decoder may evict ``c`` for good.

    Args:
        pattern: bool ``[..., QB, KB]`` (e.g. per head); query block ``r`` holds tokens ``[r * q_block, (r + 1) *
            q_block)``.
        q_block, kv_block: block sizes in tokens (``kv_block`` defaults to ``q_block``).
    """
    pattern = check_tensor(pattern, "pattern")
    if pattern.dtype != torch.bool or pattern.dim() < 2:
        raise ValueError(f"pattern must be a bool tensor [..., QB, KB], got {pattern.dtype} {tuple(pattern.shape)}")
    q_block = check_int(q_block, "q_block")
    kv_block = q_block if kv_block is None else check_int(kv_block, "kv_block")
    if q_block < 1 or kv_block < 1:
        raise ValueError(f"q_block and kv_block must be >= 1, got {q_block}, {kv_block}")
    qb, kb = pattern.shape[-2:]
    # Only query blocks that start after KV block c ends are compared: near the diagonal, local attention may grow.
    past = torch.arange(qb)[:, None] * q_block >= (torch.arange(kb)[None, :] + 1) * kv_block  # [QB, KB]
    regrows = pattern[..., 1:, :] & ~pattern[..., :-1, :] & past[1:]
    return not bool(regrows.any())


# ---- torch.library: fake implementations and autograd of the compiled ops ----

if ops.EXTENSION_ERROR is None:
    ops.register_qkv_op("strided_shard", 0)


# ---- backends ----


def _cpu_run(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p: StridedShardParams = problem.params
    return torch.ops.natten_like.strided_shard_forward(q, k, v, *p.pattern_args(), p.scale)


def _reference_run(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return strided_shard_reference(q, k, v, problem.params)


def _cuda_run(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cuda.check_device(problem, q.device)
    p: StridedShardParams = problem.params
    return torch.ops.natten_like.strided_shard_forward(q, k, v, *p.pattern_args(), p.scale)


register_backend("strided_shard", "cuda", cuda.strided_shard_not_supported_reasons, _cuda_run)
register_backend("strided_shard", "cpu", cpu.not_supported_reasons, _cpu_run)
register_backend("strided_shard", "reference", reference.not_supported_reasons, _reference_run)


def strided_shard_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int,
    local_blocks: int,
    vert_stride: int,
    is_causal: bool = True,
    homo_head: bool = False,
    num_dense_heads: int = 0,
    head_sliding_offset: int = 0,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Strided-shard attention (S2-Attention); see the module docstring for the exact pattern.

    Args:
        q: ``[B, N_q, H, D]``, ``N_q <= N_kv`` (queries at the end of the keys).
        k: ``[B, N_kv, H_kv, D]``, ``H % H_kv == 0`` (GQA: query heads share their KV head's pattern).
        v: ``[B, N_kv, H_kv, D_v]``.
        block_size: tokens per block (>= 1).
        local_blocks: width of the local band in blocks (>= 1).
        vert_stride: every ``vert_stride``-th KV block is kept (per-head shifted); 1 = dense.
        is_causal: ``bk <= bq`` and ``q_pos >= k_pos``.
        homo_head: every head keeps the same vertical columns.
        num_dense_heads: the last ``num_dense_heads`` KV heads attend every (causal) block.
        head_sliding_offset: shift of the vertical columns (the shard of head 0).
        scale: softmax scale; ``None`` = ``D ** -0.5``.
        return_lse: also return the logsumexp ``[B, N_q, H]`` (float32; float64 for float64 inputs).
        backend: ``"cuda"``, ``"cpu"``, ``"flex"`` or ``"reference"`` to force one; ``None`` picks the first that can
            run the call.

    Returns:
        out ``[B, N_q, H, D_v]``, and lse when ``return_lse``.
    """
    params = validate_strided_shard(
        q,
        k,
        v,
        block_size,
        local_blocks,
        vert_stride,
        is_causal,
        homo_head,
        num_dense_heads,
        head_sliding_offset,
        scale,
    )
    check_bool(return_lse, "return_lse")
    out, lse = dispatch("strided_shard", params, check_backend(backend), q, k, v)
    return (out, lse) if return_lse else out
