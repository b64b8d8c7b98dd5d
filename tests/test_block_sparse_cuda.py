"""The sm80 block-sparse CUDA forward against the float64 reference (needs a CUDA build and a GPU >= sm80).

Random block masks (plain batches with broadcast batch / head dims, packed varlen sequences, one empty query block),
block sizes below, at and above the kernel's 64-row block, causal or not, GQA, N_q != N_kv; every built dtype and head
dim; outputs NaN-poisoned so that every element must be written; logsumexp checked too. ``bench/gpu_check.sh`` runs
these.
"""

from __future__ import annotations

import random

import natten_like
import pytest
import torch
from helpers import cuda_skip_reason, use_sm90
from natten_like.backends import cuda as cuda_backend

SKIP = cuda_skip_reason("sm80_block_sparse_fwd")
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def _square_kernels() -> list[tuple[torch.dtype, int]]:
    """(dtype, head dim) of the built forward kernels with D_v == D."""
    built = cuda_backend.built_kernels("sm80_block_sparse_fwd")
    return sorted(((dt, d) for dt, d, d_v in built if d == d_v), key=str)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _run_and_check(q, k, v, mask, dtype, **kw) -> None:
    """q/k/v float64 on the CPU; runs the cuda backend in ``dtype`` on poisoned outputs, compares with the reference."""
    low = [t.to(dtype) for t in (q, k, v)]
    args = [t.cuda() for t in low]
    mask_dev = mask.cuda()
    # Free NaN-filled blocks of the outputs' sizes right before the call: the caching allocator hands them to the
    # outputs, so an element the kernel never writes stays NaN.
    torch.cuda.empty_cache()
    poison = [torch.full((*q.shape[:-1], v.shape[-1]), float("nan"), dtype=dtype, device="cuda"),
              torch.full(q.shape[:-1], float("nan"), device="cuda")]  # fmt: skip
    ptrs = {t.data_ptr() for t in poison}
    del poison
    out, lse = natten_like.block_sparse_attention(*args, mask_dev, **kw, return_lse=True, backend="cuda")
    torch.cuda.synchronize()
    assert {out.data_ptr(), lse.data_ptr()} == ptrs, "the NaN-filled blocks were not reused"
    assert not out.isnan().any() and not lse.isnan().any(), "unwritten or NaN elements"
    ref_out, ref_lse = natten_like.block_sparse_attention(
        *(t.double() for t in low), mask, **kw, return_lse=True, backend="reference"
    )
    bar = (natten_like.block_sparse_attention(*low, mask, **kw, backend="reference").double() - ref_out).abs().max()
    err = (out.cpu().double() - ref_out).abs().max()
    assert err <= 2 * bar + 2e-3, f"out error {err:.2e} (PyTorch in {dtype}: {bar:.2e}) with {kw}"
    finite = ref_lse.isfinite()
    assert torch.equal(lse.cpu().isfinite(), finite)
    lse_err = (lse.cpu().double()[finite] - ref_lse[finite]).abs().max().item()
    assert lse_err <= 2e-3 * max(1.0, ref_lse[finite].abs().max().item()), f"lse error {lse_err:.2e} with {kw}"


@pytest.mark.parametrize("sm90", ["on", "off"])
@pytest.mark.parametrize("seed", range(8))
def test_random_masks_match_reference(monkeypatch: pytest.MonkeyPatch, seed: int, sm90: str) -> None:
    use_sm90(monkeypatch, sm90)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    rng = random.Random(seed)
    for dtype, dim, dim_v in sorted(cuda_backend.built_kernels("sm80_block_sparse_fwd"), key=str):
        g = torch.Generator().manual_seed(seed)
        b, kv_heads = rng.randint(1, 2), rng.randint(1, 2)
        h = kv_heads * rng.randint(1, 2)
        nq, nkv = rng.randint(1, 400), rng.randint(1, 400)
        qbs, kbs = rng.choice([16, 64, 128]), rng.choice([16, 64, 128])
        mb, mh = rng.choice([1, b]), rng.choice([1, h])
        mask = torch.rand(mb, mh, _ceil(nq, qbs), _ceil(nkv, kbs), generator=g) < rng.uniform(0.2, 0.9)
        mask[0, 0, 0] = False  # an empty query block: out 0, lse -inf
        q = torch.randn(b, nq, h, dim, generator=g, dtype=torch.float64)
        k, v = (torch.randn(b, nkv, kv_heads, d, generator=g, dtype=torch.float64) for d in (dim, dim_v))
        _run_and_check(q, k, v, mask, dtype, q_block=qbs, kv_block=kbs, is_causal=rng.random() < 0.5)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_varlen(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim = _square_kernels()[-1]
    g = torch.Generator().manual_seed(5)
    lens_q, lens_kv = [130, 0, 290, 80], [210, 60, 290, 30]
    cu_q, cu_kv = torch.tensor([0] + lens_q).cumsum(0), torch.tensor([0] + lens_kv).cumsum(0)
    h, hk, qbs, kbs = 4, 2, 64, 128
    mask = torch.rand(len(lens_q), h, _ceil(max(lens_q), qbs), _ceil(max(lens_kv), kbs), generator=g) < 0.6
    q = torch.randn(int(cu_q[-1]), h, dim, generator=g, dtype=torch.float64)
    k, v = (torch.randn(int(cu_kv[-1]), hk, dim, generator=g, dtype=torch.float64) for _ in "kv")
    kw = dict(q_block=qbs, kv_block=kbs, is_causal=causal, cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv)
    _run_and_check(q, k, v, mask, dtype, **kw)


def test_refuses_odd_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim = _square_kernels()[0]
    q = torch.randn(1, 192, 2, dim, dtype=dtype, device="cuda")
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool, device="cuda")
    with pytest.raises(natten_like.BackendNotSupportedError, match="multiple"):
        natten_like.block_sparse_attention(q, q, q, mask, q_block=96, kv_block=96, backend="cuda")
