"""benchmarks/project_handout_wall.py (the handout-2025 projection in the README) and
benchmarks/measure_on_gpu.sh (the GPU run that would replace its assumptions), on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SAMPLES

sys.path.insert(0, str(ROOT / "benchmarks"))
import project_handout_wall as projection  # noqa: E402

H200_RUNS = SAMPLES / "h200" / "runs"


@pytest.fixture(scope="module")
def h200_inputs():
    if not H200_RUNS.is_dir():
        pytest.skip("../shared/samples/h200 is not beside this checkout")
    from lmreport import eta, runner, store
    from lmreport.presets import resolve
    plan = runner.Plan(*resolve("handout-2025", None, False))
    records = store.select(store.load_records(H200_RUNS), 2025, "handout-2025")
    setup_s, _ = projection.cuda_setup_s(records)
    return plan, records, setup_s, eta.Rates(records, gpu_name=projection.GPU)


def test_forked_fresh_cells_cost_less_than_new_interpreters_and_timed_work_is_within_work(h200_inputs):
    plan, records, setup_s, rates = h200_inputs
    exec_rows = projection.project(plan, records, 5.62, setup_s, rates, fresh_s=5.62)
    fork_rows = projection.project(plan, records, 5.62, setup_s, rates, fresh_s=0.15)
    by = {r["section"]: r for r in fork_rows}
    assert sum(r["cells"] for r in fork_rows) == 345  # the plan after the ablation/compile changes (README)
    assert by["bench"]["fresh"] == 15 and by["memory"]["fresh"] == 12  # warm-up-0 cold starts, memory snapshots
    for e, f in zip(exec_rows, fork_rows):
        assert f["work"] == e["work"] and f["subprocess"] == e["subprocess"]  # forking changes the worker's launch only
        assert 0 <= f["timed"] <= f["work"] + 1e-9
        if f["fresh"]:
            # each fresh cell saves a new interpreter's start, less the fork, and the server starts once in all
            saved = f["fresh"] * (5.62 - 0.15)
            assert e["worker"] - f["worker"] == pytest.approx(saved - (2.0 if f["section"] == "bench" else 0.0))
    # The README's table: launch overhead about 3 minutes, the timed passes 11.7 of 16.4 minutes of work
    no_nsys = [r for r in fork_rows if r["section"] != "nsys"]
    work, timed, comp, worker = (sum(r[k] for r in no_nsys) / 60 for k in ("work", "timed", "compile", "worker"))
    assert (round(work, 1), round(timed, 1), round(comp, 1)) == (16.4, 11.7, 6.7)
    assert round(worker - work - comp, 1) == 3.1


def test_a_skipped_record_is_not_taken_for_a_measurement(tmp_path, h200_inputs):
    import json
    plan, records, setup_s, rates = h200_inputs
    src = H200_RUNS / "2025-handout-2025" / "bench" / "xl-ctx512-train-fp32.json"
    skipped = {**json.loads(src.read_text()), "status": "skipped", "duration_s": 0.01}
    (tmp_path / "2025-handout-2025" / "bench").mkdir(parents=True)
    (tmp_path / "2025-handout-2025" / "bench" / src.name).write_text(json.dumps(skipped))
    def table(*folders):
        args = [a for f in folders for a in ("--records", str(f))]
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "project_handout_wall.py"), *args],
                             capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if line.startswith(("bench", "total"))]
    assert table(H200_RUNS, tmp_path) == table(H200_RUNS)  # the H200 record stands


def test_measure_on_gpu_refuses_without_a_gpu_in_one_line(tmp_path):
    if subprocess.run(["sh", "-c", "nvidia-smi -L"], capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU")
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_CPU"}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "measure_on_gpu.sh"), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stdout.strip().splitlines() == [
        "measure_on_gpu.sh needs a CUDA GPU: nvidia-smi finds none on this machine (ALLOW_CPU=1 runs it anyway)"]
