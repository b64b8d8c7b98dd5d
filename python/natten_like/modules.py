"""``torch.nn`` attention layers over natten_like's functions: projections, heads, optional qk-norm, RoPE hook and GQA.

Every layer maps ``x [B, *tokens, dim]`` to ``[B, *tokens, dim]``: one fused ``qkv`` ``nn.Linear`` (``dim -> (H + 2 *
H_kv) * head_dim``, the query heads then the key heads then the value heads), optional per-head ``nn.RMSNorm`` of
queries and keys (``qk_norm``), an optional ``rope(q, k) -> (q, k)`` hook on ``[B, *tokens, H(_kv), head_dim]``
tensors, the attention, and an output ``proj`` ``nn.Linear`` (``H * head_dim -> dim``). Parameters are plain
Linear/RMSNorm weights, so state dicts load into and out of hand-written equivalents. The layers trace with
``torch.compile(fullgraph=True)``.

- :class:`NeighborhoodAttention1D` / ``2D`` / ``3D``: :func:`natten_like.gna`, with optional ``additional_tokens``
  projected to extra keys/values that every query sees in the same softmax.
- :class:`BlockSparseAttention`: :func:`natten_like.block_sparse_attention` over ``[B, N, dim]``.
- :class:`StridedShardAttention`: :func:`natten_like.strided_shard_attention` over ``[B, N, dim]``.
- :class:`MultiHeadLatentAttention` (DeepSeek MLA), re-exported from :mod:`natten_like.latent`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ._validation import check_backend, check_bool, check_int, check_tensor, per_dim_ints, validate_gna
from .backends import registered_backends
from .block_sparse import block_sparse_attention, validate_block_sparse
from .functional import gna
from .latent import MultiHeadLatentAttention
from .strided_shard import strided_shard_attention, validate_strided_shard

__all__ = [
    "BlockSparseAttention",
    "MultiHeadLatentAttention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "StridedShardAttention",
]

Rope = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _meta_heads(num_tokens: Sequence[int], heads: int, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Shape-only q ``[1, *num_tokens, H, D]`` and k/v ``[1, *num_tokens, H_kv, D]`` on the meta device, so that a
    constructor checks its configuration with the functional API's own validation (no rule written twice)."""
    q = torch.empty(1, *num_tokens, heads, head_dim, device="meta")
    kv = torch.empty(1, *num_tokens, kv_heads, head_dim, device="meta")
    return q, kv, kv


