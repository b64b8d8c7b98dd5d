"""Block-sparse attention: per (batch, head, query block) a list of KV blocks, any Q and KV block sizes, optional causal
masking, GQA, ``D_v != D`` and variable-length (packed) batches.

Semantics (``csrc/include/natten_like/policy/block_sparse.hpp`` is the kernel-side definition): query block ``r``
covers queries ``[r * q_block, (r + 1) * q_block)`` of its sequence, KV block ``c`` keys ``[c * kv_block, (c + 1) *
kv_block)``.
Query ``i`` attends key ``j`` iff ``j``'s block is listed for ``i``'s block and, unless the block comes from the *full*
list, the element mask allows it: causal ``i + (N_kv - N_q) >= j`` (queries aligned to the end of the keys, as in
decode), otherwise every element. A query that attends no key gets output 0 and logsumexp ``-inf``.

``block_mask`` is one of:
- a boolean ``[B|1, H|1, QB, KB]`` tensor, ``QB = ceil(N_q / q_block)``, ``KB = ceil(N_kv / kv_block)`` (packed batch:
  ``B`` sequences, the longest sequence's block counts);
- FlexAttention's compressed form as a tuple ``(kv_num_blocks [B|1, H|1, QB], kv_indices [B|1, H|1, QB, cap])``,
  optionally followed by ``(full_kv_num_blocks, full_kv_indices)``;
- a ``torch.nn.attention.flex_attention.BlockMask``: its block size and lists are used; its ``mask_mod`` must agree,
  inside the partial blocks, with the element mask this module applies there (none, or causal with ``is_causal``):
  it is evaluated there once per BlockMask and call shape, and a disagreement is a ``ValueError``, never another
  mask's answer.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, noop_mask

from . import ops
from ._validation import check_backend, check_bool, check_int, check_same_floating, check_scale, check_tensor
from .backends import Problem, cpu, cuda, dispatch, reference, register_backend
from .backends.reference import masked_attention

__all__ = [
    "BlockLists",
    "BlockSparseParams",
    "block_sparse_attention",
    "block_sparse_reference",
    "dense_block_mask",
    "element_mask",
    "from_flex_block_mask",
    "to_flex_block_mask",
]

DEFAULT_BLOCK = 128


@dataclass(frozen=True)
class BlockLists:
    """Normalised compressed block lists (int64, contiguous, on the device the mask came on).

    Counts ``[B|1, H|1, QB]``, indices ``[B|1, H|1, QB, cap]``.

    ``full_*`` are ``None`` when every listed block goes through the element mask.
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor | None = None
    full_kv_indices: torch.Tensor | None = None

    def as_op_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        return self.kv_num_blocks, self.kv_indices, self.full_kv_num_blocks, self.full_kv_indices


@dataclass(frozen=True)
class BlockSparseParams:
    """Normalised arguments of one block-sparse call."""

    lists: BlockLists
    q_block: int
    kv_block: int
    is_causal: bool
    scale: float
    num_q_blocks: int  # QB: query blocks of the (longest) sequence
    num_kv_blocks: int  # KB
    cu_seqlens_q: torch.Tensor | None  # [B + 1] int64 on the CPU, packed batches only
    cu_seqlens_kv: torch.Tensor | None
    head_dim: int
    head_dim_v: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_broadcast(t: torch.Tensor, batch: int | None, heads: int | None, name: str) -> None:
    """Batch and head dims of size 1 (broadcast) or the call's; ``None`` = not known yet (any size)."""
    if (batch is not None and t.shape[0] not in (1, batch)) or (heads is not None and t.shape[1] not in (1, heads)):
        raise ValueError(
            f"{name} must have batch dim 1 or {batch} and head dim 1 or {heads}, got shape {tuple(t.shape)}"
        )


