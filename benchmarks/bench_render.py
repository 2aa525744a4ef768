"""Benchmark: `lmreport render` from existing records must take under 10 s (issue 2).

Times the real command in a fresh process (imports included), as `make render` runs it,
over the records in runs/ (or, when there are none, over freshly made accounting records
in a temporary folder). Prints the median of 3 runs and PASS/FAIL.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 10.0


def main() -> int:
    runs = Path("runs")
    with tempfile.TemporaryDirectory() as tmp:
        if not any(runs.rglob("*.json")):
            runs = Path(tmp) / "runs"
            subprocess.run([sys.executable, "-m", "lmreport", "run", "accounting", "--profile", "cpu",
                            "--runs-dir", str(runs), "--no-progress"], check=True)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lmreport", "render", "--runs-dir", str(runs),
                            "--out", str(Path(tmp) / "build")], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    ok = median < TARGET_S
    print(f"render (Markdown + PDF) from {runs}: median {median:.2f} s over 3 runs "
          f"(min {min(times):.2f}, max {max(times):.2f}); target < {TARGET_S:.0f} s: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
