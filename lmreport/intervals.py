"""Interval arithmetic for busy/idle splits: how much of a window some activity covers.

A GPU is busy while at least one kernel (or copy, or memset) runs on it; kernels on several
streams overlap, so the busy time is the length of the *union* of their intervals, never the
sum of their durations. The idle share of a measured step is what the union leaves uncovered
of the step's wall time (its profiler range).

HolisticTraceAnalysis (HTA) computes idle time on Kineto traces too. Its release 0.5.0 (May
2025) reads lmreport's traces (checked on kineto_synthetic's CUDA trace), but it requires
jupyterlab, plotly, pydot and pytest at install time (107 packages, about 500 MB in a fresh
environment), loads the whole trace into pandas, and reports idle time per rank and stream
over the whole trace in its own categories ("host wait", "kernel wait"), not per measured
step. These few pure functions give the per-step split, exactly (tests/test_intervals.py),
and the trace is streamed once (ingest/kineto_summary.py).

Times are integers (nanoseconds) so that sums are exact; an interval is (start, end) with
end >= start, and half-open: [start, end).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable, Sequence


def union(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Disjoint, sorted intervals covering exactly what the given ones cover (touching ones merged)."""
    out: list[list[int]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue  # empty: covers nothing
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1][1] = end
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def covered(disjoint: Sequence[tuple[int, int]], start: int, end: int, _starts: Sequence[int] | None = None) -> int:
    """Length of [start, end) covered by `disjoint` (sorted, non-overlapping: the output of `union`)."""
    if end <= start or not disjoint:
        return 0
    starts = _starts if _starts is not None else [s for s, _ in disjoint]
    i = max(bisect_right(starts, start) - 1, 0)  # the last interval starting at or before `start`
    total = 0
    while i < len(disjoint):
        s, e = disjoint[i]
        if s >= end:
            break
        total += max(0, min(e, end) - max(s, start))
        i += 1
    return total


@dataclass(frozen=True)
class WindowUse:
    """How much of one window (a measured step) the activity covers."""

    start_ns: int
    wall_ns: int  # the window's length
    busy_ns: int  # covered by at least one interval

    @property
    def idle_ns(self) -> int:
        return self.wall_ns - self.busy_ns

    @property
    def idle_share(self) -> float | None:
        return self.idle_ns / self.wall_ns if self.wall_ns > 0 else None

    def to_json(self) -> dict:
        return {"start_ns": self.start_ns, "wall_ns": self.wall_ns, "busy_ns": self.busy_ns, "idle_ns": self.idle_ns,
                "idle_share": self.idle_share}


def window_use(intervals: Iterable[tuple[int, int]], windows: Iterable[tuple[int, int]]) -> list[WindowUse]:
    """Busy and idle time of each window: the union of the intervals clipped to it."""
    disjoint = union(intervals)
    starts = [s for s, _ in disjoint]
    return [WindowUse(ws, we - ws, covered(disjoint, ws, we, starts)) for ws, we in sorted(windows)]
