"""Argument checks and normalisation shared by every public function of natten_like.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, rule broken) with a message that
names the argument and the rule, so that no invalid call reaches a kernel. The ``*Params`` dataclasses hold the
normalised arguments a backend needs (every per-dimension argument expanded to a tuple with one entry per token dim).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import torch


def check_tensor(value: object, name: str) -> torch.Tensor:
    """``value`` itself, after checking that it is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


# Every int argument (a size, count, block, window, stride or offset) fits int32: the kernels' int64 arithmetic on them
# (sums, products of two, ceil divisions) then never overflows. 2**63 - 1 as a block size wrapped to garbage.
INT_LIMIT = 2**31 - 1


def check_int(value: object, name: str) -> int:
    """``value`` as an ``int`` of magnitude at most :data:`INT_LIMIT`; bools and floats are refused (``window=3.0``
    and ``stride=True`` are mistakes)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if abs(int(value)) > INT_LIMIT:
        raise ValueError(f"{name} must be at most 2**31 - 1 in magnitude, got {int(value)}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """``value`` after checking that it is a bool (``is_causal=1`` or ``2`` is refused, not read as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def per_dim_ints(value: object, rank: int, name: str) -> tuple[int, ...]:
    """An int, or a sequence of ``rank`` ints, as a ``rank``-tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != rank:
            raise ValueError(f"{name} must be an int or have one entry per token dim ({rank}), got {tuple(value)!r}")
        return tuple(check_int(v, f"{name}[{i}]") for i, v in enumerate(value))
    return (check_int(value, name),) * rank


def per_dim_bools(value: object, rank: int, name: str) -> tuple[bool, ...]:
    """A bool, or a sequence of ``rank`` bools, as a ``rank``-tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != rank:
            raise ValueError(f"{name} must be a bool or have one entry per token dim ({rank}), got {tuple(value)!r}")
        return tuple(check_bool(v, f"{name}[{i}]") for i, v in enumerate(value))
    return (check_bool(value, name),) * rank


def check_scale(scale: object, head_dim: int) -> float:
    """The softmax scale: ``None`` means ``head_dim ** -0.5``; ``0.0`` means zero (not "default")."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale) or abs(scale) > torch.finfo(torch.float32).max:
        raise ValueError(f"scale must be finite in float32 (the kernels' precision), got {scale!r}")
    return float(scale)


def check_backend(backend: object) -> str | None:
    """``backend`` after checking that it is a backend name or ``None`` (whether the name exists is dispatch's job)."""
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__} {backend!r}")
    return backend


def check_same_floating(tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor floating point, all of one dtype and on one device (the first one names the expectation)."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} must have the dtype of {first_name} ({first.dtype}), got {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} must be on the device of {first_name} ({first.device}), got {t.device}")


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Head counts and head dims of heads-last q/k/v: ``H % H_kv == 0``, k's D equal to q's, every extent positive."""
    heads, kv_heads = q.shape[-2], k.shape[-2]
    if v.shape[-2] != kv_heads:
        raise ValueError(f"v must have the head count of k ({kv_heads}), got {v.shape[-2]} (shape {tuple(v.shape)})")
    if heads < 1 or kv_heads < 1:
        raise ValueError(f"q and k need at least one head, got H={heads}, H_kv={kv_heads}")
    if heads % kv_heads != 0:
        raise ValueError(f"q's head count must be a multiple of k's (H % H_kv == 0), got H={heads}, H_kv={kv_heads}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have q's head dim ({q.shape[-1]}), got {k.shape[-1]}")
    if q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"head dims must be >= 1, got D={q.shape[-1]}, D_v={v.shape[-1]}")


def check_sequence_qkv(q: object, k: object, v: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v after checking that they are 4-D ``[B, N, H, D]`` with one batch size and v with k's token count."""
    q, k, v = check_tensor(q, "q"), check_tensor(k, "k"), check_tensor(v, "v")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, N, H, D], got shape {tuple(t.shape)}")
    if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
        raise ValueError(f"q, k and v must share the batch size, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"v must have k's token count ({k.shape[1]}), got {v.shape[1]}")
    return q, k, v


@dataclass(frozen=True)
class GnaParams:
    """Normalised arguments of one GNA call; every tuple has one entry per token dim."""

    shape: tuple[int, ...]  # token shape
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    scale: float
    num_additional: int  # additional KV tokens (0 when none are given)
    head_dim: int  # D of q and k
    head_dim_v: int  # D_v of v

    @property
    def rank(self) -> int:
        return len(self.shape)


def validate_gna(
    q: object,
    k: object,
    v: object,
    window: object,
    stride: object,
    dilation: object,
    is_causal: object,
    scale: object,
    additional_keys: object,
    additional_values: object,
) -> GnaParams:
    """Check every argument of :func:`natten_like.gna` and return them normalised.

    q ``[B, *tokens, H, D]``, k ``[B, *tokens, H_kv, D]``, v ``[B, *tokens, H_kv, D_v]`` with 1-3 token dims;
    additional_keys/values ``[B, N_add, H_kv, D]`` / ``[B, N_add, H_kv, D_v]``, both or neither.
    """
    q, k, v = check_tensor(q, "q"), check_tensor(k, "k"), check_tensor(v, "v")
    if not 4 <= q.dim() <= 6:
        raise ValueError(f"q must be [B, *tokens, H, D] with 1-3 token dims (4-6 dims), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dim() != q.dim():
            raise ValueError(f"{name} must have q's rank ({q.dim()}), got shape {tuple(t.shape)}")
        if t.shape[:-2] != q.shape[:-2]:
            raise ValueError(
                f"{name} must have q's batch and token dims {tuple(q.shape[:-2])}, got shape {tuple(t.shape)}"
            )
    _check_heads(q, k, v)
    tensors = {"q": q, "k": k, "v": v}

    if (additional_keys is None) != (additional_values is None):
        raise ValueError("additional_keys and additional_values must be given together (both or neither)")
    num_additional = 0
    if additional_keys is not None:
        add_k = check_tensor(additional_keys, "additional_keys")
        add_v = check_tensor(additional_values, "additional_values")
        expect_k = f"[B={q.shape[0]}, N_add, H_kv={k.shape[-2]}, D={k.shape[-1]}]"
        if add_k.dim() != 4 or (add_k.shape[0], add_k.shape[2], add_k.shape[3]) != (q.shape[0], *k.shape[-2:]):
            raise ValueError(f"additional_keys must be {expect_k}, got shape {tuple(add_k.shape)}")
        expect_v = f"[B={q.shape[0]}, N_add={add_k.shape[1]}, H_kv={v.shape[-2]}, D_v={v.shape[-1]}]"
        if add_v.dim() != 4 or add_v.shape != (add_k.shape[0], add_k.shape[1], *v.shape[-2:]):
            raise ValueError(f"additional_values must be {expect_v}, got shape {tuple(add_v.shape)}")
        tensors.update(additional_keys=add_k, additional_values=add_v)
        num_additional = add_k.shape[1]
    check_same_floating(tensors)

    rank = q.dim() - 3
    shape = tuple(q.shape[1 : 1 + rank])
    window_t = per_dim_ints(window, rank, "window")
    stride_t = per_dim_ints(stride, rank, "stride")
    dilation_t = per_dim_ints(dilation, rank, "dilation")
    causal_t = per_dim_bools(is_causal, rank, "is_causal")
    for i, (n, w, s, d) in enumerate(zip(shape, window_t, stride_t, dilation_t, strict=True)):
        if w < 2:
            raise ValueError(f"window must be >= 2 in every token dim, got window={window_t}")
        if d < 1:
            raise ValueError(f"dilation must be >= 1 in every token dim, got dilation={dilation_t}")
        if w * d > n:
            raise ValueError(
                f"window * dilation must be <= the token dim size, got window={w} * dilation={d} > {n} "
                f"in token dim {i} (token shape {shape})"
            )
        if not 1 <= s <= w:
            raise ValueError(f"stride must satisfy 1 <= stride <= window, got stride={s}, window={w} in token dim {i}")
    return GnaParams(
        shape=shape,
        window=window_t,
        stride=stride_t,
        dilation=dilation_t,
        is_causal=causal_t,
        scale=check_scale(scale, q.shape[-1]),
        num_additional=num_additional,
        head_dim=q.shape[-1],
        head_dim_v=v.shape[-1],
    )


@dataclass(frozen=True)
class AttentionParams:
    """Normalised arguments of one dense attention call."""

    num_q: int
    num_kv: int
    is_causal: bool
    scale: float
    head_dim: int  # D of q and k
    head_dim_v: int  # D_v of v

    def as_gna(self) -> GnaParams:
        """Dense self-attention (N_q == N_kv) as 1-D GNA with window N: causal window N is exactly causal attention."""
        n = self.num_q
        return GnaParams(
            shape=(n,),
            window=(n,),
            stride=(1,),
            dilation=(1,),
            is_causal=(self.is_causal,),
            scale=self.scale,
            num_additional=0,
            head_dim=self.head_dim,
            head_dim_v=self.head_dim_v,
        )


def validate_attention(q: object, k: object, v: object, is_causal: object, scale: object) -> AttentionParams:
    """Check the arguments of :func:`natten_like.attention`: q ``[B, N_q, H, D]``, k/v ``[B, N_kv, H_kv, D / D_v]``."""
    q, k, v = check_sequence_qkv(q, k, v)
    _check_heads(q, k, v)
    check_same_floating({"q": q, "k": k, "v": v})
    return AttentionParams(
        num_q=q.shape[1],
        num_kv=k.shape[1],
        is_causal=check_bool(is_causal, "is_causal"),
        scale=check_scale(scale, q.shape[-1]),
        head_dim=q.shape[-1],
        head_dim_v=v.shape[-1],
    )


def validate_merge(outputs: object, lses: object) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Check the arguments of :func:`natten_like.merge_attentions`: n outputs ``[*, H, D_v]`` and n lses ``[*, H]``."""
    for name, seq in (("outputs", outputs), ("lses", lses)):
        if not isinstance(seq, Sequence) or isinstance(seq, str):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {type(seq).__name__}")
    if len(outputs) != len(lses):
        raise ValueError(f"outputs and lses must have the same length, got {len(outputs)} and {len(lses)}")
    if len(outputs) == 0:
        raise ValueError("outputs must hold at least one partial attention")
    outs = [check_tensor(o, f"outputs[{i}]") for i, o in enumerate(outputs)]
    ls = [check_tensor(x, f"lses[{i}]") for i, x in enumerate(lses)]
    check_same_floating({f"outputs[{i}]": o for i, o in enumerate(outs)})
    for i, (o, x) in enumerate(zip(outs, ls, strict=True)):
        if o.dim() < 1:
            raise ValueError(f"outputs[{i}] must be [*, H, D_v] (at least 1 dim), got a 0-dim tensor")
        if o.shape != outs[0].shape:
            raise ValueError(
                f"outputs[{i}] must have the shape of outputs[0] {tuple(outs[0].shape)}, got {tuple(o.shape)}"
            )
        if x.shape != o.shape[:-1]:
            raise ValueError(
                f"lses[{i}] must be outputs[{i}]'s shape without the last dim {tuple(o.shape[:-1])}, "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"lses[{i}] must have a floating dtype, got {x.dtype}")
        if x.device != o.device:
            raise ValueError(f"lses[{i}] must be on the device of outputs[{i}] ({o.device}), got {x.device}")
    return outs, ls
