"""CPU backend: the fused C++ kernel (``torch.ops.natten_like.gna_forward`` / ``gna_backward``).

float32, float16 and bfloat16 inputs, float32 accumulation; float64 is left to the reference backend. Tile shapes
come from the one table, ``simulator/tile_configs.py``, clamped to the problem. Dense self-attention (``N_q == N_kv``)
runs on the same kernel as 1-D GNA with window = N: non-causal it sees every key, causal exactly the keys ``j <= i``.
"""

from __future__ import annotations

import torch

from .. import ops
from .._validation import AttentionParams
from . import Problem, register_backend

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def not_supported_reasons(problem: Problem) -> list[str]:
    """What every fused CPU kernel (each family's) needs: the extension, CPU tensors, a supported dtype."""
    reasons = []
    if ops.EXTENSION_ERROR is not None:
        reasons.append(ops.EXTENSION_ERROR)
    if problem.device_type != "cpu":
        reasons.append(f"tensors are on {problem.device_type}, not on the CPU")
    if problem.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {problem.dtype} is not supported (float32, float16 and bfloat16 only)")
    return reasons


def run_gna(
    problem: Problem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes as in :func:`natten_like.gna`. Returns (out [B, *tokens, H, D_v], lse [B, *tokens, H] float32)."""
    return ops.gna_forward("cpu", q, k, v, additional_keys, additional_values, problem.params)


def attention_not_supported_reasons(problem: Problem) -> list[str]:
    reasons = not_supported_reasons(problem)  # the same kernel, so the same limits
    params: AttentionParams = problem.params
    if params.num_q != params.num_kv:
        reasons.append(f"N_q ({params.num_q}) != N_kv ({params.num_kv}): only self-attention shapes run here")
    return reasons


def run_attention(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, N, H, D], k/v [B, N, H_kv, D / D_v]. Returns (out [B, N, H, D_v], lse [B, N, H] float32)."""
    params: AttentionParams = problem.params
    return ops.gna_forward("cpu", q, k, v, None, None, params.as_gna())


register_backend("gna", "cpu", not_supported_reasons, run_gna)
register_backend("attention", "cpu", attention_not_supported_reasons, run_attention)
