"""`lmreport run ... --dry-run`: the plan and an ETA (from records where they exist, a cost model where not); nothing runs or is written."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lmreport import eta, runner, store
from lmreport.cli import main
from lmreport.experiments import bench
from lmreport.presets import model_of, resolve

PLAN = runner.Plan(*resolve("cpu", 2025, False))
HANDOUT = runner.Plan(*resolve("handout-2025", None, False))


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*")) if folder.exists() else []


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    ran = []
    # The inline launcher imports execute_cell by name: patched there too (its first import here would
    # otherwise keep the patched one for every later test).
    from lmreport.launchers import inline
    for module in (runner, inline):
        monkeypatch.setattr(module, "execute_cell", lambda *a, **k: ran.append(a))
    assert main(["run", "all", "--profile", "cpu", "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not runs.exists() and not ran
    lines = out.splitlines()
    assert lines[0].startswith("dry run (nothing runs, nothing is written): profile cpu, edition 2025, executor inline")
    total = next(ln for ln in lines if ln.startswith("total"))
    n_cells = sum(len(s.experiment_module().cells(PLAN)) for s in __import__("lmreport.sections", fromlist=["x"]).all_sections().values())
    assert total.split()[1] == str(n_cells)
    assert any(ln.startswith("bench ") for ln in lines) and "  bench: matmul-cpu-fp32, matmul-cpu-bf16, " in out
    assert "estimated from:" in out and "(assumed" in out  # no records: the cost model, its assumptions named
    # This CPU machine records the CUDA cells as skipped: its own ETA leaves their work out.
    here = next(ln for ln in lines if ln.startswith("ETA on this machine, which records them as skipped: "))
    assert "need a CUDA GPU and would be recorded `skipped` here" in out

    def seconds(clock: str) -> int:
        parts = [int(x) for x in clock.split(":")]
        return sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    assert 0 < seconds(here.rsplit(" ", 1)[1]) < seconds(total.split()[-1])

    # With records: ok cells are not planned again, and an earlier (failed) record's duration is the estimate.
    cells = bench.cells(PLAN)
    store.write_record(store.record_path(runs, PLAN.run, "bench", cells[0].name),
                       store.make_record("bench", cells[0].name, cells[0].config, {}, "ok", duration_s=2.0))
    store.write_record(store.record_path(runs, PLAN.run, "bench", cells[1].name),
                       store.make_record("bench", cells[1].name, cells[1].config, {}, "error", duration_s=300.0))
    before = tree(runs)
    assert main(["run", "bench", "--profile", "cpu", "--runs-dir", str(runs), "--dry-run", "--executor", "worker"]) == 0
    out = capsys.readouterr().out
    assert tree(runs) == before and not ran
    row = next(ln for ln in out.splitlines() if ln.startswith("bench ")).split()
    # to run, ok kept, by record, by model, processes (one worker + the fresh-process cells)
    fresh = sum(c.fresh_process for c in cells[1:])
    assert row[1:6] == [str(len(cells) - 1), "1", "1", str(len(cells) - 2), str(1 + fresh)]



def test_a_dry_run_of_a_users_model_runs_nothing_of_it(tmp_path, capsys, monkeypatch):
    """--model with --dry-run: the model is not built or test-run (user_model.check), and the plan names the run
    folder a real run of it writes."""
    from lmreport import user_model
    target = "tests.fixtures.my_model:TransformerLM"

    def no_check(spec):
        raise AssertionError("a dry run checked the model")
    monkeypatch.setattr(user_model, "check", no_check)
    runs = tmp_path / "runs"
    assert main(["run", "bench", "--profile", "cpu", "--runs-dir", str(runs), "--dry-run", "--model", target]) == 0
    out = capsys.readouterr().out
    run = runner.Plan(PLAN.profile, PLAN.edition, user_model.load_spec(target)).run
    assert run.endswith("--" + user_model.load_spec(target).slug)
    assert out.splitlines()[0].endswith(f"records in {runs / run}") and not runs.exists()


def test_a_dry_run_reads_each_record_once_and_estimates_once(tmp_path, capsys, monkeypatch):
    from lmreport.experiments import memory
    runs = tmp_path / "runs"
    cells = memory.cells(PLAN)
    cuda = next(c for c in cells if c.requires == "cuda")  # this machine would record it skipped
    for c, status in ((cells[0], "ok"), (cells[1], "error"), (cuda, "skipped")):
        store.write_record(store.record_path(runs, PLAN.run, "memory", c.name),
                           store.make_record("memory", c.name, c.config, {}, status, duration_s=2.0))
    reads, estimates = [], []
    read_record, estimate = store.read_record, eta.estimate
    monkeypatch.setattr(store, "read_record", lambda path: reads.append(path) or read_record(path))
    monkeypatch.setattr(eta, "estimate", lambda *a, **k: estimates.append(a) or estimate(*a, **k))
    monkeypatch.setattr(runner, "missing_requirement", lambda requires: "needs a CUDA GPU" if requires == "cuda" else None)
    assert main(["run", "memory", "--profile", "cpu", "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert sorted(reads) == sorted((runs / PLAN.run / "memory").glob("*.json")) and len(reads) == 3
    assert len(estimates) == 1 and "ETA on this machine, which records them as skipped: " in out


@pytest.mark.parametrize("launcher,workers", [("inline", 1), ("worker", 1), ("subprocess", 1), ("local-gpus", 3)])
def test_the_estimate_of_some_cells_is_the_estimate_of_those_cells(launcher, workers):
    """Estimate.only (what this machine runs of a plan) gives what estimating those cells alone gives."""
    from lmreport.experiments import memory
    todo = {"bench": bench.cells(HANDOUT)[:40], "memory": memory.cells(HANDOUT)}
    full = eta.estimate(todo, [], launcher, workers=workers)

    def keep(ce):
        return not ce.cuda or ce.cell.endswith("bf16")
    alone = eta.estimate({s: [c for c, ce in zip(cells, full.cells[s]) if keep(ce)] for s, cells in todo.items()},
                         [], launcher, workers=workers)
    part = full.only(keep)
    assert part.total_s == pytest.approx(alone.total_s) and part.processes == alone.processes
    assert part.launch_s == pytest.approx(alone.launch_s) and 0 < part.total_s < full.total_s

def test_estimate_from_a_record_and_from_the_cost_model():
    step = next(c for c in bench.cells(PLAN) if c.name == "mini-ctx128-train-fp32")
    earlier = store.make_record("bench", step.name, step.config, {}, "oom", duration_s=42.0)
    est = eta.estimate({"bench": [step]}, [earlier], "inline")
    assert [(c.work_s, c.source) for c in est.cells["bench"]] == [(42.0, "record")]

    # The rate: this run's matmul record (0.2 TFLOP/s) times the MFU of its step records of the same size and
    # mode (0.5; the others' would give another rate).
    matmul = store.make_record("bench", "matmul-cpu-fp32", {"experiment": "matmul", "device": "cpu", "dtype": "fp32"},
                               {}, "ok", metrics={"tflops": 0.2})
    steps = [store.make_record("bench", f"s{i}", {"experiment": "step", "device": "cpu", "dtype": "fp32", "size": size,
                                                  "mode": mode}, {}, "ok", metrics={"mfu": m})
             for i, (size, mode, m) in enumerate((("tiny", "train", 0.1), ("mini", "train", 0.5), ("mini", "forward", 0.9)))]
    est = eta.estimate({"bench": [step]}, [matmul, *steps], "subprocess")
    flops, _ = bench.step_flops(model_of(step.config), step.config["batch"], step.config["ctx"], "train")
    n_steps = step.config["warmup"] + step.config["steps"]
    (ce,) = est.cells["bench"]
    assert ce.source == "model" and ce.work_s == pytest.approx(eta.PER_CELL_S + n_steps * flops / (0.2e12 * 0.5))
    assert est.launch_s["bench"] == eta.PROCESS_START_S and est.processes["bench"] == 1  # a CPU cell: no CUDA set-up
    assert any("matmul-cpu-fp32 record" in n and "MFU from this run's step records" in n for n in est.notes)



def test_a_skipped_record_is_no_estimate_of_a_cells_time():
    """A CPU machine records a CUDA cell `skipped` in a millisecond: its time on a GPU comes from the cost model."""
    step = next(c for c in bench.cells(HANDOUT) if c.config.get("device") == "cuda" and c.config.get("experiment") == "step")
    skipped = store.make_record("bench", step.name, step.config, {}, "skipped", duration_s=0.001)
    (ce,) = eta.estimate({"bench": [step]}, [skipped], "inline").cells["bench"]
    assert ce.source == "model" and ce.work_s > eta.PER_CELL_S
    for status in ("ok", "oom", "error"):  # real attempts: their time is the estimate
        earlier = store.make_record("bench", step.name, step.config, {}, status, duration_s=7.0)
        (ce,) = eta.estimate({"bench": [step]}, [earlier], "inline").cells["bench"]
        assert (ce.work_s, ce.source) == (7.0, "record")


@pytest.mark.parametrize("requested", ["auto", "nsys", "torch"])
@pytest.mark.parametrize("nsys_here", [True, False])
def test_nsys_time_counts_for_the_profiling_cells_nsys_would_profile(monkeypatch, requested, nsys_here):
    """--profiler auto runs Nsight Systems on a GPU where `nsys` is on PATH: a dry run assumes it as it would choose
    here, and says so; nsys asked for is always nsys, torch never; a CPU profile's cells run torch.profiler."""
    from lmreport.experiments import nsys
    monkeypatch.setenv("LMREPORT_PROFILER", requested)
    monkeypatch.setattr(eta, "nsys_on_path_here", lambda: nsys_here)
    rates = eta.Rates([])
    (c, *_) = nsys.cells(HANDOUT)
    uses_nsys = requested == "nsys" or (requested == "auto" and nsys_here)
    extra = eta.cell_work_model(c, rates, nsys_here) - eta.cell_work_model(replace(c, section="bench"), rates, nsys_here)
    assert extra == pytest.approx(eta.NSYS_S if uses_nsys else 0.0)
    assert eta.profiler_of(c, nsys_here) == ("nsys" if uses_nsys else "torch")
    notes = [n for n in eta.estimate({"nsys": [c]}, [], "worker").notes if n.startswith("profiling cells: ")]
    assert notes == [f"profiling cells: 1 by {'Nsight Systems' if uses_nsys else 'torch.profiler'}" + (
        "" if requested != "auto" else f" (assumed for --profiler auto: `nsys` is on PATH here; {eta.NSYS_S:g} s more "
        "per cell)" if nsys_here else " (assumed for --profiler auto: `nsys` is not on PATH here; a GPU machine with it "
        f"runs Nsight Systems, {eta.NSYS_S:g} s more per cell)")]
    (cpu_cell, *_) = nsys.cells(PLAN)
    assert eta.profiler_of(cpu_cell, nsys_here) == ("nsys" if requested == "nsys" else "torch")
    # ... and never pay for an nsys profile: Nsight Systems on a CPU cell is skipped.
    assert eta.cell_work_model(cpu_cell, rates, nsys_here) == eta.cell_work_model(replace(cpu_cell, section="bench"),
                                                                                   rates, nsys_here)


