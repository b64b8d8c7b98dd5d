"""The CUDA GNA / dense kernels against the float64 reference (needs a CUDA build and a GPU of capability >= 8.0).

Every forward family the build and the GPU have (sm80 everywhere, sm90 on a Hopper GPU of a build with 9.0a), and the
backward: random 1-3 D problems with causal / stride / dilation, GQA, additional KV, every built dtype and head dim;
outputs and gradients NaN-poisoned so that every element must be written; logsumexp and the gradient through it
checked too.
``bench/gpu_check.sh`` builds the extension and runs these.
"""

from __future__ import annotations

import random

import natten_like
import pytest
import torch
from helpers import GRAD_INPUTS, GnaCase, cuda_skip_reason, make_inputs, max_error, use_sm90
from natten_like.backends import cuda as cuda_backend

from simulator.tile_configs import clamp_tile, gna_tiles

SKIP = cuda_skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

DEVICE = "cuda"


def _built(kind: str = "sm80_gna_fwd") -> list[tuple[torch.dtype, int, int]]:
    """(dtype, D, D_v) of the built kernels of ``kind``."""
    return sorted(cuda_backend.built_kernels(kind), key=str)


def _targets() -> list[str]:
    """Forward kernel families this build can run on this GPU."""
    sm90 = torch.cuda.get_device_capability()[0] == 9 and _built("sm90_gna_fwd")
    return ["sm80", "sm90"] if sm90 else ["sm80"]


def _runs_on(case: GnaCase, target: str) -> bool:
    """Whether ``target``'s kernel takes the case (the sm90 TMA boxes have limits; the sm80 kernel takes all)."""
    if target == "sm80":
        return True
    tiles = gna_tiles(target, len(case.shape), case.dim)
    q_tile, kv_tile = (clamp_tile(t, case.shape, case.dilation) for t in tiles)
    extents = [max(a, b) * d for a, b, d in zip(q_tile, kv_tile, case.dilation, strict=True)]
    return max(case.dilation) <= cuda_backend.SM90_MAX_DILATION and max(extents) <= cuda_backend.SM90_MAX_BOX_EXTENT


def _op_config(case: GnaCase, target: str, q: torch.Tensor) -> list:
    q_tile, kv_tile = gna_tiles(target, len(case.shape), q.shape[-1])
    scale = case.scale if case.scale is not None else q.shape[-1] ** -0.5
    return [
        list(case.window), list(case.stride), list(case.dilation), list(case.causal), scale,
        list(clamp_tile(q_tile, case.shape, case.dilation)), list(clamp_tile(kv_tile, case.shape, case.dilation)),
        target,
    ]  # fmt: skip


def _poison(*shapes_dtypes: tuple[tuple[int, ...], torch.dtype]) -> set[int]:
    """Free NaN-filled blocks of the given sizes right before an op: the caching allocator hands those blocks to the
    op's outputs, so an element the kernel never writes stays NaN. Emptying the cache first leaves those blocks the
    only candidates. Returns their addresses."""
    torch.cuda.empty_cache()
    blocks = [torch.full(shape, float("nan"), dtype=dtype, device=DEVICE) for shape, dtype in shapes_dtypes]
    return {b.data_ptr() for b in blocks}


def _random_case(rng: random.Random, rank: int, dim: int, dim_v: int) -> GnaCase:
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
    # Additional KV: none, under one kernel tile, exactly one, and a full tile plus a partial one.
    num_additional = rng.choice([0, 0, 5, 64, 70])
    return GnaCase(
        shape=tuple(shape), window=tuple(window), stride=tuple(stride), dilation=tuple(dilation),
        causal=tuple(causal), batch=rng.randint(1, 2), heads=heads, kv_heads=kv_heads, dim=dim, dim_v=dim_v,
        num_additional=num_additional,
    )  # fmt: skip


def _device_inputs(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor | None]:
    """q, k, v, additional keys, additional values (None when the case has none) on the GPU."""
    return [inputs[n].to(DEVICE) if n in inputs else None for n in GRAD_INPUTS]


def _poisoned_forward(case: GnaCase, target: str, tensors: list[torch.Tensor | None]):
    q, v = tensors[0], tensors[2]
    ptrs = _poison((tuple(q.shape[:-1]) + (v.shape[-1],), q.dtype), (tuple(q.shape[:-1]), torch.float32))
    out, lse = torch.ops.natten_like.gna_forward(*tensors, *_op_config(case, target, q))
    torch.cuda.synchronize()
    poisoned = {out.data_ptr(), lse.data_ptr()} == ptrs
    return out, lse, poisoned


