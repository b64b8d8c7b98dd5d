"""A NaN input never becomes a finite output: every family's fused kernels against the float64 reference with one NaN
element in q, k or v.

The failure this guards against: a query whose every score is NaN has row max -inf (NaN compares false), which the
online softmax took for "no key seen" and answered with output 0 and logsumexp -inf; the split-KV merges then dropped
such parts as empty. A NaN in q or k must give NaN exactly where dense attention gives NaN (out and lse); a NaN in v
must reach at least every query that attends that key. The CPU kernels and the flex backend run always; the CUDA
kernels where a GPU and they are there (the skip says which is missing).
"""

from __future__ import annotations

from collections.abc import Callable

import natten_like
import pytest
import torch
from helpers import cuda_skip_reason
from natten_like.backends import cuda as cuda_backend

NAN = float("nan")
Call = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]]


def _gna(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return natten_like.gna(q, k, v, (3, 5), (1, 2), (2, 1), (False, True), return_lse=True, backend=backend)


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (t.flatten(1, 2) for t in (q, k, v))
    out, lse = natten_like.attention(q, k, v, is_causal=True, return_lse=True, backend=backend)
    return out.unflatten(1, (9, 7)), lse.unflatten(1, (9, 7))


def _block_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (t.flatten(1, 2) for t in (q, k, v))
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1]], dtype=torch.bool)[None, None]
    out, lse = natten_like.block_sparse_attention(
        q, k, v, mask.to(q.device), q_block=16, kv_block=16, is_causal=True, return_lse=True, backend=backend
    )
    return out.unflatten(1, (9, 7)), lse.unflatten(1, (9, 7))


def _strided_shard(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (t.flatten(1, 2) for t in (q, k, v))
    out, lse = natten_like.strided_shard_attention(
        q, k, v, block_size=16, local_blocks=1, vert_stride=2, return_lse=True, backend=backend
    )
    return out.unflatten(1, (9, 7)), lse.unflatten(1, (9, 7))


FAMILIES: dict[str, Call] = {
    "gna": _gna,
    "dense": _dense,
    "block_sparse": _block_sparse,
    "strided_shard": _strided_shard,
}


def _setup(backend: str, kernel: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, torch.dtype]:
    """(device, dtype) the backend runs; skips a CUDA backend that cannot run here, saying why."""
    if backend in ("cpu", "flex"):  # flex: FlexAttention, eager on the CPU
        return "cpu", torch.float32
    reason = cuda_skip_reason(kernel)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    return "cuda", torch.bfloat16


NAN_AT = (0, 4, 3, 1)  # (batch, row, column, head) of the NaN element; its channel is dim // 2


def _inputs(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 q, k, v ``[1, 9, 7, 2, dim]`` (63 tokens flattened: odd tile edges)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 9, 7, 2, dim, generator=g, dtype=torch.float64) for _ in range(3))
    return q, k, v


