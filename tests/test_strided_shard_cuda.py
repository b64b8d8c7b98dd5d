"""The sm80 strided-shard (S2) CUDA forward against the float64 reference (needs a CUDA build and a GPU >= sm80).

Random patterns (blocks below, at and above the kernel's 64-row block, causal or not, GQA, dense heads, N_q < N_kv),
every built dtype and head dim; outputs NaN-poisoned so that every element must be written; logsumexp checked too.
``bench/gpu_check.sh`` runs these.
"""

from __future__ import annotations

import random

import natten_like
import pytest
import torch
from helpers import cuda_skip_reason, use_sm90
from natten_like.backends import cuda as cuda_backend

SKIP = cuda_skip_reason("sm80_s2_fwd")
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def _case(rng: random.Random) -> dict:
    block = rng.choice([16, 64, 128])
    nkv = rng.randint(1, 5 * block)
    kv_heads = rng.randint(1, 2)
    return dict(
        batch=rng.randint(1, 2), heads=kv_heads * rng.randint(1, 2), kv_heads=kv_heads, nq=rng.randint(1, nkv),
        nkv=nkv, block_size=block, local_blocks=rng.randint(1, 3), vert_stride=rng.randint(1, 4),
        is_causal=rng.random() < 0.7, homo_head=rng.random() < 0.3, num_dense_heads=rng.randint(0, kv_heads),
        head_sliding_offset=rng.randint(0, 2),
    )  # fmt: skip


@pytest.mark.parametrize("sm90", ["on", "off"])
@pytest.mark.parametrize("seed", range(8))
def test_random_patterns_match_reference(monkeypatch: pytest.MonkeyPatch, seed: int, sm90: str) -> None:
    use_sm90(monkeypatch, sm90)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    rng = random.Random(seed)
    for dtype, dim, dim_v in sorted(cuda_backend.built_kernels("sm80_s2_fwd"), key=str):
        c = _case(rng)
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(c["batch"], c["nq"], c["heads"], dim, generator=g, dtype=torch.float64)
        k, v = (
            torch.randn(c["batch"], c["nkv"], c["kv_heads"], d, generator=g, dtype=torch.float64) for d in (dim, dim_v)
        )
        pattern = {n: c[n] for n in c if n not in ("batch", "heads", "kv_heads", "nq", "nkv")}
        low = [t.to(dtype) for t in (q, k, v)]
        args = [t.cuda() for t in low]
        # Free NaN-filled blocks of the outputs' sizes right before the call: the caching allocator hands them to the
        # outputs, so an element the kernel never writes stays NaN.
        torch.cuda.empty_cache()
        poison = [torch.full((*q.shape[:-1], dim_v), float("nan"), dtype=dtype, device="cuda"),
                  torch.full(q.shape[:-1], float("nan"), device="cuda")]  # fmt: skip
        ptrs = {t.data_ptr() for t in poison}
        del poison
        out, lse = natten_like.strided_shard_attention(*args, **pattern, return_lse=True, backend="cuda")
        torch.cuda.synchronize()
        assert {out.data_ptr(), lse.data_ptr()} == ptrs, "the NaN-filled blocks were not reused"
        assert not out.isnan().any() and not lse.isnan().any(), f"unwritten or NaN elements in {c}"
        ref_out, ref_lse = natten_like.strided_shard_attention(
            *(t.double() for t in low), **pattern, return_lse=True, backend="reference"
        )
        bar = (natten_like.strided_shard_attention(*low, **pattern, backend="reference").double() - ref_out).abs().max()
        err = (out.cpu().double() - ref_out).abs().max()
        assert err <= 2 * bar + 2e-3, f"out error {err:.2e} (PyTorch in {dtype}: {bar:.2e}) in {c}"
        finite = ref_lse.isfinite()
        assert torch.equal(lse.cpu().isfinite(), finite)
        lse_err = (lse.cpu().double()[finite] - ref_lse[finite]).abs().max().item()
        assert lse_err <= 2e-3 * max(1.0, ref_lse[finite].abs().max().item()), f"lse error {lse_err:.2e} in {c}"


def test_refuses_odd_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim = sorted(((dt, d) for dt, d, d_v in cuda_backend.built_kernels("sm80_s2_fwd") if d == d_v), key=str)[0]
    q = torch.randn(1, 200, 2, dim, dtype=dtype, device="cuda")
    pattern = dict(local_blocks=1, vert_stride=2)
    with pytest.raises(natten_like.BackendNotSupportedError, match="multiple"):
        natten_like.strided_shard_attention(q, q, q, block_size=96, **pattern, backend="cuda")
