"""`--executor subprocess`: one fresh Python process per cell, so an OOM or a crash cannot poison later cells.

The child is `python -m lmreport.runner CELL_JSON RECORD_PATH [LAUNCH_JSON]` (runner._worker_main),
its output in `worker.log` beside the record. The child writes the record itself; if it dies
first (killed, segfault, timeout), `WorkerProcess.finish` records that as `error` (or `oom` when
the log says so) with the log's path. The local-gpus launcher and the worker launcher's
fresh-process cells start their children from a fork server instead (forked.py), unless
LMREPORT_FRESH_PROCESS=exec asks for this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from lmreport import store
from lmreport.launchers import Launcher
from lmreport.runner import Cell


def cell_log(record_file: Path) -> Path:
    """Where a child's output for a cell goes: `worker.log` in the cell's artifacts folder."""
    return store.artifacts_dir(Path(record_file)) / "worker.log"


def log_mentions_oom(log: Path) -> bool:
    try:
        return "out of memory" in log.read_text(errors="replace")[-20000:].lower()
    except OSError:
        return False


def mtime_ns(path: Path) -> int | None:
    try:
        return Path(path).stat().st_mtime_ns
    except FileNotFoundError:
        return None


def record_lost_cell(c: Cell, record_file: Path, before_mtime_ns: int | None, why: str, log: Path,
                     environment: dict | Callable[[], dict], started_at: str, launch: dict) -> dict:
    """The cell's record after its process ended: the one the child wrote, if it wrote one (a
    record with another mtime than before the launch; no clock comparison), else an `error` (or
    `oom` when the log says so) record naming why and the log, with `environment` (or what it
    returns: lost_cell_environment's git and device look-ups cost about a second the first time,
    so a launcher whose children mostly write their records passes it uncalled)."""
    record_file = Path(record_file)
    if mtime_ns(record_file) not in (None, before_mtime_ns):
        return store.read_record(record_file)
    environment = environment() if callable(environment) else environment
    status = "oom" if log_mentions_oom(log) else "error"
    wall_s = time.time() - launch["launched_at"] if launch.get("launched_at") else None
    record = store.make_record(c.section, c.name, c.config, environment, status,
                               error=f"{why} before writing a record; log: {log}",
                               artifacts={"log": log.name}, started_at=started_at, duration_s=wall_s or 0.0,
                               launcher=launch.get("launcher"), wall_s=wall_s)
    store.write_record(record_file, record)
    return record


def lost_cell_environment(env: dict | None = None) -> dict:
    """Where a dead child ran, as far as this process knows without initialising CUDA here
    (a CUDA context in the parent would hold GPU memory the next children need): on a GPU
    machine the device is unknown (None), never this parent's CPU. `env`: the child's
    environment variables where the launcher gave it its own (None: it inherited this one's),
    whose CUDA_VISIBLE_DEVICES says which GPUs it saw."""
    from lmreport.device import default_device, environment
    out = environment("cpu")
    device = default_device()
    if device != "cpu":
        out.update(device=None, device_type=device, cuda=None)
    if env is not None:
        out["cuda_visible_devices"] = env.get("CUDA_VISIBLE_DEVICES")
    return out


class WorkerProcess:
    """One cell in a child process (`python -m lmreport.runner`), its output in worker.log beside the record."""

    def __init__(self, c: Cell, record_file: Path, env: dict | None = None, launcher: str = "subprocess"):
        self.cell, self.record_file, self.env = c, Path(record_file), env
        self.log = cell_log(self.record_file)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # A record from an earlier run may exist; a fresh one has another mtime (no clock comparison).
        self.before = mtime_ns(self.record_file)
        self.started = store.now_iso()
        self.launch = {"launcher": launcher, "launched_at": time.time()}
        self._out = open(self.log, "w")
        self.proc = self._start()

    def _start(self):
        """Start the child; returns its handle (subprocess.Popen's poll, wait, kill and returncode are used)."""
        return subprocess.Popen([sys.executable, "-m", "lmreport.runner", self.cell.to_json(), str(self.record_file),
                                 json.dumps(self.launch)],
                                stdout=self._out, stderr=subprocess.STDOUT, env=self.env)

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout_s: float | None = None) -> int | str:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            return "timeout"

    def stop(self) -> None:
        """Kill the child (Ctrl-C, timeout); it writes no record, and neither does `finish` then."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()

    def finish(self, code: int | str | None = None) -> dict:
        self._out.close()
        code = self.proc.returncode if code is None else code
        return record_lost_cell(self.cell, self.record_file, self.before, f"worker exited with {code}", self.log,
                                lambda: lost_cell_environment(self.env), self.started, self.launch)


class SubprocessLauncher(Launcher):
    """One Python process per cell, so an OOM or a crash cannot poison later cells."""

    name = "subprocess"

    def __init__(self, timeout_s: float | None = None, env: dict | None = None):
        self.timeout_s = timeout_s
        self.env = env

    def run(self, c: Cell, record_file: Path) -> dict:
        return run_in_fresh_process(c, record_file, self.timeout_s, self.env, self.name)


def run_in_fresh_process(c: Cell, record_file: Path, timeout_s: float | None = None, env: dict | None = None,
                         launcher: str = "subprocess") -> dict:
    return wait_for_record(WorkerProcess(c, record_file, env=env, launcher=launcher), timeout_s)


def wait_for_record(worker: WorkerProcess, timeout_s: float | None = None) -> dict:
    """The record of a started cell, once its process has ended (killed after timeout_s)."""
    try:
        code = worker.wait(timeout_s)
    except BaseException:  # Ctrl-C or SIGTERM: the cell was not finished, so no record
        worker.stop()
        raise
    return worker.finish(code)
