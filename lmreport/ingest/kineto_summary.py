"""A Kineto trace -> the metrics of a profiling record, in the shape nsys_summary gives nsys exports.

The profiling section reads one contract whatever made the profile (see nsys_summary): kernels
with total time and instances, ranges with their durations, the kernels inside each range,
the GPU time of each range, the CUDA API calls. From a trace of torch.profiler they are:

- `kernels`: events of category "kernel" (CUPTI's kernel records, names demangled as nsys
  shows them), summed per name. A trace with no kernel (torch.profiler with CPU activity only)
  has CPU operators instead: "cpu_op" events, each counted for its *self* time (its duration
  less that of the operators it called, so aten::linear is not counted again in aten::mm),
  and `activity` says "cpu" so that no table passes them off as GPU kernels.
- `ranges`: "user_annotation" events, i.e. `torch.profiler.record_function` ranges (lmreport
  opens one next to each NVTX range: timing.profiler_range). "ProfilerStep#3" counts as
  "ProfilerStep".
- `range_kernels`: a kernel belongs to every range open when it was *launched* (its
  cudaLaunchKernel/cuLaunchKernel event, matched by "correlation"); a kernel without one, and a
  CPU operator, by its own start. This follows time, not threads: the kernels that PyTorch's
  autograd thread launches during loss.backward() count in "backward", where nsys's
  nvtx_kern_sum (ranges of the launching thread) leaves them outside every range.
- `range_gpu`: "gpu_user_annotation" events, Kineto's projection of each range onto the GPU
  timeline (nvtx_gpu_proj_sum's counterpart).
- `api`: "cuda_runtime" and "cuda_driver" events per name (cuda_api_sum's counterpart).
- `busy`: per measured step (a "step" range, else "ProfilerStep#N", else the whole trace), the
  share of its wall time during which the GPU runs nothing: no kernel, copy or memset
  (lmreport.intervals). For a CPU trace the same split over CPU operators: the time in no
  operator is the Python interpreter and the framework between operators.

Times are integer nanoseconds (`_ns`); Kineto writes microseconds with three decimals.
"""

from __future__ import annotations

import math
import re
import statistics
from array import array
from pathlib import Path

from lmreport.errors import InputFileError
from lmreport.ingest.kineto_read import TraceHeader, iter_events, read_header
from lmreport.ingest.nsys_summary import (MAX_KERNELS_PER_RANGE, MAX_RANGES, STUDY_RANGES, class_ns,
                                          kernel_row)
from lmreport.intervals import union, window_use
from lmreport.kernels import operator_class

PROFILER = "torch.profiler"
KERNEL = "kernel"
GPU_ACTIVITY = ("kernel", "gpu_memcpy", "gpu_memset")  # what keeps a GPU busy
LAUNCHES = ("cuda_runtime", "cuda_driver")
STEP_RANGES = ("step", "ProfilerStep")  # windows of the busy/idle split, first found wins
_STEP_NUMBER = re.compile(r"#\d+$")
API_TOP = 10
_NUMBERS = (int, float)
_NO_ARGS: dict = {}


def range_name(raw: str) -> str:
    """'ProfilerStep#12' -> 'ProfilerStep' (one range per step otherwise); other names as they are."""
    return _STEP_NUMBER.sub("", (raw or "").strip())


