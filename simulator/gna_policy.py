"""Torch-free Python twin of ``csrc/include/natten_like/policy/gna.hpp``: the one definition of GNA semantics in Python.

Every function mirrors its C++ namesake (``gna_window`` <-> ``gna_window`` ...). All window and tile arithmetic is in
group-local coordinates of one dilation group (see the header's comment); ``tests/test_policy.py`` proves the twins
agree. The ``*_np`` helpers are numpy-vectorised forms of their namesakes (same semantics), used by the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gna_group_length(length: int, dilation: int, group: int) -> int:
    """Length of dilation group ``group`` of a dimension of ``length`` tokens."""
    return (length - group + dilation - 1) // dilation


def gna_window(i: int, lg: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    """Keys ``[begin, end)`` seen by group-local query ``i`` in a group of length ``lg``."""
    if causal:
        leader = min((i // s) * s + s - 1, lg - 1)
        return max(leader - k + 1, 0), i + 1
    leader = min((i // s) * s + s // 2, lg - 1)
    start = min(max(leader - k // 2, 0), lg - k)
    return start, start + k


def gna_window_np(i: np.ndarray, lg: int, k: int, s: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gna_window` over an int64 array of group-local queries ``i`` (same shape out), for the simulator."""
    if causal:
        leader = np.minimum((i // s) * s + s - 1, lg - 1)
        return np.maximum(leader - k + 1, 0), i + 1
    leader = np.minimum((i // s) * s + s // 2, lg - 1)
    start = np.clip(leader - k // 2, 0, lg - k)
    return start, start + k


def gna_tile_rows(t: int, tile: int, lg: int) -> tuple[int, int]:
    """Group-local queries ``[begin, end)`` of tile ``t``."""
    return t * tile, min((t + 1) * tile, lg)


def gna_tile_kv_range(t: int, tq: int, lg: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    """Union of the windows of the queries of Q tile ``t`` (one interval)."""
    qb, qe = gna_tile_rows(t, tq, lg)
    return gna_window(qb, lg, k, s, causal)[0], gna_window(qe - 1, lg, k, s, causal)[1]


def gna_tile_kv_tiles(t: int, tq: int, tk: int, lg: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    """KV tiles ``[begin, end)`` visited by Q tile ``t`` under static tiling (range snapped to the KV tile grid)."""
    b, e = gna_tile_kv_range(t, tq, lg, k, s, causal)
    return b // tk, ceil_div(e, tk)


def gna_full_kv_tiles(t: int, tq: int, tk: int, lg: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    """KV tiles ``[begin, end)`` Q tile ``t`` attends in full (no element mask; never a tile cut by the group end)."""
    qb, qe = gna_tile_rows(t, tq, lg)
    first_end = gna_window(qb, lg, k, s, causal)[1]
    last_begin = gna_window(qe - 1, lg, k, s, causal)[0]
    return ceil_div(last_begin, tk), min(first_end, lg) // tk


def gna_tile_is_full(t: int, u: int, tq: int, tk: int, lg: int, k: int, s: int, causal: bool) -> bool:
    """True when Q tile ``t`` x KV tile ``u`` needs no element mask."""
    b, e = gna_full_kv_tiles(t, tq, tk, lg, k, s, causal)
    return b <= u < e


def gna_kv_tile_q_tiles(u: int, tq: int, tk: int, lg: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    """Q tiles ``[begin, end)`` that visit KV tile ``u`` (inverse of :func:`gna_tile_kv_tiles`)."""
    n = ceil_div(lg, tq)
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if gna_tile_kv_tiles(mid, tq, tk, lg, k, s, causal)[1] > u:
            hi = mid
        else:
            lo = mid + 1
    first, hi = lo, n
    while lo < hi:
        mid = (lo + hi) // 2
        if gna_tile_kv_tiles(mid, tq, tk, lg, k, s, causal)[0] > u:
            hi = mid
        else:
            lo = mid + 1
    return first, lo


@dataclass(frozen=True)
class GnaDim:
    """One token dimension of a GNA problem."""

    length: int
    window: int
    stride: int = 1
    dilation: int = 1
    causal: bool = False

    def group_length(self, g: int) -> int:
        return gna_group_length(self.length, self.dilation, g)

    def window_of(self, x: int) -> list[int]:
        """Global key coordinates seen by global query coordinate ``x`` (dilation applied)."""
        g, i = x % self.dilation, x // self.dilation
        b, e = gna_window(i, self.group_length(g), self.window, self.stride, self.causal)
        return [g + j * self.dilation for j in range(b, e)]

    def num_slots(self, tile: int) -> int:
        """Tiles of size ``tile`` over all dilation groups."""
        return sum(ceil_div(self.group_length(g), tile) for g in range(self.dilation))

    def slots(self, tile: int) -> list[tuple[int, int]]:
        """Slot index -> (group, group-local tile), in the order of the C++ ``GnaDim::slot_to_tile``."""
        return [(g, t) for g in range(self.dilation) for t in range(ceil_div(self.group_length(g), tile))]
