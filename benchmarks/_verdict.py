"""The PASS/FAIL line of a benchmark whose target is a ratio of two overheads (bench_launch_overhead.py,
bench_fresh_cells.py). Imported by bench_*.py scripts run as `python benchmarks/bench_x.py`."""

from __future__ import annotations


def ratio_verdict(what: str, measured_s: float, of: str, reference_s: float, target_ratio: float) -> bool:
    """Print `PASS|FAIL  <what> <= <target> of <of>: measured vs reference (ratio)`; return whether it passed."""
    ratio = measured_s / reference_s
    ok = ratio <= target_ratio
    print(f"{'PASS' if ok else 'FAIL'}  {what} <= {target_ratio:.0%} of {of}: "
          f"{measured_s:.2f} s vs {reference_s:.2f} s ({ratio:.0%})")
    return ok
