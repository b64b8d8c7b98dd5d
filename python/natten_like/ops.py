"""Python side of the compiled ``torch.ops.natten_like`` operators: fake (meta) implementations and autograd.

The schemas live in ``csrc/bindings/ops.cpp``. Fake implementations let ``torch.compile`` trace the ops without running
them; ``register_autograd`` makes ``gna_forward`` differentiable in q, k, v, the additional KV and through its logsumexp
output; :func:`register_qkv_op` does the same for the families whose backward returns (dq, dk, dv). When the
extension is missing, :data:`EXTENSION_ERROR` says why and the cpu backend refuses every problem.
"""

from __future__ import annotations

from typing import Any

import torch

from simulator.tile_configs import clamp_tile, gna_tiles

from ._validation import GnaParams

try:
    from . import _C  # noqa: F401  (importing it registers the operator schemas and kernels)
except ImportError as exc:
    EXTENSION_ERROR: str | None = f"the compiled extension natten_like._C failed to import ({exc})"
else:
    EXTENSION_ERROR = None


def _forward_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """out [..., H, D_v] in q's dtype, lse [..., H] float32, both contiguous like the kernel's."""
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _gna_backward_fake(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_k: torch.Tensor | None,
    additional_v: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_lse: torch.Tensor | None,
    *config: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients shaped like their (contiguous) inputs; [0] tensors for the additional KV when there is none."""
    grad_add_k = q.new_empty(additional_k.shape) if additional_k is not None else q.new_empty(0)
    grad_add_v = q.new_empty(additional_v.shape) if additional_v is not None else q.new_empty(0)
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape), grad_add_k, grad_add_v


def _gna_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v, additional_k, additional_v, *ctx.config = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, additional_k, additional_v, out, lse)


def _gna_backward(ctx: Any, grad_out: torch.Tensor, grad_lse: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    q, k, v, additional_k, additional_v, out, lse = ctx.saved_tensors
    config = list(ctx.config)
    if q.is_cuda:
        # The CUDA backward kernels are sm80's (they run on every GPU the forward kernels run on): their tiles, whatever
        # tiling the forward ran (the gradients do not depend on it).
        _, _, dilation, *_ = config
        shape = tuple(q.shape[1:-2])
        config[5:] = [*_clamped_tiles("sm80", shape, tuple(dilation), q.shape[-1]), "sm80"]
    dq, dk, dv, d_add_k, d_add_v = torch.ops.natten_like.gna_backward(
        grad_out, q, k, v, additional_k, additional_v, out, lse, grad_lse, *config
    )
    if additional_k is None:
        d_add_k = d_add_v = None
    # One gradient per input: q, k, v, additional_k, additional_v, then none for the configuration arguments.
    return (dq, dk, dv, d_add_k, d_add_v) + (None,) * len(ctx.config)


def _refuse_double_backward(op: str) -> None:
    """An autograd formula for the backward op ``op`` that raises: without one, differentiating a gradient (double
    backward) would treat the gradients as constants and silently give zeros."""

    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(f"natten_like: double backward (differentiating {op}) is not supported")

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    torch.library.register_autograd(op, backward, setup_context=setup_context)


if EXTENSION_ERROR is None:
    torch.library.register_fake("natten_like::gna_forward", _forward_fake)
    torch.library.register_fake("natten_like::gna_backward", _gna_backward_fake)
    torch.library.register_autograd("natten_like::gna_forward", _gna_backward, setup_context=_gna_setup_context)
    _refuse_double_backward("natten_like::gna_backward")


def register_qkv_op(family: str, num_tensors: int) -> None:
    """Fake implementations and autograd of ``natten_like::{family}_forward`` / ``{family}_backward``.

    The forward takes (q, k, v, ``num_tensors`` further tensors, configuration...) and returns (out, lse); the backward
    takes (grad_out, q, k, v, out, lse, grad_lse, the same tensors, the same configuration) and returns (dq, dk, dv).
    """

    def backward_fake(
        grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        q, k, v, *rest = inputs
        ctx.config = rest[num_tensors:]
        ctx.save_for_backward(q, k, v, *output, *rest[:num_tensors])

    def backward(ctx: Any, grad_out: torch.Tensor, grad_lse: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        backward_op = getattr(torch.ops.natten_like, f"{family}_backward")
        dq, dk, dv = backward_op(grad_out, q, k, v, out, lse, grad_lse, *tensors, *ctx.config)
        # Gradients for q, k, v; none for the further tensors and the configuration arguments.
        return (dq, dk, dv) + (None,) * (num_tensors + len(ctx.config))

    torch.library.register_fake(f"natten_like::{family}_forward", _forward_fake)
    torch.library.register_fake(f"natten_like::{family}_backward", backward_fake)
    torch.library.register_autograd(f"natten_like::{family}_forward", backward, setup_context=setup_context)
    _refuse_double_backward(f"natten_like::{family}_backward")


def _clamped_tiles(target: str, shape: tuple[int, ...], dilation: tuple[int, ...], head_dim: int) -> list[list[int]]:
    """[q_tile, kv_tile] of ``target``'s GNA kernels for a token grid and head dim, each extent clamped to its dilation
    group."""
    return [list(clamp_tile(tile, shape, dilation)) for tile in gna_tiles(target, len(shape), head_dim)]


def gna_forward(
    target: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
    params: GnaParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``target``'s GNA kernel ("cpu", "sm80", "sm90") with its tile shapes (``simulator/tile_configs.py``).

    Shapes as in :func:`natten_like.gna`; returns (out ``[B, *tokens, H, D_v]``, lse ``[B, *tokens, H]`` float32).
    """
    q_tile, kv_tile = _clamped_tiles(target, params.shape, params.dilation, params.head_dim)
    return torch.ops.natten_like.gna_forward(
        q,
        k,
        v,
        additional_keys,
        additional_values,
        list(params.window),
        list(params.stride),
        list(params.dilation),
        list(params.is_causal),
        params.scale,
        q_tile,
        kv_tile,
        target,
    )
