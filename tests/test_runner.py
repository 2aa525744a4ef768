"""The runner: failures are data, sweeps resume, a kill leaves no corrupt or false record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from lmreport import runner, store
from lmreport.launchers.process import SubprocessLauncher, lost_cell_environment
from lmreport.presets import resolve

PLAN = runner.Plan(*resolve("cpu", 2025, False))


def fake_section(run_cell):
    mod = types.SimpleNamespace(run_cell=run_cell)
    return types.SimpleNamespace(experiment_module=lambda: mod)


def test_oom_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def run_cell(c, artifacts):
        if c.config["size"] == "big":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if c.config["size"] == "bad":
            raise ValueError("broken input")
        return {"metrics": {"forward_ms": {"mean": 1.5, "std": 0.1, "n": 3}}}

    monkeypatch.setattr("lmreport.sections.get", lambda name: fake_section(run_cell))
    cells = [runner.cell(PLAN, "fake", f"c-{s}", size=s) for s in ("a", "big", "bad", "b")]
    res = runner.run_sweep(cells, tmp_path, PLAN.run, progress=False)
    assert res.counts == {"ok": 2, "oom": 1, "error": 1}
    big = store.read_record(store.record_path(tmp_path, PLAN.run, "fake", "c-big"))
    assert big["status"] == "oom" and "out of memory" in big["error"]
    bad = store.read_record(store.record_path(tmp_path, PLAN.run, "fake", "c-bad"))
    assert bad["status"] == "error" and bad["error"] == "ValueError: broken input"
    assert bad["config"]["edition"] == 2025 and bad["environment"]["device"].startswith("CPU")

    # A rerun skips ok cells and retries the others.
    res2 = runner.run_sweep(cells, tmp_path, PLAN.run, progress=False)
    assert res2.counts == {"cached": 2, "oom": 1, "error": 1}


def test_filters_select_cells():
    cells = [runner.cell(PLAN, "bench", f"{s}-{t}", size=s, ctx=t) for s in ("tiny", "mini") for t in (64, 128)]
    assert [c.name for c in runner.filter_cells(cells, {"size": ["mini"], "ctx": ["128"]})] == ["mini-128"]
    attention = [runner.cell(PLAN, "attention", f"d{d}-T{t}", d=d, seq_len=t) for d in (16, 32) for t in (64, 128)]
    assert [c.name for c in runner.filter_cells(attention, {"ctx": ["64"]})] == ["d16-T64", "d32-T64"]


def test_unmet_requirement_is_skipped_with_reason(tmp_path, monkeypatch):
    monkeypatch.setattr("lmreport.sections.get", lambda name: fake_section(lambda c, a: {}))
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: False)
    c = runner.cell(PLAN, "fake", "gpu-only", requires="cuda")
    r = runner.execute_cell(c, tmp_path / "r.json")
    assert r["status"] == "skipped" and r["error"] == ("needs a CUDA GPU; on such a machine: "
                                                       "`lmreport run fake --profile handout-2025`")
    c = runner.cell(runner.Plan(*resolve("handout-2026", None, False)), "nsys", "gpu-only", requires="nsys")
    assert runner.execute_cell(c, tmp_path / "r2.json")["error"] == (
        "needs a CUDA GPU and Nsight Systems (`nsys` on PATH); on such a machine: `lmreport run nsys --profile handout-2026`")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, types
    from pathlib import Path
    from lmreport import runner
    from lmreport.presets import resolve

    def run_cell(c, artifacts):
        if c.config["i"] == int(sys.argv[2]):
            Path(sys.argv[3]).write_text("started")
            time.sleep(60)  # killed here
        return {"metrics": {"i": c.config["i"]}}

    mod = types.SimpleNamespace(run_cell=run_cell)
    import lmreport.sections
    lmreport.sections.get = lambda name: types.SimpleNamespace(experiment_module=lambda: mod)
    plan = runner.Plan(*resolve("cpu", 2025, False))
    cells = [runner.cell(plan, "fake", f"c{i}", i=i) for i in range(5)]
    res = runner.run_sweep(cells, Path(sys.argv[1]), plan.run, progress=False)
    print(dict(res.counts))
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_sweep_resumes_without_redoing_ok_cells(tmp_path, sig):
    script = tmp_path / "sweep.py"
    script.write_text(KILL_SCRIPT)
    marker = tmp_path / "started"
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(script), str(runs), "2", str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    folder = runs / PLAN.run / "fake"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["c0.json", "c1.json"]  # no c2, no temp
    # Resume: c0 and c1 are not redone; the rest run (c2 no longer sleeps: its index is not 2 now).
    out = subprocess.run([sys.executable, str(script), str(runs), "99", str(marker)], capture_output=True,
                         text=True, timeout=60)
    assert "'cached': 2" in out.stdout and "'ok': 3" in out.stdout, out.stderr
    assert all(store.read_record(folder / f"c{i}.json")["status"] == "ok" for i in range(5))


def test_subprocess_executor_records_a_cell_that_raises(tmp_path):
    """The worker catches the cell's exception and writes the error record itself."""
    c = runner.cell(PLAN, "accounting", "check-nonexistent", model="nope", family="gpt2", batch=1, ctx=8)
    r = SubprocessLauncher(timeout_s=120).run(c, tmp_path / "r.json")
    assert r["status"] == "error" and "before writing a record" not in r["error"]
    assert store.read_record(tmp_path / "r.json")["status"] == "error"


