"""How long the cells a run would launch take, before running any (`lmreport run ... --dry-run`).

A cell's time is its work plus what launching it costs:

- work: the `duration_s` of an earlier record of the same cell where one exists (same run, ok,
  oom or error: an OOM takes about as long again; not `skipped`, which ran nothing: a CPU
  machine's record of a CUDA cell says nothing of a GPU's time); otherwise a cost model: the
  FLOPs the cell executes (accounting.py's formulas times its step count) at the device's rate,
  plus a fixed in-cell cost
  (model build, data, writing the record) and the known fixed parts of some cells (a matmul
  cell's minimum measuring time, a torch.compile, an Nsight Systems profile and its exports, for a
  profiling cell whose profiler is nsys where it runs: `--profiler auto` is taken to choose as it
  would here, by whether `nsys` is on PATH, and the notes say which was assumed); an attention
  cell takes what a record of the same shape as another variant took;
- the rate: the device's peak times an MFU. The peak is this run's matmul cell where the bench
  section has measured one (the rate the bench chapter's MFU is relative to on a CPU), else the
  datasheet peak (peaks.py) of the GPU the records name, of the GPU here, or of an assumed one;
  the MFU is the median `mfu` of this run's step records of that precision and the same size and
  mode (else the size, else all sizes: small models reach a smaller MFU), else an assumed one;
- launching: a fresh process pays its start (Python, `import torch`; a fraction of it when forked
  from the fork server, which starts once per run) and, for a CUDA cell, the CUDA set-up (context,
  cuBLAS, first kernels); inline pays nothing per cell, a worker once per section and once per
  fresh-process cell (forked), local-gpus once per cell (forked), the others once per cell (a new
  interpreter each). A record of a process's
  first CUDA cell holds that set-up in its `duration_s`; it is taken out of the cell's work there,
  so that it counts once (record_work_s).

Every assumption is printed with the estimate (`Estimate.notes`). Reads records, writes nothing.
"""

from __future__ import annotations

import shutil
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from lmreport.presets import model_of

# Assumptions, used only where records say nothing better.
ASSUMED_GPU = "NVIDIA H100 80GB HBM3"  # the course's GPU (2026 handout); datasheet peaks in peaks.py
# Per device type and precision. CUDA: the medians of the H200 bench records at context 512
# (../shared/samples/h200: fp32 0.31-0.66, bf16 0.02-0.23; bf16 steps of these sizes are far from the
# tensor-core peak). CPU: the medians of the cpu profile's step records on this project's 2-core CPU
# machine (fp32 0.49, bf16 0.51 of that machine's measured matmul rate of the same precision).
ASSUMED_MFU = {"cuda": {"fp32": 0.5, "bf16": 0.07}, "cpu": {"fp32": 0.5, "bf16": 0.5}}
# A CPU's matmul rate when no matmul-cpu record exists: the cpu profile's matmul cells on this project's
# 2-core CPU machine (fp32 0.20, bf16 0.42 TFLOP/s, torch 2.13 with oneDNN); other CPUs differ, and the
# bench section's first cells measure it, after which `--dry-run` uses the records.
ASSUMED_CPU_TFLOPS = {"fp32": 0.2, "bf16": 0.4}
# What a fresh process adds to a cell (python, `import torch`, lmreport, the first steps' cold costs, teardown):
# benchmarks/bench_launch_overhead.py on this project's 2-core CPU machine (README "Launch overhead"); a
# GPU host's faster CPU pays less.
PROCESS_START_S = 5.6
# A fresh process forked from launchers/forked.py's server instead (the worker's fresh-process cells and
# local-gpus' cells, unless LMREPORT_FRESH_PROCESS=exec): from launch to record, less the timed steps, a
# cell after the first took 0.13-0.16 s, the first, which started the server, 1.95-2.2 s
# (benchmarks/bench_fresh_cells.py on the same machine, README "Launch overhead"). The server starts once per run.
FORKED_PROCESS_S = 0.15
FORK_SERVER_START_S = 2.0
# The first CUDA work of a process: context, cuBLAS handle, lazily loaded kernels. H200 records
# (../shared/samples/h200): small-ctx512-forward-fp32, the first cell of its process, took 5.8 s
# against 0.55 s for its bf16 twin; small-ctx128-forward-fp32-warmup0 5.1 s against 0.31 s (warmup1).
CUDA_SETUP_S = 5.0
PER_CELL_S = 0.5  # in-cell work outside the FLOP model: model build, batch, record (small on a GPU)
COMPILE_S = 40.0  # torch.compile of the whole model, per compiled cell (assumed)
NSYS_S = 40.0  # `nsys profile` start-up and the `nsys stats` exports, per cell profiled by nsys (assumed)
MEMORY_SNAPSHOT_S = 10.0  # a measured memory cell: dump, replay, viewer (H200 records: 14-20 s in all)
MEASURED_MEMORY_STEPS = 3  # experiments/memory.py: WARMUP_STEPS (2) + the recorded step


