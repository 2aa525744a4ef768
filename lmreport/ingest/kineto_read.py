"""Reading a Kineto trace (torch.profiler's Chrome/Perfetto JSON) as a stream of events.

What Kineto writes (libkineto/src/output_json.cpp, ChromeTraceLogger): one JSON object

    {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 ...", ...}],
     <metadata>, "displayTimeUnit": "ms", "baseTimeNanoseconds": ..., "traceEvents": [...],
     "traceName": "..."}

with events in Chrome's trace format: complete events ("ph": "X") with a category ("cat":
"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "kernel", "gpu_memcpy",
"gpu_memset", "gpu_user_annotation", ...), "name", "pid", "tid", "ts" and "dur" in
microseconds with three decimals (so nanoseconds are exact), and "args" ("correlation" links a
kernel to its launch, "External id" to its CPU operator, "stream", "device"); plus metadata
("ph": "M") and flow ("ph": "s"/"f") events. Files may be gzipped (torch writes `.json.gz`
when asked for that name).

Traces run to hundreds of megabytes, so the events are streamed with ijson (its C backend,
yajl2_c): one event at a time, never the whole list in memory, and the file read once. The
metadata before "traceEvents" (device properties, base time) is read from the file's first
megabyte in a separate, bounded read. Malformed input (empty, not JSON, truncated, not a
trace) raises InputFileError with one line naming the file.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from lmreport.errors import InputFileError

HEADER_BYTES = 1 << 20  # Kineto writes its metadata (a few kB) before the events
EVENTS_PREFIX = "traceEvents.item"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class TraceHeader:
    """What the trace says about itself before its events."""

    kind: str  # "object", "array", "other" (the top-level JSON value), "empty" (only white space) or "unknown"
    meta: dict = field(default_factory=dict)  # top-level keys before "traceEvents" (deviceProperties, ...)
    has_events_key: bool | None = None  # "traceEvents" seen (True), the object ended without it (False), or unknown

    @property
    def devices(self) -> list[dict]:
        props = self.meta.get("deviceProperties")
        return [d for d in props if isinstance(d, dict)] if isinstance(props, list) else []


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_trace(path: str | Path) -> BinaryIO:
    """The trace's JSON bytes, decompressed when the file is gzipped; InputFileError for what is not a file."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(path, "is a folder, not a trace file")
    try:
        if path.stat().st_size == 0:
            raise InputFileError(path, "empty file, not a trace")
        return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except PermissionError:
        raise InputFileError(path, "cannot be read (permission denied)") from None


def _problem(e: BaseException, gzipped: bool) -> str:
    """One line for what went wrong while reading, from ijson's (multi-line) or gzip's error."""
    if isinstance(e, EOFError):
        return "truncated: the gzip stream ends before its end marker (the file was cut short)"
    if isinstance(e, (gzip.BadGzipFile, zlib.error)):
        return f"not a readable gzip file ({e})"
    first = (str(e).strip().splitlines() or [""])[0].strip()
    if first.startswith(("b'", 'b"')):  # yajl2_c gives some messages as bytes: str() shows their repr
        first = first[2:].split("\\n")[0]
    if "premature EOF" in first or "Incomplete JSON" in first:
        return "truncated: the JSON stops before its end (the file was cut short, or is still being written)"
    return f"not valid JSON ({first or type(e).__name__})" + (" after decompressing" if gzipped else "")


def read_header(path: str | Path) -> TraceHeader:
    """The top-level keys before "traceEvents", from at most HEADER_BYTES; never raises on bad JSON
    (the full read reports that); InputFileError only for a file that cannot be opened."""
    import ijson
    from ijson.common import ObjectBuilder

    with open_trace(path) as f:
        try:
            head = f.read(HEADER_BYTES)
        except (EOFError, OSError, zlib.error):
            return TraceHeader("unknown")
    header = TraceHeader("empty" if not head.strip() else "unknown")
    if header.kind == "empty":
        return header
    key, builder = None, None
    try:
        for prefix, event, value in ijson.parse(io.BytesIO(head), use_float=True):
            if header.kind == "unknown":
                header.kind = {"start_map": "object", "start_array": "array"}.get(event, "other")
                if header.kind != "object":
                    return header
                continue
            if prefix == "" and event == "map_key":
                if value == "traceEvents":
                    header.has_events_key = True
                    return header
                key, builder = value, ObjectBuilder()
                continue
            if prefix == "" and event == "end_map":
                header.has_events_key = False
                return header
            if builder is not None:
                builder.event(event, value)
                if prefix == key and event not in ("start_map", "start_array", "map_key"):
                    header.meta[key] = builder.value
                    key, builder = None, None
    except ijson.JSONError:
        pass  # the cut at HEADER_BYTES, or a real error the full read reports
    return header


class _Counting:
    """A reader that counts the bytes ijson has taken (for the error message's position)."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.n += len(data)
        return data


def iter_events(path: str | Path) -> Iterator[dict]:
    """Every item of "traceEvents", one at a time; InputFileError (one line, naming the file) for
    a file that is empty, not JSON, truncated, or whose events are not JSON objects."""
    import ijson

    path = Path(path)
    f = open_trace(path)
    gzipped = isinstance(f, gzip.GzipFile)
    counting = _Counting(f)
    n = 0
    try:
        for event in ijson.items(counting, EVENTS_PREFIX, use_float=True):
            if not isinstance(event, dict):
                raise InputFileError(path, f"traceEvents item {n} is not a JSON object, so this is not a trace")
            n += 1
            yield event
    except (ijson.JSONError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        where = f" (after {n:,} events, {counting.n:,} bytes{' decompressed' if gzipped else ''})" if n else ""
        raise InputFileError(path, _problem(e, gzipped) + where) from None
    except UnicodeDecodeError:
        raise InputFileError(path, "not a text file (invalid UTF-8), so not a JSON trace") from None
    finally:
        f.close()
