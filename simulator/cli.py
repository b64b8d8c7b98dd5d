"""``python -m simulator``: the command line of the speed-of-light simulator.

Subcommands ``gna``, ``block-sparse``, ``strided-shard``, ``latent``, ``sweep`` and ``presets``. Default output is a
readable report; ``--json`` prints one JSON object. Any bad input exits with status 2 and one line naming the flag and
the rule it breaks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence

import numpy as np

from simulator.block_sparse import PATTERNS, BlockSparseResult, simulate_block_sparse
from simulator.common import GPUS, Roofline
from simulator.gna import TILINGS, GnaResult, TileCounts, simulate_gna
from simulator.latent import LatentResult, simulate_latent
from simulator.presets import PRESETS, get_preset
from simulator.strided_shard import simulate_strided_shard
from simulator.sweep import VARIES, SweepResult, plot_sweep, pyplot, sweep_gna
from simulator.tile_configs import TARGETS

# API keyword -> flag, where the flag is not simply "--" + the keyword with dashes.
FLAG_OF = {"shape": "--input", "block_mask": "--mask", "seq_len_q": "--seq-len"}


ROOFLINE_TITLE = "  roofline, forward bf16, max(compute, memory); tile column from the tile bound (mean):"


class UsageError(Exception):
    """A command-line mistake argparse found; printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and goes through :func:`main`'s exit path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def shape_arg(text: str) -> tuple[int, ...]:
    """``30x48x80`` -> (30, 48, 80); one number for every dim."""
    try:
        return tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers joined by 'x' (e.g. 30x48x80), got {text!r}") from None


def bool_arg(text: str) -> bool:
    """0 or 1 (never Python truthiness: "False" is not true here)."""
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")
    return text == "1"


