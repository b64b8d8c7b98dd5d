"""Argument validation of the public API (every rule gives a ValueError/TypeError naming the argument) and backend
dispatch (auto choice, forced backends listing every reason, logging, registration of new families)."""

from __future__ import annotations

import logging

import natten_like
import pytest
import torch
from natten_like import backends
from natten_like.backends import BackendNotSupportedError, Problem, register_backend, select_backend

B, X, Y, H, H_KV, D, D_V = 1, 8, 6, 4, 2, 8, 6


def _inputs(dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "q": torch.randn(B, X, Y, H, D, generator=g).to(dtype).to(device),
        "k": torch.randn(B, X, Y, H_KV, D, generator=g).to(dtype).to(device),
        "v": torch.randn(B, X, Y, H_KV, D_V, generator=g).to(dtype).to(device),
        "window": (3, 3),
    }


def _add_kv(n: int = 3, dk: int = D, dv: int = D_V, heads: int = H_KV) -> dict:
    return {"additional_keys": torch.randn(B, n, heads, dk), "additional_values": torch.randn(B, n, heads, dv)}


# (id, changes to the valid arguments, expected exception, regex the message must match)
GNA_ERRORS = [
    ("q-not-tensor", {"q": [[1.0]]}, TypeError, "q must be a torch.Tensor"),
    ("q-rank-low", {"q": torch.randn(2, 3, 4)}, ValueError, r"q must be .* \(4-6 dims\)"),
    ("q-rank-high", {"q": torch.randn(1, 2, 2, 2, 2, 1, 1)}, ValueError, r"q must be .* \(4-6 dims\)"),
    ("k-rank", {"k": torch.randn(B, X * Y, H_KV, D)}, ValueError, "k must have q's rank"),
    ("k-tokens", {"k": torch.randn(B, X, Y + 1, H_KV, D)}, ValueError, "k must have q's batch and token dims"),
    ("v-batch", {"v": torch.randn(B + 1, X, Y, H_KV, D_V)}, ValueError, "v must have q's batch and token dims"),
    ("v-heads", {"v": torch.randn(B, X, Y, 1, D_V)}, ValueError, "v must have the head count of k"),
    ("heads-divisible", {"k": torch.randn(B, X, Y, 3, D), "v": torch.randn(B, X, Y, 3, D_V)}, ValueError,
     r"H % H_kv == 0"),
    ("k-head-dim", {"k": torch.randn(B, X, Y, H_KV, D + 1)}, ValueError, "k must have q's head dim"),
    ("int-dtype", {"q": torch.ones(B, X, Y, H, D, dtype=torch.int32)}, TypeError, "q must have a floating dtype"),
    ("complex-dtype", {"v": torch.ones(B, X, Y, H_KV, D_V, dtype=torch.complex64)}, TypeError,
     "v must have a floating dtype"),
    ("dtype-mismatch", {"k": torch.randn(B, X, Y, H_KV, D, dtype=torch.float64)}, TypeError,
     r"k must have the dtype of q \(torch.float32\)"),
    ("device-mismatch", {"v": torch.randn(B, X, Y, H_KV, D_V, device="meta")}, ValueError,
     "v must be on the device of q"),
    ("add-keys-alone", {"additional_keys": torch.randn(B, 3, H_KV, D)}, ValueError, "both or neither"),
    ("add-values-alone", {"additional_values": torch.randn(B, 3, H_KV, D_V)}, ValueError, "both or neither"),
    ("add-keys-shape", _add_kv(heads=H), ValueError, "additional_keys must be"),
    ("add-keys-rank", {**_add_kv(), "additional_keys": torch.randn(3, H_KV, D)}, ValueError, "additional_keys must be"),
    ("add-values-dim", _add_kv(dv=D), ValueError, "additional_values must be"),
    ("add-values-count", {**_add_kv(), "additional_values": torch.randn(B, 4, H_KV, D_V)}, ValueError,
     "additional_values must be"),
    ("add-keys-type", {**_add_kv(), "additional_keys": 1.0}, TypeError, "additional_keys must be a torch.Tensor"),
    ("add-dtype", {**_add_kv(), "additional_values": torch.randn(B, 3, H_KV, D_V, dtype=torch.float16)}, TypeError,
     "additional_values must have the dtype of q"),
    ("window-1", {"window": 1}, ValueError, "window must be >= 2"),
    ("window-float", {"window": 3.0}, TypeError, "window must be an int"),
    ("window-bool", {"window": True}, TypeError, "window must be an int"),
    ("window-float-entry", {"window": (3, 2.5)}, TypeError, r"window\[1\] must be an int"),
    ("window-length", {"window": (3, 3, 3)}, ValueError, r"window must be an int or have one entry per token dim"),
    ("window-too-big", {"window": (9, 3)}, ValueError, r"window \* dilation must be <= the token dim size"),
    ("window-times-dilation", {"window": (3, 3), "dilation": (3, 1)}, ValueError,
     r"window=3 \* dilation=3 > 8 in token dim 0"),
    ("stride-0", {"stride": 0}, ValueError, "stride must satisfy 1 <= stride <= window"),
    ("stride-gt-window", {"stride": (1, 4)}, ValueError, "stride must satisfy 1 <= stride <= window"),
    ("stride-str", {"stride": "1"}, TypeError, "stride must be an int"),
    ("dilation-0", {"dilation": 0}, ValueError, "dilation must be >= 1"),
    ("causal-int", {"is_causal": 2}, TypeError, "is_causal must be a bool"),
    ("causal-one", {"is_causal": 1}, TypeError, "is_causal must be a bool"),
    ("causal-entry", {"is_causal": (True, 1)}, TypeError, r"is_causal\[1\] must be a bool"),
    ("causal-length", {"is_causal": (True,)}, ValueError, "is_causal must be a bool or have one entry per token dim"),
    ("scale-str", {"scale": "0.1"}, TypeError, "scale must be a float or None"),
    ("scale-bool", {"scale": True}, TypeError, "scale must be a float or None"),
    ("scale-inf", {"scale": float("inf")}, ValueError, "scale must be finite"),
    ("scale-nan", {"scale": float("nan")}, ValueError, "scale must be finite"),
    ("scale-past-float32", {"scale": 1e39}, ValueError, "scale must be finite in float32"),
    ("window-past-int32", {"window": 2**63 - 1}, ValueError, r"window must be at most 2\*\*31 - 1"),
    ("return-lse-int", {"return_lse": 1}, TypeError, "return_lse must be a bool"),
    ("backend-type", {"backend": 3}, TypeError, "backend must be a str or None"),
    ("backend-name", {"backend": "tpu"}, ValueError,
     "backend must be one of cuda, cpu, flex, reference for gna, got 'tpu'"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "exc", "match"), [e[1:] for e in GNA_ERRORS], ids=[e[0] for e in GNA_ERRORS])
