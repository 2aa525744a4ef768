"""End-to-end benchmark: forward, forward+backward and training step of the reference LM.

What a cell does (B-a): build the model for one size (lmreport/workloads.py: model, random
batch of token ids, the course's AdamW for "train"), run w warm-up steps, then n measured
steps with a device sync after each phase (timing.time_phases), NVTX ranges "warmup", "step",
"forward", "backward", "optimizer step". The first warm-up step is timed on its own
(`first_step_ms`: allocator growth, kernel selection, compilation), so the warm-up ablation and
the compile comparison can say what the first step costs.

Cells, in the order they run:
1. `matmul-<device>-<dtype>`: the device's square-matmul FLOP/s (torch.utils.benchmark.Timer).
   On a CPU it is the peak MFU is measured against, in the same run; on a GPU MFU uses the
   datasheet table (lmreport/peaks.py) and this cell shows what a matmul really reaches.
2. `<size>-ctx<ctx>-<mode>-fp32-warmup<w>`: the warm-up ablation (B-c) at the smallest context, for
   each warm-up count but the grid's own (`ablation_warmups`): that row is the grid cell of step 3.
3. `<size>-ctx<ctx>-<mode>-<dtype>`: the grid, every size x context x mode x precision (B-b, P-c).
4. `<size>-ctx<ctx>-<mode>-fp32-compiled`: torch.compile of the whole model, forward and the
   full training step (C-b); their eager twins are grid cells.

FLOPs per step come from accounting.py (every matmul, attention included): forward F,
forward+backward 3F (backward = 2F, checked against FlopCounterMode in tests), training step
3F + the AdamW update (14 FLOPs per parameter).
"""

from __future__ import annotations

import gc
import json
import socket
from pathlib import Path

from lmreport import accounting as acc
from lmreport import peaks
from lmreport.presets import WORKLOAD_PHASES as MODE_PHASES
from lmreport.presets import model_of
from lmreport.runner import Cell, CellSkipped, Plan, cell

SECTION = "bench"
COMPILE_MODES = ("forward", "train")  # C-b: forward, and forward + backward + optimizer
PHASE_METRICS = {"forward": "forward_ms", "backward": "backward_ms", "optimizer step": "optimizer_step_ms"}
# MODE_PHASES (the phases of each mode) is workloads.PHASES, from presets.py: the report reads it without torch.
# Square matmul sizes: big enough to reach the BLAS's steady rate, small enough to take
# well under a second per product (2 n^3 FLOPs: 17 GFLOP on a CPU, 1.1 TFLOP on a GPU).
MATMUL_N = {"cpu": 2048, "cuda": 8192}
MATMUL_MIN_RUN_TIME_S = 1.0  # Timer.blocked_autorange keeps measuring blocks for at least this long

_cells_run_in_this_process = 0  # B-c: warm-up matters most in a fresh process


def matmul_cell_name(device: str, dtype: str) -> str:
    return f"matmul-{device}-{dtype}"


def cell_name(size: str, ctx: int, mode: str, dtype: str, compiled: bool = False, warmup: int | None = None) -> str:
    """The record contract's names: <size>-ctx<ctx>-<mode>-<dtype>[-compiled][-warmup<w>]."""
    return f"{size}-ctx{ctx}-{mode}-{dtype}" + ("-compiled" if compiled else "") + (
        f"-warmup{warmup}" if warmup is not None else "")


def ablation_warmups(prof) -> tuple[int, ...]:
    """The warm-up counts the B-c ablation runs as cells of its own: the profile's, less the grid's.

    With w = the profile's warm-up steps the ablation cell would be the grid's fp32 cell of the same size, context
    and mode (same warm-up, steps and precision), measured twice; the report takes that row from the grid.
    """
    if "fp32" not in prof.bench_dtypes:  # no fp32 grid cell to stand in for it
        return tuple(prof.warmup_ablation)
    # w = 0 stays a cell of its own whatever the grid does: it is the cold start, measured in a clean process
    # (fresh_process), which a grid cell is not.
    return tuple(w for w in prof.warmup_ablation if w != prof.warmup_steps or w == 0)


