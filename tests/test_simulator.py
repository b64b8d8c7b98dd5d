"""Tests of the analytical simulator (``simulator/``): tile counts against brute force from the exact element mask and
against the C++ policy, the other families' counts, the Python API's validation and the CLI (run in subprocesses,
one of them with torch made unimportable).

SIMULATOR_EXTENDED=1 widens the random sweeps.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import math
import os
import random
import subprocess
import sys
from functools import reduce
from pathlib import Path

import numpy as np
import pytest

from simulator import (
    amdahl,
    get_preset,
    make_block_mask,
    simulate_block_sparse,
    simulate_gna,
    simulate_latent,
    simulate_strided_shard,
)
from simulator.gna import (
    GnaConfig,
    flattened_counts,
    gna_config,
    gna_tile_visits,
    multidim_counts,
    suggest_fully_block_sparse,
)
from simulator.gna_policy import GnaDim, ceil_div, gna_window, gna_window_np
from simulator.strided_shard import s2_block_mask
from simulator.tile_configs import clamp_tile, cta_block, gna_tiles

ROOT = Path(__file__).resolve().parents[1]
EXTENDED = os.environ.get("SIMULATOR_EXTENDED") == "1"
N_RANDOM = 400 if EXTENDED else 60


def random_config(rng: random.Random, max_len: int = 12) -> GnaConfig:
    """A random small valid GNA config of rank 1-3 (dilation, causal, stride, tiles all drawn)."""
    rank = rng.randint(1, 3)
    shape, window, stride, dilation, causal, q_tile, kv_tile = [], [], [], [], [], [], []
    for _ in range(rank):
        n = rng.randint(2, max_len if rank < 3 else 7)
        d = rng.choice([1, 1, 2, 3]) if n >= 4 else 1
        d = min(d, n // 2)
        k = rng.randint(2, n // d)
        shape.append(n)
        dilation.append(d)
        window.append(k)
        stride.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
        q_tile.append(rng.randint(1, 5))
        kv_tile.append(rng.randint(1, 5))
    return gna_config(tuple(shape), tuple(window), tuple(stride), tuple(dilation), tuple(causal), q_tile, kv_tile)


def dim_mask(dim: GnaDim) -> np.ndarray:
    """[L, L] bool: query x attends key y, straight from ``GnaDim.window_of`` (global coordinates, dilation applied)."""
    mask = np.zeros((dim.length, dim.length), dtype=bool)
    for x in range(dim.length):
        mask[x, dim.window_of(x)] = True
    return mask


def element_mask(dims: tuple[GnaDim, ...]) -> np.ndarray:
    """[N, N] bool over row-major flat tokens: AND over dims is the Kronecker product of per-dim masks."""
    return reduce(np.kron, [dim_mask(d) for d in dims]).astype(bool)


def brute_tile_visits(config: GnaConfig, tiling: str) -> np.ndarray:
    """[num_q_tiles, 3] (visited, full, rows) from the element mask alone, Q tiles in the policy's slot order.

    Static: a KV tile (same dilation groups as the Q tile, on the group's tile grid) is visited iff it holds an attended
    pair. Dynamic: per dim, the attended keys' group-local span [lo, hi) is cut into tiles from lo. Either way a visited
    tile is full iff it is complete and every pair in it is attended.
    """
    dims = config.dims()
    mask = element_mask(dims)
    strides = [math.prod(config.shape[i + 1 :]) for i in range(config.rank)]
    rows_out = []
    for slots in itertools.product(*(d.slots(t) for d, t in zip(dims, config.q_tile, strict=True))):
        q_axes = [
            [g + x * d.dilation for x in range(t * tq, min((t + 1) * tq, d.group_length(g)))]
            for (g, t), d, tq in zip(slots, dims, config.q_tile, strict=True)
        ]
        q_rows = [sum(c * s for c, s in zip(p, strides, strict=True)) for p in itertools.product(*q_axes)]
        sub = mask[q_rows]
        if tiling == "static":
            kv_boxes = [
                [list(range(u * tk, (u + 1) * tk)) for u in range(ceil_div(d.group_length(g), tk))]
                for (g, _), d, tk in zip(slots, dims, config.kv_tile, strict=True)
            ]
        else:
            kv_boxes = []
            for i, ((g, _), d, tk) in enumerate(zip(slots, dims, config.kv_tile, strict=True)):
                attended = [
                    x
                    for x in range(d.group_length(g))
                    if sub.reshape(len(q_rows), *config.shape).take(g + x * d.dilation, axis=1 + i).any()
                ]
                lo, hi = attended[0], attended[-1] + 1
                assert hi - lo == len(attended), "the attended keys of a tile must form one interval per dim"
                kv_boxes.append([list(range(b, b + tk)) for b in range(lo, hi, tk)])
        visited = full = 0
        for box in itertools.product(*kv_boxes):
            complete = all(x[-1] < d.group_length(g) for x, d, (g, _) in zip(box, dims, slots, strict=True))
            axes = [
                [g + x * d.dilation for x in xs if x < d.group_length(g)]
                for xs, d, (g, _) in zip(box, dims, slots, strict=True)
            ]
            cols = [sum(c * s for c, s in zip(p, strides, strict=True)) for p in itertools.product(*axes)]
            block = sub[:, cols]
            if tiling == "static" and not block.any():
                continue
            visited += 1
            full += int(complete and block.all())
        rows_out.append((visited, full, len(q_rows)))
    return np.array(rows_out, dtype=np.int64)


def test_vectorised_window_equals_scalar_twin() -> None:
    for lg, k, s, causal in itertools.product(range(2, 14), range(2, 14), range(1, 14), (False, True)):
        if k > lg or s > k:
            continue
        begin, end = gna_window_np(np.arange(lg, dtype=np.int64), lg, k, s, causal)
        assert [(int(b), int(e)) for b, e in zip(begin, end, strict=True)] == [
            gna_window(i, lg, k, s, causal) for i in range(lg)
        ]


@pytest.mark.parametrize("tiling", ["static", "dynamic"])
def test_tile_counts_match_brute_force(tiling: str) -> None:
    rng = random.Random(1234 if tiling == "static" else 4321)
    for _ in range(N_RANDOM):
        config = random_config(rng)
        expected = brute_tile_visits(config, tiling)
        got = gna_tile_visits(config, tiling)
        assert np.array_equal(got, expected), config
        counts = multidim_counts(config, tiling)
        dense = brute_tile_visits(
            dataclasses.replace(config, window=config.shape, stride=(1,) * config.rank, dilation=(1,) * config.rank),
            tiling,
        )
        assert counts.tile_bound == pytest.approx(dense[:, 0].max() / expected[:, 0].max(), rel=1e-12)
        assert counts.tile_bound_avg == pytest.approx(dense[:, 0].sum() / expected[:, 0].sum(), rel=1e-12)
        assert counts.num_q_tiles == len(expected)
        assert counts.worst_kv_tiles == expected[:, 0].max()
        assert counts.visited_kv_tiles == expected[:, 0].sum()
        assert counts.full_kv_tiles == expected[:, 1].sum()
        assert counts.fully_block_sparse == bool((expected[:, 0] == expected[:, 1]).all())


def test_tile_counts_match_cpp_policy() -> None:
    import torch

    importlib.import_module("natten_like._C")  # after torch: registers torch.ops.natten_like

    rng = random.Random(99)
    for _ in range(N_RANDOM * 2):
        config = random_config(rng, max_len=40)
        visits = torch.ops.natten_like.gna_visits(
            list(config.shape),
            list(config.window),
            list(config.stride),
            list(config.dilation),
            list(config.causal),
            list(config.q_tile),
            list(config.kv_tile),
        ).numpy()
        assert np.array_equal(gna_tile_visits(config), visits), config
        counts = multidim_counts(config, "static")
        assert counts.worst_kv_tiles == visits[:, 0].max()
        assert counts.avg_kv_tiles == pytest.approx(visits[:, 0].mean(), rel=1e-12)
        assert counts.visited_kv_tiles == visits[:, 0].sum()
        assert counts.full_kv_tiles == visits[:, 1].sum()
        assert visits[:, 2].sum() == config.tokens


def test_flop_bound_matches_element_mask() -> None:
    rng = random.Random(7)
    for _ in range(N_RANDOM):
        config = random_config(rng)
        mask = element_mask(config.dims())
        dense = element_mask(config.dense_dims())
        result = simulate_gna(
            config.shape,
            config.window,
            config.stride,
            config.dilation,
            config.causal,
            config.q_tile,
            config.kv_tile,
            flattened=False,
            suggest=False,
        )
        assert result.sparse_pairs == mask.sum()
        assert result.dense_pairs == dense.sum()
        assert result.flop_bound == pytest.approx(dense.sum() / mask.sum(), rel=1e-12)


def test_dynamic_tiling_never_visits_more_than_static() -> None:
    rng = random.Random(11)
    for _ in range(N_RANDOM):
        config = random_config(rng, max_len=30)
        static, dynamic = gna_tile_visits(config, "static"), gna_tile_visits(config, "dynamic")
        assert (dynamic[:, 0] <= static[:, 0]).all(), config


def test_flattened_counts_match_brute_force() -> None:
    rng = random.Random(5)
    for _ in range(N_RANDOM // 2):
        config = random_config(rng)
        tq, tk = math.prod(config.q_tile), math.prod(config.kv_tile)
        n = config.tokens
        visited, full, dense = [], [], []
        for mask, out in ((element_mask(config.dims()), visited), (element_mask(config.dense_dims()), dense)):
            for a in range(0, n, tq):
                blocks = [mask[a : a + tq, b : b + tk] for b in range(0, n, tk)]
                out.append(sum(blk.any() for blk in blocks))
                if out is visited:
                    full.append(sum(blk.shape[1] == tk and blk.all() for blk in blocks))
        counts = flattened_counts(config)
        assert counts.num_q_tiles == len(visited)
        assert counts.worst_kv_tiles == max(visited), config
        assert counts.visited_kv_tiles == sum(visited), config
        assert counts.full_kv_tiles == sum(full), config
        assert counts.tile_bound == pytest.approx(max(dense) / max(visited), rel=1e-12)
        assert counts.tile_bound_avg == pytest.approx(sum(dense) / sum(visited), rel=1e-12)


def test_flattened_equals_multidim_in_1d_without_dilation() -> None:
    config = gna_config(100, 13, 4, 1, False, 16, 8)
    result = simulate_gna(100, 13, 4, q_tile=16, kv_tile=8, suggest=False)
    flat = flattened_counts(config)
    assert result.flattened == result.tiles
    assert (flat.worst_kv_tiles, flat.visited_kv_tiles, flat.full_kv_tiles) == (
        result.tiles.worst_kv_tiles,
        result.tiles.visited_kv_tiles,
        result.tiles.full_kv_tiles,
    )


def test_known_values_blocked_attention() -> None:
    # 2-D blocked attention (stride = window = tile) is the textbook fully block-sparse case: each 8x8 Q tile visits
    # exactly its own 8x8 KV tile; dense visits all (32/8)^2 = 16.
    result = simulate_gna((32, 32), 8, 8, q_tile=(8, 8), kv_tile=(8, 8), suggest=False)
    assert result.fully_block_sparse
    assert result.tiles.worst_kv_tiles == 1
    assert result.tile_bound == 16.0
    assert result.flop_bound == 16.0
    assert result.tiles.masked_fraction == 0.0


def test_suggestions_are_fully_block_sparse_and_keep_tile_sizes() -> None:
    rng = random.Random(3)
    checked = 0
    while checked < 12:
        config = random_config(rng, max_len=24)
        if multidim_counts(config, "static").fully_block_sparse:
            continue
        for s in suggest_fully_block_sparse(config):
            trial = GnaConfig(
                config.shape, config.window, s.stride, config.dilation, config.causal, s.q_tile, s.kv_tile, "test"
            )
            visits = brute_tile_visits(trial, "static")
            assert (visits[:, 0] == visits[:, 1]).all(), (config, s)
            assert math.prod(s.q_tile) == math.prod(config.q_tile)
            assert math.prod(s.kv_tile) == math.prod(config.kv_tile)
            assert s.tile_bound == multidim_counts(trial, "static").tile_bound
        checked += 1


def test_suggestion_found_for_off_grid_stride() -> None:
    # Stride 12 with 8-token tiles cuts Q tiles across stride groups; a stride that is a multiple of 8 fixes it.
    result = simulate_gna(256, 24, 12, q_tile=8, kv_tile=8)
    assert not result.fully_block_sparse
    assert 0.0 < result.tiles.masked_fraction < 1.0
    assert result.suggestions, "expected a nearby fully block-sparse config"
    assert all(s.stride[0] % 8 == 0 or s.q_tile[0] != 8 for s in result.suggestions)


def brute_block_counts(
    mask: np.ndarray, seq_q: int, seq_kv: int, q_block: int, kv_block: int, causal: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per (head, Q block): visited and full KV blocks, and the attended pairs, from the element mask."""
    q = np.arange(seq_q)[:, None]
    k = np.arange(seq_kv)[None, :]
    allowed = (k <= q + seq_kv - seq_q) if causal else np.ones((seq_q, seq_kv), dtype=bool)
    visited = np.zeros(mask.shape[:2], dtype=np.int64)
    full = np.zeros(mask.shape[:2], dtype=np.int64)
    pairs = 0
    for h in range(mask.shape[0]):
        element = np.kron(mask[h], np.ones((q_block, kv_block), dtype=bool))[:seq_q, :seq_kv] & allowed
        pairs += int(element.sum())
        for i in range(mask.shape[1]):
            for j in range(mask.shape[2]):
                blk = element[i * q_block : (i + 1) * q_block, j * kv_block : (j + 1) * kv_block]
                if blk.any():
                    visited[h, i] += 1
                    full[h, i] += int(blk.shape[1] == kv_block and blk.all())
    return visited, full, pairs


def test_block_sparse_counts_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    for trial in range(N_RANDOM // 2):
        seq_kv = int(rng.integers(1, 70))
        seq_q = int(rng.integers(1, seq_kv + 1)) if trial % 2 else seq_kv
        q_block, kv_block = int(rng.integers(1, 17)), int(rng.integers(1, 17))
        causal = bool(trial % 3 == 0)
        heads = int(rng.integers(1, 4))
        shape = (heads, ceil_div(seq_q, q_block), ceil_div(seq_kv, kv_block))
        mask = rng.random(shape) < rng.uniform(0.2, 1.0)
        visited, full, pairs = brute_block_counts(mask, seq_q, seq_kv, q_block, kv_block, causal)
        if (visited == 0).any():
            with pytest.raises(ValueError, match="block_mask"):
                simulate_block_sparse(
                    mask,
                    seq_len=seq_q,
                    seq_len_kv=seq_kv,
                    q_block=q_block,
                    kv_block=kv_block,
                    causal=causal,
                    heads=heads,
                )
            continue
        result = simulate_block_sparse(
            mask, seq_len=seq_q, seq_len_kv=seq_kv, q_block=q_block, kv_block=kv_block, causal=causal, heads=heads
        )
        dense_visited, _, dense_pairs = brute_block_counts(
            np.ones(shape, dtype=bool), seq_q, seq_kv, q_block, kv_block, causal
        )
        assert result.sparse_pairs == pairs
        assert result.dense_pairs == dense_pairs
        assert result.tiles.worst_kv_tiles == visited.max()
        assert result.tiles.visited_kv_tiles == visited.sum()
        assert result.tiles.full_kv_tiles == full.sum()
        assert result.tile_bound_avg == pytest.approx(dense_visited.sum() / visited.sum(), rel=1e-12)
        assert result.tiles.tile_bound == pytest.approx(dense_visited.max() / visited.max(), rel=1e-12)


def test_block_mask_patterns() -> None:
    band = make_block_mask(1024, 1024, 64, 64, 0.25, "band")
    assert band.shape == (1, 16, 16)
    assert (band.sum(axis=2) == 4).all()
    causal_band = make_block_mask(1024, 1024, 64, 64, 0.25, "band", causal=True)
    assert all(causal_band[0, i, max(0, i - 3) : i + 1].all() for i in range(16))
    assert not np.triu(causal_band[0], 1).any()
    random_mask = make_block_mask(4096, 4096, 64, 64, 0.3, "random", heads=4, seed=1)
    assert random_mask.any(axis=2).all()
    assert 0.25 < random_mask.mean() < 0.35
    assert np.array_equal(random_mask, make_block_mask(4096, 4096, 64, 64, 0.3, "random", heads=4, seed=1))


def s2_rule(bq: int, bk: int, h: int, heads: int, local: int, vert: int, causal: bool, homo: bool, offset: int) -> bool:
    """S2-Attention's keep rule for one block, written out literally."""
    step = 0 if homo else max(1, vert // heads)
    near = (bq - bk < local) if causal else (abs(bq - bk) < local)
    keep = near or (bk + h * step + offset) % vert == 0
    return keep and (bk <= bq or not causal)


def test_s2_mask_matches_rule() -> None:
    rng = random.Random(8)
    for _ in range(60):
        nb, heads = rng.randint(1, 24), rng.choice([1, 2, 4, 8, 16])
        kv_heads = rng.choice([h for h in (1, 2, 4, 8, 16) if heads % h == 0])
        local, vert = rng.randint(1, 5), rng.randint(1, 33)
        causal, homo = rng.random() < 0.6, rng.random() < 0.3
        dense, offset = rng.randint(0, kv_heads), rng.randint(0, 3)
        mask = s2_block_mask(nb, local, vert, heads, kv_heads, causal, homo, dense, offset)
        for h, bq, bk in itertools.product(range(kv_heads), range(nb), range(nb)):
            expected = (
                (bk <= bq or not causal)
                if h >= kv_heads - dense
                else s2_rule(bq, bk, h, heads, local, vert, causal, homo, offset)
            )
            assert mask[h, bq, bk] == expected


def test_strided_shard_counts() -> None:
    seq, block, heads, kv_heads = 1000, 64, 8, 2
    result = simulate_strided_shard(
        seq_len=seq, block_size=block, local_blocks=3, vert_stride=4, heads=heads, kv_heads=kv_heads, causal=True
    )
    mask = s2_block_mask(ceil_div(seq, block), 3, 4, heads, kv_heads, True)
    visited, full, pairs = brute_block_counts(mask, seq, seq, block, block, True)
    assert result.sparse_pairs == pairs * (heads // kv_heads)
    assert result.tiles.worst_kv_tiles == visited.max()
    assert result.tiles.full_kv_tiles == full.sum()
    assert not result.fully_block_sparse  # causal diagonal blocks always need a mask


def test_latent_counts() -> None:
    lengths = (100, 257, 64)
    result = simulate_latent(batch=3, kv_len=lengths, q_len=4, heads=16, latent_dim=512, rope_dim=64, page_size=64)
    assert result.causal
    pairs = sum(1 for n in lengths for j in range(4) for k in range(n) if k <= n - 4 + j)
    assert result.flops == 2 * 16 * pairs * (576 + 512)
    cache = sum(ceil_div(n, 64) * 64 for n in lengths) * 576 * 2
    assert result.cache_bytes == cache
    assert result.bytes_moved == cache + 3 * 4 * 16 * (576 + 512) * 2
    assert result.flop_bound == pytest.approx(4 * sum(lengths) / pairs)
    # One query token and few heads: a few FLOPs per byte, memory-bound on every GPU.
    decode = simulate_latent(batch=8, kv_len=8192, q_len=1, heads=16)
    assert all(t.bound == "memory" for t in decode.times)
    h200 = simulate_latent(batch=8, kv_len=8192, q_len=1, heads=16, gpu="h200").times[0]
    assert h200.ms == pytest.approx(decode.bytes_moved / 4.8e12 * 1e3)


def test_amdahl_and_roofline() -> None:
    assert amdahl(10.0, 0.0) == 1.0
    assert amdahl(10.0, 1.0) == pytest.approx(10.0)
    assert amdahl(10.0, 0.6, 0.0) == 1.0
    assert amdahl(4.0, 0.5, 0.5) == pytest.approx(1 / (0.5 + 0.5 * (0.5 + 0.125)))
    result = simulate_gna((32, 32), 8, 8, q_tile=8, kv_tile=8, heads=2, attention_share=0.6, gpu="a100")
    assert result.endtoend.e2e_speedup_flop == pytest.approx(1 / (0.4 + 0.6 / 16))
    dense_flops = 4 * 1024 * 1024 * 2 * 128
    assert result.roofline[0].dense_ms == pytest.approx(
        max(dense_flops / 312e12, 4 * 1024 * 2 * 128 * 2 / 2.039e12) * 1e3
    )
    measured = simulate_gna((32, 32), 8, 8, q_tile=8, kv_tile=8, gpu="h100", tflops=700.0)
    assert measured.roofline[0].dense_ms == pytest.approx(
        max(4 * 1024 * 1024 * 128 / 700e12, 1024 * 128 * 8 / 3.35e12) * 1e3
    )


def test_arch_picks_tiles_from_the_table() -> None:
    for arch in ("sm80", "sm90", "sm100"):
        q_tile, kv_tile = gna_tiles(arch, 3)
        config = gna_config((30, 48, 80), (18, 24, 24), arch=arch)
        assert config.q_tile == clamp_tile(q_tile, (30, 48, 80), (1, 1, 1))
        assert config.kv_tile == clamp_tile(kv_tile, (30, 48, 80), (1, 1, 1))
    # A tile larger than the (dilated) dim is clamped, as the dispatcher does.
    assert gna_config((6, 40), 3, dilation=(2, 1), q_tile=(8, 8), kv_tile=(8, 8)).q_tile == (3, 8)


def test_wide_heads_take_half_height_kv_tiles_on_sm90() -> None:
    """Head dim 256 on sm90: KV tiles of 64 rows (two 64-row stages of K and V plus the Q tile fit 227 KB of smem),
    the Q tiles unchanged; other targets and narrower heads keep the table's tiles; the CTA block follows."""
    for rank in (1, 2, 3):
        q_tile, kv_tile = gna_tiles("sm90", rank, 256)
        assert (q_tile, math.prod(kv_tile)) == (gna_tiles("sm90", rank)[0], 64)
        smem = 2 * (128 * 256 + 2 * 2 * math.prod(kv_tile) * 256)  # bf16 Q + 2 stages of K and V
        assert smem <= 227 * 1024 < 2 * (128 * 256 + 2 * 2 * 128 * 256)
        assert gna_tiles("sm90", rank, 192) == gna_tiles("sm90", rank)
        assert gna_tiles("sm80", rank, 256) == gna_tiles("sm80", rank)
    assert cta_block("sm90", 256) == (128, 64) and cta_block("sm90", 128) == (128, 128)
    assert cta_block("sm80", 256) == (64, 64)
    assert gna_config((30, 48, 80), (18, 24, 24), arch="sm90", head_dim=256).kv_tile == (2, 4, 8)
    with pytest.raises(TypeError, match="head_dim must be an int"):
        gna_tiles("sm90", 2, 256.0)
    with pytest.raises(ValueError, match="head_dim must be >= 1"):
        gna_tiles("sm90", 2, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (8, 8), "window": (9, 3)}, "window: window \\* dilation must be <= size"),
        ({"shape": (8, 8), "window": (4, 4), "stride": (5, 1)}, "stride: must be <= window"),
        ({"shape": (8, 8), "window": (4, 4, 4)}, "window: needs 2 entries"),
        ({"shape": (8, 8), "window": 4, "q_tile": (4, 4, 4)}, "q_tile: needs 2 entries"),
        ({"shape": (8, 0), "window": 2}, "shape\\[1\\]: must be >= 1"),
        ({"shape": (8, 8), "window": 4, "dilation": (0, 1)}, "dilation\\[0\\]: must be >= 1"),
        ({"shape": (8, 8), "window": 4, "kv_tile": -2}, "kv_tile\\[0\\]: must be >= 1"),
        ({"shape": (8, 8), "window": 1}, "window\\[0\\]: must be >= 2"),
        ({"shape": (8, 8, 8, 8), "window": 2}, "shape: must have 1, 2 or 3 token dims"),
        ({"shape": 8, "window": 4, "arch": "sm70"}, "arch: must be one of"),
        ({"shape": 8, "window": 4, "tiling": "lazy"}, "tiling: must be one of"),
        ({"shape": 8, "window": 4, "gpu": "v100"}, "gpu: must be one of"),
        ({"shape": 8, "window": 4, "attention_share": 1.5}, "attention_share: must be a number in \\[0, 1\\]"),
        ({"shape": 8, "window": 4, "heads": 0}, "heads: must be >= 1"),
    ],
)
def test_api_rejects_bad_configs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        simulate_gna(**kwargs)


def test_other_families_reject_bad_configs() -> None:
    with pytest.raises(ValueError, match="^kv_heads: must divide heads"):
        simulate_strided_shard(seq_len=256, heads=6, kv_heads=4)
    with pytest.raises(ValueError, match="^block_mask: last two dims"):
        simulate_block_sparse(np.ones((3, 3), dtype=bool), seq_len=256, q_block=64, kv_block=64)
    with pytest.raises(ValueError, match="^block_mask: give exactly one"):
        simulate_block_sparse(seq_len=256)
    with pytest.raises(ValueError, match="^kv_len\\[1\\]: must be >= q_len"):
        simulate_latent(batch=2, kv_len=(8, 1), q_len=2)
    with pytest.raises(ValueError, match="^preset: unknown preset"):
        get_preset("gpt-5")


def run_cli(*args: str, block: str = "") -> subprocess.CompletedProcess:
    """``python -m simulator ARGS`` in a fresh interpreter; ``block`` names modules made unimportable first."""
    shim = "".join(f"sys.modules[{name!r}] = None; " for name in block.split(",") if name)
    code = (
        f"import runpy, sys; {shim}sys.argv = ['simulator', *sys.argv[1:]]; "
        "runpy.run_module('simulator', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_runs_without_torch() -> None:
    out = run_cli(
        "gna",
        "--input",
        "30x48x80",
        "--window",
        "18x24x24",
        "--stride",
        "16x8x8",
        "--q-tile",
        "4x8x8",
        "--kv-tile",
        "2x8x8",
        "--attention-share",
        "0.6",
        "--gpu",
        "h200",
        "--json",
        block="torch",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in (
        "flop_bound",
        "tile_bound",
        "tile_bound_avg",
        "fully_block_sparse",
        "e2e_speedup_flop",
        "e2e_speedup_tile",
    ):
        assert key in data
    assert data["tile_bound"] == pytest.approx(900 / 81)
    assert data["fully_block_sparse"] is True
    assert data["flattened"]["tiling"] == "flattened"
    assert len(data["roofline"]) == 1


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (("block-sparse", "--seq-len", "4096", "--density", "0.3", "--causal", "1"), ("flop_bound", "tile_bound")),
        (("strided-shard", "--preset", "phi3-small-s2", "--attention-share", "0.5"), ("e2e_speedup_tile", "density")),
        (("latent", "--preset", "deepseek-v3-decode", "--kv-len", "1024"), ("bytes_moved", "times")),
        (("sweep", "--input", "64x64", "--window", "16", "--top", "3"), ("rows", "evaluated")),
        (("presets",), ("flux-4k", "hunyuanvideo-720p", "deepseek-v3-decode", "phi3-small-s2")),
    ],
)
def test_cli_json(args: tuple[str, ...], keys: tuple[str, ...]) -> None:
    out = run_cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert all(k in data for k in keys), sorted(data)


def test_cli_preset_is_editable() -> None:
    out = run_cli("gna", "--preset", "flux-4k", "--stride", "8", "--no-flattened", "--no-suggest", "--json")
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)["config"]
    assert config["shape"] == [256, 256] and config["window"] == [80, 80] and config["stride"] == [8, 8]