def lengths_arg(text: str) -> int | tuple[int, ...]:
    """``4096`` or ``4096,1024,77``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or integers joined by ',', got {text!r}") from None
    return values[0] if len(values) == 1 else values


def flag_of(keyword: str) -> str:
    """The command-line flag of an API keyword."""
    return FLAG_OF.get(keyword, "--" + keyword.replace("_", "-"))


def flag_message(err: ValueError) -> str:
    """Rewrite ``keyword: rule`` (API style) as ``--flag: rule`` (CLI style)."""
    text = str(err).splitlines()[0]
    name, sep, rule = text.partition(": ")
    base, bracket, index = name.partition("[")
    if not sep or not base.isidentifier():
        return text
    return f"{flag_of(base)}{bracket}{index}: {rule}"


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")


def add_roofline(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("roofline")
    g.add_argument("--gpu", choices=sorted(GPUS), help="one GPU preset (default: every preset)")
    g.add_argument("--tflops", type=float, help="measured dense bf16 TFLOP/s replacing the --gpu datasheet figure")
    g.add_argument("--hbm-tbps", type=float, help="measured HBM TB/s replacing the --gpu datasheet figure")


def add_amdahl(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("end-to-end (Amdahl)")
    g.add_argument("--attention-share", type=float, help="share F of end-to-end time spent in attention, in [0, 1]")
    g.add_argument("--sparse-fraction", type=float, help="share P of that attention made sparse (default 1)")


def add_gna_problem(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GNA problem (per token dim, joined by 'x'; one number applies to every dim)")
    g.add_argument("--input", dest="shape", type=shape_arg, help="token grid, e.g. 30x48x80")
    g.add_argument("--window", type=shape_arg, help="window per dim, 2 <= window, window * dilation <= size")
    g.add_argument("--stride", type=shape_arg, help="stride per dim, 1 <= stride <= window (default 1)")
    g.add_argument("--dilation", type=shape_arg, help="dilation per dim (default 1)")
    g.add_argument("--causal", type=shape_arg, help="0/1 per dim (default 0)")
    g.add_argument("--q-tile", type=shape_arg, help="Q tile shape (default: the --arch table)")
    g.add_argument("--kv-tile", type=shape_arg, help="KV tile shape (default: the --arch table)")
    g.add_argument("--arch", choices=TARGETS, help="whose tile table to use when tiles are not given (default sm90)")
    g.add_argument("--tiling", choices=TILINGS, help="static: KV range snapped to the KV tile grid (default); dynamic")
    g.add_argument("--preset", help="start from a model preset (see `presets`); flags override its values")


def build_parser() -> Parser:
    parser = Parser(prog="python -m simulator", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("gna", help="Generalized Neighborhood Attention, 1-3 token dims")
    add_gna_problem(p)
    g = p.add_argument_group("model")
    g.add_argument("--batch", type=int)
    g.add_argument("--heads", type=int)
    g.add_argument("--head-dim", type=int)
    p.add_argument("--no-flattened", dest="flattened", action="store_false", help="skip the 1-D flattened comparison")
    p.add_argument("--no-suggest", dest="suggest", action="store_false", help="skip the fully-block-sparse search")
    add_amdahl(p)
    add_roofline(p)
    add_output(p)

    p = sub.add_parser("block-sparse", help="block-sparse attention from a block mask or a density")
    p.add_argument("--seq-len", type=int, help="query tokens")
    p.add_argument("--seq-len-kv", type=int, help="key tokens (default: --seq-len)")
    p.add_argument("--q-block", type=int, help="query block size (default 128)")
    p.add_argument("--kv-block", type=int, help="KV block size (default 128)")
    p.add_argument("--mask", help=".npy file of a bool [QB, KB], [H, QB, KB] or [B, H, QB, KB] block mask")
    p.add_argument("--density", type=float, help="share of blocks kept, in (0, 1], instead of --mask")
    p.add_argument("--pattern", choices=PATTERNS, help="with --density (default random)")
    p.add_argument("--seed", type=int, help="with --pattern random (default 0)")
    p.add_argument("--causal", type=bool_arg, help="0/1 (default 0)")
    p.add_argument("--batch", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--preset", help="start from a model preset")
    add_amdahl(p)
    add_roofline(p)
    add_output(p)

    p = sub.add_parser("strided-shard", help="S2-Attention: local band + per-head strided shard of KV blocks")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--block-size", type=int, help="tokens per block (default 64)")
    p.add_argument("--local-blocks", type=int, help="local band width in blocks (default 16)")
    p.add_argument("--vert-stride", type=int, help="vertical stride in blocks (default 8)")
    p.add_argument("--heads", type=int, help="query heads")
    p.add_argument("--kv-heads", type=int, help="KV heads (default: --heads)")
    p.add_argument("--causal", type=bool_arg, help="0/1 (default 1)")
    p.add_argument("--homo-head", type=bool_arg, help="0/1: every head the same shard (default 0)")
    p.add_argument("--num-dense-heads", type=int, help="the last this many KV heads are dense (default 0)")
    p.add_argument("--head-sliding-offset", type=int, help="offset of the vertical columns (default 0)")
    p.add_argument("--batch", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--preset", help="start from a model preset")
    add_amdahl(p)
    add_roofline(p)
    add_output(p)

    p = sub.add_parser("latent", help="compressed-latent (MLA) decode: bytes moved and memory-bound time")
    p.add_argument("--batch", type=int)
    p.add_argument("--kv-len", type=lengths_arg, help="cache tokens: one for all, or one per batch element (a,b,...)")
    p.add_argument("--q-len", type=int, help="query tokens per step (default 1)")
    p.add_argument("--heads", type=int, help="query heads (default 128)")
    p.add_argument("--latent-dim", type=int, help="default 512")
    p.add_argument("--rope-dim", type=int, help="default 64")
    p.add_argument("--page-size", type=int, help="tokens per cache page (default 64)")
    p.add_argument("--causal", type=bool_arg, help="0/1 (default: 1 when --q-len > 1)")
    p.add_argument("--preset", help="start from a model preset")
    add_roofline(p)
    add_output(p)

    p = sub.add_parser("sweep", help="rank GNA strides, windows or tile shapes around a config")
    add_gna_problem(p)
    p.add_argument("--vary", choices=VARIES, help="what to explore (default stride)")
    p.add_argument("--top", type=int, help="rows to show (default 10)")
    p.add_argument("--plot", help="write a PNG of the bounds against the varied value (needs matplotlib)")
    add_output(p)

    p = sub.add_parser("presets", help="list the model presets, or show one")
    p.add_argument("name", nargs="?", help="a preset's name")
    add_output(p)
    return parser


def keywords(args: argparse.Namespace, family: str, skip: Sequence[str] = ()) -> dict:
    """The API keywords of a subcommand: the preset's values, overridden by every flag given."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "json", "preset", *skip)}
    if args.preset is None:
        return given
    return get_preset(args.preset, family).values | given


def require(kwargs: dict, *names: str) -> None:
    for name in names:
        if name not in kwargs:
            raise ValueError(f"{name}: is required (give it, or a --preset that sets it)")


def fmt_shape(shape: Sequence[int] | Sequence[bool]) -> str:
    return "x".join(str(int(v)) for v in shape)


