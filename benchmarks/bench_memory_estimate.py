"""Benchmark: memory estimation at full size on 2 CPU cores (issue 4).

Targets: `lmreport estimate memory` of the 2.7B full training step at context 512 in under
60 s (a fresh process, imports included), and `lmreport run memory` with the cpu profile (the
12 estimated cells of the 2025 edition, their variants and the CPU checks) in under 3 min.
Prints measured against target and PASS/FAIL; exits non-zero on a miss.

    .venv/bin/python benchmarks/bench_memory_estimate.py [--quick]   (--quick: skip the section run)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

TARGET_ESTIMATE_S = 60.0
TARGET_SECTION_S = 180.0


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0, p.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the single 2.7B estimate")
    args = ap.parse_args()
    lm = [sys.executable, "-m", "lmreport"]
    results = []
    t, out = timed(lm + ["estimate", "memory", "--size", "2.7B", "--ctx", "512", "--mode", "train", "--json"])
    peak = json.loads(out)["peak_bytes"]
    results.append((f"2.7B train step, context 512, estimated < {TARGET_ESTIMATE_S:.0f} s", t < TARGET_ESTIMATE_S,
                    f"{t:.1f} s (peak {peak / 1024**3:.2f} GiB)"))
    if not args.quick:
        with tempfile.TemporaryDirectory() as runs:
            t, _ = timed(lm + ["run", "memory", "--profile", "cpu", "--runs-dir", runs, "--no-progress"])
        results.append((f"lmreport run memory (cpu profile) < {TARGET_SECTION_S:.0f} s", t < TARGET_SECTION_S,
                        f"{t:.1f} s"))
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