def _check(case: GnaCase, dtype: torch.dtype, seed: int, target: str = "sm80") -> None:
    inputs = make_inputs(case, dtype, seed)
    tensors = _device_inputs(inputs)
    out, lse, poisoned = _poisoned_forward(case, target, tensors)
    assert poisoned, "the allocator did not reuse the NaN-filled blocks; the written-everywhere check did not run"
    assert not out.isnan().any(), f"unwritten or NaN output elements in {case}"
    assert not lse.isnan().any(), f"unwritten or NaN lse elements in {case}"
    extra = {n: inputs[n] for n in GRAD_INPUTS[3:] if n in inputs}
    ref_out, ref_lse = natten_like.gna(
        *(inputs[n].double() for n in ("q", "k", "v")), **case.kwargs(),
        **{n: t.double() for n, t in extra.items()}, return_lse=True, backend="reference",
    )  # fmt: skip
    # The same computation in the low precision by plain PyTorch sets the bar.
    low_out = natten_like.gna(*(inputs[n] for n in ("q", "k", "v")), **case.kwargs(), **extra, backend="reference")
    bar = max_error(low_out.cpu(), ref_out)
    err = max_error(out.cpu(), ref_out)
    assert err <= 2 * bar + 2e-3, f"out error {err:.2e} (PyTorch in {dtype}: {bar:.2e}) in {case}"
    lse_err = (lse.cpu().double() - ref_lse).abs().max().item()
    assert lse_err <= 2e-3 * max(1.0, ref_lse.abs().max().item()), f"lse error {lse_err:.2e} in {case}"


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_random_gna_matches_reference(rank: int, seed: int) -> None:
    for target in _targets():
        rng = random.Random(1000 * rank + seed)
        for dtype, dim, dim_v in _built(f"{target}_gna_fwd"):
            case = _random_case(rng, rank, dim, dim_v)
            if _runs_on(case, target):
                _check(case, dtype, seed, target)


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
        GnaCase(shape=(8, 8, 8), window=(4, 4, 4), causal=(True, False, True), num_additional=3),  # additional KV
        GnaCase(shape=(130,), window=(7,), stride=(7,), num_additional=128),  # two full additional tiles
    ],
    ids=lambda c: "x".join(map(str, c.shape)) + "-w" + "x".join(map(str, c.window)) + f"-add{c.num_additional}",
)
def test_edge_cases(case: GnaCase) -> None:
    for target in _targets():
        for dtype, dim, dim_v in _built(f"{target}_gna_fwd"):
            sized = case.with_(dim=dim, dim_v=dim_v, heads=4, kv_heads=2)
            if _runs_on(sized, target):
                _check(sized, dtype, 7, target)


def _check_backward(case: GnaCase, dtype: torch.dtype, seed: int) -> None:
    """dQ, dK, dV (and the additional KV's gradients) of the sm80 backward (gradient through out and through lse)
    against float64 autograd."""
    inputs = make_inputs(case, dtype, seed)
    tensors = _device_inputs(inputs)
    names = [n for n, t in zip(GRAD_INPUTS, tensors, strict=True) if t is not None]
    q = tensors[0]
    config = _op_config(case, "sm80", q)
    out, lse = torch.ops.natten_like.gna_forward(*tensors, *config)
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    go, gl = grad_out.to(dtype).to(DEVICE), grad_lse.float().to(DEVICE)  # before poisoning: not in the NaN blocks
    ptrs = _poison(*((tuple(t.shape), dtype) for t in tensors if t is not None))
    computed = torch.ops.natten_like.gna_backward(go, *tensors, out, lse, gl, *config)[: len(names)]
    torch.cuda.synchronize()
    assert {t.data_ptr() for t in computed} == ptrs, "the NaN-filled blocks were not reused"
    for name, grad in zip(names, computed, strict=True):
        assert not grad.isnan().any(), f"unwritten or NaN gradient of {name} in {case}"

    def grads(tensors: list[torch.Tensor], backend: str) -> list[torch.Tensor]:
        leaves = dict(zip(names, (t.detach().requires_grad_() for t in tensors), strict=True))
        o, l_ = natten_like.gna(**leaves, **case.kwargs(), return_lse=True, backend=backend)
        loss = (o.double() * grad_out.to(o.device)).sum() + (l_.double() * grad_lse.to(l_.device)).sum()
        return list(torch.autograd.grad(loss, list(leaves.values())))

    ref = grads([inputs[n].double() for n in names], "reference")
    low = grads([inputs[n] for n in names], "reference")  # plain PyTorch in the low precision sets the bar
    for name, got, r, lo in zip(names, computed, ref, low, strict=True):
        bar = max_error(lo, r)
        err = max_error(got.cpu(), r)
        assert err <= 2 * bar + 2e-3, f"{name} error {err:.2e} (PyTorch in {dtype}: {bar:.2e}) in {case}"


