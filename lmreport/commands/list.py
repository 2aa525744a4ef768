"""lmreport list: sections, profiles and the records that exist."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmreport.commands._common import runs_dir

ORDER = 30


def register(sub) -> None:
    p = sub.add_parser("list", help="list sections, profiles and existing records")
    p.add_argument("--runs-dir", type=runs_dir, default=Path("runs"), help="where records live (default: runs)")
    p.set_defaults(func=main)


def main(args) -> int:
    from lmreport import presets, store
    from lmreport.sections import all_sections
    print("sections:")
    for s in all_sections().values():
        print(f"  {s.name:<11} {s.summary}")
    print("profiles:")
    for p in presets.PROFILES.values():
        print(f"  {p.name:<13} [{p.device}] {p.description}")
    records = store.load_records(args.runs_dir)
    print(f"records under {args.runs_dir}/:" + ("" if records else " none"))
    by_run: dict[tuple, Counter] = {}
    for r in records:
        run = Path(r["_path"]).relative_to(args.runs_dir).parts[0]
        by_run.setdefault((run, r["section"]), Counter())[r["status"]] += 1
    for (run, section), counts in sorted(by_run.items()):
        print(f"  {run:<20} {section:<11} " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0
