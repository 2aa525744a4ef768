"""Benchmark: does a compatible user model time like lmreport's own? (issue 14, `--model`)

tests/fixtures/my_model.py is the course's architecture written independently of lmreport.model
(tests/test_user_model.py checks its parameters, FLOPs and memory against the reference exactly).
Built through the same seam (user_model.build via workloads.make_workload), the same computation
must take the same time: its step time is within TARGET_RATIO of the reference's, for the forward
pass and the full training step at a CPU size. A larger gap means the seam adds work (a wrong
device, a copy per step, a cast) or the adapters built something else.

The machine may be shared: steps of the two models alternate in pairs, so both meet the same load,
and the ratio is the median over pairs of their per-pair ratio. Run from the repository root
(`make bench-tools`), where `tests.fixtures` is importable.
"""

from __future__ import annotations

import statistics
import sys
import time

from lmreport import user_model
from lmreport.presets import CPU_MODELS
from lmreport.workloads import make_workload

MODEL = "tests.fixtures.my_model:TransformerLM"
TARGET_RATIO = 1.15  # each way: within 15%
SIZE, BATCH, CTX = "mini", 4, 128
WARMUP, PAIRS = 3, 25


def paired_ratio(mode: str, spec) -> tuple[float, float, float]:
    """(median of mine/reference over alternating pairs, median ms mine, median ms reference)."""
    pair = [make_workload(CPU_MODELS[SIZE], BATCH, CTX, mode, spec=s) for s in (spec, None)]
    for w in pair:
        for _ in range(WARMUP):
            w.step()
    ratios, ms = [], ([], [])
    for _ in range(PAIRS):
        t = []
        for k, w in enumerate(pair):
            t0 = time.perf_counter()
            w.step()
            t.append(time.perf_counter() - t0)
            ms[k].append(t[-1] * 1e3)
        ratios.append(t[0] / t[1])
    return statistics.median(ratios), statistics.median(ms[0]), statistics.median(ms[1])


def main() -> int:
    spec = user_model.check(user_model.load_spec(MODEL))
    ok = True
    for mode in ("forward", "train"):
        ratio, mine, ref = paired_ratio(mode, spec)
        passed = 1 / TARGET_RATIO <= ratio <= TARGET_RATIO
        ok &= passed
        print(f"{MODEL} vs lmreport's model, {SIZE} {mode}, batch {BATCH}, ctx {CTX}: {mine:.1f} ms vs {ref:.1f} ms "
              f"per step, paired ratio {ratio:.3f} (target within {TARGET_RATIO:.2f}x either way): "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
