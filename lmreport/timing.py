"""Timing: w warm-up steps, then n measured steps, a device sync after each.

CUDA kernels are launched asynchronously, so a step is timed from before its launch to
after `synchronize`; without the sync one would time the launch, not the work. Warm-up is
excluded (first calls pay for allocator growth, cuBLAS heuristics, compilation), and ranges
mark warm-up and each measured step so profilers can filter them: NVTX ranges for Nsight
Systems (--capture-range=nvtx or filtering by range name), and the same names as
torch.profiler ranges (`record_function`) while torch.profiler records.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import nvtx

from lmreport.device import synchronize


@dataclass(frozen=True)
class Stats:
    """Timings of n measured steps, in milliseconds."""

    mean: float
    std: float  # sample standard deviation (0 when n == 1)
    median: float
    min: float
    max: float
    n: int
    samples: tuple[float, ...]

    @staticmethod
    def of(samples_ms: list[float]) -> "Stats":
        n = len(samples_ms)
        return Stats(mean=statistics.fmean(samples_ms), std=statistics.stdev(samples_ms) if n > 1 else 0.0,
                     median=statistics.median(samples_ms), min=min(samples_ms), max=max(samples_ms), n=n,
                     samples=tuple(samples_ms))

    def to_metric(self) -> dict:
        """The record form: {"mean", "std", "median", "min", "max", "n", "samples"} in ms."""
        d = asdict(self)
        d["samples"] = list(self.samples)
        return d


def _torch_profiler_range(name: str):
    """`torch.profiler.record_function(name)` while torch.profiler records, else nothing.

    record_function costs about 5 µs even when no profiler listens (it enters a RecordFunction
    through the dispatcher); asking whether one is enabled costs 0.05 µs, so timed code that is
    not being profiled pays (almost) nothing. torch is looked up, not imported: if it was never
    imported, no torch profiler can be running.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def profiler_range(name: str):
    """A range that profilers see: NVTX (Nsight Systems; a no-op unless it listens), and the same
    name as a torch.profiler range while torch.profiler records.

    A hot path (model.py opens four per attention call): without torch.profiler it is the bare
    `nvtx.annotate` (about 0.35 µs), not a generator-based context manager around two (about 1.6 µs).
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.autograd._profiler_enabled():
        return _nvtx_and_torch_range(name)
    return nvtx.annotate(name)


@contextlib.contextmanager
def _nvtx_and_torch_range(name: str):
    with nvtx.annotate(name), _torch_profiler_range(name):
        yield


_timed_s = 0.0  # wall seconds this process spent in timed steps (warm-up and measured), all cells together
_timed_depth = 0


def timed_seconds() -> float:
    """Wall seconds spent so far in this process inside `timed_work` (runner.execute_cell takes the
    difference around a cell: the record's `timed_s`, the part of its wall time that is measurement)."""
    return _timed_s


@contextlib.contextmanager
def timed_work():
    """Count the wall time of this block as timed steps (nested blocks count once)."""
    global _timed_s, _timed_depth
    _timed_depth += 1
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _timed_depth -= 1
        if _timed_depth == 0:
            _timed_s += time.perf_counter() - t0


def time_steps(step: Callable[[], object], device: str, warmup: int, steps: int,
               name: str = "step") -> Stats:
    """Run `step` warmup times (a range "warmup" each), then time `steps` calls (range `name`) with a sync each."""
    return time_phases(lambda phase: step(), device, warmup, steps, name)[name]  # a step of no phases


class _PhaseClock:
    """`with clock("forward"): ...` times one phase of a step (profiler range, sync at both ends)."""

    def __init__(self, device: str):
        self.device = device
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        with profiler_range(name):
            synchronize(self.device)
            t0 = time.perf_counter()
            yield
            synchronize(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3


def untimed_phase(name: str):
    """The phase argument of a step that is not being timed (warm-up): no range, no sync."""
    return contextlib.nullcontext()


def time_phases(step: Callable[[Callable], object], device: str, warmup: int, steps: int,
                name: str = "step", after_step: Callable[[], object] | None = None) -> dict[str, Stats]:
    """Like time_steps, for a step made of phases: {"step": Stats, "forward": Stats, ...}.

    `step(phase)` runs one step and wraps each of its phases in `with phase("forward"):` etc.
    Each warm-up step runs in a range "warmup" with untimed phases, so a profile's "forward"
    ranges are exactly the `steps` measured ones. Each measured step is a range `name` holding
    one range per phase; every phase ends with a device sync, so the phases add up to the step
    (up to the cost of the syncs). `after_step()`, when given, is called after every step,
    warm-up ones included, outside the timed and ranged code (it counts neither in a step's
    time nor in timed_seconds()): a torch.profiler schedule's `prof.step`, which then records
    exactly the measured steps, and at their end stops Kineto and writes the trace.
    """
    for _ in range(warmup):
        with timed_work(), profiler_range("warmup"):
            step(untimed_phase)
            synchronize(device)
        if after_step is not None:
            after_step()
    totals: list[float] = []
    phases: dict[str, list[float]] = {}
    for _ in range(steps):
        clock = _PhaseClock(device)
        with timed_work(), profiler_range(name):
            synchronize(device)
            t0 = time.perf_counter()
            step(clock)
            synchronize(device)
            totals.append((time.perf_counter() - t0) * 1e3)
        if after_step is not None:
            after_step()
        for k, v in clock.ms.items():
            phases.setdefault(k, []).append(v)
    return {name: Stats.of(totals), **{k: Stats.of(v) for k, v in phases.items()}}
