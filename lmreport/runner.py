"""Runs the cells of a sweep through an executor and writes one record per cell.

What to run comes from the experiment modules (cells); how to launch is the executor's
business (inline in this process, one subprocess per cell, one worker per local GPU in
local_gpus.py, Slurm job arrays through submitit in slurm.py); what a cell measures is the
experiment's. A rerun skips cells whose record is `ok` and retries the rest.

Every executor ends in `execute_cell` in some process, so records are written the same way
everywhere: atomically, into the shared runs/ folder, by the process that ran the cell.

Failure is data: out-of-memory becomes status `oom`, any other exception `error` with its
message, a cell the machine cannot run `skipped` with the reason. A record is written only
when its cell has finished (atomically, see store.py), so Ctrl-C or a kill never leaves a
half-written or falsely `ok` record.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from lmreport import store
from lmreport.errors import InputFileError
from lmreport.presets import Edition, Profile
from lmreport.user_model import ModelSpec, reference

REQUIREMENTS = ("any", "cuda", "nsys")


@dataclass(frozen=True)
class Plan:
    """What a sweep is for: the profile and edition the cells come from, and the implementation it measures."""

    profile: Profile
    edition: Edition
    model: ModelSpec | None = None  # None: lmreport's own model (user_model.reference())

    @property
    def run(self) -> str:
        """runs/<edition>-<profile>, or runs/<edition>-<profile>--<model> for a user's model (`--model`)."""
        slug = None if self.model is None or self.model.is_reference else self.model.slug
        return store.run_name(self.edition.year, self.profile.name, slug)


@dataclass(frozen=True)
class Cell:
    section: str
    name: str  # unique within the section, also the record's file name
    config: dict  # JSON-able; includes edition and profile (added by `cell()`)
    requires: str = "any"  # "any", "cuda" or "nsys": what the machine must have

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Cell":
        return Cell(**json.loads(text))


def cell(plan: Plan, section: str, name: str, requires: str = "any", **config) -> Cell:
    """A cell whose config carries the plan's edition and profile (records say where they belong), and, in a
    section that measures the model, the implementation (module, class, source hash: user_model.py); a cell
    of such a section that measures no model of the user's passes implementation=None."""
    assert requires in REQUIREMENTS, requires
    if "implementation" not in config and _measures_model(section):
        config["implementation"] = (plan.model or reference()).to_config()
    return Cell(section, name, {"edition": plan.edition.year, "profile": plan.profile.name, **config}, requires)


def _measures_model(section: str) -> bool:
    from lmreport.sections import all_sections
    found = all_sections().get(section)
    return bool(found and found.measures_model)


class CellSkipped(Exception):
    """Raised by run_cell when this machine cannot run the cell; the message says what can."""


def missing_requirement(requires: str) -> str | None:
    from lmreport.device import cuda_available
    if requires in ("cuda", "nsys") and not cuda_available():
        return "needs a CUDA GPU" + (" and Nsight Systems (`nsys` on PATH)" if requires == "nsys" else "")
    if requires == "nsys" and shutil.which("nsys") is None:
        return "needs Nsight Systems (`nsys` on PATH)"
    return None


def _gpu_command(c: Cell) -> str:
    """The command that runs a skipped cell's section where its requirement is met (README: 'On a GPU machine')."""
    edition = c.config.get("edition")
    profile = c.config.get("profile")
    plan = f" --profile {profile}" if profile and profile != "cpu" else f" --profile handout-{edition}" if edition else ""
    impl = c.config.get("implementation")
    model = ModelSpec.from_config(impl).flags() if isinstance(impl, dict) else ""
    return f"`lmreport run {c.section}{plan}{model}`"


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def execute_cell(c: Cell, record_file: Path, run_fn: Callable | None = None) -> dict:
    """Run one cell in this process and write its record; returns the record."""
    from lmreport.device import default_device, environment
    from lmreport.sections import get

    started, t0 = store.now_iso(), time.perf_counter()
    artifacts = store.artifacts_dir(record_file)
    status, error, result = "ok", None, {}
    reason = missing_requirement(c.requires)
    if reason:
        status, error = "skipped", f"{reason}; on such a machine: {_gpu_command(c)}"
    else:
        try:
            fn = run_fn or get(c.section).experiment_module().run_cell
            result = fn(c, artifacts) or {}
        except CellSkipped as e:
            status, error = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - failures are data, the sweep goes on
            status = "oom" if is_out_of_memory(e) else "error"
            error = f"{type(e).__name__}: {e}".strip()[:2000]
            if status == "error" and os.environ.get("LMREPORT_DEBUG"):
                traceback.print_exc()
            _release_cuda_memory()
    if status == "skipped":
        kept = _ok_record_a_skip_keeps(c, record_file, error)
        if kept is not None:
            return kept
    set_aside_unreadable(record_file)
    record = store.make_record(c.section, c.name, c.config, environment(default_device()), status,
                               metrics=result.get("metrics"), artifacts=result.get("artifacts"),
                               error=error, started_at=started, duration_s=time.perf_counter() - t0)
    store.write_record(record_file, record)
    return record


