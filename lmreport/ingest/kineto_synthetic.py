"""Synthetic torch.profiler (Kineto) traces of a CUDA run, with known kernels and intervals (tests, benchmarks).

No GPU is needed to test what lmreport reads from a CUDA trace, so this writes one as Kineto's
ChromeTraceLogger does (libkineto/src/output_json.cpp, CuptiActivity.cpp): the header
(schemaVersion, deviceProperties, metadata, displayTimeUnit, baseTimeNanoseconds), then
"traceEvents" with process and thread metadata ("ph": "M"), complete events ("ph": "X") whose
"ts" and "dur" are microseconds with three decimals, and the trace's end ("Record Window End",
then "traceName"). Per launch, as in a real trace of PyTorch on CUDA:

- a "cpu_op" (an ATen operator) on the launching thread, with its "External id";
- inside it a "cuda_runtime" event "cudaLaunchKernel" (args "cbid": 211, "correlation");
- the "kernel" on the GPU (pid = device, tid = stream; args "queued", "device", "context",
  "stream", "correlation", "registers per thread", "shared memory", "blocks per SM",
  "warps per SM", "grid", "block", "est. achieved occupancy %"), starting after its launch
  and after the kernel before it on the same stream;
- an "ac2g" flow from the launch to the kernel ("ph": "s" / "f", "bp": "e").

record_function ranges are "user_annotation" events on the CPU thread, and Kineto's GPU
projection of each range ("gpu_user_annotation": from the first to the last of its kernels,
1 ns earlier and 2 ns longer) on the GPU's stream. Steps under a profiler schedule are
wrapped in "ProfilerStep#N". Events are written as they are made (to a file, for traces of
hundreds of megabytes) and the truth is kept: kernel intervals, and the "step" windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, TextIO

DEVICE = {"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 84929216512, "computeMajor": 9,
          "computeMinor": 0, "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048, "regsPerBlock": 65536,
          "warpSize": 32, "sharedMemPerBlock": 49152, "numSms": 132, "regsPerMultiprocessor": 65536,
          "sharedMemPerBlockOptin": 232448, "sharedMemPerMultiprocessor": 233472}
CBID_LAUNCH_KERNEL = 211  # CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernel_v7000
CBID_DEVICE_SYNCHRONIZE = 165  # CUPTI_RUNTIME_TRACE_CBID_cudaDeviceSynchronize_v3020


def us(ns: int) -> str:
    """Kineto's timestamps: integer nanoseconds printed as microseconds with three decimals."""
    return f"{ns // 1000}.{ns % 1000:03d}"


@dataclass
class Launch:
    """One kernel (or copy) a range launches: on the main thread, or on PyTorch's autograd thread."""

    kernel: str
    dur_ns: int
    op: str = "aten::mm"  # the ATen operator that launches it
    thread: str = "main"  # "main" or "autograd"
    kind: str = "kernel"  # "kernel" or "gpu_memcpy"


@dataclass
class Range:
    """A record_function range; `sync` ranges end only when the GPU has finished (timing.py's phases and steps)."""

    name: str
    children: list = field(default_factory=list)
    sync: bool = False


