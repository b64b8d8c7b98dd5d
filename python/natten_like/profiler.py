"""``python -m natten_like.profiler``: which backend can run a sparse-attention problem, and how fast each one is.

Like ``natten.profiler``, for every family (``--family gna|attention|block-sparse|strided-shard|latent``). For one
problem it lists every registered backend with whether it can run it, the tile config it would use (from the one
table, ``simulator/tile_configs.py``) and every reason the others refuse (the registry's ``not_supported_reasons``).
Without ``--dry-run`` it then times each chosen backend (CUDA events on a GPU; ``time.perf_counter`` on the CPU;
medians after warm-up) next to a dense baseline measured in the same run (torch SDPA on the same tokens), and prints
the simulator's FLOP-wise and tile bounds beside each measured speedup. ``--json`` prints one JSON object instead.

Times include the Python argument checks of the public function, as a user's call does. Any bad flag exits with status
2 and one line naming the flag and the rule.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from simulator import make_block_mask, simulate_block_sparse, simulate_gna, simulate_latent, simulate_strided_shard
from simulator.block_sparse import PATTERNS
from simulator.cli import shape_arg
from simulator.tile_configs import clamp_tile, gna_tiles

from . import attention, block_sparse_attention, gna, latent_attention, strided_shard_attention
from ._validation import validate_attention, validate_gna

# _REGISTRY: the registry has no public accessor for one backend's reasons; select_backend joins them into a message.
from .backends import _REGISTRY, Problem, registered_backends
from .block_sparse import validate_block_sparse
from .latent import validate_latent
from .strided_shard import validate_strided_shard

FAMILIES = ("gna", "attention", "block-sparse", "strided-shard", "latent")
REGISTRY_NAME = {"gna": "gna", "attention": "attention", "block-sparse": "block_sparse",
                 "strided-shard": "strided_shard", "latent": "latent"}  # fmt: skip
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# torch.cuda.get_device_capability()[0] -> the tile table's target.
CUDA_TARGETS = {8: "sm80", 9: "sm90", 10: "sm100"}
ASSUMED_CUDA_TARGET = "sm90"
# Above this many dense score elements (B * H * N_q * N_kv) the O(N^2)-memory reference is left out unless named in
# --backends: 2**28 float32 scores are 1 GiB, several of which the reference materialises.
REFERENCE_SCORE_BUDGET = 2**28
# Tile column of the backends that do not run a tile-table kernel.
UNTILED = {"reference": "dense masked (untiled)", "flex": "FlexAttention BlockMask"}
# Backward FLOPs per forward FLOP (dS, dP, dQ, dK, dV against S, O: FlashAttention's convention).
BACKWARD_FLOP_RATIO = 2.5

# Problem flags by family; the flags every family takes are not listed. A flag given to a family it does not apply to is
# an error, not silently ignored.
FAMILY_FLAGS: dict[str, tuple[str, ...]] = {
    "gna": ("input", "window", "stride", "dilation", "causal", "heads_kv", "dim", "dim_v", "add_kv"),
    "attention": ("input", "causal", "heads_kv", "dim", "dim_v"),
    "block-sparse": ("input", "causal", "heads_kv", "dim", "dim_v", "q_block", "kv_block", "density", "pattern",
                     "seed"),
    "strided-shard": ("input", "causal", "heads_kv", "dim", "dim_v", "block_size", "local_blocks", "vert_stride",
                      "homo_head", "num_dense_heads", "head_sliding_offset"),
    "latent": ("causal", "q_len", "kv_len", "page_size", "latent_dim", "rope_dim"),
}  # fmt: skip
# Values of flags not given, per family (the API's defaults where it has one; sizes that time in seconds on a CPU).
DEFAULTS: dict[str, dict[str, Any]] = {
    "gna": {"input": (32, 32), "window": (7,), "stride": (1,), "dilation": (1,), "causal": (False,), "add_kv": 0},
    "attention": {"input": (1024,), "causal": (False,)},
    "block-sparse": {"input": (2048,), "causal": (False,), "q_block": 64, "kv_block": 64, "density": 0.25,
                     "pattern": "random", "seed": 0},
    "strided-shard": {"input": (2048,), "causal": (True,), "block_size": 64, "local_blocks": 4, "vert_stride": 8,
                      "homo_head": False, "num_dense_heads": 0, "head_sliding_offset": 0},
    "latent": {"heads": 16, "q_len": 1, "kv_len": 4096, "page_size": 64, "latent_dim": 512, "rope_dim": 64},
}  # fmt: skip
COMMON_DEFAULTS = {"batch": 1, "heads": 4}
DEFAULT_DIM = 64  # every family but latent, whose row widths are --latent-dim and --rope-dim
# API argument names (first word of a validation message) -> the flag that sets them.
API_FLAGS = {
    "window": "--window", "stride": "--stride", "dilation": "--dilation", "is_causal": "--causal",
    "causal": "--causal", "q_block": "--q-block", "kv_block": "--kv-block", "block_mask": "--density",
    "density": "--density", "pattern": "--pattern", "block_size": "--block-size", "local_blocks": "--local-blocks",
    "vert_stride": "--vert-stride", "num_dense_heads": "--num-dense-heads",
    "head_sliding_offset": "--head-sliding-offset", "latent_dim": "--latent-dim", "rope_dim": "--rope-dim",
    "kv_len": "--kv-len", "q_len": "--q-len", "page_size": "--page-size", "shape": "--input",
}  # fmt: skip

Tensor = torch.Tensor

BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class UsageError(Exception):
    """A command-line mistake; printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that go through :func:`main`'s exit path (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def bool_arg(text: str) -> bool:
    """One boolean: 0/1, true/false, yes/no, on/off (any case). Never Python truthiness: "False" is false."""
    value = BOOL_WORDS.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a boolean (0/1, true/false, yes/no, on/off), got {text!r}")
    return value


