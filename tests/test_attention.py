"""Dense ``attention`` (cpu and reference backends) and ``merge_attentions``, against float64 PyTorch SDPA."""

from __future__ import annotations

import natten_like
import pytest
import torch
import torch.nn.functional as F
from helpers import max_error


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """torch SDPA on heads-last tensors with KV heads repeated for GQA; mask [N_q, N_kv] bool (True = visible)."""
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask).transpose(1, 2)


def _forward_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, is_causal: bool, dtype: torch.dtype
) -> list[torch.Tensor]:
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out, lse = natten_like.attention(*leaves, is_causal=is_causal, return_lse=True, backend=backend)
    grad_out = _randn(*out.shape, seed=9, dtype=out.dtype)
    grad_lse = _randn(*lse.shape, seed=10, dtype=lse.dtype)
    grads = torch.autograd.grad((out * grad_out).sum() + (lse * grad_lse).sum(), leaves)
    return [out.detach(), lse.detach(), *grads]


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("n", "heads", "kv_heads", "dim_v"), [(1, 2, 2, 8), (37, 2, 2, 8), (70, 4, 1, 5)])
def test_cpu_self_attention_matches_reference(n: int, heads: int, kv_heads: int, dim_v: int, is_causal: bool) -> None:
    q, k, v = _randn(2, n, heads, 8, seed=0), _randn(2, n, kv_heads, 8, seed=1), _randn(2, n, kv_heads, dim_v, seed=2)
    expected = _forward_backward(q, k, v, "reference", is_causal, torch.float64)
    actual = _forward_backward(q, k, v, "cpu", is_causal, torch.float32)
    for name, a, e in zip(("out", "lse", "dq", "dk", "dv"), actual, expected, strict=True):
        assert a.shape == e.shape and torch.isfinite(a).all(), name
        assert max_error(a, e) < 1e-5, name


