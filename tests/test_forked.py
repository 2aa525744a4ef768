"""Fresh-process cells forked from the fork server: the records of a new interpreter, its failures, its environment."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from test_launchers import PLAN, comparable, fake_env

from lmreport import runner, store
from lmreport.errors import UserError
from lmreport.launchers import forked
from lmreport.launchers.worker import WorkerLauncher


@pytest.fixture
def fresh_server(monkeypatch):
    """No fork server running and forked.py's state as in a new process, before and after (another
    test's server may have started with another environment)."""
    def reset():
        multiprocessing.forkserver._forkserver._stop()  # "Method used by unit tests to stop the server"
        forked._server_env, forked._off = None, None
        forked._said.clear()
    reset()
    monkeypatch.delenv(forked.MODE_VARIABLE, raising=False)
    yield
    reset()


def cold_start_cells(device: str = "cpu") -> list[runner.Cell]:
    """The bench section's cells without warm-up (tiny, context 16, one measured step; forward first)."""
    from lmreport.experiments import bench
    prof = dataclasses.replace(PLAN.profile, device=device, sizes=("tiny",), contexts=(16,), warmup_steps=1,
                               measure_steps=1, bench_dtypes=("fp32",), warmup_ablation=(0,), compile_sizes=())
    return [c for c in bench.cells(runner.Plan(prof, PLAN.edition)) if c.fresh_process]


def cold_start_cell() -> runner.Cell:
    return cold_start_cells()[0]


def test_a_forked_fresh_cell_writes_the_record_a_new_interpreter_writes(tmp_path, monkeypatch, fresh_server):
    c = cold_start_cell()
    forks = []

    class Counted(forked.ForkedProcess):
        def _start(self):
            forks.append(self.cell.name)
            return super()._start()

    monkeypatch.setattr(forked, "ForkedProcess", Counted)
    records = {}
    for how in ("exec", "fork"):
        monkeypatch.setenv(forked.MODE_VARIABLE, how)
        res = runner.run_sweep([c], tmp_path / how, PLAN.run, executor=WorkerLauncher(), progress=False)
        assert res.counts == {"ok": 1}, how
        records[how] = store.read_record(store.record_path(tmp_path / how, PLAN.run, c.section, c.name))
        assert forks == ([] if how == "exec" else [c.name])
    exec_, fork = records["exec"], records["fork"]
    assert {k: v for k, v in comparable(fork).items() if k != "metrics"} == \
           {k: v for k, v in comparable(exec_).items() if k != "metrics"}
    assert fork["metrics"].keys() == exec_["metrics"].keys()
    assert fork["metrics"]["first_cell_in_process"] is exec_["metrics"]["first_cell_in_process"] is True
    for r in (exec_, fork):
        assert r["launcher"] == "worker" and r["wall_s"] >= r["duration_s"] > 0 and r["timed_s"] > 0


def test_macos_gets_new_interpreters_unless_asked_to_fork(monkeypatch, fresh_server):
    assert forked.mode() == "fork"
    monkeypatch.setattr(sys, "platform", "darwin")  # system libraries may start threads: fork is unsafe there
    assert forked.mode() == "exec" and forked.why_not_fork() == "LMREPORT_FRESH_PROCESS=exec"
    monkeypatch.setenv(forked.MODE_VARIABLE, "fork")
    assert forked.mode() == "fork"


def test_which_environment_forks(monkeypatch, fresh_server):
    assert forked.why_not_fork() is None and forked.why_not_fork(dict(os.environ)) is None
    # CUDA reads CUDA_VISIBLE_DEVICES when it initialises, after the fork: local-gpus gives each child its GPU so.
    assert forked.why_not_fork({**os.environ, "CUDA_VISIBLE_DEVICES": "3"}) is None
    # Anything else was read by the server already (at start, at import): a new interpreter, saying which.
    why = forked.why_not_fork({**os.environ, "PYTHONPATH": "elsewhere", "OMP_NUM_THREADS": "1"})
    assert why == "their environment differs from the fork server's in OMP_NUM_THREADS, PYTHONPATH"
    assert "HOME" in forked.why_not_fork({k: v for k, v in os.environ.items() if k != "HOME"})
    monkeypatch.setenv(forked.MODE_VARIABLE, "exec")
    assert forked.why_not_fork() == "LMREPORT_FRESH_PROCESS=exec"
    monkeypatch.setenv(forked.MODE_VARIABLE, "spawn")
    with pytest.raises(UserError, match="LMREPORT_FRESH_PROCESS='spawn': expected 'fork'"):
        forked.why_not_fork()


