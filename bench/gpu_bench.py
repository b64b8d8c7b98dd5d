"""GPU benchmark of the CUDA kernels (run by ``bench/gpu_check.sh``; needs a CUDA build and a GPU).

Every figure is a GPU time or a ratio against a baseline measured in the same run, on the GPU named in the output:

- dense forward, bf16, head dim 128, 16K tokens: TFLOP/s of each forward kernel family this build runs on this GPU
  (sm80, and sm90 on Hopper) and of torch SDPA (FlashAttention / cuDNN inside torch), and each family's forward +
  backward against SDPA's; causal forward + backward at D 192 / D_v 128 (MLA prefill shapes) against SDPA's;
- fully block-sparse GNA configs: each family's speedup over its own dense kernel against the simulator's tile bound
  (the issue targets >= 90% (sm80) / 95% (sm90) of it);
- on Hopper, the two NATTEN reference configs (FLUX 4K and HunyuanVideo GNA) in ms, beside NATTEN's published H100
  figures (incl. their token-permute pass), and the sm90 kernel's persistent tile scheduling against one CTA per work
  tile on FLUX 4K (time ratio and max output difference);
- GNA with 512 additional (text) tokens fused: time against the same problem without them, per family;
- block-sparse, 16K tokens, blocks of 128, random 30% of the blocks: the op's speedup over this build's dense kernel
  against the simulator's (mean) tile bound, and what the public call's Python checks add to it;
- latent (MLA) decode, bf16, 128 heads, paged 8K-token caches: achieved bandwidth against a device-to-device copy
  measured in the same run, of the sm80 kernel (``NATTEN_LIKE_SM90=off`` on Hopper) and, on Hopper, the sm90 one (the
  issues target >= 75% / 85%).

    python bench/gpu_bench.py [--reps 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import natten_like  # noqa: F401  (loads the extension)
import torch
import torch.nn.functional as F
from natten_like.backends import cuda as cuda_backend
from natten_like.block_sparse import _lists_from_bool as block_sparse_lists

from simulator.block_sparse import make_block_mask, simulate_block_sparse
from simulator.gna import simulate_gna
from simulator.tile_configs import clamp_tile, gna_tiles

DEV = "cuda"
# NATTEN's published H100 GNA times (ms, incl. its token permute), issue 7: (name, shape, window, stride, heads, ms).
NATTEN_H100 = (
    ("FLUX 4K", (256, 256), (80, 80), (16, 16), 24, 10.6),
    ("HunyuanVideo", (30, 48, 80), (18, 24, 24), (16, 8, 8), 24, 29.1),
)


def median_ms(fns, reps: int, warmup: int = 3) -> list[float]:
    """Median time of each fn, run in alternation so that clock and thermal drift hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + reps):
        for j, fn in enumerate(fns):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times[j].append(a.elapsed_time(b))
    return [sorted(t)[len(t) // 2] for t in times]


def gna_op(target: str, q, k, v, shape, window, stride, causal=None, additional=(None, None)):
    """The forward op of one kernel family with its tiles (and optional additional keys / values), as a closure."""
    rank = len(shape)
    ones = (1,) * rank
    qt, kt = gna_tiles(target, rank, q.shape[-1])
    causal = causal or (False,) * rank
    args = (list(window), list(stride), list(ones), list(causal), q.shape[-1] ** -0.5,
            list(clamp_tile(qt, shape, ones)), list(clamp_tile(kt, shape, ones)), target)  # fmt: skip
    return lambda: torch.ops.natten_like.gna_forward(q, k, v, *additional, *args)


def fwd_bwd(fwd, inputs):
    """Forward + backward of fwd(*inputs) -> out (first output) with a ones gradient."""

    def run():
        out = fwd()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out, inputs, torch.ones_like(out))

    return run


def latent_row(reps: int, target: str) -> tuple[str, ...]:
    """MLA decode (one query per sequence, 128 heads, paged 8K caches) on ``target``'s kernel ("sm80", "sm90") as a
    fraction of the copy bandwidth. The decode step is captured in a CUDA graph, as serving runs it (device-resident
    lengths and block table): a replay is the kernels' time, where an eager call's events would also hold the Python
    checks' host sync and the launch latency after it (the eager call's time is printed too)."""
    os.environ[cuda_backend.SM90_ENV] = "on" if target == "sm90" else "off"
    batch, heads, seqlen, page = 32, 128, 8192, 64
    pages = batch * seqlen // page
    cache = torch.randn(pages, page, 576, device=DEV, dtype=torch.bfloat16)
    table = torch.randperm(pages, device=DEV).view(batch, seqlen // page)
    lens = torch.full((batch,), seqlen, device=DEV, dtype=torch.int64)
    q = torch.randn(batch, 1, heads, 576, device=DEV, dtype=torch.bfloat16)
    big = torch.empty(cache.numel(), device=DEV, dtype=torch.bfloat16)

    def decode():
        natten_like.latent_attention(q, cache, cache_seqlens=lens, block_table=table, backend="cuda")

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            decode()  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            decode()
        t_dec, t_eager, t_copy = median_ms([graph.replay, decode, lambda: big.copy_(cache.view(-1))], reps)
    finally:
        os.environ.pop(cuda_backend.SM90_ENV)
    copy_gbs = 2 * cache.numel() * 2 / t_copy / 1e6  # read + write
    dec_gbs = (cache.numel() + q.numel() + batch * heads * 512) * 2 / t_dec / 1e6
    goal = {"sm80": "75%", "sm90": "85%"}[target]
    speed = f"{dec_gbs:.0f} GB/s ({t_dec:.3f} ms graph replay; eager call {t_eager:.3f} ms)"
    return ("latent decode B=32 H=128 8K paged", target, speed,
            f"{dec_gbs / copy_gbs:.0%} of copy {copy_gbs:.0f} GB/s (target {goal})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    major = torch.cuda.get_device_capability()[0]
    targets = ["sm80"] + (["sm90"] if major == 9 and cuda_backend.built_kernels("sm90_gna_fwd") else [])
    rows: list[tuple[str, ...]] = []
    B, H, D, N = 1, 16, 128, 16384
    flops = 4 * B * H * N * N * D

    def section(title: str):
        """Runs the decorated section at once and prints its rows as they come; an exception becomes an ERROR row
        (with its traceback on stderr) and the next section still runs, so one failure costs one row of the table."""

        def run(fn):
            first = len(rows)
            try:
                fn()
            except Exception as exc:  # a benchmark run on lent device time reports every section it can
                traceback.print_exc()
                rows.append((title, "ERROR", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}", ""))
            for r in rows[first:]:
                print("  " + " | ".join(r), flush=True)
            return fn

        return run

    @section("dense fwd bf16 hd128 N=16384")
    def _dense() -> None:
        q, k, v = (torch.randn(B, N, H, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # SDPA's [B, H, N, D], outside the timing
        fns = [gna_op(t, q, k, v, (N,), (N,), (1,)) for t in targets]
        times = median_ms([*fns, lambda: F.scaled_dot_product_attention(qt, kt, vt)], args.reps)
        t_sdpa = times[-1]
        rows.append(("dense fwd bf16 hd128 N=16384", "SDPA", f"{flops / t_sdpa / 1e9:.0f} TFLOP/s", f"{t_sdpa:.2f} ms"))
        for target, t, fn in zip(targets, times, fns, strict=False):
            target_tf = {"sm80": 280, "sm90": 600}[target]
            rows.append(("", target, f"{flops / t / 1e9:.0f} TFLOP/s", f"{t_sdpa / t:.2f}x SDPA (target {target_tf})"))
            err = fn()[0].float() - F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
            rows.append(("", f"{target} max|ours - SDPA|", f"{err.abs().max().item():.2e}", ""))

    wide = [t for t in targets if (torch.bfloat16, 256, 256) in cuda_backend.built_kernels(f"{t}_gna_fwd")]

    @section("dense fwd bf16 hd256 N=8192")
    def _wide() -> None:  # head dim 256 (sm90: 128 x 64 blocks), against SDPA on the same inputs
        if not wide:
            return
        n = 8192
        qw, kw, vw = (torch.randn(B, n, H, 256, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        qwt, kwt, vwt = (t.transpose(1, 2).contiguous() for t in (qw, kw, vw))
        flops_w = 4 * B * H * n * n * 256
        fns_w = [gna_op(t, qw, kw, vw, (n,), (n,), (1,)) for t in wide]
        times_w = median_ms([*fns_w, lambda: F.scaled_dot_product_attention(qwt, kwt, vwt)], args.reps)
        rows.append(("dense fwd bf16 hd256 N=8192", "SDPA", f"{flops_w / times_w[-1] / 1e9:.0f} TFLOP/s",
                     f"{times_w[-1]:.2f} ms"))  # fmt: skip
        for target, t in zip(wide, times_w, strict=False):
            rows.append(("", target, f"{flops_w / t / 1e9:.0f} TFLOP/s", f"{times_w[-1] / t:.2f}x SDPA"))

    @section("dense fwd+bwd bf16 hd128 N=16384")
    def _dense_bwd() -> None:
        if (torch.bfloat16, 128, 128) not in cuda_backend.built_kernels("sm80_gna_bwd"):
            return
        leaves = [torch.randn(B, N, H, D, device=DEV, dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
        leaves_t = [t.detach().transpose(1, 2).contiguous().requires_grad_() for t in leaves]
        # The backend's choice of forward family (sm90 on Hopper), then the sm80 backward.
        ours = fwd_bwd(lambda: natten_like.attention(*leaves, backend="cuda"), leaves)
        sdpa = fwd_bwd(lambda: F.scaled_dot_product_attention(*leaves_t), leaves_t)
        t_ours, t_sdpa = median_ms([ours, sdpa], max(3, args.reps // 2))
        tflops = f"{3.5 * flops / t_ours / 1e9:.0f} TFLOP/s"
        ratio = f"{t_sdpa / t_ours:.2f}x SDPA ({t_ours:.1f} vs {t_sdpa:.1f} ms)"
        rows.append(("dense fwd+bwd bf16 hd128 N=16384", f"{targets[-1]} fwd + sm80 bwd", tflops, ratio))

    @section("causal fwd+bwd bf16 D192/Dv128 N=8192")
    def _mla_prefill() -> None:  # DeepSeek-style MLA prefill / training shapes: D 192 (nope + rope) / D_v 128, causal
        if (torch.bfloat16, 192, 128) not in cuda_backend.built_kernels("sm80_gna_bwd"):
            return
        n = 8192
        qkv = [torch.randn(B, n, H, d, device=DEV, dtype=torch.bfloat16) for d in (192, 192, 128)]
        leaves = [t.clone().requires_grad_() for t in qkv]
        leaves_t = [t.transpose(1, 2).contiguous().requires_grad_() for t in qkv]
        ours = fwd_bwd(lambda: natten_like.attention(*leaves, is_causal=True, backend="cuda"), leaves)
        sdpa = fwd_bwd(lambda: F.scaled_dot_product_attention(*leaves_t, is_causal=True), leaves_t)
        t_ours, t_sdpa = median_ms([ours, sdpa], max(3, args.reps // 2))
        causal_flops = 3.5 * 2 * B * H * n * n * (192 + 128) / 2
        sm90 = "sm90" in targets and (torch.bfloat16, 192, 128) in cuda_backend.built_kernels("sm90_gna_fwd")
        tflops = f"{causal_flops / t_ours / 1e9:.0f} TFLOP/s"
        ratio = f"{t_sdpa / t_ours:.2f}x SDPA ({t_ours:.1f} vs {t_sdpa:.1f} ms)"
        label = f"{'sm90' if sm90 else 'sm80'} fwd + sm80 bwd"
        rows.append(("causal fwd+bwd bf16 D192/Dv128 N=8192", label, tflops, ratio))

    for shape, window in (((16384,), (512,)), ((128, 128), (16, 16)), ((32, 32, 16), (8, 8, 8))):
        name = f"GNA {'x'.join(map(str, shape))} w{'x'.join(map(str, window))} blocked"

        @section(name)
        def _blocked(shape: tuple = shape, window: tuple = window, name: str = name) -> None:
            stride = window  # blocked: every visited tile full
            q, k, v = (torch.randn(B, *shape, H, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
            ones = (1,) * len(shape)
            for target in targets:
                sim = simulate_gna(shape, window, stride, arch=target, flattened=False, suggest=False, heads=H,
                                   head_dim=D)  # fmt: skip
                sparse, dense = (
                    gna_op(target, q, k, v, shape, window, stride),
                    gna_op(target, q, k, v, shape, shape, ones),
                )
                t_sparse, t_dense = median_ms([sparse, dense], args.reps)
                speedup = t_dense / t_sparse
                rows.append((name if target == targets[0] else "", target,
                             f"{speedup:.1f}x own dense ({t_sparse:.3f} ms)",
                             f"{speedup / sim.tiles.tile_bound:.0%} of tile bound {sim.tiles.tile_bound:.1f}x"
                             f"{'' if sim.tiles.fully_block_sparse else ' (not fully block-sparse)'}"))  # fmt: skip

    if "sm90" in targets:
        for label, shape, window, stride, heads, natten_ms in NATTEN_H100:

            @section(f"{label} {'x'.join(map(str, shape))}")
            def _natten(
                label=label, shape=shape, window=window, stride=stride, heads=heads, natten_ms=natten_ms
            ) -> None:
                q, k, v = (torch.randn(1, *shape, heads, 128, device=DEV, dtype=torch.bfloat16) for _ in range(3))
                (t,) = median_ms([gna_op("sm90", q, k, v, shape, window, stride)], max(3, args.reps // 2))
                rows.append((f"{label} {'x'.join(map(str, shape))}", "sm90", f"{t:.2f} ms",
                             f"NATTEN H100 (published): {natten_ms} ms"))  # fmt: skip

        @section(f"{NATTEN_H100[0][0]} sm90 persistent")
        def _persistent() -> None:  # persistent tile scheduling against one CTA per work tile (read per call)
            label, shape, window, stride, heads, _ = NATTEN_H100[0]
            q, k, v = (torch.randn(1, *shape, heads, 128, device=DEV, dtype=torch.bfloat16) for _ in range(3))
            op = gna_op("sm90", q, k, v, shape, window, stride)

            def scheduled(mode: str):
                def run():
                    os.environ["NATTEN_LIKE_SM90_PERSISTENT"] = mode
                    return op()

                return run

            modes = [scheduled("off"), scheduled("on")]
            try:
                t_off, t_on = median_ms(modes, max(3, args.reps // 2))
                diff = (modes[0]()[0].float() - modes[1]()[0].float()).abs().max().item()
            finally:
                os.environ.pop("NATTEN_LIKE_SM90_PERSISTENT", None)
            rows.append((f"{label} sm90 persistent", "sm90", f"{t_off / t_on:.2f}x one CTA per tile ({t_on:.2f} ms)",
                         f"max|persistent - one-tile| {diff:.1e}"))  # fmt: skip

    @section("GNA 128x128 w32x32 + 512 additional KV")
    def _additional() -> None:  # 512 extra keys for every query of a 2-D problem whose neighbourhoods hold 1024 keys
        shape, window, n_add = (128, 128), (32, 32), 512
        q, k, v = (torch.randn(B, *shape, H, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        add_k, add_v = (torch.randn(B, n_add, H, D, device=DEV, dtype=torch.bfloat16) for _ in range(2))
        for target in targets:
            plain = gna_op(target, q, k, v, shape, window, (1, 1))
            fused = gna_op(target, q, k, v, shape, window, (1, 1), additional=(add_k, add_v))
            t_plain, t_fused = median_ms([plain, fused], args.reps)
            keys = (window[0] * window[1] + n_add) / (window[0] * window[1])
            rows.append((f"GNA 128x128 w32x32 + {n_add} additional KV" if target == targets[0] else "", target,
                         f"{t_fused / t_plain:.2f}x the time without ({t_fused:.3f} ms)",
                         f"keys per query x{keys:.2f}"))  # fmt: skip

    name_bs = "block-sparse 16384 blocks 128 random 30%"

    @section(name_bs)
    def _block_sparse() -> None:  # the public call (lists checked on the device per call) against the raw op and dense
        if (torch.bfloat16, D, D) not in cuda_backend.built_kernels("sm80_block_sparse_fwd"):
            return
        q, k, v = (torch.randn(B, N, H, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        sim = simulate_block_sparse(seq_len=N, density=0.3, heads=H, head_dim=D, seed=0)
        mask = torch.from_numpy(make_block_mask(N, N, 128, 128, 0.3, heads=H, seed=0))[None].to(DEV)
        lists = block_sparse_lists(mask)
        raw = (q, k, v, lists.kv_num_blocks, lists.kv_indices, None, None, None, None, 128, 128, False, D**-0.5)
        fns = [
            lambda: natten_like.block_sparse_attention(q, k, v, mask, backend="cuda"),
            lambda: torch.ops.natten_like.block_sparse_forward(*raw),
            lambda: natten_like.attention(q, k, v, backend="cuda"),
        ]
        t_call, t_op, t_dense = median_ms(fns, args.reps)
        speedup, bound = t_dense / t_op, sim.tiles.tile_bound_avg
        own = f"{speedup:.1f}x own dense ({t_op:.3f} ms)"
        rows.append((name_bs, "op (lists checked on device)", own, f"{speedup / bound:.0%} of tile bound {bound:.1f}x"))
        rows.append(("", "block_sparse_attention", f"{t_call:.3f} ms", f"+{t_call - t_op:.3f} ms Python checks"))

    for target in ("sm80", "sm90"):
        if (torch.bfloat16, 576, 512) in cuda_backend.built_kernels(f"{target}_latent_fwd") and (
            target == "sm80" or major == 9
        ):
            section(f"latent decode {target}")(lambda target=target: rows.append(latent_row(args.reps, target)))

    print()
    print(f"GPU {torch.cuda.get_device_name()}  torch {torch.__version__}  CUDA {torch.version.cuda}")
    for r in rows:
        print("  " + " | ".join(f"{c:<34}" for c in r))
    print("(FLOPs: 4 N^2 D H per dense forward, 3.5x that for forward + backward)")
    errors = sum(r[1] == "ERROR" for r in rows)
    if errors:
        print(f"gpu_bench: {errors} section(s) failed (tracebacks above)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
