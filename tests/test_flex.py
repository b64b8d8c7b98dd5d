"""The flex backend (FlexAttention): masks against the reference's, outputs against the float64 reference, refusals,
dispatch order on the CPU and the one-time fallback warning.

FlexAttention runs on the CPU in this torch for the forward only (eager, unfused), so every comparison runs under
``torch.no_grad``; that it refuses a CPU backward is tested as a refusal reason.
"""

from __future__ import annotations

import math
import warnings

import natten_like
import pytest
import torch
from helpers import GnaCase, make_inputs, max_error
from natten_like import ops
from natten_like._validation import validate_gna
from natten_like.backends import BackendNotSupportedError, Problem, flex, select_backend
from natten_like.backends.reference import gna_mask
from natten_like.block_sparse import validate_block_sparse
from natten_like.strided_shard import element_mask, validate_strided_shard
from torch.nn.attention.flex_attention import create_block_mask

# Eager flex on the CPU warns that it is unfused; that is expected here and not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

GNA_CASES = [
    GnaCase((13,), (5,), stride=(2,), dilation=(2,), causal=(True,)),
    GnaCase((17,), (17,)),  # window = length: full self-attention
    GnaCase((9,), (3,), stride=(3,), heads=4, kv_heads=1, dim_v=4),  # blocked, MQA, D_v != D
    GnaCase((6, 7), (3, 5), stride=(1, 2), dilation=(2, 1), causal=(False, True), heads=4, num_additional=3),
    GnaCase((5, 8), (2, 4), stride=(2, 4), causal=(True, True), batch=2, scale=0.0),
    GnaCase((4, 5, 6), (2, 3, 3), stride=(2, 1, 3), dilation=(1, 1, 2), causal=(True, False, False)),
    GnaCase((3, 4, 9), (3, 2, 4), dilation=(1, 2, 2), heads=4, kv_heads=2, num_additional=2),
]


def _params(case: GnaCase):
    inputs = make_inputs(case, torch.float32, seed=0)
    return validate_gna(
        inputs["q"], inputs["k"], inputs["v"], case.window, case.stride, case.dilation, case.causal, case.scale,
        inputs.get("additional_keys"), inputs.get("additional_values"),
    )  # fmt: skip


@pytest.mark.parametrize("case", GNA_CASES, ids=str)
def test_gna_mask_mod_equals_reference_mask(case: GnaCase) -> None:
    params = _params(case)
    n = math.prod(case.shape)
    mask_mod = flex.gna_mask_mod(params, "cpu")
    dense = mask_mod(None, None, torch.arange(n)[:, None], torch.arange(n + case.num_additional)[None, :])
    assert torch.equal(dense[:, :n], gna_mask(params, torch.device("cpu")))
    assert dense[:, n:].all()  # additional keys: seen by every query


@pytest.mark.parametrize("case", GNA_CASES, ids=str)
def test_block_mask_equals_create_block_mask(monkeypatch: pytest.MonkeyPatch, case: GnaCase) -> None:
    # A tiny chunk forces block_mask_of through several chunks of query blocks.
    monkeypatch.setattr(flex, "_CHUNK_ELEMENTS", 1)
    params = _params(case)
    n = math.prod(case.shape)
    mask_mod = flex.gna_mask_mod(params, "cpu")
    ours = flex.block_mask_of(mask_mod, 1, n, n + case.num_additional, "cpu", block_size=8)
    expected = create_block_mask(mask_mod, None, None, n, n + case.num_additional, device="cpu", BLOCK_SIZE=8)
    assert torch.equal(ours.to_dense(), expected.to_dense())
    assert torch.equal(ours.kv_num_blocks, expected.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, expected.full_kv_num_blocks)
    if case.window == case.shape and not any(case.causal):
        assert ours.full_kv_num_blocks.sum() > 0  # full attention: inner blocks go to the full lists


def _gna(case: GnaCase, inputs: dict[str, torch.Tensor], dtype: torch.dtype, backend: str):
    with torch.no_grad():
        return natten_like.gna(
            inputs["q"].to(dtype), inputs["k"].to(dtype), inputs["v"].to(dtype), **case.kwargs(),
            additional_keys=inputs["additional_keys"].to(dtype) if case.num_additional else None,
            additional_values=inputs["additional_values"].to(dtype) if case.num_additional else None,
            return_lse=True, backend=backend,
        )  # fmt: skip