def _step(plan, name):
    return next(c for c in bench.cells(plan) if c.name == name)


def test_a_record_first_in_its_process_pays_the_cuda_set_up_once():
    """duration_s of a process's first CUDA cell holds the CUDA set-up, which launch_cost adds per process: the
    record's work is counted without it (not below PER_CELL_S). Synthetic records of each way to say so."""
    gpu, cpu = _step(HANDOUT, "small-ctx512-forward-fp32"), _step(PLAN, "mini-ctx128-train-fp32")
    fresh = next(c for c in bench.cells(HANDOUT) if c.fresh_process and c.config.get("device") == "cuda")

    def work(c, duration_s, launcher="inline", **metrics):
        r = store.make_record("bench", c.name, c.config, {}, "ok", metrics=metrics, duration_s=duration_s,
                              launcher=launcher)
        (ce,) = eta.estimate({"bench": [c]}, [r], launcher).cells["bench"]
        assert ce.source == "record"
        return ce.work_s

    assert work(gpu, 5.77, first_cell_in_process=True) == pytest.approx(5.77 - eta.CUDA_SETUP_S)
    assert work(gpu, 5.77, first_cell_in_process=False) == 5.77
    assert work(gpu, 1.0, first_cell_in_process=True) == eta.PER_CELL_S  # never below the in-cell cost
    assert work(cpu, 5.77, first_cell_in_process=True) == 5.77  # a CPU cell sets up no CUDA
    for launcher in ("subprocess", "local-gpus", "slurm"):  # a process per cell: every record was its first
        assert work(gpu, 5.77, launcher) == pytest.approx(5.77 - eta.CUDA_SETUP_S)
    assert work(fresh, 5.77, "worker") == pytest.approx(5.77 - eta.CUDA_SETUP_S)  # a process of its own
    assert work(gpu, 5.77, "worker") == 5.77  # one of the worker's cells, maybe not its first