@dataclass
class CellEstimate:
    section: str
    cell: str
    work_s: float
    source: str  # "record" or "model"
    cuda: bool
    fresh_process: bool


@dataclass
class Estimate:
    """Per section: the cells to run and their estimates; launch overhead per section; notes."""

    cells: dict[str, list[CellEstimate]] = field(default_factory=dict)
    launch_s: dict[str, float] = field(default_factory=dict)  # wall time: divided by `parallel`
    processes: dict[str, int] = field(default_factory=dict)  # fresh processes each section starts
    notes: list[str] = field(default_factory=list)
    launcher: str = "inline"
    workers: int = 1

    @property
    def parallel(self) -> int:
        """Cells that run at once: local-gpus spreads them over its GPUs, the others run one after another."""
        return self.workers if self.launcher == "local-gpus" and self.workers > 1 else 1

    def section_s(self, name: str) -> float:
        return sum(c.work_s for c in self.cells.get(name, [])) / self.parallel + self.launch_s.get(name, 0.0)

    @property
    def total_s(self) -> float:
        return sum(self.section_s(n) for n in self.cells)

    def only(self, keep: Callable[[CellEstimate], bool]) -> Estimate:
        """The estimate of the cells `keep` takes, launched the same way (their processes counted
        again), from these cells' estimates: e.g. what this machine runs of them. The notes are these."""
        return _launched({s: [ce for ce in cells if keep(ce)] for s, cells in self.cells.items()},
                         self.launcher, self.workers, self.notes)


def _launched(cells: dict[str, list[CellEstimate]], launcher: str, workers: int, notes: list[str]) -> Estimate:
    """The estimate of cells whose work is estimated, with what launching them costs."""
    est = Estimate(cells, launcher=launcher, workers=workers, notes=list(notes))
    cuda_set_up = False
    forks = forks_fresh_processes(launcher)
    server_started = False
    for section, out in cells.items():
        est.processes[section], launch_s = launch_cost(out, launcher, forks)
        if launcher == "inline" and not cuda_set_up and any(c.cuda for c in out):
            launch_s += CUDA_SETUP_S  # this process's first CUDA cell
            cuda_set_up = True
        forked_here = out if launcher == "local-gpus" else [c for c in out if c.fresh_process]
        if forks and forked_here and not server_started:
            launch_s += FORK_SERVER_START_S  # this run's first forked process starts the server
            server_started = True
        est.launch_s[section] = launch_s / est.parallel  # cells spread over the GPUs: the wall time divides
    return est


