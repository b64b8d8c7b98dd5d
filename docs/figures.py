"""Regenerate the mask pictures of the family pages (``docs/img/*.png``): ``python docs/figures.py``.

An optional tool: it needs matplotlib (``pip install matplotlib``), which nothing else in the project does. Every mask
is taken from the library itself (the reference backends' masks and the policies' Python twins), never re-derived
here, so a picture shows what the code computes. The output is deterministic: fixed inputs, no timestamps in the PNGs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from natten_like import latent_attention  # noqa: E402
from natten_like._validation import validate_gna  # noqa: E402
from natten_like.backends.reference import gna_mask  # noqa: E402
from natten_like.block_sparse import element_mask as block_sparse_element_mask  # noqa: E402
from natten_like.block_sparse import validate_block_sparse  # noqa: E402
from natten_like.strided_shard import element_mask as strided_shard_element_mask  # noqa: E402
from natten_like.strided_shard import validate_strided_shard  # noqa: E402

from simulator import make_block_mask  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"
DPI = 72
# One colour per highlighted query; its keys are drawn in the same colour, lighter.
QUERY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
GRID = "#bbbbbb"


def save(fig: plt.Figure, name: str) -> None:
    # No "Software" (version) or date metadata: the bytes depend only on the picture.
    fig.savefig(OUT / name, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {OUT / name} ({(OUT / name).stat().st_size // 1024} KiB)")


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def gna_visible(
    shape: tuple[int, int], window: int, stride: int, dilation: int, causal: tuple[bool, bool]
) -> np.ndarray:
    """bool [N, N] of a 2-D GNA problem, from the reference backend's mask (row-major flattened token grid)."""
    q = meta(1, *shape, 1, 4)
    params = validate_gna(q, q, q, window, stride, dilation, causal, None, None, None)
    return gna_mask(params, torch.device("cpu")).numpy()


def draw_grid(ax: plt.Axes, shape: tuple[int, int], title: str) -> None:
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    ax.set_xticks(np.arange(-0.5, shape[1], 1), minor=True)
    ax.set_yticks(np.arange(-0.5, shape[0], 1), minor=True)
    ax.grid(which="minor", color=GRID, linewidth=0.5)
    ax.tick_params(which="both", length=0, labelsize=7)
    ax.set_xticks(range(0, shape[1], 4))
    ax.set_yticks(range(0, shape[0], 4))
    ax.set_title(title, fontsize=9)


def gna_panel(ax: plt.Axes, shape: tuple[int, int], queries: list[tuple[int, int]], title: str, **kw: object) -> None:
    """Each query's keys as lightly filled cells, the query itself as a solid cell."""
    visible = gna_visible(shape, **kw)
    draw_grid(ax, shape, title)
    for (x, y), colour in zip(queries, QUERY_COLOURS, strict=False):
        keys = visible[x * shape[1] + y].reshape(shape)
        for kx, ky in zip(*np.nonzero(keys), strict=True):
            ax.add_patch(plt.Rectangle((ky - 0.5, kx - 0.5), 1, 1, color=colour, alpha=0.3, linewidth=0))
        ax.add_patch(plt.Rectangle((y - 0.5, x - 0.5), 1, 1, color=colour, linewidth=0))


def gna_figure() -> None:
    shape = (12, 16)
    fig, axes = plt.subplots(2, 2, figsize=(8.4, 6.6))
    gna_panel(axes[0, 0], shape, [(5, 7), (0, 0), (11, 14)], "window 5x5 (borders shift inward)",
              window=5, stride=1, dilation=1, causal=(False, False))  # fmt: skip
    gna_panel(axes[0, 1], shape, [(4, 4), (5, 5), (9, 12)], "window 5x5, stride 2x2 (a group shares one window)",
              window=5, stride=2, dilation=1, causal=(False, False))  # fmt: skip
    gna_panel(axes[1, 0], shape, [(5, 7), (6, 8)], "window 5x5, dilation 2 (groups i % 2)",
              window=5, stride=1, dilation=2, causal=(False, False))  # fmt: skip
    gna_panel(axes[1, 1], shape, [(5, 7), (11, 2)], "window 5x5, causal 0x1 (causal along columns)",
              window=5, stride=1, dilation=1, causal=(False, True))  # fmt: skip
    fig.suptitle("2-D GNA on a 12x16 token grid: solid = query, light = the keys it attends", fontsize=10)
    fig.tight_layout()
    save(fig, "gna_2d.png")


