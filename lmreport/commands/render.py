"""lmreport render: records -> build/writeup.md and build/writeup.pdf (never runs experiments)."""

from __future__ import annotations

import sys
from pathlib import Path

from lmreport.commands._common import add_plan_arguments, resolve_model, resolve_plan

ORDER = 20


def register(sub) -> None:
    p = sub.add_parser("render", help="render the writeup from existing records")
    add_plan_arguments(p)
    p.add_argument("--out", type=Path, default=Path("build"), help="output folder (default: build)")
    p.add_argument("--no-pdf", action="store_true", help="write the Markdown only")
    p.set_defaults(func=main)


def main(args) -> int:
    from lmreport.report.render import render
    profile, edition = resolve_plan(args)
    spec = resolve_model(args)
    out = render(args.runs_dir, args.out, edition, profile, pdf=not args.no_pdf, model=spec)
    missing = [s["name"] for s in out.sections if s["status"] == "missing"]
    failed = [s["name"] for s in out.sections if s["status"] == "failed"]
    print(f"wrote {out.markdown}" + (f" and {out.pdf}" if out.pdf else "")
          + f" from {len(out.records)} records" + (f"; no records yet for: {', '.join(missing)}" if missing else "")
          + (f"; FAILED to render: {', '.join(failed)} (see the warnings above)" if failed else ""),
          file=sys.stderr)
    for flags, n in sorted(out.other_models.items(), key=lambda kv: -kv[1]):
        who = flags.strip() or "lmreport's own model"
        print(f"  not in this writeup: {n} record{'s' if n != 1 else ''} of another implementation ({who}); render "
              f"them with `lmreport render{flags or ''}`" + ("" if flags else " (no --model)"), file=sys.stderr)
    if out.stale:
        print(f"lmreport: warning: {out.stale} record{'s' if out.stale != 1 else ''} in this writeup measured an earlier "
              f"version of {spec.label}'s source (its tables say so); `lmreport run ... --rerun{spec.flags()}` measures "
              "the current one", file=sys.stderr)
    for (year, name), n in sorted(out.not_used.items(), key=lambda kv: -kv[1]):
        flags = f"--profile {name}" + (f" --edition {year}" if name and not name.startswith("handout-") else "")
        print(f"  not in this writeup: {n} record{'s' if n != 1 else ''} of profile {name}, edition {year} "
              f"(render them with `lmreport render {flags}`)", file=sys.stderr)
    return 1 if failed else 0
