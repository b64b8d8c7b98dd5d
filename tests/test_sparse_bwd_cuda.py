"""The sm80 block-sparse and strided-shard (S2) CUDA backward against float64 autograd (needs a CUDA build with the
sm80 backward kernels of both families and a GPU of capability >= 8.0).

The ops are called directly (forward on the cuda backend's op, then the backward op with a random gradient through
out and through lse), so these run before the Python backends route autograd to the kernels. Random problems: block
sizes below, at and above the kernel's 64-row block, causal or not, GQA with per-query-head lists (full and partial)
for block-sparse, packed varlen sequences, dense heads and N_q < N_kv for S2; every built dtype and head dim. Gradients
are NaN-poisoned (NaN blocks of their sizes freed right before the backward, so the caching allocator hands them to
the outputs) so that every element must be written. The bar is plain PyTorch's error in the same dtype:
error <= 2 x that + 2e-3, against float64 autograd of backend="reference".
"""

from __future__ import annotations

import random

import natten_like
import pytest
import torch
from helpers import cuda_skip_reason
from natten_like.backends import cuda as cuda_backend

BS_KIND, S2_KIND = "sm80_block_sparse_bwd", "sm80_s2_bwd"


def _require(kind: str) -> list[tuple[torch.dtype, int, int]]:
    """(dtype, head dim D, head dim D_v) of the built kernels of ``kind``."""
    reason = cuda_skip_reason(kind)
    if reason is not None:
        pytest.skip(reason)
    return sorted(cuda_backend.built_kernels(kind), key=str)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _poisoned_backward(call, shapes: list[tuple[tuple[int, ...], torch.dtype]]) -> tuple[torch.Tensor, ...]:
    """Runs ``call()`` (the backward op) with NaN-filled blocks of the gradients' sizes freed right before it; checks
    that the gradients reuse them and hold no NaN."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    poison = [torch.full(s, float("nan"), dtype=d, device="cuda") for s, d in shapes]
    ptrs = {t.data_ptr() for t in poison}
    del poison
    grads = call()
    torch.cuda.synchronize()
    assert {g.data_ptr() for g in grads} == ptrs, "the NaN-filled blocks were not reused"
    for name, g in zip(("dq", "dk", "dv"), grads, strict=True):
        assert not g.isnan().any(), f"unwritten or NaN {name} elements"
    return grads


def _check(grads, inputs64: list[torch.Tensor], dtype: torch.dtype, run_reference, g_out, g_lse, what: str) -> None:
    """grads (cuda) against float64 autograd of the reference; the bar is the reference run in ``dtype``."""

    def reference_grads(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        leaves = [t.detach().requires_grad_() for t in tensors]
        out, lse = run_reference(*leaves)
        loss = (out.double() * g_out).sum() + (lse.double() * g_lse).sum()
        return list(torch.autograd.grad(loss, leaves))

    ref = reference_grads(inputs64)
    low = reference_grads([t.to(dtype) for t in inputs64])
    for name, got, r, lo in zip(("dq", "dk", "dv"), grads, ref, low, strict=True):
        bar = _max_error(lo, r)
        err = _max_error(got.cpu(), r)
        assert err <= 2 * bar + 2e-3, f"{name} error {err:.2e} (PyTorch in {dtype}: {bar:.2e}) in {what}"


def _split_lists(mask: torch.Tensor, full: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(kv_num, kv_idx, full_num, full_idx) of a kept-block mask split into partial (mask & ~full) and full blocks."""
    from natten_like.block_sparse import _lists_from_bool

    part, fl = _lists_from_bool(mask & ~full), _lists_from_bool(mask & full)
    return part.kv_num_blocks, part.kv_indices, fl.kv_num_blocks, fl.kv_indices


