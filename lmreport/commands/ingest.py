"""lmreport ingest SECTION FILE... [options]: turn artifacts made elsewhere into records.

Sections come from the modules of lmreport/ingest/ that define INGEST_SECTION,
add_ingest_arguments(parser) and ingest_files(paths, args, plan) -> list[Path] (records written).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lmreport.commands._common import add_plan_arguments, resolve_model, resolve_plan
from lmreport.commands._ingesters import ingesters

ORDER = 50


def register(sub) -> None:
    mods = {m.INGEST_SECTION: m for m in ingesters() if hasattr(m, "INGEST_SECTION")}
    p = sub.add_parser("ingest", help="turn artifacts made elsewhere into records (" + ", ".join(mods) + ")")
    sp = p.add_subparsers(dest="ingest_section", metavar="SECTION", required=True)
    for section, mod in mods.items():
        q = sp.add_parser(section, help=f"ingest {section} artifacts")
        q.add_argument("files", nargs="+", type=Path, metavar="FILE")
        add_plan_arguments(q)
        mod.add_ingest_arguments(q)
        q.set_defaults(func=lambda args, mod=mod: main(args, mod))


def main(args, mod) -> int:
    from lmreport.runner import Plan
    plan = Plan(*resolve_plan(args), resolve_model(args))  # --model: which implementation the artifact profiled
    written = mod.ingest_files(args.files, args, plan)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
