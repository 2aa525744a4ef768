"""Launchers: one interface, the same records whoever launches; the persistent worker's reuse, isolation and replacement."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from lmreport import launchers, model_cache, runner, store
from lmreport.launchers.worker import WorkerLauncher, retire_reason
from lmreport.presets import resolve

PLAN = runner.Plan(*resolve("cpu", 2025, False))


def precision_cells(*names: str) -> list[runner.Cell]:
    from lmreport.experiments import precision
    by_name = {c.name: c for c in precision.cells(PLAN)}
    return [by_name[n] for n in names]


def comparable(record: dict) -> dict:
    return {k: record[k] for k in ("section", "cell", "config", "status", "error", "metrics")}


def test_every_launcher_writes_the_records_inline_writes(tmp_path):
    cells = precision_cells("accumulation", "toy-autocast-cpu-bf16")
    expected = None
    for name, options in (("inline", {}), ("subprocess", {}), ("worker", {}), ("local-gpus", {"workers": 2, "gpus": []})):
        runs = tmp_path / name
        res = runner.run_sweep(cells, runs, PLAN.run, executor=launchers.get(name, **options), progress=False)
        assert res.counts == {"ok": 2}, name
        records = [store.read_record(store.record_path(runs, PLAN.run, c.section, c.name)) for c in cells]
        assert all(r["launcher"] == name and r["wall_s"] >= r["duration_s"] > 0 for r in records), name
        got = [comparable(r) for r in records]
        if expected is None:
            expected = got
        assert got == expected, name


def test_runner_imports_no_launcher():
    """runner plans and runs one cell; launchers import it, never the other way round (no import cycle)."""
    code = ("import sys, lmreport.runner; "
            "print([m for m in sys.modules if m.startswith('lmreport.launchers')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_default_launcher_follows_cuda(monkeypatch):
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: True)
    assert launchers.default_name() == "worker"
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: False)
    assert launchers.default_name() == "inline"


def test_cell_json_keeps_fresh_process_and_reads_old_cells():
    c = runner.cell(PLAN, "memory", "m", requires="cuda", fresh_process=True, size="tiny")
    assert runner.Cell.from_json(c.to_json()) == c
    old = json.loads(c.to_json())
    del old["fresh_process"]  # a cell written before the field (Slurm's jobs.jsonl)
    assert runner.Cell(**old).fresh_process is False


def test_cells_measured_in_a_clean_process_say_so():
    from lmreport.experiments import bench, memory
    fresh = {c.name for c in memory.cells(PLAN) if c.fresh_process}
    assert fresh == {c.name for c in memory.cells(PLAN) if c.config["source"] == "measured"} and fresh
    ablation = [c for c in bench.cells(PLAN) if "-warmup" in c.name]
    assert {c.name for c in ablation if c.fresh_process} == {c.name for c in ablation if c.config["warmup"] == 0}


# --- the persistent worker -------------------------------------------------------------------------

def tiny_bench_cells() -> list[runner.Cell]:
    from lmreport.experiments import bench
    prof = dataclasses.replace(PLAN.profile, sizes=("tiny",), contexts=(16, 32), warmup_steps=1, measure_steps=1,
                               bench_dtypes=("fp32",), warmup_ablation=(), compile_sizes=())
    return [c for c in bench.cells(runner.Plan(prof, PLAN.edition))
            if c.config.get("experiment") == "step" and not c.config["compiled"]]


def test_worker_builds_each_model_once_until_a_training_step_changes_it(tmp_path, monkeypatch):
    cells = tiny_bench_cells()
    assert [c.config["mode"] for c in cells] == ["forward", "forward_backward", "train"] * 2
    launcher = WorkerLauncher()
    res = runner.run_sweep(cells, tmp_path / "worker", PLAN.run, executor=launcher, progress=False)
    assert res.counts == {"ok": 6} and launcher.stats["workers"] == 1
    # Per context: forward builds, forward_backward reuses it, train takes it (its optimizer changes the weights).
    assert launcher.stats["model builds"] == 2

    builds = model_cache.builds  # inline (the cache is off there): one build per cell, as before
    runner.run_sweep(cells, tmp_path / "inline", PLAN.run, executor="inline", progress=False)
    assert model_cache.builds - builds == 6


def test_model_cache_keeps_one_model_and_resets_it(monkeypatch):
    import torch
    from lmreport.presets import CPU_MODELS
    from lmreport.workloads import make_workload
    monkeypatch.setattr(model_cache, "_kept", None)
    model_cache.enable()
    try:
        tiny, mini = CPU_MODELS["tiny"], CPU_MODELS["mini"]
        w = make_workload(tiny, 1, 8, "forward_backward")
        w.step()
        assert all(p.grad is not None for p in w.model.parameters())
        again = make_workload(tiny, 1, 8, "forward", dtype="bf16")
        assert again.model is w.model and all(p.grad is None for p in again.model.parameters())
        assert make_workload(tiny, 1, 8, "forward", device="meta").model is not w.model  # another device
        assert make_workload(mini, 1, 8, "forward").model is not w.model  # another size: the tiny one is dropped
        other = make_workload(tiny, 1, 8, "forward")
        assert other.model is not w.model
        compiled = make_workload(tiny, 1, 8, "forward", compile=True)  # takes the kept model, wrapped
        assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)
        assert make_workload(tiny, 1, 8, "forward").model is not other.model  # compiling took it out of the cache
        key = model_cache.key(make_workload, tiny, "cpu")
        assert key != model_cache.key(torch.nn.Linear, tiny, "cpu")  # another builder, another model
    finally:
        model_cache.enable(False)



def test_model_cache_hands_no_kept_model_to_a_fake_tensor_mode(monkeypatch):
    """Under fake tensors the key may name "cpu" like a real model's: the kept one (real weights) is not handed
    out there, nor replaced by the fake build; a real request afterwards still gets it."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    monkeypatch.setattr(model_cache, "_kept", None)
    model_cache.enable()
    try:
        key = model_cache.key(torch.nn.Linear, (2, 2), "cpu")
        real = model_cache.model_for(key, lambda: torch.nn.Linear(2, 2), device="cpu")
        with FakeTensorMode():
            fake = model_cache.model_for(key, lambda: torch.nn.Linear(2, 2), device="cpu")
        assert fake is not real and model_cache.model_for(key, lambda: torch.nn.Linear(2, 2), device="cpu") is real
    finally:
        model_cache.enable(False)


