"""Benchmark: `lmreport inspect snapshot` on a 1,000,000-event snapshot (issue 4).

Targets, on the 2 cores of CI: under 20 s, under 4 GiB peak memory, and within 3x of a bare
`pickle.load` of the same file (the floor for any Python reader). The snapshot is synthetic
but built like real ones (lmreport.ingest.snapshot_synthetic: torch's layout, shared frame
dicts, C++ then Python frames, memory allocated before recording). Both commands run as fresh
processes, as a user runs them; wall time and peak RSS (os.wait4) are measured per process;
the median of 3 runs is compared. The replay's peak is also checked against the simulation's
ground truth, so a fast but wrong inspect fails too.

    .venv/bin/python benchmarks/bench_snapshot.py [--events N] [--keep FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _process import run  # one fresh process: wall time and peak RSS

TARGET_S = 20.0
TARGET_RSS = 4 * 1024**3
TARGET_RATIO = 3.0
RUNS = 3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="also write the synthetic snapshot here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lmreport.ingest.snapshot_synthetic import synthetic_snapshot

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic_snapshot.pickle"
        t0 = time.perf_counter()
        obj, truth = synthetic_snapshot(events=args.events, seed=0)
        path.write_bytes(pickle.dumps(obj))
        del obj
        if args.keep:
            args.keep.write_bytes(path.read_bytes())
        print(f"synthetic snapshot: {truth.events[0]:,} trace entries, {path.stat().st_size / 1024**2:,.1f} MiB "
              f"(built in {time.perf_counter() - t0:.1f} s)")
        bare = [run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(path)])
                for _ in range(RUNS)]
        insp = [run([sys.executable, "-m", "lmreport", "inspect", "snapshot", "--json", str(path)]) for _ in range(RUNS)]
    peak = json.loads(insp[0][2])["devices"][0]["peak_active_bytes"]
    t_bare = statistics.median(w for w, _, _ in bare)
    t_insp = statistics.median(w for w, _, _ in insp)
    rss = max(r for _, r, _ in insp)
    ratio = t_insp / t_bare
    checks = [
        ("peak found equals the simulation's true peak", peak == truth.peak_active[0],
         f"{peak:,} vs {truth.peak_active[0]:,} bytes"),
        (f"inspect wall time < {TARGET_S:.0f} s", t_insp < TARGET_S, f"median {t_insp:.2f} s over {RUNS} runs"),
        (f"inspect peak memory < {TARGET_RSS / 1024**3:.0f} GiB", rss < TARGET_RSS, f"max RSS {rss / 1024**3:.2f} GiB"),
        (f"inspect within {TARGET_RATIO:.0f}x of a bare pickle.load", ratio <= TARGET_RATIO,
         f"{t_insp:.2f} s / {t_bare:.2f} s = {ratio:.2f}x (both fresh processes; bare RSS "
         f"{max(r for _, r, _ in bare) / 1024**3:.2f} GiB)"),
    ]
    print(f"machine: {os.cpu_count()} CPUs visible; python {sys.version.split()[0]}")
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