class _ProjectedAttention(nn.Module):
    """Shared projections of every layer here; subclasses define ``forward`` around their attention function."""

    family: ClassVar[str]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool,
        qk_norm: bool,
        rope: Rope | None,
        num_kv_heads: int | None,
        proj_bias: bool,
        backend: str | None,
    ) -> None:
        super().__init__()
        dim, num_heads = check_int(dim, "dim"), check_int(num_heads, "num_heads")
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be >= 1, got dim={dim}, num_heads={num_heads}")
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else check_int(num_kv_heads, "num_kv_heads")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads must be >= 1 and divide num_heads ({num_heads}), got num_kv_heads={num_kv_heads}"
            )
        if rope is not None and not callable(rope):
            raise TypeError(f"rope must be a callable (q, k) -> (q, k) or None, got {type(rope).__name__}")
        backend = check_backend(backend)
        if backend is not None and backend not in registered_backends(self.family):
            raise ValueError(
                f"backend must be None or one of {', '.join(registered_backends(self.family))}, got {backend!r}"
            )
        self.dim, self.num_heads, self.num_kv_heads = dim, num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.rope = rope
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=check_bool(qkv_bias, "qkv_bias"))
        # Per-head RMSNorm of queries and keys (ViT-22B, SD3); Identity keeps the state dict free of unused norms.
        qk_norm = check_bool(qk_norm, "qk_norm")
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(num_heads * self.head_dim, dim, bias=check_bool(proj_bias, "proj_bias"))

    def _check_input(self, x: object, rank: int, layout: str) -> torch.Tensor:
        x = check_tensor(x, "x")
        if x.dim() != rank + 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be {layout} with dim={self.dim}, got shape {tuple(x.shape)}")
        return x

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q ``[..., H, head_dim]``, k, v ``[..., H_kv, head_dim]``) of ``x [..., dim]``, normed and rotated."""
        q, k, v = self.qkv(x).split([self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2, -1)
        q = self.q_norm(q.unflatten(-1, (self.num_heads, self.head_dim)))
        k = self.k_norm(k.unflatten(-1, (self.num_kv_heads, self.head_dim)))
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        if self.rope is not None:
            q, k = self.rope(q, k)
        return q, k, v

    def _out(self, out: torch.Tensor) -> torch.Tensor:
        """``[..., H, head_dim]`` -> ``[..., dim]``."""
        return self.proj(out.flatten(-2))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, backend={self.backend}"


class _NeighborhoodAttention(_ProjectedAttention):
    family = "gna"
    rank: ClassVar[int]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        is_causal: bool | Sequence[bool] = False,
        *,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        rope: Rope | None = None,
        num_kv_heads: int | None = None,
        proj_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope, num_kv_heads=num_kv_heads,
            proj_bias=proj_bias, backend=backend,
        )  # fmt: skip
        # Checked on a shape-only grid just large enough (window * dilation per dim) that only the size rule, which
        # depends on the input, is left to forward.
        window = per_dim_ints(window, self.rank, "window")
        dilation = per_dim_ints(dilation, self.rank, "dilation")
        size = [max(w * d, 1) for w, d in zip(window, dilation, strict=True)]
        params = validate_gna(
            *_meta_heads(size, self.num_heads, self.num_kv_heads, self.head_dim),
            window, stride, dilation, is_causal, None, None, None,
        )  # fmt: skip
        self.window, self.stride, self.dilation = params.window, params.stride, params.dilation
        self.is_causal = params.is_causal

    def forward(self, x: torch.Tensor, additional_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Neighborhood attention of ``x [B, *tokens, dim]`` (``rank`` token dims).

        Args:
            x: ``[B, *tokens, dim]``; each token dim must be >= window * dilation.
            additional_tokens: optional ``[B, N_add, dim]``, projected to keys/values (k-norm applied, no RoPE: they
                have no grid position) that every query attends in the same softmax as its neighborhood.

        Returns:
            ``[B, *tokens, dim]``.
        """
        x = self._check_input(x, self.rank, f"[B, {', '.join(['X', 'Y', 'Z'][: self.rank])}, dim]")
        q, k, v = self._heads(x)
        add_k = add_v = None
        if additional_tokens is not None:
            additional_tokens = check_tensor(additional_tokens, "additional_tokens")
            if additional_tokens.dim() != 3 or additional_tokens.shape[::2] != (x.shape[0], self.dim):
                raise ValueError(
                    f"additional_tokens must be [B={x.shape[0]}, N_add, dim={self.dim}], got shape "
                    f"{tuple(additional_tokens.shape)}"
                )
            # Only the key/value rows of the fused projection: queries of additional tokens are never needed.
            rows = slice(self.num_heads * self.head_dim, None)
            bias = None if self.qkv.bias is None else self.qkv.bias[rows]
            add_k, add_v = nn.functional.linear(additional_tokens, self.qkv.weight[rows], bias).chunk(2, -1)
            add_k = self.k_norm(add_k.unflatten(-1, (self.num_kv_heads, self.head_dim)))
            add_v = add_v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        out = gna(
            q, k, v, self.window, self.stride, self.dilation, self.is_causal,
            additional_keys=add_k, additional_values=add_v, backend=self.backend,
        )  # fmt: skip
        return self._out(out)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, window={self.window}, stride={self.stride}, dilation={self.dilation}, "
            f"is_causal={self.is_causal}"
        )


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """Neighborhood attention layer over a 1-D sequence: ``x [B, L, dim] -> [B, L, dim]``.

    Args:
        dim: model width; ``dim % num_heads == 0`` (head_dim = dim // num_heads).
        num_heads: query heads H.
        window, stride, dilation, is_causal: GNA parameters (see :func:`natten_like.gna`), one value or one per dim;
            ``window >= 2``, ``1 <= stride <= window``, ``dilation >= 1``.
        qkv_bias: bias of the fused ``qkv`` projection.
        qk_norm: per-head RMSNorm of queries and keys.
        rope: optional hook ``(q [B, *tokens, H, head_dim], k [B, *tokens, H_kv, head_dim]) -> (q, k)``.
        num_kv_heads: KV heads H_kv dividing H (GQA/MQA); ``None`` = H.
        proj_bias: bias of the output projection.
        backend: forced backend of :func:`natten_like.gna`; ``None`` = automatic.
    """

    rank = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """Neighborhood attention layer over a 2-D grid: ``x [B, X, Y, dim] -> [B, X, Y, dim]``; arguments as
    :class:`NeighborhoodAttention1D`, per-dim values as 2-tuples."""

    rank = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """Neighborhood attention layer over a 3-D grid: ``x [B, X, Y, Z, dim] -> [B, X, Y, Z, dim]``; arguments as
    :class:`NeighborhoodAttention1D`, per-dim values as 3-tuples."""

    rank = 3