def test_unclean_state_is_seen(monkeypatch):
    import torch
    assert forked.unclean_state() is None  # this process never initialised CUDA (a CPU test run)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert forked.unclean_state() == "CUDA is initialised"
    monkeypatch.setattr(torch._C, "_cuda_isInBadFork", lambda: True, raising=False)
    assert forked.unclean_state() == "forked from a process that had initialised CUDA"


PRELOAD_PROBE = textwrap.dedent("""
    import importlib, sys
    from lmreport.launchers import forked
    for name in forked.PRELOAD[:2]:  # the setup module, then torch
        importlib.import_module(name)
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    touched = []
    def refuse(what):
        def call(*args, **kwargs):
            touched.append(what)
            raise RuntimeError(what)
        return call
    for what in ("_lazy_init", "is_available", "device_count", "init"):
        setattr(torch.cuda, what, refuse(f"torch.cuda.{what}"))
    for what in ("_cuda_getDeviceCount", "_cuda_init", "get_num_threads", "set_num_threads", "get_num_interop_threads"):
        if hasattr(torch._C, what):
            setattr(torch._C, what, refuse(f"torch._C.{what}"))
    for what in ("get_num_threads", "set_num_threads", "get_num_interop_threads", "set_num_interop_threads"):
        setattr(torch, what, refuse(f"torch.{what}"))

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            touched.append(str(func))
            return func(*args, **(kwargs or {}))

    with Ops():
        for name in forked.PRELOAD[2:]:
            importlib.import_module(name)
    print(forked.os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"), touched)
""")


def test_preloading_touches_no_cuda_and_runs_no_torch_op():
    """What the server imports asks nothing of CUDA and runs no torch op (no intra-op thread pool started)."""
    out = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "[]"]


def test_every_section_with_fresh_cells_is_preloaded():
    from lmreport.presets import resolve
    from lmreport.sections import all_sections
    fresh = set()
    for edition in (2025, 2026):
        plan = runner.Plan(*resolve(f"handout-{edition}", edition, False))
        for name, section in all_sections().items():
            module = section.experiment_module()
            if hasattr(module, "cells") and any(c.fresh_process for c in module.cells(plan)):
                fresh.add(module.__name__)
    assert fresh == {"lmreport.experiments.bench", "lmreport.experiments.memory"}
    assert fresh <= set(forked.PRELOAD)


# Runs fresh cells of the fake section (test_launchers.FAKE_SECTION) through run_in_forked_process; the
# fork server it starts has the fake section too (its PYTHONPATH). Prints what each cell's record says.
DRIVER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from lmreport import runner, store
    from lmreport.launchers import forked
    from lmreport.presets import resolve

    def main(runs, marker, *names):
        plan = runner.Plan(*resolve("cpu", 2025, False))
        env = dict(os.environ)
        cells = {"probe": ("probe", None, None), "gpu7": ("probe", {**env, "CUDA_VISIBLE_DEVICES": "7"}, None),
                 "die": ("die", None, None), "segv": ("segv", None, None), "slow": ("sleep", None, 3)}
        out = {"pid": os.getpid(), "env": env}
        for name in names:
            do, cell_env, timeout_s = cells[name]
            c = runner.cell(plan, "fake", name, fresh_process=True, do=do, marker=marker)
            path = store.record_path(runs, plan.run, "fake", name)
            out[name] = forked.run_in_forked_process(c, path, timeout_s, cell_env, "worker")
            out[name]["log"] = (store.artifacts_dir(path) / "worker.log").read_text()
        out["why_not_fork"] = forked.why_not_fork()
        print(json.dumps(out))

    if __name__ == "__main__":
        main(Path(sys.argv[1]), *sys.argv[2:])
