"""Plans the cells of a sweep, runs one cell in this process, and runs sweeps through a launcher.

What to run comes from the experiment modules (cells, planned here: Plan, Cell, cell(),
filter_cells, and the skip rule of `cells_to_run`); how to launch is a launcher's business
(lmreport/launchers/: inline, subprocess, worker, local-gpus, slurm); what a cell measures is
the experiment's. A rerun skips cells whose record is `ok` and retries the rest.

Every launcher ends in `execute_cell` in some process, so records are written the same way
everywhere: atomically, into the shared runs/ folder, by the process that ran the cell. This
module imports no launcher: run_sweep looks one up by name in lmreport.launchers when given a
name, and the launchers import the cell type and execute_cell from here.

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
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from lmreport import store
from lmreport.errors import InputFileError
from lmreport.presets import Edition, Profile
from lmreport.user_model import ModelSpec, reference

if TYPE_CHECKING:
    from lmreport.launchers import Launcher

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
    # Measured as the first work of a clean process (a CUDA memory snapshot, a cold start): the
    # worker launcher runs such a cell in a process of its own instead of its long-lived one.
    fresh_process: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Cell":
        return Cell(**json.loads(text))


def cell(plan: Plan, section: str, name: str, requires: str = "any", fresh_process: bool = False, **config) -> Cell:
    """A cell whose config carries the plan's edition and profile (records say where they belong), and, in a
    section that measures the model, the implementation (module, class, source hash: user_model.py); a cell
    of such a section that measures no model of the user's passes implementation=None."""
    assert requires in REQUIREMENTS, requires
    if "implementation" not in config and _measures_model(section):
        config["implementation"] = (plan.model or reference()).to_config()
    return Cell(section, name, {"edition": plan.edition.year, "profile": plan.profile.name, **config}, requires,
                fresh_process)


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


def execute_cell(c: Cell, record_file: Path, run_fn: Callable | None = None, launch: dict | None = None) -> dict:
    """Run one cell in this process and write its record; returns the record.

    `launch` says how the cell got here: {"launcher": name, "launched_at": time.time() when the
    launcher started it (the parent's clock; same host)}. The record keeps the launcher, `wall_s`
    (from launch to record, so a fresh process's start, imports and CUDA set-up count; without
    launched_at, this call's own wall time) and `timed_s` (wall time inside timed steps,
    timing.timed_seconds), next to `duration_s` (this call's wall time).
    """
    from lmreport import timing
    from lmreport.device import default_device, environment
    from lmreport.sections import get

    launch = launch or {}
    started, t0, timed0 = store.now_iso(), time.perf_counter(), timing.timed_seconds()
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
    duration_s = time.perf_counter() - t0
    timed_s = timing.timed_seconds() - timed0
    launched_at = launch.get("launched_at")
    record = store.make_record(c.section, c.name, c.config, environment(default_device()), status,
                               metrics=result.get("metrics"), artifacts=result.get("artifacts"),
                               error=error, started_at=started, duration_s=duration_s,
                               launcher=launch.get("launcher"),
                               wall_s=max(duration_s, time.time() - launched_at) if launched_at else duration_s,
                               timed_s=timed_s if timed_s > 0 else None)
    store.write_record(record_file, record)
    return record


def _ok_record_a_skip_keeps(c: Cell, record_file: Path, reason: str | None) -> dict | None:
    """A cell this machine cannot run never replaces the ok record it already has (`--rerun` on a
    CPU machine would otherwise wipe GPU profiles ingested or copied from elsewhere).

    The record is rewritten unchanged, so its mtime moves: the subprocess, worker and Slurm
    launchers take a fresh mtime as "the cell wrote its record" (launchers.process.record_lost_cell,
    slurm.resolve).
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
        warnings.warn(f"{record_file}: not a readable record; kept as {aside.name}, and a new record takes its place",
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


def cells_to_run(cells: list[Cell], runs_dir: Path, run: str, rerun: bool = False,
                 is_ok: Callable[[Path], bool] | None = None) -> tuple[list[tuple[Cell, Path]], list[Cell]]:
    """The skip rule: (cells to run with their record paths, cells skipped for their ok record).

    Without `rerun`, a cell whose record is `ok` is not run again; any other record (oom,
    error, skipped, unreadable) or none means it runs. Reads records only (with store.is_ok,
    or `is_ok` from records a caller has read already); writes nothing.
    """
    is_ok = is_ok or store.is_ok
    todo, cached = [], []
    for c in cells:
        path = store.record_path(runs_dir, run, c.section, c.name)
        if not rerun and is_ok(path):
            cached.append(c)
        else:
            todo.append((c, path))
    return todo, cached


def run_sweep(cells: list[Cell], runs_dir: Path, run: str, executor: str | Launcher = "inline",
              rerun: bool = False, progress: bool = True) -> SweepResult:
    """Run the cells that have no ok record (all with rerun) through a launcher (a name or an instance)."""
    result = SweepResult()
    todo, cached = cells_to_run(cells, runs_dir, run, rerun)
    if cached:
        result.counts["cached"] += len(cached)
    if not todo:
        return result
    if isinstance(executor, str):
        from lmreport import launchers
        executor = launchers.get(executor)
    from lmreport.progress import Progress
    bar = Progress(len(todo), todo[0][0].section, enabled=progress)

    skipped: Counter = Counter()  # reason -> cells: one line per reason, not per cell

    def finished(c: Cell, record: dict) -> None:
        result.counts[record["status"]] += 1
        result.records.append(record)
        bar.update(1, postfix=c.name)
        if record["status"] == "skipped":
            skipped[record["error"] or "no reason given"] += 1
        elif record["status"] != "ok":
            bar.write(f"  {c.name}: {record['status']}" + (f" ({record['error']})" if record["error"] else ""))

    with _sigterm_as_interrupt():
        try:
            result.counts.update(executor.run_many(todo, finished))
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
    """Entry of the subprocess launcher's child: python -m lmreport.runner CELL_JSON RECORD_PATH [LAUNCH_JSON]."""
    c = Cell.from_json(argv[0])
    record = execute_cell(c, Path(argv[1]), launch=json.loads(argv[2]) if len(argv) > 2 else {"launcher": "subprocess"})
    return 0 if record["status"] in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