class KinetoTraceWriter:
    """Writes a Kineto trace event by event; the clock is in integer nanoseconds since `base_ns`."""

    def __init__(self, out: TextIO, pid: int = 4242, autograd_tid: int = 4301, device: dict = DEVICE,
                 stream: int = 7, base_ns: int = 1_764_000_000_000_000_000, trace_name: str = "trace.json"):
        self.out, self.pid, self.tids = out, pid, {"main": pid, "autograd": autograd_tid}
        self.device, self.stream, self.trace_name = device, stream, trace_name
        self.correlation, self.external_id = 1000, 1
        self.cpu_ns, self.gpu_ns = 1_000_000, 1_000_000  # both clocks start 1 ms into the trace
        self.kernels: list[tuple[int, int]] = []  # every GPU interval written, (start, end) ns
        self.windows: dict[str, list[tuple[int, int]]] = {}  # range name -> its instances
        self.launch_ns, self.op_ns, self.latency_ns, self.sync_ns = 2_500, 6_000, 4_000, 3_000
        self._first = True
        self._header()

    # --- low level: one event each ------------------------------------------------------------

    def _header(self) -> None:
        self.out.write('{\n  "schemaVersion": 1,\n  "deviceProperties": [\n    ' + json.dumps(self.device) + "\n  ],\n"
                       '  "cupti_version": 24,\n  "cuda_runtime_version": 12060,\n  "cuda_driver_version": 12080,\n'
                       '  "trace_id": "0F9C2E6A5B3D4C1E8A7F6B5C4D3E2F10",\n'
                       '  "displayTimeUnit": "ms",\n  "baseTimeNanoseconds": 1764000000000000000,\n  "traceEvents": [')
        for pid, name, label in ((self.pid, "python", "CPU"), (self.device["id"], "python", f"GPU {self.device['id']}")):
            self._event({"name": "process_name", "ph": "M", "ts": "0.000", "pid": pid, "tid": 0, "args": {"name": name}})
            self._event({"name": "process_labels", "ph": "M", "ts": "0.000", "pid": pid, "tid": 0,
                         "args": {"labels": label}})
        for tid in self.tids.values():
            self._event({"name": "thread_name", "ph": "M", "ts": "0.000", "pid": self.pid, "tid": tid,
                         "args": {"name": f"thread {tid} (python)"}})
        self._event({"name": "thread_name", "ph": "M", "ts": "0.000", "pid": self.device["id"], "tid": self.stream,
                     "args": {"name": f"stream {self.stream}"}})

    def _event(self, e: dict) -> None:
        text = json.dumps(e)
        for key in ("ts", "dur"):  # numbers with exactly three decimals, as Kineto prints them
            if isinstance(e.get(key), str):
                text = text.replace(f'"{key}": "{e[key]}"', f'"{key}": {e[key]}', 1)
        self.out.write(("\n  " if self._first else ",\n  ") + text)
        self._first = False

    def complete(self, cat: str, name: str, pid, tid, start_ns: int, dur_ns: int, args: dict | None = None) -> None:
        e = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": us(start_ns), "dur": us(dur_ns)}
        if args:
            e["args"] = args
        self._event(e)

    def user_annotation(self, name: str, start_ns: int, end_ns: int, thread: str = "main") -> None:
        self.external_id += 1
        self.complete("user_annotation", name, self.pid, self.tids[thread], start_ns, end_ns - start_ns,
                      {"External id": self.external_id, "Record function id": 0, "Ev Idx": self.external_id})
        self.windows.setdefault(name, []).append((start_ns, end_ns))

    def gpu_user_annotation(self, name: str, start_ns: int, end_ns: int) -> None:
        # output_json.cpp: "Make it start one ns earlier and end 2 ns later"
        self.complete("gpu_user_annotation", name, self.device["id"], self.stream, start_ns - 1, end_ns - start_ns + 2,
                      {"External id": self.external_id})

    def kernel(self, name: str, cpu_ns: int, gpu_start_ns: int, dur_ns: int, op: str = "aten::mm",
               thread: str = "main", kind: str = "kernel", device: int | None = None) -> tuple[int, int]:
        """A launch at cpu_ns (cpu_op + cudaLaunchKernel + flow) of a kernel that runs from gpu_start_ns."""
        self.correlation += 1
        self.external_id += 1
        corr, ext, tid = self.correlation, self.external_id, self.tids[thread]
        self.complete("cpu_op", op, self.pid, tid, cpu_ns, self.op_ns,
                      {"External id": ext, "Record function id": 0, "Ev Idx": ext})
        launch_ts = cpu_ns + 1_000
        runtime = "cudaLaunchKernel" if kind == "kernel" else "cudaMemcpyAsync"
        self.complete("cuda_runtime", runtime, self.pid, tid, launch_ts, self.launch_ns,
                      {"External id": ext, "cbid": CBID_LAUNCH_KERNEL if kind == "kernel" else 41, "correlation": corr})
        dev = self.device["id"] if device is None else device
        if kind == "kernel":
            args = {"External id": ext, "queued": 0, "device": dev, "context": 1, "stream": self.stream,
                    "correlation": corr, "registers per thread": 128, "shared memory": 49152, "blocks per SM": 1.939394,
                    "warps per SM": 7.757576, "grid": [256, 1, 1], "block": [128, 1, 1], "est. achieved occupancy %": 12}
        else:
            args = {"External id": ext, "device": dev, "context": 1, "stream": self.stream, "correlation": corr,
                    "bytes": 4096, "memory bandwidth (GB/s)": 1.5}
        self.complete(kind, name, dev, self.stream, gpu_start_ns, dur_ns, args)
        self._event({"ph": "s", "id": corr, "pid": self.pid, "tid": tid, "ts": us(launch_ts), "cat": "ac2g", "name": "ac2g"})
        self._event({"ph": "f", "id": corr, "pid": dev, "tid": self.stream, "ts": us(gpu_start_ns), "cat": "ac2g",
                     "name": "ac2g", "bp": "e"})
        if dev == self.device["id"]:
            self.kernels.append((gpu_start_ns, gpu_start_ns + dur_ns))
        return gpu_start_ns, gpu_start_ns + dur_ns

    def close(self, end_ns: int | None = None) -> None:
        end = end_ns if end_ns is not None else max(self.cpu_ns, self.gpu_ns) + 1_000
        self._event({"name": "Record Window End", "ph": "i", "s": "g", "pid": "", "tid": "", "ts": us(end)})
        self.out.write('\n  ],\n  "traceName": ' + json.dumps(self.trace_name) + "\n}\n")

    # --- high level: a workload's steps ---------------------------------------------------------

    def run(self, node) -> tuple[int | None, int | None]:
        """Write a Range tree on the timeline; returns the GPU span of its kernels (None, None without any)."""
        if isinstance(node, Launch):
            start = max(self.gpu_ns, self.cpu_ns + self.latency_ns)
            span = self.kernel(node.kernel, self.cpu_ns, start, node.dur_ns, node.op, node.thread, node.kind)
            self.cpu_ns += self.op_ns + 500
            self.gpu_ns = span[1]
            return span
        start_ns = self.cpu_ns
        self.cpu_ns += 1_000
        first, last = None, None
        for child in node.children:
            a, b = self.run(child)
            if a is not None:
                first = a if first is None else min(first, a)
                last = b if last is None else max(last, b)
        if node.sync:  # timing.py synchronises before a phase or a step ends
            self.complete("cuda_runtime", "cudaDeviceSynchronize", self.pid, self.tids["main"], self.cpu_ns,
                          max(self.gpu_ns - self.cpu_ns, 0) + self.sync_ns,
                          {"cbid": CBID_DEVICE_SYNCHRONIZE, "correlation": 0})
            self.cpu_ns = max(self.cpu_ns, self.gpu_ns) + self.sync_ns
        self.cpu_ns += 1_000
        self.user_annotation(node.name, start_ns, self.cpu_ns)
        if first is not None and not node.name.startswith("ProfilerStep#"):
            self.gpu_user_annotation(node.name, first, last)
        return first, last


def write_trace(out: TextIO, steps: Iterable[Range], **kwargs) -> KinetoTraceWriter:
    """A whole trace of these steps (each a Range tree, e.g. ProfilerStep#N > step > forward > ...)."""
    w = KinetoTraceWriter(out, **kwargs)
    for step in steps:
        w.run(step)
        w.cpu_ns += 20_000  # the loop between steps: Python, prof.step()
    w.close()
    return w


def spread(total_ns: int, n: int) -> list[int]:
    """n integer durations adding up to total_ns exactly (the first total % n are 1 ns longer)."""
    base, extra = divmod(total_ns, n)
    return [base + (i < extra) for i in range(n)]
