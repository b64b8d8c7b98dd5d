"""FlexAttention backend (``torch.nn.attention.flex_attention``): every family as a ``mask_mod`` plus a ``BlockMask``.

A fallback for devices and dtypes our fused kernels do not cover, and a second, independent check of their semantics in
tests (its masks come from the torch-free twins in ``simulator/``, not from the kernels' policy headers).

- ``gna``: the mask_mod looks up per-dim tables ``lo[x]``, ``hi[x]`` of the window of each query coordinate ``x``
  (global key coordinates, from :func:`simulator.gna_policy.gna_window_np`); key ``y`` is visible iff
  ``lo[x] <= y < hi[x]`` and ``y = x (mod dilation)`` in every dim. Tables are O(sum of dim sizes); additional KV
  tokens are appended after the grid's keys and visible to every query.
- ``block_sparse``: the call's KV block lists become the BlockMask directly; the mask_mod looks up the dense
  ``[B|1, H|1, QB, KB]`` block tables (eager flex evaluates only the mask_mod, so it must be exact by itself).
- ``strided_shard``: the mask_mod looks up the ``[H, QB, KB]`` block pattern of
  :func:`natten_like.strided_shard.strided_shard_block_mask`, AND causal per token.

The BlockMask of a mask_mod is built by :func:`block_mask_of` in chunks of query blocks, so no ``[N_q, N_kv]`` mask is
ever held (``create_block_mask`` run eagerly materialises one). Blocks whose every element is visible go to the full
lists, on which flex skips the mask_mod.

Limits in this torch: FlexAttention has no backward on CPU (forward only there; eager, so unfused); float64 is left to
the reference backend. Outside ``torch.compile`` on a GPU the call goes through a compiled ``flex_attention`` (eager
flex would materialise the scores). When auto-dispatch lands here because every faster backend refused, a one-time
``UserWarning`` names their reasons.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

from simulator.gna_policy import gna_group_length, gna_window_np

from .. import block_sparse, strided_shard
from .._validation import GnaParams
from . import _REGISTRY, BACKEND_ORDER, Problem, register_backend
from .reference import flatten_gna_tokens

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Devices flex_attention accepts (torch.nn.attention.flex_attention._validate_device), and those without its backward.
FLEX_DEVICES = ("cuda", "cpu", "xpu", "hpu", "mps")
NO_BACKWARD_DEVICES = ("cpu", "mps")
# Tokens per block of the BlockMasks built here: flex's own default sparse block size.
FLEX_BLOCK = 128
# Mask elements evaluated at once while building a BlockMask (bounds the memory of block_mask_of).
_CHUNK_ELEMENTS = 1 << 24

_warned: set[tuple[str, str]] = set()


# ---- masks ----


def gna_tables(params: GnaParams) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Per token dim ``(length, dilation, lo, hi)``: query coordinate ``x`` sees key coordinates ``y`` with
    ``lo[x] <= y < hi[x]`` and ``y % dilation == x % dilation`` (int64 ``[length]`` arrays, global coordinates)."""
    tables = []
    dims = zip(params.shape, params.window, params.stride, params.dilation, params.is_causal, strict=True)
    for n, w, s, d, c in dims:
        lo, hi = np.empty(n, np.int64), np.empty(n, np.int64)
        for g in range(d):
            local = np.arange(gna_group_length(n, d, g), dtype=np.int64)
            begin, end = gna_window_np(local, len(local), w, s, c)
            # Group-local key j is global g + j * d; end is exclusive, so its last key is end - 1.
            lo[g::d], hi[g::d] = g + begin * d, g + (end - 1) * d + 1
        tables.append((n, d, lo, hi))
    return tables


def gna_mask_mod(params: GnaParams, device: torch.device | str) -> MaskMod:
    """FlexAttention mask_mod of the GNA mask over the row-major flattened token grid (keys ``>= N``, the additional
    KV, are visible to every query). Safe for any index ``>= 0``: query coordinates are clamped before lookups."""
    n = math.prod(params.shape)
    tables = [
        (length, dil, torch.from_numpy(lo).to(device), torch.from_numpy(hi).to(device))
        for length, dil, lo, hi in gna_tables(params)
    ]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        visible = kv_idx >= n
        inside = None
        qi, ki = q_idx, kv_idx
        for dim, (length, dil, lo, hi) in reversed(list(enumerate(tables))):
            # The leading dim's coordinate is the quotient left over; clamp it so padded query rows index in bounds.
            qx = qi.clamp(max=length - 1) if dim == 0 else qi % length
            kx = ki if dim == 0 else ki % length
            qi, ki = qi // length, ki // length
            cond = (kx >= lo[qx]) & (kx < hi[qx])
            if dil > 1:
                cond = cond & ((kx - qx) % dil == 0)
            inside = cond if inside is None else inside & cond
        return visible | inside

    return mask_mod


