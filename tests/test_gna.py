"""GNA: the fused cpu backend against the float64 reference (outputs, logsumexp and every gradient), and the reference
against independent definitions (dense SDPA, a brute-force multi-dim mask)."""

from __future__ import annotations

import itertools
import math
import random

import natten_like
import pytest
import torch
import torch.nn.functional as F
from helpers import EXTENDED, GnaCase, make_inputs, max_error, run_gna
from natten_like._validation import GnaParams
from natten_like.backends.reference import gna_mask

from simulator.gna_policy import GnaDim

# float32 kernel vs float64 reference, relative to the largest magnitude (measured errors are ~1e-7).
TOL_F32 = 1e-5


def _case_id(case: GnaCase) -> str:
    parts = [
        "x".join(map(str, case.shape)),
        "w" + "x".join(map(str, case.window)),
        "s" + "x".join(map(str, case.stride)),
        "d" + "x".join(map(str, case.dilation)),
        "c" + "".join("1" if c else "0" for c in case.causal),
        f"b{case.batch}h{case.heads}/{case.kv_heads}d{case.dim}/{case.dim_v}",
    ]
    if case.num_additional:
        parts.append(f"add{case.num_additional}")
    if case.scale is not None:
        parts.append(f"scale{case.scale}")
    return "-".join(parts)


CASES = [
    # 1-D
    GnaCase((17,), (5,)),  # odd size
    GnaCase((2,), (2,)),  # smallest legal size
    GnaCase((16,), (16,)),  # window = size: full attention
    GnaCase((16,), (16,), causal=(True,)),  # window = size, causal: exactly causal attention
    GnaCase((13,), (4,), stride=(4,)),  # stride = window (blocked), last block short
    GnaCase((13,), (4,), stride=(4,), causal=(True,)),
    GnaCase((11,), (3,), dilation=(3,)),  # dilation groups of lengths 4, 4, 3
    GnaCase((20,), (6,), stride=(3,), dilation=(2,), causal=(True,)),
    GnaCase((70,), (9,), stride=(2,)),  # more than one 64-token CPU tile
    GnaCase((19,), (5,), heads=4, kv_heads=2),  # GQA
    GnaCase((19,), (5,), heads=4, kv_heads=1, dim=16, dim_v=4),  # MQA, D_v != D
    GnaCase((15,), (4,), batch=2, num_additional=3),  # additional KV
    GnaCase((15,), (4,), num_additional=1, causal=(True,), heads=3, kv_heads=1),
    GnaCase((9,), (3,), scale=0.0),  # scale 0 means zero: uniform weights
    GnaCase((9,), (3,), scale=-0.7),
    # 2-D
    GnaCase((2, 2), (2, 2)),  # smallest legal
    GnaCase((6, 5), (6, 5)),  # window = size
    GnaCase((8, 8), (4, 4), stride=(4, 4)),  # blocked
    GnaCase((9, 10), (3, 4), stride=(3, 2), dilation=(1, 2), heads=4, kv_heads=2, dim_v=12),
    GnaCase((11, 7), (5, 3), dilation=(2, 2), num_additional=2, batch=2),
    *[
        GnaCase((7, 9), (3, 5), stride=(1, 2), dilation=(2, 1), causal=c)
        for c in itertools.product((False, True), repeat=2)
    ],
    # 3-D
    *[
        GnaCase((5, 6, 4), (3, 3, 2), stride=(1, 2, 2), dilation=(1, 2, 1), causal=c)
        for c in itertools.product((False, True), repeat=3)
    ],
    GnaCase((2, 2, 2), (2, 2, 2)),  # smallest legal
    GnaCase((5, 4, 6), (5, 4, 3), stride=(5, 1, 3), heads=2, kv_heads=1, dim_v=4, num_additional=3),
]


def _check_against_reference(case: GnaCase, seed: int, magnitude: float = 1.0, tol: float = TOL_F32) -> None:
    inputs = make_inputs(case, torch.float32, seed, magnitude)
    ref = run_gna(case, inputs, "reference", torch.float64)
    cpu = run_gna(case, inputs, "cpu", torch.float32)
    assert cpu.keys() == ref.keys()
    for name, expected in ref.items():
        actual = cpu[name]
        assert actual.shape == expected.shape, name
        assert actual.dtype == torch.float32, name
        # The kernel writes into uninitialised memory: every element must have been written with a finite value.
        assert torch.isfinite(actual).all(), f"{name} has non-finite elements"
        err = max_error(actual, expected)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cpu_matches_reference(case: GnaCase) -> None:
    _check_against_reference(case, seed=1)