def gna_1d_figure() -> None:
    """Full [N, N] masks of 1-D GNA: which keys (columns) each query (row) attends."""
    n = 24
    configs = [
        ("window 7", dict(window=7, stride=1, dilation=1, causal=False)),
        ("window 8, stride 4", dict(window=8, stride=4, dilation=1, causal=False)),
        ("window 8, stride 8 (blocked)", dict(window=8, stride=8, dilation=1, causal=False)),
        ("window 5, dilation 3", dict(window=5, stride=1, dilation=3, causal=False)),
        ("window 7, causal", dict(window=7, stride=1, dilation=1, causal=True)),
        ("window 8, stride 4, causal", dict(window=8, stride=4, dilation=1, causal=True)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(8.4, 6.0))
    for ax, (title, kw) in zip(axes.flat, configs, strict=True):
        q = meta(1, n, 1, 4)
        params = validate_gna(q, q, q, kw["window"], kw["stride"], kw["dilation"], kw["causal"], None, None, None)
        ax.imshow(gna_mask(params, torch.device("cpu")).numpy(), cmap=ListedColormap(["white", "#1f77b4"]))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"1-D GNA masks, {n} tokens (row = query, filled = attended key)", fontsize=10)
    fig.tight_layout()
    save(fig, "gna_1d.png")


def block_sparse_figure() -> None:
    n, q_block, kv_block = 64, 16, 8
    blocks = torch.from_numpy(make_block_mask(n, n, q_block, kv_block, 0.35, "random", 1, seed=3))[None]
    x = meta(1, n, 1, 4)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.4))
    for ax, causal in zip(axes, (False, True), strict=True):
        params = validate_block_sparse(x, x, x, blocks, q_block, kv_block, causal, None, None, None)
        mask = block_sparse_element_mask(params, n, n)[0, 0].numpy()
        ax.imshow(mask, cmap=ListedColormap(["white", "#1f77b4"]), extent=(-0.5, n - 0.5, n - 0.5, -0.5))
        ax.set_xticks(np.arange(0, n + 1, kv_block) - 0.5, labels=[str(v) for v in range(0, n + 1, kv_block)])
        ax.set_yticks(np.arange(0, n + 1, q_block) - 0.5, labels=[str(v) for v in range(0, n + 1, q_block)])
        ax.grid(color=GRID, linewidth=0.6)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"key (KV blocks of {kv_block})", fontsize=8)
        ax.set_ylabel(f"query (Q blocks of {q_block})", fontsize=8)
        ax.set_title(f"is_causal={causal}", fontsize=9)
    fig.suptitle("block-sparse: the same block lists, without and with the causal element mask", fontsize=10)
    fig.tight_layout()
    save(fig, "block_sparse.png")


def strided_shard_figure() -> None:
    n, block, heads = 96, 8, 4
    x, kv = meta(1, n, heads, 4), meta(1, n, heads, 4)
    params = validate_strided_shard(x, kv, kv, block, 2, 4, True, False, 0, 0, None)
    mask = strided_shard_element_mask(params).numpy()  # [H, N, N]
    fig, axes = plt.subplots(1, heads + 1, figsize=(11.0, 2.9))
    for h in range(heads):
        axes[h].imshow(mask[h], cmap=ListedColormap(["white", QUERY_COLOURS[h]]))
        axes[h].set_title(f"head {h}", fontsize=9)
    axes[heads].imshow(mask.sum(axis=0), cmap="Greys", vmin=0, vmax=heads)
    axes[heads].set_title("heads covering a pair", fontsize=9)
    for ax in axes:
        ax.tick_params(labelsize=6)
        ax.set_xlabel("key", fontsize=7)
    axes[0].set_ylabel("query", fontsize=7)
    fig.suptitle(
        f"strided-shard (S2): {n} tokens, block {block}, local_blocks 2, vert_stride 4, causal, {heads} heads",
        fontsize=10,
    )
    fig.tight_layout()
    save(fig, "strided_shard.png")


