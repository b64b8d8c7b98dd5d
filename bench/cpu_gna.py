"""CPU benchmark of fused Generalized Neighborhood Attention (issue 2) against torch SDPA and compiled FlexAttention.

For every config, in one process and one run: forward of (a) torch SDPA dense on the same tokens, (b) ``torch.compile``d
FlexAttention with the equivalent GNA ``mask_mod`` and a ``create_block_mask`` block mask, (c) our fused CPU kernel; and
backward of ours against autograd through a dense masked reference (SDPA with an N x N boolean mask; FlexAttention has
no CPU backward). Useful FLOPs are counted from the true mask density (4 * D * attended pairs * B * H forward, 2.5x that
backward). Flex's and the reference's outputs and gradients are checked against ours once, so every figure is of equal
work.

Run from the repository root::

    python bench/cpu_gna.py                       # the five configs of issue 2, float32, 2 threads
    python bench/cpu_gna.py --configs 2d-64x64-w7 --reps 9 --json out.json
    python bench/cpu_gna.py --configs "shape=32x32,window=9x9,stride=3,dilation=2,causal=0" --no-backward
    python bench/cpu_gna.py --configs 2d-64x64-w7 --reps 2 --json out.json --plot out.png
    python bench/cpu_gna.py --plot-from out.json --plot out.png   # redraw only, no run

Prints markdown tables (per backend, then a per-config summary) and the machine description. ``--plot`` draws measured
speedup over dense (ours and flex forward, ours backward) against ``simulator.simulate_gna``'s FLOP and tile bounds
(CPU tiles); matplotlib is needed only for it. Every kernel call runs in an NVTX range
``natten_like/<config>/<backend>/<pass>`` (inside one ``natten_like`` range for the run) when CUDA is available or
``--nvtx on``; bench/README.md gives the ``nsys``/``ncu`` command lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import natten_like
import natten_like._C  # noqa: F401  (registers torch.ops.natten_like)
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from simulator.gna_policy import GnaDim, gna_window
from simulator.tile_configs import clamp_tile, gna_tiles

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (  # noqa: E402
    Measured,
    Timing,
    git_commit,
    machine_info,
    nvtx_range,
    nvtx_wrap,
    peak_alloc_bytes,
    set_nvtx,
    time_interleaved,
)

# The configs of issue 2 (B=1, H=4, D=64 unless overridden on the command line).
DEFAULT_CONFIGS: dict[str, str] = {
    "2d-64x64-w7": "shape=64x64,window=7x7",
    "2d-64x64-w13": "shape=64x64,window=13x13",
    "2d-96x96-w13": "shape=96x96,window=13x13",
    "3d-16x32x32-w8": "shape=16x32x32,window=8x8x8",
    "1d-8192-w512": "shape=8192,window=512",
}
# Short backend names used in NVTX ranges ``natten_like/<config>/<backend>/<pass>`` (no spaces: easy to filter on).
BACKEND_SLUGS: dict[str, str] = {
    "ours (fused CPU)": "ours",
    "torch SDPA dense": "sdpa_dense",
    "torch flex (compiled)": "flex",
    "autograd SDPA + bool mask": "sdpa_masked",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MiB = 1024.0**2


@dataclass(frozen=True)
class Config:
    """One GNA problem: token shape and per-dimension window/stride/dilation/causal."""

    name: str
    shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def tokens(self) -> int:
        return math.prod(self.shape)

    def dims(self) -> list[GnaDim]:
        return [GnaDim(*a) for a in zip(self.shape, self.window, self.stride, self.dilation, self.causal, strict=True)]


def _per_dim(text: str, rank: int, cast: Callable[[str], int]) -> tuple[int, ...]:
    parts = [cast(p) for p in text.split("x")]
    if len(parts) == 1:
        parts *= rank
    if len(parts) != rank:
        raise ValueError(f"{text!r} must give 1 or {rank} values separated by 'x'")
    return tuple(parts)


def parse_config(spec: str, stride: str, dilation: str, causal: str) -> Config:
    """A default config name or ``shape=AxB,window=AxB[,stride=..][,dilation=..][,causal=0x1]``.

    One value broadcasts over all dimensions; fields a spec leaves out take the command-line defaults.
    """
    name = spec
    if spec in DEFAULT_CONFIGS:
        spec = DEFAULT_CONFIGS[spec]
    fields = dict(item.split("=", 1) for item in spec.split(","))
    unknown = set(fields) - {"shape", "window", "stride", "dilation", "causal"}
    if unknown or "shape" not in fields or "window" not in fields:
        raise ValueError(f"config {spec!r}: need shape= and window=, optional stride= dilation= causal=")
    shape = tuple(int(p) for p in fields["shape"].split("x"))
    rank = len(shape)
    cfg = Config(
        name=name,
        shape=shape,
        window=_per_dim(fields["window"], rank, int),
        stride=_per_dim(fields.get("stride", stride), rank, int),
        dilation=_per_dim(fields.get("dilation", dilation), rank, int),
        causal=tuple(bool(c) for c in _per_dim(fields.get("causal", causal), rank, int)),
    )
    if name == spec:
        cfg = replace(cfg, name=f"{rank}d-{'x'.join(map(str, shape))}-w{'x'.join(map(str, cfg.window))}")
    return cfg


# ----------------------------------------------------------------------------------------------------------------------
# Masks from the Python twin of the policy (simulator/gna_policy.py).


def dim_mask(dim: GnaDim) -> torch.Tensor:
    """[L, L] bool: query coordinate x sees key coordinate y along one dimension (dilation applied)."""
    m = torch.zeros(dim.length, dim.length, dtype=torch.bool)
    for x in range(dim.length):
        m[x, dim.window_of(x)] = True
    return m


def dense_mask(cfg: Config) -> torch.Tensor:
    """[N, N] bool mask over flattened tokens (row-major): the AND of the per-dimension masks."""
    masks = [dim_mask(d) for d in cfg.dims()]
    full = masks[0]
    for m in masks[1:]:
        n, length = full.shape[0], m.shape[0]
        full = (full[:, None, :, None] & m[None, :, None, :]).reshape(n * length, n * length)
    return full


def attended_pairs(cfg: Config) -> int:
    """Number of attended (query, key) pairs per batch and head; the mask is separable, so a product of per-dim sums."""
    return math.prod(int(dim_mask(d).sum()) for d in cfg.dims())


def gna_mask_mod(cfg: Config) -> Callable[..., torch.Tensor]:
    """FlexAttention mask_mod of the GNA mask, looking up per-dim tables of each query's window (group-local coords)."""
    tables = []
    for d in cfg.dims():
        begin = torch.empty(d.length, dtype=torch.int32)
        end = torch.empty(d.length, dtype=torch.int32)
        for x in range(d.length):
            g, i = x % d.dilation, x // d.dilation
            begin[x], end[x] = gna_window(i, d.group_length(g), d.window, d.stride, d.causal)
        tables.append((d.length, d.dilation, begin, end))

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        qi, ki = q_idx, kv_idx
        ok = None
        for length, dil, begin, end in reversed(tables):
            qx, kx = qi % length, ki % length
            qi, ki = qi // length, ki // length
            kl = kx // dil if dil > 1 else kx
            cond = (kl >= begin[qx]) & (kl < end[qx])
            if dil > 1:
                cond = cond & (kx % dil == qx % dil)
            ok = cond if ok is None else ok & cond
        return ok

    return mask_mod


