"""Plug-ins for artifacts made elsewhere (see lmreport/commands/inspect.py and ingest.py), and what they share."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (snapshots run to gigabytes): how an ingester tells the same file again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def refuse_overwrite(record_file: Path, replace: bool, same_source: Callable[[dict], bool],
                     describe: Callable[[dict], str | None] | None = None, hint: str = "") -> None:
    """Before an ingested or profiling record (`ingest nsys`, `ingest trace`, `ingest memory`) is written: an ok
    or out-of-memory record of the cell (measured or profiled here, or ingested from other files) is kept unless
    --replace (UserError); skipped and error records are placeholders, and a file that is not a record is set
    aside when the new one is written (runner.set_aside_unreadable). `same_source(old_record)`: whether the files
    are those of the old record (by SHA-256), which changes nothing and is allowed. `describe(old_record)`: what
    the old record holds, in the error (None: the profiling wording); `hint`: what else to do, after it."""
    from lmreport import store
    from lmreport.errors import InputFileError, UserError

    if replace or not record_file.exists():
        return
    try:
        old = store.read_record(record_file)
    except InputFileError:
        return  # not a record: the runner's rule applies, it is set aside (runner.set_aside_unreadable)
    if old["status"] in ("skipped", "error") or same_source(old):
        return
    m = old["metrics"]
    what = describe(old) if describe else None
    what = what or (f"a profile made by `lmreport run nsys` ({m.get('profiler') or 'Nsight Systems'})"
                    if m.get("source") == "profiled" else
                    f"a profile ingested from {', '.join((old.get('environment') or {}).get('ingested_from') or ['other files'])}"
                    if old["status"] == "ok" else "an out-of-memory record")
    raise UserError(f"{record_file} already holds {what}; pass --replace to overwrite it{hint}")