def cells(plan: Plan) -> list[Cell]:
    prof, ed = plan.profile, plan.edition
    device = prof.device
    requires = "cuda" if device == "cuda" else "any"
    sizes = list(prof.models(ed))
    contexts = prof.bench_contexts(ed)

    def step_cell(name, size, ctx, mode, dtype, compiled, warmup, fresh_process=False):
        return cell(plan, SECTION, name, requires, fresh_process, experiment="step", device=device, size=size,
                    ctx=ctx, batch=ed.batch_size, mode=mode, dtype=dtype, compiled=compiled, warmup=warmup,
                    steps=prof.measure_steps)

    out = [cell(plan, SECTION, matmul_cell_name(device, dt), requires, experiment="matmul", device=device,
                dtype=dt, n=MATMUL_N[device]) for dt in prof.bench_dtypes]
    ablation_ctx = min(contexts)
    # Without warm-up the measured steps are the cold start itself, so those ablation cells start a clean
    # process under the worker launcher too (with warm-up, the costs land in untimed steps either way).
    ablation_sizes = [s for s in (prof.ablation_sizes or sizes) if s in sizes]
    out += [step_cell(cell_name(s, ablation_ctx, m, "fp32", warmup=w), s, ablation_ctx, m, "fp32", False, w,
                      fresh_process=w == 0)
            for s in ablation_sizes for m in prof.bench_modes for w in ablation_warmups(prof)]
    out += [step_cell(cell_name(s, t, m, dt), s, t, m, dt, False, prof.warmup_steps)
            for s in sizes for t in contexts for m in prof.bench_modes for dt in prof.bench_dtypes]
    compile_sizes = [s for s in (prof.compile_sizes or sizes) if s in sizes]
    out += [step_cell(cell_name(s, t, m, "fp32", compiled=True), s, t, m, "fp32", True, max(1, prof.warmup_steps))
            for s in compile_sizes for t in (prof.compile_contexts or contexts) for m in (prof.compile_modes or COMPILE_MODES)
            if m in prof.bench_modes]
    return out


# --- measurements ---------------------------------------------------------------------------


def measure_matmul(device: str, dtype: str, n: int, min_run_time_s: float = 1.0) -> dict:
    """FLOP/s of an (n x n)(n x n) product over torch.utils.benchmark.Timer's blocks (best and median).

    Timer synchronises the accelerator around each block and runs with the thread count given
    (its default is 1 thread; a CPU peak needs all of them).
    """
    import torch
    from torch.utils.benchmark import Timer

    from lmreport.workloads import AUTOCAST_DTYPES
    dt = AUTOCAST_DTYPES[dtype] or torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dt, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dt, generator=gen)
    from lmreport.timing import timed_work
    with timed_work():  # the record's timed_s
        a @ b  # first call: library initialisation, not part of the rate
        m = Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads()).blocked_autorange(
            min_run_time=min_run_time_s)
    flops = 2 * n**3
    # The peak is the best block: on a shared machine a slow block measures the neighbours'
    # load, not the hardware; the median is kept beside it.
    return {"n": n, "flops": flops, "median_ms": m.median * 1e3, "best_ms": min(m.times) * 1e3,
            "tflops": flops / min(m.times) / 1e12, "median_tflops": flops / m.median / 1e12,
            "blocks": len(m.times), "threads": torch.get_num_threads(),
            "matmul_precision": torch.get_float32_matmul_precision() if dtype == "fp32" else dtype}


def step_flops(cfg, batch: int, ctx: int, mode: str) -> tuple[int, str]:
    """(FLOPs of one step of `mode`, the formula as the report prints it)."""
    f = acc.forward_flops(cfg, batch, ctx)
    if mode == "forward":
        return f, "F"
    if mode == "forward_backward":
        return 3 * f, "3F"
    return 3 * f + acc.adamw_step_flops(cfg), f"3F + {acc.ADAMW_FLOPS_PER_PARAMETER}P"


