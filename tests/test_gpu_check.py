"""gpu-check: the summary table from records and pytest's JUnit XML (on the real H200 records), and the
one-line refusal without a GPU (the command and `make gpu-check`)."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from conftest import ROOT, SAMPLES
from lmreport import accounting as acc
from lmreport import gpu_check as G
from lmreport.cli import main
from lmreport.errors import InputFileError
from lmreport.presets import ATTENTION_OOM_PROBE, resolve
from lmreport.runner import Plan
from lmreport.sections import all_sections, get

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="{f}"
skipped="1" tests="4"><testcase classname="tests.test_attention" name="test_cuda_cell_allocated_memory_matches_the_formula"
time="1.2"/><testcase classname="tests.test_bench" name="test_cuda_cell_uses_the_datasheet_peak" time="3.1">{failure}</testcase>
<testcase classname="tests.test_precision" name="test_cuda_autocast_keeps_layernorm_in_fp32" time="0.1"/>
<testcase classname="tests.test_executors" name="test_local_gpus_on_real_gpus" time="0"><skipped message="2 GPUs"/>
</testcase></testsuite></testsuites>"""
PASSING = G.TestResults(passed=5, skipped=1)


def _junit(tmp_path, failed=False):
    path = tmp_path / "cuda-tests.xml"
    path.write_text(JUNIT.format(f=int(failed), failure='<failure message="assert 1.33 &lt; 1.05"/>' if failed else ""))
    return path


def test_junit_counts(tmp_path):
    assert G.parse_junit(_junit(tmp_path)) == G.TestResults(passed=3, skipped=1)
    failed = G.parse_junit(_junit(tmp_path, failed=True))
    assert (failed.passed, failed.failed) == (2, 1)
    assert failed.failures == ("tests.test_bench::test_cuda_cell_uses_the_datasheet_peak",)
    (tmp_path / "bad.xml").write_text("<testsuites><testcase")
    with pytest.raises(InputFileError, match="bad.xml: not a JUnit XML report"):
        G.parse_junit(tmp_path / "bad.xml")


@pytest.fixture(scope="module")
def h200_records() -> list[dict]:
    root = SAMPLES / "h200" / "runs" / "2025-handout-2025"
    if not root.is_dir():
        pytest.skip("../shared/samples/h200 is not beside this checkout")
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*.json"))]


def _planned(records):
    out = {}
    for r in records:
        out.setdefault(r["section"], []).append(r["cell"])
    return out


def _probe(status="oom"):
    return {"section": "attention", "cell": "eager-d16-T131072", "status": status,
            "error": "OutOfMemoryError: out of memory during forward (B=8, T=131072, d=16): CUDA out of memory. "
                     "Tried to allocate 512.00 GiB" if status == "oom" else None,
            "config": {"edition": 2025, "profile": "gpu-quick", "d": 16, "seq_len": 131072, "batch": 8,
                       "variant": "eager", "source": "measured", "warmup": 0, "passes": 1, "purpose": ATTENTION_OOM_PROBE},
            "metrics": {}, "started_at": "2026-12-04T17:01:00+00:00", "duration_s": 0.9}


def _row(summary, start):
    return next(r for r in summary.rows if r["what"].startswith(start))


