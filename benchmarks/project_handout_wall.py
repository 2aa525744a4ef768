"""Projected wall time of a full `handout-2025` run on one H200, with the subprocess and the worker launcher.

Not a measurement on a GPU: a calculation from measurements, printed step by step (README "Launch
overhead and the 20-minute target"). Inputs:

- the cells: the handout-2025 plan, as `lmreport run all --profile handout-2025 --dry-run` lists them;
- the work of each cell: the `duration_s` of the real H200 record of the same cell where one exists
  (../shared/samples/h200/runs: 124 cells run at commit 146f871), less the CUDA set-up where that
  record was the first CUDA work of its process; else lmreport/eta.py's cost model at the H200's
  datasheet peak times the median MFU of the H200 bench records of that precision, plus its
  assumed fixed costs (torch.compile, nsys), listed apart;
- the CUDA set-up of a process (context, cuBLAS, first kernels): from the H200 records, the first
  cell of a process against the median of the other cells of its size, context and mode;
- the fixed cost of a fresh process (start, `import torch`, lmreport, teardown): measured on this
  machine by benchmarks/bench_launch_overhead.py (subprocess minus inline overhead per cell; a
  2-core shared CPU, so likely more than on a GPU host's CPU); `--process-s` sets it, `--measure`
  measures it now;
- subprocess: every cell pays a process (and the CUDA set-up when it uses CUDA); worker: one
  process per section plus one per fresh-process cell (memory snapshots, cold-start ablation);
  no OOM retirements assumed (the H200 records have no OOM).

    .venv/bin/python benchmarks/project_handout_wall.py [--records DIR] [--process-s S | --measure]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_RECORDS = ROOT.parent / "shared" / "samples" / "h200" / "runs"
# benchmarks/bench_launch_overhead.py on this project's 2-core CPU machine (README "Launch overhead"):
# subprocess 6.81 s and inline 1.19 s overhead per cell.
MEASURED_PROCESS_S = 5.62
GPU = "NVIDIA H200"
TARGET_MIN = 20.0


def cuda_setup_s(records: list[dict]) -> tuple[float, list[str]]:
    """Mean excess of a process's first bench cell over the median of its size/context/mode twins."""
    steps = [r for r in records if r["section"] == "bench" and r["config"].get("experiment") == "step"]
    excess, why = [], []
    for first in (r for r in steps if r["metrics"].get("first_cell_in_process")):
        k = first["config"]
        others = [r for r in steps if not r["metrics"].get("first_cell_in_process")
                  and all(r["config"][x] == k[x] for x in ("size", "ctx", "mode"))]
        twins = [r["duration_s"] for r in others if r["config"]["dtype"] == k["dtype"]] or [
            r["duration_s"] for r in others]  # the same precision where there is one
        if twins:
            excess.append(first["duration_s"] - statistics.median(twins))
            why.append(f"{first['cell']} {first['duration_s']:.2f} s vs {statistics.median(twins):.2f} s")
    return statistics.fmean(excess), why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="runs folder of the H200 records")
    ap.add_argument("--process-s", type=float, default=MEASURED_PROCESS_S,
                    help=f"fixed cost of a fresh process, seconds (default {MEASURED_PROCESS_S}, measured here)")
    ap.add_argument("--measure", action="store_true", help="measure the fixed cost now (bench_launch_overhead.py)")
    args = ap.parse_args()

    from lmreport import eta, runner, store
    from lmreport.presets import resolve
    from lmreport.sections import all_sections

    if not args.records.is_dir():
        sys.exit(f"{args.records}: no such folder (the H200 records of ../shared/samples/h200/runs)")
    process_s = args.process_s
    if args.measure:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_launch_overhead
        m = bench_launch_overhead.measure()
        process_s = m["subprocess"]["overhead_per_cell_s"] - m["inline"]["overhead_per_cell_s"]
    plan = runner.Plan(*resolve("handout-2025", None, False))
    records = store.select(store.load_records(args.records), plan.edition.year, plan.profile.name)
    by_cell = {(r["section"], r["cell"]): r for r in records}
    setup_s, setup_why = cuda_setup_s(records)
    rates = eta.Rates(records, gpu_name=GPU)

    print(f"handout-2025 on one {GPU}, projected from {len(records)} H200 records ({args.records})")
    print(f"  CUDA set-up per process: {setup_s:.2f} s (first cell of a process against its twins: {'; '.join(setup_why)})")
    print(f"  fresh process (start, imports, teardown): {process_s:.2f} s "
          f"({'measured now' if args.measure else 'measured by bench_launch_overhead.py, README'})")
    head = (f"{'section':<11}{'cells':>6}{'record':>7}{'model':>6}{'fresh':>6}  {'work':>7}{'compile':>8}{'nsys':>7}"
            f"  {'subprocess':>10}{'worker':>8}")
    print(head)
    totals = {"work": 0.0, "compile": 0.0, "nsys": 0.0, "subprocess": 0.0, "worker": 0.0}
    no_nsys = {"subprocess": 0.0, "worker": 0.0}
    for name, section in all_sections().items():
        cells = section.experiment_module().cells(plan)
        work = compile_s = nsys_s = 0.0
        from_records = 0
        for c in cells:
            cuda = c.requires in ("cuda", "nsys") or c.config.get("device") == "cuda"
            r = by_cell.get((c.section, c.name))
            if r is not None and r.get("duration_s"):
                from_records += 1
                first = r["metrics"].get("first_cell_in_process") or c.fresh_process
                work += r["duration_s"] - (setup_s if first and cuda else 0.0)
            else:
                w = eta.cell_work_model(c, rates)
                if c.config.get("compiled"):
                    compile_s += eta.COMPILE_S
                    w -= eta.COMPILE_S
                if c.requires == "nsys":
                    nsys_s += eta.NSYS_S
                    w -= eta.NSYS_S
                work += w
        per_process = [process_s + (setup_s if (c.requires in ("cuda", "nsys") or c.config.get("device") == "cuda")
                                    else 0.0) for c in cells]
        fresh = [c for c in cells if c.fresh_process]
        shared = [c for c in cells if not c.fresh_process]
        sub_launch = sum(per_process)
        worker_launch = sum(p for c, p in zip(cells, per_process) if c.fresh_process) + (
            process_s + (setup_s if any(c.requires != "any" or c.config.get("device") == "cuda" for c in shared)
                         else 0.0) if shared else 0.0)
        base = work + compile_s + nsys_s
        sub, wrk = base + sub_launch, base + worker_launch
        print(f"{name:<11}{len(cells):>6}{from_records:>7}{len(cells) - from_records:>6}{len(fresh):>6}  "
              f"{work / 60:>6.1f}m{compile_s / 60:>7.1f}m{nsys_s / 60:>6.1f}m  {sub / 60:>9.1f}m{wrk / 60:>7.1f}m")
        for k, v in (("work", work), ("compile", compile_s), ("nsys", nsys_s), ("subprocess", sub), ("worker", wrk)):
            totals[k] += v
        if name != "nsys":
            no_nsys["subprocess"] += sub
            no_nsys["worker"] += wrk
    print(f"{'total':<11}{'':>25}  {totals['work'] / 60:>6.1f}m{totals['compile'] / 60:>7.1f}m"
          f"{totals['nsys'] / 60:>6.1f}m  {totals['subprocess'] / 60:>9.1f}m{totals['worker'] / 60:>7.1f}m")
    print("rates of the cost model (cells without a record):")
    for note in rates.used.values():
        print(f"  - {note}")
    print(f"  - torch.compile {eta.COMPILE_S:g} s per compiled cell and nsys {eta.NSYS_S:g} s per nsys cell: assumed")
    print(f"without the nsys section: subprocess {no_nsys['subprocess'] / 60:.1f} min, worker {no_nsys['worker'] / 60:.1f} min "
          f"(target {TARGET_MIN:.0f} min: {'met' if no_nsys['worker'] / 60 <= TARGET_MIN else 'missed'})")
    less_compile = no_nsys["worker"] - totals["compile"]
    print(f"  of the worker's, torch.compile (assumed) {totals['compile'] / 60:.1f} min; without it {less_compile / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
