"""Interval arithmetic behind the busy/idle split: unions and the time each window is covered, exactly."""

from __future__ import annotations

import random

import pytest

from lmreport.intervals import WindowUse, covered, union, window_use


def test_union_merges_overlapping_touching_and_nested_intervals():
    assert union([(5, 7), (0, 2), (1, 3), (3, 4), (10, 20), (12, 15), (8, 8)]) == [(0, 4), (5, 7), (10, 20)]
    assert union([]) == [] and union([(3, 3), (4, 2)]) == []  # empty and reversed intervals cover nothing


def test_covered_clips_to_the_window():
    d = union([(0, 10), (20, 30), (40, 50)])
    assert covered(d, 5, 45) == 5 + 10 + 5
    assert covered(d, 10, 20) == 0 and covered(d, 30, 40) == 0  # half-open: the ends do not count
    assert covered(d, -100, 100) == 30 and covered(d, 25, 26) == 1 and covered(d, 7, 7) == 0
    assert covered([], 0, 10) == 0


def test_window_use_per_window():
    use = window_use([(100, 300), (200, 400), (500, 600), (950, 1100)], [(0, 1000), (1000, 1500)])
    assert use == [WindowUse(0, 1000, 450), WindowUse(1000, 500, 100)]
    assert use[0].idle_ns == 550 and use[0].idle_share == 0.55 and use[1].idle_share == 0.8
    assert WindowUse(5, 0, 0).idle_share is None
    assert use[0].to_json() == {"start_ns": 0, "wall_ns": 1000, "busy_ns": 450, "idle_ns": 550, "idle_share": 0.55}


def test_against_a_brute_force_count():
    rng = random.Random(0)
    for _ in range(50):
        intervals = [(s, s + rng.randint(0, 40)) for s in (rng.randint(0, 400) for _ in range(rng.randint(0, 30)))]
        windows = [(s, s + rng.randint(1, 120)) for s in (rng.randint(0, 400) for _ in range(5))]
        busy_points = {t for s, e in intervals for t in range(s, e)}
        for u, (ws, we) in zip(window_use(intervals, windows), sorted(windows)):
            assert u.busy_ns == sum(1 for t in range(ws, we) if t in busy_points)


@pytest.mark.parametrize("n", [1, 1000])
def test_many_short_kernels_on_one_stream(n):
    """A launch-bound step: n kernels of 2 µs with 8 µs gaps: the GPU idles 80% of the time."""
    kernels = [(i * 10_000, i * 10_000 + 2_000) for i in range(n)]
    (u,) = window_use(kernels, [(0, n * 10_000)])
    assert u.busy_ns == n * 2_000 and u.idle_share == 0.8
