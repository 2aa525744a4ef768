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


def h200_gap_s(records: list[dict]) -> float | None:
    """Median wall time between one measured memory cell's end and the next one's start on the H200 (those ran
    one process per cell): the part of a fresh process's cost outside its cells (start, exit). Its imports and
    CUDA set-up are inside the cells' duration_s. started_at has whole seconds, hence the median."""
    from datetime import datetime
    measured = sorted((r for r in records if r["section"] == "memory" and r["config"].get("source") == "measured"),
                      key=lambda r: r["started_at"])
    gaps = [(datetime.fromisoformat(b["started_at"]) - datetime.fromisoformat(a["started_at"])).total_seconds()
            - a["duration_s"] for a, b in zip(measured, measured[1:])]
    return statistics.median(gaps) if gaps else None


def timed_s_of_record(r: dict) -> float | None:
    """The seconds a record spent in its timed passes (warm-up included), or None where it does not say: its
    own `timed_s` (records since the launchers change); else a bench step's (warm-up + steps) x mean step, an
    attention cell's first pass plus (warm-up + passes) x (forward + backward), a measured memory cell's
    warmup_s + step_s; None for the others (the cost model's FLOP term stands in)."""
    k, m = r["config"], r.get("metrics") or {}
    if isinstance(r.get("timed_s"), (int, float)):
        return float(r["timed_s"])
    if isinstance(m.get("step_ms"), dict) and "steps" in k:
        return (k.get("warmup", 0) + k["steps"]) * m["step_ms"]["mean"] / 1e3
    if isinstance(m.get("forward_ms"), dict) and isinstance(m.get("backward_ms"), dict) and "passes" in k:
        return m.get("first_pass_s", 0.0) + (k.get("warmup", 0) + k["passes"]) * (
            m["forward_ms"]["mean"] + m["backward_ms"]["mean"]) / 1e3
    if isinstance(m.get("step_s"), (int, float)):
        return m.get("warmup_s", 0.0) + m["step_s"]
    return None


def model_timed_s(c, rates) -> float:
    """The cost model's FLOP term of a measured cell: its work less the fixed costs eta.cell_work_model adds."""
    from lmreport import eta
    if c.config.get("source") not in (None, "measured"):
        return 0.0
    w = eta.cell_work_model(c, rates, nsys_on_path=False)
    fixed = eta.PER_CELL_S + (eta.MEMORY_SNAPSHOT_S if c.section == "memory" else 0.0) + (
        eta.COMPILE_S if c.config.get("compiled") else 0.0)
    return max(0.0, w - fixed)


