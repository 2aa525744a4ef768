"""torch.profiler (Kineto) traces: the `.json` / `.json.gz` that `prof.export_chrome_trace` writes.

`lmreport inspect trace FILE... [--json]` summarises a trace: its kernels (or, for a trace with
CPU activity only, its CPU operators) by total time, its record_function ranges, and how much
of each measured step the GPU sat idle. `lmreport ingest trace FILE --size S --ctx N --mode M`
turns a trace made elsewhere into a record of the profiling section (`nsys`), the same metrics
as `lmreport run nsys` writes when it profiles with torch.profiler, the file kept beside it.
Traces are streamed (kineto_read), so files of hundreds of megabytes need little memory.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from pathlib import Path

from lmreport import store
from lmreport.errors import InputFileError, UserError
from lmreport.ingest import file_sha256, refuse_overwrite
from lmreport.ingest.kineto_read import is_gzip
from lmreport.ingest.kineto_summary import PROFILER, summarise_trace, trace_header
from lmreport.ingest.nsys import _ns, add_profile_cell_arguments, cell_name
from lmreport.presets import model_table

INSPECT_KIND = "trace"
INGEST_SECTION = "trace"  # the CLI word; the records belong to the profiling section
RECORD_SECTION = "nsys"
TOP = 10
TRACE_ARTIFACT = "trace"  # key of the trace file in a record's artifacts


# --- inspect --------------------------------------------------------------------------------


def what_is_measured(activity: str | None) -> str:
    return {"cuda": "GPU kernels", "cpu": "CPU operators (self time; no GPU activity in this trace)"}.get(
        activity, "no kernels and no CPU operators")


def inspect_metrics(path: str | Path, m: dict) -> dict:
    """The JSON of `inspect trace --json` from a trace's metrics."""
    rows = m["kernels"]
    cuda = m["activity"] == "cuda"
    busy = m.get("busy")
    devices = [d.get("name") for d in m.get("trace_devices") or [] if d.get("name")]
    return {
        "file": str(path),
        "profiler": PROFILER,
        "activity": m["activity"],
        "device": devices[0] if devices else None,
        "events": m["trace_events"],
        "kernels": sum(r["instances"] for r in rows) if cuda else 0,
        "gpu_time_ns": m["kernel_total_ns"] if cuda else 0,
        "cpu_operators": 0 if cuda else sum(r["instances"] for r in rows),
        "cpu_operator_self_time_ns": 0 if cuda else m["kernel_total_ns"],
        "top": [{"name": r["name"], "total_time_ns": r["total_ns"], "instances": r["instances"], "class": r["class"]}
                for r in rows[:TOP]],
        "ranges": [{"name": n, "instances": r["instances"], "total_time_ns": r["total_ns"]}
                   for n, r in m["ranges"].items()],
        "busy": {k: v for k, v in busy.items() if k != "steps"} if busy else None,
    }


def inspect_file(path: Path) -> dict:
    return inspect_metrics(path, summarise_trace(path))


def format_summary(s: dict) -> str:
    cuda = s["activity"] == "cuda"
    total = s["gpu_time_ns"] if cuda else s["cpu_operator_self_time_ns"]
    count = s["kernels"] if cuda else s["cpu_operators"]
    lines = [f"{s['file']}: {PROFILER} trace of {what_is_measured(s['activity'])}"
             + (f" on {s['device']}" if s.get("device") else "") + f", {s['events']:,} events"]
    if s["activity"]:
        lines.append(f"  {count:,} {'kernels' if cuda else 'operator calls'}, {_ns(total)} of "
                     f"{'GPU kernel time' if cuda else 'CPU operator self time'}")
        for e in s["top"]:
            share = 100 * e["total_time_ns"] / total if total else 0.0
            lines.append(f"    {share:5.1f}% {_ns(e['total_time_ns']):>14} {e['instances']:>9,}×  {e['name']}  ({e['class']})")
    if s["ranges"]:
        lines.append("  record_function ranges: " + "; ".join(
            f"{r['name']} {r['instances']}× {_ns(r['total_time_ns'])}" for r in s["ranges"][:12]))
    b = s.get("busy")
    if b and b.get("idle_share") is not None:
        where = {"step": "the measured steps", "ProfilerStep": "the profiler's steps", "trace": "the trace"}[b["window"]]
        notes = [{"step": "range “step”", "ProfilerStep": "ProfilerStep#N",
                  "trace": "from its first to its last activity"}[b["window"]]]
        if b["windows"] > 1:
            notes.append(f"{100 * b['idle_share_min']:.1f}% to {100 * b['idle_share_max']:.1f}% per step")
        what = "the GPU ran nothing" if b["activity"] == "gpu" else "no CPU operator ran"
        lines.append(f"  idle: {what} during {100 * b['idle_share']:.1f}% of {where} ({'; '.join(notes)})")
    return "\n".join(lines)


