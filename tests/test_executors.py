"""local-gpus: one worker per GPU in parallel (CUDA_VISIBLE_DEVICES each), N CPU workers without GPUs."""

from __future__ import annotations

import pytest

from lmreport import runner, store
from lmreport.cli import main
from lmreport.errors import UserError
from lmreport.launchers import local_gpus
from lmreport.launchers.local_gpus import LocalGpusLauncher as LocalGpusExecutor
from lmreport.presets import resolve

PLAN = runner.Plan(*resolve("cpu", 2025, False))


def accounting_cells(*names: str) -> list[runner.Cell]:
    from lmreport.experiments import accounting
    by_name = {c.name: c for c in accounting.cells(PLAN)}
    return [by_name[n] for n in names]


def test_one_worker_per_gpu_each_sees_its_own(tmp_path):
    """Two "GPUs" (ids only: on a CPU machine the variable changes nothing else), two cells at once."""
    cells = accounting_cells("check-small-ctx512", "check-medium-ctx512")
    res = runner.run_sweep(cells, tmp_path, PLAN.run, executor=LocalGpusExecutor(gpus=["3", "5"]), progress=False)
    assert res.counts == {"ok": 2}
    seen = [store.read_record(store.record_path(tmp_path, PLAN.run, "accounting", c.name))["environment"]
            for c in cells]
    assert sorted(e["cuda_visible_devices"] for e in seen) == ["3", "5"]
    for c in cells:  # each worker's output is kept beside its record
        assert (store.artifacts_dir(store.record_path(tmp_path, PLAN.run, "accounting", c.name)) / "worker.log").exists()


def test_a_worker_that_overruns_is_stopped_and_recorded_with_its_log(tmp_path):
    (c,) = accounting_cells("check-gpt-2-xl-ctx16384")
    path = store.record_path(tmp_path, PLAN.run, "accounting", c.name)
    r = LocalGpusExecutor(workers=1, gpus=[], timeout_s=0.3).run(c, path)
    assert r["status"] == "error" and "worker exited with timeout before writing a record" in r["error"]
    assert str(store.artifacts_dir(path) / "worker.log") in r["error"]
    assert store.read_record(path)["status"] == "error"


def test_interrupt_stops_the_workers_and_writes_nothing_for_their_cells(tmp_path):
    """Ctrl-C (or SIGTERM, turned into it by run_sweep) mid-sweep: unfinished cells leave no record."""
    cells = accounting_cells("check-small-ctx512", "check-gpt-2-xl-ctx16384", "check-large-ctx512")
    todo = [(c, store.record_path(tmp_path, PLAN.run, "accounting", c.name)) for c in cells]
    done = []

    def finished(c, record):
        done.append(c.name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LocalGpusExecutor(workers=2, gpus=[]).run_many(todo, finished)
    assert len(done) == 1
    written = {p.stem: store.read_record(p)["status"] for p in (tmp_path / PLAN.run / "accounting").glob("*.json")}
    # The other running cell was killed (unless it had just finished on its own): never a false error
    # record for it; the third cell never started.
    assert done[0] in written and "check-large-ctx512" not in written
    assert set(written.values()) == {"ok"}


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_gpus.visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert local_gpus.visible_gpus() == ["2", "7"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_gpus.visible_gpus() == []


def test_worker_counts_are_checked():
    assert LocalGpusExecutor(gpus=["0", "1", "2"]).slots == ["0", "1", "2"]
    assert LocalGpusExecutor(workers=2, gpus=["0", "1", "2"]).slots == ["0", "1"]
    assert LocalGpusExecutor(workers=3, gpus=[]).slots == [None, None, None]
    with pytest.raises(UserError, match="only 2 GPU"):
        LocalGpusExecutor(workers=3, gpus=["0", "1"])
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        LocalGpusExecutor(gpus=[])


def test_cli_without_gpus_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(local_gpus, "visible_gpus", lambda: [])
    base = ["run", "accounting", "--profile", "cpu", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main([*base, "--executor", "local-gpus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is visible" in err and "--workers N" in err
    assert main([*base, "--executor", "inline", "--workers", "2"]) == 2
    assert "--workers only applies to --executor local-gpus" in capsys.readouterr().err


@pytest.mark.cuda
def test_local_gpus_on_real_gpus(tmp_path):
    """On a CUDA machine: one cell per visible GPU, each record names its GPU."""
    gpus = local_gpus.visible_gpus()
    cells = accounting_cells("check-small-ctx512", "check-medium-ctx512")[:len(gpus)]
    res = runner.run_sweep(cells, tmp_path, PLAN.run, executor=LocalGpusExecutor(), progress=False)
    assert res.counts == {"ok": len(cells)}
    envs = [store.read_record(store.record_path(tmp_path, PLAN.run, "accounting", c.name))["environment"]
            for c in cells]
    assert sorted(e["cuda_visible_devices"] for e in envs) == sorted(gpus[:len(cells)])
    assert all(e["device_type"] == "cuda" for e in envs)