def test_h200_records_count_the_cuda_set_up_once(samples_dir):
    """The real H200 run: small-ctx512-forward-fp32 (5.77 s, first in its process) estimated like its bf16 twin
    (0.55 s) plus what launching it costs, not plus that set-up twice."""
    runs = samples_dir / "h200" / "runs"
    if not (runs / HANDOUT.run).is_dir():
        pytest.skip("../shared/samples/h200 is not beside this checkout")
    records = store.select(store.load_records(runs / HANDOUT.run), HANDOUT.edition.year, HANDOUT.profile.name)
    first, twin = _step(HANDOUT, "small-ctx512-forward-fp32"), _step(HANDOUT, "small-ctx512-forward-bf16")
    by_name = {r["cell"]: r for r in records if r["section"] == "bench"}
    assert by_name[first.name]["metrics"]["first_cell_in_process"] and not by_name[twin.name]["metrics"]["first_cell_in_process"]
    est = eta.estimate({"bench": [first, twin]}, records, "subprocess")
    ce_first, ce_twin = est.cells["bench"]
    assert ce_first.work_s == pytest.approx(by_name[first.name]["duration_s"] - eta.CUDA_SETUP_S)
    assert ce_twin.work_s == by_name[twin.name]["duration_s"]
    assert abs(ce_first.work_s - ce_twin.work_s) < 0.5  # the set-up was most of the difference
    assert est.launch_s["bench"] == pytest.approx(2 * (eta.PROCESS_START_S + eta.CUDA_SETUP_S))

