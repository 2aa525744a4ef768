"""torch.profiler (Kineto) profiles of the shared workload: the profiling section without Nsight Systems.

One cell: the workload of workloads.make_workload, timed by timing.time_phases exactly as the
nsys worker times it, under `torch.profiler.profile` with a schedule that records the measured
steps only. `prof.step()` runs after every step (time_phases' `after_step`), and the schedule

    wait = warmup - 1, warmup = 1, active = steps, repeat = 1

leaves the first warm-up steps unprofiled, lets Kineto start up during the last one (its
"warmup" phase: CUPTI's start-up cost stays out of the measured steps; PyTorch's profiler
recipe recommends one) and records the `steps` measured ones. The ranges are the
record_function twins of the NVTX ranges (timing.profiler_range): "step", "forward",
"backward", "optimizer step", and the attention sub-ranges of model.py.

Activities: CPU and CUDA on a GPU (kernels with their GPU time, CUDA runtime calls, CPU
operators); CPU only on a CPU, where the profile holds CPU operators and the section labels
them so. Shapes, stacks and memory are not recorded: they make traces many times larger and
the section does not use them. The trace is written as `trace.json.gz` beside the record
(open it in Perfetto or chrome://tracing) and read back by the same code as
`lmreport ingest trace` (ingest/kineto_summary.py).
"""

from __future__ import annotations

import gc
from pathlib import Path

from lmreport.presets import model_of

TRACE_FILE = "trace.json.gz"


def schedule_arguments(warmup: int, steps: int) -> dict:
    """torch.profiler.schedule's arguments that record exactly the measured steps after `warmup` others."""
    if steps <= 0 or warmup < 0:
        raise ValueError(f"need steps > 0 and warmup >= 0, not steps={steps}, warmup={warmup}")
    return {"wait": max(warmup - 1, 0), "warmup": min(warmup, 1), "active": steps, "repeat": 1}


def run(config: dict, artifacts_dir: Path) -> dict:
    """Profile one cell; returns {"metrics", "artifacts"} (metrics as kineto_summary gives them)."""
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from lmreport.ingest.kineto_summary import summarise_trace
    from lmreport.timing import time_phases
    from lmreport.user_model import spec_of
    from lmreport.workloads import make_workload

    device = config.get("device", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: this cell profiles GPU kernels")
    out = Path(artifacts_dir)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / TRACE_FILE
    trace.unlink(missing_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])

    def export(prof) -> None:
        prof.export_chrome_trace(str(trace))  # torch gzips a name ending in .gz

    w = make_workload(model_of(config), config["batch"], config["ctx"], config["mode"], device, config["dtype"],
                      spec=spec_of(config))
    try:
        with warnings.catch_warnings():
            # "Profiler won't be using warmup" when a cell has no warm-up step: the cell asked for that
            warnings.filterwarnings("ignore", message=".*warmup.*", category=UserWarning)
            with profile(activities=activities, schedule=schedule(**schedule_arguments(config["warmup"], config["steps"])),
                         on_trace_ready=export, record_shapes=False, with_stack=False, profile_memory=False) as prof:
                stats = time_phases(w.step, device, config["warmup"], config["steps"], after_step=prof.step)
    finally:
        del w
        if device == "cuda":  # free the cell's GPU memory for the next cell (CPU memory goes by reference counting)
            gc.collect()
            torch.cuda.empty_cache()
    if not trace.exists():  # removed above: only the schedule's end of the measured steps writes it
        raise RuntimeError("torch.profiler wrote no trace: its schedule never reached the end of the measured steps")
    metrics = summarise_trace(trace, steps=config["steps"])
    if not metrics["kernels"]:
        raise RuntimeError(f"the trace holds no {'kernels' if device == 'cuda' else 'CPU operators'} ({trace})")
    metrics.update({"source": "profiled", "torch_version": torch.__version__,
                    "python_timing": {f"{name.replace(' ', '_')}_ms": s.to_metric() for name, s in stats.items()},
                    "warnings": []})
    if device == "cuda" and metrics["activity"] != "cuda":
        metrics["warnings"].append("torch.profiler recorded no CUDA kernel on this GPU (CUPTI unavailable?): the "
                                   "tables hold CPU operators")
    return {"metrics": metrics, "artifacts": {"trace": TRACE_FILE}}