def test_gna_validation(changes: dict, exc: type, match: str) -> None:
    args = {**_inputs(), **changes}
    with pytest.raises(exc, match=match):
        natten_like.gna(**args)


def test_heads_must_be_positive() -> None:
    args = _inputs()
    args.update(q=torch.randn(B, X, Y, 0, D), k=torch.randn(B, X, Y, 0, D), v=torch.randn(B, X, Y, 0, D_V))
    with pytest.raises(ValueError, match="at least one head"):
        natten_like.gna(**args)


@pytest.mark.parametrize(("fn", "rank"), [(natten_like.na1d, 1), (natten_like.na3d, 3)])
def test_rank_aliases_check_rank(fn, rank: int) -> None:
    with pytest.raises(ValueError, match=f"needs q with {rank} token dim"):
        fn(**_inputs())


def test_na2d_rejects_non_tensor() -> None:
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        natten_like.na2d(None, None, None, 3)


def test_valid_per_dim_arguments_are_accepted() -> None:
    args = _inputs()
    out = natten_like.gna(**args, stride=[1, 3], dilation=(2, 1), is_causal=[True, False], scale=0)
    assert out.shape == (B, X, Y, H, D_V)


def test_scale_zero_is_not_the_default() -> None:
    args = _inputs()
    zero = natten_like.gna(**args, scale=0.0)
    default = natten_like.gna(**args)
    assert not torch.allclose(zero, default)
    assert torch.allclose(natten_like.gna(**args, scale=D**-0.5), default)