def _skip_without_backward() -> None:
    if not _built("sm80_gna_bwd"):
        pytest.skip("the build has no sm80 backward kernels")


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_random_gna_backward_matches_reference(rank: int, seed: int) -> None:
    _skip_without_backward()
    rng = random.Random(2000 * rank + seed)
    for dtype, dim, dim_v in _built("sm80_gna_bwd"):
        _check_backward(_random_case(rng, rank, dim, dim_v), dtype, seed)


@pytest.mark.parametrize(
    "case",
    [
        GnaCase(shape=(200,), window=(200,), causal=(True,)),  # dense causal, partial last tile
        GnaCase(shape=(16, 16), window=(8, 8), stride=(8, 8)),  # fully block-sparse
        GnaCase(shape=(12, 10), window=(3, 5), dilation=(4, 2)),  # unequal dilation groups
        GnaCase(shape=(2,), window=(2,), causal=(True,)),
        GnaCase(shape=(9, 7), window=(3, 3), causal=(True, False), num_additional=77),  # additional KV: 64 + 13 rows
    ],
    ids=lambda c: "x".join(map(str, c.shape)) + "-w" + "x".join(map(str, c.window)) + f"-add{c.num_additional}",
)
def test_backward_edge_cases(case: GnaCase) -> None:
    _skip_without_backward()
    for dtype, dim, dim_v in _built("sm80_gna_bwd"):
        _check_backward(case.with_(dim=dim, dim_v=dim_v, heads=4, kv_heads=2), dtype, 9)


