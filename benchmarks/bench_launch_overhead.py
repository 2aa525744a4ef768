"""Benchmark: per-cell overhead of the inline, subprocess and worker launchers on this machine (issue 13).

The same bench cells (cpu profile, size tiny, contexts 64 and 128, forward / forward+backward /
training step, fp32 and bf16: 12 cells of 2 warm-up and 5 measured steps) run through each
launcher into a temporary runs folder. Per launcher: the sweep's wall time measured here (around
runner.run_sweep: process starts, imports, CUDA set-up on a GPU, teardown included), the time
inside the timed steps (the records' `timed_s`), and the overhead per cell, (wall - timed) / cells.
The launch cost of a fresh process is the subprocess launcher's overhead per cell minus inline's.

Target: the worker's overhead per cell at most half the subprocess launcher's. Prints measured
against target and PASS/FAIL; exits non-zero on a miss. (A shared or busy machine makes every
number noisier; run it on a quiet one.)

On a GPU, `--profile gpu-quick` runs 12 CUDA cells of size small (contexts 128 and 256) instead: each
subprocess cell then pays its CUDA set-up too, which the worker pays once.

    .venv/bin/python benchmarks/bench_launch_overhead.py [--profile cpu|gpu-quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAUNCHERS = ("inline", "subprocess", "worker")
TARGET_RATIO = 0.5  # worker overhead per cell / subprocess overhead per cell


# --profile: the cells each launcher runs. cpu: size tiny, contexts 64 and 128 (12 cells, any machine);
# gpu-quick: size small on CUDA, contexts 128 and 256 (12 cells of 2 warm-up + 5 measured steps), the
# issue's "gpu-quick timed with both executors" (a few minutes on one H100/H200, mostly the subprocess launcher's).
PROFILE_SIZE = {"cpu": "tiny", "gpu-quick": "small"}


def measure(profile: str = "cpu") -> dict[str, dict]:
    """{launcher: {cells, wall_s, timed_s, duration_s, overhead_per_cell_s, launch_per_cell_s}}."""
    from _sweeps import overhead, step_cells, timed_sweep
    from lmreport import launchers
    plan, todo = step_cells(profile, PROFILE_SIZE[profile])
    subprocess.run([sys.executable, "-c", "import torch"], check=True)  # warm the file cache for every launcher alike
    results = {}
    for name in LAUNCHERS:
        wall_s, records = timed_sweep(name, plan, todo, launchers.get(name))
        duration_s = sum(r["duration_s"] for r in records)
        results[name] = {**overhead(wall_s, records), "duration_s": duration_s,
                         "launch_per_cell_s": (wall_s - duration_s) / len(todo)}
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON as well")
    ap.add_argument("--profile", choices=tuple(PROFILE_SIZE), default="cpu",
                    help="cpu: tiny CPU cells (default); gpu-quick: size small on CUDA (needs a GPU)")
    args = ap.parse_args()
    if args.profile != "cpu":
        from lmreport.device import cuda_available
        if not cuda_available():
            print(f"bench_launch_overhead.py --profile {args.profile}: needs a CUDA GPU, and torch finds none here",
                  file=sys.stderr)
            return 2
    r = measure(args.profile)
    print(f"{'launcher':<11} {'cells':>5} {'wall s':>8} {'timed s':>8} {'overhead/cell s':>16} {'outside cell/cell s':>20}")
    for name, m in r.items():
        print(f"{name:<11} {m['cells']:>5} {m['wall_s']:>8.1f} {m['timed_s']:>8.1f} {m['overhead_per_cell_s']:>16.2f} "
              f"{m['launch_per_cell_s']:>20.2f}")
    process_s = r["subprocess"]["overhead_per_cell_s"] - r["inline"]["overhead_per_cell_s"]
    what = "a fresh process and its CUDA set-up cost" if args.profile != "cpu" else "a fresh process costs"
    print(f"{what} {process_s:.2f} s per cell here (subprocess minus inline overhead per cell)")
    from _sweeps import ratio_verdict
    ok = ratio_verdict("worker overhead per cell", r["worker"]["overhead_per_cell_s"], "subprocess's",
                       r["subprocess"]["overhead_per_cell_s"], TARGET_RATIO)
    if args.json:
        print(json.dumps(r))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