def _check_list(
    num: object, idx: object, batch: int | None, heads: int | None, qb: int, kb: int, name: str
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, str]]]:
    """One compressed list: shapes and integer dtypes checked here; returned int64 and contiguous with its content
    checks (counts in [0, cap], listed indices in [0, KB)) as (0-dim bool flag on the list's device, message) pairs,
    not read yet: the caller reads every check of a call with one host sync (:func:`_raise_flagged`)."""
    num = check_tensor(num, f"{name}_num_blocks")
    idx = check_tensor(idx, f"{name}_indices")
    for n, t in ((f"{name}_num_blocks", num), (f"{name}_indices", idx)):
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{n} must be an int32 or int64 tensor, got {t.dtype}")
    if num.dim() != 3 or num.shape[2] != qb:
        raise ValueError(f"{name}_num_blocks must be [B|1, H|1, QB={qb}], got shape {tuple(num.shape)}")
    if idx.dim() != 4 or idx.shape[:3] != num.shape:
        raise ValueError(
            f"{name}_indices must be [{', '.join(map(str, num.shape))}, cap] like {name}_num_blocks, "
            f"got shape {tuple(idx.shape)}"
        )
    _check_broadcast(num, batch, heads, f"{name}_num_blocks")
    if idx.device != num.device:
        raise ValueError(f"{name}_indices must be on {name}_num_blocks' device {num.device}, got {idx.device}")
    num, idx = num.to(torch.int64).contiguous(), idx.to(torch.int64).contiguous()
    bad_count = ((num < 0) | (num > idx.shape[3])).any()
    bad_index = (_listed(num, idx) & ((idx < 0) | (idx >= kb))).any()
    return (
        num,
        idx,
        [
            (bad_count, f"{name}_num_blocks entries must be in [0, {idx.shape[3]}] (the indices' last dim)"),
            (bad_index, f"{name}_indices must hold KV block indices in [0, KB={kb}) in their first num_blocks entries"),
        ],
    )


def _raise_flagged(checks: list[tuple[torch.Tensor, str]]) -> None:
    """Raises ValueError with the message of the first raised flag; one host sync for all of them."""
    if not checks:
        return
    device = checks[0][0].device
    flags = torch.stack([flag.to(device) for flag, _ in checks]).tolist()
    for flagged, (_, message) in zip(flags, checks, strict=True):
        if flagged:
            raise ValueError(message)


def _listed(num: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Bool ``[B|1, H|1, QB, cap]``: which index slots hold a listed block."""
    return torch.arange(idx.shape[3], device=idx.device) < num[..., None]


def _block_counts(num: torch.Tensor, idx: torch.Tensor, kb: int) -> torch.Tensor:
    """How many times each KV block is listed: int32 [B|1, H|1, QB, KB]. Slots out of [0, KB) are not counted (the
    content checks report them)."""
    listed = _listed(num, idx) & (idx >= 0) & (idx < kb)
    counts = torch.zeros(*num.shape, kb + 1, dtype=torch.int32, device=idx.device)
    # Unlisted slots scatter into the spare column kb, dropped below.
    return counts.scatter_add_(-1, torch.where(listed, idx, kb), listed.to(torch.int32))[..., :kb]


def dense_block_mask(lists: BlockLists, num_kv_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, full): bool ``[B|1, H|1, QB, KB]`` block masks of ``lists``; ``full`` marks the full-list blocks."""
    kept = _block_counts(lists.kv_num_blocks, lists.kv_indices, num_kv_blocks) > 0
    full = torch.zeros_like(kept)
    if lists.full_kv_num_blocks is not None:
        full = (_block_counts(lists.full_kv_num_blocks, lists.full_kv_indices, num_kv_blocks) > 0).to(kept.device)
        kept, full = torch.broadcast_tensors(kept | full, full)
    return kept, full


def _lists_from_bool(mask: torch.Tensor) -> BlockLists:
    """Compressed lists of a boolean block mask, kept blocks in increasing order."""
    mask = mask.bool()
    num = mask.sum(-1).to(torch.int64)
    idx = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int64)
    return BlockLists(num.contiguous(), idx.contiguous())