def test_handout_estimate_on_a_machine_without_a_gpu_says_what_it_assumes(monkeypatch):
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: False)
    from lmreport.experiments import memory
    cells = memory.cells(HANDOUT)
    monkeypatch.delenv("LMREPORT_FRESH_PROCESS", raising=False)
    est = eta.estimate({"memory": cells}, [], "worker")
    fresh = [c for c in cells if c.fresh_process]
    assert est.processes["memory"] == len(fresh) + 1
    # The fresh-process cells are forked from the fork server, which starts once; the worker's cells need no CUDA.
    assert est.launch_s["memory"] == pytest.approx(len(fresh) * (eta.FORKED_PROCESS_S + eta.CUDA_SETUP_S)
                                                   + eta.FORK_SERVER_START_S + eta.PROCESS_START_S)
    monkeypatch.setenv("LMREPORT_FRESH_PROCESS", "exec")  # a new interpreter each
    assert eta.estimate({"memory": cells}, [], "worker").launch_s["memory"] == pytest.approx(
        len(fresh) * (eta.PROCESS_START_S + eta.CUDA_SETUP_S) + eta.PROCESS_START_S)
    monkeypatch.delenv("LMREPORT_FRESH_PROCESS")
    assert any(f"{eta.ASSUMED_GPU} (assumed: no GPU here and no CUDA record in this run)" in n for n in est.notes)
    named = eta.estimate({"memory": cells}, [], "worker", gpu_name="NVIDIA A100-SXM4-80GB")
    assert any("A100" in n and "given" in n for n in named.notes)
    assert named.total_s > est.total_s  # the A100's datasheet peak is lower