ATTENTION_ERRORS = [
    ("q-rank", {"q": torch.randn(1, 2, 3, 4, 8)}, ValueError, "q must be 4-D"),
    ("batch", {"k": torch.randn(2, 5, 2, 8)}, ValueError, "share the batch size"),
    ("v-tokens", {"v": torch.randn(1, 6, 2, 3)}, ValueError, "v must have k's token count"),
    ("heads", {"q": torch.randn(1, 4, 3, 8)}, ValueError, r"H % H_kv == 0"),
    ("causal-int", {"is_causal": 1}, TypeError, "is_causal must be a bool"),
    ("scale", {"scale": "x"}, TypeError, "scale must be a float or None"),
    ("dtype", {"v": torch.randn(1, 5, 2, 3, dtype=torch.float64)}, TypeError, "v must have the dtype of q"),
    ("return-lse", {"return_lse": None}, TypeError, "return_lse must be a bool"),
]


@pytest.mark.parametrize(
    ("changes", "exc", "match"), [e[1:] for e in ATTENTION_ERRORS], ids=[e[0] for e in ATTENTION_ERRORS]
)
def test_attention_validation(changes: dict, exc: type, match: str) -> None:
    args = {"q": torch.randn(1, 4, 4, 8), "k": torch.randn(1, 5, 2, 8), "v": torch.randn(1, 5, 2, 3), **changes}
    with pytest.raises(exc, match=match):
        natten_like.attention(**args)


def _merge_args() -> dict:
    return {"outputs": [torch.randn(2, 3, 4), torch.randn(2, 3, 4)], "lses": [torch.randn(2, 3), torch.randn(2, 3)]}


MERGE_ERRORS = [
    ("outputs-tensor", {"outputs": torch.randn(2, 2, 3, 4)}, TypeError, "outputs must be a list or tuple"),
    ("lengths", {"lses": [torch.randn(2, 3)]}, ValueError, "same length"),
    ("empty", {"outputs": [], "lses": []}, ValueError, "at least one"),
    ("output-shape", {"outputs": [torch.randn(2, 3, 4), torch.randn(2, 3, 5)]}, ValueError,
     r"outputs\[1\] must have the shape of outputs\[0\]"),
    ("lse-shape", {"lses": [torch.randn(2, 3), torch.randn(2, 4)]}, ValueError,
     r"lses\[1\] must be outputs\[1\]'s shape without the last dim"),
    ("lse-dtype", {"lses": [torch.randn(2, 3), torch.ones(2, 3, dtype=torch.int64)]}, TypeError,
     r"lses\[1\] must have a floating dtype"),
    ("output-dtype", {"outputs": [torch.randn(2, 3, 4), torch.randn(2, 3, 4).half()]}, TypeError,
     r"outputs\[1\] must have the dtype of outputs\[0\]"),
    ("lse-type", {"lses": [torch.randn(2, 3), 0.0]}, TypeError, r"lses\[1\] must be a torch.Tensor"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "exc", "match"), [e[1:] for e in MERGE_ERRORS], ids=[e[0] for e in MERGE_ERRORS])
