"""Compressed-latent attention (DeepSeek MLA, absorbed form) for decode: one shared latent KV head per token, many query
heads, a contiguous or paged cache; forward only (inference).

A cache row is ``[latent (latent_dim) | rope (rope_dim)]``: keys are whole rows, values their first ``latent_dim``
entries. With ``is_causal``, query ``s`` of ``S_q`` sits at cache position ``L_b - S_q + s`` (speculative / multi-token
decode: the new tokens are the last ``S_q`` cache rows) and sees positions ``<= L_b - S_q + s``; otherwise every query
sees the whole cache ``[0, L_b)``. A query that sees no row gets output 0 and logsumexp ``-inf``.

:class:`MultiHeadLatentAttention` shows the whole layer: projections, the decoupled RoPE part, the weight absorption
that turns per-head attention over up-projected keys/values into this one-KV-head form, and the un-absorbed MHA form it
equals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import ops
from ._validation import check_backend, check_bool, check_int, check_same_floating, check_scale, check_tensor
from .backends import Problem, cpu, cuda, dispatch, reference, register_backend
from .backends.reference import masked_attention

__all__ = ["LatentParams", "MultiHeadLatentAttention", "latent_attention", "latent_reference"]


@dataclass(frozen=True)
class LatentParams:
    """Normalised arguments of one latent-attention call."""

    latent_dim: int
    rope_dim: int
    is_causal: bool
    scale: float
    cache_seqlens: torch.Tensor | None  # [B] int64, on the device given (q's or the CPU)
    block_table: torch.Tensor | None  # [B, max_pages] int64, likewise; None = contiguous cache
    num_splits: int  # split-KV count of the CPU / CUDA kernel; 0 = automatic


def validate_latent(
    q: object,
    kv_cache: object,
    latent_dim: object,
    rope_dim: object,
    cache_seqlens: object,
    block_table: object,
    is_causal: object,
    scale: object,
    num_splits: object = 0,
) -> LatentParams:
    """Check every argument of :func:`latent_attention` and return them normalised."""
    q, kv_cache = check_tensor(q, "q"), check_tensor(kv_cache, "kv_cache")
    latent_dim, rope_dim = check_int(latent_dim, "latent_dim"), check_int(rope_dim, "rope_dim")
    num_splits = check_int(num_splits, "num_splits")
    if latent_dim < 1 or rope_dim < 0:
        raise ValueError(f"latent_dim must be >= 1 and rope_dim >= 0, got latent_dim={latent_dim}, rope_dim={rope_dim}")
    if num_splits < 0:
        raise ValueError(f"num_splits must be >= 0 (0 = automatic), got {num_splits}")
    width = latent_dim + rope_dim
    if q.dim() != 4 or q.shape[-1] != width:
        raise ValueError(f"q must be [B, S_q, H, latent_dim + rope_dim = {width}], got shape {tuple(q.shape)}")
    if q.shape[2] < 1:
        raise ValueError(f"q needs at least one head, got shape {tuple(q.shape)}")
    paged = block_table is not None
    layout = "paged [num_pages, page_size, " if paged else "[B, S_kv, "
    if kv_cache.dim() != 3 or kv_cache.shape[-1] != width:
        raise ValueError(
            f"kv_cache must be {layout}latent_dim + rope_dim = {width}], got shape {tuple(kv_cache.shape)}"
        )
    check_same_floating({"q": q, "kv_cache": kv_cache})
    batch = q.shape[0]
    if paged:
        block_table = check_tensor(block_table, "block_table")
        if block_table.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"block_table must be an int32 or int64 tensor, got {block_table.dtype}")
        if block_table.dim() != 2 or block_table.shape[0] != batch:
            raise ValueError(f"block_table must be [B={batch}, max_pages], got shape {tuple(block_table.shape)}")
        if cache_seqlens is None:
            raise ValueError("cache_seqlens is required with block_table (a paged cache has no implicit length)")
        if kv_cache.shape[1] < 1:
            raise ValueError(f"a paged kv_cache needs a page_size (dim 1) >= 1, got shape {tuple(kv_cache.shape)}")
        _check_list_device(block_table, q, "block_table")
        block_table = block_table.to(torch.int64)
        capacity = block_table.shape[1] * kv_cache.shape[1]
    else:
        if kv_cache.shape[0] != batch:
            raise ValueError(f"kv_cache must have q's batch size {batch}, got shape {tuple(kv_cache.shape)}")
        capacity = kv_cache.shape[1]
    if cache_seqlens is not None:
        cache_seqlens = check_tensor(cache_seqlens, "cache_seqlens")
        if cache_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cache_seqlens must be an int32 or int64 tensor, got {cache_seqlens.dtype}")
        if cache_seqlens.shape != (batch,):
            raise ValueError(f"cache_seqlens must be [B={batch}], got shape {tuple(cache_seqlens.shape)}")
        _check_list_device(cache_seqlens, q, "cache_seqlens")
        cache_seqlens = cache_seqlens.to(torch.int64)
        _check_contents(cache_seqlens, block_table, capacity, kv_cache.shape[1], kv_cache.shape[0])
    return LatentParams(
        latent_dim=latent_dim,
        rope_dim=rope_dim,
        is_causal=check_bool(is_causal, "is_causal"),
        scale=check_scale(scale, width),
        cache_seqlens=cache_seqlens,
        block_table=block_table,
        num_splits=num_splits,
    )


def _check_list_device(t: torch.Tensor, q: torch.Tensor, name: str) -> None:
    if t.device != q.device and t.device.type != "cpu":
        raise ValueError(f"{name} must be on q's device ({q.device}) or the CPU, got {t.device}")


def _check_contents(
    seqlens: torch.Tensor, block_table: torch.Tensor | None, capacity: int, page_size: int, num_pages: int
) -> None:
    """Lengths in [0, capacity] and, paged, the used pages' block-table entries in [0, num_pages): on the tensors' own
    device with one host sync, none for CPU tensors. Under CUDA-graph capture device-resident ones cannot be read: the
    kernels check them there (the queries an invalid length or page reaches get NaN; nothing is read out of bounds)."""
    device = next((t.device for t in (seqlens, block_table) if t is not None and t.device.type == "cuda"), None)
    if device is not None:
        with torch.cuda.device(device):
            if torch.cuda.is_current_stream_capturing():
                return
    bad_len = ((seqlens < 0) | (seqlens > capacity)).any()
    bad_page = torch.zeros((), dtype=torch.bool, device=seqlens.device)
    if block_table is not None:
        pages_used = (seqlens.to(block_table.device).clamp(0, capacity) + page_size - 1) // page_size
        used = torch.arange(block_table.shape[1], device=block_table.device) < pages_used[:, None]
        bad_page = (((block_table < 0) | (block_table >= num_pages)) & used).any().to(seqlens.device)
    bad_len, bad_page = torch.stack([bad_len, bad_page]).tolist()
    if bad_len:
        raise ValueError(f"cache_seqlens entries must be in [0, {capacity}] (the cache's capacity)")
    if bad_page:
        raise ValueError(f"block_table entries of used pages must be in [0, {num_pages}) (pages of kv_cache)")


def _contiguous_cache(kv_cache: torch.Tensor, params: LatentParams, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [B, S, D], lengths [B]) of a contiguous or paged cache; a paged one is gathered through its block table."""
    if params.block_table is None:
        lengths = params.cache_seqlens
        if lengths is None:
            lengths = torch.full((batch,), kv_cache.shape[1], dtype=torch.int64)
        return kv_cache, lengths.to(kv_cache.device)
    max_pages, page_size = params.block_table.shape[1], kv_cache.shape[1]
    if kv_cache.shape[0] == 0:  # no pages: every length is 0 (checked), no row is read
        rows = kv_cache.new_zeros(batch, max_pages * page_size, kv_cache.shape[-1])
        return rows, params.cache_seqlens.to(kv_cache.device)
    pages = params.block_table.clamp(0, kv_cache.shape[0] - 1).to(kv_cache.device)  # unused slots may hold anything
    rows = kv_cache[pages].reshape(batch, max_pages * page_size, kv_cache.shape[-1])  # [B, max_pages * page_size, D]
    return rows, params.cache_seqlens.to(kv_cache.device)


