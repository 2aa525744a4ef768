"""Kernel profiles of the shared workload, one per cell: Nsight Systems, or torch.profiler.

Which profiler (LMREPORT_PROFILER, or `lmreport run nsys --profiler ...`): `nsys` (Nsight
Systems), `torch` (torch.profiler, experiments/torch_profile.py) or `auto` (the default):
Nsight Systems when the cell runs on a GPU and `nsys` is on PATH, torch.profiler otherwise.
Both profile the same workload with the same ranges and write the same metrics (the
contract of ingest/nsys_summary.py), so the section reads either; records say which made
them. On a CPU profile the cells run torch.profiler with CPU activity only: CPU operators,
not GPU kernels, and few cells (one short context: the cpu profile's profiling_contexts), to keep
the CPU writeup quick.

With Nsight Systems, each cell runs `nsys profile` on a small worker (nsys_worker.py) that builds the workload
(workloads.py) and times it with timing.time_phases: each warm-up step inside an NVTX range
"warmup", then each measured step in a range "step" holding one range per phase ("forward",
"backward", "optimizer step"); the model adds the attention sub-ranges. Warm-up is left out
of the capture itself: `--capture-range=nvtx --nvtx-capture=step --capture-range-end=none`
starts collecting at the first measured step and goes on to the end, so every report
(the kernel summary included) covers the measured steps only. The nvtx package registers its
range names (nvtx.annotate caches them as registered strings), which nsys's capture filter
needs; NSYS_NVTX_PROFILER_REGISTER_ONLY=0 lets it match unregistered names as well (Nsight
Systems User Guide, "--nvtx-capture").

Then `nsys stats --format csv` writes the kernel summary, NVTX summary, kernels per NVTX
range, GPU projection of NVTX ranges and CUDA API summary as the cell's artifacts, and
lmreport.ingest parses them into the record's metrics, exactly as for exports ingested from
another machine. Every nsys call runs under a timeout and is killed with its process group
when it overruns.

Version trap: Nsight Systems 2022.4 records no NVTX ranges from the `nvtx` package newer than
0.2.11 (newer nsys reads newer nvtx); run_cell checks both versions and warns with the fix.
The command lines are pure functions (tested without nsys).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from lmreport.device import PROJECT_ROOT
from lmreport.errors import UserError
from lmreport.ingest.nsys import cell_name
from lmreport.ingest.nsys_summary import pick_tables, summarise
from lmreport.ingest.nsys_tables import parse_file
from lmreport.presets import PROFILER_VARIABLE, PROFILERS
from lmreport.runner import Cell, CellSkipped, Plan, cell

SECTION = "nsys"
MODES = ("forward", "train")  # inference forward; forward + backward + AdamW
DTYPE = "fp32"
CAPTURE_RANGE = "step"  # the NVTX range timing.time_phases puts around each measured step (warm-up is "warmup")
# Defaults; the environment variables override them (read when a sweep is planned and run, not at import,
# so that a bad value is one line naming the variable instead of a crash of every command importing this).
PROFILE_TIMEOUT_S = 1800.0  # LMREPORT_NSYS_TIMEOUT_S: one `nsys profile` of a cell
STATS_TIMEOUT_S = 900.0  # LMREPORT_NSYS_STATS_TIMEOUT_S: one `nsys stats` export
QUERY_TIMEOUT_S = 60.0
# Report -> names to ask for, newest first (nsys 2023.1 renamed the reports).
WANTED_REPORTS = {
    "cuda_gpu_kern_sum": ("cuda_gpu_kern_sum", "gpukernsum"),
    "nvtx_sum": ("nvtx_sum", "nvtxsum", "nvtx_pushpop_sum", "nvtxppsum"),
    "nvtx_kern_sum": ("nvtx_kern_sum", "nvtxkernsum"),
    "nvtx_gpu_proj_sum": ("nvtx_gpu_proj_sum",),
    "cuda_api_sum": ("cuda_api_sum", "cudaapisum"),
}
REQUIRED_REPORTS = ("cuda_gpu_kern_sum", "nvtx_sum")
NVTX_FIX = ("run `pip install 'nvtx<=0.2.11'` in this environment, or use Nsight Systems 2023.1 or newer")


@dataclass(frozen=True)
class Sweep:
    sizes: tuple[str, ...] | None  # None: every size of the edition's table
    contexts: tuple[int, ...]


# QUESTIONS.md (nsys): 2025 every size at 128/256/512/1024; 2026 two sizes at three power-of-two
# contexts above 128, the largest the longest that fits: 256, 512 and doublings up to 16,384, where
# even the forward pass's T x T scores (batch 4) outgrow an 80 GB GPU; out-of-memory cells are data and
# the report names the longest context that ran. Which two sizes the handout means is not fixed;
# small and large span the table's widths that fit a training step at long contexts.
HANDOUT_SWEEPS = {
    2025: Sweep(None, (128, 256, 512, 1024)),
    2026: Sweep(("small", "large"), (256, 512, 1024, 2048, 4096, 8192, 16384)),
}


def sweep(plan: Plan) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(sizes, contexts) of the plan: the profile's own profiling sizes/contexts (gpu-quick; cpu, whose
    one short context keeps the CPU writeup quick), else the sizes and contexts a profile names itself,
    else the handout's."""
    ed, prof = plan.edition, plan.profile
    if prof.profiling_sizes or prof.profiling_contexts:
        return prof.profiling_sizes or tuple(prof.models(ed)), prof.profiling_contexts or prof.bench_contexts(ed)
    if prof.sizes or prof.contexts or ed.year not in HANDOUT_SWEEPS:
        return tuple(prof.models(ed)), prof.bench_contexts(ed)
    s = HANDOUT_SWEEPS[ed.year]
    return s.sizes or tuple(prof.models(ed)), s.contexts


