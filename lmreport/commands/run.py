"""lmreport run SECTION|all: run a section's sweep, one record per cell."""

from __future__ import annotations

import sys

from lmreport.commands._common import add_plan_arguments, resolve_plan

ORDER = 10
FILTER_KEYS = ("size", "ctx", "mode", "dtype")


def register(sub) -> None:
    from lmreport.sections import all_sections
    p = sub.add_parser("run", help="run a section's experiments (or all) and write records")
    p.add_argument("section", help=f"one of: {', '.join(all_sections())}, or all")
    add_plan_arguments(p)
    p.add_argument("--executor", choices=("inline", "subprocess"),
                   help="how cells run (default: subprocess with CUDA, inline without)")
    p.add_argument("--rerun", action="store_true", help="rerun cells that already have an ok record")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for key in FILTER_KEYS:
        p.add_argument(f"--{key}", action="append", metavar=key.upper(),
                       help=f"only cells with this {key} (repeatable)")
    p.set_defaults(func=main)


def main(args) -> int:
    from lmreport import runner
    from lmreport.sections import all_sections, get

    profile, edition = resolve_plan(args)
    plan = runner.Plan(profile, edition)
    names = list(all_sections()) if args.section == "all" else [get(args.section).name]
    executor = args.executor or runner.default_executor()
    filters = {k: getattr(args, k) for k in FILTER_KEYS if getattr(args, k)}
    failed = 0
    for name in names:
        cells = runner.filter_cells(get(name).experiment_module().cells(plan), filters)
        res = runner.run_sweep(cells, args.runs_dir, plan.run, executor=executor, rerun=args.rerun,
                               progress=not args.no_progress)
        counts = ", ".join(f"{n} {k}" for k, n in sorted(res.counts.items())) or "no cells"
        print(f"{name}: {counts} -> {args.runs_dir / plan.run / name}", file=sys.stderr)
        failed += res.counts["error"]
    return 1 if failed else 0