def table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def tile_rows(columns: list[tuple[str, TileCounts | None]]) -> list[list[str]]:
    def cell(t: TileCounts | None, f: Callable[[TileCounts], str]) -> str:
        return f(t) if t is not None else "-"

    spec = [
        ("Q / KV tile (tokens)", lambda t: f"{math.prod(t.q_tile)} / {math.prod(t.kv_tile)}"),
        ("Q / KV tile shape", lambda t: f"{fmt_shape(t.q_tile)} / {fmt_shape(t.kv_tile)}"),
        ("Q tiles", lambda t: str(t.num_q_tiles)),
        ("KV tiles, worst Q tile", lambda t: str(t.worst_kv_tiles)),
        ("KV tiles, mean Q tile", lambda t: f"{t.avg_kv_tiles:.1f}"),
        ("KV tiles, dense worst / mean", lambda t: f"{t.dense_worst_kv_tiles} / {t.dense_avg_kv_tiles:.1f}"),
        ("tile bound (worst Q tile)", lambda t: f"{t.tile_bound:.2f}x"),
        ("tile bound (mean)", lambda t: f"{t.tile_bound_avg:.2f}x"),
        ("visited tiles needing a mask", lambda t: f"{100 * t.masked_fraction:.1f}%"),
        ("fully block-sparse", lambda t: "yes" if t.fully_block_sparse else "no"),
    ]
    rows = [[""] + [name for name, _ in columns]]
    rows += [[label] + [cell(t, f) for _, t in columns] for label, f in spec]
    return rows


def roofline_lines(rows: Sequence[Roofline], sparse: str) -> str:
    body = [["GPU", "dense ms", f"{sparse} ms (FLOP)", f"{sparse} ms (tile)", "bound"]]
    body += [[r.gpu, f"{r.dense_ms:.4g}", f"{r.sparse_ms_flop:.4g}", f"{r.sparse_ms_tile:.4g}", r.bound] for r in rows]
    return table(body, "    ")


def endtoend_line(result: GnaResult | BlockSparseResult) -> str:
    e = result.endtoend
    if e is None:
        return "  end-to-end: give --attention-share to scale by Amdahl's law"
    return (
        f"  end-to-end (Amdahl, attention share {e.attention_share:g}, sparse fraction {e.sparse_fraction:g}): "
        f"{e.e2e_speedup_flop:.2f}x from the FLOP bound, {e.e2e_speedup_tile:.2f}x from the tile bound (mean)"
    )


def report_gna(r: GnaResult) -> str:
    c = r.config
    lines = [
        f"GNA  input {fmt_shape(c.shape)} ({c.tokens} tokens)  window {fmt_shape(c.window)}  stride "
        f"{fmt_shape(c.stride)}  dilation {fmt_shape(c.dilation)}  causal {fmt_shape(c.causal)}",
        f"     tiles: {c.tile_source}, {r.tiles.tiling} tiling; batch {r.batch}, heads {r.heads}, "
        f"head_dim {r.head_dim}",
        "",
        table(tile_rows([("multi-dim", r.tiles), ("flattened 1-D", r.flattened)])),
    ]
    if r.flattened_note:
        lines.append(f"  flattened 1-D: {r.flattened_note}")
    lines += [
        "",
        f"  FLOP bound: {r.flop_bound:.2f}x  (attended pairs: dense {r.dense_pairs:.4g}, GNA {r.sparse_pairs:.4g})",
        f"  tile bound: {r.tile_bound:.2f}x (worst Q tile), {r.tile_bound_avg:.2f}x (mean)",
    ]
    if r.fully_block_sparse:
        lines.append("  fully block-sparse: yes, no visited tile needs an element mask")
    else:
        lines.append(f"  fully block-sparse: no, {100 * r.tiles.masked_fraction:.1f}% of visited tiles need a mask")
        if r.suggestions:
            lines.append("  nearby fully block-sparse configs:")
            width = max(len(s.changes) for s in r.suggestions)
            lines += [f"    {s.changes:<{width}}  tile bound {s.tile_bound:.2f}x" for s in r.suggestions]
        else:
            lines.append("  no fully block-sparse config found among nearby strides and tile shapes")
    lines += [endtoend_line(r), "", ROOFLINE_TITLE]
    lines.append(roofline_lines(r.roofline, "GNA"))
    return "\n".join(lines)


def report_block_sparse(r: BlockSparseResult) -> str:
    lines = [
        f"{r.family}  seq {r.seq_len_q} x {r.seq_len_kv}  blocks {r.q_block} x {r.kv_block}  causal {int(r.causal)}  "
        f"batch {r.batch}, heads {r.heads} (KV {r.kv_heads}), head_dim {r.head_dim}",
        f"  kept blocks: {100 * r.density:.1f}% of those a query block may see",
        "",
        table(tile_rows([("block tiles", r.tiles)])),
        "",
        f"  FLOP bound: {r.flop_bound:.2f}x  (attended pairs: dense {r.dense_pairs:.4g}, sparse {r.sparse_pairs:.4g})",
        f"  tile bound: {r.tiles.tile_bound:.2f}x (worst Q block), {r.tiles.tile_bound_avg:.2f}x (mean)",
        endtoend_line(r),
        "",
        ROOFLINE_TITLE,
        roofline_lines(r.roofline, "sparse"),
    ]
    return "\n".join(lines)