class Rates:
    """TFLOP/s per (device type, precision), each with the sentence that says where it comes from."""

    def __init__(self, records: list[dict], gpu_name: str | None = None, mfu: float | None = None):
        self.records = records
        self.gpu_name, self.gpu_source = self._gpu(gpu_name)
        self.mfu_override = mfu
        self.used: dict[tuple[str, str], str] = {}

    def _gpu(self, gpu_name: str | None) -> tuple[str, str]:
        if gpu_name:
            return gpu_name, "given"
        named = sorted({(r.get("environment") or {}).get("device") for r in self.records
                        if (r.get("environment") or {}).get("device_type") == "cuda"} - {None})
        if named:
            return named[-1], "named by this run's records"
        from lmreport.device import cuda_available
        if cuda_available():
            import torch
            return torch.cuda.get_device_name(0), "this machine's GPU"
        return ASSUMED_GPU, "assumed: no GPU here and no CUDA record in this run"

    def _measured_peak(self, device: str, precision: str) -> float | None:
        for r in self.records:
            if (r["section"] == "bench" and r["status"] == "ok" and r["config"].get("experiment") == "matmul"
                    and r["config"].get("device") == device and r["config"].get("dtype") == precision):
                return r["metrics"].get("tflops")
        return None

    def other_variant_s(self, c) -> float | None:
        """duration_s of this run's ok record of the same attention shape as another variant, if any."""
        k = c.config
        for r in self.records:
            rk = r["config"]
            if (r["section"] == c.section and r["status"] == "ok" and rk.get("source") == "measured"
                    and all(rk.get(x) == k.get(x) for x in ("d", "seq_len", "batch", "warmup", "passes"))):
                return float(r["duration_s"])
        return None

    def _median_mfu(self, device: str, precision: str, size: str | None, mode: str | None) -> tuple[float, str] | None:
        """The median MFU of this run's eager step records of the closest kind: the same size and mode,
        else the same size, else any size (MFU grows with size: small models are launch-bound)."""
        steps = [r for r in self.records
                 if r["section"] == "bench" and r["status"] == "ok" and r["config"].get("device") == device
                 and r["config"].get("dtype") == precision and not r["config"].get("compiled")
                 and isinstance(r["metrics"].get("mfu"), (int, float))]
        for keys, what in ((("size", "mode"), "same size and mode"), (("size",), "same size"), ((), "all sizes")):
            want = {"size": size, "mode": mode}
            if any(want[k] is None for k in keys):
                continue
            values = [r["metrics"]["mfu"] for r in steps if all(r["config"].get(k) == want[k] for k in keys)]
            if values:
                return statistics.median(values), what
        return None

    def tflops(self, device: str, precision: str, size: str | None = None, mode: str | None = None) -> float:
        from lmreport import peaks
        precision = "bf16" if precision in ("bf16", "fp16") else "fp32"
        measured = self._measured_peak(device, precision)
        if measured:
            peak, where = measured, f"this run's matmul-{device}-{precision} record ({measured:.3g} TFLOP/s)"
        elif device == "cuda":
            peak, src = peaks.peak_tflops(self.gpu_name, peaks.matmul_precision(precision))
            if peak is None:
                peak, src = peaks.peak_tflops(ASSUMED_GPU, peaks.matmul_precision(precision))
                where = f"{ASSUMED_GPU} datasheet (assumed: {self.gpu_name} has no peak entry)"
            else:
                where = f"{self.gpu_name} ({self.gpu_source}) datasheet {precision} peak {peak:g} TFLOP/s"
        else:
            peak = ASSUMED_CPU_TFLOPS[precision]
            where = f"{peak:g} TFLOP/s (assumed: no matmul-cpu record; a 2-core CPU's measured rate)"
        mfu, mfu_where = self.mfu_override, f"{self.mfu_override} (given)"
        if mfu is None:
            found = self._median_mfu(device, precision, size, mode)
            if found is not None:
                mfu, mfu_where = found[0], ("from this run's step records (median of the same size and mode, "
                                            "else of the size, else of all)")
            else:
                mfu = ASSUMED_MFU["cuda" if device == "cuda" else "cpu"][precision]
                mfu_where = f"{mfu} (assumed: about the median of " + (
                    "real H200 records at context 512)" if device == "cuda" else "the cpu profile's records on a 2-core CPU)")
        self.used[(device, precision)] = f"{device} {precision}: {where} × MFU {mfu_where}"
        return peak * mfu


def attention_pass_flops(batch: int, seq_len: int, d: int) -> int:
    """One forward + backward of naive attention on (B, T, d): QKᵀ and PV are 2·B·T²·d FLOPs each
    forward, and backward costs twice the forward (two matmuls per forward matmul)."""
    forward = 2 * (2 * batch * seq_len * seq_len * d)
    return 3 * forward


def profiler_of(c, nsys_on_path: bool) -> str | None:
    """The profiler a profiling (nsys section) cell runs where it runs: "nsys" or "torch"
    (experiments/nsys.choose_profiler, given whether `nsys` is on PATH there); None for other cells."""
    from lmreport.experiments import nsys  # imports no torch
    if c.section != nsys.SECTION:
        return None
    # The defaults are run_cell's: records of older versions name no profiler and ran nsys on a GPU.
    return nsys.choose_profiler(c.config.get("profiler", "nsys"), c.config.get("device", "cuda"), nsys_on_path)


