"""The layouts of a CUDA memory snapshot, normalised to one shape (pure Python, no torch).

What torch writes (torch/cuda/memory.py, torch/csrc/cuda/memory_snapshot.cpp):
- `torch.cuda.memory._snapshot()` / `_dump_snapshot(path)`: a dict with "segments" (every
  cudaMalloc'd segment with its blocks) and "device_traces" (one list of trace entries per
  device, the history recorded by `_record_memory_history`). Newer versions add
  "allocator_settings", "external_annotations" (record_function START/END with time_us) and
  per-entry "time_us", "compile_context", "user_metadata"; older files have only "segments"
  and "device_traces"; without recorded history the traces are empty lists.
- `torch.cuda.memory_snapshot()`: the bare list of segments, no history.
Segments carry "device", "address", "total_size", "stream", "segment_type", "blocks"
(each with "size", "requested_size" (older: "history"[0]["real_size"]), "state" in
active_allocated / active_pending_free / inactive, and "address" in newer files; older
ones are laid out from the segment address in order, as MemoryViz.js does). Expandable
segments ("is_expandable") grow and shrink by segment_map / segment_unmap entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmreport.errors import InputFileError

ACTIONS = ("alloc", "free_requested", "free_completed", "free", "segment_alloc", "segment_free",
           "segment_map", "segment_unmap", "snapshot", "oom", "annotate")  # "annotate": newest torch, no memory
SEGMENT_KEYS = ("address", "total_size", "blocks")
# Sizes and addresses are int64 in the allocator (memory_snapshot.cpp casts them to int64_t); anything
# outside that range is not from torch, and would overflow the replay's int64 arrays.
_INT64 = 1 << 63


@dataclass
class Snapshot:
    format: str  # "snapshot" (the dict of _snapshot()) or "segments" (the list of memory_snapshot())
    segments: list[dict]
    device_traces: list[list[dict]]  # index = device; empty lists when no history was recorded
    annotations: list[dict] = field(default_factory=list)  # external_annotations (may be empty)
    allocator_settings: dict | None = None
    keys: tuple[str, ...] = ()  # top-level keys of the dict, for the summary

    def devices(self) -> list[int]:
        """Devices that appear in a trace or own a segment."""
        found = {i for i, t in enumerate(self.device_traces) if t}
        found |= {s.get("device", 0) for s in self.segments}
        return sorted(found)

    def segments_of(self, device: int) -> list[dict]:
        return [s for s in self.segments if s.get("device", 0) == device]

    def trace_of(self, device: int) -> list[dict]:
        return self.device_traces[device] if 0 <= device < len(self.device_traces) else []


def _is_int(v, low: int = -_INT64) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < _INT64


def _check_segments(segments, path) -> list[dict]:
    """Every segment a dict with integer device/address/total_size and a list of blocks with integer sizes.

    A pickle can also reference one object many times (its memo), so a small file could name the
    same segment or block list a million times and make the replay walk it a million times;
    torch writes every segment and block list once, so a repeated object is refused.
    """
    if not isinstance(segments, list):
        raise InputFileError(path, f"'segments' is a {type(segments).__name__}, not a list of segments")
    seen: set[int] = set()
    for i, s in enumerate(segments):
        if not isinstance(s, dict) or any(k not in s for k in SEGMENT_KEYS):
            raise InputFileError(path, f"segment {i} is not a memory segment (needs keys {', '.join(SEGMENT_KEYS)})")
        for key, low in (("device", 0), ("address", -_INT64), ("total_size", 0)):
            if key in s and not _is_int(s[key], low):
                raise InputFileError(path, f"segment {i}: '{key}' is not a {'non-negative ' if low == 0 else ''}"
                                           f"64-bit integer ({type(s[key]).__name__})")
        blocks = s["blocks"]
        if not isinstance(blocks, list):
            raise InputFileError(path, f"segment {i}: 'blocks' is not a list")
        if id(s) in seen or id(blocks) in seen:
            raise InputFileError(path, f"segment {i} repeats an earlier segment object (torch writes each once)")
        seen.update((id(s), id(blocks)))
        for j, b in enumerate(blocks):
            if not isinstance(b, dict) or not _is_int(b.get("size"), 0):
                raise InputFileError(path, f"segment {i}, block {j}: not a block (a dict with an integer 'size')")
            if b.get("address") is not None and not _is_int(b["address"]):
                raise InputFileError(path, f"segment {i}, block {j}: 'address' is not a 64-bit integer")
            if b.get("requested_size") is not None and not _is_int(b["requested_size"], 0):
                raise InputFileError(path, f"segment {i}, block {j}: 'requested_size' is not a non-negative integer")
            hist = b.get("history")
            if hist is not None and not (isinstance(hist, list) and all(isinstance(h, dict) for h in hist)
                                         and (not hist or _is_int(hist[0].get("real_size", 0), 0))):
                raise InputFileError(path, f"segment {i}, block {j}: 'history' is not a list of allocation records")
    return segments


def _check_traces(traces, path) -> list[list[dict]]:
    if not isinstance(traces, list) or not all(isinstance(t, list) for t in traces):
        raise InputFileError(path, "'device_traces' is not a list of per-device lists of trace entries")
    seen: set[int] = set()
    for d, t in enumerate(traces):
        if t and not (isinstance(t[0], dict) and "action" in t[0]):
            raise InputFileError(path, f"device_traces[{d}] does not hold trace entries (dicts with an 'action')")
        if t and id(t) in seen:  # see _check_segments: one list named twice would be replayed twice
            raise InputFileError(path, f"device_traces[{d}] repeats the trace of an earlier device (torch writes each once)")
        seen.add(id(t))
    return traces


def _annotations(obj) -> list[dict]:
    """external_annotations with an integer time and device (others are dropped: they only label phases)."""
    found = obj.get("external_annotations") or []
    if not isinstance(found, list):
        return []
    return [a for a in found if isinstance(a, dict) and _is_int(a.get("time_us"))
            and _is_int(a.get("device", 0), 0) and isinstance(a.get("name", ""), str)
            and isinstance(a.get("stage", ""), str)]


def _key_name(k) -> str:
    return k if isinstance(k, str) else f"<{type(k).__name__}>"


def normalize(obj, path: str | Path) -> Snapshot:
    """The Snapshot for a loaded pickle; InputFileError when it is not a CUDA memory snapshot."""
    if isinstance(obj, list):
        if obj and not all(isinstance(s, dict) for s in obj):
            raise InputFileError(path, "not a CUDA memory snapshot: a pickled list of "
                                       f"{type(obj[0]).__name__}, not of segments")
        return Snapshot("segments", _check_segments(obj, path), [], keys=())
    if isinstance(obj, dict) and "segments" in obj:
        traces = obj.get("device_traces", [])
        settings = obj.get("allocator_settings")
        return Snapshot("snapshot", _check_segments(obj["segments"], path), _check_traces(traces, path),
                        annotations=_annotations(obj),
                        allocator_settings=settings if isinstance(settings, dict) else None,
                        keys=tuple(_key_name(k) for k in obj))
    if isinstance(obj, dict):
        what = f"a dict with keys {', '.join(_key_name(k) for k in list(obj)[:6])}" if obj else "an empty dict"
    else:
        what = f"a pickled {type(obj).__name__}"
    raise InputFileError(path, f"not a CUDA memory snapshot: {what} (expected the dict of "
                               "torch.cuda.memory._snapshot() or the segment list of torch.cuda.memory_snapshot())")


def block_layout(segment: dict):
    """(address, size, requested_size, state, frames) of each block of a segment, in order."""
    addr = segment["address"]
    for b in segment["blocks"]:
        size = b["size"]
        requested = b.get("requested_size")
        frames = b.get("frames")
        if requested is None or frames is None:  # legacy layout: history[0] has real_size and frames
            hist = b.get("history") or [{}]
            requested = requested if requested is not None else hist[0].get("real_size", size)
            frames = frames if frames is not None else hist[0].get("frames", [])
        yield b.get("address", addr), size, requested, b.get("state", "inactive"), frames
        addr += size
