"""Compressed-latent (MLA) decode: the fused split-KV CPU kernel against the float64 reference on contiguous and paged
(shuffled pages) caches, causal multi-token decode, empty caches, low precision, the MLA layer's absorbed form against
its un-absorbed MHA form, and argument validation."""

from __future__ import annotations

import os

import pytest
import torch
from natten_like.latent import MultiHeadLatentAttention, latent_attention, validate_latent

EXTENDED = os.environ.get("NATTEN_LIKE_EXTENDED_TESTS") == "1"


def _paged(cache: torch.Tensor, page_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous cache [B, S, D] scattered to shuffled pages (plus spare ones): (pages [P, page_size, D], table)."""
    batch, seq, width = cache.shape
    per_seq = -(-seq // page_size)
    total = batch * per_seq + 3
    order = torch.randperm(total, generator=gen)[: batch * per_seq].view(batch, per_seq)
    pages = torch.randn(total, page_size, width, generator=gen, dtype=cache.dtype)  # garbage outside the sequences
    padded = torch.nn.functional.pad(cache, (0, 0, 0, per_seq * page_size - seq))
    pages[order.flatten()] = padded.reshape(batch * per_seq, page_size, width)
    return pages, order.to(torch.int32)


def _compare(q: torch.Tensor, cache: torch.Tensor, atol: float = 2e-4, **kw: object) -> None:
    out, lse = latent_attention(q, cache, return_lse=True, backend="cpu", **kw)
    ref_out, ref_lse = latent_attention(q.double(), cache.double(), return_lse=True, backend="reference", **kw)
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=0)
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    finite = ref_lse.isfinite()
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=atol, rtol=0)


CASES = [
    # B, S_q, H, latent, rope, cache length(s), causal
    (2, 1, 16, 64, 16, [100, 37], False),
    (3, 2, 8, 64, 16, [150, 0, 77], True),  # an empty cache: zeros, lse -inf
    (1, 4, 4, 32, 8, [3], True),  # S_q > L: the first query sees nothing
    (2, 3, 130, 16, 8, [70, 129], True),  # heads x S_q spans several row tiles
    (1, 1, 2, 512, 64, [200], False),  # DeepSeek widths
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("splits", [0, 1, 3])
def test_contiguous_matches_reference(case: tuple, splits: int) -> None:
    b, sq, h, lat, rope, lens, causal = case
    gen = torch.Generator().manual_seed(sum(lens) + sq)
    q = torch.randn(b, sq, h, lat + rope, generator=gen)
    cache = torch.randn(b, max(lens) + 5, lat + rope, generator=gen)
    kw = dict(latent_dim=lat, rope_dim=rope, is_causal=causal, num_splits=splits)
    _compare(q, cache, cache_seqlens=torch.tensor(lens), **kw)
    if len(set(lens)) == 1:
        _compare(q, cache[:, : lens[0]], **kw)  # no cache_seqlens: the whole cache


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_paged_matches_contiguous(causal: bool, page_size: int) -> None:
    """Shuffled pages with garbage in unused slots give the contiguous cache's result exactly (same chunk order)."""
    gen = torch.Generator().manual_seed(page_size)
    b, sq, h, lat, rope = 3, 2, 8, 32, 16
    lens = torch.tensor([90, 1, 64])
    q = torch.randn(b, sq, h, lat + rope, generator=gen)
    cache = torch.randn(b, 90, lat + rope, generator=gen)
    pages, table = _paged(cache, page_size, gen)
    kw = dict(latent_dim=lat, rope_dim=rope, cache_seqlens=lens, is_causal=causal)
    _compare(q, pages, block_table=table, **kw)
    paged = latent_attention(q, pages, block_table=table, backend="cpu", num_splits=2, **kw)
    contiguous = latent_attention(q, cache, backend="cpu", num_splits=2, **kw)
    torch.testing.assert_close(paged, contiguous, atol=0, rtol=0)


def test_causal_more_queries_than_cache() -> None:
    """S_q > L_b: the first queries sit before the cache start and see nothing (zeros, lse -inf)."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 5, 2, 24, generator=gen)
    cache = torch.randn(1, 3, 24, generator=gen)
    out, lse = latent_attention(q, cache, latent_dim=16, rope_dim=8, is_causal=True, return_lse=True, backend="cpu")
    assert lse[0, :2].isinf().all() and (out[0, :2] == 0).all() and lse[0, 2:].isfinite().all()
    _compare(q, cache, latent_dim=16, rope_dim=8, is_causal=True)


def test_large_scores() -> None:
    """Scores in the thousands across several splits: the merge's rescaling neither overflows nor produces NaN."""
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 2, 4, 40, generator=gen) * 30
    cache = torch.randn(2, 200, 40, generator=gen) * 30
    _compare(q, cache, atol=2e-3, latent_dim=32, rope_dim=8, is_causal=True, num_splits=4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype: torch.dtype) -> None:
    """Error in fp16/bf16 within a small factor of plain PyTorch's own error in that dtype."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 2, 16, 80, generator=gen)
    cache = torch.randn(2, 300, 80, generator=gen)
    kw = dict(latent_dim=64, rope_dim=16, is_causal=True, cache_seqlens=torch.tensor([300, 123]))
    exact = latent_attention(q.double(), cache.double(), backend="reference", **kw)
    torch_err = (latent_attention(q.to(dtype), cache.to(dtype), backend="reference", **kw).double() - exact).abs().max()
    ours_err = (latent_attention(q.to(dtype), cache.to(dtype), backend="cpu", **kw).double() - exact).abs().max()
    assert ours_err <= 2 * torch_err + 1e-3, (ours_err, torch_err)


def test_forward_only_dispatch() -> None:
    """Inputs that require grad go to the reference (autograd by PyTorch); forcing the CPU kernel says why it cannot."""
    q = torch.randn(1, 1, 2, 24, requires_grad=True)
    cache = torch.randn(1, 9, 24)
    out = latent_attention(q, cache, latent_dim=16, rope_dim=8)
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="forward only"):
        latent_attention(q, cache, latent_dim=16, rope_dim=8, backend="cpu")


def test_opcheck() -> None:
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(2, 2, 4, 24, generator=gen)
    cache = torch.randn(2, 40, 24, generator=gen)
    lens = torch.tensor([40, 17])
    torch.library.opcheck(torch.ops.natten_like.latent_forward, (q, cache, lens, None, 16, True, 0.2, 0))


@pytest.mark.parametrize("num_queries", [None, 1, 3])
def test_mla_layer_absorbed_equals_mha(num_queries: int | None) -> None:
    """Absorbed form (one latent KV head, fused kernel, contiguous and paged cache) equals the un-absorbed MHA form."""
    torch.manual_seed(7)
    dims = dict(latent_dim=32, rope_dim=8, nope_dim=16, v_dim=12)
    layer = MultiHeadLatentAttention(48, 4, dtype=torch.float64, **dims)
    layer32 = MultiHeadLatentAttention(48, 4, **dims)
    layer32.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    x = torch.randn(2, 13, 48, dtype=torch.float64)
    table = torch.randperm(12)[:8].view(2, 4)
    with torch.no_grad():
        expected = layer.forward_mha(x, num_queries)
        torch.testing.assert_close(layer(x, num_queries, backend="reference"), expected, atol=1e-12, rtol=0)
        got = layer32(x.float(), num_queries, backend="cpu")
        paged = layer32(x.float(), num_queries, block_table=table, page_size=4, backend="cpu")
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(paged.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(num_queries=10), ValueError, r"num_queries must be in \[0, S=9\]"),
        (dict(num_queries=-1), ValueError, "num_queries must be in"),
        (dict(block_table=torch.tensor([[0, 1, 2], [0, 3, 4]]), page_size=4), ValueError, "lists a page twice"),
        (dict(block_table=torch.tensor([[0, 1], [2, 3]]), page_size=4), ValueError, r">= ceil\(S / page_size\) = 3"),
        (dict(block_table=torch.tensor([[0, 1, 2], [3, 4, -1]]), page_size=4), ValueError, "must be >= 0"),
        (dict(block_table=torch.tensor([[0.0, 1, 2], [3, 4, 5]]), page_size=4), TypeError, "int32 or int64"),
        (dict(block_table=torch.tensor([[0, 1, 2], [3, 4, 5]]), page_size=0), ValueError, "page_size must be >= 1"),
        (dict(block_table=torch.tensor([[0, 1, 2], [3, 4, 5]])), ValueError, "given together"),
    ],
)
def test_mla_layer_validation(kw: dict, error: type, match: str) -> None:
    """The layer's own arguments: a page shared by two sequences would overwrite rows (a wrong answer, not an error),
    so it is refused like the other bad tables."""
    layer = MultiHeadLatentAttention(16, 2, latent_dim=8, rope_dim=4, nope_dim=4, v_dim=4)
    x = torch.randn(2, 9, 16)
    with pytest.raises(error, match=match):
        layer(x, **kw)
    with pytest.raises(ValueError, match=r"x must be \[B, S, d_model=16\]"):
        layer(torch.randn(2, 9, 15))


@pytest.mark.skipif(not EXTENDED, reason="extended sweep: set NATTEN_LIKE_EXTENDED_TESTS=1")
@pytest.mark.parametrize("seed", range(20))
def test_random_sweep(seed: int) -> None:
    gen = torch.Generator().manual_seed(300 + seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    b, sq, h, lat, rope = pick(1, 3), pick(1, 4), pick(1, 40), pick(1, 40), pick(0, 16)
    cap = pick(1, 300)
    lens = torch.randint(0, cap + 1, (b,), generator=gen)
    q = torch.randn(b, sq, h, lat + rope, generator=gen)
    cache = torch.randn(b, cap, lat + rope, generator=gen)
    kw = dict(latent_dim=lat, rope_dim=rope, cache_seqlens=lens, is_causal=bool(pick(0, 1)), num_splits=pick(0, 5))
    _compare(q, cache, **kw)
    pages, table = _paged(cache, pick(1, 32), gen)
    _compare(q, pages, block_table=table, **kw)


@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(q=torch.randn(1, 1, 2, 20)), ValueError, "latent_dim \\+ rope_dim = 24"),
        (dict(kv_cache=torch.randn(1, 9, 20)), ValueError, "kv_cache must be"),
        (dict(kv_cache=torch.randn(2, 9, 24)), ValueError, "batch size"),
        (dict(kv_cache=torch.randn(1, 9, 24).double()), TypeError, "dtype"),
        (dict(cache_seqlens=torch.tensor([10])), ValueError, r"\[0, 9\]"),
        (dict(cache_seqlens=torch.tensor([3.0])), TypeError, "int32 or int64"),
        (dict(cache_seqlens=torch.tensor([3], device="meta")), ValueError, "on q's device"),
        (dict(block_table=torch.zeros(1, 2, dtype=torch.long)), ValueError, "cache_seqlens is required"),
        (dict(latent_dim=0, rope_dim=24), ValueError, "latent_dim must be >= 1"),
        (dict(is_causal="yes"), TypeError, "is_causal must be a bool"),
        (dict(num_splits=-1), ValueError, "num_splits"),
    ],
)
def test_validation(over: dict, error: type, match: str) -> None:
    kw = dict(
        q=torch.randn(1, 1, 2, 24),
        kv_cache=torch.randn(1, 9, 24),
        latent_dim=16,
        rope_dim=8,
        cache_seqlens=None,
        block_table=None,
        is_causal=False,
        scale=None,
    )
    kw.update(over)
    with pytest.raises(error, match=match):
        validate_latent(**kw)


def test_validation_paged() -> None:
    pages = torch.randn(4, 8, 24)
    kw = dict(q=torch.randn(1, 1, 2, 24), kv_cache=pages, latent_dim=16, rope_dim=8, is_causal=False, scale=None)
    validate_latent(**kw, cache_seqlens=torch.tensor([16]), block_table=torch.tensor([[3, 0, 9]]))  # slot 2 unused
    with pytest.raises(ValueError, match="pages of kv_cache"):
        validate_latent(**kw, cache_seqlens=torch.tensor([17]), block_table=torch.tensor([[3, 0, 9]]))
    with pytest.raises(ValueError, match=r"\[0, 24\]"):
        validate_latent(**kw, cache_seqlens=torch.tensor([25]), block_table=torch.tensor([[3, 0, 1]]))
    with pytest.raises(ValueError, match="on q's device"):
        validate_latent(**kw, cache_seqlens=torch.tensor([16]), block_table=torch.tensor([[3, 0, 9]], device="meta"))
    # Lists keep their dtype's width checked but stay where they are (no host copy for device-resident ones).
    params = validate_latent(
        **kw, cache_seqlens=torch.tensor([16], dtype=torch.int32), block_table=torch.tensor([[3, 0, 9]])
    )
    assert params.cache_seqlens.dtype == torch.int64 and params.block_table.device.type == "cpu"
    empty_pages = dict(kw, kv_cache=torch.randn(4, 0, 24))
    with pytest.raises(ValueError, match=r"page_size \(dim 1\) >= 1"):
        validate_latent(**empty_pages, cache_seqlens=torch.tensor([0]), block_table=torch.tensor([[0]]))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_empty_page_pool_and_batch(backend: str) -> None:
    """A paged cache with no pages (every length 0) and a batch of 0 sequences: out 0 / lse -inf and empty results,
    on every backend (the reference's gather clamped page ids to [0, -1])."""
    q = torch.randn(2, 1, 3, 6)
    kw = dict(latent_dim=4, rope_dim=2, backend=backend)
    lens, table = torch.zeros(2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)
    out, lse = latent_attention(q, torch.randn(0, 4, 6), cache_seqlens=lens, block_table=table, return_lse=True, **kw)
    assert (out == 0).all() and (lse == float("-inf")).all()
    out = latent_attention(q[:0], torch.randn(3, 4, 6), cache_seqlens=lens[:0], block_table=table[:0], **kw)
    assert out.shape == (0, 1, 3, 4)


def test_op_refuses_empty_pages() -> None:
    """The compiled op, called directly (validate_latent refuses it first): a paged cache of page_size 0 is an error,
    not a division by zero."""
    q, pages = torch.randn(1, 1, 2, 24), torch.randn(4, 0, 24)
    with pytest.raises(RuntimeError, match=r"page_size \(dim 1\) >= 1"):
        torch.ops.natten_like.latent_forward(q, pages, torch.tensor([0]), torch.tensor([[0]]), 16, False, 0.2, 0)


def test_op_refuses_float_lengths() -> None:
    """The compiled op, called directly: float cache_seqlens / block_table are refused, not truncated to integers."""
    q, cache = torch.randn(1, 1, 2, 24), torch.randn(1, 8, 24)
    with pytest.raises(RuntimeError, match="must be integer tensors"):
        torch.ops.natten_like.latent_forward(q, cache, torch.tensor([2.7]), None, 16, False, 0.2, 0)
    pages = torch.randn(2, 4, 24)
    with pytest.raises(RuntimeError, match="must be integer tensors"):
        torch.ops.natten_like.latent_forward(q, pages, torch.tensor([5]), torch.tensor([[0.0, 1.0]]), 16, False, 0.2, 0)


def test_more_splits_than_chunks() -> None:
    """A split count far beyond the cache's KV chunks gives the same result as one split (the CPU op clamps it instead
    of allocating partials for empty splits)."""
    gen = torch.Generator().manual_seed(5)
    q, cache = torch.randn(2, 1, 4, 40, generator=gen), torch.randn(2, 70, 40, generator=gen)
    lens = torch.tensor([70, 9])
    one = torch.ops.natten_like.latent_forward(q, cache, lens, None, 32, False, 0.2, 1)
    many = torch.ops.natten_like.latent_forward(q, cache, lens, None, 32, False, 0.2, 10**9)
    torch.testing.assert_close(many, one)