def test_summary_of_the_h200_records_passes_every_cross_check(h200_records):
    records = h200_records + [_probe()]
    steps = [G.Step("run all --profile gpu-quick", 0, 250.0), G.Step("pytest -m cuda", 0, 40.0)]
    s = G.summarize(records, _planned(records), PASSING, steps)
    assert s.ok, G.table(s)
    # the memory rows: measured / estimated from the records themselves
    by_cell = {r["cell"]: r for r in h200_records}
    m = by_cell["measured-2.7B-ctx256-train-bf16"]["metrics"]["peak_active_bytes"]
    e = by_cell["estimated-2.7B-ctx256-train-bf16"]["metrics"]["peak_bytes"]
    row = _row(s, "memory measured-2.7B-ctx256-train-bf16")
    assert row["result"].startswith(f"{m / e:.4f} ") and row["verdict"] == G.PASS
    assert sum(r["what"].startswith("memory measured-") for r in s.rows) == 8
    # the attention rows: 16 eager cells at T >= 1,024, each the chapter's ratio, and the probe
    att = [r for r in s.rows if r["what"].startswith("attention eager-") and "peak" in r["what"]]
    assert len(att) == 16 and all(r["result"].startswith("1.0000 (before the forward") for r in att)
    assert "64 MiB of it beyond Q, K, V, dO, mask" in att[0]["result"]
    assert _row(s, "attention out-of-memory probe")["verdict"] == G.PASS
    # MFU of the largest fp32 cell that ran: 2.7B at 512, forward + backward (its training step never ran)
    mfu = _row(s, "bench 2.7B-ctx512-forward_backward-fp32: MFU")
    top = by_cell["2.7B-ctx512-forward_backward-fp32"]["metrics"]
    assert mfu["result"].startswith(f"{100 * top['mfu']:.1f}% ({top['achieved_tflops']:.1f} of 67.0 TFLOP/s, H200 SXM fp32")
    # sections: counts and wall seconds from the records
    bench = _row(s, "bench: cells")
    assert bench["result"].startswith(f"{sum(r['section'] == 'bench' for r in h200_records)} ok, 0 oom, 0 error")
    assert f"; {G.section_wall_s([r for r in h200_records if r['section'] == 'bench']):.0f} s" in bench["result"]
    text = G.table(s)
    assert text.splitlines()[0].split() == ["what", "result", "expected", "verdict"]
    assert text.endswith("gpu-check: PASS") and "CUDA tests (pytest -m cuda)" in text


def test_summary_fails_on_each_kind_of_defect(h200_records):
    base = h200_records + [_probe()]

    def failed(records=base, planned=None, tests=PASSING, steps=()):
        s = G.summarize(records, planned or _planned(records), tests, steps)
        return [r["what"] for r in s.failed]

    assert failed() == []
    # no probe, or a probe that did not run out of memory
    assert failed(h200_records) == ["attention out-of-memory probe"]
    assert failed(h200_records + [_probe("ok")]) == ["attention out-of-memory probe eager-d16-T131072 (B=8, T=131,072)"]
    # the three-matrix accounting: a peak one T x T fp32 matrix lower than the H200 measured is 25% off
    old = copy.deepcopy(base)
    cell = next(r for r in old if r["cell"] == "eager-d64-T4096")
    cell["metrics"]["max_allocated_bytes"] -= 4 * 8 * 4096**2
    assert failed(old) == ["attention eager-d64-T4096: peak above baseline / formula"]
    # a cell in error, a planned cell with no record, a failed CUDA test, tests that did not finish, a step timed out
    err = copy.deepcopy(base)
    next(r for r in err if r["cell"] == "small-ctx128-train-bf16").update(status="error", error="RuntimeError: boom")
    assert failed(err) == ["bench: cells"]
    planned = _planned(base)
    planned["memory"] = planned["memory"] + ["measured-2.7B-ctx512-train-fp32"]
    assert failed(planned=planned) == ["memory: cells"]
    assert failed(tests=G.TestResults(passed=4, failed=1, failures=("x",))) == ["CUDA tests (pytest -m cuda)"]
    assert failed(tests=None) == ["CUDA tests (pytest -m cuda)"]
    assert failed(steps=[G.Step("run all --profile gpu-quick", None, 420.0, timed_out=True)]) == \
        ["step: run all --profile gpu-quick"]
    # a memory peak 10% above its estimate
    mem = copy.deepcopy(base)
    next(r for r in mem if r["cell"] == "measured-2.7B-ctx128-forward-fp32")["metrics"]["peak_active_bytes"] *= 1.1
    assert failed(mem) == ["memory measured-2.7B-ctx128-forward-fp32: measured / estimated peak"]


def test_mfu_without_a_datasheet_peak_is_not_applicable(h200_records):
    records = copy.deepcopy(h200_records) + [_probe()]
    for r in records:
        if r["section"] == "bench":
            r["metrics"].update(mfu=None, peak_tflops=None, peak_source="no peak table entry for 'NVIDIA RTX 4090'")
    s = G.summarize(records, _planned(records), PASSING)
    assert _row(s, "bench 2.7B-ctx512-forward_backward-fp32: MFU")["verdict"] == G.NA and s.ok