def from_flex_block_mask(block_mask: BlockMask) -> tuple[BlockLists, int, int]:
    """(lists, q_block, kv_block) of a FlexAttention ``BlockMask``."""
    if not isinstance(block_mask, BlockMask):
        raise TypeError(
            f"block_mask must be a torch.nn.attention.flex_attention.BlockMask, got {type(block_mask).__name__}"
        )
    q_block, kv_block = block_mask.BLOCK_SIZE
    full = block_mask.full_kv_num_blocks is not None

    def int64(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(torch.int64).contiguous()

    lists = BlockLists(
        int64(block_mask.kv_num_blocks),
        int64(block_mask.kv_indices),
        int64(block_mask.full_kv_num_blocks) if full else None,
        int64(block_mask.full_kv_indices) if full else None,
    )
    return lists, int(q_block), int(kv_block)


def to_flex_block_mask(
    block_mask: Any,
    num_q: int,
    num_kv: int,
    *,
    q_block: int = DEFAULT_BLOCK,
    kv_block: int = DEFAULT_BLOCK,
    is_causal: bool = False,
    device: torch.device | str = "cpu",
) -> BlockMask:
    """A FlexAttention ``BlockMask`` with the semantics of ``block_mask`` (boolean or compressed form, see the module
    docstring) for ``num_q`` queries and ``num_kv`` keys; its mask_mod is the causal element mask when ``is_causal``."""
    num_q, num_kv = check_int(num_q, "num_q"), check_int(num_kv, "num_kv")
    is_causal = check_bool(is_causal, "is_causal")
    lists, q_block, kv_block, qb, kb = _normalise_mask(block_mask, None, None, num_q, num_kv, q_block, kv_block)
    offset = num_kv - num_q

    def causal(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return q_idx + offset >= kv_idx

    def to_dev(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=torch.int32)

    return BlockMask.from_kv_blocks(
        to_dev(lists.kv_num_blocks),
        to_dev(lists.kv_indices),
        to_dev(lists.full_kv_num_blocks),
        to_dev(lists.full_kv_indices),
        BLOCK_SIZE=(q_block, kv_block),
        mask_mod=causal if is_causal else None,
        seq_lengths=(num_q, num_kv),
    )


def _normalise_mask(
    block_mask: object,
    batch: int | None,
    heads: int | None,
    max_q: int,
    max_kv: int,
    q_block: object,
    kv_block: object,
) -> tuple[BlockLists, int, int, int, int]:
    """(lists, q_block, kv_block, QB, KB) of any accepted ``block_mask`` form, validated."""
    if isinstance(block_mask, BlockMask):
        lists, bq, bk = from_flex_block_mask(block_mask)
        for name, given, own in (("q_block", q_block, bq), ("kv_block", kv_block, bk)):
            if given is not None and check_int(given, name) != own:
                raise ValueError(f"{name} must be None or the BlockMask's block size {own}, got {given}")
        q_block, kv_block = bq, bk
        if block_mask.seq_lengths != (max_q, max_kv):
            raise ValueError(
                f"block_mask was built for (N_q, N_kv) = {tuple(block_mask.seq_lengths)}, "
                f"the call has {(max_q, max_kv)}"
            )
    parts = block_mask if isinstance(block_mask, (tuple, list)) else (block_mask,)
    if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in parts):
        raise ValueError("block_mask must hold data: its tensors are on the meta device")
    q_block = DEFAULT_BLOCK if q_block is None else check_int(q_block, "q_block")
    kv_block = DEFAULT_BLOCK if kv_block is None else check_int(kv_block, "kv_block")
    if q_block < 1 or kv_block < 1:
        raise ValueError(f"q_block and kv_block must be >= 1, got q_block={q_block}, kv_block={kv_block}")
    qb, kb = _ceil_div(max_q, q_block), _ceil_div(max_kv, kv_block)
    checks: list[tuple[torch.Tensor, str]] = []  # content checks of the lists, read at the end with one host sync
    if isinstance(block_mask, BlockMask):
        num, idx, checks = _check_list(lists.kv_num_blocks, lists.kv_indices, batch, heads, qb, kb, "kv")
        if lists.full_kv_num_blocks is not None:
            fnum, fidx, full_checks = _check_list(
                lists.full_kv_num_blocks, lists.full_kv_indices, batch, heads, qb, kb, "full_kv"
            )
            checks += full_checks
            lists = BlockLists(num, idx, fnum, fidx)
        else:
            lists = BlockLists(num, idx)
    elif isinstance(block_mask, torch.Tensor):
        if block_mask.dtype != torch.bool:
            raise TypeError(
                f"block_mask must be a bool tensor (or compressed lists / a BlockMask), got {block_mask.dtype}"
            )
        if block_mask.dim() != 4 or block_mask.shape[2:] != (qb, kb):
            raise ValueError(
                f"block_mask must be [B|1, H|1, QB={qb}, KB={kb}] (QB = ceil(N_q / q_block), KB = ceil(N_kv / "
                f"kv_block)), got shape {tuple(block_mask.shape)}"
            )
        _check_broadcast(block_mask, batch, heads, "block_mask")
        lists = _lists_from_bool(block_mask)
    elif isinstance(block_mask, (tuple, list)):
        if len(block_mask) not in (2, 4):
            raise ValueError(
                "block_mask as a tuple must be (kv_num_blocks, kv_indices) or (kv_num_blocks, kv_indices, "
                f"full_kv_num_blocks, full_kv_indices), got {len(block_mask)} entries"
            )
        num, idx, checks = _check_list(block_mask[0], block_mask[1], batch, heads, qb, kb, "kv")
        lists = BlockLists(num, idx)
        if len(block_mask) == 4:
            fnum, fidx, full_checks = _check_list(block_mask[2], block_mask[3], batch, heads, qb, kb, "full_kv")
            checks += full_checks
            lists = BlockLists(num, idx, fnum, fidx)
    else:
        raise TypeError(
            "block_mask must be a bool tensor, a (kv_num_blocks, kv_indices[, full_kv_num_blocks, full_kv_indices]) "
            f"tuple or a flex_attention BlockMask, got {type(block_mask).__name__}"
        )
    # Lists made from a bool mask cannot repeat a block and need no content check: that path stays free of
    # data-dependent branches, so torch.compile(fullgraph=True) traces it.
    if lists.full_kv_num_blocks is not None:
        counts = _block_counts(lists.kv_num_blocks, lists.kv_indices, kb)
        counts = counts + _block_counts(lists.full_kv_num_blocks, lists.full_kv_indices, kb).to(counts.device)
        message = "block_mask lists a KV block twice for one query block (in kv_indices and/or full_kv_indices)"
        checks.append(((counts > 1).any(), message))
    elif not isinstance(block_mask, torch.Tensor):
        counts = _block_counts(lists.kv_num_blocks, lists.kv_indices, kb)
        checks.append(((counts > 1).any(), "block_mask lists a KV block twice for one query block in kv_indices"))
    _raise_flagged(checks)
    return lists, q_block, kv_block, qb, kb


def _check_cu_seqlens(cu: object, total: int, name: str) -> torch.Tensor:
    cu = check_tensor(cu, name)
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D with B + 1 >= 2 entries, got shape {tuple(cu.shape)}")
    cu = cu.to("cpu", torch.int64)
    if cu[0] != 0 or (cu[1:] < cu[:-1]).any() or cu[-1] != total:
        raise ValueError(f"{name} must start at 0, be non-decreasing and end at the packed length {total}")
    return cu


def validate_block_sparse(
    q: object,
    k: object,
    v: object,
    block_mask: object,
    q_block: object,
    kv_block: object,
    is_causal: object,
    scale: object,
    cu_seqlens_q: object,
    cu_seqlens_kv: object,
) -> BlockSparseParams:
    """Check every argument of :func:`block_sparse_attention` and return them normalised."""
    q, k, v = check_tensor(q, "q"), check_tensor(k, "k"), check_tensor(v, "v")
    packed = cu_seqlens_q is not None or cu_seqlens_kv is not None
    if packed and (cu_seqlens_q is None or cu_seqlens_kv is None):
        raise ValueError("cu_seqlens_q and cu_seqlens_kv must be given together (both or neither)")
    layout = "[total, H, D]" if packed else "[B, N, H, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != (3 if packed else 4):
            raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")
    if not packed and (k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]):
        raise ValueError(f"q, k and v must share the batch size, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    tok = 0 if packed else 1
    if v.shape[tok] != k.shape[tok]:
        raise ValueError(f"v must have k's token count ({k.shape[tok]}), got {v.shape[tok]}")
    heads, kv_heads = q.shape[-2], k.shape[-2]
    if v.shape[-2] != kv_heads or kv_heads < 1 or heads % kv_heads != 0:
        raise ValueError(
            f"head counts must satisfy H % H_kv == 0 with v's H_kv equal to k's, got H={heads}, "
            f"H_kv={kv_heads}, v's {v.shape[-2]}"
        )
    if k.shape[-1] != q.shape[-1] or q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(
            f"k must have q's head dim and head dims must be >= 1, got D={q.shape[-1]}, "
            f"k's {k.shape[-1]}, D_v={v.shape[-1]}"
        )
    check_same_floating({"q": q, "k": k, "v": v})
    cu_q = cu_kv = None
    if packed:
        cu_q = _check_cu_seqlens(cu_seqlens_q, q.shape[0], "cu_seqlens_q")
        cu_kv = _check_cu_seqlens(cu_seqlens_kv, k.shape[0], "cu_seqlens_kv")
        if cu_q.numel() != cu_kv.numel():
            raise ValueError(
                f"cu_seqlens_q and cu_seqlens_kv must have the same length, got {cu_q.numel()} and {cu_kv.numel()}"
            )
        batch = cu_q.numel() - 1
        max_q, max_kv = int((cu_q[1:] - cu_q[:-1]).max()), int((cu_kv[1:] - cu_kv[:-1]).max())
    else:
        batch, max_q, max_kv = q.shape[0], q.shape[1], k.shape[1]
    lists, qbs, kvbs, qb, kb = _normalise_mask(block_mask, batch, heads, max_q, max_kv, q_block, kv_block)
    params = BlockSparseParams(
        lists=lists,
        q_block=qbs,
        kv_block=kvbs,
        is_causal=check_bool(is_causal, "is_causal"),
        scale=check_scale(scale, q.shape[-1]),
        num_q_blocks=qb,
        num_kv_blocks=kb,
        cu_seqlens_q=cu_q,
        cu_seqlens_kv=cu_kv,
        head_dim=q.shape[-1],
        head_dim_v=v.shape[-1],
    )
    if isinstance(block_mask, BlockMask):
        _check_mask_mod(block_mask, params, max_q, max_kv)
    return params


# BlockMasks whose mask_mod agreed with a call's element mask: BlockMask -> (is_causal, N_q, N_kv, list versions).
_MASK_MODS_CHECKED: weakref.WeakKeyDictionary[BlockMask, tuple[int, ...]] = weakref.WeakKeyDictionary()
_MASK_MOD_CHUNK = 1 << 22  # mask elements evaluated at once


def _check_mask_mod(block_mask: BlockMask, params: BlockSparseParams, num_q: int, num_kv: int) -> None:
    """A BlockMask's ``mask_mod`` must agree, inside its partial blocks (the only place FlexAttention applies it), with
    the element mask this call applies there: none, or causal with ``is_causal``. The kernels cannot run an arbitrary
    mask_mod, so a disagreement is refused rather than answered with another mask. Evaluated once per BlockMask and
    call shape (and again after its lists change in place)."""
    mod = block_mask.mask_mod
    if mod is noop_mask and not params.is_causal:
        return  # no element mask on either side
    if params.cu_seqlens_q is not None:
        raise ValueError(
            "block_mask: a BlockMask's mask_mod (or is_causal) cannot be matched to a packed batch's per-sequence "
            "element mask; pass its lists as a (kv_num_blocks, kv_indices[, full_kv_num_blocks, full_kv_indices]) "
            "tuple with is_causal"
        )
    num, idx = params.lists.kv_num_blocks, params.lists.kv_indices
    key = (params.is_causal, num_q, num_kv, block_mask.kv_num_blocks._version, block_mask.kv_indices._version)
    if _MASK_MODS_CHECKED.get(block_mask) == key:
        return
    b, h, r, slot = _listed(num, idx).nonzero(as_tuple=True)  # every partial block: (batch, head, q block, slot)
    c = idx[b, h, r, slot]
    dev = idx.device
    if mod is noop_mask:
        # No element mask given, the causal one applied: they agree iff the causal mask keeps every element of every
        # partial block, i.e. its largest key - query offset (last key, first query) is at most N_kv - N_q.
        last_key = torch.clamp((c + 1) * params.kv_block, max=num_kv) - 1
        if bool((last_key - r * params.q_block > num_kv - num_q).any()):
            raise ValueError(_mask_mod_message(params.is_causal))
        _MASK_MODS_CHECKED[block_mask] = key
        return
    q_idx = r[:, None] * params.q_block + torch.arange(params.q_block, device=dev)  # [P, q_block]
    kv_idx = c[:, None] * params.kv_block + torch.arange(params.kv_block, device=dev)  # [P, kv_block]
    # mask_mod on scalars, vmapped over (key, query, block) as FlexAttention evaluates it.
    theirs = torch.vmap(mod, in_dims=(None, None, None, 0))
    theirs = torch.vmap(theirs, in_dims=(None, None, 0, None))
    theirs = torch.vmap(theirs, in_dims=(0, 0, 0, 0))
    step = max(1, _MASK_MOD_CHUNK // (params.q_block * params.kv_block))
    for lo in range(0, b.numel(), step):
        qi, ki = q_idx[lo : lo + step, :, None], kv_idx[lo : lo + step, None, :]
        inside = (qi < num_q) & (ki < num_kv)
        ours = qi + (num_kv - num_q) >= ki if params.is_causal else torch.ones_like(inside)
        given = theirs(b[lo : lo + step], h[lo : lo + step], q_idx[lo : lo + step], kv_idx[lo : lo + step])
        if ((given.bool() != ours) & inside).any():
            raise ValueError(_mask_mod_message(params.is_causal))
    _MASK_MODS_CHECKED[block_mask] = key


def _mask_mod_message(is_causal: bool) -> str:
    return (
        f"block_mask's mask_mod disagrees with is_causal={is_causal} inside its partial blocks: the kernels apply "
        "there no element mask, or the causal one (query i sees key j <= i + N_kv - N_q) with is_causal=True. Pass "
        "is_causal matching the mask_mod, or a mask whose partial blocks need no other element mask"
    )


def element_mask(params: BlockSparseParams, num_q: int, num_kv: int) -> torch.Tensor:
    """Bool ``[B|1, H|1, num_q, num_kv]``: True where query i attends key j (one sequence of the batch's shape)."""
    kept, full = dense_block_mask(params.lists, params.num_kv_blocks)
    dev = kept.device
    rows = torch.arange(num_q, device=dev) // params.q_block
    cols = torch.arange(num_kv, device=dev) // params.kv_block
    kept = kept[:, :, rows][:, :, :, cols]
    if not params.is_causal:
        return kept
    full = full[:, :, rows][:, :, :, cols]
    causal = torch.arange(num_q, device=dev)[:, None] + (num_kv - num_q) >= torch.arange(num_kv, device=dev)[None, :]
    return kept & (full | causal)


def block_sparse_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: BlockSparseParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention with the block-sparse element mask; any dtype incl. float64, autograd by PyTorch.

    q ``[B, N_q, H, D]`` (packed: ``[total_q, H, D]``), k/v ``[B, N_kv, H_kv, D / D_v]``.
    Returns (out ``[..., H, D_v]``, lse ``[..., H]``).
    """
    if params.cu_seqlens_q is None:
        mask = element_mask(params, q.shape[1], k.shape[1]).to(q.device)
        return masked_attention(q, k, v, mask, params.scale)
    outs, lses = [], []
    cu_q, cu_kv = params.cu_seqlens_q.tolist(), params.cu_seqlens_kv.tolist()
    for s in range(len(cu_q) - 1):
        qs, ks, vs = (
            t[a:b][None]
            for t, a, b in ((q, cu_q[s], cu_q[s + 1]), (k, cu_kv[s], cu_kv[s + 1]), (v, cu_kv[s], cu_kv[s + 1]))
        )
        mask = element_mask(params, qs.shape[1], ks.shape[1])
        mask = mask[s if mask.shape[0] > 1 else 0][None].to(q.device)
        o, lse = masked_attention(qs, ks, vs, mask, params.scale)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses)


# ---- torch.library: fake implementations and autograd of the compiled ops ----

if ops.EXTENSION_ERROR is None:
    # The 4 block-list tensors and 2 cu_seqlens travel with q, k, v to the backward op.
    ops.register_qkv_op("block_sparse", 6)


# ---- backends ----


def _cpu_run(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p: BlockSparseParams = problem.params
    return torch.ops.natten_like.block_sparse_forward(
        q, k, v, *p.lists.as_op_args(), p.cu_seqlens_q, p.cu_seqlens_kv, p.q_block, p.kv_block, p.is_causal, p.scale
    )


def _reference_run(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return block_sparse_reference(q, k, v, problem.params)


def _cuda_run(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cuda.check_device(problem, q.device)
    return _cpu_run(problem, q, k, v)  # the same op; its CUDA implementation runs the sm80 kernel


register_backend("block_sparse", "cuda", cuda.block_sparse_not_supported_reasons, _cuda_run)
register_backend("block_sparse", "cpu", cpu.not_supported_reasons, _cpu_run)
register_backend("block_sparse", "reference", reference.not_supported_reasons, _reference_run)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: Any,
    *,
    q_block: int | None = None,
    kv_block: int | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_kv: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention (see the module docstring for the exact semantics and the ``block_mask`` forms).

    Args:
        q: ``[B, N_q, H, D]``, or packed ``[total_q, H, D]`` with ``cu_seqlens_q``.
        k: ``[B, N_kv, H_kv, D]`` (packed ``[total_kv, H_kv, D]``), ``H % H_kv == 0`` (GQA).
        v: ``[B, N_kv, H_kv, D_v]`` (packed ``[total_kv, H_kv, D_v]``).
        block_mask: bool ``[B|1, H|1, QB, KB]``, compressed lists, or a FlexAttention ``BlockMask``.
        q_block, kv_block: block sizes in tokens; ``None`` = 128, or the ``BlockMask``'s.
        is_causal: element mask ``i + (N_kv - N_q) >= j`` on partial-list blocks (per sequence when packed).
        scale: softmax scale; ``None`` = ``D ** -0.5``.
        return_lse: also return the logsumexp ``[B, N_q, H]`` (packed ``[total_q, H]``); float32, float64 for float64.
        cu_seqlens_q, cu_seqlens_kv: ``[B + 1]`` cumulative sequence lengths of a packed batch (both or neither).
        backend: ``"cuda"``, ``"cpu"``, ``"flex"`` or ``"reference"`` to force one; ``None`` picks the first that can
            run the call.

    Returns:
        out ``[B, N_q, H, D_v]`` (packed ``[total_q, H, D_v]``), and lse when ``return_lse``.
    """
    params = validate_block_sparse(
        q, k, v, block_mask, q_block, kv_block, is_causal, scale, cu_seqlens_q, cu_seqlens_kv
    )
    check_bool(return_lse, "return_lse")
    out, lse = dispatch("block_sparse", params, check_backend(backend), q, k, v)
    return (out, lse) if return_lse else out