def project(plan, records: list[dict], process_s: float, setup_s: float, rates,
            fresh_s: float | None = None) -> list[dict]:
    """Per section: cells, from records, fresh, work (of which timed), compile, nsys, and the wall time with each
    launcher (s). fresh_s: what the worker's fresh-process cells pay for their process (None: process_s, a
    fresh interpreter; less when forked from a process that has imported torch, launchers/forked.py)."""
    from lmreport import eta
    from lmreport.sections import all_sections
    fresh_s = process_s if fresh_s is None else fresh_s
    server_s = eta.FORK_SERVER_START_S if fresh_s < process_s else 0.0  # forked: the server starts once per run
    by_cell = {(r["section"], r["cell"]): r for r in records}
    rows = []
    for name, section in all_sections().items():
        cells = section.experiment_module().cells(plan)
        work = timed = compile_s = nsys_s = 0.0
        from_records = 0
        for c in cells:
            cuda = c.requires in ("cuda", "nsys") or c.config.get("device") == "cuda"
            r = by_cell.get((c.section, c.name))
            if r is not None and r.get("duration_s"):
                from_records += 1
                first = r["metrics"].get("first_cell_in_process") or c.fresh_process
                work += r["duration_s"] - (setup_s if first and cuda else 0.0)  # the set-up is counted per process below
                from_record = timed_s_of_record(r)
                timed += model_timed_s(c, rates) if from_record is None else from_record
            else:
                w = eta.cell_work_model(c, rates, nsys_on_path=False)  # torch.profiler for --profiler auto (README)
                if c.config.get("compiled"):
                    compile_s += eta.COMPILE_S
                    w -= eta.COMPILE_S
                if c.config.get("device") == "cuda" and eta.profiler_of(c, nsys_on_path=False) == "nsys":
                    nsys_s += eta.NSYS_S
                    w -= eta.NSYS_S
                work += w
                timed += model_timed_s(c, rates)
        cuda_of = [c.requires in ("cuda", "nsys") or c.config.get("device") == "cuda" for c in cells]
        per_process = [process_s + (setup_s if cuda else 0.0) for cuda in cuda_of]
        shared = [cuda for c, cuda in zip(cells, cuda_of) if not c.fresh_process]
        worker_launch = sum(fresh_s + (setup_s if cuda else 0.0) for c, cuda in zip(cells, cuda_of) if c.fresh_process) + (
            process_s + (setup_s if any(shared) else 0.0) if shared else 0.0)
        if server_s and any(c.fresh_process for c in cells):
            worker_launch += server_s
            server_s = 0.0
        base = work + compile_s + nsys_s
        rows.append({"section": name, "cells": len(cells), "from_records": from_records,
                     "fresh": sum(c.fresh_process for c in cells), "work": work, "timed": timed, "compile": compile_s,
                     "nsys": nsys_s, "subprocess": base + sum(per_process), "worker": base + worker_launch})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, action="append",
                    help="a runs folder of GPU records (repeatable: a later folder's record of a cell replaces an earlier "
                         f"one's; default {DEFAULT_RECORDS.relative_to(ROOT.parent)}, the H200 records)")
    ap.add_argument("--process-s", type=float, default=MEASURED_PROCESS_S,
                    help=f"fixed cost of a fresh process, seconds (default {MEASURED_PROCESS_S}, measured here)")
    ap.add_argument("--fresh-s", type=float, default=None,
                    help="what a fresh-process cell (memory snapshot, cold start) pays for its process under the worker "
                         "launcher (default: a fork of the fork server, measured by bench_fresh_cells.py; --process-s for "
                         "LMREPORT_FRESH_PROCESS=exec)")
    ap.add_argument("--measure", action="store_true", help="measure the fixed cost now (bench_launch_overhead.py)")
    args = ap.parse_args()

    from lmreport import eta, runner, store
    from lmreport.presets import resolve

    folders = args.records or [DEFAULT_RECORDS]
    for folder in folders:
        if not folder.is_dir():
            sys.exit(f"{folder}: no such folder (a runs folder of GPU records, e.g. ../shared/samples/h200/runs)")
    process_s = args.process_s
    # forked from the fork server (the worker's default for fresh-process cells; project() adds the server's start once)
    fresh_s = eta.FORKED_PROCESS_S if args.fresh_s is None else args.fresh_s
    if args.measure:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_launch_overhead
        m = bench_launch_overhead.measure()
        process_s = m["subprocess"]["overhead_per_cell_s"] - m["inline"]["overhead_per_cell_s"]
    plan = runner.Plan(*resolve("handout-2025", None, False))
    # `skipped` records ran nothing (a CPU machine's record of a CUDA cell); the last folder's record of a cell wins
    by_cell = {(r["section"], r["cell"]): r for folder in folders for r in store.load_records(folder)
               if r.get("status") != "skipped"}
    records = store.select(list(by_cell.values()), plan.edition.year, plan.profile.name)
    setup_s, setup_why = cuda_setup_s(records)
    gap_s = h200_gap_s(records)
    rates = eta.Rates(records, gpu_name=GPU)

    print(f"handout-2025 on one {GPU}, projected from {len(records)} GPU records ({', '.join(map(str, folders))})")
    print(f"  CUDA set-up per process: {setup_s:.2f} s (first cell of a process against its twins: {'; '.join(setup_why)})")
    print(f"  fresh process (start, imports, teardown): {process_s:.2f} s "
          f"({'measured now' if args.measure else 'measured by bench_launch_overhead.py on a 2-core CPU, README'})")
    rows = project(plan, records, process_s, setup_s, rates, fresh_s)
    print(f"{'section':<11}{'cells':>6}{'record':>7}{'model':>6}{'fresh':>6}  {'work':>7}{'timed':>7}{'compile':>8}"
          f"{'nsys':>7}  {'subprocess':>10}{'worker':>8}")
    for r in rows:
        print(f"{r['section']:<11}{r['cells']:>6}{r['from_records']:>7}{r['cells'] - r['from_records']:>6}{r['fresh']:>6}  "
              f"{r['work'] / 60:>6.1f}m{r['timed'] / 60:>6.1f}m{r['compile'] / 60:>7.1f}m{r['nsys'] / 60:>6.1f}m  "
              f"{r['subprocess'] / 60:>9.1f}m{r['worker'] / 60:>7.1f}m")
    keys = ("cells", "work", "timed", "compile", "nsys", "subprocess", "worker")
    total = {k: sum(r[k] for r in rows) for k in keys}
    print(f"{'total':<11}{total['cells']:>6}{'':>19}  {total['work'] / 60:>6.1f}m{total['timed'] / 60:>6.1f}m"
          f"{total['compile'] / 60:>7.1f}m{total['nsys'] / 60:>6.1f}m  {total['subprocess'] / 60:>9.1f}m"
          f"{total['worker'] / 60:>7.1f}m")
    print("  work: each cell's own time (its record's duration_s, less a process's CUDA set-up; else the cost model); "
          "timed: the part of it inside the timed passes, warm-up included (the floor no launcher removes)")
    print("rates of the cost model (cells without a record):")
    for note in rates.used.values():
        print(f"  - {note}")
    print(f"  - torch.compile {eta.COMPILE_S:g} s per compiled cell and nsys {eta.NSYS_S:g} s per nsys cell: assumed")
    # How far the cost model is from the records where both exist (eager bench steps: the model's bulk).
    from lmreport.experiments import bench
    pairs = [(eta.cell_work_model(c, rates, nsys_on_path=False), r["duration_s"]) for c in bench.cells(plan)
             for r in [next((r for r in records if r["section"] == "bench" and r["cell"] == c.name), None)]
             if r is not None and c.config.get("experiment") == "step" and not r["metrics"].get("first_cell_in_process")]
    if pairs:
        print(f"  - check: the cost model gives {sum(m for m, _ in pairs) / 60:.1f} min for the {len(pairs)} bench cells "
              f"the H200 ran, which took {sum(d for _, d in pairs) / 60:.1f} min (its MFUs come from these records: this checks "
              "the model's form and fixed costs, not its rates)")

    def summary(rows, label):
        no_nsys = [r for r in rows if r["section"] != "nsys"]
        sub, wrk, work, timed, comp = (sum(r[k] for r in no_nsys) for k in ("subprocess", "worker", "work", "timed",
                                                                             "compile"))
        print(f"{label}: without the nsys section, subprocess {sub / 60:.1f} min, worker {wrk / 60:.1f} min "
              f"(launch overhead {(sub - work - comp) / 60:.1f} -> {(wrk - work - comp) / 60:.1f} min; "
              f"the cells' own work {work / 60:.1f} min, {timed / 60:.1f} of it in timed passes; torch.compile, "
              f"assumed, {comp / 60:.1f} min); worker without torch.compile {(wrk - comp) / 60:.1f} min; "
              f"target {TARGET_MIN:.0f} min: {'met' if wrk <= TARGET_MIN * 60 else 'missed'}")
    summary(rows, f"process {process_s:.2f} s, fresh-process cell {fresh_s:.2f} s")
    if gap_s is not None:
        summary(project(plan, records, gap_s, setup_s, rates, min(fresh_s, gap_s)),
                f"process {gap_s:.2f} s (the H200 host's gap between one-process-per-cell memory cells; its imports "
                "sit inside those cells, so a lower bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