def test_cli_reads_mask_file(tmp_path: Path) -> None:
    mask = np.eye(8, dtype=bool)
    np.save(tmp_path / "mask.npy", mask)
    out = run_cli(
        "block-sparse",
        "--seq-len",
        "512",
        "--q-block",
        "64",
        "--kv-block",
        "64",
        "--mask",
        str(tmp_path / "mask.npy"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["flop_bound"] == 8.0 and data["tile_bound"] == 8.0 and data["fully_block_sparse"] is True


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("gna", "--input", "30x48", "--window", "40x8"), "--window"),
        (("gna", "--input", "30x48", "--window", "8x8", "--stride", "9x1"), "--stride"),
        (("gna", "--input", "30x48", "--window", "8x8", "--q-tile", "4x4x4"), "--q-tile"),
        (("gna", "--input", "30x48", "--window", "8x8", "--kv-tile", "0x8"), "--kv-tile[0]"),
        (("gna", "--input", "30xfoo", "--window", "8"), "--input"),
        (("gna", "--window", "8"), "--input"),
        (("gna", "--preset", "nope"), "--preset"),
        (("gna", "--preset", "deepseek-v3-decode"), "--preset"),
        (("gna", "--input", "30", "--window", "8", "--gpu", "v100"), "--gpu"),
        (("gna", "--input", "30", "--window", "8", "--tflops", "500"), "--tflops"),
        (("block-sparse", "--seq-len", "256", "--density", "1.5"), "--density"),
        (("strided-shard", "--seq-len", "256", "--causal", "False"), "--causal"),
        (("latent", "--heads", "-1"), "--heads"),
        (("sweep", "--input", "30", "--window", "8", "--vary", "dilation"), "--vary"),
        (("presets", "nope"), "--preset"),
    ],
)
def test_cli_bad_input_exits_with_one_line(args: tuple[str, ...], flag: str) -> None:
    out = run_cli(*args)
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert flag in lines[0], lines[0]


def test_cli_plot_without_matplotlib_is_a_clear_error(tmp_path: Path) -> None:
    out = run_cli("sweep", "--input", "64", "--window", "16", "--plot", str(tmp_path / "p.png"), block="matplotlib")
    assert out.returncode == 2
    assert out.stderr.startswith("simulator: error: --plot: needs matplotlib")
    assert not (tmp_path / "p.png").exists()


def test_cli_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is optional; the missing-matplotlib path is tested above")
    out = run_cli("sweep", "--input", "64", "--window", "16", "--plot", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulator_never_imports_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; import simulator, simulator.cli, simulator.sweep; "
        "r = simulator.simulate_gna((64, 64), 8, 8, q_tile=8, kv_tile=8); print(r.tile_bound)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == 64.0
