"""Slurm through submitit: cells run as jobs in other processes, records land in runs/, the report
renders from them, and a job that dies on the executor is recorded as error with its log."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from lmreport import runner, store
from lmreport.launchers import slurm
from lmreport.cli import main
from lmreport.errors import UserError
from lmreport.presets import resolve
from lmreport.report import render as render_mod
from lmreport.sections import get
from lmreport.launchers.slurm import SlurmConfig
from lmreport.launchers.slurm import SubmititLauncher as SubmititExecutor

PLAN = runner.Plan(*resolve("cpu", 2025, False))
FAST = ("check-small-ctx512", "check-gpt-2-xl-ctx1024")  # real accounting cells, about a second each on meta
SLOW = "check-gpt-2-xl-ctx16384"  # the slowest one: still importing torch when it is killed


def accounting_cells(*names: str) -> list[runner.Cell]:
    from lmreport.experiments import accounting
    by_name = {c.name: c for c in accounting.cells(PLAN)}
    return [by_name[n] for n in names]


def local_config(**flags) -> SlurmConfig:
    return SlurmConfig.load(flags={"cluster": "local", "gpus_per_job": 0, "time": 10, **flags})


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sweep_through_submitit_local_executor_then_render(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run_dir = runs / PLAN.run
    cells = accounting_cells(*FAST)
    res = runner.run_sweep(cells, runs, PLAN.run, executor=SubmititExecutor(local_config(), poll_s=0.2),
                           progress=False)
    assert res.counts == {"ok": 2}

    jobs = slurm.read_jobs(run_dir)
    assert set(jobs) == {("accounting", n) for n in FAST}
    for (_, name), entry in jobs.items():
        assert entry.cluster == "local" and entry.record == f"accounting/{name}.json"
        # The job's own process ran the cell: submitit left its result and logs in the job folder.
        assert (run_dir / ".slurm" / f"{entry.job_id}_0_result.pkl").exists()
        assert store.read_record(run_dir / entry.record)["status"] == "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the job folder is not mistaken for records
        assert len(store.load_records(runs)) == 2

    # The report renders from the records the jobs wrote (the other sections have their own tests).
    monkeypatch.setattr(render_mod, "all_sections", lambda: {"accounting": get("accounting")})
    out = render_mod.render(runs, tmp_path / "build", PLAN.edition, PLAN.profile, pdf=False)
    md = out.markdown.read_text()
    assert "| GPT-2 XL | 1 | 1,024 | 2,127,057,600 | 2,127,057,600 |" in md
    assert "| small | 4 | 512 |" in md
    host = socket.gethostname()
    assert f"· host {host} · profile cpu" in md and "Mixed devices" not in md
    assert {s["name"]: s["status"] for s in out.sections} == {"accounting": "ok"}

    # Resubmitting skips the ok cells: no new job.
    res = runner.run_sweep(cells, runs, PLAN.run, executor=SubmititExecutor(local_config(), poll_s=0.2),
                           progress=False)
    assert res.counts == {"cached": 2}
    assert len((run_dir / ".slurm" / "jobs.jsonl").read_text().splitlines()) == 2


def _kill_tasks_of(controller_pid: int) -> None:
    """SIGKILL the job's task (the process that runs the cell), as the OOM killer or a node failure would."""
    children = Path(f"/proc/{controller_pid}/task/{controller_pid}/children")
    wait_for(lambda: children.read_text().split(), "the job's task to start")
    for pid in children.read_text().split():
        os.kill(int(pid), signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the job's task")
def test_a_job_killed_on_the_executor_is_recorded_as_error_with_its_log(tmp_path, capsys):
    runs = tmp_path / "runs"
    run_dir = runs / PLAN.run
    argv = ["run", "accounting", "--profile", "cpu", "--runs-dir", str(runs), "--executor", "slurm",
            "--cluster", "local", "--gpus-per-job", "0", "--ctx", "16384", "--no-progress"]
    assert main([*argv, "--no-wait"]) == 0
    (entry,) = slurm.read_jobs(run_dir).values()
    controller = int(entry.job_id)
    _kill_tasks_of(controller)
    wait_for(lambda: not slurm._local_controller_alive(controller), "the job to end")
    capsys.readouterr()

    assert main(["status", "--profile", "cpu", "--runs-dir", str(runs)]) == 0
    out, err = capsys.readouterr()
    record_file = run_dir / "accounting" / f"{SLOW}.json"
    rec = store.read_record(record_file)
    assert rec["status"] == "error" and f"local job {controller} ended" in rec["error"]
    assert "without writing its record" in rec["error"]
    log = (store.artifacts_dir(record_file) / rec["artifacts"]["log"]).resolve()
    assert log.is_file() and log.parent == (run_dir / ".slurm").resolve() and log.name in rec["error"]
    assert f"accounting/{SLOW}: error [job {controller}]" in out and "log:" in out
    assert "recorded 1 cell(s) whose job ended without a record" in err
    row = next(line for line in out.splitlines() if line.startswith("accounting"))
    assert row.split()[1:5] == ["10", "0", "0", "1"]  # cells, ok, oom, error

    # The same command again retries the failed cell (and waits for it this time).
    assert main(argv) == 0
    assert store.read_record(record_file)["status"] == "ok"
    assert len(slurm.read_jobs(run_dir)) == 1  # one cell, its latest job


FAKE_SBATCH = """\
import os, re, subprocess, sys
from pathlib import Path
if os.environ.get("FAKE_SBATCH_ERROR"):
    sys.exit(print(os.environ["FAKE_SBATCH_ERROR"], file=sys.stderr) or 1)
state = Path(os.environ["FAKE_SLURM_DIR"])
script = Path(sys.argv[-1])
text = script.read_text()
job = 1000 + len(list(state.glob("*.sbatch")))
(state / f"{job}.sbatch").write_text(text)
m = re.search(r"^#SBATCH --array=0-(\\d+)", text, re.M)
tasks = range(int(m.group(1)) + 1) if m else [None]
for i in tasks:
    env = dict(os.environ, SLURM_JOB_ID=str(job + 1 + (i or 0)))
    if i is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(i))
    p = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (state / (f"{job}_{i}" if i is not None else str(job))).with_suffix(".pid").write_text(str(p.pid))
print(f"Submitted batch job {job}")
"""

FAKE_SRUN = """\
import os, sys
args = sys.argv[1:]
files = {}
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        files[flag] = args.pop(0)
def expand(p):
    e = os.environ
    return (p.replace("%A", e.get("SLURM_ARRAY_JOB_ID", "")).replace("%a", e.get("SLURM_ARRAY_TASK_ID", ""))
             .replace("%j", e["SLURM_JOB_ID"]).replace("%t", "0"))
for flag, fd in (("--output", 1), ("--error", 2)):
    if flag in files:
        os.dup2(os.open(expand(files[flag]), os.O_WRONLY | os.O_CREAT | os.O_APPEND), fd)
os.environ.setdefault("SLURM_PROCID", "0")
os.execvp(args[0], args)
"""

FAKE_SACCT = """\
import os, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
wanted = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for pidfile in sorted(state.glob("*.pid")):
    job = pidfile.stem
    if job.split("_")[0] not in wanted:
        continue
    forced = pidfile.with_suffix(".state")
    if forced.exists():
        s = forced.read_text().strip()
    else:
        try:
            os.kill(int(pidfile.read_text()), 0)
            s = "RUNNING"
        except OSError:
            s = "COMPLETED"
    print(f"{job}|{s}|fakenode1")
"""


def install_fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch, srun and sacct stand-ins: sbatch runs each array task as a detached process."""
    bindir, state = tmp_path / "fakebin", tmp_path / "fakeslurm"
    bindir.mkdir()
    state.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT)):
        (bindir / name).write_text(f"#!{sys.executable}\n{body}")
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    return state


def test_job_array_on_a_stand_in_slurm(tmp_path, monkeypatch):
    """The real SlurmExecutor path: one sbatch array, task ids, sacct states, OUT_OF_MEMORY as oom."""
    state = install_fake_slurm(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    config = SlurmConfig.load(flags={"partition": "gpu", "account": "course", "time": "00:10:00",
                                     "gpus_per_job": 1, "mem_gb": 8})
    ex = SubmititExecutor(config, wait=False, poll_s=0.2, sacct_every_s=0, record_grace_s=0.5)
    res = runner.run_sweep(accounting_cells("check-small-ctx512", SLOW), runs, PLAN.run, executor=ex, progress=False)
    assert res.counts == {"submitted": 2}
    run_dir = runs / PLAN.run
    ids = {name: e.job_id for (_, name), e in slurm.read_jobs(run_dir).items()}
    assert ids == {"check-small-ctx512": "1000_0", SLOW: "1000_1"}
    script = (state / "1000.sbatch").read_text()
    for flag in ("--partition=gpu", "--account=course", "--time=10", "--gpus-per-node=1", "--mem=8GB",
                 "--array=0-1%2", "--job-name=lmreport-accounting"):
        assert f"#SBATCH {flag}" in script, flag

    # Slurm kills task 1 for exceeding its memory, before it could write anything.
    (state / "1000_1.state").write_text("OUT_OF_MEMORY")
    os.killpg(int((state / "1000_1.pid").read_text()), signal.SIGKILL)
    records = {r["cell"]: r for r in ex.wait(progress=False)}
    ok = records["check-small-ctx512"]
    assert ok["status"] == "ok" and ok["environment"]["slurm_job"] == "1001"  # written on the "node"
    oom = records[SLOW]
    assert oom["status"] == "oom" and "slurm job 1000_1 ended (OUT_OF_MEMORY)" in oom["error"]
    assert "1000_1_0_log" in oom["error"] and oom["environment"]["host"] == "fakenode1"
    assert store.read_record(run_dir / "accounting" / f"{SLOW}.json")["status"] == "oom"


def test_sbatch_refusing_the_array_is_one_line(tmp_path, monkeypatch, capsys):
    install_fake_slurm(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_SBATCH_ERROR", "sbatch: error: invalid partition specified: gpux")
    runs = tmp_path / "runs"
    code = main(["run", "accounting", "--profile", "cpu", "--runs-dir", str(runs), "--executor", "slurm",
                 "--partition", "gpux", "--ctx", "16384", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err == "lmreport: error: submitting 1 accounting cells failed: sbatch: error: invalid partition specified: gpux"
    assert not slurm.read_jobs(runs / PLAN.run)


def test_states_from_the_job_folder(tmp_path, monkeypatch):
    """queued (no log yet), running (log), ended without a record (-> error with the log), not run."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-sacct-here"))
    run_dir = tmp_path / "runs" / PLAN.run
    folder = run_dir / ".slurm"
    folder.mkdir(parents=True)
    cells = {n: runner.cell(PLAN, "fake", n, size=n) for n in ("a", "b", "c", "d")}
    slurm._append_jobs(run_dir, [
        slurm.JobEntry(f"77_{i}", "slurm", {"section": "fake", "name": n, "config": cells[n].config, "requires": "any"},
                       f"fake/{n}.json", None, "2026-01-01T00:00:00+00:00", "login1")
        for i, n in enumerate("abc")])
    (folder / "77_1_0_log.out").write_text("started\n")
    (folder / "77_2_0_log.out").write_text("started\n")
    (folder / "77_2_0_log.err").write_text("submitit ERROR - Submitted job triggered an exception\n")
    # The job's function raised before execute_cell could write (submitit pickles the traceback).
    trace = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'torch'\n"
    (folder / "77_2_0_result.pkl").write_bytes(pickle.dumps(("error", trace)))
    keys = [("fake", n) for n in "abcd"]

    t0 = time.monotonic()
    states = slurm.cell_states(run_dir, keys, slurm.JobWatcher(record_grace_s=0.3))
    assert time.monotonic() - t0 >= 0.3  # it gave the record a chance to appear before recording the failure
    assert [s.state for s in states] == ["queued", "running", "error", "not run"]
    c = states[2]
    assert c.recorded_failure and "No module named 'torch'" in c.detail and "77_2_0_log.err" in c.detail
    assert store.read_record(run_dir / "fake" / "c.json")["config"]["size"] == "c"
    # Seen again: the record is the job's outcome now, not written twice.
    again = slurm.cell_states(run_dir, keys, slurm.JobWatcher(record_grace_s=0.3))
    assert [s.state for s in again] == ["queued", "running", "error", "not run"] and not again[2].recorded_failure

    (folder / "stray.json").write_text("{}")  # nothing under .slurm/ is a record
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["cell"] for r in store.load_records(tmp_path / "runs")] == ["c"]