def report_latent(r: LatentResult) -> str:
    lengths = str(r.kv_len[0]) if len(set(r.kv_len)) == 1 else ",".join(map(str, r.kv_len))
    body = [["GPU", "compute ms", "memory ms", "time ms", "bound"]]
    body += [[t.gpu, f"{t.compute_ms:.4g}", f"{t.memory_ms:.4g}", f"{t.ms:.4g}", t.bound] for t in r.times]
    return "\n".join(
        [
            f"latent (MLA) decode  batch {r.batch}  kv_len {lengths}  q_len {r.q_len}  heads {r.heads}  "
            f"latent {r.latent_dim} + rope {r.rope_dim}  page {r.page_size}  causal {int(r.causal)}",
            "",
            f"  bytes moved: {r.bytes_moved / 1e6:.2f} MB (cache {r.cache_bytes / 1e6:.2f} MB)",
            f"  FLOPs: {r.flops / 1e9:.2f} GFLOP  arithmetic intensity {r.arithmetic_intensity:.1f} FLOP/byte",
            f"  FLOP bound (causal over full): {r.flop_bound:.3f}x",
            "",
            "  roofline, one decode step (max of compute and memory time):",
            table(body, "    "),
        ]
    )


def report_sweep(r: SweepResult) -> str:
    body = [["rank", "window", "stride", "q tile", "kv tile", "FLOP bound", "tile bound", "tile/FLOP", "block-sparse"]]
    body += [
        [
            str(i + 1),
            fmt_shape(row.window),
            fmt_shape(row.stride),
            fmt_shape(row.q_tile),
            fmt_shape(row.kv_tile),
            f"{row.flop_bound:.2f}x",
            f"{row.tile_bound:.2f}x",
            f"{100 * row.tile_efficiency:.0f}%",
            "full" if row.fully_block_sparse else f"{100 * row.masked_fraction:.0f}% masked",
        ]
        for i, row in enumerate(r.rows)
    ]
    return "\n".join(
        [
            f"sweep of {r.vary} around input {fmt_shape(r.base.shape)} window {fmt_shape(r.base.window)} stride "
            f"{fmt_shape(r.base.stride)} ({r.tiling} tiling): {r.evaluated} candidates, best {len(r.rows)}",
            "",
            table(body),
        ]
    )


def run_presets(args: argparse.Namespace) -> tuple[object, str]:
    if args.name is None:
        data = {name: {"family": p.family, "description": p.description} for name, p in PRESETS.items()}
        text = table([["preset", "family", "description"]] + [[n, p.family, p.description] for n, p in PRESETS.items()])
        return data, text
    p = get_preset(args.name)
    flags = " ".join(f"{flag_of(k)} {_flag_value(v)}" for k, v in p.values.items())
    data = {"name": p.name, "family": p.family, "description": p.description, "values": p.values}
    text = f"{p.name} ({p.family}): {p.description}\n  same as: python -m simulator {p.family} {flags}"
    return data, text


def _flag_value(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, tuple):
        return fmt_shape(value)
    return str(value)


def run(args: argparse.Namespace) -> tuple[object, str]:
    """Execute a parsed command: (JSON-ready data, report text)."""
    if args.command == "presets":
        return run_presets(args)
    if args.command in ("gna", "sweep"):
        kwargs = keywords(args, "gna", skip=("vary", "top", "plot"))
        require(kwargs, "shape", "window")
        if args.command == "gna":
            result = simulate_gna(**kwargs)
            return result.to_dict(), report_gna(result)
        for name in ("batch", "heads", "head_dim"):
            kwargs.pop(name, None)
        if args.plot is not None:
            pyplot()  # fail before the sweep, not after it
        sweep = sweep_gna(**kwargs, **{k: v for k, v in (("vary", args.vary), ("top", args.top)) if v is not None})
        if args.plot is not None:
            plot_sweep(sweep, args.plot)
        return sweep.to_dict(), report_sweep(sweep)
    if args.command == "block-sparse":
        kwargs = keywords(args, "block-sparse", skip=("mask",))
        require(kwargs, "seq_len")
        if args.mask is not None:
            kwargs["block_mask"] = load_mask(args.mask)
        result = simulate_block_sparse(**kwargs)
        return result.to_dict(), report_block_sparse(result)
    if args.command == "strided-shard":
        kwargs = keywords(args, "strided-shard")
        require(kwargs, "seq_len")
        result = simulate_strided_shard(**kwargs)
        return result.to_dict(), report_block_sparse(result)
    result = simulate_latent(**keywords(args, "latent"))
    return result.to_dict(), report_latent(result)


def load_mask(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"block_mask: cannot read {path!r} as a .npy array ({err})") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 on any bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        data, text = run(args)
    except UsageError as err:
        print(f"simulator: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"simulator: error: {flag_message(err)}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=2) if args.json else text)
    return 0
