"""Records from several machines merge: newest ok per cell, and every table says which device and host."""

from __future__ import annotations

import copy
import shutil

import pytest

from lmreport import runner, store
from lmreport.presets import resolve
from lmreport.report import render as render_mod
from lmreport.sections import get

PLAN = runner.Plan(*resolve("cpu", 2025, False))
CELLS = ("check-gpt-2-xl-ctx1024", "check-small-ctx512")
A100 = {"device": "NVIDIA A100-SXM4-80GB", "device_type": "cuda", "host": "node-a"}
H100 = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "host": "node-b"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, dict]:
    """Real accounting records (inline, on meta), to be copied as if made on other machines."""
    runs = tmp_path_factory.mktemp("measured")
    from lmreport.experiments import accounting
    cells = [c for c in accounting.cells(PLAN) if c.name in CELLS]
    runner.run_sweep(cells, runs, PLAN.run, progress=False)
    return {r["cell"]: r for r in store.load_records(runs)}


def copy_as(runs, folder: str, record: dict, env: dict, started: str, status: str = "ok"):
    """A record as host `env["host"]` would have written it, in its own copied run folder under runs/."""
    r = copy.deepcopy({k: v for k, v in record.items() if k != "_path"})
    r["environment"] = {**r["environment"], **env}
    r["started_at"], r["status"] = started, status
    if status != "ok":
        r["error"], r["metrics"] = "worker exited with -9 before writing a record", {}
    store.write_record(store.record_path(runs / folder, PLAN.run, r["section"], r["cell"]), r)


def render_accounting(runs, out, monkeypatch):
    monkeypatch.setattr(render_mod, "all_sections", lambda: {"accounting": get("accounting")})
    return render_mod.render(runs, out, PLAN.edition, PLAN.profile, pdf=False)


def test_newest_ok_record_per_cell_and_mixed_devices_are_flagged(measured, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    xl, small = measured["check-gpt-2-xl-ctx1024"], measured["check-small-ctx512"]
    copy_as(runs, "from-node-a", xl, A100, "2026-01-01T10:00:00+00:00")
    copy_as(runs, "from-node-a", small, A100, "2026-01-01T10:00:00+00:00")
    copy_as(runs, "from-node-b", small, H100, "2026-01-02T10:00:00+00:00")  # newer ok: wins
    copy_as(runs, "from-node-b", xl, H100, "2026-01-03T10:00:00+00:00", status="error")  # newer, but not ok

    out = render_accounting(runs, tmp_path / "build", monkeypatch)
    chosen = {r["cell"]: r["environment"]["host"] for r in out.records}
    assert chosen == {"check-gpt-2-xl-ctx1024": "node-a", "check-small-ctx512": "node-b"}

    md = out.markdown.read_text()
    line = "**Mixed devices:** NVIDIA A100-SXM4-80GB; NVIDIA H100 80GB HBM3 · hosts node-a, node-b · profile cpu"
    assert md.count(line) == 2  # under both tables of the checks
    # The table of GPT-2 XL's saved tensors comes from one record: one device, one host.
    assert "Device: NVIDIA A100-SXM4-80GB · host node-a · profile cpu" in md
    assert "Formulas only · profile cpu" in md  # the formula tables say so too
    # The writeup's section table lists devices and hosts.
    assert "| Accounting: parameters, FLOPs and memory | rendered | NVIDIA A100-SXM4-80GB; NVIDIA H100 80GB HBM3 | node-a, node-b |" in md


def test_one_machine_is_not_flagged(measured, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for r in measured.values():
        copy_as(runs, "cluster", r, H100, "2026-01-01T10:00:00+00:00")
    shutil.copytree(runs / "cluster", runs / "cluster-copy")  # the same records twice: still one cell each
    out = render_accounting(runs, tmp_path / "build", monkeypatch)
    assert len(out.records) == len(CELLS)
    md = out.markdown.read_text()
    assert "Mixed devices" not in md and md.count("Device: NVIDIA H100 80GB HBM3 · host node-b · profile cpu") == 3
