"""One small, odd-sized problem per CUDA kernel, each checked against the float64 reference: every family's forward,
the backward where one exists, on the sm80 kernels and, on Hopper, the sm90 ones with one-CTA-per-tile and persistent
scheduling. Small enough to run under compute-sanitizer, which names the kernel and the access at fault where a GPU
test failed (``bench/gpu_check.sh`` runs it so when the tests fail, or as its ``sanitize`` phase):

    compute-sanitizer --tool memcheck --error-exitcode 3 python bench/gpu_smoke.py [--backend cuda|cpu]

Prints one line per case; exits 1 if any output, logsumexp or gradient is off (or NaN where the reference is not).
``--backend cpu`` runs the same cases on the fused CPU kernels (CI does, so that the script cannot rot unrun).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import natten_like
import torch
from natten_like.backends import cuda as cuda_backend

DTYPE = torch.bfloat16
TOL = 3e-2  # bf16 inputs, fp32 accumulation: relative to max(1, |reference|)


def _randn(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DTYPE)


def _error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().cpu().double(), ref.detach().double()
    finite = ref.isfinite()
    if not torch.equal(got.isfinite(), finite):
        return float("inf")
    if not finite.any():
        return 0.0
    return (got[finite] - ref[finite]).abs().max().item() / max(1.0, ref[finite].abs().max().item())


def _check(run: Callable, inputs: list[torch.Tensor], grad: bool, backend: str) -> float:
    """Worst relative error of (out, lse) and, with ``grad``, of the input gradients, ``run`` on ``backend`` against
    ``run`` on the reference backend in float64."""
    dev = [t.to("cuda" if backend == "cuda" else "cpu").requires_grad_(grad) for t in inputs]
    ref = [t.detach().double().requires_grad_(grad) for t in inputs]
    out, lse = run(*dev, backend=backend)
    ref_out, ref_lse = run(*ref, backend="reference")
    errors = [_error(out, ref_out), _error(lse, ref_lse)]
    if grad:
        out.float().square().sum().backward()
        ref_out.square().sum().backward()
        errors += [_error(d.grad, r.grad) for d, r in zip(dev, ref, strict=True)]
    if backend == "cuda":
        torch.cuda.synchronize()
    return max(errors)


def cases(dim: int, g: torch.Generator) -> list[tuple[str, Callable, list[torch.Tensor], bool]]:
    def qkv(tokens: tuple[int, ...], heads: int = 4, kv_heads: int = 2) -> list[torch.Tensor]:
        return [_randn(2, *tokens, h, dim, g=g) for h in (heads, kv_heads, kv_heads)]

    mask = torch.rand(1, 4, 4, 4, generator=g) < 0.5
    mask[..., 0] = True
    mask[:, 1, 2] = False  # an empty query block: out 0, lse -inf
    cache = _randn(7, 64, 576, g=g)
    table = torch.tensor([[3, 0, 5], [6, 1, 2]])
    lens = torch.tensor([150, 0])

    def gna(*args: object) -> Callable:
        return lambda q, k, v, **kw: natten_like.gna(q, k, v, *args, return_lse=True, **kw)

    return [
        ("gna 1-D causal", gna(17, 1, 1, True), qkv((77,)), True),
        ("gna 2-D dilated", gna((5, 7), (1, 2), (2, 1)), qkv((13, 19)), True),
        ("gna 3-D strided", gna((3, 3, 5), (1, 2, 1)), qkv((5, 6, 9)), True),
        ("gna 2-D + additional kv", lambda q, k, v, ak, av, **kw: natten_like.gna(
            q, k, v, (5, 5), additional_keys=ak, additional_values=av, return_lse=True, **kw),
         [*qkv((11, 9)), _randn(2, 21, 2, dim, g=g), _randn(2, 21, 2, dim, g=g)], True),
        ("dense causal", lambda q, k, v, **kw: natten_like.attention(q, k, v, True, return_lse=True, **kw),
         qkv((333,)), True),
        ("block-sparse", lambda q, k, v, **kw: natten_like.block_sparse_attention(
            q, k, v, mask, q_block=64, kv_block=64, return_lse=True, **kw), qkv((231,)), True),
        ("strided-shard", lambda q, k, v, **kw: natten_like.strided_shard_attention(
            q, k, v, block_size=64, local_blocks=1, vert_stride=2, return_lse=True, **kw), qkv((300,)), True),
        ("latent decode, paged, 3 splits", lambda q, c, **kw: natten_like.latent_attention(
            q, c, cache_seqlens=lens.to(q.device), block_table=table.to(q.device), num_splits=3, return_lse=True,
            **kw), [_randn(2, 2, 16, 576, g=g), cache], False),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["cuda", "cpu"], default="cuda")
    backend = parser.parse_args(argv).backend
    if backend == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device", file=sys.stderr)
        return 2
    dims = [64]
    if backend == "cuda":
        os.environ[cuda_backend.EXPERIMENTAL_ENV] = "1"
        dims = sorted(d for dt, d, dv in cuda_backend.built_kernels("sm80_gna_fwd") if dt == DTYPE and d == dv)
        if not dims:
            print("gpu_smoke: the extension holds no bfloat16 kernels", file=sys.stderr)
            return 2
    dim = 64 if 64 in dims else dims[0]
    hopper = (
        backend == "cuda" and torch.cuda.get_device_capability()[0] == 9 and cuda_backend.built_kernels("sm90_gna_fwd")
    )
    modes = [("sm80" if backend == "cuda" else "cpu", "off", "off")]
    modes += [("sm90", "on", "off"), ("sm90 persistent", "on", "on")] if hopper else []
    where = torch.cuda.get_device_name() if backend == "cuda" else "the CPU"
    print(f"gpu_smoke on {where}, bf16, head dim {dim}")
    failed = 0
    for label, sm90, persistent in modes:
        os.environ["NATTEN_LIKE_SM90"], os.environ["NATTEN_LIKE_SM90_PERSISTENT"] = sm90, persistent
        for name, run, inputs, grad in cases(dim, torch.Generator().manual_seed(0)):
            try:
                error = _check(run, inputs, grad, backend)
                status = "ok" if error <= TOL else "FAIL"
                detail = f"max rel error {error:.2e}"
            except Exception as exc:  # report every case, then fail
                status, detail = "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            failed += status != "ok"
            print(f"{status:4}  {label:16}  {name:32}  {detail}", flush=True)
    print(f"gpu_smoke: {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
