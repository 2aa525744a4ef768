"""Plug-ins for artifacts made elsewhere (see lmreport/commands/inspect.py and ingest.py), and what they share."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (snapshots run to gigabytes): how an ingester tells the same file again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
