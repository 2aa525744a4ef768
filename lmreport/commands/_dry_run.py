"""`lmreport run ... --dry-run`: the cells a run would launch, per section, and how long it would take.

Reads the plan and the run's records (the skip rule of runner.cells_to_run, earlier durations
for the estimate, lmreport/eta.py); starts nothing and writes nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmreport.progress import clock_text

SHOWN_NAMES = 3  # cell names listed per section; the rest are counted


def _names(cells: list) -> str:
    names = [c.name for c in cells[:SHOWN_NAMES]]
    more = len(cells) - len(names)
    return ", ".join(names) + (f", … ({more} more)" if more else "")


def print_plan(chosen: dict[str, list], runs_dir: Path, plan, executor: str, workers: int = 1, rerun: bool = False,
               out=None) -> int:
    import sys

    from lmreport import eta, runner, store
    out = out or sys.stdout
    run_dir = Path(runs_dir) / plan.run
    # Every record is read once: the skip rule looks at each cell's own file, the estimate at the run's records.
    by_path = store.records_by_path(run_dir) if run_dir.is_dir() else {}

    def is_ok(path: Path) -> bool:
        return by_path.get(Path(path), {}).get("status") == "ok"
    todo, cached = {}, {}
    for name, cells in chosen.items():
        run_now, skipped = runner.cells_to_run(cells, runs_dir, plan.run, rerun, is_ok=is_ok)
        todo[name], cached[name] = [c for c, _ in run_now], len(skipped)
    records = store.select(by_path.values(), plan.edition.year, plan.profile.name)
    est = eta.estimate(todo, records, executor, workers=workers)

    print(f"dry run (nothing runs, nothing is written): profile {plan.profile.name}, edition {plan.edition.year}, "
          f"executor {executor}, records in {run_dir}", file=out)
    width = max(len("section"), *(len(n) for n in chosen))
    print(f"{'section':<{width}}  {'to run':>6}  {'ok, kept':>8}  {'by record':>9}  {'by model':>8}  "
          f"{'processes':>9}  {'launch':>7}  {'ETA':>8}", file=out)
    for name in chosen:
        cells = est.cells.get(name, [])
        from_records = sum(c.source == "record" for c in cells)
        print(f"{name:<{width}}  {len(cells):>6}  {cached[name]:>8}  {from_records:>9}  {len(cells) - from_records:>8}  "
              f"{est.processes.get(name, 0):>9}  {clock_text(est.launch_s.get(name, 0.0)):>7}  "
              f"{clock_text(est.section_s(name)):>8}", file=out)
    total_cells = sum(len(v) for v in est.cells.values())
    launch = sum(est.launch_s.values())
    print(f"{'total':<{width}}  {total_cells:>6}  {sum(cached.values()):>8}  {'':>9}  {'':>8}  "
          f"{sum(est.processes.values()):>9}  {clock_text(launch):>7}  {clock_text(est.total_s):>8}", file=out)
    for name, cells in todo.items():
        if cells:
            print(f"  {name}: {_names(cells)}", file=out)
    missing = {(c.section, c.name): runner.missing_requirement(c.requires) for cells in todo.values() for c in cells}
    needs = Counter(reason for reason in missing.values() if reason)
    for reason, n in needs.items():
        print(f"{n} of these cells {reason.replace('needs', 'need')} and would be recorded `skipped` here; "
              "the ETA is for a machine that runs them", file=out)
    if needs:  # what this machine will take: its skipped cells cost next to nothing
        here = est.only(lambda ce: not missing[(ce.section, ce.cell)])
        print(f"ETA on this machine, which records them as skipped: {clock_text(here.total_s)}", file=out)
    print("estimated from:", file=out)
    for note in est.notes:
        print(f"  - {note}", file=out)
    return 0
