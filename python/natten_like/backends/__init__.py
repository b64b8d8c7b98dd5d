"""Backend registry and dispatch, shared by every attention family.

A *family* is one kind of attention (``"gna"``, ``"attention"``, later ``"block_sparse"``, ...). A *backend* is one
way to run it (``"cuda"``, ``"cpu"``, ``"flex"``, ``"reference"``). Every (family, backend) pair is registered once, by
the module that implements it, with two functions:

- ``not_supported_reasons(problem) -> list[str]``: every reason this backend cannot run ``problem`` (empty = it can).
  All reasons, not just the first, so a forced backend's error tells the user everything to change at once.
- ``run(problem, *tensors) -> ...``: run it; the family decides the tensors passed and the result returned.

Auto-dispatch (``backend=None``) takes the first backend of :data:`BACKEND_ORDER` registered for the family that gives
no reason; ``backend="cpu"`` forces one and raises :class:`BackendNotSupportedError` listing all its reasons. Set
``NATTEN_LIKE_LOG_LEVEL=debug`` to log each decision (never while torch.compile traces, where a log call would break
the graph).

Adding a family needs no edit here. In its own module (e.g. ``python/natten_like/block_sparse.py``)::

    from natten_like.backends import Problem, dispatch, register_backend

    def _cpu_reasons(problem: Problem) -> list[str]: ...
    def _cpu_run(problem: Problem, q, k, v, block_mask): ...
    register_backend("block_sparse", "cpu", _cpu_reasons, _cpu_run)
    # ... and the reference, cuda, ... backends of the family the same way.

    def block_sparse_attention(q, k, v, block_mask, ..., backend=None):
        params = ...  # validate
        return dispatch("block_sparse", params, backend, q, k, v, block_mask)

Only a new *kind* of backend (a new name) is added to :data:`BACKEND_ORDER`, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Preference of auto-dispatch: fastest first, the always-correct dense reference last.
BACKEND_ORDER: tuple[str, ...] = ("cuda", "cpu", "flex", "reference")

logger = logging.getLogger("natten_like")


@dataclass(frozen=True)
class Problem:
    """What a backend needs to know to accept or refuse a call.

    ``params`` holds the family's validated, normalised arguments (e.g. :class:`natten_like._validation.GnaParams`).
    """

    family: str
    device_type: str  # "cpu", "cuda", "meta", ...
    dtype: torch.dtype
    requires_grad: bool  # autograd will need a backward through this call
    params: Any
    batch: int = 1  # q's batch dim ([B, *tokens, H, D]); 1 for a packed [total, H, D] q
    heads: int = 1  # q's head dim H
    device_index: int | None = None  # the CUDA device of the tensors (None: not CUDA, or the current one)
    empty: bool = False  # some input tensor has no elements


@dataclass(frozen=True)
class Backend:
    family: str
    name: str
    not_supported_reasons: Callable[[Problem], list[str]]
    run: Callable[..., Any]


class BackendNotSupportedError(ValueError):
    """No backend (or not the forced one) can run a problem; the message lists every reason."""


_REGISTRY: dict[str, dict[str, Backend]] = {}


def register_backend(
    family: str, name: str, not_supported_reasons: Callable[[Problem], list[str]], run: Callable[..., Any]
) -> None:
    """Make backend ``name`` available to ``family``. Each (family, name) pair is registered once."""
    if name not in BACKEND_ORDER:
        raise ValueError(f"name must be one of {BACKEND_ORDER} (add a new kind of backend there), got {name!r}")
    backends = _REGISTRY.setdefault(family, {})
    if name in backends:
        raise ValueError(f"backend {name!r} of family {family!r} is already registered")
    backends[name] = Backend(family, name, not_supported_reasons, run)


def registered_backends(family: str) -> tuple[str, ...]:
    """Names of the backends of ``family``, in auto-dispatch order."""
    backends = _REGISTRY.get(family, {})
    return tuple(name for name in BACKEND_ORDER if name in backends)


def _log_debug(msg: str, *args: object) -> None:
    if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
        logger.debug(msg, *args)


def select_backend(problem: Problem, backend: str | None = None) -> Backend:
    """The backend that runs ``problem``: ``backend`` when given (if it can), else the first in order that can."""
    names = registered_backends(problem.family)
    if backend is not None:
        if backend not in names:
            raise ValueError(f"backend must be one of {', '.join(names)} for {problem.family}, got {backend!r}")
        chosen = _REGISTRY[problem.family][backend]
        reasons = chosen.not_supported_reasons(problem)
        if reasons:
            raise BackendNotSupportedError(
                f"backend={backend!r} cannot run this {problem.family} problem: " + "; ".join(reasons)
            )
        _log_debug("natten_like %s: backend %s forced", problem.family, backend)
        return chosen
    refusals: list[tuple[str, list[str]]] = []

    def refused() -> str:
        # Joined only to be read: under torch.compile(dynamic=True) the reasons can hold symbolic sizes, whose strings
        # Dynamo cannot join.
        return "; ".join(f"{name} refused: " + ", ".join(reasons) for name, reasons in refusals)

    for name in names:
        candidate = _REGISTRY[problem.family][name]
        reasons = candidate.not_supported_reasons(problem)
        if not reasons:
            if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
                _log_debug("natten_like %s: chose backend %s (%s)", problem.family, name, refused() or "first")
            return candidate
        refusals.append((name, reasons))
    raise BackendNotSupportedError(f"no backend can run this {problem.family} problem: " + refused())


def dispatch(family: str, params: Any, backend: str | None, *tensors: torch.Tensor | None) -> Any:
    """Run ``family`` with ``params`` on ``tensors`` through :func:`select_backend`. The first tensor (q) gives the
    device and dtype; the problem needs autograd when grad is enabled and any tensor requires grad."""
    q = tensors[0]
    requires_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    problem = Problem(family, q.device.type, q.dtype, requires_grad, params, batch=q.shape[0] if q.dim() >= 4 else 1,
                      heads=q.shape[-2], device_index=q.device.index if q.device.type == "cuda" else None,
                      empty=any(t is not None and t.numel() == 0 for t in tensors))  # fmt: skip
    return select_backend(problem, backend).run(problem, *tensors)


# The built-in backends register themselves on import (after the definitions above, which they use).
from . import cpu, cuda, reference  # noqa: E402, F401