def block_sparse_mask_mod(
    params: block_sparse.BlockSparseParams, num_q: int, num_kv: int, device: torch.device | str
) -> MaskMod:
    """FlexAttention mask_mod of the block-sparse element mask: the ``[B|1, H|1, QB, KB]`` kept/full block tables,
    AND the causal element mask ``i + N_kv - N_q >= j`` outside full blocks when causal.

    Exact on its own (eager flex evaluates only the mask_mod, never the BlockMask's lists)."""
    kept, full = (t.to(device) for t in block_sparse.dense_block_mask(params.lists, params.num_kv_blocks))
    qb, kb, offset = kept.shape[2], kept.shape[3], num_kv - num_q
    one_batch, one_head = kept.shape[0] == 1, kept.shape[1] == 1

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        # Broadcast (size-1) batch/head dims are indexed at 0; positions are clamped so padded ones index in bounds.
        bi, hi = b * 0 if one_batch else b, h * 0 if one_head else h
        row = (q_idx // params.q_block).clamp(max=qb - 1)
        col = (kv_idx // params.kv_block).clamp(max=kb - 1)
        visible = kept[bi, hi, row, col]
        return visible & (full[bi, hi, row, col] | (q_idx + offset >= kv_idx)) if params.is_causal else visible

    return mask_mod


def strided_shard_mask_mod(params: strided_shard.StridedShardParams, device: torch.device | str) -> MaskMod:
    """FlexAttention mask_mod of the S2 pattern: query ``i`` sits at key position ``i + N_kv - N_q``; per query head
    ``h`` the ``[H, QB, KB]`` block table decides, and causal also needs ``q_pos >= k_pos``."""
    blocks = strided_shard.strided_shard_block_mask(params).to(device)  # [H, QB, KB]
    offset = params.num_kv - params.num_q
    first = offset // params.block_size
    bs, qb, kb = params.block_size, blocks.shape[1], blocks.shape[2]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        q_pos = q_idx + offset
        row = (q_pos // bs - first).clamp(max=qb - 1)
        col = (kv_idx // bs).clamp(max=kb - 1)
        visible = blocks[h, row, col]
        return visible & (q_pos >= kv_idx) if params.is_causal else visible

    return mask_mod


def block_mask_of(
    mask_mod: MaskMod,
    heads: int,
    num_q: int,
    num_kv: int,
    device: torch.device | str,
    block_size: int = FLEX_BLOCK,
) -> BlockMask:
    """BlockMask ``[1, heads, ...]`` of ``mask_mod`` for ``num_q`` queries and ``num_kv`` keys (``heads = 1``: the same
    pattern for every head), built in chunks of query blocks so that at most ~2^24 mask elements exist at once.

    Blocks with every element visible are *full* (flex skips the mask_mod there); blocks cut by the sequence end never
    are, as in ``create_block_mask``.
    """
    qb, kb = -(-num_q // block_size), -(-num_kv // block_size)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (heads * block_size * kb * block_size))
    b = torch.zeros((), dtype=torch.int64, device=device)
    h = torch.arange(heads, device=device)[:, None, None]
    kv = torch.arange(kb * block_size, device=device)[None, None, :]
    partial, full = [], []
    for r0 in range(0, qb, rows_per_chunk):
        r1 = min(qb, r0 + rows_per_chunk)
        q = torch.arange(r0 * block_size, r1 * block_size, device=device)[None, :, None]
        # mask_mods may index tables by position, so padded positions are clamped in and then masked out.
        m = mask_mod(b, h, q.clamp(max=num_q - 1), kv.clamp(max=num_kv - 1)) & (q < num_q) & (kv < num_kv)
        counts = m.expand(heads, -1, -1).reshape(heads, r1 - r0, block_size, kb, block_size).sum((2, 4))
        partial.append((counts > 0) & (counts < block_size * block_size))
        full.append(counts == block_size * block_size)

    def lists(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        kept = torch.cat(blocks, dim=1)[None]  # [1, heads, QB, KB]
        order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)  # kept blocks first, in increasing order
        return kept.sum(-1).to(torch.int32), order.to(torch.int32)

    return BlockMask.from_kv_blocks(
        *lists(partial), *lists(full), BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(num_q, num_kv)
    )


@functools.lru_cache(maxsize=32)
def _gna_block_mask(params: GnaParams, device: torch.device) -> BlockMask:
    n = math.prod(params.shape)
    return block_mask_of(gna_mask_mod(params, device), 1, n, n + params.num_additional, device)


@functools.lru_cache(maxsize=32)
def _strided_shard_block_mask(params: strided_shard.StridedShardParams, device: torch.device) -> BlockMask:
    return block_mask_of(strided_shard_mask_mod(params, device), params.num_heads, params.num_q, params.num_kv, device)


# ---- running flex ----


@functools.cache
def _compiled_flex() -> Callable[..., object]:
    return torch.compile(flex_attention, dynamic=False)


def _flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """flex_attention of heads-last q ``[B, N_q, H, D]``, k/v ``[B, N_kv, H_kv, D / D_v]``.

    Returns (out ``[B, N_q, H, D_v]``, lse ``[B, N_q, H]`` float32; rows without keys: out 0, lse -inf)."""
    # Eager flex on a GPU materialises the scores; inside torch.compile the caller's compilation fuses it already.
    run = flex_attention if torch.compiler.is_compiling() or q.device.type in NO_BACKWARD_DEVICES else _compiled_flex()
    out, aux = run(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
        return_aux=AuxRequest(lse=True),
    )
    return out.transpose(1, 2), aux.lse.transpose(1, 2).float()


def _warn_fallback(problem: Problem) -> None:
    """Warn once per (family, reasons) when flex runs because every backend ahead of it refused ``problem``."""
    if torch.compiler.is_compiling():
        return
    ahead = BACKEND_ORDER[: BACKEND_ORDER.index("flex")]
    refusals = []
    for name in ahead:
        backend = _REGISTRY[problem.family].get(name)
        if backend is None:
            continue
        reasons = backend.not_supported_reasons(problem)
        if not reasons:
            return  # a faster backend could run it, so flex was forced: nothing to explain
        refusals.append(f"{name}: " + ", ".join(reasons))
    key = (problem.family, "; ".join(refusals))
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"natten_like {problem.family}: running on the FlexAttention fallback, slower than the fused kernels, "
            f"because they refused ({key[1]})",
            UserWarning,
            stacklevel=4,
        )


def not_supported_reasons(problem: Problem) -> list[str]:
    """What FlexAttention needs for every family: a device it runs on, a supported dtype, a backward when one is due."""
    reasons = []
    if problem.device_type not in FLEX_DEVICES:
        reasons.append(f"FlexAttention does not run on {problem.device_type} (only {', '.join(FLEX_DEVICES)})")
    if problem.dtype not in SUPPORTED_DTYPES:
        reasons.append(
            f"dtype {problem.dtype} is not supported (float32, float16 and bfloat16 only; float64 runs on the "
            "reference backend)"
        )
    if problem.empty:
        reasons.append("FlexAttention does not take empty tensors (a dim of size 0)")
    if problem.requires_grad and problem.device_type in NO_BACKWARD_DEVICES:
        reasons.append(
            f"FlexAttention has no backward on {problem.device_type} in torch {torch.__version__} (forward only: call "
            "it under torch.no_grad or with inputs that do not require grad)"
        )
    return reasons


def run_gna(
    problem: Problem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes as in :func:`natten_like.gna`. Returns (out ``[B, *tokens, H, D_v]``, lse ``[B, *tokens, H]`` float32)."""
    _warn_fallback(problem)
    params: GnaParams = problem.params
    qf, kf, vf = flatten_gna_tokens(q, k, v, additional_keys, additional_values)
    out, lse = _flex(qf, kf, vf, _gna_block_mask(params, q.device), params.scale)
    return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])


def block_sparse_not_supported_reasons(problem: Problem) -> list[str]:
    reasons = not_supported_reasons(problem)
    if problem.params.cu_seqlens_q is not None:
        reasons.append("packed variable-length batches (cu_seqlens) are not supported")
    return reasons


def run_block_sparse(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[B, N_q, H, D]``, k/v ``[B, N_kv, H_kv, D / D_v]``.

    Returns (out ``[B, N_q, H, D_v]``, lse ``[B, N_q, H]`` float32)."""
    _warn_fallback(problem)
    p: block_sparse.BlockSparseParams = problem.params

    def on_device(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=q.device, dtype=torch.int32)

    mask = BlockMask.from_kv_blocks(
        *(on_device(t) for t in p.lists.as_op_args()),
        BLOCK_SIZE=(p.q_block, p.kv_block),
        mask_mod=block_sparse_mask_mod(p, q.shape[1], k.shape[1], q.device),
        seq_lengths=(q.shape[1], k.shape[1]),
    )
    return _flex(q, k, v, mask, p.scale)


def run_strided_shard(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[B, N_q, H, D]``, k/v ``[B, N_kv, H_kv, D / D_v]``.

    Returns (out ``[B, N_q, H, D_v]``, lse ``[B, N_q, H]`` float32)."""
    _warn_fallback(problem)
    p: strided_shard.StridedShardParams = problem.params
    return _flex(q, k, v, _strided_shard_block_mask(p, q.device), p.scale)


register_backend("gna", "flex", not_supported_reasons, run_gna)
register_backend("block_sparse", "flex", block_sparse_not_supported_reasons, run_block_sparse)
register_backend("strided_shard", "flex", not_supported_reasons, run_strided_shard)
