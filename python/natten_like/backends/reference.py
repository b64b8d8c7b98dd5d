"""Reference backend: dense masked attention in plain PyTorch, the ground truth of every test.

Any device, any floating dtype (float64 included), autograd by PyTorch itself. It computes in the inputs' dtype, so
that a float16 call measures what plain PyTorch achieves in float16. The GNA mask is built from the torch-free
semantics twin (``simulator/gna_policy.py``), never from the kernels' code: per token dim a boolean [L, L] matrix,
combined by broadcasting into the flattened [N, N] mask. Memory is O(N^2): meant for tests and small problems.
"""

from __future__ import annotations

import math

import torch

from simulator.gna_policy import GnaDim

from .._validation import AttentionParams, GnaParams
from . import Problem, register_backend


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of flattened heads-last tensors; rows with no visible key give out = 0 and lse = -inf.

    q [B, N_q, H, D], k [B, N_kv, H_kv, D], v [B, N_kv, H_kv, D_v], mask [N_q, N_kv] bool (True = visible) or None.
    Returns out [B, N_q, H, D_v] in q's dtype and lse [B, N_q, H] in float32 (float64 for float64 inputs).
    """
    group = q.shape[2] // k.shape[2]
    # GQA by repeating KV heads: fine for a reference, the fused kernels map query heads to KV heads instead.
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # [B, H, N_q, N_kv]
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [B, H, N_q]
    # Fully masked rows have lse = -inf; subtracting 0 instead keeps exp(-inf) = 0 rather than exp(NaN).
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse).unsqueeze(-1))
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out, lse.transpose(1, 2).to(lse_dtype)


def _dim_visible(dim: GnaDim) -> tuple[tuple[int, int], ...]:
    """(query, key) coordinate pairs of one token dim that see each other."""
    return tuple((x, y) for x in range(dim.length) for y in dim.window_of(x))


def gna_mask(params: GnaParams, device: torch.device) -> torch.Tensor:
    """[N, N] bool mask over the flattened (row-major) token grid: True where query i sees key j."""
    mask = torch.ones(1, 1, dtype=torch.bool, device=device)
    for n, w, s, d, c in zip(
        params.shape, params.window, params.stride, params.dilation, params.is_causal, strict=True
    ):
        pairs = torch.tensor(_dim_visible(GnaDim(n, w, s, d, c)), device=device)
        dim_mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        dim_mask[pairs[:, 0], pairs[:, 1]] = True
        # Row-major flattening: (i, x) -> i * n + x, so the combined mask is [I, n, J, n] -> [I * n, J * n].
        mask = (mask[:, None, :, None] & dim_mask[None, :, None, :]).reshape(mask.shape[0] * n, mask.shape[1] * n)
    return mask


def flatten_gna_tokens(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GNA inputs as a sequence: q ``[B, N, H, D]``, k/v ``[B, N + N_add, H_kv, D / D_v]`` with the token grid
    flattened row-major and the additional KV appended."""
    batch, n = q.shape[0], math.prod(q.shape[1:-2])
    qf = q.reshape(batch, n, q.shape[-2], q.shape[-1])
    kf = k.reshape(batch, n, k.shape[-2], k.shape[-1])
    vf = v.reshape(batch, n, v.shape[-2], v.shape[-1])
    if additional_keys is not None:
        kf = torch.cat([kf, additional_keys], dim=1)
        vf = torch.cat([vf, additional_values], dim=1)
    return qf, kf, vf


def run_gna(
    problem: Problem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GNA as dense masked attention; shapes as in :func:`natten_like.gna`. Returns (out, lse)."""
    params: GnaParams = problem.params
    qf, kf, vf = flatten_gna_tokens(q, k, v, additional_keys, additional_values)
    mask = gna_mask(params, q.device)
    if additional_keys is not None:
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], additional_keys.shape[1])], dim=1)
    out, lse = masked_attention(qf, kf, vf, mask, params.scale)
    return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])


def run_attention(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention; causal is aligned bottom-right (query i sees keys j <= i + N_kv - N_q). Returns (out, lse)."""
    params: AttentionParams = problem.params
    mask = None
    if params.is_causal:
        rows = torch.arange(params.num_q, device=q.device)[:, None]
        cols = torch.arange(params.num_kv, device=q.device)[None, :]
        mask = cols <= rows + (params.num_kv - params.num_q)
    return masked_attention(q, k, v, mask, params.scale)


def not_supported_reasons(problem: Problem) -> list[str]:
    """The reference runs every problem of every family, so every family registers it with this."""
    return []


register_backend("gna", "reference", not_supported_reasons, run_gna)
register_backend("attention", "reference", not_supported_reasons, run_attention)
