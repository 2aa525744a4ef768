"""What the benchmarks measure of a command: one fresh process's wall time and peak memory.

Imported by the bench_*.py scripts (run as `python benchmarks/bench_x.py`, so this folder is on
sys.path); `make bench-tools` runs only bench_*.py, not this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def run(cmd: list[str]) -> tuple[float, int, bytes]:
    """(wall seconds, peak RSS in bytes, stdout) of one fresh process; exits with its stderr if it fails."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)  # the child's own rusage: its peak RSS, not ours
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss * 1024, out  # ru_maxrss is in KiB on Linux
