"""Records: one JSON file per sweep cell, written atomically, loaded leniently.

Layout: runs/<edition>-<profile>/<section>/<cell>.json, artifacts beside the record in
runs/<edition>-<profile>/<section>/<cell>/. A record is never half-written: it goes to a
temporary file in the same folder, is flushed and fsynced, then renamed over the target
(os.replace is atomic on POSIX). Loaders skip unreadable files with a warning, as
pytest-benchmark does, so one bad file never hides the rest.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from lmreport.errors import InputFileError

SCHEMA = 1
STATUSES = ("ok", "oom", "error", "skipped")
REQUIRED_KEYS = ("schema", "section", "cell", "config", "status", "metrics")


def run_name(edition: int, profile: str, model_slug: str | None = None) -> str:
    """`<edition>-<profile>`, and `--<model slug>` for a run of a user's model (user_model.ModelSpec.slug)."""
    return f"{edition}-{profile}" + (f"--{model_slug}" if model_slug else "")


def record_path(runs_dir: Path, run: str, section: str, cell: str) -> Path:
    return Path(runs_dir) / run / section / f"{cell}.json"


def artifacts_dir(record_file: Path) -> Path:
    return record_file.with_suffix("")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_record(section: str, cell: str, config: dict, environment: dict, status: str,
                metrics: dict | None = None, artifacts: dict | None = None, error: str | None = None,
                started_at: str | None = None, duration_s: float = 0.0, launcher: str | None = None,
                wall_s: float | None = None, timed_s: float | None = None) -> dict:
    """A record. The run's cost, optional (records from before these keys, and ingested ones, lack them):
    `launcher` (what ran the cell: inline, subprocess, worker, local-gpus, slurm), `wall_s` (from
    launch to record, process start and imports included), `timed_s` (inside timed steps)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    record = {"schema": SCHEMA, "section": section, "cell": cell, "config": config,
              "environment": environment, "status": status, "error": error,
              "metrics": metrics or {}, "artifacts": artifacts or {},
              "started_at": started_at or now_iso(), "duration_s": round(duration_s, 3)}
    for key, value in (("launcher", launcher), ("wall_s", wall_s), ("timed_s", timed_s)):
        if value is not None:
            record[key] = round(value, 3) if isinstance(value, float) else value
    return record


def write_record(path: Path, record: dict) -> Path:
    """Write atomically: temp file in the same folder, fsync, rename.

    A failed outcome never destroys a measurement: when an `ok` record is about to be replaced
    by one that is not ok (a `--rerun` that ran out of memory this time), the ok one is kept
    beside it as `<cell>.kept-<its start time>.json`, where `select` still finds it as the
    newest ok record of the cell, and a plain rerun retries the cell.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if record.get("status") != "ok" and is_ok(path):
        _keep_ok_record(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            # mkstemp creates 0600; a record shared on a cluster file system must be readable
            # like any file the user writes, so apply the umask's usual 0666 mode.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


KEPT_MARK = ".kept-"  # in the name of an ok record set aside by write_record


def is_kept_copy(path: Path) -> bool:
    """True for an ok record kept beside a cell's newer, failed one (not a cell of its own)."""
    return KEPT_MARK in Path(path).name


def _keep_ok_record(path: Path) -> Path:
    stamp = re.sub(r"[^0-9A-Za-z]+", "", str(read_record(path).get("started_at") or "")) or "undated"
    kept = path.with_name(f"{path.stem}{KEPT_MARK}{stamp}.json")
    os.replace(path, kept)
    return kept


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(o: Any):
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def read_record(path: Path) -> dict:
    """Read one record; a file that is not a record raises InputFileError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise InputFileError(path, "not a text file, so not a record") from None
    except json.JSONDecodeError as e:
        raise InputFileError(path, f"not valid JSON ({e.msg} at line {e.lineno}); delete it and rerun the cell") from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        raise InputFileError(path, f"not an lmreport record (needs keys {', '.join(REQUIRED_KEYS)})")
    if data["schema"] != SCHEMA:
        raise InputFileError(path, f"record schema {data['schema']!r} is not {SCHEMA}")
    if not isinstance(data["section"], str) or not isinstance(data["cell"], str):
        raise InputFileError(path, "section and cell must be strings")
    if data["status"] not in STATUSES:
        raise InputFileError(path, f"unknown status {data['status']!r}")
    if not isinstance(data["config"], dict) or not isinstance(data["metrics"], dict):
        raise InputFileError(path, "config and metrics must be JSON objects")
    if not all(isinstance(data.get(k) or {}, dict) for k in ("environment", "artifacts")):
        raise InputFileError(path, "environment and artifacts must be JSON objects")
    data["_path"] = str(path)
    return data


def is_ok(path: Path) -> bool:
    """True when a readable record with status ok exists at path (resume skips it)."""
    try:
        return read_record(path)["status"] == "ok"
    except (OSError, InputFileError):
        return False


def load_records(runs_dir: Path) -> list[dict]:
    """Every readable record under runs_dir; unreadable files are skipped with a warning."""
    return list(records_by_path(runs_dir).values())


def records_by_path(runs_dir: Path) -> dict[Path, dict]:
    """load_records, by file (a record's own file or a kept copy beside it): for who needs both."""
    out = {}
    for path in sorted(Path(runs_dir).rglob("*.json")):
        # Temp files (.name.tmp) and hidden folders such as the Slurm job folder runs/<run>/.slurm/
        # hold no records.
        if any(part.startswith(".") for part in path.relative_to(runs_dir).parts):
            continue
        try:
            out[path] = read_record(path)
        except (OSError, InputFileError) as e:
            warnings.warn(f"skipped {e}", stacklevel=3)
    return out


def in_plan(record: dict, edition: int | None, profile: str | None) -> bool:
    """Whether a record belongs to the plan (edition, profile): its config names them or does not say (a record
    from before these keys); None matches any."""
    cfg = record.get("config") or {}
    return ((edition is None or cfg.get("edition") in (None, edition))
            and (profile is None or cfg.get("profile") in (None, profile)))


def select(records: Iterable[dict], edition: int | None = None, profile: str | None = None) -> list[dict]:
    """One record per (section, cell) of the plan (in_plan): the newest ok one, else the newest of any status.

    Records from several machines merge this way (copy their folders under runs/).
    """
    best: dict[tuple[str, str], dict] = {}
    for r in records:
        if not in_plan(r, edition, profile):
            continue
        key = (r["section"], r["cell"])
        cur = best.get(key)
        if cur is None or _rank(r) > _rank(cur):
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["section"], r["cell"]))


def other_plans(records: Iterable[dict], edition: int, profile: str) -> dict[tuple[int | None, str | None], int]:
    """(edition, profile) -> records that `select(records, edition, profile)` leaves out.

    A run copied from a GPU machine (profile handout-2025) is not part of a `cpu` writeup; the
    render command names these so that nobody wonders where their records went.
    """
    counts: dict[tuple[int | None, str | None], int] = {}
    for r in records:
        if not in_plan(r, edition, profile):
            cfg = r.get("config") or {}
            e, p = cfg.get("edition"), cfg.get("profile")
            counts[(e, p)] = counts.get((e, p), 0) + 1
    return counts


def _rank(r: dict) -> tuple[bool, str]:
    return (r["status"] == "ok", r.get("started_at") or "")