def requested_profiler() -> str:
    """LMREPORT_PROFILER: auto (default), nsys or torch; UserError for anything else."""
    text = (os.environ.get(PROFILER_VARIABLE) or "auto").strip().lower()
    if text not in PROFILERS:
        raise UserError(f"{PROFILER_VARIABLE}={text!r}: choose one of {', '.join(PROFILERS)} (or unset it for auto)")
    return text


def choose_profiler(requested: str, device: str, nsys_on_path: bool) -> str:
    """The profiler a cell runs: nsys or torch (see the module's docstring)."""
    if requested == "auto":
        return "nsys" if device == "cuda" and nsys_on_path else "torch"
    return requested


def timeout_s(variable: str, default: float) -> float:
    """Seconds from an environment variable, or the default; UserError for anything but a positive number."""
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise UserError(f"{variable}={text!r}: give a timeout in seconds (a positive number), or unset it for "
                        f"the default {default:.0f} s")
    return value


def timeouts() -> tuple[float, float]:
    """(profile, stats) timeouts in seconds."""
    return (timeout_s("LMREPORT_NSYS_TIMEOUT_S", PROFILE_TIMEOUT_S),
            timeout_s("LMREPORT_NSYS_STATS_TIMEOUT_S", STATS_TIMEOUT_S))


def cells(plan: Plan) -> list[Cell]:
    timeouts()  # a bad timeout or profiler variable stops `lmreport run nsys` before any cell runs
    profiler = requested_profiler()
    sizes, contexts = sweep(plan)
    device = plan.profile.device
    # nsys on a CPU profile is refused by run_cell, which says what to use instead
    requires = "any" if device == "cpu" else "nsys" if profiler == "nsys" else "cuda"
    return [cell(plan, SECTION, cell_name(size, ctx, mode, DTYPE), requires=requires, size=size, ctx=ctx, mode=mode,
                 dtype=DTYPE, batch=plan.edition.batch_size, warmup=plan.profile.warmup_steps,
                 steps=plan.profile.measure_steps, device=device, profiler=profiler)
            for size in sizes for ctx in contexts for mode in MODES]


# --- versions -------------------------------------------------------------------------------