def latent_visible(s_q: int, lengths: list[int], page: int, table: torch.Tensor, causal: bool) -> np.ndarray:
    """bool [B, S_q, capacity]: cache positions each query sees, read off latent_attention itself.

    With zero queries every visible row gets the same weight, and with one-hot latent values the output's column j is
    that weight exactly where position j is visible (and 0 elsewhere).
    """
    batch, capacity = len(lengths), table.shape[1] * page
    cache = torch.zeros(table.numel(), page, capacity + 1, dtype=torch.float64)
    for b, n in enumerate(lengths):
        for slot in range(math.ceil(n / page)):  # used slots only: an unused one may name any page
            cache[table[b, slot], :, slot * page : (slot + 1) * page] = torch.eye(page, dtype=torch.float64)
    q = torch.zeros(batch, s_q, 1, capacity + 1, dtype=torch.float64)
    out = latent_attention(
        q, cache, latent_dim=capacity, rope_dim=1, cache_seqlens=torch.tensor(lengths), block_table=table,
        is_causal=causal, backend="reference",
    )  # fmt: skip
    return (out[:, :, 0] > 0).numpy()


def latent_figure() -> None:
    page, lengths, s_q = 4, [14, 9], 3
    pages = [math.ceil(n / page) for n in lengths]
    table = torch.tensor([[5, 1, 6, 2], [3, 0, 7, 7]])  # sequence 1 uses 3 pages; its 4th slot is unused
    visible = latent_visible(s_q, lengths, page, table, causal=True)
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2), gridspec_kw={"width_ratios": [1, 1.6]})
    ax = axes[0]
    pool = np.full((table.numel(), page), -1)
    for b, n in enumerate(lengths):
        for slot in range(pages[b]):
            p = int(table[b, slot])
            for t in range(page):
                if slot * page + t < n:
                    pool[p, t] = b
    colours = ListedColormap(["#eeeeee", QUERY_COLOURS[0], QUERY_COLOURS[1]])
    ax.imshow(pool + 1, cmap=colours, vmin=0, vmax=2)
    for b in range(len(lengths)):
        for slot in range(pages[b]):
            ax.text(page - 0.4, int(table[b, slot]), f"seq {b} page {slot}", fontsize=7, va="center")
    ax.set_xlim(-0.5, page + 2.6)
    ax.set_yticks(range(table.numel()))
    ax.set_xticks(range(page))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("row within page", fontsize=8)
    ax.set_ylabel("page of kv_cache", fontsize=8)
    ax.set_title(f"paged cache, page_size {page}, block_table\n{table.tolist()}", fontsize=8)
    ax = axes[1]
    rows = np.concatenate([visible[b] for b in range(len(lengths))])
    ax.imshow(rows, cmap=ListedColormap(["white", "#1f77b4"]), aspect="auto")
    ax.set_yticks(range(rows.shape[0]), labels=[f"seq {b}, q {s}" for b in range(len(lengths)) for s in range(s_q)])
    ax.set_xticks(range(rows.shape[1]))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("cache position (in the sequence's own order)", fontsize=8)
    ax.set_title(f"causal decode, S_q = {s_q}, cache_seqlens {lengths}: query s sees positions <= L - S_q + s",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    save(fig, "latent.png")


FIGURES = {
    "gna_2d": gna_figure,
    "gna_1d": gna_1d_figure,
    "block_sparse": block_sparse_figure,
    "strided_shard": strided_shard_figure,
    "latent": latent_figure,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"figures to write: {', '.join(FIGURES)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(FIGURES))
    if unknown:
        parser.error(f"names: must be among {', '.join(FIGURES)}, got {', '.join(unknown)}")
    OUT.mkdir(exist_ok=True)
    for name in args.names or FIGURES:
        FIGURES[name]()


if __name__ == "__main__":
    main()
