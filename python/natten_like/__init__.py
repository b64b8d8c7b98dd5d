"""natten_like: fused sparse-attention kernels for PyTorch.

Set ``NATTEN_LIKE_LOG_LEVEL=debug`` (or info, warning, ...) to see which backend runs each call and why the others
refused.
"""

from __future__ import annotations

import logging
import os

from . import ops  # noqa: F401  (registers fake implementations and autograd of the compiled ops)
from .backends import BackendNotSupportedError
from .block_sparse import block_sparse_attention, from_flex_block_mask, to_flex_block_mask
from .functional import attention, gna, merge_attentions, na1d, na2d, na3d
from .latent import MultiHeadLatentAttention, latent_attention
from .strided_shard import is_kv_cache_efficient, strided_shard_attention

# After the family modules: the flex backend registers itself for gna, block_sparse and strided_shard.
from .backends import flex as _flex  # noqa: F401, E402  (isort: skip)
from .modules import (  # noqa: E402
    BlockSparseAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
    StridedShardAttention,
)


def _configure_logging() -> None:
    level = os.environ.get("NATTEN_LIKE_LOG_LEVEL")
    if not level:
        return
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"NATTEN_LIKE_LOG_LEVEL must be a logging level (debug, info, warning, ...), got {level!r}")
    logger = logging.getLogger("natten_like")
    logger.setLevel(numeric)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())


_configure_logging()


def __getattr__(name: str):
    # `natten_like.simulator` is the torch-free top-level `simulator` package, loaded only when asked for.
    if name == "simulator":
        import simulator

        return simulator
    raise AttributeError(f"module 'natten_like' has no attribute {name!r}")


__all__ = [
    "BackendNotSupportedError",
    "BlockSparseAttention",
    "MultiHeadLatentAttention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "StridedShardAttention",
    "attention",
    "block_sparse_attention",
    "from_flex_block_mask",
    "gna",
    "is_kv_cache_efficient",
    "latent_attention",
    "merge_attentions",
    "na1d",
    "na2d",
    "na3d",
    "simulator",
    "strided_shard_attention",
    "to_flex_block_mask",
]
