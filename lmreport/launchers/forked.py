"""Fresh-process cells forked from a server that has imported torch already (a "zygote").

A cell marked `Cell.fresh_process` (a CUDA memory snapshot, a cold start without warm-up) must
start from a clean CUDA state: no CUDA context, a fresh caching allocator, no compiled code, no
cached model, no earlier cell in its process. It needs no new interpreter, whose start and
`import torch` cost seconds per cell (README, "Launch overhead"). So such a cell runs in a child
forked from a server that imported torch and the lmreport modules a cell imports (PRELOAD), and
then did nothing: it never initialised CUDA and never ran a torch op, so there is no CUDA context
and no OpenMP / intra-op thread pool to inherit (a child forked after CUDA initialised cannot use
CUDA; one that inherits a libgomp thread pool can hang in its first parallel region). The one
thread importing torch starts (numpy's OpenBLAS pool) is stopped by OpenBLAS's own fork handler
before each fork, so the server forks single-threaded. Before each fork it also freezes its objects
for the garbage collector (fork_server_setup.py).

The server is Python's own: multiprocessing's "forkserver" context, started by this process at its
first fresh cell (the worker's fresh-process cells, every local-gpus cell), with this process's
environment, in its process group, and gone when this process exits. Its preload list never names
`__main__`: the parent's main script (a pytest run, a user's script) could do anything there, CUDA
included. What keeps a forked cell's record that of a fresh interpreter:

- the child runs runner._worker_main, the subprocess launcher's entry, with fds 1 and 2 (Python's
  and C's output) in the cell's `worker.log`; launch, timeout, kill, death and Ctrl-C are handled by
  process.WorkerProcess, so records are those of process.run_in_fresh_process, field for field
  (the child ends as multiprocessing's children do, its output flushed, without atexit handlers:
  its record is written before). The child waits for this process's go, sent once it has the
  child's pid: a child forked after a Ctrl-C interrupted its start runs nothing;
- its environment is exactly `env` (this process's when None), set before anything touches CUDA.
  What was read earlier, at interpreter start (PYTHONPATH) or when torch was imported
  (OMP_NUM_THREADS, read by libgomp when it is loaded), came from the server's environment: a cell
  whose environment differs from the server's in anything but CUDA_INIT_VARIABLES gets a new
  interpreter instead (said once on stderr);
- before the cell, the child checks that torch reports no bad fork and no initialised CUDA. The
  bad-fork flag (`torch._C._cuda_isInBadFork`, in torch's CUDA builds) is set in a child forked
  after its parent asked the CUDA runtime anything: torch/csrc/cuda/Module.cpp registers the
  pthread_atfork handler that sets it (`poison_fork`) at CUDA's lazy initialisation and in
  `_cuda_getDeviceCount`, the call behind a non-NVML `torch.cuda.is_available()`. If a check
  fails, the child replaces itself with a new interpreter (`exec`, same process and log) that runs
  the cell, and this process stops forking and says so once. A server that cannot start means new
  interpreters too.

A child of multiprocessing's spawn and forkserver methods imports the parent's main script again
(as `__mp_main__`) before its target runs, unless the start request names none: this process asks
for its children with a bare `__main__` in place (_no_main_module), since `_child` needs nothing from
the main script. So a script that runs sweeps with fresh-process cells needs no
`if __name__ == "__main__":` guard, and its top-level code runs once, in its own process.

LMREPORT_FRESH_PROCESS=exec makes every fresh cell use a new interpreter (process.WorkerProcess),
for a platform where forking a process that has imported torch misbehaves (macOS, where Python no
longer forks by default because system libraries may start threads; a library that starts threads
when imported). The default is `fork`, except on macOS, where it is `exec` (LMREPORT_FRESH_PROCESS=fork
still forks there).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import types
from pathlib import Path

from lmreport.errors import UserError
from lmreport.launchers.process import WorkerProcess, wait_for_record
from lmreport.runner import Cell

MODE_VARIABLE = "LMREPORT_FRESH_PROCESS"
MODES = ("fork", "exec")

# What the server imports, in this order: the module that makes a stray CUDA query fork-safe
# (before torch), torch, Dynamo (0.8 s here; torch.optim imports it at an optimizer's first
# parameter group, torch/_compile.py), then what a fresh cell imports (the sections with fresh
# cells: bench's cold starts, memory's snapshots). None of them touches CUDA or runs a torch op when
# imported (tests/test_forked.py checks that).
PRELOAD = (
    "lmreport.launchers.fork_server_setup",
    "torch",
    "torch._dynamo",
    "lmreport.runner",
    "lmreport.launchers.forked",
    "lmreport.device",
    "lmreport.timing",
    "lmreport.model",
    "lmreport.optim",
    "lmreport.workloads",
    "lmreport.experiments.bench",
    "lmreport.experiments.memory",
    "lmreport.safe_pickle",
    "lmreport.ingest.snapshot",
    "lmreport.ingest.snapshot_format",
    "lmreport.ingest.snapshot_replay",
)
# Read by CUDA when it initialises (cuInit), which the server never did: a child may set them
# itself (local-gpus gives each child its own GPU this way).
CUDA_INIT_VARIABLES = ("CUDA_VISIBLE_DEVICES",)
# What p.start() raises when the server cannot serve: it could not be started or reached (OSError:
# spawning it, connecting to its socket, a pipe), or it died before it forked (EOFError from
# forkserver.read_signed). Anything else is a bug on this side, not a reason to stop forking.
SERVER_FAILURES = (OSError, EOFError)
# The first line of a child's log when it found itself unclean and became a new interpreter.
UNCLEAN = "lmreport: this forked process is not clean, the cell runs in a new interpreter instead: "

_server_env: dict[str, str] | None = None  # this process's environment when it started the server
_off: str | None = None  # why this process no longer forks (the server failed, or a child was unclean)
_said: set[str] = set()


def mode() -> str:
    default = "exec" if sys.platform == "darwin" else "fork"  # macOS: see the docstring
    value = os.environ.get(MODE_VARIABLE, default) or default
    if value not in MODES:
        raise UserError(f"{MODE_VARIABLE}={value!r}: expected 'fork' or 'exec' (the default here: {default!r})")
    return value


def why_not_fork(env: dict | None = None) -> str | None:
    """Why a fresh cell with this environment (None: this process's) gets a new interpreter, or None."""
    if mode() == "exec":
        return f"{MODE_VARIABLE}=exec"
    if _off is not None:
        return _off
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "this platform has no fork server"
    server = _server_env if _server_env is not None else os.environ
    child = os.environ if env is None else env
    differ = sorted(k for k in set(server) | set(child) if k not in CUDA_INIT_VARIABLES and server.get(k) != child.get(k))
    if differ:
        names = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        return f"their environment differs from the fork server's in {names}"
    return None


def start(c: Cell, record_file: Path, env: dict | None = None, launcher: str = "subprocess") -> WorkerProcess:
    """A fresh process running the cell: forked from the server, else a new interpreter (saying why, once)."""
    why = why_not_fork(env)
    if why is None:
        return ForkedProcess(c, record_file, env=env, launcher=launcher)
    if why != f"{MODE_VARIABLE}=exec":  # asked for: nothing to say
        _say_once(why)
    return WorkerProcess(c, record_file, env=env, launcher=launcher)


def run_in_forked_process(c: Cell, record_file: Path, timeout_s: float | None = None, env: dict | None = None,
                          launcher: str = "subprocess") -> dict:
    """process.run_in_fresh_process, with the process forked from the server where it can be."""
    return wait_for_record(start(c, record_file, env, launcher), timeout_s)


class ForkedProcess(WorkerProcess):
    """process.WorkerProcess whose child is forked from the server instead of started as a new interpreter."""

    def _start(self):
        global _server_env
        ctx = multiprocessing.get_context("forkserver")
        if _server_env is None:
            ctx.set_forkserver_preload(list(PRELOAD))
            _server_env = dict(os.environ)  # the server starts in p.start() below, with this environment
        env = dict(os.environ if self.env is None else self.env)
        # The child runs the cell only once told to, after p.start() returned (this process has its
        # pid, so a Ctrl-C from now on kills it: wait_for_record). Before, the request is sent and
        # p.start() waits while the server imports torch (seconds): a Ctrl-C there leaves no pid
        # here, and the server forks the child anyway, which then finds `go` closed and runs nothing.
        go_r, go_w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, name=f"lmreport-{self.cell.section}-{self.cell.name}",
                        args=(self.cell.to_json(), str(self.record_file), self.launch, env, str(self.log), go_r))
        try:
            try:
                with _no_main_module():
                    p.start()
            except SERVER_FAILURES as e:  # this cell and the next get new interpreters
                _say_once(_stop_forking(f"the fork server failed ({type(e).__name__}: {e})"))
                return super()._start()
            go_w.send_bytes(b"go")
            return _Child(p)
        except BaseException:
            if p.pid is not None:  # forked, not yet told to run, or just told: it runs nothing unwatched
                p.kill()
            self._out.close()
            raise
        finally:
            go_r.close()
            go_w.close()

    def finish(self, code: int | str | None = None) -> dict:
        record = super().finish(code)
        why = _unclean(self.log)
        if why is not None:
            _say_once(_stop_forking(f"a forked child was not clean ({why})"))
        return record


