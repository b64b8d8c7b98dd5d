"""The torch.nn layers: shapes, state dicts, equality with hand-written projections + the float64 reference, training,
torch.compile(fullgraph=True) and constructor/forward validation."""

from __future__ import annotations

import math

import natten_like
import pytest
import torch
from natten_like import latent
from natten_like.modules import (
    BlockSparseAttention,
    MultiHeadLatentAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
    StridedShardAttention,
)

NA_CLASSES = {1: NeighborhoodAttention1D, 2: NeighborhoodAttention2D, 3: NeighborhoodAttention3D}


def toy_rope(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate channel pairs of ``[B, *tokens, H, D]`` by an angle growing with the flattened token index."""

    def rotate(x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[1:-2]
        angle = torch.arange(math.prod(tokens), dtype=x.dtype).reshape(*tokens, 1, 1) * 0.1
        even, odd = x[..., 0::2], x[..., 1::2]
        cos, sin = angle.cos(), angle.sin()
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)

    return rotate(q), rotate(k)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(torch.float32).eps) * weight


def hand_written_gna(module, x: torch.Tensor, additional: torch.Tensor | None) -> torch.Tensor:
    """The layer written out in float64: projections, RMSNorm, RoPE hook, gna on the reference backend, output proj."""
    h, h_kv, d = module.num_heads, module.num_kv_heads, module.head_dim
    w = {name: p.detach().double() for name, p in module.named_parameters()}
    x = x.double()

    def linear(t: torch.Tensor, rows: slice) -> torch.Tensor:
        bias = w["qkv.bias"][rows] if "qkv.bias" in w else 0.0
        return t @ w["qkv.weight"][rows].T + bias

    q = linear(x, slice(0, h * d)).unflatten(-1, (h, d))
    k = linear(x, slice(h * d, (h + h_kv) * d)).unflatten(-1, (h_kv, d))
    v = linear(x, slice((h + h_kv) * d, None)).unflatten(-1, (h_kv, d))
    if "q_norm.weight" in w:
        q, k = rms_norm(q, w["q_norm.weight"]), rms_norm(k, w["k_norm.weight"])
    if module.rope is not None:
        q, k = module.rope(q, k)
    add_k = add_v = None
    if additional is not None:
        additional = additional.double()
        add_k = linear(additional, slice(h * d, (h + h_kv) * d)).unflatten(-1, (h_kv, d))
        add_v = linear(additional, slice((h + h_kv) * d, None)).unflatten(-1, (h_kv, d))
        if "k_norm.weight" in w:
            add_k = rms_norm(add_k, w["k_norm.weight"])
    out = natten_like.gna(
        q, k, v, module.window, module.stride, module.dilation, module.is_causal,
        additional_keys=add_k, additional_values=add_v, backend="reference",
    )  # fmt: skip
    return out.flatten(-2) @ w["proj.weight"].T + w.get("proj.bias", 0.0)


NA_CONFIGS = [
    ((11,), dict(window=5, stride=2, dilation=2, is_causal=True)),
    (
        (6, 7),
        dict(window=(3, 5), stride=(1, 2), is_causal=(False, True), qk_norm=True, rope=toy_rope, num_kv_heads=2),
    ),
    ((4, 5, 6), dict(window=(2, 3, 3), dilation=(1, 1, 2), qkv_bias=False, proj_bias=False, num_kv_heads=1)),
]


@pytest.mark.parametrize(("tokens", "kwargs"), NA_CONFIGS, ids=lambda v: str(v) if isinstance(v, tuple) else "")
@pytest.mark.parametrize("num_additional", [0, 3])
def test_na_equals_hand_written(tokens: tuple[int, ...], kwargs: dict, num_additional: int) -> None:
    torch.manual_seed(0)
    module = NA_CLASSES[len(tokens)](16, 4, **kwargs)
    if module.q_norm.__class__ is torch.nn.RMSNorm:
        # Non-trivial norm weights, so a missing or misplaced norm cannot pass.
        torch.nn.init.uniform_(module.q_norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(module.k_norm.weight, 0.5, 1.5)
    x = torch.randn(2, *tokens, 16)
    additional = torch.randn(2, num_additional, 16) if num_additional else None
    out = module(x, additional)
    assert out.shape == x.shape and out.dtype == torch.float32
    expected = hand_written_gna(module, x, additional)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)


def test_state_dict_round_trip() -> None:
    config = dict(window=3, stride=(1, 2), qk_norm=True, num_kv_heads=2)
    torch.manual_seed(1)
    source = NeighborhoodAttention2D(16, 4, **config)
    torch.nn.init.uniform_(source.q_norm.weight, 0.5, 1.5)
    torch.manual_seed(2)
    target = NeighborhoodAttention2D(16, 4, **config)
    state = source.state_dict()
    assert set(state) == {"qkv.weight", "qkv.bias", "q_norm.weight", "k_norm.weight", "proj.weight", "proj.bias"}
    assert state["qkv.weight"].shape == ((4 + 2 * 2) * 4, 16)
    x = torch.randn(2, 5, 6, 16)
    assert not torch.allclose(target(x), source(x))
    target.load_state_dict(state)
    torch.testing.assert_close(target(x), source(x), atol=0, rtol=0)
    plain = NeighborhoodAttention2D(16, 4, window=3)
    assert set(plain.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}


def test_block_sparse_and_strided_shard_equal_hand_written() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 20, 16)
    blocks = torch.rand(2, 4, 5, 5) < 0.6
    blocks[..., torch.arange(5), torch.arange(5)] = True
    layers = [
        (BlockSparseAttention(16, 4, q_block=4, kv_block=4, is_causal=True, num_kv_heads=2), (blocks,),
         lambda q, k, v: natten_like.block_sparse_attention(q, k, v, blocks, q_block=4, kv_block=4, is_causal=True,
                                                             backend="reference")),
        (StridedShardAttention(16, 4, block_size=4, local_blocks=1, vert_stride=2, qk_norm=True), (),
         lambda q, k, v: natten_like.strided_shard_attention(q, k, v, block_size=4, local_blocks=1, vert_stride=2,
                                                              backend="reference")),
    ]  # fmt: skip
    for layer, args, attend in layers:
        out = layer(x, *args)
        assert out.shape == x.shape
        w = {name: p.detach().double() for name, p in layer.named_parameters()}
        h, h_kv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
        qkv = x.double() @ w["qkv.weight"].T + w["qkv.bias"]
        q, k, v = qkv.split([h * d, h_kv * d, h_kv * d], -1)
        q, k, v = q.unflatten(-1, (h, d)), k.unflatten(-1, (h_kv, d)), v.unflatten(-1, (h_kv, d))
        if "q_norm.weight" in w:
            q, k = rms_norm(q, w["q_norm.weight"]), rms_norm(k, w["k_norm.weight"])
        expected = attend(q, k, v).flatten(-2) @ w["proj.weight"].T + w["proj.bias"]
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)


def test_latent_layer_is_re_exported() -> None:
    assert MultiHeadLatentAttention is latent.MultiHeadLatentAttention


def test_na2d_trains_to_denoise() -> None:
    # Target: the 3x3 neighborhood mean of the clean signal, from a noisy copy; a window-3 NA layer can express it.
    torch.manual_seed(0)
    model = torch.nn.Sequential(NeighborhoodAttention2D(16, 2, window=3, qk_norm=True), torch.nn.LayerNorm(16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    clean = torch.randn(8, 6, 6, 16)
    noisy = clean + 0.3 * torch.randn_like(clean)
    target = torch.nn.functional.avg_pool2d(clean.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=False)
    target = target.permute(0, 2, 3, 1)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(noisy), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_compile_fullgraph_forward_backward() -> None:
    torch.manual_seed(0)
    module = NeighborhoodAttention2D(16, 4, window=(3, 5), stride=(1, 2), is_causal=(False, True), qk_norm=True,
                                     num_kv_heads=2)  # fmt: skip
    x = torch.randn(2, 6, 7, 16, requires_grad=True)
    additional = torch.randn(2, 2, 16, requires_grad=True)
    expected = module(x, additional)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, additional, *module.parameters()])
    torch._dynamo.reset()
    # aot_eager traces forward and backward like inductor would (fullgraph raises on any graph break) without the
    # minutes of C++ codegen; the fused op itself is compiled by inductor in tests/test_compile.py.
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    actual = compiled(x, additional)
    actual_grads = torch.autograd.grad(actual.square().sum(), [x, additional, *module.parameters()])
    torch.testing.assert_close(actual, expected)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize(
    ("build", "inputs"),
    [
        (lambda: NeighborhoodAttention1D(16, 2, 3), lambda: (torch.randn(1, 9, 16),)),
        (lambda: NeighborhoodAttention2D(16, 2, 3, stride=2), lambda: (torch.randn(1, 6, 5, 16),)),
        (lambda: NeighborhoodAttention3D(16, 2, 2, is_causal=True), lambda: (torch.randn(1, 3, 4, 4, 16),)),
        (
            lambda: BlockSparseAttention(16, 2, q_block=4, kv_block=4),
            lambda: (torch.randn(1, 12, 16), torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.3),
        ),
        (
            lambda: StridedShardAttention(16, 4, block_size=4, local_blocks=1, vert_stride=2),
            lambda: (torch.randn(1, 12, 16),),
        ),
    ],
    ids=["na1d", "na2d", "na3d-causal", "block-sparse", "strided-shard"],
)
def test_modules_have_no_graph_breaks(build, inputs) -> None:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(build())(*inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: NeighborhoodAttention1D(10, 4, 3), ValueError, "dim must be divisible by num_heads"),
        (lambda: NeighborhoodAttention1D(16, 0, 3), ValueError, "dim and num_heads must be >= 1"),
        (lambda: NeighborhoodAttention1D(16.0, 4, 3), TypeError, "dim must be an int"),
        (lambda: NeighborhoodAttention1D(16, 4, 1), ValueError, "window must be >= 2"),
        (lambda: NeighborhoodAttention1D(16, 4, 3, stride=4), ValueError, "1 <= stride <= window"),
        (lambda: NeighborhoodAttention1D(16, 4, 3, dilation=0), ValueError, "dilation must be >= 1"),
        (lambda: NeighborhoodAttention2D(16, 4, (3, 3, 3)), ValueError, "one entry per token dim"),
        (lambda: NeighborhoodAttention2D(16, 4, 3, is_causal=1), TypeError, "is_causal must be a bool"),
        (lambda: NeighborhoodAttention1D(16, 4, 3, num_kv_heads=3), ValueError, "num_kv_heads must be >= 1 and div"),
        (lambda: NeighborhoodAttention1D(16, 4, 3, rope="yes"), TypeError, "rope must be a callable"),
        (lambda: NeighborhoodAttention1D(16, 4, 3, qk_norm=1), TypeError, "qk_norm must be a bool"),
        (lambda: NeighborhoodAttention1D(16, 4, 3, backend="tpu"), ValueError, "backend must be None or one of"),
        (lambda: NeighborhoodAttention1D(16, 4, 3, backend=1), TypeError, "backend must be a str or None"),
        (lambda: BlockSparseAttention(16, 4, q_block=0), ValueError, "q_block and kv_block must be >= 1"),
        (
            lambda: StridedShardAttention(16, 4, block_size=4, local_blocks=1, vert_stride=2, num_dense_heads=5),
            ValueError,
            "num_dense_heads must be in",
        ),
        (
            lambda: StridedShardAttention(16, 4, block_size=0, local_blocks=1, vert_stride=2),
            ValueError,
            "block_size must be >= 1",
        ),
    ],
)
def test_constructor_validation(build, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_forward_validation() -> None:
    layer = NeighborhoodAttention2D(16, 4, window=3, dilation=2)
    with pytest.raises(ValueError, match=r"x must be \[B, X, Y, dim\] with dim=16"):
        layer(torch.randn(1, 6, 6, 8))
    with pytest.raises(ValueError, match=r"x must be \[B, X, Y, dim\]"):
        layer(torch.randn(1, 36, 16))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer([1.0])
    with pytest.raises(ValueError, match="window \\* dilation must be <= the token dim size"):
        layer(torch.randn(1, 5, 6, 16))
    with pytest.raises(ValueError, match=r"additional_tokens must be \[B=1, N_add, dim=16\]"):
        layer(torch.randn(1, 6, 6, 16), torch.randn(2, 3, 16))


def test_latent_layer_has_no_graph_breaks() -> None:
    torch._dynamo.reset()
    layer = MultiHeadLatentAttention(32, 4, latent_dim=16, rope_dim=8, nope_dim=8, v_dim=8)
    with torch.no_grad():  # inference: the fused latent kernel is forward-only
        explanation = torch._dynamo.explain(layer)(torch.randn(2, 5, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