def _random_case(rng: random.Random) -> GnaCase:
    rank = rng.randint(1, 3)
    max_len = {1: 40, 2: 11, 3: 6}[rank]
    shape, window, stride, dilation = [], [], [], []
    for _ in range(rank):
        n = rng.randint(2, max_len)
        d = rng.randint(1, n // 2)
        w = rng.randint(2, n // d)
        shape.append(n)
        dilation.append(d)
        window.append(w)
        stride.append(rng.randint(1, w))
    kv_heads = rng.choice((1, 2))
    return GnaCase(
        tuple(shape),
        tuple(window),
        stride=tuple(stride),
        dilation=tuple(dilation),
        causal=tuple(rng.random() < 0.5 for _ in range(rank)),
        batch=rng.choice((1, 2)),
        heads=kv_heads * rng.choice((1, 2, 3)),
        kv_heads=kv_heads,
        dim=rng.choice((4, 8, 16)),
        dim_v=rng.choice((4, 8, 12)),
        num_additional=rng.choice((0, 0, 1, 5)),
        scale=rng.choice((None, 0.3)),
    )


@pytest.mark.parametrize("seed", range(300 if EXTENDED else 30))
def test_random_sweep(seed: int) -> None:
    case = _random_case(random.Random(seed))
    _check_against_reference(case, seed=seed)


@pytest.mark.parametrize(
    "case",
    [GnaCase((40,), (7,)), GnaCase((9, 8), (3, 5), causal=(True, False), num_additional=4, heads=4, kv_heads=2)],
    ids=_case_id,
)
def test_large_logits_stay_finite(case: GnaCase) -> None:
    # Scores in the thousands: online-softmax rescaling must neither overflow nor produce NaN.
    _check_against_reference(case, seed=3, magnitude=12.0, tol=1e-4)


LOW_PRECISION_CASES = [
    GnaCase((33,), (7,), stride=(2,), dim=32, dim_v=32),
    GnaCase((9, 10), (5, 3), causal=(False, True), dilation=(1, 2), heads=4, kv_heads=2, dim=16, num_additional=3),
    GnaCase((4, 5, 6), (3, 3, 3), stride=(1, 3, 2), causal=(True, False, False), dim=16, dim_v=8),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=_case_id)
def test_low_precision_within_plain_pytorch_error(case: GnaCase, dtype: torch.dtype) -> None:
    """The kernel (float32 accumulation) must be at most about as wrong as plain PyTorch computing in ``dtype``."""
    inputs = make_inputs(case, dtype, seed=5)
    exact = run_gna(case, inputs, "reference", torch.float64)
    plain = run_gna(case, inputs, "reference", dtype)
    cpu = run_gna(case, inputs, "cpu", dtype)
    for name, expected in exact.items():
        assert cpu[name].dtype == (torch.float32 if name == "lse" else dtype), name
        assert torch.isfinite(cpu[name]).all(), name
        err_cpu, err_plain = max_error(cpu[name], expected), max_error(plain[name], expected)
        assert err_plain > 0, f"{name}: plain {dtype} reference unexpectedly exact, the comparison would be vacuous"
        assert err_cpu <= 2 * err_plain, f"{name}: kernel error {err_cpu:.2e} > 2 x plain PyTorch error {err_plain:.2e}"


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("num_additional", [0, 2])
def test_empty_batch(backend: str, num_additional: int) -> None:
    case = GnaCase((5, 4), (3, 2), batch=0, heads=4, kv_heads=2, dim_v=6, num_additional=num_additional)
    inputs = make_inputs(case, torch.float32, seed=0)
    result = run_gna(case, inputs, backend, torch.float32)
    assert result["out"].shape == (0, 5, 4, 4, 6)
    assert result["lse"].shape == (0, 5, 4, 4)
    for name in ("q", "k", "v", "additional_keys", "additional_values"):
        if name in inputs:
            assert result[f"d_{name}"].shape == inputs[name].shape, name


def test_lse_is_returned_only_on_request() -> None:
    case = GnaCase((8,), (3,))
    inputs = make_inputs(case, torch.float32, seed=0)
    out = natten_like.gna(inputs["q"], inputs["k"], inputs["v"], 3)
    out2, lse = natten_like.gna(inputs["q"], inputs["k"], inputs["v"], 3, return_lse=True)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    assert lse.shape == (1, 8, 2) and lse.dtype == torch.float32


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_rank_aliases(rank: int) -> None:
    shape = (6,) * rank
    case = GnaCase(shape, (3,) * rank, causal=(True,) * rank)
    inputs = make_inputs(case, torch.float32, seed=2)
    alias = (natten_like.na1d, natten_like.na2d, natten_like.na3d)[rank - 1]
    expected = natten_like.gna(inputs["q"], inputs["k"], inputs["v"], 3, is_causal=True)
    actual = alias(inputs["q"], inputs["k"], inputs["v"], 3, is_causal=True)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ---- the reference itself, against definitions that do not share its code ----


@pytest.mark.parametrize("causal", [False, True])
def test_reference_full_window_is_dense_sdpa(causal: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 12, 3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    out = natten_like.gna(q, k, v, 12, is_causal=causal, backend="reference")
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_reference_2d_full_window_and_additional_kv_is_dense_sdpa() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 5, 2, 6, generator=g, dtype=torch.float64) for _ in range(3))
    add_k, add_v = (torch.randn(1, 3, 2, 6, generator=g, dtype=torch.float64) for _ in range(2))
    out = natten_like.gna(q, k, v, (4, 5), additional_keys=add_k, additional_values=add_v, backend="reference")
    kf = torch.cat([k.reshape(1, 20, 2, 6), add_k], 1)
    vf = torch.cat([v.reshape(1, 20, 2, 6), add_v], 1)
    expected = F.scaled_dot_product_attention(
        q.reshape(1, 20, 2, 6).transpose(1, 2), kf.transpose(1, 2), vf.transpose(1, 2)
    )
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(1, 4, 5, 2, 6))


