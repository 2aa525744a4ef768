"""lmreport inspect KIND FILE [--json]: summarise a profiler artifact without ingesting it.

Kinds come from the modules of lmreport/ingest/ that define INSPECT_KIND, inspect_file(path)
-> dict (JSON-able) and format_summary(dict) -> str.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmreport.commands._ingesters import ingesters

ORDER = 40


def register(sub) -> None:
    kinds = {m.INSPECT_KIND: m for m in ingesters() if hasattr(m, "INSPECT_KIND")}
    p = sub.add_parser("inspect", help="summarise a profiler artifact (" + ", ".join(kinds) + ")")
    kp = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, mod in kinds.items():
        q = kp.add_parser(kind, help=(mod.__doc__ or "").strip().splitlines()[0])
        q.add_argument("files", nargs="+", type=Path, metavar="FILE")
        q.add_argument("--json", action="store_true", help="print JSON instead of text")
        q.set_defaults(func=lambda args, mod=mod: main(args, mod))


def main(args, mod) -> int:
    summaries = [mod.inspect_file(f) for f in args.files]
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=1))
    else:
        print("\n\n".join(mod.format_summary(s) for s in summaries))
    return 0
