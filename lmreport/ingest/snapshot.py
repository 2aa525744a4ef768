"""CUDA memory snapshot (pickle from torch.cuda.memory._dump_snapshot or memory_snapshot()).

`lmreport inspect snapshot FILE [--json]` summarises one without a GPU; `lmreport ingest
memory FILE... --size S --ctx N --mode forward|train` turns snapshots made elsewhere into
records of the memory section. Files are untrusted: they are read with the restricted
unpickler of lmreport.safe_pickle, so a pickle that names any class or callable is refused
and nothing in it runs. The replay (snapshot_replay) follows torch's own viewer; the
interactive viewer is torch's `torch.cuda._memory_viz.trace_plot`, fed the dict that was
loaded safely (it re-pickles that plain dict into the HTML; it needs no CUDA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmreport import safe_pickle
from lmreport.errors import InputFileError, UserError
from lmreport.ingest import file_sha256
from lmreport.ingest.snapshot_format import Snapshot, normalize
from lmreport.ingest.snapshot_replay import DeviceReplay, Phase, replay_device

INSPECT_KIND = "snapshot"
INGEST_SECTION = "memory"
TOP_ALLOCATIONS = 10


@dataclass
class SnapshotSummary:
    path: Path
    snapshot: Snapshot
    devices: list[DeviceReplay]

    @property
    def main(self) -> DeviceReplay | None:
        """The device with the highest active peak (the one a single-GPU cell ran on)."""
        return max(self.devices, key=lambda d: d.peak_active_bytes, default=None)


def read_snapshot(path: str | Path) -> Snapshot:
    return normalize(safe_pickle.load(path), path)


def summarize(path: str | Path, phases: list[Phase] | None = None, top: int = TOP_ALLOCATIONS,
              snapshot: Snapshot | None = None) -> SnapshotSummary:
    """Replay every device of a snapshot file (phases: override the file's own annotations)."""
    path = Path(path)
    snap = snapshot if snapshot is not None else read_snapshot(path)
    try:
        devices = [replay_device(snap, d, path, top=top, phases=phases) for d in snap.devices()]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError) as e:
        # normalize() and the replay check what they rely on; this is the last line against a
        # hand-made file shaped in a way they did not foresee: still one line naming the file
        raise InputFileError(path, f"not a well-formed CUDA memory snapshot ({type(e).__name__}: {e})") from None
    return SnapshotSummary(path, snap, devices)


class InspectResult(dict):
    """The JSON of `inspect snapshot --json` (exactly these keys); `.summary` keeps the details."""

    summary: SnapshotSummary


def inspect_file(path) -> dict:
    s = summarize(path)
    out = InspectResult({
        "file": str(path),
        "format": s.snapshot.format,
        "devices": [{"device": d.device, "events": d.events, "peak_active_bytes": d.peak_active_bytes,
                     "peak_reserved_bytes": d.peak_reserved_bytes,
                     "top_allocations": [{"size_bytes": a.size_bytes, "frame": a.frame} for a in d.top_allocations]}
                    for d in s.devices],
    })
    out.summary = s
    return out


def _gib(n: int) -> str:
    return f"{n / 1024**3:,.2f} GiB"


def _size(n: int) -> str:
    return f"{n / 1024**3:,.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:,.2f} MiB" if n >= 1024**2 else f"{n:,} B"


def format_summary(result: dict) -> str:
    s: SnapshotSummary | None = getattr(result, "summary", None)
    if s is None:  # a plain dict (e.g. read back from JSON): the essentials only
        lines = [f"{result['file']}: {result['format']}"]
        for d in result["devices"]:
            lines.append(f"  device {d['device']}: {d['events']:,} entries, peak active {_gib(d['peak_active_bytes'])}, "
                         f"peak reserved {_gib(d['peak_reserved_bytes'])}")
        return "\n".join(lines)
    snap = s.snapshot
    kind = (f"dict snapshot ({', '.join(snap.keys)})" if snap.format == "snapshot"
            else "bare list of segments (torch.cuda.memory_snapshot(): no history)")
    lines = [f"{s.path}: {kind}"]
    if not s.devices:
        lines.append("  no segments and no trace entries: nothing was allocated on any device")
    for d in s.devices:
        acts = ", ".join(f"{k} {v:,}" for k, v in sorted(d.actions.items()))
        lines.append(f"device {d.device}: {d.events:,} trace entries" + (f" ({acts})" if acts else
                     " (history not recorded: the peak is the memory active when the snapshot was taken)"))
        when = ""
        if d.peak_event >= 0:
            when = f" at entry {d.peak_event:,}"
            if d.peak_time_ms is not None:
                when += f" ({d.peak_time_ms:,.1f} ms after the first entry"
                when += f", during {d.peak_phase})" if d.peak_phase else ")"
        lines.append(f"  active: {_gib(d.initial_active_bytes)} allocated before recording; peak "
                     f"{_gib(d.peak_active_bytes)}{when}; {_gib(d.final_active_bytes)} at the end")
        lines.append(f"  reserved: peak {_gib(d.peak_reserved_bytes)}; {_gib(d.final_reserved_bytes)} at the end")
        for o in d.ooms:
            lines.append(f"  OUT OF MEMORY at entry {o['event']:,}: requested {_size(o['size_bytes'] or 0)}, "
                         f"{_size(o['device_free_bytes'] or 0)} free on the device")
        if d.phases:
            # "from .. to" rather than "a-b": phases that began before the first entry have negative times
            lines.append("  phases (ms after the first entry): " + "; ".join(
                f"{p.name} from {p.start_ms:,.1f} to {p.end_ms:,.1f}" for p in d.phases))
        if d.top_allocations:
            lines.append("  largest allocations (size x count, source):")
            for a in d.top_allocations:
                src = a.frame or "no stack recorded"
                lines.append(f"    {_size(a.size_bytes):>12} x{a.count:<5} {src}"
                             + ("" if a.recorded else "  (allocated before recording started)"))
    return "\n".join(lines)


