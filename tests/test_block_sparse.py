"""Block-sparse attention: the fused CPU kernel against the float64 dense reference (outputs, logsumexp, gradients), the
FlexAttention peer with the same BlockMask, packed variable-length batches, low precision and argument validation."""

from __future__ import annotations

import os

import pytest
import torch
from natten_like.block_sparse import (
    block_sparse_attention,
    from_flex_block_mask,
    to_flex_block_mask,
    validate_block_sparse,
)
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from simulator.block_sparse import block_pairs

EXTENDED = os.environ.get("NATTEN_LIKE_EXTENDED_TESTS") == "1"


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _random_mask(b: int, h: int, qb: int, kb: int, density: float, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(b, h, qb, kb, generator=gen) < density
    mask[0, 0, 0] = False  # one empty query block: zeros, lse -inf
    if qb > 1:
        mask[-1, -1, 1] = True  # one full row
    return mask


def _compressed(mask: torch.Tensor, full: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """FlexAttention-style lists of a bool block mask (indices in shuffled order, int32), plus full lists if given."""

    def lists(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = m.sum(-1).to(torch.int32)
        order = torch.argsort((~m).to(torch.int8) + torch.rand(m.shape), dim=-1).to(torch.int32)  # kept first, shuffled
        return num, order

    out = lists(mask)
    return out + lists(full) if full is not None else out


def _compare(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: object,
    atol: float = 2e-4,
    **kwargs: object,
) -> None:
    """CPU kernel (float32) vs float64 reference: out, lse (incl. -inf rows), dq, dk, dv (with a logsumexp gradient)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = block_sparse_attention(q, k, v, block_mask, return_lse=True, backend="cpu", **kwargs)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_lse = block_sparse_attention(q64, k64, v64, block_mask, return_lse=True, backend="reference", **kwargs)
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=0)
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    finite = ref_lse.isfinite()
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=atol, rtol=0)
    grad_out = torch.randn_like(ref_out)
    grad_lse = torch.randn_like(ref_lse).masked_fill(~finite, 0.0)
    torch.autograd.backward((ref_out, ref_lse), (grad_out, grad_lse))
    torch.autograd.backward((out, lse), (grad_out.float(), grad_lse.float()))
    for name, a, b in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=atol * 5, rtol=0, msg=f"{name} differs")


CASES = [
    # B, N_q, N_kv, H, H_kv, D, D_v, q_block, kv_block, causal, mask batch/head (1 = broadcast), density
    (2, 37, 53, 4, 2, 16, 8, 8, 16, False, (2, 4), 0.5),
    (2, 37, 53, 4, 2, 16, 8, 8, 16, True, (2, 4), 0.5),
    (1, 64, 64, 2, 1, 16, 24, 16, 16, True, (1, 1), 0.6),
    (2, 30, 70, 3, 3, 8, 8, 4, 7, True, (1, 3), 0.7),
    (1, 1, 19, 2, 1, 8, 8, 16, 5, True, (1, 2), 1.0),  # single query (decode), one query block
    (2, 50, 50, 2, 2, 12, 12, 64, 64, False, (2, 1), 1.0),  # one block each way, blocks larger than the sequence
    (1, 33, 17, 2, 1, 8, 4, 3, 2, False, (1, 2), 0.3),  # N_q > N_kv, tiny blocks
    (1, 33, 17, 2, 1, 8, 4, 3, 2, True, (1, 2), 0.8),  # causal with N_q > N_kv: first queries see nothing
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case: tuple) -> None:
    b, nq, nkv, h, hk, d, dv, qbs, kbs, causal, (mb, mh), density = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    mask = _random_mask(mb, mh, _ceil(nq, qbs), _ceil(nkv, kbs), density, gen)
    q = torch.randn(b, nq, h, d, generator=gen)
    k = torch.randn(b, nkv, hk, d, generator=gen)
    v = torch.randn(b, nkv, hk, dv, generator=gen)
    _compare(q, k, v, mask, q_block=qbs, kv_block=kbs, is_causal=causal)
    _compare(q, k, v, _compressed(mask), q_block=qbs, kv_block=kbs, is_causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_policy_matches_simulator(causal: bool) -> None:
    """The C++ policy visits exactly the blocks the simulator counts: listed blocks holding an attended pair, full iff
    every pair is attended and the block holds kv_block keys (full-list blocks: iff uncut); the inverse is the
    transpose."""
    gen = torch.Generator().manual_seed(17)
    for nq, nkv, qbs, kbs in [(37, 53, 8, 16), (53, 37, 16, 8), (64, 64, 16, 16), (1, 30, 4, 7), (30, 1, 7, 4)]:
        qb, kb = _ceil(nq, qbs), _ceil(nkv, kbs)
        partial = torch.rand(2, 3, qb, kb, generator=gen) < 0.5
        full = (torch.rand(2, 1, qb, kb, generator=gen) < 0.3) & ~partial
        lists = [t.to(torch.int64) for t in _compressed(partial, full)]
        for n, i in ((0, 1), (2, 3)):  # listed blocks in random order, unlisted slots garbage: the order is free
            listed = torch.arange(lists[i].shape[-1]) < lists[n][..., None]
            order = torch.where(listed, torch.rand(lists[i].shape, generator=gen), 2.0).argsort(-1)
            lists[i] = torch.where(listed, lists[i].gather(-1, order), -7)
        fwd, inv = torch.ops.natten_like.block_sparse_visits(*lists, nq, nkv, qbs, kbs, causal)
        pairs = torch.from_numpy(block_pairs(nq, nkv, qbs, kbs, causal))
        rows = torch.minimum(torch.arange(1, qb + 1) * qbs, torch.tensor(nq)) - torch.arange(qb) * qbs
        uncut = (torch.arange(1, kb + 1) * kbs <= nkv)[None, :]
        all_pairs = pairs == rows[:, None] * kbs  # every pair attended and kv_block keys
        expected = torch.where(partial & (pairs > 0), torch.where(all_pairs, 2, 1), 0)
        expected = torch.where(full, torch.where(uncut, 2, 1), expected)
        assert torch.equal(fwd, expected), (nq, nkv, qbs, kbs)
        assert torch.equal(inv, expected.transpose(-1, -2)), (nq, nkv, qbs, kbs)


def test_large_scores() -> None:
    """Scores in the thousands: the online-softmax rescaling neither overflows nor produces NaN."""
    gen = torch.Generator().manual_seed(19)
    mask = _random_mask(1, 2, 4, 4, 0.6, gen)
    q, k, v = (torch.randn(1, 30, 2, 16, generator=gen) for _ in range(3))
    _compare(q * 30, k * 30, v, mask, atol=2e-3, q_block=8, kv_block=8, is_causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_full_lists(causal: bool) -> None:
    """Blocks of the full list skip the element mask (so causal does not apply to them)."""
    gen = torch.Generator().manual_seed(3)
    b, h, nq, nkv, qbs, kbs = 2, 2, 45, 45, 8, 8
    partial = _random_mask(b, h, _ceil(nq, qbs), _ceil(nkv, kbs), 0.4, gen)
    full = (torch.rand(partial.shape, generator=gen) < 0.4) & ~partial
    q, k, v = (torch.randn(b, nq, h, 16, generator=gen) for _ in range(3))
    _compare(q, k, v, _compressed(partial, full), q_block=qbs, kv_block=kbs, is_causal=causal)


def test_full_list_differs_from_partial_under_causal() -> None:
    """A diagonal block listed as full attends its upper triangle too: the two lists are not interchangeable."""
    q, k, v = (torch.randn(1, 16, 1, 8) for _ in range(3))
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    num, idx = _compressed(mask)
    none = (torch.zeros_like(num), torch.zeros_like(idx))
    as_partial = block_sparse_attention(q, k, v, (num, idx) + none, q_block=16, kv_block=16, is_causal=True)
    as_full = block_sparse_attention(q, k, v, none + (num, idx), q_block=16, kv_block=16, is_causal=True)
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    causal = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), is_causal=True
    ).transpose(1, 2)
    torch.testing.assert_close(as_full, dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(as_partial, causal, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_varlen(causal: bool) -> None:
    """Packed sequences of unequal lengths (one empty) equal the reference and the unpacked calls, per sequence."""
    gen = torch.Generator().manual_seed(5)
    lens_q, lens_kv = [13, 0, 29, 8], [21, 6, 29, 3]
    cu_q = torch.tensor([0] + lens_q).cumsum(0)
    cu_kv = torch.tensor([0] + lens_kv).cumsum(0, dtype=torch.int32)
    h, hk, qbs, kbs = 4, 2, 8, 4
    mask = _random_mask(len(lens_q), h, _ceil(max(lens_q), qbs), _ceil(max(lens_kv), kbs), 0.6, gen)
    q = torch.randn(int(cu_q[-1]), h, 16, generator=gen)
    k = torch.randn(int(cu_kv[-1]), hk, 16, generator=gen)
    v = torch.randn(int(cu_kv[-1]), hk, 8, generator=gen)
    kw = dict(q_block=qbs, kv_block=kbs, is_causal=causal, cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv)
    _compare(q, k, v, mask, **kw)
    out = block_sparse_attention(q, k, v, mask, **kw)
    for s in range(len(lens_q)):
        if lens_q[s] == 0:
            continue
        qs, ks, vs = q[cu_q[s] : cu_q[s + 1]][None], k[cu_kv[s] : cu_kv[s + 1]][None], v[cu_kv[s] : cu_kv[s + 1]][None]
        ms = mask[s : s + 1, :, : _ceil(lens_q[s], qbs), : _ceil(lens_kv[s], kbs)]
        one = block_sparse_attention(qs, ks, vs, ms, q_block=qbs, kv_block=kbs, is_causal=causal)
        torch.testing.assert_close(out[cu_q[s] : cu_q[s + 1]], one[0], atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("causal", [False, True])
def test_equals_flex_attention(causal: bool) -> None:
    """Same BlockMask, same result as torch's FlexAttention (eager on the CPU); and the BlockMask conversions."""
    gen = torch.Generator().manual_seed(7)
    b, h, n, qbs, kbs = 2, 2, 48, 16, 8
    blocks = _random_mask(b, h, n // qbs, n // kbs, 0.5, gen)
    blocks[0, 0, 0] = True  # flex returns NaN-free zeros for empty rows only in recent versions: keep rows non-empty
    blocks[..., 0] = True

    def mask_mod(bi: torch.Tensor, hi: torch.Tensor, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        keep = blocks[bi, hi, qi // qbs, ki // kbs]
        return keep & (qi >= ki) if causal else keep

    flex_mask = create_block_mask(mask_mod, b, h, n, n, device="cpu", BLOCK_SIZE=(qbs, kbs))
    q, k, v = (torch.randn(b, n, h, 16, generator=gen) for _ in range(3))
    expected = flex_attention(*(t.transpose(1, 2) for t in (q, k, v)), block_mask=flex_mask).transpose(1, 2)
    ours = block_sparse_attention(q, k, v, flex_mask, is_causal=causal)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)

    # Eager FlexAttention evaluates only the mask_mod, so the conversions are checked on the block lists themselves.
    lists, qb, kb = from_flex_block_mask(flex_mask)
    assert (qb, kb) == (qbs, kbs)
    given = tuple(t for t in lists.as_op_args() if t is not None)
    back = to_flex_block_mask(given, n, n, q_block=qbs, kv_block=kbs, is_causal=causal)
    assert torch.equal(back.to_dense(), flex_mask.to_dense())
    plain = to_flex_block_mask(blocks, n, n, q_block=qbs, kv_block=kbs, is_causal=causal)
    assert torch.equal(plain.to_dense().bool(), blocks)
    qi, ki = torch.tensor(5), torch.tensor(9)
    assert bool(plain.mask_mod(torch.tensor(0), torch.tensor(0), qi, ki)) is not causal


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_block_mask_mod_must_match_the_element_mask() -> None:
    """A BlockMask's mask_mod is FlexAttention's element mask on its partial blocks; the kernels apply none or the
    causal one there, so a mask_mod that means anything else is refused (it was ignored: a sliding window came out
    2.4 off FlexAttention's answer), and one that agrees gives FlexAttention's result."""
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 64, 2, 16, generator=gen), torch.randn(1, 256, 2, 16, generator=gen)

    def window(b: torch.Tensor, h: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (i - j).abs() <= 4

    def top_left_causal(b: torch.Tensor, h: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return i >= j

    evaluations = [0]

    def counted_causal(b: torch.Tensor, h: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        evaluations[0] += 1  # (a side effect FlexAttention itself would refuse to trace)
        return i >= j

    sliding = create_block_mask(window, None, None, 64, 64, device="cpu", BLOCK_SIZE=32)
    for causal in (False, True):
        with pytest.raises(ValueError, match="mask_mod disagrees with is_causal"):
            block_sparse_attention(q, q, q, sliding, is_causal=causal)
    # FlexAttention's causal mask_mod is top-left aligned; this module's causal mask aligns queries to the end of the
    # keys (decode): with N_q != N_kv they differ.
    cross = create_block_mask(top_left_causal, None, None, 64, 256, device="cpu", BLOCK_SIZE=32)
    with pytest.raises(ValueError, match="mask_mod disagrees"):
        block_sparse_attention(q, k, k, cross, is_causal=True)
    square = create_block_mask(top_left_causal, None, None, 64, 64, device="cpu", BLOCK_SIZE=32)
    with pytest.raises(ValueError, match="is_causal=False"):
        block_sparse_attention(q, q, q, square, is_causal=False)
    expected = flex_attention(*(t.transpose(1, 2) for t in (q, q, q)), block_mask=square).transpose(1, 2)
    square = create_block_mask(counted_causal, None, None, 64, 64, device="cpu", BLOCK_SIZE=32)
    counts = []
    for change_lists in (False, False, True):
        if change_lists:
            square.kv_indices.add_(0)  # an in-place change (same values): the verdict is made again
        before = evaluations[0]
        torch.testing.assert_close(block_sparse_attention(q, q, q, square, is_causal=True), expected, atol=1e-5, rtol=0)
        counts.append(evaluations[0] - before)
    assert counts[0] > 0 and counts[1] == 0 and counts[2] > 0, counts

    # Lists without a mask_mod (noop): is_causal=True agrees only where the causal mask keeps whole blocks.
    def lists_mask(first_row_count: int, second_row_block: int) -> BlockMask:
        counts = torch.tensor([[[first_row_count, 1]]], dtype=torch.int32)
        blocks = torch.tensor([[[[0], [second_row_block]]]], dtype=torch.int32)  # query block 1 lists one block
        return BlockMask.from_kv_blocks(counts, blocks, BLOCK_SIZE=32, seq_lengths=(64, 64))

    below, diagonal = lists_mask(0, 0), lists_mask(1, 1)
    block_sparse_attention(q, q, q, below, is_causal=True)
    block_sparse_attention(q, q, q, diagonal, is_causal=False)
    with pytest.raises(ValueError, match="mask_mod disagrees with is_causal=True"):
        block_sparse_attention(q, q, q, diagonal, is_causal=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype: torch.dtype) -> None:
    """Error in fp16/bf16 within a small factor of plain PyTorch's own error in that dtype."""
    gen = torch.Generator().manual_seed(11)
    b, h, n, qbs, kbs = 1, 2, 96, 16, 32
    mask = _random_mask(b, h, n // qbs, n // kbs, 0.5, gen)
    q, k, v = (torch.randn(b, n, h, 32, generator=gen) for _ in range(3))
    kw = dict(q_block=qbs, kv_block=kbs, is_causal=True)
    exact = block_sparse_attention(q.double(), k.double(), v.double(), mask, backend="reference", **kw)
    low = [t.to(dtype) for t in (q, k, v)]
    torch_err = (block_sparse_attention(*low, mask, backend="reference", **kw).double() - exact).abs().max()
    ours_err = (block_sparse_attention(*low, mask, backend="cpu", **kw).double() - exact).abs().max()
    assert ours_err <= 2 * torch_err + 1e-3, (ours_err, torch_err)


def test_opcheck() -> None:
    """Fake implementation, schema and autograd registration of the compiled op agree with the kernel."""
    gen = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 20, 2, 8, generator=gen, requires_grad=True) for _ in range(3))
    num, idx = (t.to(torch.int64) for t in _compressed(torch.rand(1, 2, 3, 3, generator=gen) < 0.7))
    args = (q, k, v, num, idx, None, None, None, None, 8, 8, True, 0.3)
    torch.library.opcheck(torch.ops.natten_like.block_sparse_forward, args)


def test_op_refuses_repeated_blocks() -> None:
    """The compiled op, called directly (the Python API refuses these first): a KV block listed twice in a query block's
    list, or in both its partial and full lists, would count its keys twice (and overflow the backward's transposed
    lists), so the op refuses it."""
    q, k, v = (torch.randn(1, 32, 2, 8) for _ in range(3))

    def forward(num, idx, full_num=None, full_idx=None):
        return torch.ops.natten_like.block_sparse_forward(q, k, v, num, idx, full_num, full_idx, None, None, 16, 16,
                                                          False, 0.3)  # fmt: skip

    num = torch.tensor([[[2, 1]]])  # [1, 1, QB = 2]
    with pytest.raises(RuntimeError, match="KV block 1 twice in a row"):
        forward(num, torch.tensor([[[[1, 1], [0, 0]]]]))  # query block 0 lists block 1 twice
    idx = torch.tensor([[[[1, 0], [0, 0]]]])
    with pytest.raises(RuntimeError, match="KV block 0 is in both the partial and the full list of query block 1"):
        forward(num, idx, torch.tensor([[[0, 1]]]), torch.tensor([[[[0], [0]]]]))
    # Per-head full lists against broadcast partial ones: head 1's query block 1 takes block 1 (fine), then block 0.
    full_num = torch.tensor([[[0, 0], [0, 1]]])  # [1, H = 2, QB = 2]
    assert forward(num, idx, full_num, torch.tensor([[[[0], [0]], [[0], [1]]]]))[0].isfinite().all()
    with pytest.raises(RuntimeError, match="in both the partial and the full list of query block 1"):
        forward(num, idx, full_num, torch.tensor([[[[0], [0]], [[0], [0]]]]))


@pytest.mark.skipif(not EXTENDED, reason="extended sweep: set NATTEN_LIKE_EXTENDED_TESTS=1")
@pytest.mark.parametrize("seed", range(20))
def test_random_sweep(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    b, hk = pick(1, 3), pick(1, 3)
    h = hk * pick(1, 3)
    nq, nkv, qbs, kbs = pick(1, 150), pick(1, 150), pick(1, 40), pick(1, 40)
    causal = bool(pick(0, 1))
    mask = _random_mask(b, h, _ceil(nq, qbs), _ceil(nkv, kbs), torch.rand(1, generator=gen).item(), gen)
    q = torch.randn(b, nq, h, 16, generator=gen)
    k = torch.randn(b, nkv, hk, 16, generator=gen)
    v = torch.randn(b, nkv, hk, pick(1, 20), generator=gen)
    _compare(q, k, v, mask, q_block=qbs, kv_block=kbs, is_causal=causal)


def _args(**over: object) -> dict:
    q = torch.randn(1, 20, 2, 8)
    base = dict(
        q=q,
        k=q.clone(),
        v=q.clone(),
        block_mask=torch.ones(1, 1, 3, 3, dtype=torch.bool),
        q_block=8,
        kv_block=8,
        is_causal=False,
        scale=None,
        cu_seqlens_q=None,
        cu_seqlens_kv=None,
    )
    base.update(over)
    return base


@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(block_mask=torch.ones(1, 1, 3, 4, dtype=torch.bool)), ValueError, "KB=3"),
        (dict(block_mask=torch.ones(1, 1, 3, 3)), TypeError, "bool tensor"),
        (dict(block_mask=torch.ones(2, 1, 3, 3, dtype=torch.bool)), ValueError, "batch dim 1 or 1"),
        (dict(block_mask="dense"), TypeError, "block_mask must be"),
        (
            dict(block_mask=(torch.full((1, 1, 3), 2), torch.zeros(1, 1, 3, 2, dtype=torch.long))),
            ValueError,
            "twice",
        ),
        (
            dict(block_mask=(torch.ones(1, 1, 3, dtype=torch.long), torch.full((1, 1, 3, 1), 3))),
            ValueError,
            r"\[0, KB=3\)",
        ),
        (
            dict(block_mask=(torch.full((1, 1, 3), 2), torch.zeros(1, 1, 3, 1, dtype=torch.long))),
            ValueError,
            "num_blocks",
        ),
        (
            dict(block_mask=(torch.ones(1, 1, 3, dtype=torch.long), torch.zeros(1, 1, 3, 1))),
            TypeError,
            "int32 or int64",
        ),
        (dict(q_block=0), ValueError, "q_block and kv_block must be >= 1"),
        (dict(q_block=8.0), TypeError, "q_block must be an int"),
        (dict(is_causal=1), TypeError, "is_causal must be a bool"),
        (dict(k=torch.randn(1, 20, 3, 8), v=torch.randn(1, 20, 3, 8)), ValueError, "H % H_kv"),
        (dict(k=torch.randn(1, 20, 2, 4)), ValueError, "head dim"),
        (dict(v=torch.randn(1, 21, 2, 8)), ValueError, "token count"),
        (dict(v=torch.randn(1, 20, 2, 8).double()), TypeError, "dtype"),
        (dict(cu_seqlens_q=torch.tensor([0, 20])), ValueError, "together"),
        (dict(block_mask=torch.ones(1, 1, 3, 3, dtype=torch.bool, device="meta")), ValueError, "meta device"),
    ],
)
def test_validation(over: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        validate_block_sparse(**_args(**over))


def test_validation_packed() -> None:
    q = torch.randn(20, 2, 8)
    cu = torch.tensor([0, 5, 20])
    kw = dict(
        q=q,
        k=q,
        v=q,
        block_mask=torch.ones(2, 1, 2, 2, dtype=torch.bool),
        q_block=8,
        kv_block=8,
        is_causal=False,
        scale=None,
    )
    validate_block_sparse(**kw, cu_seqlens_q=cu, cu_seqlens_kv=cu)
    with pytest.raises(ValueError, match="end at the packed length"):
        validate_block_sparse(**kw, cu_seqlens_q=torch.tensor([0, 5, 19]), cu_seqlens_kv=cu)
    with pytest.raises(ValueError, match="non-decreasing"):
        validate_block_sparse(**kw, cu_seqlens_q=torch.tensor([0, 25, 20]), cu_seqlens_kv=cu)
    with pytest.raises(ValueError, match=r"\[total, H, D\]"):
        validate_block_sparse(**{**kw, "q": q[None]}, cu_seqlens_q=cu, cu_seqlens_kv=cu)


def test_block_far_longer_than_the_sequence() -> None:
    """A block of 2^22 tokens over a sequence of 9: every token is in block 0, and the CPU kernel's scratch is sized by
    the tokens there are (it was (block x block) floats, 64 TiB here)."""
    q, k, v = (torch.randn(1, 9, 2, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    kw = dict(q_block=1 << 22, kv_block=1 << 22, is_causal=True)
    want = block_sparse_attention(q, k, v, mask, **kw, backend="reference")
    got = block_sparse_attention(*(t.float() for t in (q, k, v)), mask, **kw, backend="cpu")
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_op_lists_without_slots() -> None:
    """Lists of capacity 0 (no query block lists anything): out 0, lse -inf, zero gradients, forward and backward of
    the op (whose backward transposes the lists)."""
    q, k, v = (torch.randn(1, 20, 2, 8) for _ in range(3))
    num, idx = torch.zeros(1, 1, 3, dtype=torch.long), torch.zeros(1, 1, 3, 0, dtype=torch.long)
    geometry = (None, None, None, None, 8, 8, False, 0.3)
    out, lse = torch.ops.natten_like.block_sparse_forward(q, k, v, num, idx, *geometry)
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == float("-inf")).all())
    grads = torch.ops.natten_like.block_sparse_backward(torch.randn_like(out), q, k, v, out, lse, None, num, idx,
                                                        *geometry)  # fmt: skip
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