def _ns(x, what: str) -> int:
    """Kineto's microseconds (float, three decimals) -> integer nanoseconds; ValueError for non-numbers."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{what} {x!r} is not a finite number of microseconds")
    return round(x * 1000)


def operator_row(name: str, self_ns: int, instances: int) -> dict:
    """A CPU operator in the shape of nsys_summary.kernel_row (the name kept whole: aten::mm)."""
    return {"name": name, "full_name": name, "class": operator_class(name), "total_ns": int(self_ns),
            "instances": int(instances)}


class Collector:
    """Takes events one at a time and keeps only what the summary needs, in compact arrays."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.name_list: list[str] = []
        self.events = 0
        self.categories: dict[str, int] = {}
        # kernels: name id, start, duration, correlation, device
        self.k_name, self.k_ts, self.k_dur = array("q"), array("q"), array("q")
        self.k_corr, self.k_dev = array("q"), array("q")
        # copies and memsets: start, duration, device; totals per name
        self.m_ts, self.m_dur, self.m_dev = array("q"), array("q"), array("q")
        self.memops: dict[str, int] = {}
        # kernel launches (CUDA runtime/driver calls with a correlation id): correlation, start
        self.l_corr, self.l_ts = array("q"), array("q")
        self.api: dict[str, list[int]] = {}  # name -> [calls, total ns]
        # CPU operators: name id, thread, start, duration
        self.c_name, self.c_tid, self.c_ts, self.c_dur = array("q"), array("q"), array("q"), array("q")
        self.tids: dict[object, int] = {}
        # record_function ranges (CPU side) and their GPU projection
        self.ranges: list[tuple[str, int, int]] = []  # (name, start, end)
        self.gpu_ranges: dict[str, list[int]] = {}  # name -> [instances, total ns]

    def _id(self, name: str) -> int:
        i = self.names.get(name)
        if i is None:
            i = self.names[name] = len(self.name_list)
            self.name_list.append(name)
        return i

    def add(self, e: dict) -> None:
        """One event of the trace. Written for speed (a trace has millions): one dict lookup per field."""
        self.events += 1
        if e.get("ph") != "X":
            return  # metadata, flows, instant events
        cat = e.get("cat")
        if cat.__class__ is not str:
            return
        self.categories[cat] = self.categories.get(cat, 0) + 1
        name, ts, dur = e.get("name"), e.get("ts"), e.get("dur")
        if name.__class__ is not str:
            raise ValueError(f"a {cat} event has no name")
        if ts.__class__ not in _NUMBERS or dur.__class__ not in _NUMBERS:
            _ns(ts, "ts"), _ns(dur, "dur")  # raises, saying which
        ts, dur = round(ts * 1000), round(dur * 1000)  # µs with three decimals -> ns (OverflowError: inf)
        if dur < 0:
            raise ValueError(f"{cat} event {name[:60]!r} has a negative duration")
        if cat == "cpu_op":
            self.c_name.append(self._id(name))
            self.c_tid.append(self.tids.setdefault(e.get("tid"), len(self.tids)))
            self.c_ts.append(ts)
            self.c_dur.append(dur)
        elif cat == KERNEL:
            args = e.get("args") or _NO_ARGS
            self.k_name.append(self._id(name))
            self.k_ts.append(ts)
            self.k_dur.append(dur)
            self.k_corr.append(_int(args.get("correlation"), -1))
            self.k_dev.append(_int(args.get("device"), _int(e.get("pid"), 0)))
        elif cat in LAUNCHES:
            calls = self.api.get(name)
            if calls is None:
                calls = self.api[name] = [0, 0]
            calls[0] += 1
            calls[1] += dur
            corr = (e.get("args") or _NO_ARGS).get("correlation")
            if corr.__class__ is int and corr >= 0:
                self.l_corr.append(corr)
                self.l_ts.append(ts)
        elif cat in ("gpu_memcpy", "gpu_memset"):
            args = e.get("args") or _NO_ARGS
            self.m_ts.append(ts)
            self.m_dur.append(dur)
            self.m_dev.append(_int(args.get("device"), _int(e.get("pid"), 0)))
            self.memops[name] = self.memops.get(name, 0) + dur
        elif cat == "user_annotation":
            self.ranges.append((range_name(name), ts, ts + dur))
        elif cat == "gpu_user_annotation":
            g = self.gpu_ranges.setdefault(range_name(name), [0, 0])
            g[0] += 1
            g[1] += dur

    # --- the summary -----------------------------------------------------------------------

    @property
    def activity(self) -> str | None:
        return "cuda" if self.k_name else "cpu" if self.c_name else None

    def summary(self, steps: int | None = None, header: TraceHeader | None = None) -> dict:
        import numpy as np

        activity = self.activity
        m: dict = {"profiler": PROFILER, "activity": activity, "reports": sorted(self.categories),
                   "trace_events": self.events, "truncated_names": False}
        if activity == "cuda":
            name_ids, dur = np.frombuffer(self.k_name, dtype=np.int64), np.frombuffer(self.k_dur, dtype=np.int64)
            at = self._launch_times(np)  # when each kernel was launched (CPU clock)
            rows = self._rows(np, name_ids, dur, kernel_row)
        elif activity == "cpu":
            name_ids = np.frombuffer(self.c_name, dtype=np.int64)
            dur = self._self_times(np)
            at = np.frombuffer(self.c_ts, dtype=np.int64)
            rows = self._rows(np, name_ids, dur, operator_row)
        else:
            rows, name_ids, dur, at = [], None, None, None
        m["kernels"] = rows
        m["kernel_total_ns"] = sum(r["total_ns"] for r in rows)
        m["class_ns"] = class_ns(rows)
        spans = self._spans_by_name()
        m["ranges"] = self._range_stats(spans)
        # the time windows of the ranges kept and of the steps (busy/idle), each merged once
        windows = {n: union(spans[n]) for n in {*m["ranges"], *(n for n in STEP_RANGES if n in spans)}}
        m["range_kernels"] = self._range_kernels(np, name_ids, dur, at, activity, m["ranges"], windows) if rows else {}
        if self.gpu_ranges:
            cpu_total = {n: v["total_ns"] for n, v in m["ranges"].items()}
            m["range_gpu"] = {n: {"proj_ns": t, "instances": k, "range_ns": cpu_total.get(n)}
                              for n, (k, t) in sorted(self.gpu_ranges.items(), key=lambda kv: -kv[1][1])[:MAX_RANGES]}
        if self.api:
            top = sorted(self.api.items(), key=lambda kv: -kv[1][1])
            m["api"] = {"total_ns": sum(t for _, (_, t) in top),
                        "top": [{"name": n, "total_ns": t, "calls": k} for n, (k, t) in top[:API_TOP]]}
        if self.memops:
            m["memops_ns"] = dict(sorted(self.memops.items(), key=lambda kv: -kv[1]))
        m["busy"] = self._busy(np, activity, windows)
        ranges = m["ranges"]
        m["steps"] = steps or (ranges.get("step") or {}).get("instances") or \
            (ranges.get("ProfilerStep") or {}).get("instances") or None
        # the kernels include warm-up ones only if some ran in a "warmup" range: an empty one (a profiler
        # recording from its start around zero warm-up steps) or one the schedule left out does not count
        m["includes_warmup"] = ("warmup" in m["range_kernels"]) if ranges else None
        devices = header.devices if header else []
        m["trace_devices"] = [{k: d.get(k) for k in ("id", "name", "totalGlobalMem", "computeMajor", "computeMinor",
                                                     "numSms") if k in d} for d in devices]
        return m

    def _rows(self, np, name_ids, dur, make) -> list[dict]:
        n = len(self.name_list)
        totals = np.bincount(name_ids, weights=dur, minlength=n)
        counts = np.bincount(name_ids, minlength=n)
        rows = [make(self.name_list[i], int(round(totals[i])), int(counts[i])) for i in np.nonzero(counts)[0]]
        return sorted(rows, key=lambda r: (-r["total_ns"], r["full_name"]))

    def _launch_times(self, np):
        """Each kernel's launch time: its runtime/driver call with the same correlation id, else its own start."""
        k_ts = np.frombuffer(self.k_ts, dtype=np.int64).copy()
        if not self.l_corr:
            return k_ts
        l_corr = np.frombuffer(self.l_corr, dtype=np.int64)
        l_ts = np.frombuffer(self.l_ts, dtype=np.int64)
        order = np.argsort(l_corr, kind="stable")
        l_corr, l_ts = l_corr[order], l_ts[order]
        k_corr = np.frombuffer(self.k_corr, dtype=np.int64)
        idx = np.clip(np.searchsorted(l_corr, k_corr), 0, len(l_corr) - 1)
        found = (l_corr[idx] == k_corr) & (k_corr >= 0)
        k_ts[found] = l_ts[idx[found]]
        return k_ts

    def _self_times(self, np):
        """Each CPU operator's duration less its children's (operators nest on their thread)."""
        ts = np.frombuffer(self.c_ts, dtype=np.int64)
        dur = np.frombuffer(self.c_dur, dtype=np.int64)
        tid = np.frombuffer(self.c_tid, dtype=np.int64)
        self_ns = dur.copy()
        order = np.lexsort((-dur, ts, tid))  # by thread, then start, the enclosing (longer) one first
        stack: list[tuple[int, int, int]] = []  # (thread, end, index)
        for i in order.tolist():
            t, start, end = int(tid[i]), int(ts[i]), int(ts[i] + dur[i])
            while stack and (stack[-1][0] != t or stack[-1][1] <= start):
                stack.pop()
            if stack:
                self_ns[stack[-1][2]] -= min(end, stack[-1][1]) - start
            stack.append((t, end, i))
        return np.maximum(self_ns, 0)

    def _spans_by_name(self) -> dict[str, list[tuple[int, int]]]:
        """record_function ranges grouped by name: name -> [(start, end), ...] in trace order."""
        by_name: dict[str, list[tuple[int, int]]] = {}
        for name, start, end in self.ranges:
            by_name.setdefault(name, []).append((start, end))
        return by_name

    def _range_stats(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, dict]:
        """The study's ranges, then the others by total time: at most MAX_RANGES."""
        by_name = {name: [e - s for s, e in ss] for name, ss in spans.items()}
        out = {}
        for name, durs in sorted(by_name.items(), key=lambda kv: (kv[0] not in STUDY_RANGES, -sum(kv[1])))[:MAX_RANGES]:
            out[name] = {"instances": len(durs), "total_ns": sum(durs), "avg_ns": sum(durs) / len(durs),
                         "med_ns": statistics.median(durs), "min_ns": min(durs), "max_ns": max(durs),
                         "stddev_ns": statistics.stdev(durs) if len(durs) > 1 else 0.0}
        return out

    def _range_kernels(self, np, name_ids, dur, at, activity, ranges: dict[str, dict],
                       windows: dict[str, list[tuple[int, int]]]) -> dict[str, dict]:
        """The kernels (or CPU operators) of each range of `ranges` (those _range_stats keeps)."""
        n = len(self.name_list)
        make = kernel_row if activity == "cuda" else operator_row
        out: dict[str, dict] = {}
        for name in ranges:
            if not windows[name]:
                continue  # instances of zero duration only: they hold nothing
            starts = np.array([s for s, _ in windows[name]], dtype=np.int64)
            ends = np.array([e for _, e in windows[name]], dtype=np.int64)
            idx = np.searchsorted(starts, at, side="right") - 1
            inside = (idx >= 0) & (at < ends[np.clip(idx, 0, None)])
            if not inside.any():
                continue
            totals = np.bincount(name_ids[inside], weights=dur[inside], minlength=n)
            counts = np.bincount(name_ids[inside], minlength=n)
            rows = sorted((make(self.name_list[i], int(round(totals[i])), int(counts[i])) for i in np.nonzero(counts)[0]),
                          key=lambda r: (-r["total_ns"], r["full_name"]))
            out[name] = {"kernel_ns": sum(r["total_ns"] for r in rows), "nvtx_instances": ranges[name]["instances"],
                         "class_ns": class_ns(rows), "kernels": rows[:MAX_KERNELS_PER_RANGE]}
        return {k: out[k] for k in sorted(out, key=lambda k: (k not in STUDY_RANGES, -out[k]["kernel_ns"]))}

    def _busy(self, np, activity, windows_by_name: dict[str, list[tuple[int, int]]]) -> dict | None:
        """Per measured step (the windows of the first of STEP_RANGES found): wall time, time with some
        activity, and the idle share."""
        if activity == "cuda":
            dev = np.frombuffer(self.k_dev, dtype=np.int64)
            k_dur = np.frombuffer(self.k_dur, dtype=np.int64)
            devices = np.unique(dev)
            main = int(max(devices, key=lambda d: int(k_dur[dev == d].sum())))  # the GPU the cell ran on
            intervals = [(s, s + d) for s, d, v in zip(self.k_ts, self.k_dur, self.k_dev) if v == main]
            intervals += [(s, s + d) for s, d, v in zip(self.m_ts, self.m_dur, self.m_dev) if v == main]
            what, device = "gpu", main
        elif activity == "cpu":
            intervals = [(s, s + d) for s, d in zip(self.c_ts, self.c_dur)]
            what, device = "cpu", None
        else:
            return None
        window, windows = "trace", []
        for name in STEP_RANGES:
            windows = windows_by_name.get(name, [])
            if windows:
                window = name
                break
        if not windows:
            windows = [(min(s for s, _ in intervals), max(e for _, e in intervals))]
        use = window_use(intervals, windows)
        shares = [u.idle_share for u in use if u.idle_share is not None]
        wall, busy = sum(u.wall_ns for u in use), sum(u.busy_ns for u in use)
        return {"activity": what, "device": device, "window": window, "windows": len(use),
                "wall_ns": wall, "busy_ns": busy, "idle_share": (wall - busy) / wall if wall else None,
                "idle_share_min": min(shares) if shares else None, "idle_share_max": max(shares) if shares else None,
                "steps": [u.to_json() for u in use[:100]]}