""")


def drive(tmp_path, *names, env=None):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "runs"), str(tmp_path / "marker"), *names],
                         env=env or fake_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended
    except FileNotFoundError:
        return True


def test_forked_children_run_clean_with_their_own_environment_and_fail_as_processes_do(tmp_path):
    out, err = drive(tmp_path, "probe", "gpu7", "die", "segv", "slow")
    probe, gpu7 = out["probe"], out["gpu7"]
    assert probe["status"] == gpu7["status"] == "ok" and out["why_not_fork"] is None and "new interpreter" not in err
    server = probe["metrics"]["ppid"]
    assert server != out["pid"] and gpu7["metrics"]["ppid"] == server  # forked, both from the one server
    assert probe["metrics"]["pid"] != gpu7["metrics"]["pid"]
    assert probe["metrics"]["cuda_initialized"] is False
    assert probe["metrics"]["frozen_objects"] > 100_000  # the server's imports, frozen before the fork (gc.freeze)
    # The server's freeze-before-fork hook is the server's: a cell's own fork freezes none of the cell's objects.
    assert probe["metrics"]["frozen_after_own_fork"] == probe["metrics"]["frozen_objects"]
    fresh_threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    assert probe["metrics"]["torch_threads"] == int(fresh_threads)
    # Exactly the cell's environment: the server's PYTORCH_NVML_BASED_CUDA_CHECK is not passed on.
    assert probe["metrics"]["env"] == out["env"]
    assert gpu7["metrics"]["env"] == {**out["env"], "CUDA_VISIBLE_DEVICES": "7"}
    assert gpu7["environment"]["cuda_visible_devices"] == "7"
    assert probe["launcher"] == "worker" and probe["log"].startswith("cell probe in")
    # Deaths and timeouts are recorded as a new interpreter's are, naming the log.
    die, segv, slow = out["die"], out["segv"], out["slow"]
    log = store.artifacts_dir(store.record_path(tmp_path / "runs", PLAN.run, "fake", "die")) / "worker.log"
    assert die["status"] == "error" and die["error"] == f"worker exited with 3 before writing a record; log: {log}"
    assert die["log"].startswith("cell die in") and die["artifacts"] == {"log": "worker.log"}
    assert segv["status"] == "error" and segv["error"].startswith("worker exited with -11 before writing a record")
    assert slow["status"] == "error" and slow["error"].startswith("worker exited with timeout before writing")
    assert 3 <= slow["wall_s"] < 30
    assert gone(int((tmp_path / "marker").read_text().split()[0]))


UNCLEAN_SITE = "import torch\ntorch.cuda.is_initialized = lambda: True  # as if the server had initialised CUDA\n"


def test_an_unclean_fork_runs_its_cell_in_a_new_interpreter_and_stops_forking(tmp_path):
    env = fake_env(tmp_path)
    site = tmp_path / "site" / "sitecustomize.py"
    site.write_text(site.read_text() + UNCLEAN_SITE)
    out, err = drive(tmp_path, "probe", env=env)
    probe = out["probe"]
    assert probe["status"] == "ok" and probe["log"].startswith(forked.UNCLEAN + "CUDA is initialised\n")
    assert "cell probe in" in probe["log"]  # the new interpreter (same process, its exec) ran the cell
    assert probe["metrics"]["env"] == out["env"]
    assert out["why_not_fork"] == "a forked child was not clean (CUDA is initialised)"
    assert err.count("lmreport: fresh-process cells run in a new interpreter: a forked child was not clean") == 1


SWEEP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lmreport import runner
    from lmreport.launchers.worker import WorkerLauncher
    from lmreport.presets import resolve

    if __name__ == "__main__":
        plan = runner.Plan(*resolve("cpu", 2025, False))
        c = runner.cell(plan, "fake", "slow", fresh_process=True, do="sleep", marker=sys.argv[2])
        runner.run_sweep([c], Path(sys.argv[1]), plan.run, executor=WorkerLauncher(), progress=False)
""")