# --- the interactive viewer -------------------------------------------------------------------


def write_viewer(snapshot: Snapshot, raw: dict | list, out: Path) -> tuple[Path | None, str]:
    """torch's own HTML viewer (Active Memory Timeline) for the safely loaded object.

    Returns (path or None, note). The page loads MemoryViz.js from a CDN when opened.
    """
    try:
        from torch.cuda import _memory_viz
    except ImportError as e:
        return None, f"torch.cuda._memory_viz is not available ({e})"
    if snapshot.format != "snapshot" or not any(snapshot.device_traces):
        return None, "no allocator history in this snapshot, so there is no timeline to view"
    try:
        html = _memory_viz.trace_plot(raw)
    except Exception as e:  # noqa: BLE001 - a viewer is a bonus, never a failure
        return None, f"torch.cuda._memory_viz.trace_plot failed ({type(e).__name__}: {e})"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html)
    return out, "open in a browser (the page loads torch's MemoryViz.js from cdn.jsdelivr.net)"


# --- records ----------------------------------------------------------------------------------


def record_metrics(s: SnapshotSummary) -> dict:
    """The metrics of a measured memory record, from a snapshot's replay."""
    d = s.main
    if d is None:
        raise InputFileError(s.path, "the snapshot holds no segments and no trace: nothing to measure")
    return {
        "peak_active_bytes": d.peak_active_bytes,
        "peak_reserved_bytes": d.peak_reserved_bytes,
        "initial_active_bytes": d.initial_active_bytes,
        "final_active_bytes": d.final_active_bytes,
        "peak_time_ms": d.peak_time_ms,
        "peak_phase": d.peak_phase,
        "trace_events": d.events,
        "snapshot_device": d.device,
        "snapshot_format": s.snapshot.format,
        "ooms": d.ooms,
        "top_allocations": [a.__dict__ for a in d.top_allocations],
        "timeline": d.timeline,
        "phases": [p.__dict__ for p in d.phases],
        "devices": [{"device": x.device, "events": x.events, "peak_active_bytes": x.peak_active_bytes,
                     "peak_reserved_bytes": x.peak_reserved_bytes} for x in s.devices],
    }


def cell_name(size: str, ctx: int, mode: str, dtype: str, first_step: bool = False, with_grad: bool = False) -> str:
    suffix = ("-first" if first_step and mode == "train" else "") + ("-grad" if with_grad and mode == "forward" else "")
    return f"measured-{size}-ctx{ctx}-{mode}-{dtype}{suffix}"


def add_ingest_arguments(p) -> None:
    p.add_argument("--size", required=True, help="model size the snapshot was taken of (e.g. 2.7B)")
    p.add_argument("--ctx", required=True, type=int, help="context length")
    p.add_argument("--mode", required=True, choices=("forward", "train"), help="forward only, or a full training step")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="fp32, or bf16 autocast (default fp32)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the edition's, 4)")
    p.add_argument("--first-step", action="store_true",
                   help="train: the snapshot is of the first step (optimizer state allocated inside it)")
    p.add_argument("--with-grad", action="store_true",
                   help="forward: autograd was recording (activations kept), not inference under no_grad")
    p.add_argument("--device", "--device-name", dest="device_name", default=None,
                   help="the GPU that produced the file, e.g. 'NVIDIA H100 80GB HBM3' (snapshots do not store it)")
    p.add_argument("--replace", action="store_true",
                   help="overwrite an existing record of the same cell (kept by default)")