def test_a_launcher_must_implement_run_or_run_many():
    """Each defaults to the other: a subclass with neither would recurse forever, so it is refused when defined."""
    with pytest.raises(TypeError, match="Neither implements neither run nor run_many"):
        class Neither(launchers.Launcher):
            name = "neither"

    class One(launchers.Launcher):
        def run(self, c, record_file):
            return {"status": "ok", "cell": c}

    class Many(launchers.Launcher):
        def run_many(self, todo, finished):
            for c, _ in todo:
                finished(c, {"status": "ok", "cell": c})
            return Counter()

    class Subclass(One):  # inherits run
        pass
    assert Subclass().run("c", "r.json") == {"status": "ok", "cell": "c"}
    got = []
    One().run_many([("a", "a.json"), ("b", "b.json")], lambda c, r: got.append(r["cell"]))
    assert got == ["a", "b"] and Many().run("c", "c.json") == {"status": "ok", "cell": "c"}

# Loaded by each child interpreter at start-up: a fake section whose cells say what to do.
FAKE_SECTION = textwrap.dedent("""
    import os, sys, time, types
    from pathlib import Path
    import lmreport.sections

    def run_cell(c, artifacts):
        do = c.config["do"]
        print(f"cell {c.name} in {os.getpid()}", flush=True)
        if do == "die":
            os._exit(3)
        if do == "poison":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if do == "segv":
            import signal
            os.kill(os.getpid(), signal.SIGSEGV)
        if do == "sleep":
            Path(c.config["marker"]).write_text(f"{os.getpid()} {os.getppid()}")
            time.sleep(60)
        if do == "count":  # how many times the cell ran, and where
            with open(c.config["marker"], "a") as f:
                f.write(f"{os.getpid()}\\n")
        if do == "probe":  # what a fresh cell finds in its process
            import gc
            frozen = gc.get_freeze_count()
            pid = os.fork()  # the cell's own fork (a DataLoader worker, say), before any thread starts
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            import torch
            x = torch.randn(256, 256)
            (x @ x).sum().item()  # a parallel op: it would hang on an intra-op pool inherited by fork
            return {"metrics": {"pid": os.getpid(), "ppid": os.getppid(), "env": dict(os.environ),
                                "frozen_objects": frozen, "frozen_after_own_fork": gc.get_freeze_count(),
                                "torch_threads": torch.get_num_threads(),
                                "cuda_initialized": torch.cuda.is_initialized() or torch.cuda._initialized}}
        if do == "compile":  # what Dynamo holds for a function compiled by an earlier cell of this process
            import torch
            from torch._dynamo.eval_frame import _debug_get_cache_entry_list
            before = len(_debug_get_cache_entry_list(twice.__code__))
            torch.compile(twice, backend="eager")(torch.ones(2))
            return {"metrics": {"pid": os.getpid(), "entries_before": before}}
        return {"metrics": {"pid": os.getpid()}}

    def twice(x):
        return 2 * x

    mod = types.SimpleNamespace(run_cell=run_cell)
    lmreport.sections.get = lambda name: types.SimpleNamespace(experiment_module=lambda: mod)
""")


