"""Strided-shard attention (S2-Attention): the C++ policy against its torch-free twin (simulator/strided_shard.py), the
fused CPU kernel against the float64 reference (outputs, logsumexp, gradients), low precision, the KV-cache helper and
argument validation."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from natten_like.strided_shard import (
    is_kv_cache_efficient,
    strided_shard_attention,
    strided_shard_block_mask,
    validate_strided_shard,
)

EXTENDED = os.environ.get("NATTEN_LIKE_EXTENDED_TESTS") == "1"


def _params(heads: int, kv_heads: int, nq: int, nkv: int, **pattern: object):
    q = torch.empty(1, nq, heads, 4)
    k = torch.empty(1, nkv, kv_heads, 4)
    kw = dict(is_causal=True, homo_head=False, num_dense_heads=0, head_sliding_offset=0, scale=None)
    kw.update(pattern)
    return validate_strided_shard(q, k, k, **kw)


def _expected_visits(p) -> torch.Tensor:
    """[H, QB, KB] kinds from the twin: 0 skipped, 1 partial (causal diagonal or cut last KV block), 2 full."""
    kept = strided_shard_block_mask(p)
    first = (p.num_kv - p.num_q) // p.block_size
    bq = torch.arange(kept.shape[1])[:, None] + first
    bk = torch.arange(kept.shape[2])[None, :]
    partial = ((bq == bk) & p.is_causal) | ((bk + 1) * p.block_size > p.num_kv)
    return torch.where(kept, torch.where(partial, 1, 2), 0).to(torch.int64)


def _check_policy(heads, kv_heads, nq, nkv, block, local, stride, causal, homo, dense, offset) -> None:
    p = _params(
        heads,
        kv_heads,
        nq,
        nkv,
        block_size=block,
        local_blocks=local,
        vert_stride=stride,
        is_causal=causal,
        homo_head=homo,
        num_dense_heads=dense,
        head_sliding_offset=offset,
    )
    fwd, inv = torch.ops.natten_like.strided_shard_visits(heads, kv_heads, nq, nkv, *p.pattern_args())
    expected = _expected_visits(p)
    assert torch.equal(fwd, expected), (heads, kv_heads, nq, nkv, p.pattern_args())
    assert torch.equal(inv, expected.transpose(1, 2)), (heads, kv_heads, nq, nkv, p.pattern_args())


@pytest.mark.parametrize("causal", [False, True])
def test_policy_matches_twin(causal: bool) -> None:
    """Every kept block visited once, with the twin's full/partial flag, in both directions (exhaustive small grid)."""
    for (heads, kv_heads), (nq, nkv), block, local, stride, homo, offset in itertools.product(
        [(1, 1), (4, 2), (8, 8)], [(37, 37), (5, 41), (1, 16)], [4, 5], [1, 3], [1, 2, 5], [False, True], [0, 3]
    ):
        for dense in sorted({0, kv_heads // 2}):
            _check_policy(heads, kv_heads, nq, nkv, block, local, stride, causal, homo, dense, offset)


def test_heads_cover_the_context() -> None:
    """With step = vert_stride // H and H = vert_stride, the heads' vertical shards together hold every KV block."""
    p = _params(8, 8, 64, 64, block_size=4, local_blocks=1, vert_stride=8, is_causal=False)
    assert strided_shard_block_mask(p).any(0).all()
    one = _params(8, 8, 64, 64, block_size=4, local_blocks=1, vert_stride=8, is_causal=False, homo_head=True)
    assert not strided_shard_block_mask(one).any(0).all()


def _compare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, atol: float = 2e-4, **kw: object) -> None:
    """CPU kernel (float32) vs float64 reference: out, lse, dq, dk, dv (with a logsumexp gradient)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = strided_shard_attention(q, k, v, return_lse=True, backend="cpu", **kw)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_lse = strided_shard_attention(q64, k64, v64, return_lse=True, backend="reference", **kw)
    assert ref_lse.isfinite().all()  # S2 always keeps the diagonal block: every query sees a key
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=atol, rtol=0)
    grad_out, grad_lse = torch.randn_like(ref_out), torch.randn_like(ref_lse)
    torch.autograd.backward((ref_out, ref_lse), (grad_out, grad_lse))
    torch.autograd.backward((out, lse), (grad_out.float(), grad_lse.float()))
    for name, a, b in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=atol * 5, rtol=0, msg=f"{name} differs")


CASES = [
    # B, N_q, N_kv, H, H_kv, D, D_v, pattern
    (2, 70, 70, 4, 4, 16, 16, dict(block_size=8, local_blocks=2, vert_stride=4)),
    (1, 70, 70, 4, 2, 16, 8, dict(block_size=8, local_blocks=2, vert_stride=4, is_causal=False)),
    (2, 45, 45, 6, 2, 8, 12, dict(block_size=4, local_blocks=1, vert_stride=3, num_dense_heads=1)),
    (
        1,
        64,
        64,
        2,
        2,
        16,
        16,
        dict(block_size=16, local_blocks=1, vert_stride=2, homo_head=True, head_sliding_offset=1),
    ),
    (1, 7, 53, 4, 1, 16, 16, dict(block_size=8, local_blocks=2, vert_stride=3)),  # decode: queries at the end
    # A block far longer than the sequence: the CPU kernel's scratch is sized by the tokens there are, not the block.
    (1, 9, 9, 2, 2, 8, 8, dict(block_size=1 << 22, local_blocks=1, vert_stride=1)),
    (1, 1, 33, 2, 2, 8, 8, dict(block_size=4, local_blocks=1, vert_stride=2)),  # one query
    (1, 19, 50, 2, 1, 8, 8, dict(block_size=6, local_blocks=2, vert_stride=4, is_causal=False)),
    (1, 30, 30, 3, 3, 8, 8, dict(block_size=64, local_blocks=1, vert_stride=8)),  # one block
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case: tuple) -> None:
    b, nq, nkv, h, hk, d, dv, pattern = case
    gen = torch.Generator().manual_seed(nq * 1000 + nkv)
    q = torch.randn(b, nq, h, d, generator=gen)
    k = torch.randn(b, nkv, hk, d, generator=gen)
    v = torch.randn(b, nkv, hk, dv, generator=gen)
    _compare(q, k, v, **pattern)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype: torch.dtype) -> None:
    """Error in fp16/bf16 within a small factor of plain PyTorch's own error in that dtype."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 96, 4, 32, generator=gen) for _ in range(3))
    kw = dict(block_size=16, local_blocks=2, vert_stride=3)
    exact = strided_shard_attention(q.double(), k.double(), v.double(), backend="reference", **kw)
    low = [t.to(dtype) for t in (q, k, v)]
    torch_err = (strided_shard_attention(*low, backend="reference", **kw).double() - exact).abs().max()
    ours_err = (strided_shard_attention(*low, backend="cpu", **kw).double() - exact).abs().max()
    assert ours_err <= 2 * torch_err + 1e-3, (ours_err, torch_err)


def test_kv_cache_efficiency() -> None:
    """S2 patterns never re-attend a block they dropped; a relative stride (bq - bk) % s == 0 does."""
    for stride, homo in itertools.product([2, 3, 8], [False, True]):
        p = _params(4, 2, 100, 100, block_size=4, local_blocks=2, vert_stride=stride, homo_head=homo)
        assert is_kv_cache_efficient(strided_shard_block_mask(p), 4)
    bq, bk = torch.arange(20)[:, None], torch.arange(20)[None, :]
    relative = (bk <= bq) & ((bq - bk < 2) | ((bq - bk) % 4 == 0))
    assert not is_kv_cache_efficient(relative, 4)
    # Near the diagonal a block may join later (local attention grows): not a violation.
    assert is_kv_cache_efficient(bk <= bq, 4)
    with pytest.raises(ValueError, match="bool tensor"):
        is_kv_cache_efficient(relative.int(), 4)


def test_opcheck() -> None:
    """Fake implementation, schema and autograd registration of the compiled op agree with the kernel."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 20, 2, 8, generator=gen, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.natten_like.strided_shard_forward, (q, k, v, 4, 1, 2, True, False, 0, 0, 0.3))


@pytest.mark.skipif(not EXTENDED, reason="extended sweep: set NATTEN_LIKE_EXTENDED_TESTS=1")
@pytest.mark.parametrize("seed", range(20))
def test_random_sweep(seed: int) -> None:
    gen = torch.Generator().manual_seed(200 + seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    hk = pick(1, 3)
    h = hk * pick(1, 3)
    nkv = pick(1, 120)
    nq = pick(1, nkv)
    pattern = dict(
        block_size=pick(1, 20),
        local_blocks=pick(1, 4),
        vert_stride=pick(1, 6),
        is_causal=bool(pick(0, 1)),
        homo_head=bool(pick(0, 1)),
        num_dense_heads=pick(0, hk),
        head_sliding_offset=pick(0, 5),
    )
    _check_policy(
        h,
        hk,
        nq,
        nkv,
        *(
            pattern[n]
            for n in (
                "block_size",
                "local_blocks",
                "vert_stride",
                "is_causal",
                "homo_head",
                "num_dense_heads",
                "head_sliding_offset",
            )
        ),
    )
    q = torch.randn(pick(1, 2), nq, h, 8, generator=gen)
    k = torch.randn(q.shape[0], nkv, hk, 8, generator=gen)
    v = torch.randn(q.shape[0], nkv, hk, pick(1, 12), generator=gen)
    _compare(q, k, v, **pattern)


@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(block_size=0), ValueError, "block_size must be >= 1"),
        (dict(local_blocks=0), ValueError, "local_blocks must be >= 1"),
        (dict(vert_stride=0), ValueError, "vert_stride must be >= 1"),
        (dict(num_dense_heads=3), ValueError, "num_dense_heads must be in"),
        (dict(head_sliding_offset=-1), ValueError, "head_sliding_offset must be >= 0"),
        (dict(block_size=4.0), TypeError, "block_size must be an int"),
        (dict(homo_head=1), TypeError, "homo_head must be a bool"),
        (dict(q=torch.randn(1, 30, 2, 8)), ValueError, "N_q must be <= N_kv"),
        (dict(q=torch.randn(1, 20, 3, 8)), ValueError, "H % H_kv"),
        (dict(v=torch.randn(1, 21, 2, 8)), ValueError, "token count"),
        (dict(q=torch.randn(20, 2, 8)), ValueError, "4-D"),
        (dict(scale="x"), TypeError, "scale"),
    ],
)
def test_validation(over: dict, error: type, match: str) -> None:
    x = torch.randn(1, 20, 2, 8)
    kw = dict(
        q=x,
        k=x,
        v=x,
        block_size=4,
        local_blocks=1,
        vert_stride=2,
        is_causal=True,
        homo_head=False,
        num_dense_heads=0,
        head_sliding_offset=0,
        scale=None,
    )
    kw.update(over)
    with pytest.raises(error, match=match):
        validate_strided_shard(**kw)