def _ok_record_a_skip_keeps(c: Cell, record_file: Path, reason: str | None) -> dict | None:
    """A cell this machine cannot run never replaces the ok record it already has (`--rerun` on a
    CPU machine would otherwise wipe GPU profiles ingested or copied from elsewhere).

    The record is rewritten unchanged, so its mtime moves: the subprocess and Slurm executors
    take a fresh mtime as "the cell wrote its record" (WorkerProcess.finish, slurm.resolve).
    """
    try:
        previous = store.read_record(record_file)
    except (OSError, InputFileError):
        return None
    if previous["status"] != "ok":
        return None
    previous.pop("_path", None)
    store.write_record(record_file, previous)
    warnings.warn(f"{c.section}/{c.name}: kept its ok record from {previous.get('started_at')}; this machine "
                  f"cannot rerun it ({reason})", stacklevel=3)
    return previous


def set_aside_unreadable(record_file: Path) -> None:
    """A record file that is not a record is renamed `<cell>.json.unreadable`, not overwritten (a
    hand-edited or truncated file may still be worth reading); the loader skips that name."""
    if not record_file.exists():
        return
    try:
        store.read_record(record_file)
    except InputFileError:
        aside = record_file.with_name(record_file.name + ".unreadable")
        os.replace(record_file, aside)
        warnings.warn(f"{record_file}: not a readable record; kept as {aside.name}, and the cell runs again",
                      stacklevel=3)
    except OSError:
        pass


def _release_cuda_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# --- executors --------------------------------------------------------------------------------


class InlineExecutor:
    """Runs cells in this process: fastest, used on CPU and in tests."""

    name = "inline"

    def run(self, c: Cell, record_file: Path) -> dict:
        return execute_cell(c, record_file)


class WorkerProcess:
    """One cell in a child process (`python -m lmreport.runner`), its output in worker.log beside the record.

    The child writes the record itself; if it dies first (killed, segfault, timeout), `finish`
    records that as `error` (or `oom` when the log says so) with the log's path.
    """

    def __init__(self, c: Cell, record_file: Path, env: dict | None = None):
        self.cell, self.record_file, self.env = c, Path(record_file), env
        self.log = store.artifacts_dir(self.record_file) / "worker.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # A record from an earlier run may exist; a fresh one has another mtime (no clock comparison).
        self.before = self.record_file.stat().st_mtime_ns if self.record_file.exists() else None
        self.started, self.t0 = store.now_iso(), time.perf_counter()
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lmreport.runner", c.to_json(), str(self.record_file)],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=env)

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
        fresh = self.record_file.exists() and self.record_file.stat().st_mtime_ns != self.before
        if fresh:
            return store.read_record(self.record_file)
        error = f"worker exited with {code} before writing a record; log: {self.log}"
        status = "oom" if _log_mentions_oom(self.log) else "error"
        c = self.cell
        record = store.make_record(c.section, c.name, c.config, self._environment(), status, error=error,
                                   artifacts={"log": self.log.name}, started_at=self.started,
                                   duration_s=time.perf_counter() - self.t0)
        store.write_record(self.record_file, record)
        return record


    def _environment(self) -> dict:
        """Where the dead worker ran, as far as this process knows without initialising CUDA here
        (a CUDA context in the parent would hold GPU memory the next workers need): on a GPU
        machine the device is unknown (None), never this parent's CPU."""
        from lmreport.device import default_device, environment
        env = environment("cpu")
        device = default_device()
        if device != "cpu":
            env.update(device=None, device_type=device, cuda=None)
        if self.env is not None:
            env["cuda_visible_devices"] = self.env.get("CUDA_VISIBLE_DEVICES")
        return env