@contextlib.contextmanager
def _no_main_module():
    """A bare `__main__` (no __spec__, no __file__) meanwhile, so that a start request names no main module.

    multiprocessing sends each child "preparation data" with the parent's main module, which the
    child imports again (as __mp_main__) before it runs its target (CPython 3.11
    Lib/multiprocessing/spawn.py: get_preparation_data() sets `init_main_from_name` from
    `sys.modules['__main__'].__spec__.name`, else `init_main_from_path` from its `__file__`;
    popen_forkserver.Popen._launch sends that data, and the forked child's spawn._main() passes it to
    prepare(), which imports the script). A script without an `if __name__ == "__main__":` guard
    would then run again in the child, its sweep included, before `_child` set the environment and
    the log. `_child` is lmreport's, so the child needs nothing from the main script.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Child:
    """A forked child behind the part of subprocess.Popen's interface that WorkerProcess uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self.process = process

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # -N after signal N, as Popen's

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.process.name, timeout)
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()


def _stop_forking(why: str) -> str:
    global _off
    _off = why
    return why


def _say_once(why: str) -> None:
    if why not in _said:
        _said.add(why)
        print(f"lmreport: fresh-process cells run in a new interpreter: {why}", file=sys.stderr, flush=True)


def _unclean(log: Path) -> str | None:
    try:
        with open(log, errors="replace") as f:
            first = f.readline()
    except OSError:
        return None
    return first[len(UNCLEAN):].strip() if first.startswith(UNCLEAN) else None


