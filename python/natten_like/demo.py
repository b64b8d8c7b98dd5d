"""``python -m natten_like.demo``: run 2-D neighborhood attention on the CPU, check it and time it.

Prints the output's shape and its error against the float64 reference, the forward and backward times of the fused CPU
kernel next to dense attention (torch SDPA) on the same tokens, and the simulator's speed-of-light prediction.
"""

from __future__ import annotations

import argparse
import time

import torch

import natten_like
from simulator import simulate_gna
from simulator.tile_configs import gna_tiles


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="token grid is size x size (default 64)")
    parser.add_argument("--window", type=int, default=7, help="window per dim (default 7)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="head dim")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.size < 2 or not 2 <= args.window <= args.size:
        parser.error("--size must be >= 2 and --window in [2, size]")

    torch.manual_seed(0)
    shape = (1, args.size, args.size, args.heads, args.dim)  # [B, H_tokens, W_tokens, heads, D]
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    window = (args.window, args.window)

    out = natten_like.na2d(q, k, v, window, backend="cpu")
    ref = natten_like.na2d(*(t.detach().double() for t in (q, k, v)), window, backend="reference")
    print(f"na2d output {tuple(out.shape)}, max |cpu - float64 reference| = {(out.double() - ref).abs().max():.2e}")

    grad = torch.randn_like(out)
    fwd = _median_ms(lambda: natten_like.na2d(q, k, v, window, backend="cpu"), args.reps)
    bwd = _median_ms(lambda: torch.autograd.grad(natten_like.na2d(q, k, v, window), (q, k, v), grad), args.reps) - fwd
    qd, kd, vd = (t.detach().flatten(1, 2).transpose(1, 2) for t in (q, k, v))  # [B, H, N, D], not timed
    dense = _median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd), args.reps)
    threads = torch.get_num_threads()
    print(f"CPU, {threads} threads: fused na2d forward {fwd:.2f} ms, backward {bwd:.2f} ms")
    print(f"dense attention (torch SDPA) forward on the same tokens: {dense:.2f} ms")
    print(f"measured speedup over dense: {dense / fwd:.1f}x")

    q_tile, kv_tile = gna_tiles("sm90", 2)
    sim = simulate_gna(shape[1:3], window, q_tile=q_tile, kv_tile=kv_tile)
    tiles = f"{'x'.join(map(str, q_tile))} / {'x'.join(map(str, kv_tile))}"
    print(f"simulator: FLOP-wise bound {sim.flop_bound:.1f}x, Hopper tile bound (Q/KV {tiles}) {sim.tile_bound:.1f}x")


if __name__ == "__main__":
    main()
