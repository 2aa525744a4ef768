"""lmreport status [SECTION|all]: where every cell of a run stands.

Per section: cells with an ok / oom / error / skipped record, cells whose Slurm (or local
submitit) job is queued or running, and cells never run. States come from the records and the
job folder runs/<run>/.slurm/ (see lmreport/launchers/slurm.py); a job found to have ended without writing
its record is recorded as `error` now, with its log's path, so that the writeup shows it and a
rerun retries it.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

from lmreport.commands._common import add_plan_arguments, resolve_model, resolve_plan

ORDER = 15
COLUMNS = ("ok", "oom", "error", "skipped", "queued", "running", "unknown", "not run")
FAILED = ("error", "oom")
MAX_LISTED = 20


def register(sub) -> None:
    p = sub.add_parser("status", help="cells per section: ok, failed, queued or running (Slurm), not run")
    p.add_argument("section", nargs="?", default="all", help="a section, or all (default)")
    add_plan_arguments(p)
    p.add_argument("--cells", action="store_true", help="list every cell, not only the failed ones")
    p.set_defaults(func=main)


def section_cells(name: str, plan, run_dir: Path, jobs: dict) -> list[tuple[str, str]]:
    """The plan's cells, plus any cell of this section with a record or a job (e.g. from filters)."""
    from lmreport.sections import get
    names: list[str] = []
    try:
        names = [c.name for c in get(name).experiment_module().cells(plan)]
    except Exception as e:  # noqa: BLE001 - a broken experiment module must not hide the records
        warnings.warn(f"{name}: cannot list the plan's cells ({type(e).__name__}: {e}); showing recorded cells only",
                      stacklevel=2)
    folder = run_dir / name
    from lmreport import store
    recorded = sorted(p.stem for p in folder.glob("*.json")
                      if not p.name.startswith(".") and not store.is_kept_copy(p)) if folder.is_dir() else []
    submitted = [cell for (section, cell) in jobs if section == name]
    return [(name, cell) for cell in dict.fromkeys([*names, *recorded, *submitted])]


def main(args) -> int:
    from lmreport.launchers import slurm
    from lmreport.runner import Plan
    from lmreport.sections import all_sections, get

    plan = Plan(*resolve_plan(args), resolve_model(args))
    run_dir = Path(args.runs_dir) / plan.run
    names = list(all_sections()) if args.section == "all" else [get(args.section).name]
    jobs = slurm.read_jobs(run_dir)
    watcher = slurm.JobWatcher()
    states = {name: slurm.cell_states(run_dir, section_cells(name, plan, run_dir, jobs), watcher) for name in names}
    shown = [c for c in COLUMNS if c != "unknown" or any(s.state == "unknown" for v in states.values() for s in v)]

    folder = run_dir / slurm.JOB_FOLDER
    print(f"run {plan.run} ({run_dir}" + (f"; jobs in {folder}" if jobs else "") + ")")
    width = max(len("section"), *(len(n) for n in names))
    print(f"{'section':<{width}}  {'cells':>5}" + "".join(f"  {c:>7}" for c in shown))
    for name, cells in states.items():
        counts = Counter(s.state for s in cells)
        print(f"{name:<{width}}  {len(cells):>5}" + "".join(f"  {counts[c]:>7}" for c in shown))

    every = [s for cells in states.values() for s in cells]
    listed = every if args.cells else [s for s in every if s.state in FAILED]
    if listed:
        print("cells:" if args.cells else "failed cells:")
        for s in listed[: None if args.cells else MAX_LISTED]:
            job = f" [job {s.job_id}]" if s.job_id else ""
            print(f"  {s.section}/{s.cell}: {s.state}{job}" + (f": {s.detail}" if s.detail else ""))
        if not args.cells and len(listed) > MAX_LISTED:
            print(f"  ... and {len(listed) - MAX_LISTED} more (--cells lists them all)")
    newly = [s for s in every if s.recorded_failure]
    if newly:
        print(f"recorded {len(newly)} cell(s) whose job ended without a record as {'/'.join(sorted({s.state for s in newly}))}; "
              "rerun the same `lmreport run` to retry them", file=sys.stderr)
    return 0