# --- in the forked child ---------------------------------------------------------------------------


def unclean_state() -> str | None:
    """Why this process is not as clean as a new interpreter for a CUDA measurement, or None."""
    torch = sys.modules.get("torch")
    if torch is None:  # nothing was preloaded: nothing inherited either
        return None
    # is_initialized() is False in a bad fork (torch/cuda/__init__.py), so that is asked first.
    if getattr(torch._C, "_cuda_isInBadFork", lambda: False)():
        return "forked from a process that had initialised CUDA"
    if torch.cuda.is_initialized():
        return "CUDA is initialised"
    return None


def _child(cell_json: str, record_file: str, launch: dict, env: dict, log: str,
           go: multiprocessing.connection.Connection) -> None:
    """The forked child: once its parent says go, the cell's environment and log, the checks, then the subprocess
    launcher's entry."""
    try:
        go.recv_bytes()
    except EOFError:  # the parent's start failed or was interrupted, or the parent is gone: nobody waits for the cell
        return
    go.close()
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)  # created (emptied) by the parent
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    argv = [cell_json, record_file, json.dumps(launch)]
    why = unclean_state()
    if why is not None:
        print(UNCLEAN + why, flush=True)
        os.execv(sys.executable, [sys.executable, "-m", "lmreport.runner", *argv])
    from lmreport.runner import _worker_main
    sys.exit(_worker_main(argv))
