"""CUDA backend: a placeholder that refuses every problem until the compiled CUDA kernels exist.

It is registered now so that auto-dispatch already tries it first and a forced ``backend="cuda"`` explains itself.
"""

from __future__ import annotations

from . import Problem, register_backend


def not_supported_reasons(problem: Problem) -> list[str]:
    reasons = ["no CUDA kernels are built yet"]
    if problem.device_type != "cuda":
        reasons.append("tensors are not on a CUDA device")
    return reasons


def run(problem: Problem, *tensors: object) -> object:
    """Never reached: dispatch only runs a backend with no reasons, and this one always has some."""
    raise NotImplementedError("; ".join(not_supported_reasons(problem)))


register_backend("gna", "cuda", not_supported_reasons, run)
register_backend("attention", "cuda", not_supported_reasons, run)