def test_ctrl_c_kills_a_forked_cell_and_writes_no_record(tmp_path):
    script, marker, runs = tmp_path / "sweep.py", tmp_path / "started", tmp_path / "runs"
    script.write_text(SWEEP)
    proc = subprocess.Popen([sys.executable, str(script), str(runs), str(marker)], env=fake_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists() or not marker.read_text():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    child, server = map(int, marker.read_text().split())
    assert server != proc.pid  # forked from the server
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    assert gone(child)
    assert not list((runs / PLAN.run / "fake").glob("*.json"))
    deadline = time.time() + 30
    while not gone(server):  # the server ends with the process that started it
        assert time.time() < deadline
        time.sleep(0.1)


@pytest.mark.cuda
def test_forked_cold_starts_on_a_gpu(tmp_path, fresh_server):
    """On CUDA: cold-start cells forked from the server initialise CUDA themselves and measure as first cells."""
    cells = cold_start_cells("cuda")
    assert len(cells) >= 2 and all(c.requires == "cuda" and c.fresh_process for c in cells)
    res = runner.run_sweep(cells, tmp_path, PLAN.run, executor=WorkerLauncher(), progress=False)
    assert res.counts == {"ok": len(cells)}
    for c in cells:
        path = store.record_path(tmp_path, PLAN.run, c.section, c.name)
        r = store.read_record(path)
        assert r["environment"]["device_type"] == "cuda" and r["metrics"]["first_cell_in_process"] is True
        log = store.artifacts_dir(path) / "worker.log"
        assert not log.exists() or not log.read_text().startswith(forked.UNCLEAN)
    assert forked._server_env is not None and forked.why_not_fork() is None  # forked, and still forking


def test_a_bad_mode_is_refused_before_any_cell_runs(tmp_path, monkeypatch):
    from test_launchers import precision_cells
    monkeypatch.setenv(forked.MODE_VARIABLE, "spawn")
    cells = [*precision_cells("accumulation"), cold_start_cell()]
    with pytest.raises(UserError, match="LMREPORT_FRESH_PROCESS='spawn'"):
        runner.run_sweep(cells, tmp_path, PLAN.run, executor=WorkerLauncher(), progress=False)
    assert not list(tmp_path.rglob("*.json"))


def test_run_refuses_a_bad_mode_before_any_section_runs(tmp_path, monkeypatch, capsys):
    from lmreport.cli import main
    monkeypatch.setenv(forked.MODE_VARIABLE, "spawn")
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("a section ran"))
    assert main(["run", "all", "--profile", "cpu", "--executor", "worker", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "LMREPORT_FRESH_PROCESS='spawn'" in err and len(err.strip().splitlines()) == 1


# No `if __name__ == "__main__":`: a child that imported this script again would run its sweep again.
UNGUARDED = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from lmreport import runner
    from lmreport.launchers.worker import WorkerLauncher
    from lmreport.presets import resolve

    print("MAIN", os.getpid(), flush=True)
    with open(sys.argv[2], "a") as f:
        f.write(f"{os.getpid()}\\n")
    plan = runner.Plan(*resolve("cpu", 2025, False))
    c = runner.cell(plan, "fake", "counted", fresh_process=True, do="count", marker=sys.argv[3])
    res = runner.run_sweep([c], Path(sys.argv[1]), plan.run, executor=WorkerLauncher(), progress=False)
    print(dict(res.counts), flush=True)
""")


def test_a_script_without_a_main_guard_runs_once_and_its_fresh_cell_once(tmp_path):
    script, top, ran, runs = tmp_path / "sweep.py", tmp_path / "top", tmp_path / "ran", tmp_path / "runs"
    script.write_text(UNGUARDED)
    out = subprocess.run([sys.executable, str(script), str(runs), str(top), str(ran)], env=fake_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"MAIN {out.stdout.split()[1]}", "{'ok': 1}"]
    (script_pid,) = top.read_text().split()
    (cell_pid,) = ran.read_text().split()
    assert cell_pid != script_pid and "new interpreter" not in out.stderr  # forked, once
    log = store.artifacts_dir(store.record_path(runs, PLAN.run, "fake", "counted")) / "worker.log"
    assert "MAIN" not in (log.read_text() if log.exists() else "")


def test_a_start_interrupted_before_the_fork_runs_no_cell(tmp_path, monkeypatch, fresh_server):
    """Ctrl-C while the parent waits for the server (importing torch) to fork: the child it forks anyway runs nothing."""
    monkeypatch.setenv("PYTHONPATH", fake_env(tmp_path)["PYTHONPATH"])  # the server started below has the fake section
    ran = tmp_path / "ran"
    c = runner.cell(PLAN, "fake", "counted", fresh_process=True, do="count", marker=str(ran))
    path = store.record_path(tmp_path, PLAN.run, "fake", c.name)
    read_signed, status = multiprocessing.forkserver.read_signed, []

    def interrupted(fd):  # popen_forkserver reads the child's pid, then its exit code, from this pipe
        status.append(os.dup(fd))
        raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing.forkserver, "read_signed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        forked.start(c, path)
    monkeypatch.setattr(multiprocessing.forkserver, "read_signed", read_signed)
    try:
        assert read_signed(status[0]) > 0  # the server forked the child anyway
        read_signed(status[0])  # and the child has ended
    finally:
        os.close(status[0])
    assert not ran.exists() and not path.exists()


def test_only_a_failed_server_means_new_interpreters(tmp_path, monkeypatch, fresh_server):
    monkeypatch.setenv("PYTHONPATH", fake_env(tmp_path)["PYTHONPATH"])  # for the new interpreter
    ran = tmp_path / "ran"
    c = runner.cell(PLAN, "fake", "counted", fresh_process=True, do="count", marker=str(ran))
    # The cell's log cannot be opened (its folder's parent is a file): that is no reason to stop forking.
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        forked.start(c, tmp_path / "file" / "counted.json")
    assert forked.why_not_fork() is None
    # Nor is a bug on this side of the server.
    monkeypatch.setattr(multiprocessing.forkserver, "connect_to_new_process", lambda fds: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        forked.start(c, store.record_path(tmp_path, PLAN.run, "fake", c.name))
    assert forked.why_not_fork() is None
    # A server that cannot be reached: this cell and the next run in new interpreters.

    def refused(fds):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(multiprocessing.forkserver, "connect_to_new_process", refused)
    path = store.record_path(tmp_path, PLAN.run, "fake", c.name)
    assert forked.run_in_forked_process(c, path)["status"] == "ok"
    assert len(ran.read_text().split()) == 1
    assert forked.why_not_fork() == "the fork server failed (ConnectionRefusedError: [Errno 111] Connection refused)"
