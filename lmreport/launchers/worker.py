"""`--executor worker`: one long-lived process per section runs the section's cells one after another.

Why: on a GPU, much of a short cell's wall time is the fixed cost of a fresh process: start,
`import torch`, the CUDA context, cuBLAS handles, lazily loaded kernels, the model's build. In the
H200 records of ../shared/samples/h200 the first cell of a process takes about 5 s where the next
cell of the same shape takes 0.5 s. A worker pays those costs once per section, and keeps a built
model for the next cell of the same size (model_cache.py). What keeps its records those of a
clean process where that matters:

- every cell still runs through runner.execute_cell, which writes its record as in any process;
  each cell's stdout/stderr go to its own `worker.log` beside the record (removed when empty);
- cells marked `fresh_process` (CUDA memory snapshots, the cold-start ablation) run in a fresh
  process of their own, after the section's other cells, once the worker has exited (so nothing
  else holds the device, and one worker serves the whole section): a child forked from a server
  that has imported torch but never initialised CUDA (forked.py), or with LMREPORT_FRESH_PROCESS=exec
  a new interpreter as with `--executor subprocess`;
- each cell starts with Dynamo's caches empty (compiled code is never shared between cells,
  as between fresh processes);
- a worker retires after a cell that ran out of memory on CUDA (its caching allocator's
  fragmentation would shape later peaks) or hit an error that can poison a CUDA context ("CUDA
  error", illegal memory access, device-side assert, ...), and after dying in a cell (segfault,
  killed); that cell then runs again as the first cell of a new worker, unless it already was
  the first, so its `oom` or `error` record says what a clean process says. A cell that overruns
  `timeout_s` is recorded as `error` and not retried.

Protocol: the parent writes one JSON line per cell on the worker's stdin ({"cell", "record",
"launched_at"}); the worker answers one JSON line on the pipe that was its stdout ({"status",
"error", "cuda", "model_builds"}). End of stdin ends the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from lmreport import store
from lmreport.launchers import Finished, Launcher
from lmreport.launchers import forked
from lmreport.launchers.process import cell_log, lost_cell_environment, mtime_ns, record_lost_cell
from lmreport.runner import Cell, missing_requirement

# Errors after which a CUDA context may be unusable (CUDA's sticky errors: an illegal address or a
# device-side assert fails every later call of the process; cuBLAS/cuDNN failures are often their echo).
CUDA_POISON = re.compile(r"CUDA error|illegal memory access|device-side assert|unspecified launch failure|"
                         r"CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|NCCL error|AcceleratorError", re.IGNORECASE)
CLOSE_TIMEOUT_S = 60.0  # a worker asked to exit that has not after this long is killed


def retire_reason(reply: dict) -> str | None:
    """Why a worker must not run another cell after this reply, or None."""
    if reply.get("status") == "oom" and reply.get("cuda"):
        return "it ran out of CUDA memory (fragmentation would shape later peaks)"
    if reply.get("status") == "error" and CUDA_POISON.search(reply.get("error") or ""):
        return "a CUDA error may have poisoned its context"
    return None


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, env: dict | None):
        self.env = env
        self.started_at = time.time()  # the first cell's launch: process start and imports count in its wall_s
        self.cells = 0
        self.model_builds = 0
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "lmreport.launchers.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(line)
        self.replies.put(None)  # end of file: the worker has exited

    def run(self, c: Cell, record_file: Path, timeout_s: float | None) -> tuple[dict, dict | None, bool]:
        """(the cell's record, the worker's reply, whether it overran); reply None when the worker died or overran."""
        launched_at = self.started_at if self.cells == 0 else time.time()
        launch = {"launcher": WorkerLauncher.name, "launched_at": launched_at}
        before, started = mtime_ns(record_file), store.now_iso()
        self.cells += 1
        line, code = None, None
        try:
            self.proc.stdin.write(json.dumps({"cell": c.to_json(), "record": str(record_file),
                                              "launched_at": launched_at}) + "\n")
            self.proc.stdin.flush()
            line = self.replies.get(timeout=timeout_s)
        except BrokenPipeError:  # it had died already
            line = None
        except queue.Empty:
            self.kill()
            code = "timeout"
        if line is not None:
            reply = json.loads(line)
            self.model_builds = reply.get("model_builds", self.model_builds)
            return store.read_record(record_file), reply, False
        if code is None:
            code = self.proc.wait()
        record = record_lost_cell(c, record_file, before, f"worker exited with {code}", cell_log(record_file),
                                  lost_cell_environment(self.env), started, launch)
        return record, None, code == "timeout"

    def close(self) -> None:
        """Ask the worker to exit (end of its stdin); kill it if it does not."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


