"""`--executor slurm`: a section's cells as one Slurm job array, submitted with submitit.

Each array task runs one cell through `runner.execute_cell` on its compute node, which writes
the record atomically into the shared runs/ folder, exactly as an inline run would. So the
checkout, its .venv and runs/ must live on a file system the nodes share (the jobs run the
submitting `sys.executable`).

The job folder is runs/<run>/.slurm/ (hidden, so the record loader skips it): submitit's files
(sbatch script, pickled call, `<job>_0_log.out/.err`, result) and lmreport's `jobs.jsonl`, one
line per submitted cell (job id, cell, and the record's mtime at submission: a record with
another mtime was written by the job, with no clock comparison between hosts). From those and
the records, a cell is:

- ok / oom / error / skipped: its job wrote a fresh record;
- queued / running: its job is, says `sacct` (submitit's parser; without sacct, the log files
  say whether the job has started);
- a job that ended without a fresh record (killed, timed out, node failure, crashed before
  writing) is recorded as `error` (`oom` when Slurm says OUT_OF_MEMORY or the log mentions it),
  with its log's path, by whichever of `lmreport run` and `lmreport status` sees it first, once
  a grace period has let a network file system show a record written on the node (a job whose
  result says it finished ok is never recorded as failed for a record that is merely late).

Resubmitting skips ok cells and cells whose job is still queued or running.

Settings, strongest first: command-line flags, the `[sections.NAME]` table of the config file,
its top level, the defaults below. The config file is TOML, `--slurm-config FILE` or else
./lmreport-slurm.toml when present (see lmreport-slurm.example.toml):

    cluster = "slurm"        # or "local": submitit's LocalExecutor, each job a local process
    partition = "gpu"
    account = "my-course"
    qos = "normal"
    constraint = "h100"
    time = "02:00:00"        # per job: minutes (120) or Slurm's [D-]HH:MM[:SS] / MM[:SS]
    gpus_per_job = 1
    cpus_per_job = 8
    mem_gb = 64
    array_parallelism = 16   # at most this many tasks of an array at once
    setup = ["module load cuda/12.4"]   # shell lines run before each job
    [sbatch]                 # any other sbatch option, verbatim: --mail-type=END
    mail-type = "END"
    [sections.accounting]    # per-section overrides of the keys above
    gpus_per_job = 0
    time = 15

cluster "local" runs every job at once on this machine as a subprocess started the way Slurm
starts it (the tests use it); to spread cells over this machine's GPUs use --executor local-gpus.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from lmreport import store
from lmreport.errors import InputFileError, UserError
from lmreport.launchers import Finished, Launcher
from lmreport.launchers.process import mtime_ns
from lmreport.runner import Cell

CONFIG_FILE = "lmreport-slurm.toml"
JOB_FOLDER = ".slurm"
JOBS_FILE = "jobs.jsonl"
CLUSTERS = ("slurm", "local")
FLAGS = "command line"  # `where` of the settings given as flags: errors then name the flag


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmSettings:
    """What one job array asks the cluster for (one job = one cell)."""

    cluster: str = "slurm"  # "slurm", or "local" (submitit's LocalExecutor: local processes)
    partition: str | None = None  # sbatch --partition
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos
    constraint: str | None = None  # sbatch --constraint (node features, e.g. a GPU model)
    time_min: int = 60  # wall-clock limit per job, minutes (sbatch --time)
    gpus_per_job: int = 1  # sbatch --gpus-per-node
    cpus_per_job: int | None = None  # sbatch --cpus-per-task
    mem_gb: float | None = None  # sbatch --mem
    array_parallelism: int | None = None  # sbatch --array=0-N%P
    setup: tuple[str, ...] = ()  # shell lines run before each job
    sbatch: tuple[tuple[str, object], ...] = ()  # other sbatch options, verbatim

    def submitit_parameters(self, job_name: str) -> dict:
        """Parameters for submitit.AutoExecutor.update_parameters (generic ones, then slurm_*)."""
        p: dict = {"name": job_name, "timeout_min": self.time_min, "gpus_per_node": self.gpus_per_job,
                   "nodes": 1, "tasks_per_node": 1}
        if self.cpus_per_job is not None:
            p["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb is not None:
            p["mem_gb"] = float(self.mem_gb)
        if self.cluster == "slurm":
            for key in ("partition", "account", "qos", "constraint", "array_parallelism"):
                if getattr(self, key) is not None:
                    p[f"slurm_{key}"] = getattr(self, key)
            if self.setup:
                p["slurm_setup"] = list(self.setup)
            if self.sbatch:
                p["slurm_additional_parameters"] = dict(self.sbatch)
        elif self.setup:
            p["local_setup"] = list(self.setup)
        return p


# key in the file -> (accepted types, field of SlurmSettings)
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "cluster": ((str,), "cluster"), "partition": ((str,), "partition"), "account": ((str,), "account"),
    "qos": ((str,), "qos"), "constraint": ((str,), "constraint"), "time": ((int, str), "time_min"),
    "gpus_per_job": ((int,), "gpus_per_job"), "cpus_per_job": ((int,), "cpus_per_job"),
    "mem_gb": ((int, float), "mem_gb"), "array_parallelism": ((int,), "array_parallelism"),
    "setup": ((list,), "setup"),
}
_TABLES = ("sbatch", "sections")


def parse_time_min(value, where: str = "time") -> int:
    """Slurm's --time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> whole minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UserError(f"{where}: {value} minutes is not a time limit")
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise UserError(f"{where}: {value!r} is not a Slurm time (minutes, or [D-]HH:MM:SS)")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = a, b or 0, c or 0
    elif c is not None:  # HH:MM:SS
        h, mi, s = a, b, c
    elif b is not None:  # MM:SS
        h, mi, s = 0, a, b
    else:  # MM
        h, mi, s = 0, a, 0
    total = (days or 0) * 1440 + h * 60 + mi + math.ceil(s / 60)
    if total < 1:
        raise UserError(f"{where}: {value!r} is shorter than a minute")
    return total