def test_the_workspace_allowance_is_what_the_h200_held_beyond_its_estimates(h200_records):
    """The memory tolerance's absolute part is the two cuBLAS workspaces: the H200 held 32 MiB more than the
    estimate in forward cells (one handle), 64 MiB in training steps (the autograd thread's too)."""
    by_cell = {r["cell"]: r for r in h200_records}
    for name, r in by_cell.items():
        if name.startswith("measured-"):
            extra = r["metrics"]["peak_active_bytes"] - by_cell[name.replace("measured-", "estimated-")]["metrics"]["peak_bytes"]
            assert 0 < extra <= G.CUBLAS_WORKSPACES_BYTES + G.MEMORY_TOLERANCE * r["metrics"]["peak_active_bytes"]
            assert extra >= (64 if "-train-" in name else 32) * acc.MIB


def test_summary_of_a_gpu_quick_run_on_a_cpu_fails_as_it_should(tmp_path):
    """The plan of gpu-quick with every CUDA cell skipped (what a CPU machine records): the cross-checks find
    nothing measured, and every planned cell is accounted for."""
    plan = Plan(*resolve("gpu-quick", None, True))
    planned = {name: [c.name for c in get(name).experiment_module().cells(plan)] for name in all_sections()}
    records = [{"section": s, "cell": c, "status": "skipped", "config": {}, "metrics": {}} for s, cs in planned.items()
               for c in cs]
    s = G.summarize(records, planned, None)
    assert all(_row(s, f"{name}: cells")["verdict"] == G.PASS for name in planned)  # skipped is not an error
    assert {r["what"] for r in s.failed} >= {"CUDA tests (pytest -m cuda)", "memory: measured / estimated peak",
                                             "attention out-of-memory probe", "bench: MFU of the largest fp32 cell"}


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: False)
    assert main(["gpu-check", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gpu-check needs a CUDA GPU" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()  # nothing ran


def test_make_gpu_check_without_a_gpu_is_one_line_and_exit_2():
    """`make gpu-check` on a machine without an NVIDIA GPU (HAS_CUDA empty, as nvidia-smi finding none sets it):
    one line, status 2, before any install."""
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "gpu-check", "HAS_CUDA="], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and "gpu-check needs a CUDA GPU" in lines[0], lines


# --- the command's summary, with CUDA and its steps stubbed ------------------------------------------------------


def _gpu_check(tmp_path, monkeypatch, during_run=lambda runs: None):
    """`lmreport gpu-check` with CUDA reported present and each step stubbed (during_run(runs dir) stands for the
    run step); returns (exit code, the commands of the steps, gpu-check.json)."""
    from lmreport.commands import gpu_check as command
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: True)
    commands = []

    def step(name, cmd, log, timeout_s, cwd=None):
        commands.append(cmd)
        if name.startswith("run all"):
            during_run(tmp_path / "runs")
        return G.Step(name, 0, 1.0)

    monkeypatch.setattr(command, "run_step", step)
    code = main(["gpu-check", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")])
    return code, commands, json.loads((tmp_path / "out" / "gpu-check.json").read_text())


def _write_plan_records(runs, run, status="skipped", started_at=None, error=None):
    """A record of `status` for every cell gpu-quick plans, under runs/<run>/."""
    from lmreport import store
    plan = Plan(*resolve("gpu-quick", None, True))
    for section in all_sections():
        for c in get(section).experiment_module().cells(plan):
            store.write_record(store.record_path(runs, run, section, c.name),
                               store.make_record(section, c.name, c.config, {}, status, error=error,
                                                 started_at=started_at))


def _rows(summary):
    return {r["what"]: r for r in summary["rows"]}


def test_the_summary_reads_only_the_plans_run_folder(tmp_path, monkeypatch):
    """A user model's gpu-quick run beside it (runs/2025-gpu-quick--<model>/, the same cell names, newer records in
    error) is no part of the check."""
    def run(runs):
        _write_plan_records(runs, "2025-gpu-quick")
        _write_plan_records(runs, "2025-gpu-quick--my-model", "error", "2999-01-01T00:00:00+00:00", "RuntimeError: not mine")

    _, _, summary = _gpu_check(tmp_path, monkeypatch, run)
    rows = _rows(summary)
    assert rows["bench: cells"]["verdict"] == G.PASS and rows["bench: cells"]["result"].startswith("0 ok, 0 oom, 0 error")
    assert not any("not mine" in r["result"] for r in summary["rows"])


def test_records_from_before_the_check_count_as_not_run(h200_records):
    """The summary proves this check's run: the H200 records (from 2025-26) are old next to a check begun in 2999,
    so every cell is not run, and no cross-check or wall time reads them."""
    records = h200_records + [_probe()]
    planned = _planned(records)
    s = G.summarize(records, planned, PASSING, since="2999-01-01T00:00:00+00:00")
    bench = _row(s, "bench: cells")
    n = len(planned["bench"])
    assert bench["result"].startswith(f"0 ok, 0 oom, 0 error, 0 skipped, {n} not run ({n} recorded only before this check)")
    assert " s;" not in bench["result"] and bench["verdict"] == G.FAIL  # no wall seconds from old records
    assert not s.ok and G.table(s).endswith(f"gpu-check: FAIL ({len(s.failed)} rows failed)")
    assert {"memory: measured / estimated peak", "attention out-of-memory probe",
            "bench: MFU of the largest fp32 cell"} <= {r["what"] for r in s.failed}
    # begun just before the records (to the second): they are this check's, and it passes as before
    first = min(r["started_at"] for r in records)
    assert G.summarize(records, planned, PASSING, since=first).ok
    # one cell recorded before, the rest after: that cell alone is not run, the section's time is the others'
    fresh = copy.deepcopy(records)
    old = next(r for r in fresh if r["cell"] == "small-ctx128-train-bf16")
    old["started_at"] = "2000-01-01T00:00:00+00:00"
    bench = _row(G.summarize(fresh, planned, PASSING, since=first), "bench: cells")
    assert bench["verdict"] == G.FAIL and "1 not run (1 recorded only before this check)" in bench["result"]
    assert bench["result"].endswith("first not run: small-ctx128-train-bf16")


def test_a_failed_rerun_shows_its_error_not_the_ok_record_kept_from_before():
    since = "2026-01-01T12:00:00+00:00"
    config = {"edition": 2025, "profile": "gpu-quick"}
    kept = {"section": "bench", "cell": "a", "status": "ok", "config": config, "metrics": {},
            "started_at": "2025-12-01T12:00:00+00:00", "duration_s": 1.0}
    failed_rerun = {**kept, "status": "error", "error": "RuntimeError: CUDA error", "started_at": "2026-01-01T12:00:05+00:00"}
    only_old = {**kept, "cell": "b"}
    chosen = G.select_for_check([kept, failed_rerun, only_old], 2025, "gpu-quick", since)
    assert [(r["cell"], r["status"]) for r in chosen] == [("a", "error"), ("b", "ok")]
    row = _row(G.summarize(chosen, {"bench": ["a", "b"]}, PASSING, since=since), "bench: cells")
    assert row["result"].startswith("0 ok, 0 oom, 1 error, 0 skipped, 1 not run (1 recorded only before this check)")
    assert "first error: a: RuntimeError: CUDA error" in row["result"] and row["verdict"] == G.FAIL


def test_the_check_reruns_every_cell_and_old_records_cannot_make_it_pass(tmp_path, monkeypatch):
    """Records already in runs/ (an earlier run, or copied from another machine) with a run step that records
    nothing: every planned cell is not run, and the check fails; the run step is asked to rerun every cell."""
    _write_plan_records(tmp_path / "runs", "2025-gpu-quick", "ok", "2000-01-01T00:00:00+00:00")
    code, commands, summary = _gpu_check(tmp_path, monkeypatch)
    assert code == 1 and not summary["ok"] and summary["started_at"] > "2000"
    run = next(c for c in commands if "run" in c and "all" in c)
    assert "--rerun" in run
    cells = [r for r in summary["rows"] if r["what"].endswith(": cells")]
    assert cells and all(r["verdict"] == G.FAIL and "recorded only before this check" in r["result"] for r in cells)
    # the same records written during the run step are this check's
    code, _, summary = _gpu_check(tmp_path, monkeypatch, lambda runs: _write_plan_records(runs, "2025-gpu-quick"))
    assert all(r["verdict"] == G.PASS for r in summary["rows"] if r["what"].endswith(": cells"))