def _check_ingest_arguments(args, plan) -> int:
    """The batch size; UserError naming the flag for values that cannot describe a memory cell."""
    from lmreport.presets import model_table
    sizes = list(model_table(plan.edition, plan.profile))
    if args.size not in sizes:
        raise UserError(f"--size {args.size!r} is not a model of the {plan.edition.year} edition: choose one of "
                        f"{', '.join(sizes)} (--edition selects the other table)")
    if args.ctx <= 0:
        raise UserError(f"--ctx must be positive, not {args.ctx}")
    if args.batch is not None and args.batch <= 0:
        raise UserError(f"--batch must be positive, not {args.batch}")
    if args.first_step and args.mode != "train":
        raise UserError("--first-step describes a training step: use it with --mode train")
    if args.with_grad and args.mode != "forward":
        raise UserError("--with-grad describes a forward pass: use it with --mode forward")
    return args.batch or plan.edition.batch_size


def _cell_names(paths: list[Path], base: str) -> list[str]:
    """One cell per file: the base name alone, or with each file's stem (made unique) for several."""
    if len(paths) == 1:
        return [base]
    names: list[str] = []
    for path in paths:
        name = f"{base}-{re.sub(r'[^A-Za-z0-9.]+', '-', path.stem).strip('-')}"
        unique, n = name, 2
        while unique in names:  # a/snap.pickle and b/snap.pickle: keep both
            unique, n = f"{name}-{n}", n + 1
        names.append(unique)
    return names


def ingest_files(paths: list[Path], args, plan) -> list[Path]:
    """Records of the memory section for snapshot files made elsewhere.

    Every file is read and checked before any record is written, so one bad file leaves the
    runs folder as it was. An existing ok or oom record of the same cell (a GPU run's
    measurement, another snapshot) is kept unless it was ingested from the very same file (same
    SHA-256) or --replace is given; skipped and error records are placeholders and are replaced.
    """
    from lmreport import store
    from lmreport.device import environment
    from lmreport.runner import set_aside_unreadable
    from lmreport.user_model import reference

    batch = _check_ingest_arguments(args, plan)
    paths = [Path(p) for p in paths]
    base = cell_name(args.size, args.ctx, args.mode, args.dtype, args.first_step, args.with_grad)
    config = {"edition": plan.edition.year, "profile": plan.profile.name, "size": args.size, "ctx": args.ctx,
              "batch": batch, "mode": args.mode, "dtype": args.dtype, "source": "measured",
              "step": ("first" if args.first_step else "steady") if args.mode == "train" else None,
              "grad": bool(args.with_grad) if args.mode == "forward" else None, "ingested": True,
              "implementation": (plan.model or reference()).to_config()}
    prepared = []
    for path, cell in zip(paths, _cell_names(paths, base)):
        raw = safe_pickle.load(path)
        snap = normalize(raw, path)
        metrics = record_metrics(summarize(path, snapshot=snap))
        metrics["source_file"] = {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        record_file = store.record_path(args.runs_dir, plan.run, INGEST_SECTION, cell)
        _refuse_overwrite(record_file, metrics["source_file"]["sha256"], getattr(args, "replace", False))
        prepared.append((path, cell, raw, snap, metrics, record_file))
    written = []
    for path, cell, raw, snap, metrics, record_file in prepared:
        viewer, note = write_viewer(snap, raw, store.artifacts_dir(record_file) / "memory_viz.html")
        env = environment("cpu")
        env.update({"device": args.device_name or "CUDA GPU (ingested snapshot; the file does not name the GPU)",
                    "device_type": "cuda", "cuda": None, "ingested_from": str(path)})
        metrics["viewer_note"] = note
        record = store.make_record(INGEST_SECTION, cell, config, env, "ok", metrics=metrics,
                                   artifacts={"viewer": viewer.name} if viewer else {})
        set_aside_unreadable(record_file)  # a file there that is no record is kept beside it, as the runner does
        written.append(store.write_record(record_file, record))
    return written


def _refuse_overwrite(record_file: Path, sha256: str, replace: bool) -> None:
    """ingest.refuse_overwrite with a snapshot's words: the same file again changes nothing."""
    from lmreport.ingest import refuse_overwrite

    def describe(old: dict) -> str:
        ingested_from = (old.get("environment") or {}).get("ingested_from")
        if ingested_from:
            return f"a snapshot ingested from {ingested_from}"
        return "a measured record" if old["status"] == "ok" else "an out-of-memory record"

    refuse_overwrite(record_file, replace,
                     lambda old: ((old.get("metrics") or {}).get("source_file") or {}).get("sha256") == sha256,
                     describe, ", or ingest under other flags (--first-step, --with-grad, --dtype) if this snapshot "
                               "is of another step")