def _apply(settings: SlurmSettings, table: dict, where: str) -> SlurmSettings:
    """settings with the keys of one TOML table (or of the flags) applied, each checked."""
    changes = {}
    for key, value in table.items():
        if key in _TABLES:
            continue
        if key not in _KEYS:
            raise UserError(f"{where}: unknown key {key!r}; known keys: {', '.join([*_KEYS, *_TABLES])}")
        types, name = _KEYS[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise UserError(f"{where}: {key} = {value!r} should be {' or '.join(t.__name__ for t in types)}")
        said = f"--{key.replace('_', '-')} {value}" if where == FLAGS else f"{where}: {key} = {value!r}"
        if key == "time":
            value = parse_time_min(value, "--time" if where == FLAGS else f"{where}: time")
        elif key == "cluster" and value not in CLUSTERS:
            raise UserError(f"{where}: cluster = {value!r} should be one of {', '.join(CLUSTERS)}")
        elif key == "setup":
            if not all(isinstance(line, str) for line in value):
                raise UserError(f"{where}: setup should be a list of shell lines (strings)")
            value = tuple(value)
        elif key in ("gpus_per_job", "cpus_per_job", "array_parallelism", "mem_gb") and value < 0:
            raise UserError(f"{said} is negative")
        changes[name] = value
    return replace(settings, **changes)


@dataclass(frozen=True)
class SlurmConfig:
    """A parsed config file (or none) plus the command-line flags; `for_section` gives the settings."""

    path: Path | None = None
    top: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)  # file keys -> values given on the command line

    @staticmethod
    def load(path: Path | None = None, flags: dict | None = None) -> "SlurmConfig":
        """Read `path`, or ./lmreport-slurm.toml when it exists; check every key now, not at submission."""
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        if path is None and Path(CONFIG_FILE).is_file():
            path = Path(CONFIG_FILE)
        top: dict = {}
        if path is not None:
            path = Path(path)
            try:
                top = tomllib.loads(path.read_text())
            except FileNotFoundError:
                raise InputFileError(path, "no such file") from None
            except (OSError, UnicodeDecodeError) as e:
                raise InputFileError(path, f"cannot be read ({e})") from None
            except tomllib.TOMLDecodeError as e:
                raise InputFileError(path, f"not valid TOML ({e})") from None
        where = str(path) if path else "slurm settings"
        sbatch = top.get("sbatch", {})
        if not isinstance(sbatch, dict) or not all(isinstance(v, (str, int, float, bool)) for v in sbatch.values()):
            raise UserError(f"{where}: [sbatch] should hold option = value pairs")
        sections = top.get("sections", {})
        if not isinstance(sections, dict) or not all(isinstance(t, dict) for t in sections.values()):
            raise UserError(f"{where}: [sections.NAME] tables should hold the same keys as the top level")
        from lmreport.sections import all_sections
        known = all_sections()
        for name in sections:  # a warning: one file may serve checkouts with other sections
            if name not in known:
                import warnings
                warnings.warn(f"{where}: [sections.{name}]: no such section here (sections: {', '.join(known)}); "
                              "its settings are unused", stacklevel=2)
        config = SlurmConfig(path, top, sections, flags)
        config.for_section(None)  # checks the top level and the flags
        for name in sections:
            config.for_section(name)
        return config

    def for_section(self, section: str | None) -> SlurmSettings:
        where = str(self.path) if self.path else "slurm settings"
        s = _apply(SlurmSettings(), self.top, where)
        s = replace(s, sbatch=tuple(sorted(self.top.get("sbatch", {}).items())))
        if section is not None and section in self.sections:
            table = self.sections[section]
            for bad in set(table) & set(_TABLES):
                raise UserError(f"{where}: [sections.{section}] cannot hold a [{bad}] table")
            s = _apply(s, table, f"{where} [sections.{section}]")
        return _apply(s, self.flags, FLAGS)