def _block_sparse_case(q64, k64, v64, lists, dtype, q_block, kv_block, causal, cu_q=None, cu_kv=None, seed=0) -> None:
    scale = q64.shape[-1] ** -0.5
    q, k, v = (t.to(dtype).cuda() for t in (q64, k64, v64))
    dev_lists = [t.cuda() for t in lists]
    cu = [None if t is None else t.cuda() for t in (cu_q, cu_kv)]
    geometry = (q_block, kv_block, causal, scale)
    out, lse = torch.ops.natten_like.block_sparse_forward(q, k, v, *dev_lists, *cu, *geometry)
    g = torch.Generator().manual_seed(seed + 1)
    g_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    # No gradient into the lse of rows without a key (-inf): as tests/test_block_sparse.py, the float64 autograd of
    # logsumexp has no finite value there.
    g_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64).masked_fill(~lse.cpu().isfinite(), 0.0)
    go, gl = g_out.to(dtype).cuda(), g_lse.float().cuda()  # before poisoning: not in the NaN blocks

    def call() -> tuple[torch.Tensor, ...]:
        return torch.ops.natten_like.block_sparse_backward(go, q, k, v, out, lse, gl, *dev_lists, *cu, *geometry)

    grads = _poisoned_backward(call, [(tuple(t.shape), dtype) for t in (q, k, v)])
    kw = dict(q_block=q_block, kv_block=kv_block, is_causal=causal, scale=scale, cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv)

    def reference(a, b, c):
        return natten_like.block_sparse_attention(a, b, c, tuple(lists), **kw, return_lse=True, backend="reference")

    _check(grads, [q64, k64, v64], dtype, reference, g_out, g_lse, f"block-sparse {kw}")


@pytest.mark.parametrize("seed", range(6))
def test_block_sparse_backward_matches_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    built = _require(BS_KIND)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    rng = random.Random(seed)
    for dtype, dim, dim_v in built:
        g = torch.Generator().manual_seed(seed)
        b, kv_heads = rng.randint(1, 2), rng.randint(1, 2)
        h = kv_heads * rng.randint(1, 3)
        nq, nkv = rng.randint(1, 300), rng.randint(1, 300)
        qbs, kbs = rng.choice([16, 64, 128]), rng.choice([16, 64, 128])
        mb, mh = rng.choice([1, b]), rng.choice([1, h])
        shape = (mb, mh, _ceil(nq, qbs), _ceil(nkv, kbs))
        mask = torch.rand(shape, generator=g) < rng.uniform(0.2, 0.9)
        mask[0, 0, 0] = False  # an empty query block: lse -inf, zero gradients
        full = torch.rand(shape, generator=g) < 0.5
        q = torch.randn(b, nq, h, dim, generator=g, dtype=torch.float64)
        k = torch.randn(b, nkv, kv_heads, dim, generator=g, dtype=torch.float64)
        v = torch.randn(b, nkv, kv_heads, dim_v, generator=g, dtype=torch.float64)
        lists = _split_lists(mask, full)
        _block_sparse_case(q, k, v, lists, dtype, qbs, kbs, rng.random() < 0.5, seed=seed)