# --- ingest ---------------------------------------------------------------------------------


def add_ingest_arguments(p) -> None:
    add_profile_cell_arguments(p, "trace", "its 'step' or ProfilerStep ranges",
                               "the device that made the trace (default: the trace's deviceProperties)")


def _source_sha256(record: dict) -> str | None:
    """The SHA-256 of the trace an ingested record was made from (None for a profiled one)."""
    source = record["metrics"].get("source_file")
    return source.get("sha256") if isinstance(source, dict) else None


def keep_trace(path: Path, folder: Path) -> Path:
    """The trace beside its record, gzipped: a plain `x.json` becomes `x.json.gz` (a record folder holds no
    other .json than records, which the loader would take for records; and traces shrink about tenfold).
    The name goes by the suffix, the compression by the content: a gzipped `x.json` is copied to `x.json.gz`."""
    folder.mkdir(parents=True, exist_ok=True)
    gzipped = is_gzip(path)
    target = folder / (path.name if path.name.endswith(".gz") else path.name + ".gz")
    if target.exists() and target.samefile(path):
        return target  # re-ingesting the record's own artifact
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        if gzipped:
            shutil.copyfile(path, tmp)
        else:
            with open(path, "rb") as src, gzip.open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ingest_files(paths: list[Path], args, plan) -> list[Path]:
    from lmreport.device import git_info
    from lmreport.runner import cell, set_aside_unreadable

    if len(paths) != 1:
        raise UserError(f"lmreport ingest trace takes one trace (one profile) at a time, not {len(paths)} files")
    path = Path(paths[0])
    sizes = list(model_table(plan.edition, plan.profile))
    if args.size not in sizes:
        raise UserError(f"unknown size {args.size!r} for the {plan.edition.year} edition: choose one of {', '.join(sizes)}")
    if args.ctx <= 0 or (args.steps is not None and args.steps <= 0) or (args.batch is not None and args.batch <= 0):
        raise UserError("--ctx, --steps and --batch must be positive")
    header = trace_header(path)  # at most its first MiB: a missing file, an empty one or a bare array fail here
    batch = args.batch or plan.edition.batch_size
    c = cell(plan, RECORD_SECTION, cell_name(args.size, args.ctx, args.mode, args.dtype), size=args.size, ctx=args.ctx,
             mode=args.mode, dtype=args.dtype, batch=batch, source="ingested")
    record_file = store.record_path(args.runs_dir, plan.run, RECORD_SECTION, c.name)
    # before parsing (traces run to hundreds of MB): a chunked read, which the record keeps
    sha256 = file_sha256(path)
    refuse_overwrite(record_file, getattr(args, "replace", False), lambda old: _source_sha256(old) == sha256)
    metrics = summarise_trace(path, steps=args.steps, header=header)
    if not metrics["kernels"]:
        raise InputFileError(path, "holds no kernels and no CPU operators, so there is nothing to ingest (was the "
                                   "profiler's schedule ever active, and were its activities CPU and CUDA?)")
    metrics["source"] = "ingested"
    metrics["source_file"] = {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256}
    target = keep_trace(path, store.artifacts_dir(record_file))
    cuda = metrics["activity"] == "cuda"
    named = next((d.get("name") for d in metrics.get("trace_devices") or [] if d.get("name")), None)
    device = args.device or named or ("unknown GPU (ingested torch.profiler trace)" if cuda else
                                      "unknown CPU (ingested torch.profiler trace)")
    environment = {"device": device, "device_type": "cuda" if cuda else "cpu", "torch": None, "cuda": None,
                   "python": None, "git": git_info(), "host": args.host or "unknown (ingested)",
                   "ingested_on": socket.gethostname(), "ingested_from": [str(path)]}
    record = store.make_record(RECORD_SECTION, c.name, c.config, environment, "ok", metrics=metrics,
                               artifacts={TRACE_ARTIFACT: target.name})
    set_aside_unreadable(record_file)
    store.write_record(record_file, record)
    return [record_file]