# --- the job folder -------------------------------------------------------------------------------


def job_folder(run_dir: Path) -> Path:
    return Path(run_dir).resolve() / JOB_FOLDER


@dataclass(frozen=True)
class JobEntry:
    """One submitted cell: a line of runs/<run>/.slurm/jobs.jsonl."""

    job_id: str  # Slurm's "<array>_<index>" (or "<id>"), or the local controller's pid
    cluster: str  # "slurm" or "local"
    cell: dict  # runner.Cell as a dict (the failure record needs its config)
    record: str  # the record's path relative to the run folder: <section>/<cell>.json
    record_mtime_ns: int | None  # the record's mtime at submission (None: there was none)
    submitted_at: str
    host: str  # where it was submitted (a local job's pid means something only there)

    @property
    def key(self) -> tuple[str, str]:
        return self.cell["section"], self.cell["name"]

    def to_cell(self) -> Cell:
        return Cell(**self.cell)


def read_jobs(run_dir: Path) -> dict[tuple[str, str], JobEntry]:
    """The latest submission of each cell; a damaged line is skipped with a warning naming the file."""
    import warnings
    path = job_folder(run_dir) / JOBS_FILE
    out: dict[tuple[str, str], JobEntry] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return out
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = JobEntry(**json.loads(line))
            out[entry.key] = entry
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            warnings.warn(f"{path}:{n}: not a job entry ({e}); skipped", stacklevel=2)
    return out


def _append_jobs(run_dir: Path, entries: list[JobEntry]) -> None:
    path = job_folder(run_dir) / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(asdict(e)) + "\n" for e in entries)
    with open(path, "a") as f:  # one write per submission, O_APPEND: concurrent submitters do not interleave
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def run_cell_job(cell_json: str, record_file: str) -> str:
    """What each job runs on its node: one cell, its record written by execute_cell."""
    from lmreport.runner import execute_cell
    return execute_cell(Cell.from_json(cell_json), Path(record_file), launch={"launcher": "slurm"})["status"]


def submit(todo: list[tuple[Cell, Path]], settings: SlurmSettings, run_dir: Path) -> tuple[list[JobEntry], list]:
    """Submit the cells as one job array; returns their entries (already in jobs.jsonl) and submitit jobs."""
    import submitit
    folder = job_folder(run_dir)
    section = todo[0][0].section
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=settings.cluster)
    except RuntimeError as e:  # SlurmExecutor without srun
        raise UserError(f"--executor slurm: {e} (this is not a Slurm login node; `cluster = \"local\"` in "
                        f"{CONFIG_FILE} or --cluster local runs the jobs as local processes)") from None
    ex.update_parameters(**settings.submitit_parameters(f"lmreport-{section}"))
    befores = [mtime_ns(path) for _, path in todo]
    try:
        jobs = ex.map_array(run_cell_job, [c.to_json() for c, _ in todo], [str(Path(p).resolve()) for _, p in todo])
    except Exception as e:  # sbatch refused (unknown partition, account...): its message, on one line
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"submitting {len(todo)} {section} cells failed: {lines[-1] if lines else type(e).__name__}") from None
    host, now = socket.gethostname(), store.now_iso()
    entries = [JobEntry(str(job.job_id), settings.cluster, asdict(c), str(Path(p).resolve().relative_to(Path(run_dir).resolve())),
                        before, now, host)
               for job, (c, p), before in zip(jobs, todo, befores)]
    _append_jobs(run_dir, entries)
    return entries, jobs


