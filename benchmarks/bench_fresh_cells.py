"""Benchmark: launch overhead of a fresh-process cell, forked from the fork server vs a new interpreter (issue 13).

Six bench cells (cpu profile, size tiny, contexts 64 and 128, forward / forward+backward / training
step, fp32; 2 warm-up and 5 measured steps), each marked `fresh_process`, run through the worker
launcher (which gives such cells a process each) into a temporary runs folder, twice:
LMREPORT_FRESH_PROCESS=exec (a new `python -m lmreport.runner` per cell, as before) and fork (a child
of launchers/forked.py's fork server, which this process starts at its first fresh cell, so its
start is counted). Per way: the sweep's wall time measured here (around runner.run_sweep: process
start, imports, teardown included), the time inside the timed steps (the records' `timed_s`), the
overhead per cell, (wall - timed) / cells, and the median over cells of a record's own
wall_s - timed_s (from launch to record, so without teardown; for fork, the cells after the first,
which paid the server's start).

Each sweep runs in a process of its own (so each fork sweep starts its server), exec and fork
alternately, --repeat times (default 2); the least disturbed sweep of each way (smallest overhead
per cell) is compared. Target: the forked overhead per cell at most a quarter of the new
interpreter's. Prints measured against target and PASS/FAIL; exits non-zero on a miss. (A shared or
busy machine makes every number noisier; run it on a quiet one.)

    .venv/bin/python benchmarks/bench_fresh_cells.py [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WAYS = ("exec", "fork")
TARGET_RATIO = 0.25  # forked overhead per cell / new interpreter's overhead per cell


def measure(way: str) -> dict:
    """One sweep of the cells with LMREPORT_FRESH_PROCESS=way, in this process: {cells, wall_s, timed_s,
    overhead_per_cell_s, record_overhead_median_s, first_record_overhead_s}."""
    from _sweeps import overhead, step_cells, timed_sweep
    from lmreport.device import cuda_available
    from lmreport.launchers.forked import MODE_VARIABLE
    from lmreport.launchers.worker import WorkerLauncher
    plan, todo = step_cells("cpu", "tiny", bench_dtypes=("fp32",))
    todo = [dataclasses.replace(c, fresh_process=True) for c in todo]
    cuda_available()  # imports torch here, as `lmreport run` has before it launches anything
    os.environ[MODE_VARIABLE] = way
    wall_s, records = timed_sweep(way, plan, todo, WorkerLauncher())
    # In launch order (fresh cells run one after another); with fork the first one started the server.
    overheads = [r["wall_s"] - r["timed_s"] for r in sorted(records, key=lambda r: r["started_at"])]
    return {**overhead(wall_s, records), "record_overhead_median_s": statistics.median(overheads[1:]),
            "first_record_overhead_s": overheads[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2, help="sweeps of each way (alternating; default 2)")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON as well")
    ap.add_argument("--measure", choices=WAYS, help=argparse.SUPPRESS)  # one sweep in this process (internal)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    subprocess.run([sys.executable, "-c", "import torch"], check=True)  # warm the file cache for both alike
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.repeat):
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, "--measure", way], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{way}: {out.stderr[-2000:]}")
            runs[way].append(json.loads(out.stdout.splitlines()[-1]))
    print(f"{'fresh cells':<12} {'cells':>5} {'wall s':>7} {'timed s':>8} {'overhead/cell s':>16} "
          f"{'first cell s':>13} {'later cells, median s':>22}")
    for way in WAYS:
        for m in sorted(runs[way], key=lambda m: m["overhead_per_cell_s"]):
            print(f"{way:<12} {m['cells']:>5} {m['wall_s']:>7.1f} {m['timed_s']:>8.1f} {m['overhead_per_cell_s']:>16.2f} "
                  f"{m['first_record_overhead_s']:>13.2f} {m['record_overhead_median_s']:>22.2f}")
    best = {way: min(runs[way], key=lambda m: m["overhead_per_cell_s"]) for way in WAYS}
    print("(first cell, later cells: a record's wall_s - timed_s, from launch to record; with fork the first "
          "cell's includes the server's start)")
    from _sweeps import ratio_verdict
    ok = ratio_verdict("forked overhead per cell", best["fork"]["overhead_per_cell_s"], "a new interpreter's",
                       best["exec"]["overhead_per_cell_s"], TARGET_RATIO)
    if args.json:
        print(json.dumps(runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
