"""Replay a device's allocator trace into the active-memory timeline (pure Python + numpy).

This follows PyTorch's own viewer, `process_alloc_data` in torch/utils/viz/MemoryViz.js
(the "Active Memory Timeline" of torch.cuda._memory_viz.trace_plot):
- an `alloc` adds its size; a `free_completed` (or `free`, the viewer's merge of
  free_requested + free_completed) removes the allocation at that address; a
  `free_requested` alone changes nothing (the block is still in use until completed);
- memory already allocated when recording started is counted from the first event: the
  frees of addresses the trace never allocated, and the blocks still `active_allocated` in
  the final segments whose address the trace did not allocate (with their requested size).
Sizes are the requested bytes (what the trace records), not the allocator's rounded blocks.
One difference, on purpose: the viewer takes its maximum after each event only; here the
peak also considers the state before the first event (it matters only when the trace
starts with frees).

Reserved memory (what cudaMalloc holds) is replayed the same way from segment_alloc /
segment_map (+) and segment_free / segment_unmap (-), anchored to the final segments' sizes.

The loop touches each event once and keeps per-event numbers in compact arrays, so a
million-event trace replays in about a second; frames are resolved only for the largest
allocations.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np

from lmreport.errors import InputFileError
from lmreport.ingest.snapshot_format import Snapshot, block_layout
from lmreport.ingest.snapshot_frames import FrameResolver

_SEG_UP = ("segment_alloc", "segment_map")
_SEG_DOWN = ("segment_free", "segment_unmap")
MAX_FRAME_LOOKUPS = 200_000  # bound on frames resolved for the top allocations


@dataclass
class Allocation:
    size_bytes: int
    frame: str | None  # "file:line:function" (see snapshot_frames), None without frames
    count: int  # allocations of this size from this frame
    recorded: bool  # False: allocated before recording started (found in the segments or a free)


@dataclass
class Phase:
    name: str
    start_ms: float
    end_ms: float


@dataclass
class DeviceReplay:
    device: int
    events: int
    actions: dict[str, int]
    initial_active_bytes: int  # allocated before the first recorded event
    peak_active_bytes: int
    peak_event: int  # index of the event that first reached the peak; -1: before the first event
    peak_time_ms: float | None  # since the first event (None when entries carry no time_us)
    peak_phase: str | None  # annotation or phase that was running at the peak
    final_active_bytes: int
    initial_reserved_bytes: int
    peak_reserved_bytes: int
    final_reserved_bytes: int
    ooms: list[dict]
    top_allocations: list[Allocation]
    timeline: dict  # downsampled: x, x_unit ("ms" | "event"), active_bytes, reserved_bytes
    phases: list[Phase] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def annotation_phases(annotations: list[dict], device: int, t0_us: int | None) -> list[Phase]:
    """START/END external annotations of a device as phases (ms since the first event)."""
    if t0_us is None:
        return []
    open_: dict[str, list[int]] = {}
    out = []
    for a in sorted((a for a in annotations if int(a.get("device", device)) == device and "time_us" in a),
                    key=lambda a: a["time_us"]):
        name, stage = str(a.get("name", "?")), str(a.get("stage", "")).upper()
        if stage == "START":
            open_.setdefault(name, []).append(a["time_us"])
        elif stage == "END" and open_.get(name):
            start = open_[name].pop()
            out.append(Phase(name, (start - t0_us) / 1e3, (a["time_us"] - t0_us) / 1e3))
    return sorted(out, key=lambda p: p.start_ms)


def phase_at(phases: list[Phase], t_ms: float | None) -> str | None:
    """The innermost (shortest) phase containing t_ms."""
    if t_ms is None:
        return None
    inside = [p for p in phases if p.start_ms <= t_ms <= p.end_ms]
    return min(inside, key=lambda p: p.end_ms - p.start_ms).name if inside else None


def _downsample(values: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket start indices, bucket maxima): the envelope keeps every peak visible."""
    n = len(values)
    if n <= points:
        return np.arange(n), values
    starts = np.unique(np.linspace(0, n, points + 1, dtype=np.int64)[:-1])
    return starts, np.maximum.reduceat(values, starts)