@pytest.mark.parametrize("causal", [False, True])
def test_dense_attention_through_the_backend(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim, _ = max(_built(), key=lambda t: (t[1] == t[2], t[1]))  # the largest D == D_v kernel
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


@pytest.mark.parametrize("sm90", ["on", "off"])
def test_size_one_dims_with_stray_strides(monkeypatch: pytest.MonkeyPatch, sm90: str) -> None:
    """torch calls a tensor contiguous whatever the stride of a size-1 dim (a transpose leaves one there): a size-1
    token dim and a single head whose strides point far outside the tensor must read the same elements as a plain
    copy does. Forward and backward, against the float64 reference."""
    use_sm90(monkeypatch, sm90)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim, _ = _built()[0]
    g = torch.Generator().manual_seed(21)

    def stray_token_dim(x: torch.Tensor) -> torch.Tensor:  # [B, X, H, D] -> [B, X, 1, H, D], stride X*H*D at the 1
        return x.unsqueeze(1).transpose(1, 2)

    def stray_head_dim(x: torch.Tensor) -> torch.Tensor:  # [B, X, Y, D] -> [B, X, Y, 1, D], stride B*X*Y*D at the 1
        return x.unsqueeze(0).permute(1, 2, 3, 0, 4)

    problems = [
        (stray_token_dim, lambda: torch.randn(2, 37, 4, dim, generator=g, dtype=torch.float64), (5, 1)),
        (stray_head_dim, lambda: torch.randn(2, 9, 11, dim, generator=g, dtype=torch.float64), (3, 5)),
    ]
    for stray, draw, window in problems:
        q, k, v = (stray(draw().to(dtype)) for _ in range(3))
        assert q.is_contiguous() and q.stride() != q.clone(memory_format=torch.contiguous_format).stride()
        leaves = [t.to(DEVICE).requires_grad_() for t in (q, k, v)]
        assert leaves[0].stride() == q.stride(), "the device copy lost the stray stride"
        out = natten_like.gna(*leaves, window=window, backend="cuda")
        out.float().square().sum().backward()
        ref = [t.double().requires_grad_() for t in (q, k, v)]
        ref_out = natten_like.gna(*ref, window=window, backend="reference")
        ref_out.square().sum().backward()
        assert max_error(out.detach().cpu(), ref_out.detach()) < 2e-2
        for got, r in zip(leaves, ref, strict=True):
            assert max_error(got.grad.cpu(), r.grad) <= 3e-2 * max(1.0, r.grad.abs().max().item())


def test_autograd_through_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-D problem's forward on the preferred kernel, its backward on sm80's tiles (ops._gna_backward re-tiles); with
    and without additional KV."""
    _skip_without_backward()
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim, _ = _built("sm80_gna_bwd")[-1]
    for num_additional in (0, 20):
        case = GnaCase(shape=(20, 24), window=(7, 9), stride=(2, 3), heads=4, kv_heads=2, dim=dim, dim_v=dim,
                       num_additional=num_additional)  # fmt: skip
        inputs = make_inputs(case, dtype, 11)
        names = [n for n in GRAD_INPUTS if n in inputs]
        leaves = {n: inputs[n].to(DEVICE).requires_grad_() for n in names}
        out = natten_like.gna(**leaves, **case.kwargs(), backend="cuda")
        out.float().square().sum().backward()
        ref = {n: inputs[n].double().requires_grad_() for n in names}
        natten_like.gna(**ref, **case.kwargs(), backend="reference").square().sum().backward()
        for got, r in zip(leaves.values(), ref.values(), strict=True):
            assert max_error(got.grad.cpu(), r.grad) <= 3e-2 * max(1.0, r.grad.abs().max().item())


def test_sm90_declines_what_its_tma_boxes_cannot_express() -> None:
    """An explicit sm90 request for a box beyond TMA's limits fails loudly; the backend then picks sm80 itself."""
    if "sm90" not in _targets():
        pytest.skip("no sm90 kernels on this GPU / build")
    dtype, dim, _ = _built("sm90_gna_fwd")[0]
    case = GnaCase(shape=(600,), window=(5,), dilation=(4,), heads=2, kv_heads=2, dim=dim, dim_v=dim)
    assert not _runs_on(case, "sm90")
    q, k, v = (make_inputs(case, dtype, 0)[n].to(DEVICE) for n in ("q", "k", "v"))
    with pytest.raises(RuntimeError, match="sm90"):
        torch.ops.natten_like.gna_forward(q, k, v, None, None, *_op_config(case, "sm90", q))
    _check(case, dtype, 0, "sm80")


@pytest.mark.parametrize("mode", ["off", "on"])
def test_sm90_tile_scheduling(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The sm90 kernel with one CTA per work tile and persistent (NATTEN_LIKE_SM90_PERSISTENT), on enough work tiles
    (32 Q tiles x 8 heads x 2) that persistent CTAs run several each, with additional KV."""
    if "sm90" not in _targets():
        pytest.skip("no sm90 kernels on this GPU / build")
    monkeypatch.setenv("NATTEN_LIKE_SM90_PERSISTENT", mode)
    for dtype, dim, dim_v in _built("sm90_gna_fwd"):
        case = GnaCase(shape=(64, 64), window=(9, 7), stride=(2, 1), causal=(False, True), batch=2, heads=8, kv_heads=2,
                       dim=dim, dim_v=dim_v, num_additional=70)  # fmt: skip
        _check(case, dtype, 5, "sm90")
    monkeypatch.setenv("NATTEN_LIKE_SM90_PERSISTENT", "sometimes")
    case = GnaCase(shape=(64,), window=(9,), dim=dim, dim_v=dim_v)
    q, k, v = (make_inputs(case, dtype, 0)[n].to(DEVICE) for n in ("q", "k", "v"))
    with pytest.raises(RuntimeError, match="NATTEN_LIKE_SM90_PERSISTENT must be auto, on or off"):
        torch.ops.natten_like.gna_forward(q, k, v, None, None, *_op_config(case, "sm90", q))


def test_sm90_persistent_additional_kv_nan_stays_in_its_batch_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN in batch entry 0's additional values reaches only entry 0's outputs, also when persistent CTAs run work
    tiles of entry 0 and then of entry 1 through the same smem stages (~4 work tiles per CTA here): the V rows an
    additional tile leaves past the next neighbourhood box (KV tiles clamped to 16 x 4 = 64 of 128 rows) are zeroed
    before that box's P V, where P = 0 times a stale NaN would be NaN."""
    if "sm90" not in _targets():
        pytest.skip("no sm90 kernels on this GPU / build")
    monkeypatch.setenv("NATTEN_LIKE_SM90_PERSISTENT", "on")
    dtype, dim, dim_v = _built("sm90_gna_fwd")[-1]
    case = GnaCase(shape=(512, 4), window=(9, 3), batch=2, heads=8, kv_heads=2, dim=dim, dim_v=dim_v,
                   num_additional=70)  # fmt: skip
    inputs = make_inputs(case, dtype, 11)
    inputs["additional_values"][0, 3] = float("nan")
    out, _ = torch.ops.natten_like.gna_forward(*_device_inputs(inputs), *_op_config(case, "sm90", inputs["q"]))
    assert out[0].isnan().any(), "entry 0 attends its NaN additional value"
    one = {n: t[1:] for n, t in inputs.items() if n in GRAD_INPUTS}
    ref = natten_like.gna(
        *(one[n].double() for n in ("q", "k", "v")), **case.with_(batch=1).kwargs(),
        **{n: one[n].double() for n in GRAD_INPUTS[3:]}, backend="reference",
    )  # fmt: skip
    low = natten_like.gna(*(one[n] for n in ("q", "k", "v")), **case.with_(batch=1).kwargs(),
                          **{n: one[n] for n in GRAD_INPUTS[3:]}, backend="reference")  # fmt: skip
    assert not out[1].isnan().any(), "a NaN of entry 0's additional values reached entry 1"
    err, bar = max_error(out[1:].cpu(), ref), max_error(low, ref)
    assert err <= 2 * bar + 2e-3, f"entry 1 out error {err:.2e} (PyTorch in {dtype}: {bar:.2e})"


@pytest.mark.parametrize("sm90", ["on", "off"])
def test_non_finite_values_stay_in_their_batch_entry(monkeypatch: pytest.MonkeyPatch, sm90: str) -> None:
    """Inf / NaN in batch entry 1's values reach only entry 1's outputs: the KV boxes of entry 0's last rows (13 rows of
    dim 0, not a multiple of any tile) run past its end, where the kernels must load zeros, not entry 1's rows (P is
    exactly 0 there, and 0 * inf is NaN). Entry 0 against the float64 reference of entry 0 alone."""
    use_sm90(monkeypatch, sm90)
    monkeypatch.setenv(cuda_backend.EXPERIMENTAL_ENV, "1")
    dtype, dim, dim_v = _built()[-1]
    case = GnaCase(shape=(13, 24), window=(5, 7), batch=2, heads=4, kv_heads=2, dim=dim, dim_v=dim_v)
    inputs = make_inputs(case, dtype, 5)
    inputs["v"][1, :3] = float("inf")  # entry 1's first rows: right after entry 0's last ones in memory
    inputs["v"][1, 3:5] = float("nan")
    q, k, v = (inputs[n].to(DEVICE) for n in ("q", "k", "v"))
    out = natten_like.gna(q, k, v, **case.kwargs(), backend="cuda").cpu()
    assert out[1].isnan().any(), "entry 1 attends its non-finite values"
    one = {n: inputs[n][:1] for n in ("q", "k", "v")}
    ref = natten_like.gna(*(one[n].double() for n in ("q", "k", "v")), **case.with_(batch=1).kwargs(),
                          backend="reference")  # fmt: skip
    low = natten_like.gna(*(one[n] for n in ("q", "k", "v")), **case.with_(batch=1).kwargs(), backend="reference")
    assert out[0].isfinite().all(), "entry 1's non-finite values reached entry 0"
    err, bar = max_error(out[:1], ref), max_error(low, ref)
    assert err <= 2 * bar + 2e-3, f"entry 0 out error {err:.2e} (PyTorch in {dtype}: {bar:.2e})"


def test_backend_refuses_without_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cuda_backend.EXPERIMENTAL_ENV, raising=False)
    dtype, dim, _ = _built()[0]
    q = torch.randn(1, 16, 2, dim, dtype=dtype, device=DEVICE)
    with pytest.raises(natten_like.BackendNotSupportedError, match=cuda_backend.EXPERIMENTAL_ENV):
        natten_like.na1d(q, q, q, 5, backend="cuda")