@pytest.mark.parametrize("case", GNA_CASES, ids=str)
def test_gna_matches_float64_reference(case: GnaCase) -> None:
    inputs = make_inputs(case, torch.float64, seed=1)
    out, lse = _gna(case, inputs, torch.float32, "flex")
    ref_out, ref_lse = _gna(case, inputs, torch.float64, "reference")
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert max_error(out, ref_out) < 1e-5
    assert max_error(lse, ref_lse) < 1e-5


def test_gna_low_precision_close_to_reference() -> None:
    case = GNA_CASES[3]
    inputs = make_inputs(case, torch.float64, seed=2)
    out, _ = _gna(case, inputs, torch.bfloat16, "flex")
    ref_out, _ = _gna(case, inputs, torch.float64, "reference")
    assert out.dtype == torch.bfloat16
    assert max_error(out, ref_out) < 2e-2


@pytest.mark.parametrize(
    ("num_q", "num_kv", "q_block", "kv_block", "causal", "with_full"),
    [(24, 24, 8, 8, False, False), (20, 29, 4, 8, True, False), (16, 32, 8, 4, True, True)],
)
def test_block_sparse_matches_float64_reference(
    num_q: int, num_kv: int, q_block: int, kv_block: int, causal: bool, with_full: bool
) -> None:
    g = torch.Generator().manual_seed(3)
    b, h, h_kv = 2, 4, 2
    q = torch.randn(b, num_q, h, 8, generator=g, dtype=torch.float64)
    k = torch.randn(b, num_kv, h_kv, 8, generator=g, dtype=torch.float64)
    v = torch.randn(b, num_kv, h_kv, 6, generator=g, dtype=torch.float64)
    qb, kb = -(-num_q // q_block), -(-num_kv // kv_block)
    kept = torch.rand(b, h, qb, kb, generator=g) < 0.5
    kept[0, 0, 0] = False  # query block 0 of (batch 0, head 0) sees no key
    block_mask: object = kept
    if with_full:
        # Split kept blocks into a partial and a full list (full blocks skip the causal element mask).
        full = kept & (torch.rand(b, h, qb, kb, generator=g) < 0.5)
        lists = [m.sum(-1) for m in (kept & ~full, full)]
        order = [torch.argsort((~m).to(torch.int8), dim=-1, stable=True) for m in (kept & ~full, full)]
        block_mask = (lists[0], order[0], lists[1], order[1])

    def run(dtype: torch.dtype, backend: str):
        with torch.no_grad():
            return natten_like.block_sparse_attention(
                q.to(dtype), k.to(dtype), v.to(dtype), block_mask, q_block=q_block, kv_block=kv_block,
                is_causal=causal, return_lse=True, backend=backend,
            )  # fmt: skip

    out, lse = run(torch.float32, "flex")
    ref_out, ref_lse = run(torch.float64, "reference")
    assert max_error(out, ref_out) < 1e-5
    finite = torch.isfinite(ref_lse)
    assert not finite.all()  # some query has no key: flex must give out 0, lse -inf there too
    assert torch.equal(torch.isfinite(lse), finite)
    assert max_error(lse[finite], ref_lse[finite]) < 1e-5


@pytest.mark.parametrize(
    ("num_q", "num_kv", "causal", "homo_head", "dense_heads", "offset"),
    [(40, 40, True, False, 0, 0), (13, 40, True, False, 1, 1), (40, 40, False, True, 0, 2)],
)
def test_strided_shard_matches_float64_reference(
    num_q: int, num_kv: int, causal: bool, homo_head: bool, dense_heads: int, offset: int
) -> None:
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, num_q, 4, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, num_kv, 2, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, num_kv, 2, 4, generator=g, dtype=torch.float64)
    pattern = dict(block_size=3, local_blocks=2, vert_stride=3, is_causal=causal, homo_head=homo_head,
                   num_dense_heads=dense_heads, head_sliding_offset=offset)  # fmt: skip

    def run(dtype: torch.dtype, backend: str):
        with torch.no_grad():
            return natten_like.strided_shard_attention(
                q.to(dtype), k.to(dtype), v.to(dtype), **pattern, return_lse=True, backend=backend
            )

    params = validate_strided_shard(q, k, v, *pattern.values(), None)
    mask_mod = flex.strided_shard_mask_mod(params, "cpu")
    dense = mask_mod(None, torch.arange(4)[:, None, None], torch.arange(num_q)[:, None], torch.arange(num_kv))
    assert torch.equal(dense, element_mask(params))
    out, lse = run(torch.float32, "flex")
    ref_out, ref_lse = run(torch.float64, "reference")
    assert max_error(out, ref_out) < 1e-5
    assert max_error(lse, ref_lse) < 1e-5


