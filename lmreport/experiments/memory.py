"""Memory section experiments: CUDA snapshots, full-size estimates, and the estimator's CPU check.

Three kinds of cells, told apart by config["source"]:
- "measured" (CUDA only): the edition's memory cells (2025: 2.7B at contexts 128/256/512;
  2026: xl at 128 and 2048; a profile may name its own, presets.Profile.memory_cells; forward
  and full training step; fp32 and bf16). Warm up, record
  the allocator history (torch.cuda.memory._record_memory_history(max_entries=1_000_000)),
  run one step, `_dump_snapshot` into the cell's artifacts, stop recording; the record holds
  max allocated/reserved, the snapshot's replay (peak, timeline, largest allocations) and the
  seconds each part of the cell took (build_s, warmup_s, step_s, dump_s, load_s, summarize_s,
  viewer_s, postprocess_s).
  Without CUDA these cells are recorded `skipped` with the command to run on a GPU.
- "estimated" (any machine): the same cells at full size on fake tensors
  (lmreport.estimate.memory), plus the variant a measured cell may have been taken as
  (train: the first step; forward: with autograd recording).
- "cpu_check" (any machine): at the cpu profile's small sizes, the estimate (CPU autocast
  rules) next to the memory the CPU allocator really handed out (torch.profiler): the
  evidence that the tracker sees what an allocator sees.
- 2026 edition, question (f): "block" cells (what one transformer block saves for backward,
  by autograd node, and its gradient memory, on meta) and "checkpointing" cells (the training
  step estimated with the blocks in activation checkpoints of k blocks, k = every divisor of
  the layer count, 0 = none) at the edition's longest memory context.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from lmreport.presets import model_of
from lmreport.runner import Cell, CellSkipped, Plan, cell
from lmreport.user_model import spec_of

SECTION = "memory"
MODES = ("forward", "train")
DTYPES = ("fp32", "bf16")
MAX_ENTRIES = 1_000_000  # trace entries kept by the allocator (the handout's value)
WARMUP_STEPS = 2  # the first step allocates the optimizer state; the second is already steady
CHECK_SIZES = ("tiny", "mini")
CHECK_CTX = 128
CHECKPOINT_EDITIONS = (2026,)  # QUESTIONS.md: (f) and gradient checkpointing are 2026 questions


def cell_name(source: str, size: str, ctx: int, mode: str, dtype: str) -> str:
    prefix = {"measured": "measured", "estimated": "estimated", "cpu_check": "cpucheck"}[source]
    return f"{prefix}-{size}-ctx{ctx}-{mode}-{dtype}"


def checkpoint_groups(num_layers: int) -> list[int]:
    """0 (no checkpointing) and every group size that divides the layers evenly."""
    return [0] + [k for k in range(1, num_layers + 1) if num_layers % k == 0]


def cells(plan: Plan) -> list[Cell]:
    ed = plan.edition
    size, contexts = plan.profile.memory_cells(ed)  # the edition's, unless the profile names its own
    batch = ed.batch_size

    def step_cell(source, size, ctx, mode, dtype, requires="any"):
        # a training step after warm-up; a forward pass for inference (what a measured cell records).
        # A snapshot is one step of a clean process: the worker launcher gives measured cells a process of their own.
        return cell(plan, SECTION, cell_name(source, size, ctx, mode, dtype), requires=requires,
                    fresh_process=source == "measured", size=size, ctx=ctx,
                    batch=batch, mode=mode, dtype=dtype, source=source, step="steady" if mode == "train" else None,
                    grad=False if mode == "forward" else None)

    out = [step_cell(source, size, ctx, mode, dtype, requires)
           for source, requires in (("estimated", "any"), ("measured", "cuda"))
           for ctx in contexts for mode in MODES for dtype in DTYPES]
    out += [step_cell("cpu_check", size_, CHECK_CTX, mode, dtype)
            for size_ in CHECK_SIZES for mode in MODES for dtype in DTYPES]
    if ed.year in CHECKPOINT_EDITIONS:
        for ctx in contexts:
            out.append(cell(plan, SECTION, f"block-{size}-ctx{ctx}", size=size, ctx=ctx, batch=batch, mode="train",
                            dtype="fp32", source="block", implementation=None))  # lmreport's block, any --model
        ctx = max(contexts)
        for k in checkpoint_groups(ed.study_models[size].num_layers):
            out.append(cell(plan, SECTION, f"checkpoint-{size}-ctx{ctx}-every{k}", size=size, ctx=ctx, batch=batch,
                            mode="train", dtype="fp32", source="checkpointing", step="steady", checkpoint_every=k,
                            implementation=None))  # lmreport's blocks regrouped (estimate/checkpointing.py)
    return out


def model_config(c: Cell):
    return model_of(c.config)


def run_cell(c: Cell, artifacts_dir: Path) -> dict:
    source = c.config["source"]
    if source == "estimated":
        return _run_estimated(c)
    if source == "cpu_check":
        return _run_cpu_check(c)
    if source == "measured":
        return _run_measured(c, Path(artifacts_dir))
    if source == "block":
        from lmreport.estimate.checkpointing import block_saved
        return {"metrics": block_saved(model_config(c), c.config["batch"], c.config["ctx"])}
    if source == "checkpointing":
        return _run_checkpointing(c)
    raise ValueError(f"unknown memory cell source {source!r}")


# --- estimated ---------------------------------------------------------------------------------


def _estimate_metrics(e) -> dict:
    d = e.to_dict()
    d.pop("config")
    d["estimate_s"] = d.pop("seconds")
    return d


def _run_estimated(c: Cell) -> dict:
    cfg, k = model_config(c), c.config
    spec = spec_of(k)
    main = _estimate_or_skip(spec, cfg, k["batch"], k["ctx"], k["mode"], k["dtype"], step=k.get("step") or "steady",
                             grad=bool(k.get("grad")), target="cuda")
    metrics = _estimate_metrics(main)
    # the variant a snapshot taken elsewhere often is, so it can be compared like with like
    if k["mode"] == "train":
        other = _estimate_or_skip(spec, cfg, k["batch"], k["ctx"], "train", k["dtype"], step="first", target="cuda")
        name = "first_step"
    else:
        other = _estimate_or_skip(spec, cfg, k["batch"], k["ctx"], "forward", k["dtype"], grad=True, target="cuda")
        name = "with_grad"
    metrics["variants"] = {name: {key: getattr(other, key) for key in
                                  ("peak_bytes", "breakdown", "weight_copies_bytes", "phase_peaks", "peak_phase",
                                   "initial_bytes", "final_bytes")}}
    metrics["target"] = "cuda"
    return {"metrics": metrics}


def _estimate_or_skip(spec, cfg, batch, ctx, mode, dtype, **kw):
    """estimate_memory of the run's model; a model that runs neither on `meta` nor on fake tensors cannot
    be estimated, which the cell records as skipped with the reason (its bench cells still time it)."""
    from lmreport.estimate.memory import estimate_memory
    from lmreport.user_model import NotAbstract
    try:
        return estimate_memory(cfg, batch, ctx, mode, dtype, spec=spec, **kw)
    except NotAbstract as e:
        raise CellSkipped(f"{spec.model.target} cannot be estimated without allocating: {e}") from None


def _run_checkpointing(c: Cell) -> dict:
    from lmreport.estimate.memory import estimate_memory
    k = c.config
    e = estimate_memory(model_config(c), k["batch"], k["ctx"], "train", k["dtype"], step="steady",
                        checkpoint_every=k["checkpoint_every"] or None, target="cuda")
    return {"metrics": {key: getattr(e, key) for key in
                        ("peak_bytes", "breakdown", "peak_phase", "phase_peaks", "initial_bytes", "final_bytes", "ops")}
            | {"estimate_s": e.seconds}}


# --- CPU check -----------------------------------------------------------------------------------


def _run_cpu_check(c: Cell) -> dict:
    from lmreport.estimate.cpu_check import measure_step
    cfg, k = model_config(c), c.config
    step = k.get("step") or "steady"
    spec = spec_of(k)
    est = _estimate_or_skip(spec, cfg, k["batch"], k["ctx"], k["mode"], k["dtype"], step=step, target="cpu")
    real = measure_step(cfg, k["batch"], k["ctx"], k["mode"], k["dtype"], step=step, spec=spec)
    return {"metrics": {
        "estimated_peak_bytes": est.peak_bytes, "measured_peak_bytes": real.peak_bytes,
        "baseline_bytes": real.baseline_bytes, "estimated_initial_bytes": est.initial_bytes,
        "measured_rise_bytes": real.rise_bytes, "profiler_memory_events": real.memory_events,
        "relative_error": est.peak_bytes / real.peak_bytes - 1, "estimated_breakdown": est.breakdown,
    }}


# --- measured (CUDA) -------------------------------------------------------------------------------


def _run_measured(c: Cell, artifacts_dir: Path) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise CellSkipped("needs a CUDA GPU: run `lmreport run memory` on a CUDA machine, or record a snapshot "
                          "there and `lmreport ingest memory FILE --size ... --ctx ... --mode ...`")
    from lmreport import safe_pickle
    from lmreport.ingest.snapshot import record_metrics, summarize, write_viewer
    from lmreport.ingest.snapshot_format import normalize
    from lmreport.ingest.snapshot_replay import Phase, annotation_phases
    from lmreport.workloads import make_workload

    k = c.config
    # Where the cell's time goes (seconds, in the record's metrics): on an H200 a 2.7B cell took 14-20 s for about
    # 1-2 s of steps, so each part is timed. In a fresh process build_s includes creating the CUDA context (the
    # model's first copy to the GPU) and warmup_s the cuBLAS handle and first kernel loads; step_s runs with the
    # allocator's history recording on.
    parts_s: dict[str, float] = {}

    @contextlib.contextmanager
    def part(name: str):
        t0 = time.perf_counter()
        yield
        parts_s[name] = time.perf_counter() - t0

    with part("build_s"):
        w = make_workload(model_config(c), k["batch"], k["ctx"], k["mode"], device="cuda", dtype=k["dtype"],
                          spec=spec_of(k))
        torch.cuda.synchronize()
    with part("warmup_s"):
        for _ in range(WARMUP_STEPS):
            w.step()
            torch.cuda.synchronize()
        w.model.zero_grad(set_to_none=True)  # the measured step starts as Workload.step would leave it
        torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    spans: list[tuple[str, int, int]] = []

    @contextlib.contextmanager
    def phase(name: str):
        # wall-clock µs, the clock of the trace's time_us (system clock, µs since the epoch)
        torch.cuda.synchronize()
        start = time.time_ns() // 1000
        with torch.profiler.record_function(name):
            yield
        torch.cuda.synchronize()
        spans.append((name, start, time.time_ns() // 1000))

    artifacts_dir.mkdir(parents=True, exist_ok=True)
    path = artifacts_dir / "snapshot.pickle"
    # APIs as in torch/cuda/memory.py (2.1 to 2.13 alike): _record_memory_history(enabled="all", ...,
    # max_entries=...), _dump_snapshot(filename) pickles _snapshot(); enabled=None stops recording
    # and clears the trace buffer (CUDACachingAllocator recordHistory), so each cell starts empty.
    recording_from_us = time.time_ns() // 1000
    torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES)
    try:
        try:
            with part("step_s"):
                w.step(phase)
                torch.cuda.synchronize()
        except BaseException:
            # an OOM is the cell's outcome (runner records `oom`): keep the snapshot of what filled
            # the GPU for whoever looks, but never let a failed dump replace the OOM with another error
            with contextlib.suppress(Exception):
                torch.cuda.memory._dump_snapshot(str(path))
            raise
        with part("dump_s"):  # pickles the trace, symbolising each event's C++ and Python stack
            torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    max_allocated, max_reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()

    post_t0 = time.perf_counter()
    with part("load_s"):  # the restricted unpickler, then the snapshot's layout normalised
        raw = safe_pickle.load(path)
        snap = normalize(raw, path)
    device = torch.cuda.current_device()
    trace = snap.trace_of(device)
    t0 = trace[0].get("time_us") if trace else None
    # record_function ranges torch kept (external_annotations, torch 2.5+), only those from after
    # recording began: torch 2.13 clears its annotation buffer in recordHistory
    # (c10/cuda/CUDACachingAllocator.cpp, NativeCachingAllocator), but the filter keeps an earlier
    # cell's ranges out of this one's phases whatever a version does when cells share a process.
    phases = [p for p in annotation_phases(snap.annotations, device, t0)
              if t0 is not None and t0 + p.start_ms * 1e3 >= recording_from_us]
    if t0 is not None:
        named = {p.name for p in phases}
        phases += [Phase(n, (a - t0) / 1e3, (b - t0) / 1e3) for n, a, b in spans if n not in named]
    with part("summarize_s"):  # replay of the trace: timeline, peaks, top allocations
        summary = summarize(path, phases=sorted(phases, key=lambda p: p.start_ms) or None, snapshot=snap)
    with part("viewer_s"):
        viewer, note = write_viewer(snap, raw, artifacts_dir / "memory_viz.html")
    metrics = record_metrics(summary)
    parts_s["postprocess_s"] = time.perf_counter() - post_t0  # load, phases, summarize, viewer, metrics
    metrics.update({"max_allocated_bytes": max_allocated, "max_reserved_bytes": max_reserved,
                    "warmup_steps": WARMUP_STEPS, "viewer_note": note,
                    "source_file": {"path": path.name, "bytes": path.stat().st_size}, **parts_s})
    artifacts = {"snapshot": path.name}
    if viewer is not None:
        artifacts["viewer"] = viewer.name
    return {"metrics": metrics, "artifacts": artifacts}