def latent_reference(
    q: torch.Tensor, kv_cache: torch.Tensor, params: LatentParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention over the (gathered) cache; any dtype incl. float64, autograd by PyTorch.

    q ``[B, S_q, H, latent_dim + rope_dim]``; kv_cache as in :func:`latent_attention`. Returns (out ``[B, S_q, H,
    latent_dim]``, lse ``[B, S_q, H]``).
    """
    batch, s_q = q.shape[:2]
    rows, lengths = _contiguous_cache(kv_cache, params, batch)
    dev = rows.device
    keys = torch.arange(rows.shape[1], device=dev)[None, None, :]  # [1, 1, S]
    lengths = lengths[:, None, None]
    mask = keys < lengths  # [B, 1, S]
    if params.is_causal:
        mask = mask & (keys <= lengths - s_q + torch.arange(s_q, device=dev)[None, :, None])  # [B, S_q, S]
    mask = mask.expand(batch, s_q, rows.shape[1])[:, None].to(q.device)  # [B, 1, S_q, S]
    k = rows[:, :, None]  # one shared KV head
    return masked_attention(q, k, k[..., : params.latent_dim], mask, params.scale)


# ---- torch.library: fake implementation of the compiled op (forward only: no autograd) ----


def _forward_fake(q: torch.Tensor, kv_cache: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    latent_dim = args[2]
    return q.new_empty((*q.shape[:-1], latent_dim)), q.new_empty(q.shape[:-1], dtype=torch.float32)


if ops.EXTENSION_ERROR is None:
    torch.library.register_fake("natten_like::latent_forward", _forward_fake)


# ---- backends ----


def _cpu_reasons(problem: Problem) -> list[str]:
    reasons = cpu.not_supported_reasons(problem)
    if problem.requires_grad:
        reasons.append("the fused latent kernel is forward only (inference) and an input requires grad")
    return reasons


def _cpu_run(problem: Problem, q: torch.Tensor, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p: LatentParams = problem.params
    return torch.ops.natten_like.latent_forward(
        q, kv_cache, p.cache_seqlens, p.block_table, p.latent_dim, p.is_causal, p.scale, p.num_splits
    )


def _reference_run(problem: Problem, q: torch.Tensor, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return latent_reference(q, kv_cache, problem.params)


def _cuda_reasons(problem: Problem) -> list[str]:
    reasons = cuda._common_reasons(problem)
    p: LatentParams = problem.params
    built = sorted(hd for dt, hd, _ in cuda.built_kernels("sm80_latent_fwd") if dt == problem.dtype)
    if 576 not in built:
        reasons.append(f"no sm80_latent_fwd kernel for {problem.dtype} (built head dims: {built})")
    if p.latent_dim + p.rope_dim != 576 or p.latent_dim != 512:
        reasons.append(
            f"the CUDA kernel is built for latent_dim 512 + rope_dim 64 (D = 576), got {p.latent_dim} + {p.rope_dim}"
        )
    if problem.requires_grad:
        reasons.append("the CUDA latent kernel is forward only (inference) and an input requires grad")
    return reasons + cuda.smem_reasons(problem, cuda.SM80_LATENT_SMEM, "the MLA decode kernel")


def _cuda_run(problem: Problem, q: torch.Tensor, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cuda.check_device(problem, q.device)
    return _cpu_run(problem, q, kv_cache)  # the same op; the tensors' device selects the CUDA implementation


register_backend("latent", "cuda", _cuda_reasons, _cuda_run)
register_backend("latent", "cpu", _cpu_reasons, _cpu_run)
register_backend("latent", "reference", reference.not_supported_reasons, _reference_run)


def latent_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    *,
    latent_dim: int = 512,
    rope_dim: int = 64,
    cache_seqlens: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str | None = None,
    num_splits: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """MLA decode attention in the absorbed form (see the module docstring for the semantics).

    On a GPU, device-resident ``cache_seqlens`` / ``block_table`` are used where they are (no copies), so a decode
    step can be captured in a CUDA graph and replayed with new lengths and pages. Outside capture their contents are
    checked here with one host sync (a ``ValueError`` naming the rule); during capture they cannot be read, and the
    kernels check them instead, reading nothing out of bounds: a batch entry whose length is outside ``[0, capacity]``
    gets NaN (out and lse), and so does every query whose keys would come from a used page that is not a page of
    ``kv_cache``; never a silent answer.

    Args:
        q: ``[B, S_q, H, latent_dim + rope_dim]``: absorbed queries (``q_nope @ W_UK`` and the RoPE part).
        kv_cache: ``[B, S_kv, latent_dim + rope_dim]``, or paged ``[num_pages, page_size, latent_dim + rope_dim]``.
        latent_dim, rope_dim: widths of the latent and RoPE parts of a row.
        cache_seqlens: ``[B]`` cache lengths (default: the whole contiguous cache); required when paged. int32 or
            int64, on q's device or the CPU.
        block_table: ``[B, max_pages]`` page ids of each sequence's cache, in order (paged cache only); int32 or
            int64, on q's device or the CPU.
        is_causal: query ``s`` sees cache positions ``<= L_b - S_q + s``.
        scale: softmax scale; ``None`` = ``(latent_dim + rope_dim) ** -0.5``. DeepSeek's layer passes its un-absorbed
            head dim's, ``(nope_dim + rope_dim) ** -0.5`` (see :class:`MultiHeadLatentAttention`).
        return_lse: also return the logsumexp ``[B, S_q, H]`` (float32; float64 for float64 inputs).
        backend: ``"cuda"``, ``"cpu"`` or ``"reference"`` to force one; ``None`` picks the first that can run the call.
        num_splits: split-KV count of the CPU / CUDA kernel (0 = automatic); results agree for every value.

    Returns:
        out ``[B, S_q, H, latent_dim]``, and lse when ``return_lse``.
    """
    params = validate_latent(
        q, kv_cache, latent_dim, rope_dim, cache_seqlens, block_table, is_causal, scale, num_splits
    )
    check_bool(return_lse, "return_lse")
    out, lse = dispatch("latent", params, check_backend(backend), q, kv_cache)
    return (out, lse) if return_lse else out


def _rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of ``x [B, S, ..., R]`` (R even) at ``positions [S]`` (pairs (2i, 2i + 1) rotated)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * freqs  # [S, R / 2]
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 3) + (half,)
    cos, sin = (f(angles).reshape(shape).to(x.device, x.dtype) for f in (torch.cos, torch.sin))
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class MultiHeadLatentAttention(torch.nn.Module):
    """DeepSeek-style MLA layer (without the query down-projection and norms, which do not change the attention).

    Per token ``x [d_model]``: the cache row is ``[c_kv = x W_DKV (latent_dim) | rope(x W_KR) (rope_dim)]``, shared by
    all heads. Head ``h`` has ``q_nope = x W_Q^h (nope_dim)``, ``q_rope = rope(x W_QR^h) (rope_dim)``, keys
    ``[c_kv W_UK^h | k_rope]`` and values ``c_kv W_UV^h (v_dim)``. Absorbed form: ``q_nope . (c_kv W_UK^h) = (q_nope
    W_UK^h^T) . c_kv``, so the query becomes ``[q_nope W_UK^h^T | q_rope]`` against the raw cache row, and ``W_UV^h`` is
    applied after attention to the latent output.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        latent_dim: int = 512,
        rope_dim: int = 64,
        nope_dim: int = 128,
        v_dim: int = 128,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("num_heads", num_heads),
            ("latent_dim", latent_dim),
            ("nope_dim", nope_dim),
            ("v_dim", v_dim),
        ):
            if check_int(value, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if check_int(rope_dim, "rope_dim") < 2 or rope_dim % 2:
            raise ValueError(f"rope_dim must be even and >= 2, got {rope_dim}")
        self.num_heads, self.latent_dim, self.rope_dim, self.nope_dim, self.v_dim = (
            num_heads,
            latent_dim,
            rope_dim,
            nope_dim,
            v_dim,
        )
        self.scale = (nope_dim + rope_dim) ** -0.5

        def weight(*shape: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.randn(*shape, dtype=dtype) / math.sqrt(shape[-2]))

        self.w_q = weight(num_heads, d_model, nope_dim + rope_dim)  # W_Q^h | W_QR^h
        self.w_dkv = weight(d_model, latent_dim + rope_dim)  # W_DKV | W_KR
        self.w_uk = weight(num_heads, latent_dim, nope_dim)
        self.w_uv = weight(num_heads, latent_dim, v_dim)
        self.w_o = weight(num_heads * v_dim, d_model)

    def cache_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Latent cache rows of tokens ``x [B, S, d_model]`` at positions ``0 .. S-1``: ``[B, S, latent + rope]``."""
        c = x @ self.w_dkv
        positions = torch.arange(x.shape[1], device=x.device)
        return torch.cat((c[..., : self.latent_dim], _rope(c[..., self.latent_dim :], positions)), -1)

    def _num_queries(self, x: object, num_queries: object) -> int:
        """Checks ``x [B, S, d_model]`` and returns the query count: ``num_queries`` in [0, S], default S."""
        x = check_tensor(x, "x")
        d_model = self.w_dkv.shape[0]
        if x.dim() != 3 or x.shape[-1] != d_model:
            raise ValueError(f"x must be [B, S, d_model={d_model}], got shape {tuple(x.shape)}")
        if num_queries is None:
            return x.shape[1]
        n = check_int(num_queries, "num_queries")
        if not 0 <= n <= x.shape[1]:
            raise ValueError(f"num_queries must be in [0, S={x.shape[1]}] (the last tokens of x), got {n}")
        return n

    def _queries(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_nope [B, S_q, H, nope_dim], q_rope [B, S_q, H, rope_dim]) of query tokens at ``positions``."""
        qh = torch.einsum("bsd,hde->bshe", x, self.w_q)
        return qh[..., : self.nope_dim], _rope(qh[..., self.nope_dim :], positions)

    @staticmethod
    def _check_pages(block_table: object, page_size: object, batch: int, seq: int) -> int:
        """Checks a block table ``[B, >= ceil(S / page_size)]`` whose used pages (the first ceil(S / page_size) of each
        row) are distinct non-negative ids; returns ``page_size``."""
        page_size = check_int(page_size, "page_size")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        block_table = check_tensor(block_table, "block_table")
        if block_table.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"block_table must be an int32 or int64 tensor, got {block_table.dtype}")
        need = -(-seq // page_size)
        if block_table.dim() != 2 or block_table.shape[0] != batch or block_table.shape[1] < need:
            raise ValueError(
                f"block_table must be [B={batch}, >= ceil(S / page_size) = {need}], "
                f"got shape {tuple(block_table.shape)}"
            )
        used = block_table[:, :need].flatten()
        if used.numel() and int(used.min()) < 0:
            raise ValueError("block_table's used pages (its first ceil(S / page_size) columns) must be >= 0")
        if used.unique().numel() != used.numel():
            raise ValueError("block_table lists a page twice among its used pages: the sequences' rows would overlap")
        return page_size

    def forward_mha(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """Un-absorbed form: per-head keys ``[c_kv W_UK^h | k_rope]`` and values ``c_kv W_UV^h``, causal attention of
        the last ``num_queries`` tokens (default all) of ``x [B, S, d_model]``.

        Returns ``[B, num_queries, d_model]``."""
        n, seq = self._num_queries(x, num_queries), x.shape[1]
        rows = self.cache_rows(x)
        c_kv, k_rope = rows[..., : self.latent_dim], rows[..., self.latent_dim :]
        k_nope = torch.einsum("bsl,hle->bshe", c_kv, self.w_uk)
        k = torch.cat((k_nope, k_rope[:, :, None].expand(-1, -1, self.num_heads, -1)), -1)
        v = torch.einsum("bsl,hle->bshe", c_kv, self.w_uv)
        q_nope, q_rope = self._queries(x[:, seq - n :], torch.arange(seq - n, seq, device=x.device))
        q = torch.cat((q_nope, q_rope), -1)
        mask = torch.arange(seq, device=x.device)[None, :] <= torch.arange(seq - n, seq, device=x.device)[:, None]
        out, _ = masked_attention(q, k, v, mask, self.scale)
        return out.flatten(2) @ self.w_o

    def forward(
        self,
        x: torch.Tensor,
        num_queries: int | None = None,
        *,
        block_table: torch.Tensor | None = None,
        page_size: int | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Absorbed form through :func:`latent_attention` over the cache rows of ``x [B, S, d_model]``, for the last
        ``num_queries`` tokens (default all; causal). With ``block_table [B, max_pages]`` and ``page_size``, the rows
        are first scattered into a paged cache at those pages.

        Returns ``[B, num_queries, d_model]``."""
        n = self._num_queries(x, num_queries)
        batch, seq = x.shape[:2]
        if (block_table is None) != (page_size is None):
            raise ValueError("block_table and page_size must be given together (both or neither)")
        if block_table is not None:
            page_size = self._check_pages(block_table, page_size, batch, seq)
        rows = self.cache_rows(x)
        q_nope, q_rope = self._queries(x[:, seq - n :], torch.arange(seq - n, seq, device=x.device))
        q = torch.cat((torch.einsum("bshe,hle->bshl", q_nope, self.w_uk), q_rope), -1)  # absorb W_UK
        cache, seqlens = rows, None
        if block_table is not None:
            used = block_table[:, : -(-seq // page_size)].to(x.device, torch.int64)  # the pages the rows fill
            pages = int(used.max()) + 1 if used.numel() else 1
            cache = rows.new_zeros(pages * page_size, rows.shape[-1])
            slots = (used[:, :, None] * page_size + torch.arange(page_size, device=x.device)).flatten(1)[:, :seq]
            cache[slots.flatten()] = rows.flatten(0, 1)
            cache = cache.view(pages, page_size, -1)
            seqlens = torch.full((batch,), seq, dtype=torch.int64, device=x.device)
        out = latent_attention(
            q,
            cache,
            latent_dim=self.latent_dim,
            rope_dim=self.rope_dim,
            cache_seqlens=seqlens,
            block_table=block_table,
            is_causal=True,
            scale=self.scale,
            backend=backend,
        )
        out = torch.einsum("bshl,hle->bshe", out, self.w_uv)  # absorb W_UV after attention
        return out.flatten(2) @ self.w_o