def _gna_problem(device_type: str, dtype: torch.dtype, requires_grad: bool) -> Problem:
    return Problem("gna", device_type, dtype, requires_grad, _params(GNA_CASES[0]))


def test_refusal_reasons() -> None:
    assert flex.not_supported_reasons(_gna_problem("cpu", torch.float32, False)) == []
    assert flex.not_supported_reasons(_gna_problem("cuda", torch.bfloat16, True)) == []
    reasons = flex.not_supported_reasons(_gna_problem("meta", torch.float64, False))
    assert len(reasons) == 2
    assert "does not run on meta" in reasons[0] and "float64" in reasons[1]
    reasons = flex.not_supported_reasons(_gna_problem("cpu", torch.float32, True))
    assert reasons == [reasons[0]] and "no backward on cpu" in reasons[0]

    # Forced through the public API, every reason is listed at once.
    q = torch.randn(1, 13, 2, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(BackendNotSupportedError, match="float64.*no backward on cpu"):
        natten_like.gna(q, q, q, 5, backend="flex")

    # Empty inputs are refused (FlexAttention fails on them deep inside); auto-dispatch takes another backend.
    empty = torch.randn(0, 6, 2, 4)
    with torch.no_grad():
        with pytest.raises(BackendNotSupportedError, match="does not take empty tensors"):
            natten_like.gna(empty, empty, empty, 3, backend="flex")
        assert natten_like.gna(empty, empty, empty, 3).shape == empty.shape

    # Packed variable-length block-sparse batches are refused.
    packed = torch.randn(10, 2, 8)
    cu = torch.tensor([0, 4, 10])
    params = validate_block_sparse(packed, packed, packed, torch.ones(2, 1, 1, 1, dtype=torch.bool), 8, 8, False,
                                   None, cu, cu)  # fmt: skip
    reasons = flex.block_sparse_not_supported_reasons(Problem("block_sparse", "cpu", torch.float32, False, params))
    assert reasons == ["packed variable-length batches (cu_seqlens) are not supported"]


@pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="the fused cpu backend is absent (extension not built)")
def test_cpu_auto_dispatch_keeps_fused_kernels() -> None:
    for family in ("gna", "block_sparse", "strided_shard"):
        assert "flex" in natten_like.backends.registered_backends(family)
    for dtype, requires_grad in ((torch.float32, False), (torch.bfloat16, True)):
        assert select_backend(_gna_problem("cpu", dtype, requires_grad)).name == "cpu"
    assert select_backend(_gna_problem("cpu", torch.float64, False)).name == "reference"  # float64: not flex


def test_fallback_warns_once_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    # A missing extension makes the cpu backend refuse, so auto-dispatch falls back to flex.
    monkeypatch.setattr(ops, "EXTENSION_ERROR", "the compiled extension is missing (simulated)")
    monkeypatch.setattr(flex, "_warned", set())
    case = GNA_CASES[0]
    inputs = make_inputs(case, torch.float32, seed=5)
    with pytest.warns(UserWarning, match=r"FlexAttention fallback.*cpu: the compiled extension is missing") as record:
        out, _ = _gna(case, inputs, torch.float32, None)
    assert sum("FlexAttention fallback" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*FlexAttention fallback")
        again, _ = _gna(case, inputs, torch.float32, None)  # second call: no warning
    torch.testing.assert_close(again, out)


def test_forced_flex_does_not_warn_when_cpu_could_run() -> None:
    case = GNA_CASES[0]
    inputs = make_inputs(case, torch.float32, seed=6)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*FlexAttention fallback")
        _gna(case, inputs, torch.float32, "flex")