# --- where each job stands -------------------------------------------------------------------------

RECORD_GRACE_S = 15.0  # after a Slurm job ends, how long its record may take to show up here (NFS)
RECORD_MISSING_S = 300.0  # a job that finished ok but whose record is still not visible after this: error
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def _local_controller_alive(pid: int) -> bool:
    """A local job is its submitit controller process; a zombie or a reused pid does not count."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X") and b"submitit" in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


class JobWatcher:
    """Job states: `sacct` (through submitit's parser) at most every `sacct_every_s`, files otherwise."""

    def __init__(self, sacct_every_s: float = 60.0, record_grace_s: float = RECORD_GRACE_S):
        from submitit.slurm.slurm import SlurmInfoWatcher
        self.sacct_every_s = sacct_every_s
        self.record_grace_s = record_grace_s
        self._slurm = SlurmInfoWatcher(delay_s=int(sacct_every_s))
        self._last_sacct = float("-inf")
        self._ended_since: dict[str, float] = {}
        self.local_jobs: dict[str, object] = {}  # submitit LocalJob objects of this process (polling reaps them)

    def ended_for_s(self, entry: JobEntry) -> float:
        """Seconds since this watcher first saw the job ended (0 at first sight)."""
        return time.monotonic() - self._ended_since.setdefault(entry.job_id, time.monotonic())

    def settled(self, entry: JobEntry) -> bool:
        """Long enough after the end for a record written on a node to be visible here.

        A network file system caches attributes: a file another host wrote can take seconds to
        appear (submitit waits for its result file the same way). Local jobs need no grace.
        """
        grace = 0.0 if entry.cluster == "local" else self.record_grace_s
        return self.ended_for_s(entry) >= grace

    def refresh(self, entries: list[JobEntry], force: bool = False) -> None:
        ids = [e.job_id for e in entries if e.cluster == "slurm"]
        if not ids or shutil.which("sacct") is None:
            return
        for i in ids:
            self._slurm.register_job(i)
        if force or time.monotonic() - self._last_sacct >= self.sacct_every_s:
            self._slurm.update()  # one sacct call for every registered job; errors become a warning
            self._last_sacct = time.monotonic()

    def state(self, entry: JobEntry, folder: Path) -> tuple[str, str, str | None]:
        """(phase, word, node): phase is queued, running, ended or unknown; word is the scheduler's."""
        from submitit.core.utils import JobPaths
        paths = JobPaths(folder, entry.job_id)
        if entry.cluster == "local":
            job = self.local_jobs.get(entry.job_id)
            if job is not None:
                alive = job.state == "RUNNING"
            elif entry.host != socket.gethostname():
                return "unknown", f"local job on {entry.host}", entry.host
            else:
                alive = _local_controller_alive(int(entry.job_id))
            if alive:
                return "running", "RUNNING", entry.host
            return "ended", "finished" if paths.result_pickle.exists() else "its process ended", entry.host
        info = self._slurm.get_info(entry.job_id, mode="cache") if shutil.which("sacct") else {}
        word = (info.get("State") or "UNKNOWN").split()[0]  # "CANCELLED by 123" -> CANCELLED
        node = info.get("NodeList") or None
        if word in QUEUED:
            return "queued", word, node
        if word in RUNNING:
            return "running", word, node
        if word == "UNKNOWN":  # not in sacct (yet, or no sacct here): the log appears when the job starts
            if paths.result_pickle.exists():
                return "ended", "finished", node
            return ("running" if paths.stdout.exists() else "queued"), "not in sacct", node
        return "ended", word, node


def job_outcome(result_pickle: Path) -> tuple[str, str] | None:
    """("success", the record's status) or ("error", traceback) from submitit's result file.

    Read with the restricted unpickler (lmreport/safe_pickle.py): a runs/ folder copied from
    elsewhere is not trusted, and this file holds two strings. None when absent or unreadable.
    """
    from lmreport import safe_pickle
    if not result_pickle.exists():
        return None
    try:
        out = safe_pickle.load(result_pickle)
    except InputFileError:
        return None
    if isinstance(out, tuple) and len(out) == 2 and all(isinstance(x, str) for x in out):
        return out
    return None


def _refresh_attributes(*folders: Path) -> None:
    """Make a network file system re-read these folders' attributes (submitit's trick: a no-op chmod)."""
    for d in folders:
        try:
            d.chmod(d.stat().st_mode)
        except OSError:
            pass


def _last_line(path: Path) -> str | None:
    """The job's last words (an exception, "Killed"), not submitit's own INFO lines."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace")[-20000:].splitlines()
                 if ln.strip() and not ln.startswith("submitit ")]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def record_failure(run_dir: Path, entry: JobEntry, word: str, node: str | None, trace: str | None = None,
                   why: str = "without writing its record") -> dict:
    """The job ended without writing its record: record that as error (or oom) with its log."""
    from submitit.core.utils import JobPaths
    from lmreport.launchers.process import log_mentions_oom
    paths = JobPaths(job_folder(run_dir), entry.job_id)
    record_file = Path(run_dir) / entry.record
    log = paths.stderr if paths.stderr.exists() else paths.stdout
    oom = (word == "OUT_OF_MEMORY" or "out of memory" in (trace or "").lower()
           or log_mentions_oom(paths.stderr) or log_mentions_oom(paths.stdout))
    trace_lines = [ln.strip() for ln in (trace or "").splitlines() if ln.strip()]
    last = trace_lines[-1][:300] if trace_lines else (_last_line(paths.stderr) or _last_line(paths.stdout))
    error = (f"{entry.cluster} job {entry.job_id} ended ({word}) {why}; log: {_shown(log)}"
             + (f"; last log line: {last}" if last else ""))
    c = entry.to_cell()
    env = {"device": None, "host": node, "executor": entry.cluster,
           "slurm_job": entry.job_id if entry.cluster == "slurm" else None}
    log_rel = os.path.relpath(log, store.artifacts_dir(record_file).resolve())
    record = store.make_record(c.section, c.name, c.config, env, "oom" if oom else "error", error=error,
                               artifacts={"log": log_rel}, started_at=entry.submitted_at, launcher="slurm")
    store.write_record(record_file, record)
    record["_path"] = str(record_file)
    return record


@dataclass
class CellState:
    section: str
    cell: str
    state: str  # ok, oom, error, skipped (its record); queued, running, unknown (its job); not run
    job_id: str | None = None
    detail: str | None = None  # the record's error, or the scheduler's word
    record: dict | None = None
    recorded_failure: bool = False  # this call wrote the record of a job that died
    settling: bool = False  # the job just ended; its record may still be on its way (see JobWatcher.settled)


def resolve(run_dir: Path, entry: JobEntry, watcher: JobWatcher) -> CellState:
    """Where a submitted cell stands; a job found dead gets its error record now."""
    section, name = entry.key
    record_file = Path(run_dir) / entry.record
    seen = mtime_ns(record_file)
    if seen not in (None, entry.record_mtime_ns):
        try:
            r = store.read_record(record_file)
            return CellState(section, name, r["status"], entry.job_id, r.get("error"), r)
        except InputFileError:
            pass  # not a record after all: let the job's state decide
    folder = job_folder(run_dir)
    phase, word, node = watcher.state(entry, folder)
    if phase != "ended":
        return CellState(section, name, phase, entry.job_id, word)
    _refresh_attributes(record_file.parent, folder)
    if mtime_ns(record_file) != seen:  # the job wrote its record while we looked
        return resolve(run_dir, entry, watcher)
    if not watcher.settled(entry):
        return CellState(section, name, "running", entry.job_id, f"ended ({word}); its record may be on its way",
                         settling=True)
    from submitit.core.utils import JobPaths
    outcome = job_outcome(JobPaths(folder, entry.job_id).result_pickle)
    if outcome is not None and outcome[0] == "success":  # execute_cell wrote it: the file system lags
        if watcher.ended_for_s(entry) < RECORD_MISSING_S:
            return CellState(section, name, "unknown", entry.job_id,
                             f"finished ({outcome[1]}) but its record is not visible here yet: {record_file}")
        r = record_failure(run_dir, entry, word, node, why=f"reporting {outcome[1]}, but its record never appeared")
    else:
        r = record_failure(run_dir, entry, word, node, trace=outcome[1] if outcome else None)
    return CellState(section, name, r["status"], entry.job_id, r["error"], r, recorded_failure=True)


def cell_states(run_dir: Path, cells: list[tuple[str, str]], watcher: JobWatcher | None = None) -> list[CellState]:
    """Every cell's state from its record and its latest job (status command)."""
    watcher = watcher or JobWatcher()
    jobs = read_jobs(run_dir)
    watcher.refresh([jobs[k] for k in cells if k in jobs], force=True)
    out = []
    for section, name in cells:
        entry = jobs.get((section, name))
        if entry is not None:
            out.append(resolve(run_dir, entry, watcher))
            continue
        path = store.record_path(Path(run_dir).parent, Path(run_dir).name, section, name)
        try:
            r = store.read_record(path)
            out.append(CellState(section, name, r["status"], None, r.get("error"), r))
        except FileNotFoundError:
            out.append(CellState(section, name, "not run"))
        except InputFileError as e:
            out.append(CellState(section, name, "error", None, str(e)))
    if any(st.settling for st in out):  # jobs that just ended: one grace period for all, then look again
        time.sleep(watcher.record_grace_s)
        out = [resolve(run_dir, jobs[(st.section, st.cell)], watcher) if st.settling else st for st in out]
    return out


# --- the executor -----------------------------------------------------------------------------------


class SubmititLauncher(Launcher):
    """Submits each section's cells as a job array; waits (progress bar) or leaves them to `lmreport status`."""

    name = "slurm"

    def __init__(self, config: SlurmConfig | None = None, wait: bool = True, poll_s: float | None = None,
                 sacct_every_s: float = 60.0, record_grace_s: float = RECORD_GRACE_S):
        self.config = config or SlurmConfig.load()
        self.wait_for_jobs = wait
        self.poll_s = poll_s
        self.watcher = JobWatcher(sacct_every_s, record_grace_s)
        self.pending: list[tuple[Path, JobEntry]] = []  # submitted or found in flight, not yet collected

    def run_many(self, todo: list[tuple[Cell, Path]], finished: Finished) -> Counter:
        counts: Counter = Counter()
        by_run: dict[Path, list[tuple[Cell, Path]]] = {}
        for c, path in todo:  # record path = runs/<run>/<section>/<cell>.json
            by_run.setdefault(Path(path).parent.parent, []).append((c, path))
        for run_dir, items in by_run.items():
            jobs = read_jobs(run_dir)
            self.watcher.refresh([jobs[(c.section, c.name)] for c, _ in items if (c.section, c.name) in jobs],
                                 force=True)
            fresh = []
            for c, path in items:
                entry = jobs.get((c.section, c.name))
                if entry is not None:
                    st = resolve(run_dir, entry, self.watcher)
                    if st.state in ("queued", "running", "unknown"):  # never two jobs for one cell
                        counts["in flight"] += 1
                        self.pending.append((run_dir, entry))
                        continue
                fresh.append((c, path))
            by_section: dict[str, list] = {}
            for c, path in fresh:
                by_section.setdefault(c.section, []).append((c, path))
            for section, cells in by_section.items():
                entries, jobs_ = submit(cells, self.config.for_section(section), run_dir)
                counts["submitted"] += len(entries)
                self.pending += [(run_dir, e) for e in entries]
                for e, job in zip(entries, jobs_):
                    if e.cluster == "local":
                        self.watcher.local_jobs[e.job_id] = job
        if self.wait_for_jobs:
            self.wait(finished, progress=False)
            return Counter()  # finished() counted every cell
        return counts

    def wait(self, finished: Finished | None = None, progress: bool = True) -> list[dict]:
        """Until every pending cell has a record; returns the records (Ctrl-C leaves the jobs running)."""
        from lmreport.progress import Progress
        remaining = list(self.pending)
        local = all(e.cluster == "local" for _, e in remaining)
        poll_s = self.poll_s if self.poll_s is not None else (0.5 if local else 15.0)
        bar = Progress(len(remaining), "jobs", enabled=progress)
        records = []
        try:
            while remaining:
                self.watcher.refresh([e for _, e in remaining])
                still, phases = [], Counter()
                for run_dir, entry in remaining:
                    st = resolve(run_dir, entry, self.watcher)
                    if st.record is None:
                        still.append((run_dir, entry))
                        phases[st.state] += 1
                        continue
                    bar.update(1)
                    records.append(st.record)
                    if finished is not None:
                        finished(entry.to_cell(), st.record)
                    elif st.state != "ok":
                        bar.write(f"  {st.section}/{st.cell}: {st.state}" + (f" ({st.detail})" if st.detail else ""))
                remaining = still
                bar.set_postfix(", ".join(f"{n} {k}" for k, n in sorted(phases.items())))
                if remaining:
                    time.sleep(poll_s)
        finally:
            bar.close()
            self.pending = remaining
        return records
