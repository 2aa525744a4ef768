"""What the launch-overhead benchmarks share (bench_launch_overhead.py, bench_fresh_cells.py): their bench
cells, one timed sweep of them into a temporary runs folder, and the PASS/FAIL line of a ratio of two
overheads. Imported by bench_*.py scripts run as `python benchmarks/bench_x.py` (this folder on sys.path)."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path


def step_cells(profile: str, size: str, **narrow):
    """(plan, the eager bench step cells of one size of `profile`); `narrow`: more Profile fields to replace."""
    from lmreport import runner
    from lmreport.experiments import bench
    from lmreport.presets import resolve
    plan = runner.Plan(*resolve(profile, 2025, profile != "cpu"))
    prof = dataclasses.replace(plan.profile, sizes=(size,), warmup_ablation=(), compile_sizes=(), **narrow)
    return plan, [c for c in bench.cells(runner.Plan(prof, plan.edition))
                  if c.config.get("experiment") == "step" and not c.config["compiled"]]


def timed_sweep(label: str, plan, todo, launcher) -> tuple[float, list[dict]]:
    """(wall seconds of runner.run_sweep around the cells, their records); exits when a cell is not ok."""
    from lmreport import runner, store
    with tempfile.TemporaryDirectory() as runs:
        t0 = time.perf_counter()
        res = runner.run_sweep(todo, Path(runs), plan.run, executor=launcher, progress=False)
        wall_s = time.perf_counter() - t0
        if res.counts != {"ok": len(todo)}:
            sys.exit(f"{label}: not every cell ran ok: {dict(res.counts)}")
        return wall_s, [store.read_record(store.record_path(Path(runs), plan.run, c.section, c.name)) for c in todo]


def overhead(wall_s: float, records: list[dict]) -> dict:
    """{cells, wall_s, timed_s, overhead_per_cell_s}: the wall time outside the records' timed steps, per cell."""
    timed_s = sum(r.get("timed_s") or 0.0 for r in records)
    return {"cells": len(records), "wall_s": wall_s, "timed_s": timed_s,
            "overhead_per_cell_s": (wall_s - timed_s) / len(records)}


def ratio_verdict(what: str, measured_s: float, of: str, reference_s: float, target_ratio: float) -> bool:
    """Print `PASS|FAIL  <what> <= <target> of <of>: measured vs reference (ratio)`; return whether it passed."""
    ratio = measured_s / reference_s
    ok = ratio <= target_ratio
    print(f"{'PASS' if ok else 'FAIL'}  {what} <= {target_ratio:.0%} of {of}: "
          f"{measured_s:.2f} s vs {reference_s:.2f} s ({ratio:.0%})")
    return ok