class WorkerLauncher(Launcher):
    """One worker process per run_many call (run_sweep calls it once per section)."""

    name = "worker"

    def __init__(self, timeout_s: float | None = None, env: dict | None = None):
        self.timeout_s = timeout_s
        self.env = env
        # What happened, for the summary line and the tests.
        self.stats: Counter = Counter()

    def run_many(self, todo: list[tuple[Cell, Path]], finished: Finished) -> Counter:
        worker: _Worker | None = None
        # A fresh-process cell this machine cannot run is only recorded `skipped`: no process for that.
        alone = [c.fresh_process and missing_requirement(c.requires) is None for c, _ in todo]
        fresh = [item for item, a in zip(todo, alone) if a]
        shared = [item for item, a in zip(todo, alone) if not a]
        if fresh:
            forked.mode()  # a bad LMREPORT_FRESH_PROCESS is refused before any cell runs
        try:
            for c, path in shared:
                retried = False
                while True:
                    if worker is None:
                        worker = _Worker(self.env)
                        self.stats["workers"] += 1
                    first = worker.cells == 0
                    record, reply, timed_out = worker.run(c, path, self.timeout_s)
                    if reply is None or retire_reason(reply):
                        self._retire(worker)
                        worker = None
                        if not first and not retried and not timed_out:
                            retried = True  # once more, as the first cell of a clean process
                            self.stats["retried in a new worker"] += 1
                            continue
                    break
                finished(c, record)
            if worker is not None:
                self._retire(worker)
                worker = None
            # Last, once no worker holds the device: the cells measured as the first work of a clean
            # process (after the section's other cells, so that e.g. bench's matmul rate is recorded first).
            for c, path in fresh:
                self.stats["fresh processes"] += 1
                finished(c, forked.run_in_forked_process(c, path, self.timeout_s, self.env, launcher=self.name))
        except BaseException:  # Ctrl-C or SIGTERM: the running cell writes nothing
            if worker is not None:
                worker.kill()
            raise
        return Counter()

    def _retire(self, worker: _Worker) -> None:
        worker.close()
        self.stats["model builds"] += worker.model_builds


# --- the worker process --------------------------------------------------------------------------


@contextlib.contextmanager
def _output_to(log: Path):
    """File descriptors 1 and 2 (Python's and C's output alike) go to the cell's log meanwhile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "w") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])
    if log.stat().st_size == 0:  # nothing said: no log, and no artifacts folder made for it
        log.unlink()
        with contextlib.suppress(OSError):
            log.parent.rmdir()


def _cuda_used() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _forget_compiled_code() -> None:
    """Empty Dynamo's caches, so the next cell compiles as it would in a fresh process.

    A torch.compile'd cell then never runs code compiled for an earlier cell's shapes, module or
    dynamic-shape setting, and a long sweep never reaches Dynamo's recompile limit (8 entries per
    code object by default), past which it would run eager code without a word. Inductor's FX
    graph cache (in memory and on disk) still serves recompilations, as it serves the cells of
    the subprocess launcher. Clearing empty caches costs microseconds.
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()


def serve(requests, reply) -> int:
    """Run each requested cell; one reply line per cell."""
    from lmreport import model_cache
    from lmreport.runner import execute_cell
    model_cache.enable()
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        c, record_file = Cell.from_json(req["cell"]), Path(req["record"])
        _forget_compiled_code()
        with _output_to(cell_log(record_file)):
            record = execute_cell(c, record_file, launch={"launcher": WorkerLauncher.name,
                                                          "launched_at": req["launched_at"]})
        reply.write(json.dumps({"status": record["status"], "error": record["error"], "cuda": _cuda_used(),
                                "model_builds": model_cache.builds}) + "\n")
        reply.flush()
    return 0


def main() -> int:
    reply = os.fdopen(os.dup(1), "w")  # the answers travel on the original stdout ...
    os.dup2(2, 1)  # ... and whatever is printed between cells goes to stderr
    try:
        return serve(sys.stdin, reply)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent says what happened
        return 130


if __name__ == "__main__":
    sys.exit(main())
