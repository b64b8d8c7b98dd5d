"""torch.compile(fullgraph=True) through the public API (forward and backward), and torch.library.opcheck of the ops."""

from __future__ import annotations

import logging

import natten_like
import pytest
import torch
from helpers import GnaCase, make_inputs

# The op arguments after the tensors: window, stride, dilation, is_causal, scale, q_tile, kv_tile.
CONFIG_2D = ([3, 3], [1, 2], [1, 2], [False, True], 0.35, [4, 2], [2, 4])


def _opcheck_inputs(num_additional: int) -> dict[str, torch.Tensor]:
    case = GnaCase((5, 6), (3, 3), heads=4, kv_heads=2, dim=8, dim_v=4, num_additional=num_additional)
    return make_inputs(case, torch.float32, seed=0)


# Inductor for the fused cpu path (what users run); the reference (float64) only needs to trace, so aot_eager suffices.
# dynamic=True: symbolic sizes reach the backends' refusal reasons (strings Dynamo cannot join).
@pytest.mark.parametrize(
    ("dtype", "compile_backend", "dynamic"),
    [(torch.float32, "inductor", False), (torch.float64, "aot_eager", False), (torch.float32, "aot_eager", True)],
)
def test_compile_fullgraph_forward_and_backward(
    caplog, dtype: torch.dtype, compile_backend: str, dynamic: bool
) -> None:
    case = GnaCase((6, 7), (3, 5), stride=(1, 2), causal=(False, True), heads=4, kv_heads=2, num_additional=2)
    inputs = make_inputs(case, dtype, seed=0)

    def loss(q, k, v, add_k, add_v):
        out, lse = natten_like.gna(
            q, k, v, case.window, case.stride, is_causal=case.causal,
            additional_keys=add_k, additional_values=add_v, return_lse=True,
        )  # fmt: skip
        return (out * inputs["grad_out"]).sum() + (lse * inputs["grad_lse"].to(lse.dtype)).sum()

    names = ("q", "k", "v", "additional_keys", "additional_values")
    leaves = [inputs[n].clone().requires_grad_() for n in names]
    expected = loss(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves)

    torch._dynamo.reset()
    # Debug logging enabled on purpose: dispatch must not log while tracing, or fullgraph would fail on a graph break.
    with caplog.at_level(logging.DEBUG, logger="natten_like"):
        compiled = torch.compile(loss, fullgraph=True, backend=compile_backend, dynamic=dynamic)
        actual = compiled(*leaves)
    actual_grads = torch.autograd.grad(actual, leaves)
    torch.testing.assert_close(actual, expected)
    for name, a, e in zip(names, actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, msg=name)


@pytest.mark.parametrize("num_additional", [0, 3])
def test_opcheck_gna_forward(num_additional: int) -> None:
    inputs = _opcheck_inputs(num_additional)
    tensors = [inputs[n].requires_grad_() for n in ("q", "k", "v")]
    add = [inputs.get("additional_keys"), inputs.get("additional_values")]
    add = [t.requires_grad_() if t is not None else None for t in add]
    torch.library.opcheck(torch.ops.natten_like.gna_forward.default, (*tensors, *add, *CONFIG_2D))


@pytest.mark.parametrize("with_grad_lse", [False, True])
def test_opcheck_gna_backward(with_grad_lse: bool) -> None:
    inputs = _opcheck_inputs(num_additional=3)
    q, k, v, add_k, add_v = (inputs[n] for n in ("q", "k", "v", "additional_keys", "additional_values"))
    out, lse = torch.ops.natten_like.gna_forward(q, k, v, add_k, add_v, *CONFIG_2D)
    grad_lse = inputs["grad_lse"] if with_grad_lse else None
    args = (inputs["grad_out"], q, k, v, add_k, add_v, out, lse, grad_lse, *CONFIG_2D)
    torch.library.opcheck(torch.ops.natten_like.gna_backward.default, args)
    no_add = (
        inputs["grad_out"],
        q,
        k,
        v,
        None,
        None,
        *torch.ops.natten_like.gna_forward(q, k, v, None, None, *CONFIG_2D),
    )
    torch.library.opcheck(torch.ops.natten_like.gna_backward.default, (*no_add, grad_lse, *CONFIG_2D))