def peak_for(device: str, dtype: str, artifacts_dir: Path) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it comes from): the datasheet on a GPU, this run's matmul cell on a CPU."""
    import torch

    from lmreport.device import device_name
    if device == "cuda":
        precision = peaks.matmul_precision(dtype, torch.get_float32_matmul_precision())
        return peaks.peak_tflops(device_name(device), precision)
    name = matmul_cell_name(device, dtype)
    path = Path(artifacts_dir).parent / f"{name}.json"  # the sibling record in this run's folder
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, f"no {name} record in this run (run `lmreport run bench` without filters)"
    env = rec.get("environment") or {}
    if rec.get("status") != "ok" or env.get("host") != socket.gethostname() or env.get("device") != device_name(device):
        return None, f"{name} record is not an ok measurement of this machine ({env.get('device')}, {env.get('host')})"
    m = rec["metrics"]
    return m["tflops"], (f"measured in this run: {m['n']}×{m['n']} {dtype} matmul, {m['threads']} threads "
                         f"({name}, {rec.get('started_at')})")


def run_step(config: dict, artifacts_dir: Path) -> dict:
    global _cells_run_in_this_process
    import time

    import torch

    from lmreport.device import synchronize
    from lmreport.timing import profiler_range, time_phases, timed_work
    from lmreport.user_model import spec_of
    from lmreport.workloads import make_workload

    device, mode, dtype = config["device"], config["mode"], config["dtype"]
    model_cfg = model_of(config)
    batch, ctx = config["batch"], config["ctx"]
    fresh = _cells_run_in_this_process == 0
    _cells_run_in_this_process += 1
    w = make_workload(model_cfg, batch, ctx, mode, device=device, dtype=dtype, compile=config["compiled"],
                      spec=spec_of(config))
    try:
        first_ms = None
        warmup = config["warmup"]
        if warmup >= 1:  # the first warm-up step, timed on its own (compilation happens here)
            with timed_work(), profiler_range("warmup"):
                synchronize(device)
                t0 = time.perf_counter()
                w.step()
                synchronize(device)
                first_ms = (time.perf_counter() - t0) * 1e3
            warmup -= 1
        stats = time_phases(w.step, device, warmup, config["steps"])
    finally:
        del w
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    step = stats["step"]
    flops, formula = step_flops(model_cfg, batch, ctx, mode)
    achieved = flops / (step.mean / 1e3) / 1e12
    peak, source = peak_for(device, dtype, artifacts_dir)
    metrics = {"step_ms": step.to_metric()}
    metrics.update({PHASE_METRICS[p]: stats[p].to_metric() for p in MODE_PHASES[mode]})
    metrics.update({
        "first_step_ms": first_ms,
        "tokens_per_s": batch * ctx / (step.mean / 1e3),
        "flops_per_step": flops, "flops_formula": formula,
        "achieved_tflops": achieved, "peak_tflops": peak, "peak_source": source,
        "mfu": achieved / peak if peak else None,
        "parameters": acc.parameter_count(model_cfg),
        "matmul_precision": peaks.matmul_precision(dtype, torch.get_float32_matmul_precision()),
        "first_cell_in_process": fresh,
    })
    return {"metrics": metrics}


def run_cell(c: Cell, artifacts_dir: Path) -> dict:
    config = c.config
    if config["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():  # the runner checks `requires` too; a direct call must not crash
            raise CellSkipped("needs a CUDA GPU; run `lmreport run bench` on a CUDA machine")
    if config["experiment"] == "matmul":
        return {"metrics": measure_matmul(config["device"], config["dtype"], config["n"], MATMUL_MIN_RUN_TIME_S)}
    if config["experiment"] == "step":
        return run_step(config, artifacts_dir)
    raise ValueError(f"unknown bench experiment {config['experiment']!r}")