def tile_pairs(cfg: Config, q_tile: tuple[int, ...], kv_tile: tuple[int, ...]) -> int:
    """(query, key) pairs our kernel computes per batch and head: visited KV tiles x tile sizes (C++ policy)."""
    visits = torch.ops.natten_like.gna_visits(
        list(cfg.shape),
        list(cfg.window),
        list(cfg.stride),
        list(cfg.dilation),
        list(cfg.causal),
        list(q_tile),
        list(kv_tile),
    )
    return int((visits[:, 0] * visits[:, 2]).sum()) * math.prod(kv_tile)


# ----------------------------------------------------------------------------------------------------------------------
# Our kernel: the public API when it exists and works, else the torch op directly.


class Ours:
    """Forward and backward of our fused CPU GNA, through ``natten_like.gna(backend="cpu")`` or the raw torch op."""

    def __init__(self, cfg: Config, scale: float, mode: str) -> None:
        self.cfg, self.scale = cfg, scale
        q_tile, kv_tile = gna_tiles("cpu", cfg.rank)
        self.q_tile = clamp_tile(q_tile, cfg.shape, cfg.dilation)
        self.kv_tile = clamp_tile(kv_tile, cfg.shape, cfg.dilation)
        self.mode = mode

    @staticmethod
    def resolve_mode(requested: str) -> tuple[str, str]:
        """("api" | "op", why) for ``--ours auto|api|op``: "api" when ``natten_like.gna`` runs a tiny problem."""
        if requested == "op":
            return "op", "forced by --ours op"
        reason = "natten_like.gna not defined yet"
        if hasattr(natten_like, "gna"):
            try:
                x = torch.randn(1, 8, 1, 4)
                natten_like.gna(x, x, x, 3, backend="cpu")
                return "api", "natten_like.gna(..., backend='cpu')"
            except Exception as e:  # noqa: BLE001 - any failure means: measure the op instead, and say why
                reason = f"natten_like.gna failed: {type(e).__name__}: {e}"
        if requested == "api":
            raise RuntimeError(reason)
        return "op", f"torch.ops.natten_like.gna_forward/backward ({reason})"

    def _args(self) -> tuple:
        c = self.cfg
        return (
            list(c.window),
            list(c.stride),
            list(c.dilation),
            list(c.causal),
            self.scale,
            list(self.q_tile),
            list(self.kv_tile),
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(out [B, *tokens, H, D], lse [B, *tokens, H] from the op, None from the API, which is called as users do)."""
        if self.mode == "api":
            c = self.cfg
            out = natten_like.gna(
                q, k, v, list(c.window), list(c.stride), list(c.dilation), list(c.causal), self.scale, backend="cpu"
            )
            return out, None
        return torch.ops.natten_like.gna_forward(q, k, v, None, None, *self._args())

    def backward_op(self, g, q, k, v, out, lse) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grads = torch.ops.natten_like.gna_backward(g, q, k, v, None, None, out, lse, None, *self._args())
        return grads[0], grads[1], grads[2]


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark.


@dataclass
class Row:
    """One measured (config, pass, backend)."""

    config: str
    pass_: str
    backend: str
    ms: float
    reps: int
    samples_ms: list[float]
    gflops: float
    peak_mib: float | None
    vs_dense: float | None = None
    vs_flex: float | None = None
    frac_bound: float | None = None


@dataclass
class Summary:
    """Per-config figures: bounds, ratios against the targets, correctness checks."""

    config: str
    tokens: int
    attended_pairs: int
    flop_bound: float
    tile_bound: float
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    fwd_gflop: float
    flex_block_mask_ms: float | None = None
    flex_sparsity_pct: float | None = None
    fwd_vs_flex: float | None = None
    fwd_vs_dense: float | None = None
    fwd_frac_bound: float | None = None
    bwd_vs_ref: float | None = None
    bwd_frac_bound: float | None = None
    checks: dict[str, float] = field(default_factory=dict)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def bench_config(cfg: Config, args: argparse.Namespace, mode: str) -> tuple[list[Row], Summary]:
    dtype = DTYPES[args.dtype]
    B, H, D, N = args.batch, args.heads, args.dim, cfg.tokens
    scale = D**-0.5
    ours = Ours(cfg, scale, mode)
    gen = torch.Generator().manual_seed(args.seed)
    q, k, v = (torch.randn(B, *cfg.shape, H, D, generator=gen).to(dtype) for _ in range(3))  # [B, *tokens, H, D]

    def to_bhnd(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(B, N, H, -1).transpose(1, 2).contiguous()  # [B, H, N, D]

    def from_bhnd(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(B, *cfg.shape, H, -1)  # [B, *tokens, H, D]

    qd, kd, vd = to_bhnd(q), to_bhnd(k), to_bhnd(v)
    pairs, dense_pairs = attended_pairs(cfg), N * N
    bound = dense_pairs / pairs
    fwd_flop = 4.0 * D * pairs * B * H
    summary = Summary(
        cfg.name,
        N,
        pairs,
        bound,
        dense_pairs / tile_pairs(cfg, ours.q_tile, ours.kv_tile),
        ours.q_tile,
        ours.kv_tile,
        fwd_flop / 1e9,
    )
    rows: list[Row] = []
    tol = 2e-4 if dtype == torch.float32 else 3e-2

    def add(pass_: str, backend: str, t: Timing, flop: float, peak: int | None) -> Row:
        row = Row(
            cfg.name,
            pass_,
            backend,
            t.median_ms,
            t.reps,
            t.samples_ms,
            flop / (t.median_ms * 1e-3) / 1e9,
            None if peak is None else peak / MiB,
        )
        rows.append(row)
        print(
            f"  {pass_:8s} {backend:28s} {t.median_ms:10.2f} ms  (reps {t.reps}, warm-up {t.warmup_ms:.1f} ms)",
            file=sys.stderr,
            flush=True,
        )
        return row

    def mem(c: Measured) -> int | None:
        return peak_alloc_bytes(c.fn, c.setup, c.nvtx) if args.memory else None

    def rng(backend: str, pass_: str) -> str:
        """NVTX range name of one kernel call (see bench/README.md, "Profiling with Nsight")."""
        return f"natten_like/{cfg.name}/{BACKEND_SLUGS[backend]}/{pass_}"

    timed = lambda entries: time_interleaved(entries, args.reps, warmup=args.warmup)  # noqa: E731

    # Forward: (c) ours, (a) SDPA dense on the same tokens, (b) compiled FlexAttention with the GNA mask_mod and a block
    # mask (mask build and compile not timed), timed in alternation.
    with torch.no_grad():
        out, lse = ours.forward(q, k, v)
        forward = {
            "ours (fused CPU)": Measured(lambda: ours.forward(q, k, v), nvtx=rng("ours (fused CPU)", "forward")),
            "torch SDPA dense": Measured(
                lambda: F.scaled_dot_product_attention(qd, kd, vd, scale=scale),
                nvtx=rng("torch SDPA dense", "forward"),
            ),
        }
        if args.flex:
            torch._dynamo.reset()
            mask_mod = gna_mask_mod(cfg)
            t0 = time.perf_counter()
            block_mask: BlockMask = create_block_mask(mask_mod, None, None, N, N, device="cpu")
            summary.flex_block_mask_ms = (time.perf_counter() - t0) * 1e3
            summary.flex_sparsity_pct = float(block_mask.sparsity())
            flex = torch.compile(flex_attention, dynamic=False)
            fwd_flex = lambda: flex(qd, kd, vd, block_mask=block_mask, scale=scale)  # noqa: E731
            summary.checks["flex_fwd_maxdiff"] = _max_diff(from_bhnd(fwd_flex()), out)  # first call compiles
            forward["torch flex (compiled)"] = Measured(fwd_flex, nvtx=rng("torch flex (compiled)", "forward"))
        times = timed(forward)
        fwd_rows = {name: add("forward", name, times[name], fwd_flop, mem(c)) for name, c in forward.items()}
        del forward
    r_ours, r_dense = fwd_rows["ours (fused CPU)"], fwd_rows["torch SDPA dense"]
    r_flex = fwd_rows.get("torch flex (compiled)")
    for r in fwd_rows.values():
        r.vs_dense = r_dense.ms / r.ms
        r.vs_flex = r_flex.ms / r.ms if r_flex is not None else None
        r.frac_bound = r.vs_dense / bound
    summary.fwd_vs_dense, summary.fwd_frac_bound = r_ours.vs_dense, r_ours.frac_bound
    summary.fwd_vs_flex = r_ours.vs_flex

    # (d) backward: ours vs autograd through SDPA with a dense boolean mask (FlexAttention has no CPU backward).
    if args.backward:
        bwd_flop = 2.5 * fwd_flop
        gen_g = torch.Generator().manual_seed(args.seed + 1)
        g = torch.randn(out.shape, generator=gen_g).to(dtype)  # [B, *tokens, H, D]
        gd = to_bhnd(g)
        if mode == "api":
            ql, kl, vl = (x.clone().requires_grad_(True) for x in (q, k, v))
            state: dict[str, torch.Tensor] = {}

            def setup_ours() -> None:
                for x in (ql, kl, vl):
                    x.grad = None
                state["out"] = ours.forward(ql, kl, vl)[0]

            bwd_ours = lambda: state["out"].backward(g)  # noqa: E731
            setup_ours()
            bwd_ours()
            grads_ours = (ql.grad, kl.grad, vl.grad)
        else:
            setup_ours = None
            bwd_ours = lambda: ours.backward_op(g, q, k, v, out, lse)  # noqa: E731
            grads_ours = bwd_ours()

        mask = dense_mask(cfg)  # [N, N], broadcast over batch and heads
        qr, kr, vr = (x.clone().requires_grad_(True) for x in (qd, kd, vd))
        ref: dict[str, torch.Tensor] = {}

        def setup_ref() -> None:
            for x in (qr, kr, vr):
                x.grad = None
            ref["out"] = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask, scale=scale)

        bwd_ref = lambda: ref["out"].backward(gd)  # noqa: E731
        setup_ref()
        summary.checks["ref_fwd_maxdiff"] = _max_diff(from_bhnd(ref["out"].detach()), out)
        bwd_ref()
        for name, a, b in zip("qkv", grads_ours, (qr.grad, kr.grad, vr.grad), strict=True):
            summary.checks[f"ref_d{name}_maxdiff"] = _max_diff(a, from_bhnd(b))
        # The untimed setups (the forward a backward needs) get ranges of their own, ".../backward-setup".
        backward = {
            name: Measured(fn, nvtx_wrap(rng(name, "backward-setup"), setup), nvtx=rng(name, "backward"))
            for name, fn, setup in (
                ("ours (fused CPU)", bwd_ours, setup_ours),
                ("autograd SDPA + bool mask", bwd_ref, setup_ref),
            )
        }
        times = timed(backward)
        bwd_rows = {n: add("backward", n, times[n], bwd_flop, mem(c)) for n, c in backward.items()}
        # The masked reference does dense work, so it is also the dense baseline of the backward pass.
        r_bo, r_br = bwd_rows["ours (fused CPU)"], bwd_rows["autograd SDPA + bool mask"]
        for r in (r_br, r_bo):
            r.vs_dense = r_br.ms / r.ms
            r.frac_bound = r.vs_dense / bound
        summary.bwd_vs_ref, summary.bwd_frac_bound = r_bo.vs_dense, r_bo.frac_bound
        summary.checks["mask_mib"] = mask.numel() / MiB
        del mask, ref, qr, kr, vr, backward

    bad = {k: v for k, v in summary.checks.items() if k.endswith("maxdiff") and not v <= tol * (10 if "_d" in k else 1)}
    if bad:
        print(f"  WARNING {cfg.name}: outputs disagree beyond tolerance {tol}: {bad}", file=sys.stderr)
    return rows, summary


def _fmt(x: float | None, spec: str, suffix: str = "x") -> str:
    return "-" if x is None else format(x, spec) + suffix


def render(rows: list[Row], summaries: list[Summary], info: dict[str, object], command: str) -> str:
    """Markdown: per-backend table, per-config summary, checks."""
    lines = [
        "| config | pass | backend | time ms (median) | reps | speedup vs dense | speedup vs flex | useful GFLOP/s "
        "| fraction of FLOP bound | peak MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.config} | {r.pass_} | {r.backend} | {r.ms:.2f} | {r.reps} | {_fmt(r.vs_dense, '.2f')} "
            f"| {_fmt(r.vs_flex, '.2f')} | {r.gflops:.1f} | {_fmt(r.frac_bound, '.3f', '')} "
            f"| {_fmt(r.peak_mib, '.1f', '')} |"
        )
    lines += [
        "",
        "| config | tokens | FLOP bound | tile bound (q/kv tile) | fwd: ours vs flex (target >= 3x) "
        "| fwd: ours vs dense | fwd: fraction of FLOP bound | bwd: ours vs reference (target > 1x) "
        "| bwd: fraction of FLOP bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        tiles = f"{'x'.join(map(str, s.q_tile))}/{'x'.join(map(str, s.kv_tile))}"
        flex = "-" if s.fwd_vs_flex is None else f"{s.fwd_vs_flex:.2f}x {'ok' if s.fwd_vs_flex >= 3 else 'MISS'}"
        bwd = "-" if s.bwd_vs_ref is None else f"{s.bwd_vs_ref:.2f}x {'ok' if s.bwd_vs_ref > 1 else 'MISS'}"
        lines.append(
            f"| {s.config} | {s.tokens} | {s.flop_bound:.1f}x | {s.tile_bound:.1f}x ({tiles}) | {flex} "
            f"| {s.fwd_vs_dense:.2f}x | {s.fwd_frac_bound:.3f} | {bwd} | {_fmt(s.bwd_frac_bound, '.3f', '')} |"
        )
    lines += ["", "Checks (max abs difference to ours; flex block-mask build time, not timed above):", ""]
    for s in summaries:
        checks = ", ".join(f"{k} {v:.1e}" if k.endswith("maxdiff") else f"{k} {v:.0f}" for k, v in s.checks.items())
        extra = (
            ""
            if s.flex_block_mask_ms is None
            else (f"; flex block mask {s.flex_block_mask_ms:.0f} ms, sparsity {s.flex_sparsity_pct:.1f}%")
        )
        lines.append(f"- {s.config}: {checks}{extra}")
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "", f"Command: `{command}`"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Plot: measured speedup over dense vs the simulator's bounds.


@dataclass
class PlotPoint:
    """One config of the plot: measured speedups over the dense baseline and the simulator's bounds."""

    config: str
    ours_fwd: float | None
    flex_fwd: float | None
    ours_bwd: float | None
    flop_bound: float
    tile_bound: float
    tiles: str


def simulated_bounds(cfg: Config, args: argparse.Namespace) -> tuple[float, float, str]:
    """(FLOP bound, tile bound, "q/kv tile") of ``simulator.simulate_gna`` with the CPU tiles of tile_configs.py.

    The tile bound is the simulator's ``tile_bound_avg`` (dense / sparse KV tiles visited in total, static tiling): the
    CPU kernel's threads share the Q tiles, so total work, not the slowest tile, sets the pace.
    """
    from simulator import simulate_gna

    r = simulate_gna(
        cfg.shape,
        cfg.window,
        cfg.stride,
        cfg.dilation,
        cfg.causal,
        arch="cpu",
        tiling="static",
        batch=args.batch,
        heads=args.heads,
        head_dim=args.dim,
        flattened=False,
        suggest=False,
    )
    tiles = f"{'x'.join(map(str, r.tiles.q_tile))}/{'x'.join(map(str, r.tiles.kv_tile))}"
    return r.flop_bound, r.tile_bound_avg, tiles


def _speedup_table(rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """(config, pass, backend) -> speedup over the dense baseline, from rows as written by ``--json``."""
    return {(r["config"], r["pass_"], r["backend"]): r["vs_dense"] for r in rows if r.get("vs_dense") is not None}


def _parse_markdown(text: str) -> tuple[list[dict], str, str]:
    """(rows, command, machine line) from the markdown this script prints (a saved stdout, or a log holding it)."""
    rows: list[dict] = []
    command = machine = ""
    in_rows = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("| config | pass | backend"):
            in_rows = True
            continue
        if in_rows and line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            speed = cells[5].rstrip("x")
            rows.append(
                {
                    "config": cells[0],
                    "pass_": cells[1],
                    "backend": cells[2],
                    "vs_dense": None if speed == "-" else float(speed),
                }
            )
        elif in_rows and not line.startswith("| ---"):
            in_rows = False
        if line.startswith("Command: `"):
            command = line[len("Command: `") :].rstrip("`")
        elif line.startswith("Machine: "):
            machine = line[len("Machine: ") :]
    if not rows:
        raise ValueError("no results table (a line starting '| config | pass | backend') found")
    return rows, command, machine


def load_results(path: str) -> tuple[list[dict], list[Config], argparse.Namespace, str]:
    """(rows, configs, run args, subtitle) of a saved run: a ``--json`` file, or this script's markdown output/log.

    Configs and problem flags come from the JSON's "configs"/"args" when present, else from re-parsing the recorded
    command line (so JSON files of older versions and the markdown tables work too).
    """
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        rows, command, machine = _parse_markdown(text)
        data = {"rows": rows, "command": command}
        subtitle = machine
    else:
        info = data.get("machine", {})
        subtitle = ", ".join(f"{k} {info[k]}" for k in ("cpu", "torch_threads", "torch", "date", "commit") if k in info)
    command = data.get("command") or "python bench/cpu_gna.py"
    args = build_parser().parse_args(shlex.split(command)[2:])
    if "configs" in data:
        configs = [Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in data["configs"]]
    else:
        configs = [parse_config(c, args.stride, args.dilation, args.causal) for c in args.configs]
    for k, v in data.get("args", {}).items():
        setattr(args, k, v)
    subtitle = f"{command}\n{subtitle}" if subtitle else command
    return data["rows"], configs, args, subtitle


def plot_points(rows: list[dict], configs: list[Config], args: argparse.Namespace) -> list[PlotPoint]:
    speed = _speedup_table(rows)
    points = []
    for cfg in configs:
        flop, tile, tiles = simulated_bounds(cfg, args)
        points.append(
            PlotPoint(
                cfg.name,
                speed.get((cfg.name, "forward", "ours (fused CPU)")),
                speed.get((cfg.name, "forward", "torch flex (compiled)")),
                speed.get((cfg.name, "backward", "ours (fused CPU)")),
                flop,
                tile,
                tiles,
            )
        )
    return points


def plot_speedups(points: list[PlotPoint], out_png: str, subtitle: str = "") -> None:
    """Grouped bars (log scale) of measured speedup over dense per config, with the simulator's bounds as markers."""
    try:
        import matplotlib
    except ImportError as e:
        raise SystemExit(
            f"--plot needs matplotlib ({e}); install it (pip install matplotlib) or drop --plot: the tables and --json "
            "do not need it"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        ("ours forward", "ours_fwd", "#1f77b4"),
        ("flex forward (compiled)", "flex_fwd", "#ff7f0e"),
        ("ours backward (vs masked SDPA)", "ours_bwd", "#2ca02c"),
    ]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=100)
    for j, (label, attr, color) in enumerate(bars):
        xs, ys = [], []
        for i, p in enumerate(points):
            v = getattr(p, attr)
            if v is not None:
                xs.append(i - 0.4 + (j + 0.5) * width)
                ys.append(v)
        if not xs:
            continue
        ax.bar(xs, ys, width, label=label, color=color)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.1f}", (x, y), ha="center", va="bottom", fontsize=7)
    for i, p in enumerate(points):
        for bound, color, style, label, va in (
            (p.flop_bound, "black", "-", "FLOP bound (simulator)", "bottom"),
            (p.tile_bound, "crimson", "--", "tile bound (simulator, CPU tiles)", "top"),
        ):
            ax.hlines(bound, i - 0.45, i + 0.45, color=color, linestyle=style, linewidth=2, label=None if i else label)
            ax.annotate(f"{bound:.1f}", (i + 0.45, bound), fontsize=7, va=va, ha="right", color=color)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(points)), [f"{p.config}\n(tiles {p.tiles})" for p in points], fontsize=8)
    ax.set_ylabel("speedup over dense (x)")
    ax.set_title("CPU GNA: measured speedup over dense vs simulated bounds", fontsize=11)
    if subtitle:
        fig.text(0.5, 0.005, subtitle, ha="center", va="bottom", fontsize=6, color="dimgrey", wrap=True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_png)
    plt.close(fig)
    print(f"plot written to {out_png}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        help=f"names ({', '.join(DEFAULT_CONFIGS)}) or 'shape=64x64,window=7x7[,stride=..,dilation=..,causal=0x1]'",
    )
    parser.add_argument("--stride", default="1", help="default stride for configs that do not set one (e.g. 1 or 2x4)")
    parser.add_argument("--dilation", default="1", help="default dilation, as --stride")
    parser.add_argument("--causal", default="0", help="default causal flags (0/1 per dim), as --stride")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (3 for calls slower than 3 s)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backward", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--flex", action=argparse.BooleanOptionalAction, default=True, help="compiled FlexAttention")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="peak tensor memory of one extra call per backend (torch profiler)",
    )
    parser.add_argument(
        "--ours",
        choices=["auto", "api", "op"],
        default="auto",
        help="measure natten_like.gna (api), the raw torch op (op), or the API when it works (auto)",
    )
    parser.add_argument("--json", help="write rows, summaries and machine info to this file")
    parser.add_argument(
        "--nvtx",
        choices=["auto", "on", "off"],
        default="auto",
        help="NVTX ranges natten_like/<config>/<backend>/<pass> around each kernel call: when CUDA is available\n"
        "(auto), always (on; for nsys -t nvtx on a CPU-only machine) or never",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="plot measured speedup over dense vs simulated bounds")
    parser.add_argument(
        "--plot-from",
        metavar="FILE",
        help="redraw the plot from a saved --json file (or this script's markdown output) without running; writes\n"
        "--plot, or FILE with .png",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot_from:
        rows, configs, run_args, subtitle = load_results(args.plot_from)
        out = args.plot or os.path.splitext(args.plot_from)[0] + ".png"
        plot_speedups(plot_points(rows, configs, run_args), out, subtitle)
        return 0
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail before the run, not after it)
        except ImportError as e:
            parser.error(f"--plot needs matplotlib ({e}): pip install matplotlib, or drop --plot")

    set_nvtx(args.nvtx)

    torch.set_num_threads(args.threads)
    configs = [parse_config(c, args.stride, args.dilation, args.causal) for c in args.configs]
    mode, why = Ours.resolve_mode(args.ours)
    command = "python bench/cpu_gna.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    print(
        f"ours via {why}; B={args.batch} H={args.heads} D={args.dim} {args.dtype}, {args.threads} threads",
        file=sys.stderr,
    )
    rows: list[Row] = []
    summaries: list[Summary] = []
    load_start, commit_start = os.getloadavg()[0], git_commit()
    with nvtx_range("natten_like"):  # the whole run, so that `ncu --nvtx-include "natten_like/"` selects it
        for cfg in configs:
            print(f"{cfg.name}: stride {cfg.stride}, dilation {cfg.dilation}, causal {cfg.causal}", file=sys.stderr)
            r, s = bench_config(cfg, args, mode)
            rows += r
            summaries.append(s)
    info = machine_info()
    info["loadavg_1m"] = f"{load_start:.2f} at start, {info['loadavg_1m']:.2f} at end"
    if info["commit"] != commit_start:  # the code measured is the one imported at the start
        info["commit"] = f"{commit_start} at start, {info['commit']} at end"
    info["ours_via"] = why
    info["problem"] = f"B={args.batch} H={args.heads} D={args.dim} {args.dtype}"
    print(render(rows, summaries, info, command))
    machine_line = ", ".join(f"{k} {info[k]}" for k in ("cpu", "torch_threads", "torch", "date", "commit"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "command": command,
                    "args": {k: getattr(args, k) for k in ("batch", "heads", "dim", "dtype", "threads")},
                    "configs": [asdict(c) for c in configs],
                    "rows": [asdict(r) for r in rows],
                    "summaries": [asdict(s) for s in summaries],
                },
                f,
                indent=2,
            )
    if args.plot:
        plot_speedups(plot_points([asdict(r) for r in rows], configs, args), args.plot, f"{command}\n{machine_line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