def test_merge_validation(changes: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        natten_like.merge_attentions(**{**_merge_args(), **changes})


# ---- dispatch ----


def test_forced_cuda_lists_every_reason() -> None:
    # Holds with and without the CUDA kernels built (NATTEN_LIKE_CUDA_ARCH): float32 CPU tensors break two rules.
    with pytest.raises(BackendNotSupportedError) as info:
        natten_like.gna(**_inputs(), backend="cuda")
    assert "tensors are not on a CUDA device" in str(info.value)
    assert "dtype torch.float32 is not supported" in str(info.value)
    assert f"head dims (D, D_v) = ({D}, {D_V}) have no kernel" in str(info.value)


def test_forced_cpu_lists_every_reason() -> None:
    with pytest.raises(BackendNotSupportedError) as info:
        natten_like.gna(**_inputs(torch.float64, "meta"), backend="cpu")
    assert "tensors are on meta, not on the CPU" in str(info.value)
    assert "dtype torch.float64 is not supported" in str(info.value)


def test_forced_cpu_attention_refuses_cross_attention() -> None:
    q, kv = torch.randn(1, 4, 2, 8), torch.randn(1, 5, 2, 8)
    with pytest.raises(BackendNotSupportedError, match=r"N_q \(4\) != N_kv \(5\)"):
        natten_like.attention(q, kv, kv, backend="cpu")


@pytest.mark.parametrize(
    ("dtype", "device", "chosen"),
    [(torch.float32, "cpu", "cpu"), (torch.bfloat16, "cpu", "cpu"), (torch.float64, "cpu", "reference"),
     (torch.float32, "meta", "reference")],
)  # fmt: skip
def test_auto_dispatch_choice_is_logged(caplog, dtype: torch.dtype, device: str, chosen: str) -> None:
    with caplog.at_level(logging.DEBUG, logger="natten_like"):
        out = natten_like.gna(**_inputs(dtype, device))
    assert out.shape == (B, X, Y, H, D_V) and out.device.type == device
    messages = [r.getMessage() for r in caplog.records]
    logged = [m for m in messages if f"chose backend {chosen} " in m and "cuda refused: " in m]
    assert any("not on a CUDA device" in m for m in logged)


def test_auto_dispatch_result_is_the_cpu_result() -> None:
    auto = natten_like.gna(**_inputs())
    torch.testing.assert_close(auto, natten_like.gna(**_inputs(), backend="cpu"), rtol=0, atol=0)


def test_log_level_environment_variable(monkeypatch, capsys) -> None:
    logger = logging.getLogger("natten_like")
    old_level, old_handlers = logger.level, list(logger.handlers)
    monkeypatch.setenv("NATTEN_LIKE_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="NATTEN_LIKE_LOG_LEVEL must be a logging level"):
        natten_like._configure_logging()
    monkeypatch.setenv("NATTEN_LIKE_LOG_LEVEL", "debug")
    logger.handlers = []
    try:
        natten_like._configure_logging()  # the handler writes to the (captured) stderr of this moment
        natten_like.gna(**_inputs())
        assert "natten_like gna: chose backend cpu" in capsys.readouterr().err
    finally:
        logger.handlers = old_handlers
        logger.setLevel(old_level)


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", {k: dict(v) for k, v in backends._REGISTRY.items()})


def test_new_family_registers_without_central_edits(isolated_registry) -> None:
    def picky(problem: Problem) -> list[str]:
        return ["needs float16", "needs 2 heads"] if problem.params != "ok" else []

    register_backend("toy", "reference", lambda problem: [], lambda problem, x: ("reference", x))
    register_backend("toy", "cpu", picky, lambda problem, x: ("cpu", x))
    assert backends.registered_backends("toy") == ("cpu", "reference")  # BACKEND_ORDER, not registration order
    problem = Problem("toy", "cpu", torch.float32, False, "ok")
    assert select_backend(problem).run(problem, 1) == ("cpu", 1)
    problem = Problem("toy", "cpu", torch.float32, False, "bad")
    assert select_backend(problem).run(problem, 2) == ("reference", 2)
    with pytest.raises(BackendNotSupportedError, match="needs float16; needs 2 heads"):
        select_backend(problem, "cpu")


def test_no_backend_lists_every_refusal(isolated_registry) -> None:
    register_backend("toy", "cpu", lambda problem: ["a"], lambda problem: None)
    register_backend("toy", "reference", lambda problem: ["b", "c"], lambda problem: None)
    with pytest.raises(BackendNotSupportedError, match="cpu refused: a; reference refused: b, c"):
        select_backend(Problem("toy", "cpu", torch.float32, False, None))


def test_register_backend_rules(isolated_registry) -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        register_backend("toy", "tpu", lambda problem: [], lambda problem: None)
    with pytest.raises(ValueError, match="already registered"):
        register_backend("gna", "cpu", lambda problem: [], lambda problem: None)


def test_sm90_reasons_mirror_the_launchers_int32_tile_counts() -> None:
    """The sm90 GNA launcher refuses where a work tile's KV tiles could reach 2^31 (its producer counts them in int32):
    tokens per batch entry plus additional tiles of the kernel's KV block. The dispatcher names it first, since the
    sm80 fallback inside the op could not take the sm90 tiles."""
    from natten_like._validation import GnaParams
    from natten_like.backends import cuda as cuda_backend

    rule = "int32 KV tile counts"

    def reasons(tokens: int, num_additional: int, head_dim: int = 128) -> list[str]:
        params = GnaParams((tokens,), (3,), (1,), (1,), (False,), 1.0, num_additional, head_dim, head_dim)
        return [r for r in cuda_backend.sm90_reasons(params, torch.bfloat16) if rule in r]

    assert not reasons(2**31 - 1, 0)
    assert reasons(2**31 - 1, 1)  # one additional tile
    assert not reasons(2**31 - 2, 128)  # one tile of 128 rows
    assert reasons(2**31 - 2, 129)  # two
    assert reasons(2**31 - 2, 65, head_dim=256)  # 64-row tiles at head dim 256: two


def test_cuda_backend_declines_grids_past_the_launch_limit() -> None:
    """Every CUDA kernel launches one grid y slot per head and one z slot per batch entry (at most 65535 each): the
    dispatcher declines beyond, naming the limit, so that auto-dispatch falls back instead of failing the launch."""
    from natten_like.backends import cuda as cuda_backend

    def reasons(batch: int, heads: int) -> list[str]:
        problem = Problem("gna", "cuda", torch.bfloat16, False, None, batch=batch, heads=heads)
        return [r for r in cuda_backend._common_reasons(problem) if "grid limit" in r]

    assert not reasons(65535, 65535)
    assert reasons(65536, 8) == ["batch 65536 is above 65535, the kernels' grid limit (one CTA row per entry)"]
    assert reasons(1, 65536) == ["65536 heads are above 65535, the kernels' grid limit (one CTA row per head)"]


def test_dispatch_passes_the_batch_heads_and_device_of_q(isolated_registry) -> None:
    from natten_like.backends import dispatch

    seen = []
    register_backend("toy", "cpu", lambda problem: seen.append(problem) or [], lambda problem, *t: None)
    dispatch("toy", None, None, torch.zeros(3, 5, 7, 4, 8))  # [B, *tokens, H, D]
    dispatch("toy", None, None, torch.zeros(11, 4, 8))  # packed [total, H, D]
    assert [(p.batch, p.heads, p.device_index) for p in seen] == [(3, 4, None), (1, 4, None)]


def test_cuda_smem_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared-memory check the CUDA backend makes before a launch that would fail (the MLA decode kernel's 154 KB,
    the head-dim-256 kernels'), on a faked GPU: an sm89-class opt-in limit refuses, an sm90-class one accepts."""
    from types import SimpleNamespace

    from natten_like.backends import cuda

    optin = {"value": 99 * 1024}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda index: SimpleNamespace(shared_memory_per_block_optin=optin["value"])
    )
    problem = Problem("latent", "cuda", torch.bfloat16, False, None, device_index=0)
    (reason,) = cuda.smem_reasons(problem, cuda.SM80_LATENT_SMEM, "the MLA decode kernel")
    assert f"needs {cuda.SM80_LATENT_SMEM} bytes" in reason and f"allows {99 * 1024}" in reason
    optin["value"] = 227 * 1024
    assert cuda.smem_reasons(problem, cuda.SM80_LATENT_SMEM, "the MLA decode kernel") == []
    assert cuda.smem_reasons(Problem("latent", "cpu", torch.float32, False, None), 1 << 30, "x") == []


@pytest.mark.parametrize("family", ["gna", "block_sparse", "strided_shard"])
def test_double_backward_raises(family: str) -> None:
    """Differentiating a gradient of the fused ops raises (PyTorch's fallback for an op without a formula would treat
    the first gradients as constants and return zeros); first-order gradients with create_graph=True still work."""
    q, k, v = (torch.randn(1, 16, 2, 8, requires_grad=True) for _ in range(3))
    if family == "gna":
        out = natten_like.gna(q, k, v, window=3, backend="cpu")
    elif family == "block_sparse":
        out = natten_like.block_sparse_attention(q, k, v, torch.ones(1, 1, 2, 2, dtype=torch.bool), q_block=8,
                                                 kv_block=8, backend="cpu")  # fmt: skip
    else:
        out = natten_like.strided_shard_attention(q, k, v, block_size=4, local_blocks=1, vert_stride=2, backend="cpu")
    (grad_q,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    assert grad_q.shape == q.shape and grad_q.abs().sum() > 0
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(grad_q.square().sum(), [q, k, v])
