"""The GNA semantics have two implementations: the C++ policy header (run by every kernel) and its torch-free Python
twin (run by the reference backend and the simulator). These tests prove them identical on exhaustive small grids,
and the twin identical to a brute-force restatement of the definition in ../shared/DESIGN.md.
"""

from __future__ import annotations

import itertools

import natten_like  # noqa: F401  (loads the compiled ops)
import pytest
import torch

from simulator import gna_policy as twin


def brute_force_window(i: int, length: int, k: int, s: int, causal: bool) -> set[int]:
    """The keys of query i, restated from the definition without the twin's closed forms."""
    group_start = (i // s) * s
    if causal:
        leader = min(group_start + s - 1, length - 1)  # last query of the stride group
        return {j for j in range(length) if leader - k + 1 <= j <= i}
    leader = min(group_start + s // 2, length - 1)  # centre query of the stride group
    # Non-causal: the k-long run of keys inside [0, length) whose start is closest to leader - k // 2.
    starts = range(0, length - k + 1)
    start = min(starts, key=lambda a: abs(a - (leader - k // 2)))
    return set(range(start, start + k))


GRID = [
    (length, k, s, causal)
    for length in range(2, 12)
    for k in range(2, length + 1)
    for s in range(1, k + 1)
    for causal in (False, True)
]


@pytest.mark.parametrize("causal", [False, True])
def test_twin_window_matches_brute_force(causal: bool) -> None:
    for length, k, s, c in GRID:
        if c != causal:
            continue
        for i in range(length):
            b, e = twin.gna_window(i, length, k, s, causal)
            assert set(range(b, e)) == brute_force_window(i, length, k, s, causal), (length, k, s, causal, i)
            assert b <= i < e, "a query always sees itself"
            if not causal:
                assert e - b == k, "non-causal windows always hold k keys"


def test_cpp_policy_matches_twin_exhaustively() -> None:
    tiles = (1, 3, 4, 8)
    checked = 0
    for length, k, s, causal in GRID:
        for tq, tk in itertools.product(tiles, tiles):
            windows, kv_tiles, full, q_tiles = torch.ops.natten_like.gna_policy_1d(length, k, s, causal, tq, tk)
            assert windows.tolist() == [list(twin.gna_window(i, length, k, s, causal)) for i in range(length)]
            nt, nu = -(-length // tq), -(-length // tk)
            want = [list(twin.gna_tile_kv_tiles(t, tq, tk, length, k, s, causal)) for t in range(nt)]
            assert kv_tiles.tolist() == want
            expected_full = [
                [int(twin.gna_tile_is_full(t, u, tq, tk, length, k, s, causal)) for u in range(nu)] for t in range(nt)
            ]
            assert full.tolist() == expected_full
            want = [list(twin.gna_kv_tile_q_tiles(u, tq, tk, length, k, s, causal)) for u in range(nu)]
            assert q_tiles.tolist() == want
            checked += 1
    assert checked == len(GRID) * len(tiles) ** 2


def test_tile_visits_and_full_flags_agree_with_the_element_mask() -> None:
    """Static tiling covers every attended pair, and a tile flagged full really needs no mask (twin, exhaustive)."""
    for length, k, s, causal in GRID:
        for tq, tk in itertools.product((1, 4), (2, 5)):
            visible = [set(range(*twin.gna_window(i, length, k, s, causal))) for i in range(length)]
            for t in range(-(-length // tq)):
                qb, qe = twin.gna_tile_rows(t, tq, length)
                ub, ue = twin.gna_tile_kv_tiles(t, tq, tk, length, k, s, causal)
                attended = set().union(*(visible[i] for i in range(qb, qe)))
                covered = set(range(ub * tk, min(ue * tk, length)))
                assert attended <= covered, "a visited tile range must cover every attended key"
                assert all(j // tk in range(ub, ue) for j in attended)
                for u in range(ub, ue):
                    keys = range(u * tk, min((u + 1) * tk, length))
                    every = all(j in visible[i] for i in range(qb, qe) for j in keys) and (u + 1) * tk <= length
                    assert twin.gna_tile_is_full(t, u, tq, tk, length, k, s, causal) == every
                # The inverse map names exactly the Q tiles whose ranges include u.
                for u in range(-(-length // tk)):
                    lo, hi = twin.gna_kv_tile_q_tiles(u, tq, tk, length, k, s, causal)
                    want = [
                        t2
                        for t2 in range(-(-length // tq))
                        if u in range(*twin.gna_tile_kv_tiles(t2, tq, tk, length, k, s, causal))
                    ]
                    assert list(range(lo, hi)) == want


def test_dilation_groups() -> None:
    for length in range(2, 20):
        for d in range(1, length // 2 + 1):
            sizes = [twin.gna_group_length(length, d, g) for g in range(d)]
            assert sum(sizes) == length
            assert sizes == [len(range(g, length, d)) for g in range(d)]
            dim = twin.GnaDim(length, 2, 1, d)
            for x in range(length):
                assert all(j % d == x % d for j in dim.window_of(x)), "attention stays inside a dilation group"