def nsys_on_path_here() -> bool:
    return shutil.which("nsys") is not None


def cell_work_model(c, rates: Rates, nsys_on_path: bool | None = None) -> float:
    """Seconds of one cell by the cost model (FLOPs at the rate, plus fixed costs). nsys_on_path: whether
    the machine that runs it has `nsys` (None: as this one), which `--profiler auto` chooses by."""
    k = c.config
    device = k.get("device") or ("cuda" if c.requires in ("cuda", "nsys") else "cpu")
    precision = k.get("dtype") or "fp32"
    seconds = PER_CELL_S
    if k.get("experiment") == "matmul":
        from lmreport.experiments.bench import MATMUL_MIN_RUN_TIME_S
        return seconds + MATMUL_MIN_RUN_TIME_S + 2 * k["n"] ** 3 / (rates.tflops(device, precision) * 1e12)
    if {"size", "ctx", "batch", "mode"} <= k.keys() and k.get("source") in (None, "measured"):
        from lmreport.experiments.bench import step_flops
        flops, _ = step_flops(model_of(k), k["batch"], k["ctx"], k["mode"])
        if "steps" in k:
            steps = (k.get("warmup") or 0) + k["steps"]
        else:  # a measured memory cell: its warm-up steps and the recorded one
            steps = MEASURED_MEMORY_STEPS
            seconds += MEMORY_SNAPSHOT_S
        seconds += steps * flops / (rates.tflops(device, precision, k["size"], k["mode"]) * 1e12)
        seconds += COMPILE_S if k.get("compiled") else 0.0
        if nsys_on_path is None:
            nsys_on_path = nsys_on_path_here()
        # On a CPU an nsys cell is skipped (Nsight Systems profiles GPU kernels): no profile to pay for.
        seconds += NSYS_S if device == "cuda" and profiler_of(c, nsys_on_path) == "nsys" else 0.0
        return seconds
    if {"seq_len", "d", "batch"} <= k.keys() and k.get("source") == "measured":
        twin = rates.other_variant_s(c)
        if twin is not None:  # the same (d, T) timed as another variant: the same passes over the same shapes
            return twin
        passes = k.get("warmup", 0) + 2 * k.get("passes", 0) + 2  # first pass, warm-up, timed, memory pass
        seconds += passes * attention_pass_flops(k["batch"], k["seq_len"], k["d"]) / (
            rates.tflops(device, precision) * 1e12)
        return seconds
    return seconds


def _cell_uses_cuda(c) -> bool:
    return c.requires in ("cuda", "nsys") or c.config.get("device") == "cuda"


# Launchers that start a process for every cell: each of their records was the first cell of its process.
PROCESS_PER_CELL = ("subprocess", "local-gpus", "slurm")


def first_in_process(r: dict, c) -> bool:
    """Whether a record says its cell was the first of its process: a bench step says so itself
    (metrics.first_cell_in_process); a launcher that starts a process per cell, or the worker for a
    fresh-process cell, says so by the record's `launcher`."""
    if (r.get("metrics") or {}).get("first_cell_in_process"):
        return True
    return r.get("launcher") in PROCESS_PER_CELL or (r.get("launcher") == "worker" and c.fresh_process)


def record_work_s(r: dict, c) -> float:
    """A cell's work from its earlier record: duration_s, less the CUDA set-up it paid when it was the
    first CUDA cell of its process (launch_cost adds that set-up once per process; counting it here too
    would pay it twice). H200 records: small-ctx512-forward-fp32, first in its process, 5.77 s against
    0.55 s for its bf16 twin."""
    work_s = float(r["duration_s"])
    if _cell_uses_cuda(c) and first_in_process(r, c):
        work_s = max(PER_CELL_S, work_s - CUDA_SETUP_S)
    return work_s