def test_reference_scale_zero_averages_the_window() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 7, 1, 4, generator=g, dtype=torch.float64) for _ in range(3))
    out = natten_like.gna(q, k, v, 7, scale=0.0, backend="reference")
    torch.testing.assert_close(out, v.mean(dim=1, keepdim=True).expand_as(out))


def test_reference_mask_is_the_and_over_dims() -> None:
    params = GnaParams(
        shape=(5, 4, 6),
        window=(3, 2, 4),
        stride=(2, 1, 3),
        dilation=(1, 2, 1),
        is_causal=(False, True, True),
        scale=1.0,
        num_additional=0,
        head_dim=4,
        head_dim_v=4,
    )
    per_dim = (params.shape, params.window, params.stride, params.dilation, params.is_causal)
    dims = [GnaDim(*a) for a in zip(*per_dim, strict=True)]
    coords = list(itertools.product(*(range(n) for n in params.shape)))
    mask = gna_mask(params, torch.device("cpu"))
    assert mask.shape == (math.prod(params.shape),) * 2
    expected = torch.tensor(
        [[all(y in dim.window_of(x) for dim, x, y in zip(dims, qc, kc, strict=True)) for kc in coords] for qc in coords]
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_non_contiguous_inputs(backend: str) -> None:
    # Heads-first storage viewed as heads-last, and a strided slice of the head dim: neither is contiguous.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 6, 8, generator=g).permute(0, 2, 3, 1, 4)  # [B, X, Y, H, D]
    k = torch.randn(2, 2, 7, 6, 16, generator=g).permute(0, 2, 3, 1, 4)[..., ::2]
    v = torch.randn(2, 7, 6, 2, 5, generator=g).transpose(1, 2).contiguous().transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    out, lse = natten_like.gna(q, k, v, (3, 5), is_causal=(True, False), return_lse=True, backend=backend)
    ref, ref_lse = natten_like.gna(
        q.contiguous().double(), k.contiguous().double(), v.contiguous().double(), (3, 5), is_causal=(True, False),
        return_lse=True,
    )  # fmt: skip
    assert max_error(out, ref) < TOL_F32 and max_error(lse, ref_lse) < TOL_F32


def test_gradient_of_one_input_only() -> None:
    case = GnaCase((10,), (3,), num_additional=2)
    inputs = make_inputs(case, torch.float32, seed=4)
    q = inputs["q"].requires_grad_()
    add_v = inputs["additional_values"].requires_grad_()
    out = natten_like.gna(q, inputs["k"], inputs["v"], 3, additional_keys=inputs["additional_keys"],
                          additional_values=add_v)  # fmt: skip
    dq, d_add_v = torch.autograd.grad((out * inputs["grad_out"]).sum(), (q, add_v))
    q64 = inputs["q"].detach().double().requires_grad_()
    add_v64 = inputs["additional_values"].double().requires_grad_()
    ref = natten_like.gna(q64, inputs["k"].double(), inputs["v"].double(), 3,
                          additional_keys=inputs["additional_keys"].double(), additional_values=add_v64)  # fmt: skip
    ref_dq, ref_d_add_v = torch.autograd.grad((ref * inputs["grad_out"].double()).sum(), (q64, add_v64))
    assert max_error(dq, ref_dq) < TOL_F32 and max_error(d_add_v, ref_d_add_v) < TOL_F32