def bools_arg(text: str) -> tuple[bool, ...]:
    """Booleans per token dim joined by 'x' (``0x0x1``, ``truexfalse``), or one for every dim (``False``)."""
    return tuple(bool_arg(part) for part in text.split("x"))


def flag(dest: str) -> str:
    """The long flag of an argparse destination (dests are the flags' names with '_' for '-')."""
    return "--" + dest.replace("_", "-")


def build_parser() -> Parser:
    parser = Parser(prog="python -m natten_like.profiler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="gna", help="attention family (default gna)")
    g = parser.add_argument_group("problem (per token dim joined by 'x'; one value applies to every dim)")
    g.add_argument("-i", "--input", type=shape_arg, help="token grid (gna: 1-3 dims, e.g. 30x48x80) or sequence length")
    g.add_argument("-w", "--window", type=shape_arg, help="gna: window per dim (default 7)")
    g.add_argument("-s", "--stride", type=shape_arg, help="gna: stride per dim (default 1)")
    g.add_argument("--dilation", type=shape_arg, help="gna: dilation per dim (default 1)")
    g.add_argument("--causal", type=bools_arg, help="causal masking: a boolean per dim for gna, one boolean otherwise")
    g.add_argument("-b", "--batch", type=int, help="batch size (default 1)")
    g.add_argument("-n", "--heads", type=int, help="query heads (default 4; latent 16)")
    g.add_argument("--heads-kv", type=int, help="KV heads, dividing --heads (default: --heads)")
    g.add_argument("-d", "--dim", type=int, help="QK head dim (default 64)")
    g.add_argument("--dim-v", type=int, help="V head dim (default: --dim)")
    g.add_argument("--add-kv", type=int, help="gna: additional KV tokens every query attends (default 0)")
    g = parser.add_argument_group("block-sparse")
    g.add_argument("--q-block", type=int, help="query block size (default 64)")
    g.add_argument("--kv-block", type=int, help="KV block size (default 64)")
    g.add_argument("--density", type=float, help="share of blocks kept, in (0, 1] (default 0.25)")
    g.add_argument("--pattern", choices=PATTERNS, help="which blocks are kept (default random)")
    g.add_argument("--seed", type=int, help="seed of --pattern random (default 0)")
    g = parser.add_argument_group("strided-shard (S2-Attention)")
    g.add_argument("--block-size", type=int, help="tokens per block (default 64)")
    g.add_argument("--local-blocks", type=int, help="local band width in blocks (default 4)")
    g.add_argument(
        "--vert-stride", type=int, help="every vert-stride-th KV block is kept, shifted per head (default 8)"
    )
    g.add_argument("--homo-head", type=bool_arg, help="every head keeps the same vertical blocks (default false)")
    g.add_argument("--num-dense-heads", type=int, help="the last this many KV heads are dense (default 0)")
    g.add_argument("--head-sliding-offset", type=int, help="shift of the vertical blocks (default 0)")
    g = parser.add_argument_group("latent (MLA decode)")
    g.add_argument("--q-len", type=int, help="query tokens per sequence (default 1)")
    g.add_argument("--kv-len", type=int, help="cache tokens per sequence (default 4096)")
    g.add_argument("--page-size", type=int, help="tokens per cache page; 0 = contiguous cache (default 64)")
    g.add_argument("--latent-dim", type=int, help="latent width of a cache row (default 512)")
    g.add_argument("--rope-dim", type=int, help="RoPE width of a cache row (default 64)")
    g = parser.add_argument_group("run")
    g.add_argument("--dtype", choices=DTYPES, default="fp32", help="default fp32")
    g.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    g.add_argument("--backward", action="store_true", help="also time the backward pass")
    g.add_argument("--backends", help="comma-separated backends to time (default: every one that can run it)")
    g.add_argument("--dry-run", action="store_true", help="only list the backends, their tiles and refusals")
    g.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    g.add_argument("--reps", type=int, default=10, help="timed calls; the median is reported (default 10)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    return parser


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The problem's flags with the family's defaults filled in; refuses flags of other families."""
    family = args.family
    own = FAMILY_FLAGS[family]
    every_specific = {name for names in FAMILY_FLAGS.values() for name in names}
    given = {k: v for k, v in vars(args).items() if v is not None}
    for name in sorted(every_specific - set(own)):
        if name in given:
            users = [f for f in FAMILIES if name in FAMILY_FLAGS[f]]
            raise UsageError(f"{flag(name)}: does not apply to --family {family} (only to {', '.join(users)})")
    values = COMMON_DEFAULTS | DEFAULTS[family] | given
    for name in ("batch", "heads", "heads_kv", "dim", "dim_v", "q_len", "kv_len", "latent_dim", "q_block", "kv_block"):
        if name in values and values[name] < 1:
            raise UsageError(f"{flag(name)}: must be >= 1, got {values[name]}")
    for name in ("add_kv", "page_size", "rope_dim", "seed"):
        if name in values and values[name] < 0:
            raise UsageError(f"{flag(name)}: must be >= 0, got {values[name]}")
    if values["warmup"] < 0 or values["reps"] < 1:
        raise UsageError(f"--warmup must be >= 0 and --reps >= 1, got {values['warmup']} and {values['reps']}")
    if "input" in own and any(n < 1 for n in values["input"]):
        raise UsageError(f"--input: every token dim must be >= 1, got {values['input']}")
    if family == "gna" and not 1 <= len(values["input"]) <= 3:
        raise UsageError(f"--input: gna takes 1-3 token dims, got {len(values['input'])}")
    if family in ("attention", "block-sparse", "strided-shard") and len(values["input"]) != 1:
        raise UsageError(f"--input: {family} takes one sequence length, got {len(values['input'])} dims")
    if family != "gna" and "causal" in values and len(values["causal"]) != 1:
        raise UsageError(f"--causal: {family} takes one boolean, got {len(values['causal'])}")
    if family != "latent":
        values.setdefault("dim", DEFAULT_DIM)
        values.setdefault("heads_kv", values["heads"])
        values.setdefault("dim_v", values["dim"])
        if values["heads"] % values["heads_kv"]:
            raise UsageError(f"--heads-kv: must divide --heads ({values['heads']}), got {values['heads_kv']}")
    else:
        values.setdefault("causal", (values["q_len"] > 1,))  # multi-token decode is causal, as in the simulator
    values["device"] = values.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if values["device"] == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: cuda needs a CUDA device, and torch sees none")
    return values


def scalar_or_tuple(values: tuple) -> Any:
    return values[0] if len(values) == 1 else values


def fmt_shape(values: Sequence[int] | Sequence[bool]) -> str:
    return "x".join(str(int(v)) for v in values)


@dataclass
class Case:
    """One family's problem, ready to check, simulate and time."""

    family: str
    summary: str
    make_inputs: Callable[[str], list[Tensor]]  # device -> inputs ("meta" for checks only)
    differentiable: int  # the first this many inputs get gradients
    call: Callable[[list[Tensor], str], Tensor]  # (inputs, backend) -> out
    validate: Callable[[list[Tensor]], Any]  # inputs -> the family's normalised params
    baseline: Callable[[list[Tensor]], list[Tensor]]  # inputs -> SDPA's (q, k, v) [B, H, N, D], heads first
    baseline_causal: bool
    baseline_summary: str
    forward_flops: float  # useful FLOPs of one forward, from the exact mask
    score_elements: int  # B * H * N_q * N_kv: the dense reference's score matrix
    simulator: dict[str, Any]  # the family-level prediction
    tiles: Callable[[str], tuple[str, dict[str, float] | None]]  # backend -> (tile config, its predicted bounds)
    notes: list[str] = field(default_factory=list)


def randn(shape: Sequence[int], device: str, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """Seeded normal values made on the CPU (identical on every device), or an empty meta tensor."""
    if device == "meta":
        return torch.empty(shape, device="meta", dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def heads_first(t: Tensor) -> Tensor:
    """[B, N, H, D] -> contiguous [B, H, N, D] (SDPA's layout)."""
    return t.transpose(1, 2).contiguous()


def cuda_target() -> tuple[str, bool]:
    """(tile-table target of the current GPU, whether a GPU said so) -- without one, the sm90 table is assumed."""
    if torch.cuda.is_available():
        major = torch.cuda.get_device_capability()[0]
        if major in CUDA_TARGETS:
            return CUDA_TARGETS[major], True
    return ASSUMED_CUDA_TARGET, False


def bounds(result: Any) -> dict[str, float]:
    return {"tile_bound": result.tile_bound, "tile_bound_avg": result.tiles.tile_bound_avg}


def gna_case(v: dict[str, Any], dtype: torch.dtype) -> Case:
    shape, b, h, hk, d, dv, add = v["input"], v["batch"], v["heads"], v["heads_kv"], v["dim"], v["dim_v"], v["add_kv"]
    rank = len(shape)
    window, stride, dilation, causal = (scalar_or_tuple(v[k]) for k in ("window", "stride", "dilation", "causal"))

    def make_inputs(device: str) -> list[Tensor]:
        gen = torch.Generator().manual_seed(0)
        tensors = [randn((b, *shape, heads, dim), device, dtype, gen) for heads, dim in ((h, d), (hk, d), (hk, dv))]
        if add:
            tensors += [randn((b, add, hk, dim), device, dtype, gen) for dim in (d, dv)]
        return tensors

    def call(x: list[Tensor], backend: str) -> Tensor:
        extra = {"additional_keys": x[3], "additional_values": x[4]} if add else {}
        return gna(x[0], x[1], x[2], window, stride, dilation, causal, backend=backend, **extra)

    def validate(x: list[Tensor]) -> Any:
        extra = (x[3], x[4]) if add else (None, None)
        return validate_gna(x[0], x[1], x[2], window, stride, dilation, causal, None, *extra)

    n = math.prod(shape)
    # SDPA expresses causal masking only along one sequence: a 1-D causal problem gets a causal baseline.
    baseline_causal = rank == 1 and all(v["causal"])
    kwargs = {"stride": v["stride"], "dilation": v["dilation"], "causal": v["causal"], "batch": b, "heads": h}
    kwargs |= {"head_dim": d, "flattened": False, "suggest": False, "gpu": "h100"}
    cpu_result = simulate_gna(shape, v["window"], arch="cpu", **kwargs)
    target, how = cuda_target()
    cuda_result = simulate_gna(shape, v["window"], arch=target, **kwargs)
    pairs = cpu_result.sparse_pairs + n * add

    def tiles(backend: str) -> tuple[str, dict[str, float] | None]:
        if backend not in ("cpu", "cuda"):
            return UNTILED.get(backend, "-"), None
        result, label = (cpu_result, "cpu") if backend == "cpu" else (cuda_result, target + ("" if how else "?"))
        config = result.config
        return f"{fmt_shape(config.q_tile)} / {fmt_shape(config.kv_tile)} ({label})", bounds(result)

    summary = (
        f"gna  input {fmt_shape(shape)} ({n} tokens)  window {fmt_shape(cpu_result.config.window)}  stride "
        f"{fmt_shape(cpu_result.config.stride)}  dilation {fmt_shape(cpu_result.config.dilation)}  causal "
        f"{fmt_shape(cpu_result.config.causal)}" + (f"  +{add} additional KV" if add else "")
    )
    notes = [] if how else [f"no supported GPU here: the cuda row shows the {target} tile table, marked '?'"]
    if any(v["causal"]) and not baseline_causal:
        notes.append(
            "the simulator's dense baseline keeps the causal flags per dim; the measured SDPA baseline is non-causal"
        )
    return Case(
        family="gna",
        summary=summary,
        make_inputs=make_inputs,
        differentiable=5 if add else 3,
        call=call,
        validate=validate,
        baseline=lambda x: [heads_first(t.reshape(b, n, *t.shape[-2:])) for t in x[:3]],
        baseline_causal=baseline_causal,
        baseline_summary=f"torch SDPA on the same {n} tokens",
        forward_flops=2.0 * pairs * (d + dv) * b * h,
        score_elements=b * h * n * (n + add),
        simulator={
            "flop_bound": cpu_result.flop_bound,
            "sparse_pairs": cpu_result.sparse_pairs,
            "dense_pairs": cpu_result.dense_pairs,
        },  # fmt: skip
        tiles=tiles,
        notes=notes,
    )


def sequence_inputs(v: dict[str, Any], dtype: torch.dtype) -> Callable[[str], list[Tensor]]:
    """q/k/v [B, N, H(_kv), D(_v)] of the 1-D families."""
    n, b, h, hk, d, dv = v["input"][0], v["batch"], v["heads"], v["heads_kv"], v["dim"], v["dim_v"]

    def make_inputs(device: str) -> list[Tensor]:
        gen = torch.Generator().manual_seed(0)
        return [randn((b, n, heads, dim), device, dtype, gen) for heads, dim in ((h, d), (hk, d), (hk, dv))]

    return make_inputs


def sequence_pairs(n: int, causal: bool) -> int:
    return n * (n + 1) // 2 if causal else n * n


def attention_case(v: dict[str, Any], dtype: torch.dtype) -> Case:
    n, b, h, d, dv = v["input"][0], v["batch"], v["heads"], v["dim"], v["dim_v"]
    causal = v["causal"][0]

    def tiles(backend: str) -> tuple[str, dict[str, float] | None]:
        if backend == "cpu":
            # The CPU backend runs dense attention as 1-D GNA with window = N on the same kernel.
            q_tile, kv_tile = gna_tiles("cpu", 1)
            return f"{fmt_shape(clamp_tile(q_tile, (n,), (1,)))} / {fmt_shape(clamp_tile(kv_tile, (n,), (1,)))}", None
        return UNTILED.get(backend, "-"), None

    return Case(
        family="attention",
        summary=f"attention  {n} tokens  causal {int(causal)}",
        make_inputs=sequence_inputs(v, dtype),
        differentiable=3,
        call=lambda x, backend: attention(x[0], x[1], x[2], is_causal=causal, backend=backend),
        validate=lambda x: validate_attention(x[0], x[1], x[2], causal, None),
        baseline=lambda x: [heads_first(t) for t in x],
        baseline_causal=causal,
        baseline_summary=f"torch SDPA on the same {n} tokens",
        forward_flops=2.0 * sequence_pairs(n, causal) * (d + dv) * b * h,
        score_elements=b * h * n * n,
        simulator={"flop_bound": 1.0},
        tiles=tiles,
    )


def block_case(
    v: dict[str, Any],
    dtype: torch.dtype,
    family: str,
    summary: str,
    call: Callable[[list[Tensor], str], Tensor],
    validate: Callable[[list[Tensor]], Any],
    causal: bool,
    block_label: str,
    result: Any,
) -> Case:
    """A block-list family's case (block-sparse, strided-shard) from its simulator ``result``: SDPA on the same tokens
    as the baseline, FLOPs from the kept pairs, and a kernel's tile is one block, so every kernel backend shares the
    block prediction."""
    n, b, h, d, dv = v["input"][0], v["batch"], v["heads"], v["dim"], v["dim_v"]

    def tiles(backend: str) -> tuple[str, dict[str, float] | None]:
        if backend not in ("cpu", "cuda"):
            return UNTILED.get(backend, "-"), None
        return block_label, bounds(result)

    return Case(
        family=family,
        summary=summary,
        make_inputs=sequence_inputs(v, dtype),
        differentiable=3,
        call=call,
        validate=validate,
        baseline=lambda x: [heads_first(t) for t in x],
        baseline_causal=causal,
        baseline_summary=f"torch SDPA on the same {n} tokens",
        # sparse_pairs already counts every (batch, head).
        forward_flops=2.0 * result.sparse_pairs * (d + dv),
        score_elements=b * h * n * n,
        simulator={"flop_bound": result.flop_bound, "density": result.density, "sparse_pairs": result.sparse_pairs},
        tiles=tiles,
    )


def block_sparse_case(v: dict[str, Any], dtype: torch.dtype) -> Case:
    n, b, h, d = v["input"][0], v["batch"], v["heads"], v["dim"]
    causal, q_block, kv_block = v["causal"][0], v["q_block"], v["kv_block"]
    blocks = make_block_mask(n, n, q_block, kv_block, v["density"], v["pattern"], h, v["seed"], causal)
    mask = torch.from_numpy(blocks)[None]  # [1, H, QB, KB]

    def call(x: list[Tensor], backend: str) -> Tensor:
        return block_sparse_attention(
            x[0], x[1], x[2], mask, q_block=q_block, kv_block=kv_block, is_causal=causal, backend=backend
        )

    result = simulate_block_sparse(
        blocks, seq_len=n, q_block=q_block, kv_block=kv_block, causal=causal, batch=b, heads=h, head_dim=d, gpu="h100"
    )
    return block_case(
        v,
        dtype,
        "block-sparse",
        f"block-sparse  {n} tokens  blocks {q_block} x {kv_block}  {v['pattern']} density {v['density']:g} "
        f"(kept {100 * result.density:.1f}%)  causal {int(causal)}",
        call,
        lambda x: validate_block_sparse(x[0], x[1], x[2], mask, q_block, kv_block, causal, None, None, None),
        causal,
        f"{q_block} / {kv_block} (the blocks)",
        result,
    )


def strided_shard_case(v: dict[str, Any], dtype: torch.dtype) -> Case:
    n, b, h, hk, d = v["input"][0], v["batch"], v["heads"], v["heads_kv"], v["dim"]
    causal = v["causal"][0]
    pattern = {k: v[k] for k in ("block_size", "local_blocks", "vert_stride", "homo_head", "num_dense_heads",
                                 "head_sliding_offset")}  # fmt: skip

    def call(x: list[Tensor], backend: str) -> Tensor:
        return strided_shard_attention(x[0], x[1], x[2], is_causal=causal, backend=backend, **pattern)

    def validate(x: list[Tensor]) -> Any:
        p = pattern
        return validate_strided_shard(
            x[0], x[1], x[2], p["block_size"], p["local_blocks"], p["vert_stride"], causal, p["homo_head"],
            p["num_dense_heads"], p["head_sliding_offset"], None,
        )  # fmt: skip

    result = simulate_strided_shard(
        seq_len=n, heads=h, kv_heads=hk, causal=causal, batch=b, head_dim=d, gpu="h100", **pattern
    )
    return block_case(
        v,
        dtype,
        "strided-shard",
        f"strided-shard  {n} tokens  block {v['block_size']}  local {v['local_blocks']}  vert_stride "
        f"{v['vert_stride']}  homo_head {int(v['homo_head'])}  dense heads {v['num_dense_heads']}  offset "
        f"{v['head_sliding_offset']}  causal {int(causal)}  (kept {100 * result.density:.1f}% of the blocks)",
        call,
        validate,
        causal,
        f"{v['block_size']} / {v['block_size']} (the blocks)",
        result,
    )


def latent_case(v: dict[str, Any], dtype: torch.dtype) -> Case:
    b, h, s_q, s_kv, page = v["batch"], v["heads"], v["q_len"], v["kv_len"], v["page_size"]
    latent, rope, causal = v["latent_dim"], v["rope_dim"], v["causal"][0]
    width = latent + rope
    pages = -(-s_kv // page) if page else 0
    seqlens = torch.full((b,), s_kv, dtype=torch.int64)
    # Pages of one sequence scattered over the pool (seeded), as an allocator leaves them.
    table = torch.randperm(b * pages, generator=torch.Generator().manual_seed(0)).reshape(b, pages) if page else None

    def make_inputs(device: str) -> list[Tensor]:
        gen = torch.Generator().manual_seed(0)
        cache_shape = (b * pages, page, width) if page else (b, s_kv, width)
        return [randn((b, s_q, h, width), device, dtype, gen), randn(cache_shape, device, dtype, gen)]

    on_device: dict[torch.device, tuple[Tensor, Tensor | None]] = {}

    def call(x: list[Tensor], backend: str) -> Tensor:
        # Lengths and block table on the inputs' device, copied once: a serving loop keeps them there.
        dev = x[0].device
        if dev not in on_device:
            on_device[dev] = (seqlens.to(dev), None if table is None else table.to(dev))
        lens, pages_of = on_device[dev]
        return latent_attention(
            x[0], x[1], latent_dim=latent, rope_dim=rope, cache_seqlens=lens if page else None,
            block_table=pages_of, is_causal=causal, backend=backend,
        )  # fmt: skip

    def contiguous_cache(x: list[Tensor]) -> Tensor:
        """[B, S_kv, width] of the cache, gathered through the block table when paged."""
        if not page:
            return x[1]
        return x[1][table.to(x[1].device)].reshape(b, pages * page, width)[:, :s_kv]

    def baseline(x: list[Tensor]) -> list[Tensor]:
        rows = contiguous_cache(x)[:, None]  # [B, 1, S_kv, width]: one shared KV head
        return [heads_first(x[0]), rows, rows[..., :latent].contiguous()]

    result = simulate_latent(
        batch=b, kv_len=s_kv, q_len=s_q, heads=h, latent_dim=latent, rope_dim=rope, page_size=page or 1,
        causal=causal, gpu="h100",
    )  # fmt: skip
    cache = f"paged, {pages} pages of {page} per sequence" if page else "contiguous"
    return Case(
        family="latent",
        summary=f"latent (MLA decode)  q_len {s_q}  kv_len {s_kv}  latent {latent} + rope {rope}  cache {cache}  "
        f"causal {int(causal)}",
        make_inputs=make_inputs,
        differentiable=2,
        call=call,
        validate=lambda x: validate_latent(x[0], x[1], latent, rope, seqlens if page else None, table, causal, None),
        baseline=baseline,
        # SDPA aligns causal masks top-left, decode aligns them to the end of the cache: the baseline is non-causal.
        baseline_causal=False,
        baseline_summary="torch SDPA (one KV head, enable_gqa) on a contiguous copy of the cache",
        forward_flops=float(result.flops),
        score_elements=b * h * s_q * s_kv,
        simulator={
            "flop_bound": result.flop_bound,
            "bytes_moved_bf16": result.bytes_moved,
            "h100_ms": result.times[0].ms,
            "h100_bound": result.times[0].bound,
        },
        tiles=lambda backend: (UNTILED.get(backend, "split-KV chunks"), None),
    )


CASES: dict[str, Callable[[dict[str, Any], torch.dtype], Case]] = {
    "gna": gna_case,
    "attention": attention_case,
    "block-sparse": block_sparse_case,
    "strided-shard": strided_shard_case,
    "latent": latent_case,
}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object], device: str, warmup: int, reps: int, setup: Callable[[], None] | None = None
) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones; ``setup`` runs untimed before each.

    On a GPU each call is bracketed by CUDA events; on the CPU by ``time.perf_counter`` (the CPU kernels are
    synchronous).
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    synchronize(device)
    samples = []
    for _ in range(reps):
        if setup is not None:
            setup()
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_passes(
    forward: Callable[[list[Tensor]], Tensor], inputs: list[Tensor], n_grad: int, backward: bool, v: dict[str, Any]
) -> dict[str, Any]:
    """Forward (and backward) medians of ``forward(inputs)``; the backward runs w.r.t. the first ``n_grad`` inputs."""
    device, warmup, reps = v["device"], v["warmup"], v["reps"]
    with torch.no_grad():
        fwd = measure(lambda: forward(inputs), device, warmup, reps)
    timing: dict[str, Any] = {"forward_ms": statistics.median(fwd), "forward_samples_ms": fwd}
    if backward:
        leaves = [t.detach().requires_grad_(i < n_grad) for i, t in enumerate(inputs)]
        graph: dict[str, Tensor] = {}

        def setup() -> None:
            graph["out"] = forward(leaves)
            graph["grad"] = torch.ones_like(graph["out"])

        bwd = measure(
            lambda: torch.autograd.grad(graph["out"], leaves[:n_grad], graph["grad"]), device, warmup, reps, setup
        )
        timing |= {"backward_ms": statistics.median(bwd), "backward_samples_ms": bwd}
    return timing


def api_message(err: Exception) -> str:
    """A validation error as ``--flag: rule`` when its first word names an API argument that a flag sets.

    Both styles are rewritten: the simulator's ``name[i]: rule`` (the name dropped) and the API's ``name must ...``.
    """
    text = str(err).splitlines()[0]
    match = re.match(r"([A-Za-z_]+)(\[\d+\])?(: )?", text)
    if not match or match.group(1) not in API_FLAGS:
        return text
    return f"{API_FLAGS[match.group(1)]}: {text[match.end() :] if match.group(3) else text}"


def profile(v: dict[str, Any]) -> dict[str, Any]:
    """Check, simulate and (unless a dry run) time one problem; the JSON-ready report."""
    family, device, dtype = v["family"], v["device"], DTYPES[v["dtype"]]
    try:
        case = CASES[family](v, dtype)
        params = case.validate(case.make_inputs("meta"))
    except (ValueError, TypeError) as err:
        raise UsageError(api_message(err)) from None
    problem = Problem(REGISTRY_NAME[family], device, dtype, v["backward"], params)
    names = registered_backends(problem.family)
    chosen = None
    if v.get("backends"):
        chosen = [name.strip() for name in v["backends"].split(",")]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise UsageError(f"--backends: {family} has backends {', '.join(names)}, got {', '.join(unknown)}")
    backends = []
    for name in names:
        reasons = _REGISTRY[problem.family][name].not_supported_reasons(problem)
        tile, predicted = case.tiles(name)
        backends.append({"name": name, "can_run": not reasons, "reasons": reasons, "tile": tile,
                         "predicted": predicted})  # fmt: skip
    runnable = [b["name"] for b in backends if b["can_run"]]
    report: dict[str, Any] = {
        "family": family,
        "problem": case.summary,
        "flags": {k: list(x) if isinstance(x, tuple) else x for k, x in v.items() if k != "json"},
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "dispatch": runnable[0] if runnable else None,
        "simulator": case.simulator,
        "backends": backends,
        "notes": list(case.notes),
    }
    if v["dry_run"]:
        return report
    if chosen is None:
        chosen = runnable
        if "reference" in chosen and case.score_elements > REFERENCE_SCORE_BUDGET:
            chosen.remove("reference")
            report["notes"].append(
                f"reference not timed: its dense scores hold {case.score_elements:.3g} elements; "
                "name it in --backends to time it anyway"
            )
    inputs = case.make_inputs(device)
    base_inputs = case.baseline(inputs)

    def sdpa(x: list[Tensor]) -> Tensor:
        return F.scaled_dot_product_attention(
            x[0], x[1], x[2], is_causal=case.baseline_causal, enable_gqa=x[0].shape[1] != x[1].shape[1]
        )

    baseline = time_passes(sdpa, base_inputs, 3, v["backward"], v)
    report["baseline"] = {"name": case.baseline_summary, "causal": case.baseline_causal} | baseline
    for entry in backends:
        if entry["name"] not in chosen or not entry["can_run"]:
            continue
        name = entry["name"]
        entry |= time_passes(lambda x, name=name: case.call(x, name), inputs, case.differentiable, v["backward"], v)
        entry["speedup_forward"] = baseline["forward_ms"] / entry["forward_ms"]
        entry["forward_gflops"] = case.forward_flops / entry["forward_ms"] / 1e6
        if v["backward"]:
            entry["speedup_backward"] = baseline["backward_ms"] / entry["backward_ms"]
            entry["backward_gflops"] = BACKWARD_FLOP_RATIO * case.forward_flops / entry["backward_ms"] / 1e6
    return report


def table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def fmt_ms(entry: dict[str, Any], key: str) -> str:
    return f"{entry[key]:.3f}" if key in entry else "-"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(report: dict[str, Any]) -> str:
    """The readable form of :func:`profile`'s report."""
    flags, sim = report["flags"], report["simulator"]
    lines = [
        f"natten_like profiler: {report['problem']}",
        f"  batch {flags['batch']}, heads {flags['heads']}"
        + (f" (KV {flags['heads_kv']}), dim {flags['dim']}, dim_v {flags['dim_v']}" if "dim" in flags else "")
        + f"; {report['dtype']} on {report['device']} ({report['threads']} threads)"
        + ("; forward + backward" if flags["backward"] else "; forward"),
        "  simulator: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sim.items()),
        f"  auto-dispatch picks: {report['dispatch'] or 'nothing (every backend refuses)'}",
        "",
    ]
    backward = flags["backward"]
    timed = "baseline" in report
    header = ["backend", "runs", "tile (Q / KV)", "predicted tile bound (worst / mean)"]
    if timed:
        header += ["fwd ms", "fwd GFLOP/s", "fwd speedup"]
        if backward:
            header += ["bwd ms", "bwd GFLOP/s", "bwd speedup"]
    rows = [header]
    for b in report["backends"]:
        p = b["predicted"]
        row = [b["name"], "yes" if b["can_run"] else "no", b["tile"],
               f"{fmt_x(p['tile_bound'])} / {fmt_x(p['tile_bound_avg'])}" if p else "-"]  # fmt: skip
        if timed:
            row += [fmt_ms(b, "forward_ms"), f"{b['forward_gflops']:.2f}" if "forward_gflops" in b else "-",
                    fmt_x(b.get("speedup_forward"))]  # fmt: skip
            if backward:
                row += [fmt_ms(b, "backward_ms"), f"{b['backward_gflops']:.2f}" if "backward_gflops" in b else "-",
                        fmt_x(b.get("speedup_backward"))]  # fmt: skip
        rows.append(row)
    if timed:
        base = report["baseline"]
        row = ["dense SDPA", "yes", "-", "-"]
        row += [fmt_ms(base, "forward_ms"), "-", "1.00x"] + ([fmt_ms(base, "backward_ms"), "-", "1.00x"] * backward)
        rows.append(row)
    lines.append(table(rows))
    if timed:
        base = report["baseline"]
        lines.append(f"  dense SDPA: {base['name']}, " + ("causal" if base["causal"] else "non-causal"))
    refusing = [b for b in report["backends"] if not b["can_run"]]
    if refusing:
        lines += ["", "  refusals:"]
        lines += [f"    {b['name']}: " + "; ".join(b["reasons"]) for b in refusing]
    if timed:
        lines += [
            "",
            f"  medians of {flags['reps']} calls after {flags['warmup']} warm-up; speedup = dense baseline time / "
            "backend time; GFLOP/s from the exact mask (backward counted as 2.5x forward)",
        ]
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 on any bad flag)."""
    try:
        args = build_parser().parse_args(argv)
        report = profile(resolve(args))
    except UsageError as err:
        print(f"natten_like.profiler: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