def fake_env(tmp_path) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(FAKE_SECTION)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_worker_is_replaced_after_a_crash_or_a_cuda_error_and_isolates_fresh_cells(tmp_path):
    fc = lambda name, do, **kw: runner.cell(PLAN, "fake", name, do=do, **kw)  # noqa: E731
    cells = [fc("snapshot", "ok", fresh_process=True), fc("a", "ok"), fc("b", "die"), fc("c", "ok"),
             fc("d", "poison"), fc("e", "ok"), fc("k1", "compile"), fc("k2", "compile")]
    launcher = WorkerLauncher(env=fake_env(tmp_path))
    res = runner.run_sweep(cells, tmp_path, PLAN.run, executor=launcher, progress=False)
    rec = {c.name: store.read_record(store.record_path(tmp_path, PLAN.run, "fake", c.name)) for c in cells}
    assert res.counts == {"ok": 6, "error": 2}
    # b killed its worker twice: in the first worker, then again as the first cell of a clean one.
    assert rec["b"]["error"].startswith("worker exited with 3 before writing a record; log: ")
    assert "cell b in" in (store.artifacts_dir(store.record_path(tmp_path, PLAN.run, "fake", "b")) / "worker.log").read_text()
    assert rec["d"]["status"] == "error" and "illegal memory access" in rec["d"]["error"]
    assert launcher.stats["retried in a new worker"] == 2 and launcher.stats["workers"] == 5
    pids = {n: rec[n]["metrics"]["pid"] for n in ("a", "c", "e", "snapshot")}
    assert len(set(pids.values())) == 4  # a new worker after b, after d; the snapshot in a process of its own
    assert launcher.stats["fresh processes"] == 1 and rec["snapshot"]["launcher"] == "worker"
    assert rec["snapshot"]["started_at"] >= rec["e"]["started_at"]  # fresh cells run last, with no worker beside them
    # Each cell starts with Dynamo's caches empty: k2 (same worker as k1) finds nothing k1 compiled.
    assert rec["k1"]["metrics"]["pid"] == rec["k2"]["metrics"]["pid"] == pids["e"]
    assert rec["k2"]["metrics"]["entries_before"] == 0
    # A cell's output goes to its own log; a cell that said nothing leaves no log and no folder. (These cells print.)
    assert (store.artifacts_dir(store.record_path(tmp_path, PLAN.run, "fake", "a")) / "worker.log").read_text().startswith("cell a in")