def parse_nsys_version(text: str) -> str | None:
    """'NVIDIA Nsight Systems version 2024.5.1.113-245134619542v0' -> '2024.5.1'."""
    m = re.search(r"(\d{4})\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        return None
    return ".".join(g for g in m.groups() if g is not None)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def nvtx_trap_warning(nsys_version: str | None, nvtx_version: str | None) -> str | None:
    """The warning for an nsys that cannot see the installed nvtx package's ranges, or None."""
    if not nsys_version or not nvtx_version:
        return None
    if _version_tuple(nsys_version)[:2] < (2023, 1) and _version_tuple(nvtx_version) > (0, 2, 11):
        return (f"Nsight Systems {nsys_version} is older than 2023.1 and the nvtx package is {nvtx_version}: "
                "Nsight Systems 2022.4 records no NVTX ranges from nvtx newer than 0.2.11, so the capture range "
                f"and every per-range answer would be missing; {NVTX_FIX}")
    return None


def choose_reports(help_reports: str) -> dict[str, str]:
    """Report -> the name this nsys knows it by, from `nsys stats --help-reports`."""
    available = set(re.findall(r"^\s*([a-z][a-z0-9_]*)(?=[\s\[:]|$)", help_reports or "", re.MULTILINE))
    if not available & {n for names in WANTED_REPORTS.values() for n in names}:
        return {k: names[0] for k, names in WANTED_REPORTS.items()}  # unknown listing: current names
    chosen = {}
    for report, names in WANTED_REPORTS.items():
        name = next((n for n in names if n in available), None)
        if name:
            chosen[report] = name
    missing = [r for r in REQUIRED_REPORTS if r not in chosen]
    if missing:
        raise RuntimeError(f"this nsys lists none of the reports {', '.join(missing)} (nsys stats --help-reports)")
    return chosen


# --- command lines (pure) -----------------------------------------------------------------


def worker_command(config: dict, result_file: Path) -> list[str]:
    return [sys.executable, "-m", "lmreport.experiments.nsys_worker", json.dumps(config, sort_keys=True),
            str(result_file)]


def profile_command(nsys: str, output_base: Path, worker: list[str], capture_range: str = CAPTURE_RANGE) -> list[str]:
    """`nsys profile` of the worker, collecting from the first measured step to the end."""
    return [nsys, "profile",
            "--trace=cuda,nvtx",  # kernels, CUDA API and NVTX ranges; no OS-runtime tracing
            "--sample=none", "--cpuctxsw=none",  # no CPU sampling: less overhead, no perf permission needed
            "--capture-range=nvtx", f"--nvtx-capture={capture_range}", "--capture-range-end=none",
            "--force-overwrite=true", f"--output={output_base}", *worker]


def stats_command(nsys: str, report_file: Path, reports: list[str], output_prefix: Path) -> list[str]:
    """`nsys stats` writing one CSV per report, `<prefix>_<report>.csv`."""
    return [nsys, "stats", "--format=csv", "--force-export=true", f"--output={output_prefix}",
            *(f"--report={r}" for r in reports), str(report_file)]


def profile_env(base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["NSYS_NVTX_PROFILER_REGISTER_ONLY"] = "0"  # let the capture filter match any range name
    return env


# --- running --------------------------------------------------------------------------------


def run_logged(cmd: list[str], log: Path, timeout_s: float, env: dict | None = None) -> int:
    """Run cmd with output to log; kill its whole process group on timeout or interrupt."""
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            variable = "LMREPORT_NSYS_STATS_TIMEOUT_S" if cmd[1] == "stats" else "LMREPORT_NSYS_TIMEOUT_S"
            raise RuntimeError(f"`{Path(cmd[0]).name} {cmd[1]}` did not finish within {timeout_s:.0f} s and was "
                               f"stopped (log: {log}); raise {variable} to allow more") from None
        except BaseException:
            _kill_group(proc)
            raise


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _query(nsys: str, *args: str) -> str:
    try:
        out = subprocess.run([nsys, *args], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"`nsys {' '.join(args)}` failed: {e}") from None
    return out.stdout + out.stderr


def _nvtx_version() -> str | None:
    try:
        return importlib.metadata.version("nvtx")
    except importlib.metadata.PackageNotFoundError:
        return None


def run_cell(c: Cell, artifacts_dir: Path) -> dict:
    device = c.config.get("device", "cuda")  # records of older versions: nsys cells, always on a GPU
    profiler = choose_profiler(c.config.get("profiler", "nsys"), device, shutil.which("nsys") is not None)
    if profiler == "torch":
        from lmreport.experiments import torch_profile
        return torch_profile.run(c.config, artifacts_dir)
    if device != "cuda":
        raise CellSkipped("Nsight Systems profiles GPU kernels and this cell runs on the CPU: use --profiler torch "
                          "(or auto) for CPU operators, or a GPU profile")
    return run_nsys_cell(c, artifacts_dir)


def run_nsys_cell(c: Cell, artifacts_dir: Path) -> dict:
    nsys = shutil.which("nsys")
    if nsys is None:
        raise CellSkipped("needs Nsight Systems (`nsys` on PATH), or `--profiler torch`; or profile elsewhere and "
                          "`lmreport ingest nsys`")
    version = parse_nsys_version(_query(nsys, "--version"))
    nvtx_version = _nvtx_version()
    trap = nvtx_trap_warning(version, nvtx_version)
    if trap:
        warnings.warn(trap, stacklevel=1)
    reports = choose_reports(_query(nsys, "stats", "--help-reports"))
    profile_timeout_s, stats_timeout_s = timeouts()

    out = Path(artifacts_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "nsys-worker-result.json"
    for old in [result_file, *out.glob("stats_*.csv"), *out.glob("profile.*")]:
        old.unlink(missing_ok=True)
    profile_log = out / "nsys-profile.log"
    code = run_logged(profile_command(nsys, out / "profile", worker_command(c.config, result_file)), profile_log,
                      profile_timeout_s, env=profile_env())
    worker = json.loads(result_file.read_text()) if result_file.exists() else None
    if worker is None:
        raise RuntimeError(f"nsys profile exited with {code} before the worker wrote its result (log: {profile_log})")
    if worker["status"] == "oom":
        raise RuntimeError(f"CUDA out of memory in the profiled worker: {worker['error']}")
    if worker["status"] != "ok":
        raise RuntimeError(f"the profiled worker failed: {worker['error']} (log: {profile_log})")
    report_file = next((p for p in (out / "profile.nsys-rep", out / "profile.qdrep") if p.exists()), None)
    if report_file is None:
        raise RuntimeError(f"nsys profile wrote no report (exit {code}, log: {profile_log}); the NVTX range "
                           f"{CAPTURE_RANGE!r} that starts the capture was never seen" + (f": {trap}" if trap else ""))

    stats_log = out / "nsys-stats.log"
    run_logged(stats_command(nsys, report_file, list(reports.values()), out / "stats"), stats_log, stats_timeout_s)
    parsed, artifacts = [], {"report": report_file.name, "profile_log": profile_log.name, "stats_log": stats_log.name}
    for report, name in reports.items():
        csv_file = out / f"stats_{name}.csv"
        if not csv_file.exists():
            continue  # nsys writes no file for a report without data (it says SKIPPED)
        parsed += parse_file(csv_file).tables
        artifacts[report] = csv_file.name
    tables, _ = pick_tables(parsed)  # one profile: the first table of each report
    if "cuda_gpu_kern_sum" not in tables or not tables["cuda_gpu_kern_sum"].rows:
        raise RuntimeError(f"nsys stats wrote no kernel summary, or an empty one: the capture recorded no kernel "
                           f"(log: {stats_log})")
    metrics = summarise(tables, steps=c.config.get("steps"))
    if not metrics.get("ranges"):
        raise RuntimeError("the profile holds no NVTX ranges, so nothing can be split by phase"
                           + (f": {trap}" if trap else f"; if nsys is 2022.4 or older, {NVTX_FIX}"))
    metrics.update({"profiler": "nsys", "activity": "cuda", "nsys_version": version, "nvtx_version": nvtx_version,
                    "source": "profiled",
                    "python_timing": worker["timing"], "warnings": [trap] if trap else []})
    return {"metrics": metrics, "artifacts": artifacts}
