"""lmreport run SECTION|all: run a section's sweep, one record per cell.

Executors (lmreport/launchers/): inline (this process), subprocess (a process per cell), worker
(one long-lived process per section; the default with CUDA), local-gpus (a process per cell, one
per visible GPU in parallel) and slurm (a job array per section through submitit). With slurm,
every section is submitted first, then the command waits for all jobs with one progress bar
(or returns at once with --no-wait; `lmreport status` follows the jobs, and rerunning the same
command resubmits only what has no ok record and no job in flight, then waits again).
With --dry-run it prints the cells it would run and an estimated wall time (lmreport/eta.py), and
runs and writes nothing.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from lmreport.commands._common import add_plan_arguments, resolve_model, resolve_plan
from lmreport.errors import UserError
from lmreport.presets import PROFILER_VARIABLE, PROFILERS

ORDER = 10
FILTER_KEYS = ("size", "ctx", "mode", "dtype")
# flag -> key of lmreport-slurm.toml
SLURM_FLAGS = {"partition": "partition", "account": "account", "time": "time", "gpus_per_job": "gpus_per_job",
               "cpus_per_job": "cpus_per_job", "mem_gb": "mem_gb", "cluster": "cluster"}


def register(sub) -> None:
    from lmreport.launchers import LAUNCHERS
    from lmreport.sections import all_sections
    p = sub.add_parser("run", help="run a section's experiments (or all) and write records")
    p.add_argument("section", help=f"one of: {', '.join(all_sections())}, or all")
    add_plan_arguments(p)
    p.add_argument("--executor", choices=tuple(LAUNCHERS),
                   help="how cells run (default: worker with CUDA, inline without)")
    p.add_argument("--rerun", action="store_true", help="rerun cells that already have an ok record")
    p.add_argument("--dry-run", action="store_true",
                   help="print the cells that would run and an estimated wall time; run and write nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # The profiling section's profiler (experiments/nsys.py reads the variable when it plans its cells).
    p.add_argument("--profiler", choices=PROFILERS,
                   help="profiler of the nsys section: auto (default: Nsight Systems on a GPU with nsys on PATH, "
                        f"else torch.profiler), nsys or torch; sets {PROFILER_VARIABLE}")
    for key in FILTER_KEYS:
        p.add_argument(f"--{key}", action="append", metavar=key.upper(), type=int if key == "ctx" else str,
                       help=f"only cells with this {key} (repeatable)")
    g = p.add_argument_group("local-gpus executor")
    g.add_argument("--workers", type=int, metavar="N",
                   help="parallel workers (default: one per visible GPU; without GPUs, N CPU workers)")
    s = p.add_argument_group("slurm executor (flags override lmreport-slurm.toml)")
    s.add_argument("--slurm-config", type=Path, metavar="FILE",
                   help="TOML settings (default: ./lmreport-slurm.toml when present)")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--time", metavar="LIMIT", help="per job: minutes or [D-]HH:MM:SS")
    s.add_argument("--gpus-per-job", type=int, metavar="N")
    s.add_argument("--cpus-per-job", type=int, metavar="N")
    s.add_argument("--mem-gb", type=float, metavar="GB")
    s.add_argument("--cluster", choices=("slurm", "local"),
                   help="local: run the jobs as local processes through submitit, as Slurm would")
    s.add_argument("--no-wait", action="store_true", help="return after submitting; follow with `lmreport status`")
    p.set_defaults(func=main)


def _time_flag(value: str | None):
    return int(value) if value is not None and value.strip().isdigit() else value


def make_executor(args, executor: str):
    """The executor object, its options checked against the flags given."""
    slurm_flags = {key: getattr(args, flag) for flag, key in SLURM_FLAGS.items() if getattr(args, flag) is not None}
    if executor != "slurm" and (slurm_flags or args.no_wait or args.slurm_config):
        given = [f"--{f.replace('_', '-')}" for f in [*SLURM_FLAGS, "no_wait", "slurm_config"] if getattr(args, f)]
        raise UserError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --executor slurm")
    if executor != "local-gpus" and args.workers is not None:
        raise UserError("--workers only applies to --executor local-gpus")
    from lmreport import launchers
    if executor == "slurm":
        from lmreport.launchers.slurm import SlurmConfig
        if "time" in slurm_flags:
            slurm_flags["time"] = _time_flag(slurm_flags["time"])
        # Sections are all submitted first; the command waits once for all of them.
        return launchers.get("slurm", config=SlurmConfig.load(args.slurm_config, slurm_flags), wait=False)
    if executor == "local-gpus":
        return launchers.get("local-gpus", workers=args.workers)
    return launchers.get(executor)


def _summary(counts: Counter) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no cells"


def main(args) -> int:
    from lmreport import runner
    from lmreport.sections import all_sections, get

    if args.profiler:  # the nsys section plans its cells with it (their config carries it to any executor)
        os.environ[PROFILER_VARIABLE] = args.profiler
    from lmreport.launchers.forked import mode as fresh_process_mode
    fresh_process_mode()  # a bad LMREPORT_FRESH_PROCESS is refused before any section runs, not at `run all`'s bench

    profile, edition = resolve_plan(args)
    plan = runner.Plan(profile, edition, resolve_model(args, load=not args.dry_run))  # a dry run runs nothing of the model
    names = list(all_sections()) if args.section == "all" else [get(args.section).name]
    from lmreport import launchers
    executor = args.executor or launchers.default_name()
    ex = make_executor(args, executor)
    filters = {k: getattr(args, k) for k in FILTER_KEYS if getattr(args, k)}
    planned = {name: get(name).experiment_module().cells(plan) for name in names}
    _check_filters(filters, planned, plan)
    if args.dry_run:
        from lmreport.commands._dry_run import print_plan
        chosen = {name: runner.filter_cells(planned[name], filters) for name in names}
        return print_plan(chosen, args.runs_dir, plan, executor, len(getattr(ex, "slots", ())) or 1,  # parallel workers
                          rerun=args.rerun)
    failed = 0
    per_section: dict[str, Counter] = {}
    for name in names:
        cells = runner.filter_cells(planned[name], filters)
        stats = Counter(getattr(ex, "stats", {}))  # the worker's processes, model builds, retries so far
        # With slurm, run_sweep only submits; the wait below has the progress bar.
        res = runner.run_sweep(cells, args.runs_dir, plan.run, executor=ex, rerun=args.rerun,
                               progress=not args.no_progress and executor != "slurm")
        per_section[name] = res.counts
        used = Counter(getattr(ex, "stats", {})) - stats
        print(f"{name}: {_summary(res.counts)} -> {args.runs_dir / plan.run / name}"
              + (f" ({', '.join(f'{k}: {n}' for k, n in sorted(used.items()))})" if used else ""), file=sys.stderr)
        failed += res.counts["error"]
    if executor != "slurm":
        return 1 if failed else 0
    return _after_submission(args, ex, per_section, plan)


def _check_filters(filters: dict[str, list], planned: dict[str, list], plan) -> None:
    """A filter value that no cell of the chosen sections has is a typo or a wrong profile: say so.

    Only keys some cell has are checked (`run all --size tiny` still runs attention, whose cells
    have no size, as "no cells"), so a value must exist in at least one section that has the key.
    """
    from lmreport.runner import FILTER_ALIASES
    for key, values in filters.items():
        keys = FILTER_ALIASES.get(key, (key,))
        have = {str(c.config[k]) for cells in planned.values() for c in cells for k in keys if k in c.config}
        unknown = [v for v in values if str(v) not in have]
        if have and unknown:
            choices = ", ".join(sorted(have, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v)))
            raise UserError(f"--{key} {', '.join(map(str, unknown))} matches no cell of {', '.join(planned)} in profile "
                            f"{plan.profile.name} (edition {plan.edition.year}); choose from: {choices}")


def _after_submission(args, ex, per_section: dict[str, Counter], plan) -> int:
    waiting = len(ex.pending)
    folder = args.runs_dir / plan.run / ".slurm"
    if not waiting:
        return 0
    if args.no_wait:
        print(f"{waiting} cells submitted or in flight (job folder {folder}); `lmreport status` follows them, "
              f"`lmreport render` once they are done", file=sys.stderr)
        return 0
    local = all(entry.cluster == "local" for _, entry in ex.pending)
    try:
        records = ex.wait(progress=not args.no_progress)
    except KeyboardInterrupt:
        if local:  # local jobs share this terminal's process group: Ctrl-C stopped them too
            print("lmreport: interrupted, and so were the local jobs this command started; the same command retries them", file=sys.stderr)
        else:
            print(f"lmreport: stopped waiting; the jobs go on (job folder {folder}; `scancel --name lmreport-SECTION` "
                  "stops them): `lmreport status` follows them, the same command waits for them again", file=sys.stderr)
        return 130
    done: dict[str, Counter] = {}
    for r in records:
        done.setdefault(r["section"], Counter())[r["status"]] += 1
    for name, counts in done.items():
        print(f"{name}: jobs finished: {_summary(counts)}", file=sys.stderr)
    return 1 if any(c["error"] for c in done.values()) else 0
