"""Memory really allocated by one step on the CPU: the independent check of the estimator.

The step runs on real CPU tensors under torch.profiler with profile_memory=True. The CPU
allocator (c10/core/impl/alloc_cpu.cpp via c10::reportMemoryUsageToProfiler) reports every
allocation and free with its size; the profiler keeps them as "[memory]" events
(kineto_results().events(), nbytes() > 0 allocated, < 0 freed). Replaying them in time
order gives the step's peak above what was alive when profiling started; adding the
storages alive then (parameters, optimizer state, the batch) gives the absolute peak that
the estimate predicts. Nothing here shares code with the tracker, so agreement means the
tracker saw the allocations the allocator made.

The step is prepared as the estimator assumes: "train" after one warm-up step (optimizer
state allocated) with gradients set to None; "forward" as inference under no_grad.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from lmreport.presets import ModelConfig
from lmreport.workloads import make_workload


@dataclass
class CpuMeasurement:
    peak_bytes: int  # absolute: baseline + the highest rise seen by the profiler
    baseline_bytes: int  # distinct storages alive when profiling started
    rise_bytes: int  # peak above the baseline
    memory_events: int


def _distinct_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def _native_stderr_silenced():
    """Kineto's CPU profiler prints two "USDT: ... profiler_start/stop" lines per use straight
    to file descriptor 2 (no log level turns them off); inside a progress bar they are noise.
    The profiled step raises Python exceptions as usual, so nothing of use is hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure_step(cfg: ModelConfig, batch: int, ctx: int, mode: str, dtype: str = "fp32", *,
                 step: str = "steady", grad: bool = False, seed: int = 0,
                 checkpoint_every: int | None = None, spec=None) -> CpuMeasurement:
    """spec: the implementation (user_model.ModelSpec; None: lmreport's model)."""
    from lmreport.estimate.checkpointing import checkpointed_layers
    w = make_workload(cfg, batch, ctx, mode, device="cpu", dtype=dtype, seed=seed, spec=spec)
    if mode == "train" and step == "steady":
        w.step()  # warm-up: AdamW allocates m and v
    w.model.zero_grad(set_to_none=True)
    alive = list(w.model.parameters()) + [w.inputs, w.targets]
    if w.optimizer is not None:
        alive += [v for st in w.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    baseline = _distinct_bytes(alive)
    kept = []
    with checkpointed_layers(w.model, checkpoint_every), _native_stderr_silenced(), \
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if mode == "forward" and grad:
            with w.autocast():
                kept.append(w.model(w.inputs))
        else:
            w.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = rise = 0
    for e in events:
        cur += e.nbytes()
        rise = max(rise, cur)
    return CpuMeasurement(baseline + rise, baseline, rise, len(events))