class SubprocessExecutor:
    """One Python process per cell, so an OOM or a crash cannot poison later cells."""

    name = "subprocess"

    def __init__(self, timeout_s: float | None = None, env: dict | None = None):
        self.timeout_s = timeout_s
        self.env = env

    def run(self, c: Cell, record_file: Path) -> dict:
        worker = WorkerProcess(c, record_file, env=self.env)
        try:
            code = worker.wait(self.timeout_s)
        except BaseException:  # Ctrl-C or SIGTERM: the cell was not finished, so no record
            worker.stop()
            raise
        return worker.finish(code)


def _log_mentions_oom(log: Path) -> bool:
    try:
        return "out of memory" in log.read_text(errors="replace")[-20000:].lower()
    except OSError:
        return False


def _local_gpus_executor(**options):
    from lmreport.local_gpus import LocalGpusExecutor
    return LocalGpusExecutor(**options)


def _slurm_executor(**options):
    from lmreport.slurm import SubmititExecutor
    return SubmititExecutor(**options)


# Name -> factory. An executor has `run(cell, record_file) -> record`, or, when it runs many cells
# at once, `run_many(todo, finished) -> Counter` calling finished(cell, record) per finished cell.
EXECUTORS: dict[str, Callable[..., object]] = {
    "inline": InlineExecutor,
    "subprocess": SubprocessExecutor,
    "local-gpus": _local_gpus_executor,  # one worker per visible GPU (local_gpus.py)
    "slurm": _slurm_executor,  # job arrays through submitit (slurm.py)
}


def default_executor() -> str:
    from lmreport.device import cuda_available
    return "subprocess" if cuda_available() else "inline"


# --- sweeps ---------------------------------------------------------------------------------


@dataclass
class SweepResult:
    counts: Counter = field(default_factory=Counter)  # status -> cells (plus "cached")
    records: list[dict] = field(default_factory=list)


# The attention sweep has no model context, only the sequence length of its Q, K, V: `--ctx`
# selects that too, so one flag picks "the length" in every section.
FILTER_ALIASES = {"ctx": ("ctx", "seq_len")}


def filter_cells(cells: Iterable[Cell], filters: dict[str, list]) -> list[Cell]:
    """Keep cells whose config matches every filter (values compared as strings)."""
    def value(c: Cell, key: str):
        return next((c.config[k] for k in FILTER_ALIASES.get(key, (key,)) if k in c.config), None)

    def keep(c: Cell) -> bool:
        return all(str(value(c, k)) in {str(v) for v in vals} for k, vals in filters.items() if vals)
    return [c for c in cells if keep(c)]


def run_sweep(cells: list[Cell], runs_dir: Path, run: str, executor: str | object = "inline",
              rerun: bool = False, progress: bool = True) -> SweepResult:
    """Run the cells that have no ok record (all with rerun) through an executor (a name or an instance)."""
    result = SweepResult()
    todo = []
    for c in cells:
        path = store.record_path(runs_dir, run, c.section, c.name)
        if not rerun and store.is_ok(path):
            result.counts["cached"] += 1
        else:
            todo.append((c, path))
    if not todo:
        return result
    ex = EXECUTORS[executor]() if isinstance(executor, str) else executor
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc=todo[0][0].section, unit="cell", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)

    skipped: Counter = Counter()  # reason -> cells: one line per reason, not per cell

    def finished(c: Cell, record: dict) -> None:
        bar.update(1)
        result.counts[record["status"]] += 1
        result.records.append(record)
        if record["status"] == "skipped":
            skipped[record["error"] or "no reason given"] += 1
        elif record["status"] != "ok":
            bar.write(f"  {c.name}: {record['status']}" + (f" ({record['error']})" if record["error"] else ""))

    with _sigterm_as_interrupt():
        try:
            if hasattr(ex, "run_many"):
                result.counts.update(ex.run_many(todo, finished))
            else:
                for c, path in todo:
                    bar.set_postfix_str(c.name, refresh=True)
                    finished(c, ex.run(c, path))
        finally:
            bar.close()
            for reason, n in skipped.items():
                print(f"  {n} cell{'s' if n > 1 else ''} skipped: {reason}", file=sys.stderr)
    return result


class _sigterm_as_interrupt:
    """A kill (SIGTERM) stops the sweep like Ctrl-C: the running cell writes nothing."""

    def __enter__(self):
        self.old = None
        try:
            self.old = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not in the main thread
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _worker_main(argv: list[str]) -> int:
    """Entry of the subprocess executor: python -m lmreport.runner CELL_JSON RECORD_PATH."""
    c = Cell.from_json(argv[0])
    record = execute_cell(c, Path(argv[1]))
    return 0 if record["status"] in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