@pytest.mark.parametrize(("n_q", "n_kv"), [(9, 9), (4, 11), (11, 4)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_reference_is_sdpa_with_bottom_right_causal(n_q: int, n_kv: int, is_causal: bool) -> None:
    q, k, v = _randn(2, n_q, 4, 6, seed=0), _randn(2, n_kv, 2, 6, seed=1), _randn(2, n_kv, 2, 3, seed=2)
    out, lse = natten_like.attention(q, k, v, is_causal=is_causal, return_lse=True)
    mask = None
    if is_causal:
        mask = torch.ones(n_q, n_kv, dtype=torch.bool).tril(diagonal=n_kv - n_q)
    visible = mask.any(-1) if mask is not None else torch.ones(n_q, dtype=torch.bool)
    expected = _sdpa(q, k, v, mask)
    # Queries that see no key (causal, N_q > N_kv) give 0 and lse = -inf where SDPA gives NaN.
    torch.testing.assert_close(out[:, visible], expected[:, visible])
    assert (out[:, ~visible] == 0).all() and (lse[:, ~visible] == float("-inf")).all()
    assert lse.dtype == torch.float64


def test_queries_without_keys_have_finite_gradients() -> None:
    # Causal with N_q = 6 > N_kv = 3, bottom-right aligned: queries 0-2 see no key.
    q, k, v = (
        _randn(1, 6, 2, 4, seed=0).requires_grad_(),
        _randn(1, 3, 2, 4, seed=1).requires_grad_(),
        _randn(1, 3, 2, 4, seed=2),
    )
    out, lse = natten_like.attention(q, k, v, is_causal=True, return_lse=True)
    finite_lse = torch.where(torch.isinf(lse), 0.0, lse)
    dq, dk = torch.autograd.grad(out.sum() + finite_lse.sum(), (q, k))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all()
    assert (dq[:, :3] == 0).all()


def test_no_keys_at_all() -> None:
    q = _randn(2, 5, 2, 4, seed=0)
    k, v = q.new_empty(2, 0, 2, 4), q.new_empty(2, 0, 2, 3)
    out, lse = natten_like.attention(q, k, v, return_lse=True)
    assert out.shape == (2, 5, 2, 3) and (out == 0).all() and (lse == float("-inf")).all()


def test_auto_dispatch_gives_the_cpu_result_for_self_attention() -> None:
    q, k, v = (_randn(1, 10, 2, 4, seed=s, dtype=torch.float32) for s in range(3))
    auto = natten_like.attention(q, k, v, is_causal=True)
    torch.testing.assert_close(auto, natten_like.attention(q, k, v, is_causal=True, backend="cpu"), rtol=0, atol=0)


# ---- merge_attentions ----


def _partials(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cuts: list[int]) -> tuple[list, list]:
    outs, lses = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        o, lse = natten_like.attention(q, k[:, lo:hi], v[:, lo:hi], return_lse=True)
        outs.append(o)
        lses.append(lse)
    return outs, lses


@pytest.mark.parametrize("cuts", [[0, 13], [0, 4, 9, 13], [0, 0, 6, 13, 13]], ids=["one", "three", "with-empty"])
def test_merge_of_key_splits_is_full_attention(cuts: list[int]) -> None:
    q = _randn(2, 7, 2, 5, seed=0).requires_grad_()
    k, v = _randn(2, 13, 2, 5, seed=1).requires_grad_(), _randn(2, 13, 2, 4, seed=2).requires_grad_()
    full_out, full_lse = natten_like.attention(q, k, v, return_lse=True)
    out, lse = natten_like.merge_attentions(*_partials(q, k, v, cuts))
    torch.testing.assert_close(out, full_out)
    torch.testing.assert_close(lse, full_lse)
    g_out, g_lse = _randn(*out.shape, seed=3), _randn(*lse.shape, seed=4)
    grads = torch.autograd.grad((out * g_out).sum() + (lse * g_lse).sum(), (q, k, v))
    full_grads = torch.autograd.grad((full_out * g_out).sum() + (full_lse * g_lse).sum(), (q, k, v))
    for g, fg in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(g, fg)


def test_merge_is_stable_for_large_lse_and_rows_without_keys() -> None:
    outs = [_randn(3, 2, 4, seed=s).requires_grad_() for s in range(2)]
    inf = float("-inf")
    lses = [
        torch.tensor([[1000.0, inf], [inf, inf], [-1000.0, 5.0]], dtype=torch.float64, requires_grad=True),
        torch.tensor([[999.0, 2.0], [inf, inf], [-1001.0, inf]], dtype=torch.float64, requires_grad=True),
    ]
    out, lse = natten_like.merge_attentions(outs, lses)
    w = 1 / (1 + torch.exp(torch.tensor(-1.0, dtype=torch.float64)))  # weight of the part 1 larger in lse
    torch.testing.assert_close(out[0, 0], w * outs[0][0, 0] + (1 - w) * outs[1][0, 0])
    torch.testing.assert_close(out[0, 1], outs[1][0, 1])
    assert (out[1] == 0).all() and (lse[1] == inf).all()
    torch.testing.assert_close(lse[2, 1], torch.tensor(5.0, dtype=torch.float64))
    grads = torch.autograd.grad(out.sum() + torch.where(torch.isinf(lse), 0.0, lse).sum(), outs + lses)
    assert all(torch.isfinite(g).all() for g in grads)


def test_merge_gradcheck() -> None:
    outs = tuple(_randn(2, 3, 4, seed=s).requires_grad_() for s in range(3))
    lses = tuple(_randn(2, 3, seed=10 + s).requires_grad_() for s in range(3))
    assert torch.autograd.gradcheck(lambda *t: natten_like.merge_attentions(t[:3], t[3:]), outs + lses)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_merge_keeps_the_output_dtype_and_accumulates_wide(dtype: torch.dtype) -> None:
    q, k, v = (_randn(1, 8, 2, 16, seed=s) for s in range(3))
    full = natten_like.attention(q, k, v)
    outs, lses = _partials(q, k, v, [0, 3, 8])
    out, lse = natten_like.merge_attentions([o.to(dtype) for o in outs], [x.float() for x in lses])
    assert out.dtype == dtype and lse.dtype == torch.float32
    # Merging adds no more than one rounding to the output dtype on top of the inputs' own rounding.
    eps = torch.finfo(dtype).eps
    assert max_error(out, full) < 4 * eps