class BlockSparseAttention(_ProjectedAttention):
    """Block-sparse attention layer: ``x [B, N, dim] -> [B, N, dim]`` with a block mask given per call.

    Args:
        dim, num_heads, qkv_bias, qk_norm, rope, num_kv_heads, proj_bias, backend: as :class:`NeighborhoodAttention1D`.
        q_block, kv_block: block sizes in tokens (``None`` = 128, or the ``BlockMask``'s).
        is_causal: causal element mask on partial-list blocks (see :func:`natten_like.block_sparse_attention`).
    """

    family = "block_sparse"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        q_block: int | None = None,
        kv_block: int | None = None,
        is_causal: bool = False,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        rope: Rope | None = None,
        num_kv_heads: int | None = None,
        proj_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope, num_kv_heads=num_kv_heads,
            proj_bias=proj_bias, backend=backend,
        )  # fmt: skip
        one_block = torch.ones(1, 1, 1, 1, dtype=torch.bool)
        params = validate_block_sparse(
            *_meta_heads([1], self.num_heads, self.num_kv_heads, self.head_dim),
            one_block, q_block, kv_block, is_causal, None, None, None,
        )  # fmt: skip
        self.q_block = None if q_block is None else params.q_block
        self.kv_block = None if kv_block is None else params.kv_block
        self.is_causal = params.is_causal

    def forward(self, x: torch.Tensor, block_mask: Any) -> torch.Tensor:
        """Block-sparse attention of ``x [B, N, dim]``.

        Args:
            x: ``[B, N, dim]``.
            block_mask: bool ``[B|1, H|1, QB, KB]``, compressed lists or a FlexAttention ``BlockMask`` (see
                :func:`natten_like.block_sparse_attention`).

        Returns:
            ``[B, N, dim]``.
        """
        q, k, v = self._heads(self._check_input(x, 1, "[B, N, dim]"))
        out = block_sparse_attention(
            q, k, v, block_mask, q_block=self.q_block, kv_block=self.kv_block, is_causal=self.is_causal,
            backend=self.backend,
        )  # fmt: skip
        return self._out(out)


class StridedShardAttention(_ProjectedAttention):
    """Strided-shard (S2-Attention) layer: ``x [B, N, dim] -> [B, N, dim]``.

    Args:
        dim, num_heads, qkv_bias, qk_norm, rope, num_kv_heads, proj_bias, backend: as :class:`NeighborhoodAttention1D`.
        block_size, local_blocks, vert_stride, is_causal, homo_head, num_dense_heads, head_sliding_offset: the
            pattern (see :func:`natten_like.strided_shard_attention`); ``num_dense_heads <= num_kv_heads``.
    """

    family = "strided_shard"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        block_size: int,
        local_blocks: int,
        vert_stride: int,
        is_causal: bool = True,
        homo_head: bool = False,
        num_dense_heads: int = 0,
        head_sliding_offset: int = 0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        rope: Rope | None = None,
        num_kv_heads: int | None = None,
        proj_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope, num_kv_heads=num_kv_heads,
            proj_bias=proj_bias, backend=backend,
        )  # fmt: skip
        params = validate_strided_shard(
            *_meta_heads([1], self.num_heads, self.num_kv_heads, self.head_dim),
            block_size, local_blocks, vert_stride, is_causal, homo_head, num_dense_heads, head_sliding_offset, None,
        )  # fmt: skip
        self.pattern = dict(
            block_size=params.block_size,
            local_blocks=params.local_blocks,
            vert_stride=params.vert_stride,
            is_causal=params.is_causal,
            homo_head=params.homo_head,
            num_dense_heads=params.num_dense_heads,
            head_sliding_offset=params.head_sliding_offset,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Strided-shard self-attention of ``x [B, N, dim]``; returns ``[B, N, dim]``."""
        q, k, v = self._heads(self._check_input(x, 1, "[B, N, dim]"))
        return self._out(strided_shard_attention(q, k, v, **self.pattern, backend=self.backend))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, " + ", ".join(f"{name}={value}" for name, value in self.pattern.items())