def estimate(todo: dict[str, list], records: list[dict], launcher: str, workers: int = 1,
             gpu_name: str | None = None, mfu: float | None = None) -> Estimate:
    """The estimate for {section: cells to run}, launched by `launcher` ("inline", "worker", ...)."""
    rates = Rates(records, gpu_name, mfu)
    by_cell = {(r["section"], r["cell"]): r for r in records}
    nsys_here = nsys_on_path_here()
    modelled = []  # the cells the cost model estimates
    work: dict[str, list[CellEstimate]] = {}
    for section, cells in todo.items():
        out = work[section] = []
        for c in cells:
            r = by_cell.get((c.section, c.name))
            if r is not None and r.get("status") != "skipped" and r.get("duration_s"):
                out.append(CellEstimate(c.section, c.name, record_work_s(r, c), "record", _cell_uses_cuda(c),
                                        c.fresh_process))
            else:
                modelled.append(c)
                out.append(CellEstimate(c.section, c.name, cell_work_model(c, rates, nsys_here), "model",
                                        _cell_uses_cuda(c), c.fresh_process))
    est = _launched(work, launcher, workers, [])
    if est.parallel > 1:
        est.notes.append(f"local-gpus: {workers} workers in parallel, times divided by {workers}")
    est.notes += list(rates.used.values())
    profiler_note = _profiler_note(modelled, nsys_here)
    if profiler_note:
        est.notes.append(profiler_note)
    if any(ce.source == "model" for cells in est.cells.values() for ce in cells):
        est.notes.append(f"per cell {PER_CELL_S:g} s in-cell set-up; torch.compile {COMPILE_S:g} s, nsys "
                         f"{NSYS_S:g} s per cell (assumed)")
    slurm = "; Slurm queue time not included" if launcher == "slurm" else ""
    forked = (f", {FORKED_PROCESS_S:g} s per process forked from the fork server and {FORK_SERVER_START_S:g} s for its "
              f"start" if forks_fresh_processes(launcher) else "")
    est.notes.append(f"launch: {PROCESS_START_S:g} s per new interpreter{forked} (measured on a 2-core CPU), "
                     f"{CUDA_SETUP_S:g} s CUDA set-up in its first CUDA cell (H200 records){slurm}")
    return est


def _profiler_note(cells: list, nsys_on_path: bool) -> str | None:
    """Which profiler the cost model took for the profiling cells, and why (`--profiler auto` is decided
    where a cell runs: a dry run on a machine without nsys, for a GPU profile, may guess wrong)."""
    chosen = [(c, profiler_of(c, nsys_on_path)) for c in cells]
    counts = Counter(p for _, p in chosen if p)
    if not counts:
        return None
    names = {"nsys": "Nsight Systems", "torch": "torch.profiler"}
    text = "profiling cells: " + ", ".join(f"{n} by {names.get(p, p)}" for p, n in sorted(counts.items()))
    if any(p and c.config.get("profiler") == "auto" and c.config.get("device", "cuda") == "cuda" for c, p in chosen):
        text += (f" (assumed for --profiler auto: `nsys` is on PATH here; {NSYS_S:g} s more per cell)" if nsys_on_path
                 else f" (assumed for --profiler auto: `nsys` is not on PATH here; a GPU machine with it runs Nsight "
                      f"Systems, {NSYS_S:g} s more per cell)")
    return text


def forks_fresh_processes(launcher: str) -> bool:
    """Whether `launcher`'s fresh processes are forked from the fork server (launchers/forked.py)."""
    from lmreport.launchers.forked import mode
    return launcher in ("worker", "local-gpus") and mode() == "fork"


def launch_cost(cells: list[CellEstimate], launcher: str, forks: bool = False) -> tuple[int, float]:
    """(fresh processes started, their seconds) for one section's cells under `launcher`; `forks`: its
    fresh processes are forked from the fork server (the server's start is counted once per run, by _launched)."""
    def process_s(cuda: bool, forked: bool = False) -> float:
        return (FORKED_PROCESS_S if forked else PROCESS_START_S) + (CUDA_SETUP_S if cuda else 0.0)
    if not cells or launcher == "inline":
        return 0, 0.0
    if launcher == "worker":
        fresh = [c for c in cells if c.fresh_process]
        shared = [c for c in cells if not c.fresh_process]
        n = len(fresh) + (1 if shared else 0)  # one worker per section (more only after an OOM/CUDA error)
        return n, (sum(process_s(c.cuda, forks) for c in fresh)
                   + (process_s(any(c.cuda for c in shared)) if shared else 0.0))
    return len(cells), sum(process_s(c.cuda, forks) for c in cells)
