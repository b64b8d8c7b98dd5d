"""CUDA backend: the sm80 fused forward kernels (``csrc/generated``; ``torch.ops.natten_like.gna_forward`` on CUDA).

The kernels exist when the extension was built with ``NATTEN_LIKE_CUDA_ARCH`` (e.g. ``8.0``; without it the backend
refuses with "no CUDA kernels are built yet"); they run on every GPU of compute capability 8.0 or newer. They have not
yet been verified on a GPU (issue 5), so the backend accepts a problem only when ``NATTEN_LIKE_EXPERIMENTAL_CUDA=1`` is
set; otherwise it refuses, saying so, and the flex / reference backends take CUDA tensors. What the kernels run: GNA
1-3 D and dense self-attention, forward only (no autograd), float16 / bfloat16, the built head dims with ``D_v == D``,
GQA, no additional KV. The compute capability of the tensors' own GPU is checked when the kernel is about to run
(the problem names only the device type); an opted-in call it rules out raises ``BackendNotSupportedError``.

Tile shapes come from the one table, ``simulator/tile_configs.py`` (``GNA_TILES["sm80"]``), clamped to the problem.
"""

from __future__ import annotations

import os

import torch

from .. import ops
from .._validation import AttentionParams, GnaParams
from . import BackendNotSupportedError, Problem, register_backend

EXPERIMENTAL_ENV = "NATTEN_LIKE_EXPERIMENTAL_CUDA"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)


def _built_kernels() -> frozenset[tuple[torch.dtype, int]]:
    if ops.EXTENSION_ERROR is not None or not hasattr(torch.ops.natten_like, "sm80_gna_forward_instances"):
        return frozenset()
    dtypes, head_dims, _, _ = torch.ops.natten_like.sm80_gna_forward_instances()
    return frozenset((getattr(torch, name), hd) for name, hd in zip(dtypes, head_dims, strict=True))


# Read once at import: the op returns lists, which torch.compile cannot trace, and dispatch runs inside traced code.
BUILT_KERNELS = _built_kernels()


def built_kernels() -> frozenset[tuple[torch.dtype, int]]:
    """(dtype, head dim) of every CUDA forward kernel in the extension; empty for a CPU-only build."""
    return BUILT_KERNELS


def _device_reasons(device: torch.device | None = None) -> list[str]:
    if not torch.cuda.is_available():
        return ["no CUDA device is available"]
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        return [f"the GPU has compute capability {major}.{minor}; the sm80 kernels need 8.0 or newer"]
    return []


def _common_reasons(problem: Problem) -> list[str]:
    reasons = []
    if ops.EXTENSION_ERROR is not None:
        reasons.append(ops.EXTENSION_ERROR)
    elif not built_kernels():
        reasons.append("no CUDA kernels are built yet")
    if problem.device_type != "cuda":
        reasons.append(f"tensors are not on a CUDA device (they are on {problem.device_type})")
    else:
        reasons += _device_reasons()
    if problem.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {problem.dtype} is not supported (float16 and bfloat16 only)")
    if problem.requires_grad:
        reasons.append("the CUDA kernels are forward-only (inputs require grad)")
    if os.environ.get(EXPERIMENTAL_ENV) != "1":
        reasons.append(f"the CUDA kernels are not yet verified on a GPU; set {EXPERIMENTAL_ENV}=1 to use them")
    return reasons


def _head_dim_reasons(problem: Problem) -> list[str]:
    params: GnaParams | AttentionParams = problem.params
    reasons = []
    built = sorted(hd for dt, hd in built_kernels() if dt == problem.dtype)
    if params.head_dim not in built:
        reasons.append(f"head dim {params.head_dim} has no kernel (built for {problem.dtype}: {built})")
    if params.head_dim_v != params.head_dim:
        reasons.append(f"D_v ({params.head_dim_v}) != D ({params.head_dim})")
    return reasons


def _check_device(problem: Problem, device: torch.device) -> None:
    # The problem names the device type, not the device: on a machine mixing GPU generations the capability of the
    # tensors' own GPU is only known here. Raised, never a silent switch, so a forced backend="cuda" runs here or fails.
    reasons = _device_reasons(device)
    if reasons:
        message = f"backend 'cuda' cannot run this {problem.family} problem: " + "; ".join(reasons)
        raise BackendNotSupportedError(message)


def gna_not_supported_reasons(problem: Problem) -> list[str]:
    reasons = _common_reasons(problem) + _head_dim_reasons(problem)
    params: GnaParams = problem.params
    if params.num_additional:
        reasons.append("additional KV is not supported by the CUDA kernels yet")
    return reasons


def run_gna(
    problem: Problem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes as in :func:`natten_like.gna`. Returns (out [B, *tokens, H, D], lse [B, *tokens, H] float32)."""
    _check_device(problem, q.device)
    return ops.gna_forward("sm80", q, k, v, None, None, problem.params)


def attention_not_supported_reasons(problem: Problem) -> list[str]:
    reasons = _common_reasons(problem) + _head_dim_reasons(problem)
    params: AttentionParams = problem.params
    if params.num_q != params.num_kv:
        reasons.append(f"N_q ({params.num_q}) != N_kv ({params.num_kv}): only self-attention shapes run here")
    return reasons


def run_attention(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense self-attention as 1-D GNA with window = N. q [B, N, H, D], k/v [B, N, H_kv, D] -> (out, lse)."""
    _check_device(problem, q.device)
    params: AttentionParams = problem.params
    return ops.gna_forward("sm80", q, k, v, None, None, params.as_gna())


register_backend("gna", "cuda", gna_not_supported_reasons, run_gna)
register_backend("attention", "cuda", attention_not_supported_reasons, run_attention)
