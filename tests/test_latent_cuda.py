"""The sm80 latent (MLA decode) CUDA forward against the float64 reference (needs a CUDA build and a GPU >= sm80 with
~154 KB of shared memory per block: A100 / H100 / H200 class).

Random contiguous and paged caches (pages shuffled, page sizes that do and do not divide the 64-row KV tile), causal and
not, S_q 1..4, H 16 / 128, cache lengths including 0, several split counts (1 = direct write, > 1 = workspace and
combine kernel, 0 = automatic); bfloat16 and float16. Outputs are NaN-poisoned so that every element must be written;
the logsumexp is checked where finite and must be -inf exactly where the reference's is.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import cuda_skip_reason, use_sm90
from natten_like.backends import cuda as cuda_backend
from natten_like.latent import latent_attention

LATENT, ROPE = 512, 64


SKIP = cuda_skip_reason("sm80_latent_fwd")
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def _problem(rng: random.Random, g: torch.Generator, paged: bool, heads: int, sq: int, lens: list[int]):
    """float64 CPU (q, cache, seqlens, block_table) of a random problem."""
    batch = len(lens)
    q = torch.randn(batch, sq, heads, LATENT + ROPE, generator=g, dtype=torch.float64)
    seqlens = torch.tensor(lens, dtype=torch.int64)
    if not paged:
        s_kv = max(max(lens), 1) + rng.randint(0, 70)
        return q, torch.randn(batch, s_kv, LATENT + ROPE, generator=g, dtype=torch.float64), seqlens, None
    page_size = rng.choice([16, 64, 100])
    max_pages = -(-max(max(lens), 1) // page_size) + rng.randint(0, 1)
    pages = batch * max_pages + 3
    cache = torch.randn(pages, page_size, LATENT + ROPE, generator=g, dtype=torch.float64)
    table = torch.randperm(pages, generator=g)[: batch * max_pages].view(batch, max_pages)
    return q, cache, seqlens, table


def _run_and_check(q, cache, seqlens, table, dtype, causal: bool, num_splits: int) -> None:
    low_q, low_cache = q.to(dtype), cache.to(dtype)
    kw = dict(cache_seqlens=seqlens, block_table=table, is_causal=causal, latent_dim=LATENT, rope_dim=ROPE)
    args = [low_q.cuda(), low_cache.cuda()]
    dev_kw = dict(kw, cache_seqlens=seqlens.cuda(), block_table=None if table is None else table.cuda())
    # Free NaN-filled blocks of the outputs' sizes right before the call: the caching allocator hands them to the
    # outputs, so an element the kernel never writes stays NaN.
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    out_shape = (*q.shape[:-1], LATENT)
    poison = [torch.full(out_shape, float("nan"), dtype=dtype, device="cuda"),
              torch.full(q.shape[:-1], float("nan"), device="cuda")]  # fmt: skip
    ptrs = {t.data_ptr() for t in poison}
    del poison
    out, lse = latent_attention(*args, **dev_kw, num_splits=num_splits, return_lse=True, backend="cuda")
    torch.cuda.synchronize()
    assert {out.data_ptr(), lse.data_ptr()} == ptrs, "the NaN-filled blocks were not reused"
    assert not out.isnan().any() and not lse.isnan().any(), "unwritten or NaN elements"
    ref_out, ref_lse = latent_attention(q.to(dtype).double(), cache.to(dtype).double(), **kw, return_lse=True,
                                        backend="reference")  # fmt: skip
    plain = latent_attention(low_q, low_cache, **kw, backend="reference").double()
    bar = (plain - ref_out).abs().max().item() if plain.numel() else 0.0
    err = (out.cpu().double() - ref_out).abs().max().item() if out.numel() else 0.0
    what = f"{dtype} causal={causal} splits={num_splits} lens={seqlens.tolist()} shape={tuple(q.shape)}"
    assert err <= 2 * bar + 2e-3, f"out error {err:.2e} (PyTorch in {dtype}: {bar:.2e}) with {what}"
    finite = ref_lse.isfinite()
    assert torch.equal(lse.cpu().isfinite(), finite), f"-inf lse mismatch with {what}"
    assert (lse.cpu()[~finite] == float("-inf")).all()
    if finite.any():
        lse_err = (lse.cpu().double()[finite] - ref_lse[finite]).abs().max().item()
        assert lse_err <= 2e-3 * max(1.0, ref_lse[finite].abs().max().item()), f"lse error {lse_err:.2e} with {what}"
    # Rows the reference leaves empty must be exact zeros.
    assert (out.cpu()[~finite] == 0).all()


@pytest.mark.parametrize("sm90", ["on", "off"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("paged", [False, True])
def test_random_caches_match_reference(monkeypatch: pytest.MonkeyPatch, paged: bool, seed: int, sm90: str) -> None:
    use_sm90(monkeypatch, sm90)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    rng = random.Random(seed * 2 + paged)
    g = torch.Generator().manual_seed(seed * 2 + paged)
    for dtype in (torch.bfloat16, torch.float16):
        if (dtype, LATENT + ROPE, LATENT) not in cuda_backend.built_kernels("sm80_latent_fwd"):
            continue
        heads, sq = rng.choice([16, 128]), rng.randint(1, 4)
        lens = [rng.choice([0, rng.randint(1, 70), rng.randint(1, 700)]) for _ in range(rng.randint(1, 3))]
        q, cache, seqlens, table = _problem(rng, g, paged, heads, sq, lens)
        for causal in (False, True):
            for num_splits in (1, rng.randint(2, 5), 0):
                _run_and_check(q, cache, seqlens, table, dtype, causal, num_splits)


def test_long_cache_many_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    rng, g = random.Random(11), torch.Generator().manual_seed(11)
    dtype = sorted(cuda_backend.built_kernels("sm80_latent_fwd"), key=str)[0][0]
    q, cache, seqlens, table = _problem(rng, g, True, 16, 2, [3000, 1, 0])
    for num_splits in (1, 7, 64, 0):
        _run_and_check(q, cache, seqlens, table, dtype, True, num_splits)


@pytest.mark.parametrize("sm90", ["on", "off"])
def test_size_one_dims_with_stray_strides(monkeypatch: pytest.MonkeyPatch, sm90: str) -> None:
    """torch calls a tensor contiguous whatever the stride of a size-1 dim: one head, and a one-row cache, whose
    strides point far outside the tensor (left there by a transpose) must read what a plain copy does."""
    use_sm90(monkeypatch, sm90)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype = sorted(cuda_backend.built_kernels("sm80_latent_fwd"), key=str)[0][0]
    g = torch.Generator().manual_seed(13)
    q = torch.randn(2, 1, 3, LATENT + ROPE, generator=g, dtype=torch.float64).transpose(1, 2)  # [2, 3, 1, D]
    cache = torch.randn(1, 2, LATENT + ROPE, generator=g, dtype=torch.float64).transpose(0, 1)  # [2, 1, D]
    for t in (q, cache):
        assert t.is_contiguous() and t.stride() != t.clone(memory_format=torch.contiguous_format).stride()
        assert t.to(dtype).cuda().stride() == t.stride(), "the device copy lost the stray stride"
    for causal in (False, True):
        _run_and_check(q, cache, torch.tensor([1, 1]), None, dtype, causal, 1)


def test_refuses_other_widths_and_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype = sorted(cuda_backend.built_kernels("sm80_latent_fwd"), key=str)[0][0]
    import natten_like

    q = torch.randn(1, 1, 16, 256 + 64, dtype=dtype, device="cuda")
    cache = torch.randn(1, 10, 256 + 64, dtype=dtype, device="cuda")
    with pytest.raises(natten_like.BackendNotSupportedError, match="latent_dim 512"):
        latent_attention(q, cache, latent_dim=256, rope_dim=64, backend="cuda")
    q = torch.randn(1, 1, 16, 576, dtype=dtype, device="cuda", requires_grad=True)
    cache = torch.randn(1, 10, 576, dtype=dtype, device="cuda")
    with pytest.raises(natten_like.BackendNotSupportedError, match="forward only"):
        latent_attention(q, cache, backend="cuda")


def _paged_state(rng: random.Random, batch: int, max_pages: int, page_size: int, num_pages: int):
    """Random lengths in [0, capacity] and a block table of distinct pages (int32, as serving engines keep them)."""
    lens = torch.tensor([rng.choice([0, rng.randint(1, max_pages * page_size)]) for _ in range(batch)])
    table = torch.randperm(num_pages, generator=torch.Generator().manual_seed(rng.randint(0, 1 << 30)))
    return lens, table[: batch * max_pages].view(batch, max_pages).to(torch.int32)


@pytest.mark.parametrize("sm90", ["on", "off"])
def test_cuda_graph_replay(monkeypatch: pytest.MonkeyPatch, sm90: str) -> None:
    """A decode step captured in a CUDA graph with device-resident lengths and block table (no host copy or sync in
    the call), replayed after both change in place, as a serving loop does: every replay matches the reference of that
    step's lengths and pages. Then entries the host never checked: a length past the capacity and a used page outside
    the cache give their batch entries NaN (out and lse), and the other entries stay right."""
    use_sm90(monkeypatch, sm90)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype = sorted(cuda_backend.built_kernels("sm80_latent_fwd"), key=str)[0][0]
    rng, g = random.Random(21), torch.Generator().manual_seed(21)
    batch, heads, sq, page_size, max_pages, num_pages = 3, 16, 2, 64, 6, 20
    q = torch.randn(batch, sq, heads, LATENT + ROPE, generator=g, dtype=torch.float64)
    cache = torch.randn(num_pages, page_size, LATENT + ROPE, generator=g, dtype=torch.float64)
    dev_q, dev_cache = q.to("cuda", dtype), cache.to("cuda", dtype)
    lens0, table0 = _paged_state(rng, batch, max_pages, page_size, num_pages)
    lens, table = lens0.cuda(), table0.cuda()

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        return latent_attention(dev_q, dev_cache, cache_seqlens=lens, block_table=table, is_causal=True,
                                return_lse=True, backend="cuda")  # fmt: skip

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture (lazy initialisation, kernel attributes)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()

    def reference(lens_: torch.Tensor, table_: torch.Tensor, rows: slice = slice(None)):
        low_q, low_cache = q[rows].to(dtype).double(), cache.to(dtype).double()
        return latent_attention(low_q, low_cache, cache_seqlens=lens_[rows], block_table=table_[rows],
                                is_causal=True, return_lse=True, backend="reference")  # fmt: skip

    for replay in range(4):
        new_lens, new_table = (lens0, table0) if replay == 0 else _paged_state(rng, batch, max_pages, page_size, 20)
        lens.copy_(new_lens)
        table.copy_(new_table)
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = reference(new_lens, new_table)
        what = f"replay {replay}, lens {new_lens.tolist()}"
        assert (out.cpu().double() - ref_out).abs().max().item() < 3e-2, what
        finite = ref_lse.isfinite()
        assert torch.equal(lse.cpu().isfinite(), finite), what
        assert (lse.cpu().double()[finite] - ref_lse[finite]).abs().max().item() < 3e-2, what

    bad_lens, bad_table = lens0.clone(), table0.clone()
    bad_lens[0] = max(int(bad_lens[0]), 1)
    bad_lens[1] = max_pages * page_size + 1  # past the capacity
    bad_table[0, (int(bad_lens[0]) - 1) // page_size] = num_pages  # a used page that is not one of the cache's
    lens.copy_(bad_lens)
    table.copy_(bad_table)
    graph.replay()
    torch.cuda.synchronize()
    assert out[:2].isnan().all() and lse[:2].isnan().all(), "an unchecked invalid entry gave a finite answer"
    ref_out, _ = reference(bad_lens, bad_table, slice(2, None))
    assert (out[2:].cpu().double() - ref_out).abs().max().item() < 3e-2
    # Outside capture the same contents are refused before any launch, naming the rule.
    with pytest.raises(ValueError, match="cache's capacity"):
        step()
    bad_lens[1] = lens0[1]
    lens.copy_(bad_lens)
    with pytest.raises(ValueError, match="pages of kv_cache"):
        step()