@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse_backward_packed_varlen(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    dtype, dim, dim_v = _require(BS_KIND)[-1]
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    g = torch.Generator().manual_seed(5)
    lens_q, lens_kv = [130, 0, 200, 80], [210, 60, 200, 30]
    cu_q, cu_kv = torch.tensor([0] + lens_q).cumsum(0), torch.tensor([0] + lens_kv).cumsum(0)
    h, hk, qbs, kbs = 4, 2, 64, 128
    shape = (len(lens_q), h, _ceil(max(lens_q), qbs), _ceil(max(lens_kv), kbs))
    mask = torch.rand(shape, generator=g) < 0.6
    full = torch.rand(shape, generator=g) < 0.4
    q = torch.randn(int(cu_q[-1]), h, dim, generator=g, dtype=torch.float64)
    k = torch.randn(int(cu_kv[-1]), hk, dim, generator=g, dtype=torch.float64)
    v = torch.randn(int(cu_kv[-1]), hk, dim_v, generator=g, dtype=torch.float64)
    _block_sparse_case(q, k, v, _split_lists(mask, full), dtype, qbs, kbs, causal, cu_q, cu_kv, seed=7)


def _strided_shard_case(q64, k64, v64, pattern: dict, dtype: torch.dtype, seed: int) -> None:
    scale = q64.shape[-1] ** -0.5
    q, k, v = (t.to(dtype).cuda() for t in (q64, k64, v64))
    args = (*pattern.values(), scale)  # the ops' order: block_size ... head_sliding_offset, scale
    out, lse = torch.ops.natten_like.strided_shard_forward(q, k, v, *args)
    g = torch.Generator().manual_seed(seed + 1)
    g_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    g_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64)  # S2 keeps the diagonal: every lse is finite
    go, gl = g_out.to(dtype).cuda(), g_lse.float().cuda()

    def call() -> tuple[torch.Tensor, ...]:
        return torch.ops.natten_like.strided_shard_backward(go, q, k, v, out, lse, gl, *args)

    grads = _poisoned_backward(call, [(tuple(t.shape), dtype) for t in (q, k, v)])

    def reference(a, b, c):
        return natten_like.strided_shard_attention(
            a, b, c, **pattern, scale=scale, return_lse=True, backend="reference"
        )

    what = f"S2 {pattern} q {tuple(q.shape)} k {tuple(k.shape)}"
    _check(grads, [q64, k64, v64], dtype, reference, g_out, g_lse, what)


@pytest.mark.parametrize("seed", range(6))
def test_strided_shard_backward_matches_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    built = _require(S2_KIND)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    rng = random.Random(100 + seed)
    for dtype, dim, dim_v in built:
        block = rng.choice([16, 64, 128])
        nkv = rng.randint(1, 4 * block)
        kv_heads = rng.randint(1, 2)
        batch, heads, nq = rng.randint(1, 2), kv_heads * rng.randint(1, 3), rng.randint(1, nkv)
        pattern = dict(
            block_size=block, local_blocks=rng.randint(1, 3), vert_stride=rng.randint(1, 4),
            is_causal=rng.random() < 0.7, homo_head=rng.random() < 0.3, num_dense_heads=rng.randint(0, kv_heads),
            head_sliding_offset=rng.randint(0, 2),
        )  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(batch, nq, heads, dim, generator=g, dtype=torch.float64)
        k = torch.randn(batch, nkv, kv_heads, dim, generator=g, dtype=torch.float64)
        v = torch.randn(batch, nkv, kv_heads, dim_v, generator=g, dtype=torch.float64)
        _strided_shard_case(q, k, v, pattern, dtype, seed)


def test_empty_rows_with_a_nan_lse_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A query block with no listed key block (out 0, lse -inf) under logaddexp(lse, lse), whose gradient is NaN
    there: that row has no gradient in the reference, and its NaN must not reach the keys its Q tile visits (the
    backward's delta is 0 on rows of lse -inf). Through the public API and autograd."""
    dtype, dim, dim_v = _require(BS_KIND)[0]
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    g = torch.Generator().manual_seed(4)
    inputs = [torch.randn(1, 256, 2, d, generator=g, dtype=torch.float64).to(dtype) for d in (dim, dim, dim_v)]
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = False  # head 0's second query block sees nothing
    grads = {}
    for backend, device in (("cuda", "cuda"), ("reference", "cpu")):
        leaves = [(t.to(device) if backend == "cuda" else t.double()).requires_grad_() for t in inputs]
        out, lse = natten_like.block_sparse_attention(*leaves, mask, q_block=128, kv_block=128, return_lse=True,
                                                      backend=backend)  # fmt: skip
        assert lse[0, 128:, 0].isneginf().all()
        (out.double().square().sum() + torch.logaddexp(lse, lse).double().sum()).backward()
        grads[backend] = [t.grad.cpu().double() for t in leaves]
    for name, got, ref in zip(("dq", "dk", "dv"), grads["cuda"], grads["reference"], strict=True):
        assert not ref.isnan().any() and not got.isnan().any(), f"NaN in {name}"
        assert _max_error(got, ref) <= 3e-2 * max(1.0, ref.abs().max().item()), name
