"""The sm80 CUDA GNA / dense forward against the float64 reference (needs a CUDA build and a GPU of capability >= 8.0).

Random 1-3 D problems with causal / stride / dilation, GQA, both built dtypes and head dims; outputs NaN-poisoned so
that every element must be written; logsumexp checked too. ``bench/gpu_check.sh`` builds the extension and runs these.
"""

from __future__ import annotations

import random

import natten_like
import pytest
import torch
from helpers import GnaCase, make_inputs, max_error
from natten_like.backends import cuda as cuda_backend

from simulator.tile_configs import clamp_tile, gna_tiles


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.cuda.get_device_capability() < cuda_backend.MIN_CAPABILITY:
        return "the GPU's compute capability is below 8.0"
    if not cuda_backend.built_kernels():
        return "extension built without NATTEN_LIKE_CUDA_ARCH (no CUDA kernels)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")

DEVICE = "cuda"


def _built() -> list[tuple[torch.dtype, int]]:
    return sorted(cuda_backend.built_kernels(), key=str)


def _random_case(rng: random.Random, rank: int, dim: int) -> GnaCase:
    max_len = {1: 300, 2: 24, 3: 10}[rank]
    shape, window, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        n = rng.randint(2, max_len)
        d = rng.choice([1, 1, 2, 3]) if n >= 6 else 1
        d = min(d, n // 2)
        k = rng.randint(2, n // d)
        shape.append(n)
        dilation.append(d)
        window.append(k)
        stride.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
    heads, kv_heads = rng.choice([(2, 2), (4, 2), (4, 1)])
    return GnaCase(
        shape=tuple(shape), window=tuple(window), stride=tuple(stride), dilation=tuple(dilation),
        causal=tuple(causal), batch=rng.randint(1, 2), heads=heads, kv_heads=kv_heads, dim=dim, dim_v=dim,
    )  # fmt: skip


def _poisoned_forward(case: GnaCase, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Run the op right after freeing NaN-filled blocks of the outputs' sizes: the caching allocator hands those blocks
    to the op's outputs, so an element the kernel never writes stays NaN. Emptying the cache first leaves those blocks
    the only candidates."""
    torch.cuda.empty_cache()
    poison_out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=DEVICE)
    poison_lse = torch.full(q.shape[:-1], float("nan"), dtype=torch.float32, device=DEVICE)
    ptrs = {poison_out.data_ptr(), poison_lse.data_ptr()}
    del poison_out, poison_lse
    q_tile, kv_tile = gna_tiles("sm80", len(case.shape))
    scale = case.scale if case.scale is not None else q.shape[-1] ** -0.5
    out, lse = torch.ops.natten_like.gna_forward(
        q, k, v, None, None, list(case.window), list(case.stride), list(case.dilation), list(case.causal), scale,
        list(clamp_tile(q_tile, case.shape, case.dilation)), list(clamp_tile(kv_tile, case.shape, case.dilation)),
    )  # fmt: skip
    torch.cuda.synchronize()
    poisoned = {out.data_ptr(), lse.data_ptr()} == ptrs
    return out, lse, poisoned


def _check(case: GnaCase, dtype: torch.dtype, seed: int) -> None:
    inputs = make_inputs(case, dtype, seed)
    q, k, v = (inputs[n].to(DEVICE) for n in ("q", "k", "v"))
    out, lse, poisoned = _poisoned_forward(case, q, k, v)
    assert poisoned, "the allocator did not reuse the NaN-filled blocks; the written-everywhere check did not run"
    assert not out.isnan().any(), f"unwritten or NaN output elements in {case}"
    assert not lse.isnan().any(), f"unwritten or NaN lse elements in {case}"
    ref_out, ref_lse = natten_like.gna(
        *(inputs[n].double() for n in ("q", "k", "v")), **case.kwargs(), return_lse=True, backend="reference"
    )
    # The same computation in the low precision by plain PyTorch sets the bar.
    low_out = natten_like.gna(q, k, v, **case.kwargs(), backend="reference")
    bar = max_error(low_out.cpu(), ref_out)
    err = max_error(out.cpu(), ref_out)
    assert err <= 2 * bar + 2e-3, f"out error {err:.2e} (PyTorch in {dtype}: {bar:.2e}) in {case}"
    lse_err = (lse.cpu().double() - ref_lse).abs().max().item()
    assert lse_err <= 2e-3 * max(1.0, ref_lse.abs().max().item()), f"lse error {lse_err:.2e} in {case}"


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_random_gna_matches_reference(rank: int, seed: int) -> None:
    rng = random.Random(1000 * rank + seed)
    for dtype, dim in _built():
        _check(_random_case(rng, rank, dim), dtype, seed)


@pytest.mark.parametrize(
    "case",
    [
        GnaCase(shape=(64,), window=(64,)),  # dense, one full tile
        GnaCase(shape=(200,), window=(200,), causal=(True,)),  # dense causal, partial last tile
        GnaCase(shape=(130,), window=(7,), stride=(7,)),  # blocked
        GnaCase(shape=(16, 16), window=(8, 8), stride=(8, 8)),  # fully block-sparse 2-D with 8x8 tiles
        GnaCase(shape=(12, 10), window=(3, 5), dilation=(4, 2)),  # dilation groups of unequal length
        GnaCase(shape=(8, 8, 8), window=(4, 4, 4), stride=(4, 4, 4), causal=(True, False, True)),
        GnaCase(shape=(2,), window=(2,), causal=(True,)),  # the smallest problem
    ],
    ids=lambda c: "x".join(map(str, c.shape)) + "-w" + "x".join(map(str, c.window)),
)
def test_edge_cases(case: GnaCase) -> None:
    for dtype, dim in _built():
        _check(case.with_(dim=dim, dim_v=dim, heads=4, kv_heads=2), dtype, 7)


@pytest.mark.parametrize("causal", [False, True])
def test_dense_attention_through_the_backend(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim = _built()[-1]
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 333, 4, dim, generator=g, dtype=torch.float64) for _ in range(3))
    out, lse = natten_like.attention(
        *(t.to(dtype).to(DEVICE) for t in (q, k, v)), is_causal=causal, return_lse=True, backend="cuda"
    )
    ref_out, ref_lse = natten_like.attention(
        *(t.to(dtype).double() for t in (q, k, v)), is_causal=causal, return_lse=True, backend="reference"
    )
    assert max_error(out.cpu(), ref_out) < 2e-2
    assert (lse.cpu().double() - ref_lse).abs().max().item() <= 2e-3 * max(1.0, ref_lse.abs().max().item())


def test_backend_refuses_without_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cuda_backend.EXPERIMENTAL_ENV, raising=False)
    dtype, dim = _built()[0]
    q = torch.randn(1, 16, 2, dim, dtype=dtype, device=DEVICE)
    with pytest.raises(natten_like.BackendNotSupportedError, match=cuda_backend.EXPERIMENTAL_ENV):
        natten_like.na1d(q, q, q, 5, backend="cuda")
