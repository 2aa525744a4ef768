"""Nsight Systems `nsys stats` exports (CSV or pasted console tables), any version since 2021.

`lmreport inspect nsys FILE... [--json]` lists the tables of each file: report (current nsys
name), rows, total time and top entries. `lmreport ingest nsys FILE... --size S --ctx N --mode M`
turns the reports of one profile made elsewhere into an nsys record (the same metrics as
`lmreport run nsys` writes), copying the files beside the record as its artifacts.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from lmreport import store
from lmreport.errors import InputFileError, UserError
from lmreport.ingest import file_sha256, refuse_overwrite
from lmreport.ingest.nsys_summary import KERNEL_REPORTS, pick_tables, range_name, summarise
from lmreport.ingest.nsys_tables import REPORTS, Table, parse_file
from lmreport.kernels import parse_kernel_name
from lmreport.presets import model_table

INSPECT_KIND = "nsys"
INGEST_SECTION = "nsys"
TOP = 5
MODES = ("forward", "forward_backward", "train")
DTYPES = ("fp32", "bf16", "fp16")


# --- inspect --------------------------------------------------------------------------------


def _entry_name(t: Table, row: dict) -> str:
    if t.report in ("cuda_gpu_kern_sum", "cuda_gpu_sum"):
        return parse_kernel_name(row.get("name", "")).display
    if t.report == "nvtx_kern_sum":
        return f"{range_name(row.get('range', ''))}: {parse_kernel_name(row.get('name', '')).display}"
    if "range" in t.keys:
        return range_name(row.get("range", ""))
    return row.get("name", "")


def _int(x):
    return int(x) if isinstance(x, float) and x.is_integer() else x


def table_summary(t: Table, top: int = TOP) -> dict:
    """{"report", "rows", "total_time_ns", "top": [{"name", "time_pct", "total_time_ns", "instances"}]}."""
    key = "proj_total_ns" if t.report == "nvtx_gpu_proj_sum" else "total_time_ns"
    rows = sorted(t.rows, key=lambda r: -(r.get(key) or 0)) if key in t.keys else list(t.rows)
    return {"report": t.report, "rows": len(t.rows), "total_time_ns": _int(t.total_time_ns),
            "top": [{"name": _entry_name(t, r), "time_pct": r.get("time_pct"), "total_time_ns": _int(r.get(key)),
                     "instances": r.get("instances")} for r in rows[:top]]}


def inspect_file(path: Path) -> dict:
    export = parse_file(path)
    out = {"file": str(path), "tables": [table_summary(t) for t in export.tables]}
    if export.skipped:
        out["skipped"] = export.skipped
    return out


def _ns(x) -> str:
    if x is None:
        return "–"
    if x >= 1e9:
        return f"{x / 1e9:,.3f} s"
    if x >= 1e6:
        return f"{x / 1e6:,.3f} ms"
    if x >= 1e3:
        return f"{x / 1e3:,.3f} µs"
    return f"{x:,.0f} ns"


def format_summary(summary: dict) -> str:
    lines = [summary["file"]]
    for t in summary["tables"]:
        lines.append(f"  {t['report']}: {t['rows']} rows, total {_ns(t['total_time_ns'])}")
        for e in t["top"]:
            pct = f"{e['time_pct']:5.1f}%" if isinstance(e["time_pct"], (int, float)) else "     –"
            inst = f"{e['instances']:>9,}×" if isinstance(e["instances"], int) else " " * 10
            lines.append(f"    {pct} {_ns(e['total_time_ns']):>14} {inst}  {e['name']}")
    for s in summary.get("skipped", []):
        lines.append(f"  {s['report'] or 'a report'}: SKIPPED ({s['reason']})")
    return "\n".join(lines)


# --- ingest ---------------------------------------------------------------------------------


def add_profile_cell_arguments(p, what: str, steps_default: str, device_help: str) -> None:
    """The flags that name the cell of a profile made elsewhere (`ingest nsys`, `ingest trace`)."""
    p.add_argument("--size", required=True, help="model size of the profile (a size of the edition's table)")
    p.add_argument("--ctx", type=int, required=True, help="context length of the profile")
    p.add_argument("--mode", required=True, choices=MODES, help="what the profiled step ran")
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help="precision (default fp32)")
    p.add_argument("--batch", type=int, help="batch size (default: the edition's, 4)")
    p.add_argument("--steps", type=int, help=f"measured steps the {what} covers (default: {steps_default})")
    p.add_argument("--device", help=device_help)
    p.add_argument("--host", help=f"the machine that made the {what}")
    p.add_argument("--replace", action="store_true",
                   help="overwrite an existing profile of the same cell (kept by default)")


def add_ingest_arguments(p) -> None:
    add_profile_cell_arguments(p, "profile", "its 'step' NVTX ranges",
                               "the GPU that made the profile, e.g. 'NVIDIA H100 80GB HBM3'")
    p.add_argument("--run", type=int, metavar="N", help="the N-th profile of files that hold several (1-based)")


def cell_name(size: str, ctx: int, mode: str, dtype: str) -> str:
    """Shared with the experiment: `<size>-ctx<ctx>-<mode>-<dtype>`."""
    return f"{size}-ctx{ctx}-{mode}-{dtype}"


def ingest_files(paths: list[Path], args, plan) -> list[Path]:
    from lmreport.device import git_info
    from lmreport.runner import cell, set_aside_unreadable

    sizes = list(model_table(plan.edition, plan.profile))
    if args.size not in sizes:
        raise UserError(f"unknown size {args.size!r} for the {plan.edition.year} edition: choose one of {', '.join(sizes)}")
    if args.ctx <= 0 or (args.steps is not None and args.steps <= 0) or (args.run is not None and args.run <= 0):
        raise UserError("--ctx, --steps and --run must be positive")
    exports = [parse_file(p) for p in paths]
    tables = [t for e in exports for t in e.tables]
    origin = {id(t): e.path for e in exports for t in e.tables}
    chosen, ambiguous = pick_tables(tables, args.run)
    if ambiguous:
        first = next(t for t in tables if t.report == ambiguous[0])
        n = sum(t.report == ambiguous[0] for t in tables)
        raise InputFileError(origin[id(first)], f"holds {n} profiles ({ambiguous[0]} appears {n} times); "
                                                f"pass --run N (1 to {n}) to ingest one of them")
    if not any(r in chosen for r in KERNEL_REPORTS):
        found = ", ".join(sorted({t.report for t in tables})) or "no table"
        where = ", ".join(str(p) for p in paths)
        what = f"no profile number {args.run} (they hold fewer)" if args.run and tables else f"only {found}"
        raise UserError(f"{where}: {what}; a profile needs cuda_gpu_kern_sum or nvtx_kern_sum: export them with "
                        "`nsys stats --format csv --report cuda_gpu_kern_sum --report nvtx_sum --report nvtx_kern_sum "
                        "--output PREFIX REPORT.nsys-rep`")
    kernel_tables = [chosen[r] for r in KERNEL_REPORTS if r in chosen]
    if not any(t.rows for t in kernel_tables):
        t = kernel_tables[0]
        raise InputFileError(origin[id(t)], f"line {t.line}: the {t.report} table has no rows: the profile holds no "
                                            "kernels (did its capture range ever start?), so there is nothing to ingest")
    metrics = summarise(chosen, steps=args.steps)
    metrics["nsys_version"] = next((e.nsys_version for e in exports if e.nsys_version), None)
    metrics.update({"source": "ingested", "profiler": "nsys", "activity": "cuda"})
    batch = args.batch or plan.edition.batch_size
    c = cell(plan, INGEST_SECTION, cell_name(args.size, args.ctx, args.mode, args.dtype), requires="nsys",
             size=args.size, ctx=args.ctx, mode=args.mode, dtype=args.dtype, batch=batch, source="ingested")
    record_file = store.record_path(args.runs_dir, plan.run, INGEST_SECTION, c.name)
    sources = {origin[id(t)] for t in chosen.values()}

    def same_files(old: dict) -> bool:
        folder = store.artifacts_dir(record_file)
        kept = {folder / name for report, name in (old.get("artifacts") or {}).items()
                if report in REPORTS and isinstance(name, str) and (folder / name).is_file()}
        return bool(kept) and {file_sha256(f) for f in kept} == {file_sha256(f) for f in sources}

    refuse_overwrite(record_file, getattr(args, "replace", False), same_files)
    artifacts_dir = store.artifacts_dir(record_file)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    copied: dict[Path, str] = {}
    for e in exports:
        if e.path in copied:
            continue
        name = Path(e.path).name
        while name in copied.values():
            name = "_" + name
        target = artifacts_dir / name
        if not (target.exists() and target.samefile(e.path)):  # re-ingesting the record's own artifact
            shutil.copyfile(e.path, target)
        copied[e.path] = name
    artifacts = {report: copied[origin[id(t)]] for report, t in sorted(chosen.items())}
    environment = {"device": args.device or "unknown GPU (ingested nsys export)", "device_type": "cuda",
                   "torch": None, "cuda": None, "python": None, "git": git_info(),
                   "host": args.host or "unknown (ingested)", "ingested_on": socket.gethostname(),
                   "ingested_from": [str(p) for p in paths]}
    record = store.make_record(INGEST_SECTION, c.name, c.config, environment, "ok", metrics=metrics,
                               artifacts=artifacts)
    set_aside_unreadable(record_file)
    store.write_record(record_file, record)
    return [record_file]