def _with(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t[(*NAN_AT, t.shape[-1] // 2)] = value
    return t


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["cpu", "flex", "cuda"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nan_propagates(family: str, where: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = {"gna": "sm80_gna_fwd", "dense": "sm80_gna_fwd", "strided_shard": "sm80_s2_fwd"}.get(
        family, f"sm80_{family}_fwd"
    )
    if backend == "flex" and family == "dense":
        pytest.skip("attention() has no flex backend (dense attention is torch SDPA's)")
    device, dtype = _setup(backend, kernel, monkeypatch)
    call = FAMILIES[family]
    inputs = dict(zip("qkv", _inputs(32, seed=len(family) * 7 + len(where)), strict=True))
    poisoned = dict(inputs, **{where: _with(inputs[where], NAN)})
    with torch.no_grad():  # forward semantics (flex runs the CPU forward only)
        out, lse = call(*(poisoned[n].to(device, dtype) for n in "qkv"), backend)
    out, lse = out.double().cpu(), lse.double().cpu()
    if where in "qk":
        # A NaN score: NaN exactly where dense attention (the reference) is NaN, in out and lse.
        ref_out, ref_lse = call(*(poisoned[n] for n in "qkv"), "reference")
        assert ref_out.isnan().any(), "the case puts the NaN where some query attends it"
        assert torch.equal(lse.isnan(), ref_lse.isnan()), "lse is NaN exactly where dense attention's is"
        assert torch.equal(out.isnan(), ref_out.isnan()), "out is NaN exactly where dense attention's is"
        _close(out[~out.isnan()], ref_out[~ref_out.isnan()])
        _close(lse[~lse.isnan()], ref_lse[~ref_lse.isnan()])
        return
    # A NaN value: dense attention multiplies it by P = 0 for every query that does not attend its key too (NaN
    # everywhere in its channel); a kernel that skips the key's tile does not. Each query that attends the key (its
    # output moves when the value does) must be NaN; lse and the other channels are unaffected.
    ref_out, ref_lse = call(*(inputs[n] for n in "qkv"), "reference")
    moved, _ = call(inputs["q"], inputs["k"], _with(inputs["v"], inputs["v"][(*NAN_AT, 16)].item() + 1.0), "reference")
    attends = (moved - ref_out).abs() > 1e-12
    assert attends.any() and not attends.all()
    assert out[attends].isnan().all(), "a query that attends the NaN value has a finite output"
    assert not out[..., :16].isnan().any() and not out[..., 17:].isnan().any()
    assert not lse.isnan().any()
    _close(out[~out.isnan()], ref_out[~out.isnan()])
    _close(lse, ref_lse)


def test_nan_query_gradient_is_nan() -> None:
    """The backward of a NaN query row: its dq is NaN (a logsumexp of -inf made it 0, hiding the NaN from training)."""
    q, k, v = _inputs(8, seed=3)
    q = _with(q, NAN)
    grads = []
    for backend in ("reference", "cpu"):
        leaves = [t.float().requires_grad_() for t in (q, k, v)]
        out, lse = _gna(*leaves, backend)
        g = torch.Generator().manual_seed(5)
        weight = torch.randn(out.shape, generator=g)
        # NaN-free weights on the outputs: rows that are NaN take no part in the loss (their grad_out is 0).
        (torch.where(out.isnan(), 0.0, out) * weight).sum().backward()
        grads.append(leaves[0].grad)
    ref, ours = grads
    assert ref[NAN_AT].isnan().all()
    assert torch.equal(ours.isnan(), ref.isnan())
    torch.testing.assert_close(ours[~ours.isnan()], ref[~ref.isnan()], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("where", ["q", "cache"])
def test_latent_nan_propagates(where: str, num_splits: int, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLA decode, split-KV merge included: a NaN query row, or a NaN cache row every query sees."""
    device, dtype = _setup(backend, "sm80_latent_fwd", monkeypatch)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 2, 16, 576, generator=g, dtype=torch.float64)
    cache = torch.randn(2, 400, 576, generator=g, dtype=torch.float64)
    if where == "q":
        q[1, 0, 5, 7] = NAN
    else:
        cache[0, 250, 3] = NAN  # in the middle split's share of 400 rows
    seqlens = torch.tensor([400, 333])
    kw = dict(cache_seqlens=seqlens, is_causal=True, return_lse=True)
    ref_out, ref_lse = natten_like.latent_attention(q, cache, **kw, backend="reference")
    out, lse = natten_like.latent_attention(
        q.to(device, dtype), cache.to(device, dtype), **dict(kw, cache_seqlens=seqlens.to(device)),
        num_splits=num_splits, backend=backend,
    )  # fmt: skip
    out, lse = out.double().cpu(), lse.double().cpu()
    assert ref_out.isnan().any()
    assert torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(lse.isnan(), ref_lse.isnan())
    finite = ~ref_out.isnan()
    torch.testing.assert_close(out[finite], ref_out[finite], atol=3e-2, rtol=3e-2)


def test_merge_attentions_keeps_nan() -> None:
    """A NaN part's lse makes its rows NaN in the merge (it was -inf, i.e. dropped as a part without keys)."""
    out = torch.randn(2, 3, 4, 8)
    lse = torch.randn(2, 3, 4)
    lse_nan = lse.clone()
    lse_nan[1, 2, 3] = NAN
    merged, merged_lse = natten_like.merge_attentions([out, out.clone()], [lse, lse_nan])
    assert merged_lse[1, 2, 3].isnan() and merged[1, 2, 3].isnan().all()
    assert merged_lse.isnan().sum() == 1 and merged.isnan().sum() == 8
    empty = torch.full_like(lse, float("-inf"))
    _, lse_empty = natten_like.merge_attentions([out, out], [empty, empty])
    assert (lse_empty == float("-inf")).all()