def test_retire_rules():
    assert retire_reason({"status": "oom", "cuda": True}).startswith("it ran out of CUDA memory")
    assert retire_reason({"status": "oom", "cuda": False}) is None  # a CPU MemoryError leaves no CUDA state behind
    assert retire_reason({"status": "error", "error": "RuntimeError: CUDA error: device-side assert triggered"})
    assert retire_reason({"status": "error", "error": "ValueError: broken input"}) is None
    assert retire_reason({"status": "ok", "cuda": True}) is None


def test_a_worker_that_overruns_is_killed_recorded_and_not_retried(tmp_path):
    cells = [runner.cell(PLAN, "fake", "a", do="ok"),
             runner.cell(PLAN, "fake", "slow", do="sleep", marker=str(tmp_path / "m"))]
    launcher = WorkerLauncher(timeout_s=10, env=fake_env(tmp_path))
    res = runner.run_sweep(cells, tmp_path, PLAN.run, executor=launcher, progress=False)
    slow = store.read_record(store.record_path(tmp_path, PLAN.run, "fake", "slow"))
    assert res.counts == {"ok": 1, "error": 1} and "worker exited with timeout" in slow["error"]
    assert launcher.stats["retried in a new worker"] == 0


SWEEP_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lmreport import runner
    from lmreport.launchers.worker import WorkerLauncher
    from lmreport.presets import resolve

    plan = runner.Plan(*resolve("cpu", 2025, False))
    slow = int(sys.argv[2])
    cells = [runner.cell(plan, "fake", f"c{i}", do="sleep" if i == slow else "ok", marker=sys.argv[3]) for i in range(4)]
    res = runner.run_sweep(cells, Path(sys.argv[1]), plan.run, executor=WorkerLauncher(), progress=False)
    print(dict(res.counts))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_sweep_stops_its_worker_and_resumes(tmp_path, sig):
    script, marker, runs = tmp_path / "sweep.py", tmp_path / "started", tmp_path / "runs"
    script.write_text(SWEEP_SCRIPT)
    env = fake_env(tmp_path)
    proc = subprocess.Popen([sys.executable, str(script), str(runs), "2", str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists() or not marker.read_text():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    worker_pid = int(marker.read_text().split()[0])
    proc.send_signal(sig)
    proc.wait(timeout=60)
    with pytest.raises(ProcessLookupError):  # the worker went with the sweep
        os.kill(worker_pid, 0)
    folder = runs / PLAN.run / "fake"
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".json") == ["c0.json", "c1.json"]
    out = subprocess.run([sys.executable, str(script), str(runs), "99", str(marker)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert "'cached': 2" in out.stdout and "'ok': 2" in out.stdout, out.stderr


def test_execute_cell_records_launch_and_timed_time(tmp_path, monkeypatch):
    from lmreport.timing import time_steps

    def run_cell(c, artifacts):
        time.sleep(0.05)  # set-up outside the timed steps
        time_steps(lambda: time.sleep(0.01), "cpu", warmup=1, steps=3)
        return {}

    c = runner.cell(PLAN, "fake", "t")
    launched_at = time.time() - 2.0  # a process that took 2 s to reach the cell
    r = runner.execute_cell(c, tmp_path / "t.json", run_fn=run_cell, launch={"launcher": "subprocess",
                                                                          "launched_at": launched_at})
    assert r["launcher"] == "subprocess" and r["wall_s"] >= 2.0 + r["duration_s"] - 0.01
    assert 0.04 <= r["timed_s"] < r["duration_s"]
    plain = runner.execute_cell(c, tmp_path / "u.json", run_fn=lambda c, a: {})
    assert plain["wall_s"] == plain["duration_s"] and "timed_s" not in plain and "launcher" not in plain