def _int(x, default: int) -> int:
    if x.__class__ is int:
        return x
    return int(x) if x.__class__ is float and math.isfinite(x) else default


def trace_header(path: str | Path) -> TraceHeader:
    """The trace's header (kineto_read.read_header, at most its first MiB), refusing at once what is not
    a Kineto trace's JSON object (an empty file, a bare array, another JSON value) rather than after
    streaming the whole file: InputFileError (one line)."""
    path = Path(path)
    header = read_header(path)
    if header.kind == "empty":
        raise InputFileError(path, "empty file (only white space), not a trace")
    if header.kind in ("array", "other"):
        what = "a JSON array (Chrome's bare array format)" if header.kind == "array" else "a JSON value"
        raise InputFileError(path, f"is {what}, not a Kineto trace: torch.profiler writes an object with "
                                   "\"traceEvents\" (prof.export_chrome_trace)")
    return header


def summarise_trace(path: str | Path, steps: int | None = None, header: TraceHeader | None = None) -> dict:
    """The record metrics of one Kineto trace file; InputFileError (one line) for anything not a trace.
    `header`: the file's trace_header when the caller has read it already."""
    path = Path(path)
    header = header or trace_header(path)
    collector = Collector()
    try:
        for event in iter_events(path):
            collector.add(event)
    except ValueError as e:
        raise InputFileError(path, f"traceEvents item {collector.events - 1}: {e}") from None
    except OverflowError:
        raise InputFileError(path, f"traceEvents item {collector.events - 1}: its ts or dur is not a finite "
                                   "number of microseconds") from None
    if collector.events == 0 and header.has_events_key is not True:
        raise InputFileError(path, "JSON without \"traceEvents\": not a Chrome/Kineto trace (torch.profiler's "
                                   "prof.export_chrome_trace writes one)")
    return collector.summary(steps, header)
