"""Benchmark: `lmreport inspect trace` on a synthetic torch.profiler trace of several hundred MB (issue 12).

Targets, on the 2 cores of CI, for a 300 MB plain-JSON trace (about 1.4 million events):
under 90 s, under 1 GiB peak memory (the file is streamed: json.load of it alone takes several
GiB), and within 3x of the floor for any streaming reader, ijson's C backend taking every event
and doing nothing with it. The gzipped copy of the same trace is timed too (same targets).
The trace is built like a real CUDA trace of the study's workload (lmreport.ingest.
kineto_synthetic: per launch a cpu_op, a cudaLaunchKernel, the kernel and its flow events;
record_function ranges and their GPU projection). Commands run as fresh processes, as a user
runs them; wall time and peak RSS (os.wait4) per process, the median of 3 runs; the kernel
time and the busy/idle split printed are checked against the writer's ground truth, so a fast
but wrong reader fails too.

    .venv/bin/python benchmarks/bench_trace.py [--mb 300] [--keep FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _process import run  # one fresh process: wall time and peak RSS

TARGET_S = 90.0
TARGET_RSS = 1024**3
TARGET_RATIO = 3.0
RUNS = 3
BYTES_PER_STEP = 1_330_000  # about, for the step below; the trace grows in whole steps

FLOOR = """
import ijson, sys, gzip
f = gzip.open(sys.argv[1], "rb") if sys.argv[1].endswith(".gz") else open(sys.argv[1], "rb")
n = sum(1 for _ in ijson.items(f, "traceEvents.item", use_float=True))
print(n)
"""


def one_step(n: int):
    """A training step of a 4-layer model: attention sub-ranges per layer, then the rest; ~1,000 launches."""
    from lmreport.ingest.kineto_synthetic import Launch, Range
    gemm, mul, softmax = "ampere_sgemm_128x64_tn", ("void at::native::vectorized_elementwise_kernel<(int)4, "
                                                   "at::native::BinaryFunctor<float, float, float, at::native::"
                                                   "binary_internal::MulFunctor<float>>, std::array<char *, "
                                                   "(unsigned long)3>>(int, T2, T3)"), "softmax_warp_forward"
    layers = [Range("scaled dot product attention", [
        Range("computing attention scores", [Launch(gemm, 30_000), Launch(mul, 5_000)]),
        Range("computing softmax", [Launch(softmax, 8_000, op="aten::_softmax")]),
        Range("final matmul", [Launch(gemm, 30_000)])]) for _ in range(4)]
    forward = Range("forward", [*layers, *[Launch(gemm if i % 3 else mul, 12_000 + 97 * (i % 11), op="aten::linear")
                                           for i in range(150)]], sync=True)
    backward = Range("backward", [Launch(gemm if i % 2 else mul, 15_000 + 31 * (i % 7), thread="autograd")
                                  for i in range(400)], sync=True)
    optimizer = Range("optimizer step", [Launch(mul, 4_000, op="aten::mul_") for _ in range(430)], sync=True)
    return Range(f"ProfilerStep#{n}", [Range("step", [forward, backward, optimizer], sync=True)])


def make_trace(path: Path, mb: float):
    from lmreport.ingest.kineto_synthetic import KinetoTraceWriter
    with open(path, "w", buffering=1 << 20) as f:
        w = KinetoTraceWriter(f, trace_name=str(path))
        n = 0
        while f.tell() < mb * 1e6:
            w.run(one_step(n))
            w.cpu_ns += 20_000
            n += 1
        w.close()
    return w


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=300.0, help="size of the plain-JSON trace (default 300)")
    ap.add_argument("--keep", type=Path, help="also keep the synthetic trace here")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from lmreport.intervals import window_use
    lmreport = [sys.executable, "-m", "lmreport", "inspect", "trace"]

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "synthetic_trace.json"
        t0 = time.perf_counter()
        w = make_trace(plain, args.mb)
        size = plain.stat().st_size
        gz = Path(tmp) / "synthetic_trace.json.gz"
        with open(plain, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        print(f"synthetic trace: {size / 1e6:,.0f} MB ({gz.stat().st_size / 1e6:,.0f} MB gzipped), "
              f"{len(w.kernels):,} kernels, {len(w.windows['step']):,} steps, written in {time.perf_counter() - t0:.0f} s")
        if args.keep:
            shutil.copyfile(plain, args.keep)
        truth_ns = sum(e - s for s, e in w.kernels)
        use = window_use(w.kernels, w.windows["step"])
        truth_busy = sum(u.busy_ns for u in use)
        del w, use

        failed = False
        for path in (plain, gz):
            floor = [run([sys.executable, "-c", FLOOR, str(path)]) for _ in range(RUNS)]
            ours = [run([*lmreport, str(path), "--json"]) for _ in range(RUNS)]
            s = json.loads(ours[0][2])
            if s["gpu_time_ns"] != truth_ns or s["busy"]["busy_ns"] != truth_busy:
                print(f"FAIL {path.name}: kernel time {s['gpu_time_ns']} / busy {s['busy']['busy_ns']} ns, "
                      f"truth {truth_ns} / {truth_busy} ns")
                failed = True
            t_floor = statistics.median(r[0] for r in floor)
            t_ours = statistics.median(r[0] for r in ours)
            rss = max(r[1] for r in ours)
            ratio = t_ours / t_floor
            checks = [("time", t_ours <= TARGET_S, f"{t_ours:.1f} s (target < {TARGET_S:.0f} s)"),
                      ("memory", rss <= TARGET_RSS, f"{rss / 1024**2:,.0f} MiB peak (target < {TARGET_RSS / 1024**2:,.0f} MiB)"),
                      ("vs floor", ratio <= TARGET_RATIO, f"{ratio:.2f}x of ijson alone ({t_floor:.1f} s; "
                                                          f"target < {TARGET_RATIO:.0f}x)")]
            for name, ok, text in checks:
                print(f"{'PASS' if ok else 'FAIL'} {path.name} {name}: {text}")
                failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
