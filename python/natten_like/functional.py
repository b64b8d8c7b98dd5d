"""Public attention functions: GNA (``gna``, ``na1d``/``na2d``/``na3d``), dense ``attention`` and ``merge_attentions``.

Layout is heads-last: ``q [B, *tokens, H, D]``, ``k [B, *tokens, H_kv, D]``, ``v [B, *tokens, H_kv, D_v]``, logsumexp
``[B, *tokens, H]`` (natural log of the sum of ``exp(scale * q.k)``; float32, float64 for float64 inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import (
    check_backend,
    check_bool,
    check_tensor,
    validate_attention,
    validate_gna,
    validate_merge,
)
from .backends import dispatch

Tensor = torch.Tensor
IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]


def gna(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    *,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Generalized Neighborhood Attention over a 1-, 2- or 3-D token grid (NATTEN semantics).

    Each query attends to a ``window`` of keys around it per token dim (shifted inward at borders), queries of one
    ``stride`` group share their leader's window, ``dilation`` splits a dim into interleaved groups, ``is_causal`` keeps
    only keys at or before the query. window/stride/dilation/is_causal: one value for every token dim or one per dim.
    Valid: ``window >= 2``, ``window * dilation <= size``, ``1 <= stride <= window``, ``dilation >= 1``.

    Args:
        q: ``[B, *tokens, H, D]``, 1-3 token dims.
        k: ``[B, *tokens, H_kv, D]`` with ``H % H_kv == 0`` (GQA/MQA without copying KV).
        v: ``[B, *tokens, H_kv, D_v]``.
        scale: softmax scale; ``None`` means ``D ** -0.5`` (``0.0`` means zero).
        additional_keys: ``[B, N_add, H_kv, D]``, keys every query also attends to, in the same softmax.
        additional_values: ``[B, N_add, H_kv, D_v]``, given together with ``additional_keys``.
        return_lse: also return the logsumexp ``[B, *tokens, H]``.
        backend: ``None`` (automatic), ``"cuda"``, ``"cpu"``, ``"flex"`` or ``"reference"``.

    Returns:
        out ``[B, *tokens, H, D_v]`` in q's dtype, and lse when ``return_lse``.
    """
    params = validate_gna(q, k, v, window, stride, dilation, is_causal, scale, additional_keys, additional_values)
    return_lse = check_bool(return_lse, "return_lse")
    out, lse = dispatch("gna", params, check_backend(backend), q, k, v, additional_keys, additional_values)
    return (out, lse) if return_lse else out


def _gna_of_rank(rank: int, name: str, q: object, *args: object, **kwargs: object) -> Tensor | tuple[Tensor, Tensor]:
    if check_tensor(q, "q").dim() != rank + 3:
        raise ValueError(f"{name} needs q with {rank} token dim(s) ({rank + 3}-D), got shape {tuple(q.shape)}")
    return gna(q, *args, **kwargs)


def na1d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    *,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`gna` on a 1-D token sequence: q ``[B, L, H, D]``, k ``[B, L, H_kv, D]``, v ``[B, L, H_kv, D_v]``."""
    return _gna_of_rank(
        1, "na1d", q, k, v, window, stride, dilation, is_causal, scale,
        additional_keys=additional_keys, additional_values=additional_values, return_lse=return_lse, backend=backend,
    )  # fmt: skip


def na2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    *,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`gna` on a 2-D token grid: q ``[B, X, Y, H, D]``, k ``[B, X, Y, H_kv, D]``, v ``[B, X, Y, H_kv, D_v]``."""
    return _gna_of_rank(
        2, "na2d", q, k, v, window, stride, dilation, is_causal, scale,
        additional_keys=additional_keys, additional_values=additional_values, return_lse=return_lse, backend=backend,
    )  # fmt: skip


def na3d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    *,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`gna` on a 3-D token grid: q ``[B, X, Y, Z, H, D]``, k/v ``[B, X, Y, Z, H_kv, D / D_v]``."""
    return _gna_of_rank(
        3, "na3d", q, k, v, window, stride, dilation, is_causal, scale,
        additional_keys=additional_keys, additional_values=additional_values, return_lse=return_lse, backend=backend,
    )  # fmt: skip


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Dense softmax attention.

    Causal masking is aligned bottom-right, as in FlashAttention: query ``i`` sees keys ``j <= i + N_kv - N_q`` (with
    ``N_q > N_kv`` the first queries see nothing: out 0, lse -inf).

    Args:
        q: ``[B, N_q, H, D]``.
        k: ``[B, N_kv, H_kv, D]`` with ``H % H_kv == 0``.
        v: ``[B, N_kv, H_kv, D_v]``.
        scale: softmax scale; ``None`` means ``D ** -0.5``.

    Returns:
        out ``[B, N_q, H, D_v]``, and lse ``[B, N_q, H]`` when ``return_lse``.
    """
    params = validate_attention(q, k, v, is_causal, scale)
    return_lse = check_bool(return_lse, "return_lse")
    out, lse = dispatch("attention", params, check_backend(backend), q, k, v)
    return (out, lse) if return_lse else out


def merge_attentions(outputs: Sequence[Tensor], lses: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Exact merge of attentions of the same queries over disjoint key sets, as if one softmax had seen all keys.

    ``out = sum_i exp(lse_i - lse) * out_i`` with ``lse = logsumexp_i(lse_i)``, computed in float32 (float64 for
    float64 inputs) after subtracting the row maximum. Parts with lse = -inf (no keys) contribute nothing; rows where
    every part is -inf give out 0 and lse -inf; a NaN lse makes its row's out and lse NaN. Differentiable in every
    output and lse.

    Args:
        outputs: n tensors ``[*, H, D_v]`` of one shape and dtype (e.g. ``[B, *tokens, H, D_v]``).
        lses: n tensors ``[*, H]``.

    Returns:
        (out ``[*, H, D_v]`` in the outputs' dtype, lse ``[*, H]`` float32, float64 when an input is float64).
    """
    outs, ls = validate_merge(outputs, lses)
    wide = torch.float64 if torch.float64 in (outs[0].dtype, *(x.dtype for x in ls)) else torch.float32
    lse_all = torch.stack([x.to(wide) for x in ls])  # [n, *, H]
    row_max = lse_all.amax(dim=0)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    weights = torch.exp(lse_all - row_max)  # [n, *, H], 0 for parts without keys
    total = weights.sum(dim=0)  # NaN where a part's lse is NaN: the merged row is NaN, never a finite answer
    no_keys = total == 0
    # total is replaced by 1 where no part has keys, so neither log nor the division sees a 0 (no inf/NaN gradients).
    safe_total = torch.where(no_keys, 1.0, total)
    lse = torch.where(no_keys, float("-inf"), row_max + torch.log(safe_total))
    out = sum(w.unsqueeze(-1) * o.to(wide) for w, o in zip(weights / safe_total, outs, strict=True))
    return out.to(outs[0].dtype), lse
