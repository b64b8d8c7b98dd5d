"""natten_like: fused sparse-attention kernels for PyTorch.

Set ``NATTEN_LIKE_LOG_LEVEL=debug`` (or info, warning, ...) to see which backend runs each call and why the others
refused.
"""

from __future__ import annotations

import logging
import os

from . import ops  # noqa: F401  (registers fake implementations and autograd of the compiled ops)
from .backends import BackendNotSupportedError
from .functional import attention, gna, merge_attentions, na1d, na2d, na3d


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

__all__ = ["BackendNotSupportedError", "attention", "gna", "merge_attentions", "na1d", "na2d", "na3d"]