# Loaded by the worker's interpreter at start-up (sitecustomize): its cells die like a segfault or the
# OOM killer would, without a chance to write anything.
DYING_WORKER = textwrap.dedent("""
    import os, signal, sys, types
    import lmreport.sections

    def run_cell(c, artifacts):
        print(c.config["last_words"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    mod = types.SimpleNamespace(run_cell=run_cell)
    lmreport.sections.get = lambda name: types.SimpleNamespace(experiment_module=lambda: mod)
""")


@pytest.mark.parametrize("last_words, status", [("segmentation fault coming", "error"),
                                                ("RuntimeError: CUDA out of memory. Tried to allocate 2 GiB", "oom")])
def test_subprocess_executor_records_a_worker_that_dies_without_writing(tmp_path, last_words, status):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(DYING_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    c = runner.cell(PLAN, "fake", "dies", last_words=last_words)
    record_file = tmp_path / "runs" / "fake" / "dies.json"
    r = SubprocessLauncher(timeout_s=120, env=env).run(c, record_file)
    log = store.artifacts_dir(record_file) / "worker.log"
    assert r["status"] == status and f"worker exited with {-signal.SIGKILL} before writing a record" in r["error"]
    assert str(log) in r["error"] and r["artifacts"] == {"log": "worker.log"} and last_words in log.read_text()
    assert store.read_record(record_file)["status"] == status
    assert r["environment"]["device"].startswith("CPU")  # this machine has no GPU: the worker ran on its CPU


def test_a_dead_worker_on_a_gpu_machine_is_not_labelled_with_the_cpu(tmp_path, monkeypatch):
    """The parent does not initialise CUDA to name the GPU: the device is unknown, not "CPU: ..."."""
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: True)
    env = lost_cell_environment({"CUDA_VISIBLE_DEVICES": "3"})  # the child's environment, as WorkerProcess.env
    assert env["device"] is None and env["device_type"] == "cuda" and env["cuda_visible_devices"] == "3"
    # A child that inherited this process's environment saw its GPUs; one given its own saw what that names.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert lost_cell_environment()["cuda_visible_devices"] == "0,1"
    assert lost_cell_environment({"PATH": "/bin"})["cuda_visible_devices"] is None


@pytest.mark.parametrize("executor", ["inline", "subprocess", "worker"])
def test_a_cell_this_machine_cannot_run_keeps_its_ok_record(tmp_path, monkeypatch, executor):
    """`--rerun` on a machine without the GPU must not turn GPU results (made or copied here) into 'skipped'."""
    c = runner.cell(PLAN, "accounting", "gpu-result", requires="nsys", size="small")
    record_file = store.record_path(tmp_path, PLAN.run, c.section, c.name)
    ok = store.make_record(c.section, c.name, c.config, {"device": "NVIDIA H100 80GB HBM3", "host": "gpu1"}, "ok",
                           metrics={"kernel_total_ns": 123})
    store.write_record(record_file, ok)
    monkeypatch.setattr(runner, "missing_requirement", lambda requires: "needs a CUDA GPU")  # inline
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the subprocess or worker process finds no GPU, nor nsys
    res = runner.run_sweep([c], tmp_path, PLAN.run, executor=executor, rerun=True, progress=False)
    kept = store.read_record(record_file)
    assert res.counts == {"ok": 1} and kept["status"] == "ok" and kept["metrics"] == {"kernel_total_ns": 123}
    assert kept["environment"]["device"] == "NVIDIA H100 80GB HBM3"


def test_an_unreadable_record_is_set_aside_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr("lmreport.sections.get", lambda name: fake_section(lambda c, a: {"metrics": {"x": 1}}))
    c = runner.cell(PLAN, "fake", "c0")
    record_file = store.record_path(tmp_path, PLAN.run, "fake", "c0")
    record_file.parent.mkdir(parents=True)
    record_file.write_text('{"schema": 1, "section": "fake", "cell": "c0", "status": "ok", "metrics": {"x": 0.5')
    with pytest.warns(UserWarning, match="not a readable record; kept as c0.json.unreadable"):
        res = runner.run_sweep([c], tmp_path, PLAN.run, progress=False)
    assert res.counts == {"ok": 1} and store.read_record(record_file)["metrics"] == {"x": 1}
    assert (record_file.parent / "c0.json.unreadable").read_text().endswith('"x": 0.5')
    assert [r["cell"] for r in store.load_records(tmp_path)] == ["c0"]  # the set-aside file is no record
