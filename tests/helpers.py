"""Shared test helpers: GNA test cases, random inputs, one forward + backward run, error measures."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import natten_like
import pytest
import torch
from natten_like.backends import cuda as cuda_backend

EXTENDED = os.environ.get("NATTEN_LIKE_EXTENDED_TESTS") == "1"


@dataclass(frozen=True)
class GnaCase:
    """One GNA problem: token shape, per-dim window/stride/dilation/causal, heads, head dims, additional KV tokens."""

    shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    causal: tuple[bool, ...] = ()
    batch: int = 1
    heads: int = 2
    kv_heads: int = 2
    dim: int = 8
    dim_v: int = 8
    num_additional: int = 0
    scale: float | None = None

    def __post_init__(self) -> None:
        rank = len(self.shape)
        for name, default in (("stride", 1), ("dilation", 1), ("causal", False)):
            if not getattr(self, name):
                object.__setattr__(self, name, (default,) * rank)

    def kwargs(self) -> dict:
        return dict(window=self.window, stride=self.stride, dilation=self.dilation, is_causal=self.causal,
                    scale=self.scale)  # fmt: skip

    def with_(self, **changes: object) -> GnaCase:
        return replace(self, **changes)


def make_inputs(case: GnaCase, dtype: torch.dtype, seed: int, magnitude: float = 1.0) -> dict[str, torch.Tensor]:
    """Random (never zero) q, k, v, additional KV and output gradients for ``case``, rounded to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    b, tok = case.batch, case.shape

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * magnitude).to(dtype)

    inputs = {
        "q": rnd(b, *tok, case.heads, case.dim),
        "k": rnd(b, *tok, case.kv_heads, case.dim),
        "v": rnd(b, *tok, case.kv_heads, case.dim_v),
        "grad_out": rnd(b, *tok, case.heads, case.dim_v) / magnitude,
        "grad_lse": rnd(b, *tok, case.heads).float() / magnitude,
    }
    if case.num_additional:
        inputs["additional_keys"] = rnd(b, case.num_additional, case.kv_heads, case.dim)
        inputs["additional_values"] = rnd(b, case.num_additional, case.kv_heads, case.dim_v)
    return inputs


GRAD_INPUTS = ("q", "k", "v", "additional_keys", "additional_values")


def run_gna(
    case: GnaCase, inputs: dict[str, torch.Tensor], backend: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Forward (out, lse) and gradients of ``sum(out * grad_out) + sum(lse * grad_lse)``, inputs cast to ``dtype``."""
    leaves = {n: inputs[n].to(dtype).requires_grad_() for n in GRAD_INPUTS if n in inputs}
    out, lse = natten_like.gna(
        leaves["q"], leaves["k"], leaves["v"], **case.kwargs(),
        additional_keys=leaves.get("additional_keys"), additional_values=leaves.get("additional_values"),
        return_lse=True, backend=backend,
    )  # fmt: skip
    loss = (out * inputs["grad_out"].to(out.dtype)).sum() + (lse * inputs["grad_lse"].to(lse.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    result = {"out": out.detach(), "lse": lse.detach()}
    result.update({f"d_{n}": gr for n, gr in zip(leaves, grads, strict=True)})
    return result


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    diff = (actual.double() - expected.double()).abs().max().item()
    return diff / max(expected.double().abs().max().item(), 1e-30)


def use_sm90(monkeypatch: pytest.MonkeyPatch, sm90: str) -> None:
    """For a GPU test parametrized over the Hopper kernels (``sm90="on"``) and their sm80 fallback (``"off"``): sets
    NATTEN_LIKE_SM90, which the bindings and the cuda backend read per call. Off Hopper the sm80 kernels run either way,
    so the "off" run is skipped there."""
    if sm90 == "off" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("not a Hopper GPU: the sm80 kernels run with or without NATTEN_LIKE_SM90=off")
    monkeypatch.setenv("NATTEN_LIKE_SM90", sm90)


def cuda_skip_reason(kind: str | None = None) -> str | None:
    """Why the CUDA kernels of ``kind`` (``cuda_backend.built_kernels``'s families; None: any GNA forward) cannot run
    here, or None: a GPU of capability >= 8.0 and an extension built with them."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.cuda.get_device_capability() < cuda_backend.MIN_CAPABILITY:
        return "the GPU's compute capability is below 8.0"
    if not cuda_backend.built_kernels(kind):
        return f"extension built without the {kind or 'CUDA'} kernels (NATTEN_LIKE_CUDA_ARCH unset or not generated)"
    return None
