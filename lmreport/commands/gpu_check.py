"""lmreport gpu-check: prove a GPU machine runs every GPU code path, in one command (`make gpu-check`).

Three steps, each a child process under its own timeout, its output in a log under --out:
1. `lmreport run all --profile gpu-quick --rerun` with the worker launcher, the default on a GPU (one process
   per section keeps the CUDA context and built models; memory snapshots still get a clean process; an OOM
   is a record, the worker is replaced and the sweep goes on), so the check proves the default path; every
   cell runs again (--rerun), and the summary counts a record that started before the check as not run, so
   old or copied records never make it pass;
2. the CUDA tests, `pytest -m cuda` (JUnit XML);
3. `lmreport render --profile gpu-quick`.
After each step, `gpu-check.json` under --out says what ran; at the end the table of lmreport/gpu_check.py
(cells per section, the CUDA tests, the cross-checks) is printed and written to `gpu-check.txt`. Exit 0 when
every row passes, 1 otherwise, 2 without a CUDA GPU (nothing is run then).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from lmreport.commands._common import runs_dir
from lmreport.errors import UserError

ORDER = 17
PROFILE = "gpu-quick"
# Seconds per step. gpu-quick is sized for about 5 minutes on one H100/H200 (tests/test_gpu_quick.py
# estimates it from the H200 run's records); the limits leave room for a slower GPU and a cold
# torch.compile cache, and keep install + check within 10 minutes in the common case.
RUN_TIMEOUT_S = 420
TESTS_TIMEOUT_S = 240
RENDER_TIMEOUT_S = 120


def register(sub) -> None:
    p = sub.add_parser("gpu-check", help="run the gpu-quick profile, the CUDA tests and the render; one summary table")
    p.add_argument("--edition", type=int, choices=(2025, 2026), default=2025, help="handout edition (default 2025)")
    p.add_argument("--runs-dir", type=runs_dir, default=Path("runs"), help="where records live (default: runs)")
    p.add_argument("--out", type=Path, default=Path("build") / "gpu-check",
                   help="logs, JUnit XML, the rendered writeup and the summary (default: build/gpu-check)")
    p.add_argument("--executor", default="worker", help="executor of the run step (default: worker, as `lmreport run` on a GPU)")
    for step, default in (("run", RUN_TIMEOUT_S), ("tests", TESTS_TIMEOUT_S), ("render", RENDER_TIMEOUT_S)):
        p.add_argument(f"--{step}-timeout", type=float, default=default, metavar="S",
                       help=f"seconds for the {step} step (default {default})")
    p.set_defaults(func=main)


def _require_cuda() -> None:
    from lmreport.device import cuda_available
    if not cuda_available():
        raise UserError("gpu-check needs a CUDA GPU: PyTorch sees none on this machine (torch.cuda.is_available() "
                        "is False); run `make gpu-check` on a machine with an NVIDIA GPU")


def run_step(name: str, cmd: list[str], log: Path, timeout_s: float, cwd: Path | None = None):
    """Run cmd with stdout and stderr into log; on timeout kill its whole process group (workers included)."""
    from lmreport.gpu_check import Step
    print(f"gpu-check: {name} (timeout {timeout_s:.0f} s; log {log})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        try:
            code, timed_out = proc.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code, timed_out = None, True
        except BaseException:  # Ctrl-C: stop the step too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    step = Step(name, code, time.perf_counter() - t0, timed_out, str(log))
    print(f"gpu-check: {name}: {'timed out' if timed_out else f'exit {code}'} after {step.wall_s:.0f} s",
          file=sys.stderr, flush=True)
    return step


def _save(out: Path, steps: list, extra: dict | None = None) -> None:
    (out / "gpu-check.json").write_text(json.dumps({"steps": [asdict(s) for s in steps], **(extra or {})}, indent=1))


def main(args) -> int:
    _require_cuda()
    from lmreport import gpu_check, store
    from lmreport.device import PROJECT_ROOT
    from lmreport.presets import resolve
    from lmreport.runner import Plan
    from lmreport.sections import all_sections, get

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = args.runs_dir.resolve()
    lm = [sys.executable, "-m", "lmreport"]
    plan_flags = ["--profile", PROFILE, "--edition", str(args.edition), "--runs-dir", str(runs)]
    steps = []
    started = store.now_iso()  # records of this check start at or after it (summarize's `since`)
    steps.append(run_step("run all --profile gpu-quick",
                          [*lm, "run", "all", *plan_flags, "--executor", args.executor, "--no-progress", "--rerun"],
                          out / "run.log", args.run_timeout))
    _save(out, steps, {"started_at": started})
    junit = out / "cuda-tests.xml"
    junit.unlink(missing_ok=True)
    steps.append(run_step("pytest -m cuda", [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                                            f"--junitxml={junit}", str(PROJECT_ROOT / "tests")],
                          out / "cuda-tests.log", args.tests_timeout, cwd=PROJECT_ROOT))
    _save(out, steps, {"started_at": started})
    from lmreport.report.pdf import missing_tools
    no_pdf = missing_tools()  # installed from a few wheels without the `pdf` extra: Markdown only
    steps.append(run_step("render" + (f" (Markdown only: no {', '.join(no_pdf)})" if no_pdf else ""),
                          [*lm, "render", *plan_flags, "--out", str(out / "build"), *(["--no-pdf"] if no_pdf else [])],
                          out / "render.log", args.render_timeout))
    _save(out, steps, {"started_at": started})

    prof, ed = resolve(PROFILE, args.edition, True)
    plan = Plan(prof, ed)
    planned = {name: [c.name for c in get(name).experiment_module().cells(plan)] for name in all_sections()}
    # this plan's folder only: runs/ may hold a user model's gpu-quick run (runs/2025-gpu-quick--<model>/) too,
    # whose cells have the same names
    run_dir = runs / plan.run
    records = store.load_records(run_dir) if run_dir.is_dir() else []
    tests = gpu_check.parse_junit(junit) if junit.exists() else None
    summary = gpu_check.summarize(gpu_check.select_for_check(records, ed.year, prof.name, started), planned, tests,
                                  steps, since=started)
    text = gpu_check.table(summary)
    (out / "gpu-check.txt").write_text(text + "\n")
    _save(out, steps, {"started_at": started, "rows": summary.rows, "ok": summary.ok})
    print(text)
    return 0 if summary.ok else 1