def test_a_job_that_finished_ok_is_not_failed_for_a_late_record(tmp_path, monkeypatch):
    """On NFS the node's record may not be visible yet: wait for it instead of writing a false error."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-sacct-here"))
    run_dir = tmp_path / "runs" / PLAN.run
    c = runner.cell(PLAN, "fake", "late", size="x")
    entry = slurm.JobEntry("80_0", "slurm", {"section": "fake", "name": "late", "config": c.config, "requires": "any"},
                           "fake/late.json", None, "2026-01-01T00:00:00+00:00", "login1")
    slurm._append_jobs(run_dir, [entry])
    (run_dir / ".slurm" / "80_0_0_log.out").write_text("started\n")
    (run_dir / ".slurm" / "80_0_0_result.pkl").write_bytes(pickle.dumps(("success", "ok")))
    (st,) = slurm.cell_states(run_dir, [("fake", "late")], slurm.JobWatcher(record_grace_s=0))
    assert st.state == "unknown" and "not visible here yet" in st.detail
    assert not (run_dir / "fake" / "late.json").exists()


def test_a_hostile_result_file_is_not_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    f = tmp_path / "1_0_result.pkl"
    f.write_bytes(pickle.dumps(("success", Boom())))
    assert slurm.job_outcome(f) is None and not (tmp_path / "pwned").exists()


def test_settings_from_file_sections_and_flags(tmp_path):
    f = tmp_path / "lmreport-slurm.toml"
    f.write_text(textwrap.dedent("""
        partition = "gpu"
        account = "course"
        time = "1-00:30"
        gpus_per_job = 1
        mem_gb = 64
        setup = ["module load cuda/12.4"]
        [sbatch]
        mail-type = "END"
        [sections.accounting]
        gpus_per_job = 0
        time = 15
    """))
    config = SlurmConfig.load(f, {"partition": "debug", "cpus_per_job": 4})
    bench, acc = config.for_section("bench"), config.for_section("accounting")
    assert (bench.partition, bench.time_min, bench.gpus_per_job, bench.cpus_per_job) == ("debug", 1470, 1, 4)
    assert (acc.partition, acc.time_min, acc.gpus_per_job, acc.account) == ("debug", 15, 0, "course")
    assert bench.submitit_parameters("lmreport-bench") == {
        "name": "lmreport-bench", "timeout_min": 1470, "gpus_per_node": 1, "nodes": 1, "tasks_per_node": 1,
        "cpus_per_task": 4, "mem_gb": 64.0, "slurm_partition": "debug", "slurm_account": "course",
        "slurm_setup": ["module load cuda/12.4"], "slurm_additional_parameters": {"mail-type": "END"}}


def test_example_settings_file_parses():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its [sections.nsys] table is unused while no nsys section exists
        example = SlurmConfig.load(Path(__file__).resolve().parent.parent / "lmreport-slurm.example.toml")
    assert example.for_section("accounting").gpus_per_job == 0 and example.for_section("bench").gpus_per_job == 1


def test_a_typo_in_a_section_name_is_a_warning(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("[sections.acounting]\ntime = 5\n")
    with pytest.warns(UserWarning, match=r"\[sections.acounting\]: no such section here"):
        SlurmConfig.load(f)


@pytest.mark.parametrize("value,minutes", [
    (90, 90), ("90", 90), ("1:30", 2), ("0:30", 1), ("02:00:00", 120), ("1-00", 1440), ("1-02:30", 1590),
    ("2-00:00:01", 2881)])
def test_slurm_time_formats(value, minutes):
    assert slurm.parse_time_min(value) == minutes


@pytest.mark.parametrize("text,problem", [
    ('partiton = "gpu"', "unknown key 'partiton'"),
    ('time = "soon"', "is not a Slurm time"),
    ('gpus_per_job = "one"', "should be int"),
    ('cluster = "pbs"', "should be one of slurm, local"),
    ('partition = ', "not valid TOML"),
    ('[sections.accounting]\nsbatch = 1', "cannot hold a [sbatch] table"),
    ('[sections.accounting]\ntime = "soon"', "[sections.accounting]: time: 'soon' is not a Slurm time"),
])
def test_bad_settings_file_is_one_line_naming_it(tmp_path, text, problem):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        SlurmConfig.load(f)
    assert str(f) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys):
    base = ["run", "accounting", "--profile", "cpu", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main([*base, "--executor", "inline", "--partition", "gpu"]) == 2
    assert "--partition only applies to --executor slurm" in capsys.readouterr().err
    assert main([*base, "--executor", "slurm", "--slurm-config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: no such file" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    assert main([*base, "--executor", "slurm", "--ctx", "16384"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "srun" in err and "not a Slurm login node" in err
    assert not slurm.read_jobs(tmp_path / PLAN.run)  # nothing was submitted


def test_bad_line_in_jobs_file_is_skipped_with_a_warning(tmp_path):
    run_dir = tmp_path / PLAN.run
    (run_dir / ".slurm").mkdir(parents=True)
    good = {"job_id": "5", "cluster": "slurm", "cell": {"section": "s", "name": "c", "config": {}, "requires": "any"},
            "record": "s/c.json", "record_mtime_ns": None, "submitted_at": "t", "host": "h"}
    (run_dir / ".slurm" / "jobs.jsonl").write_text("{half a line\n" + json.dumps(good) + "\n")
    with pytest.warns(UserWarning, match=r"jobs.jsonl:1: not a job entry"):
        assert list(slurm.read_jobs(run_dir)) == [("s", "c")]


@pytest.mark.parametrize("flags, problem", [
    ({"mem_gb": -3.0}, "--mem-gb -3.0 is negative"), ({"gpus_per_job": -1}, "--gpus-per-job -1 is negative"),
    ({"time": 0}, "--time: 0 minutes is not a time limit"), ({"time": "soon"}, "--time: 'soon' is not a Slurm time")])
def test_bad_flags_name_the_flag(flags, problem):
    with pytest.raises(UserError, match=problem):
        SlurmConfig.load(flags=flags)