def replay_device(snap: Snapshot, device: int, path: str | Path = "<snapshot>", top: int = 10,
                  points: int = 1500, phases: list[Phase] | None = None) -> DeviceReplay:
    trace = snap.trace_of(device)
    n = len(trace)
    live: dict[int, int] = {}
    rel = maxrel = rres = maxres = 0
    maxi = -1
    freed_before = 0
    act, res = array("q"), array("q")
    times = array("q")
    alloc_sizes, alloc_refs = array("q"), array("q")
    pre_freed: list[int] = []
    ooms: list[dict] = []
    has_time = bool(trace) and "time_us" in trace[0]
    # local names: this loop runs once per trace entry (a million for a large snapshot)
    act_append, res_append, time_append = act.append, res.append, times.append
    size_append, ref_append, live_pop = alloc_sizes.append, alloc_refs.append, live.pop
    try:
        counts = Counter(map(itemgetter("action"), trace))
    except (KeyError, TypeError):
        bad = next((j for j, e in enumerate(trace) if not (isinstance(e, dict) and isinstance(e.get("action"), str))), "?")
        raise InputFileError(path, f"trace entry {bad} of device {device} is not a trace entry "
                                   "(a dict with a string 'action')") from None
    i = -1
    try:
        for i, e in enumerate(trace):
            a = e["action"]
            if a == "alloc":
                s = e["size"]
                live[e["addr"]] = s
                rel += s
                size_append(s)
                ref_append(i)
                if rel > maxrel:
                    maxrel, maxi = rel, i
            elif a == "free_completed" or a == "free":
                s = live_pop(e["addr"], None)
                if s is None:  # allocated before recording started
                    s = e["size"]
                    freed_before += s
                    pre_freed.append(i)
                rel -= s
            elif a in _SEG_UP:
                rres += e["size"]
                if rres > maxres:
                    maxres = rres
            elif a in _SEG_DOWN:
                rres -= e["size"]
            elif a == "oom":
                ooms.append({"event": i, "size_bytes": e.get("size"), "device_free_bytes": e.get("device_free")})
            act_append(rel)
            res_append(rres)
            if has_time:
                time_append(e["time_us"])
    except (KeyError, TypeError, OverflowError) as err:  # OverflowError: a size beyond int64 (array "q")
        raise InputFileError(path, f"trace entry {i} of device {device} is malformed ({type(err).__name__}: {err})") from None

    segments = snap.segments_of(device)
    pre_blocks = []  # (requested size, frames) of blocks live at the end that the trace never allocated
    for seg in segments:
        for addr, _size, requested, state, frames in block_layout(seg):
            if state == "active_allocated" and addr not in live:
                pre_blocks.append((requested, frames))
    initial = freed_before + sum(s for s, _ in pre_blocks)
    final_reserved = sum(int(s["total_size"]) for s in segments)
    initial_reserved = final_reserved - rres

    t0 = times[0] if has_time and times else None
    peak_time = None if maxi < 0 or t0 is None else (times[maxi] - t0) / 1e3
    if phases is None:
        phases = annotation_phases(snap.annotations, device, t0)

    timeline = _timeline(np.frombuffer(act, dtype=np.int64) + initial, np.frombuffer(res, dtype=np.int64) + initial_reserved,
                         np.frombuffer(times, dtype=np.int64) if has_time else None, initial, initial_reserved, points)
    tops = _top_allocations(trace, alloc_sizes, alloc_refs, pre_blocks, pre_freed, top)
    return DeviceReplay(
        device=device, events=n, actions=dict(counts), initial_active_bytes=initial,
        peak_active_bytes=initial + maxrel, peak_event=maxi, peak_time_ms=peak_time,
        peak_phase=phase_at(phases, peak_time), final_active_bytes=initial + rel,
        initial_reserved_bytes=initial_reserved, peak_reserved_bytes=initial_reserved + maxres,
        final_reserved_bytes=final_reserved, ooms=ooms, top_allocations=tops, timeline=timeline, phases=phases)


def _timeline(active: np.ndarray, reserved: np.ndarray, times: np.ndarray | None, initial: int,
              initial_reserved: int, points: int) -> dict:
    if len(active) == 0:
        return {"x": [0.0], "x_unit": "event", "active_bytes": [int(initial)], "reserved_bytes": [int(initial_reserved)]}
    starts, act_max = _downsample(active, points)
    _, res_max = _downsample(reserved, points)
    if times is not None:
        x = ((times[starts] - times[0]) / 1e3).tolist()
        unit = "ms"
    else:
        x = starts.astype(float).tolist()
        unit = "event"
    # the state before the first event, then one point per bucket
    return {"x": [x[0]] + x, "x_unit": unit, "active_bytes": [int(initial)] + act_max.tolist(),
            "reserved_bytes": [int(initial_reserved)] + res_max.tolist()}


def _top_allocations(trace, alloc_sizes, alloc_refs, pre_blocks, pre_freed, top: int) -> list[Allocation]:
    """The `top` largest distinct (size, source frame) pairs, each with how many allocations share it."""
    sizes = np.concatenate([np.frombuffer(alloc_sizes, dtype=np.int64),
                            np.array([s for s, _ in pre_blocks], dtype=np.int64),
                            np.array([trace[i]["size"] for i in pre_freed], dtype=np.int64)])
    n_alloc, n_blocks = len(alloc_sizes), len(pre_blocks)
    order = np.argsort(-sizes, kind="stable")
    resolver = FrameResolver()
    pairs: dict[tuple[int, str | None, bool], int] = {}
    threshold = None
    for lookups, j in enumerate(order.tolist()):
        size = int(sizes[j])
        if threshold is not None and size < threshold or lookups >= MAX_FRAME_LOOKUPS:
            break
        if j < n_alloc:
            frames, recorded = trace[alloc_refs[j]].get("frames"), True
        elif j < n_alloc + n_blocks:
            frames, recorded = pre_blocks[j - n_alloc][1], False
        else:
            frames, recorded = trace[pre_freed[j - n_alloc - n_blocks]].get("frames"), False
        key = (size, resolver.source_frame(frames), recorded)
        if key in pairs:
            pairs[key] += 1
        elif len(pairs) < top:
            pairs[key] = 1
            if len(pairs) == top:
                threshold = size
    return [Allocation(s, f, c, r) for (s, f, r), c in pairs.items()]
