"""The memory section: its cells for each edition, rendering with no records, with estimates,
and with measured snapshots side by side; the CUDA recording path (skipped without CUDA)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from lmreport import runner, store
from lmreport.cli import main
from lmreport.experiments import memory as exp
from lmreport.ingest.snapshot_synthetic import synthetic_snapshot
from lmreport.presets import CPU_MODELS, resolve
from lmreport.report.context import SectionView
from lmreport.report.render import jinja_env
from lmreport.report.sections import memory as section

PROFILE, ED25 = resolve("cpu", 2025, False)
_, ED26 = resolve("cpu", 2026, False)


def test_cells_are_the_editions_memory_cells():
    for ed, size, ctxs in ((ED25, "2.7B", (128, 256, 512)), (ED26, "xl", (128, 2048))):
        cells = exp.cells(runner.Plan(PROFILE, ed))
        est = [c for c in cells if c.config["source"] == "estimated"]
        meas = [c for c in cells if c.config["source"] == "measured"]
        assert len(est) == len(meas) == len(ctxs) * 2 * 2
        assert {c.config["size"] for c in est + meas} == {size}
        assert {c.config["ctx"] for c in est} == set(ctxs)
        assert {(c.config["mode"], c.config["dtype"]) for c in est} == {
            (m, d) for m in ("forward", "train") for d in ("fp32", "bf16")}
        assert all(c.requires == "cuda" for c in meas) and all(c.requires == "any" for c in est)
        assert len({c.name for c in cells}) == len(cells)
        assert meas[0].name == f"measured-{size}-ctx{ctxs[0]}-forward-fp32"  # the contract's cell names


def _render(records, ed, tmp_path) -> str:
    view = SectionView(section.SECTION, records, ed, PROFILE, store.run_name(ed.year, PROFILE.name),
                       tmp_path / "figures", all_records=tuple(records))
    return jinja_env().get_template("sections/memory.md.j2").render(ctx=section.build(view))


def test_renders_formulas_and_commands_without_records(tmp_path):
    md = _render([], ED25, tmp_path)
    assert "lmreport run memory --profile handout-2025" in md and "lmreport run memory --profile cpu" in md
    assert "| 512 | train | fp32 | not run |" in md  # the formula column is filled, the rest waits for records
    assert "20.00 MiB" in md  # M-d from the accounting formula


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """A small edition whose memory model is `mini`, run for real (estimates, a CPU check, CUDA skipped)."""
    ed = dataclasses.replace(ED25, memory_model="mini", memory_contexts=(32, 64),
                             study_models={**ED25.study_models, "mini": CPU_MODELS["mini"]})
    plan = runner.Plan(PROFILE, ed)
    cells = [c for c in exp.cells(plan) if c.config["source"] != "cpu_check"
             or (c.config["size"], c.config["mode"], c.config["dtype"]) == ("tiny", "train", "fp32")]
    runs = tmp_path_factory.mktemp("runs")
    # the experiment module looks models up by edition year: give it the small edition's table
    orig = exp.model_config
    exp.model_config = lambda c: {**ed.study_models, **CPU_MODELS}[c.config["size"]]
    try:
        res = runner.run_sweep(cells, runs, plan.run, progress=False)
    finally:
        exp.model_config = orig
    assert res.counts["ok"] == 9 and res.counts["skipped"] == 8
    return ed, runs, plan


def _snapshot_file(tmp_path, name="snap.pickle", **kw):
    obj, truth = synthetic_snapshot(events=600, seed=11, **kw)
    f = tmp_path / name
    f.write_bytes(pickle.dumps(obj))
    return f, truth


def test_estimates_render_with_figures_and_checks(small_runs, tmp_path):
    ed, runs, plan = small_runs
    records = store.select(store.load_records(runs), ed.year, PROFILE.name)
    md = _render(records, ed, tmp_path)
    for fig in ("memory-estimated-train.png", "memory-estimated-forward.png", "memory-peaks.png"):
        assert (tmp_path / "figures" / fig).exists() and f"figures/{fig}" in md
    est = {r["cell"]: r for r in records if r["config"]["source"] == "estimated"}
    peak = est["estimated-mini-ctx64-train-fp32"]["metrics"]["peak_bytes"]
    assert f"| 64 | train | fp32 | {peak / 1024**3:,.2f} |" in md
    assert "Device: CPU" in md and "SKIPPED" in md  # provenance line; CUDA cells recorded as skipped
    assert "How the estimate is checked" in md and "| tiny | 128 | train | fp32 |" in md
    assert "Every estimate is within 5%" in md
    assert "First step against a later step" in md and "(c) What mixed precision changes" in md


def test_ingested_snapshots_show_side_by_side(small_runs, tmp_path, capsys):
    ed, runs, plan = small_runs
    f, truth = _snapshot_file(tmp_path)
    g, _ = _snapshot_file(tmp_path, "other.pickle", devices=2)
    for path, args in ((f, ["--size", "mini", "--ctx", "64", "--mode", "train"]),
                       (g, ["--size", "large", "--ctx", "1024", "--mode", "forward", "--dtype", "bf16"]),
                       (g, ["--size", "2.7B", "--ctx", "128", "--mode", "train", "--first-step"]),
                       (g, ["--size", "2.7B", "--ctx", "128", "--mode", "forward", "--with-grad"])):
        # ingest writes under the plan's run folder; this plan's folder is 2025-cpu
        assert main(["ingest", "memory", str(path), *args, "--profile", "cpu", "--runs-dir", str(runs),
                     "--device-name", "NVIDIA Test GPU"]) == 0
    capsys.readouterr()
    records = store.select(store.load_records(runs), ed.year, PROFILE.name)
    rec = next(r for r in records if r["cell"] == "measured-mini-ctx64-train-fp32")
    assert rec["status"] == "ok" and rec["metrics"]["peak_active_bytes"] == truth.peak_active[0]
    md = _render(records, ed, tmp_path)
    est_peak = next(r for r in records if r["cell"] == "estimated-mini-ctx64-train-fp32")["metrics"]["peak_bytes"]
    ratio = truth.peak_active[0] / est_peak
    assert f"{truth.peak_active[0] / 1024**3:,.2f} | " in md and f"| {ratio:,.3f} |" in md
    assert "Measured (snapshot of train, context 64, fp32)" in md and "`model.py:" in md
    assert "NVIDIA Test GPU" in md  # the measured provenance line names the GPU given at ingest
    assert "## Other snapshots" in md and "large, context 1024, forward, bf16" in md
    assert "memory_viz.html" in md
    assert (tmp_path / "figures" / "memory-measured-train.png").exists()
    for cell in ("measured-2_7B-ctx128-train-fp32-first", "measured-2_7B-ctx128-forward-fp32-grad"):  # no clash at "2."
        assert (tmp_path / "figures" / f"memory-snapshot-{cell}.png").exists() and f"memory-snapshot-{cell}.png" in md


def test_2026_block_and_checkpointing_answers(tmp_path):
    ed = dataclasses.replace(ED26, memory_model="tiny", memory_contexts=(32, 64),
                             study_models={**ED26.study_models, "tiny": CPU_MODELS["tiny"]})
    plan = runner.Plan(PROFILE, ed)
    cells = [c for c in exp.cells(plan) if c.config["source"] in ("block", "checkpointing")]
    assert [c.config.get("checkpoint_every") for c in cells if c.config["source"] == "checkpointing"] == [0, 1, 2]
    orig = exp.model_config
    exp.model_config = lambda c: {**ed.study_models, **CPU_MODELS}[c.config["size"]]
    try:
        res = runner.run_sweep(cells, tmp_path / "runs", plan.run, progress=False)
    finally:
        exp.model_config = orig
    assert res.counts["ok"] == len(cells)
    records = store.select(store.load_records(tmp_path / "runs"), ed.year, PROFILE.name)
    md = _render(records, ed, tmp_path)
    ck = {r["config"]["checkpoint_every"]: r["metrics"]["peak_bytes"] for r in records
          if r["config"]["source"] == "checkpointing"}
    best = min((k for k in ck if k), key=ck.get)
    assert "## (f) One block's memory for backward" in md and "Top five operations" in md
    assert f"checkpointing every {best} block" in md
    assert "| no checkpointing | – |" in md


def test_run_memory_filters_and_skips_cuda_cells(tmp_path, capsys):
    code = main(["run", "memory", "--profile", "cpu", "--runs-dir", str(tmp_path), "--no-progress",
                 "--ctx", "128", "--mode", "forward", "--dtype", "fp32", "--size", "2.7B"])
    err = capsys.readouterr().err
    assert code == 0 and "1 ok, 1 skipped" in err
    rec = json.loads((tmp_path / "2025-cpu" / "memory" / "measured-2.7B-ctx128-forward-fp32.json").read_text())
    assert rec["status"] == "skipped" and "CUDA" in rec["error"]
    est = json.loads((tmp_path / "2025-cpu" / "memory" / "estimated-2.7B-ctx128-forward-fp32.json").read_text())
    assert est["metrics"]["breakdown"]["parameters"] == 4 * 3_406_809_600
    assert est["metrics"]["variants"]["with_grad"]["peak_bytes"] > est["metrics"]["peak_bytes"]


@pytest.mark.cuda
def test_measured_cell_records_a_snapshot_on_cuda(tmp_path):
    """On a GPU: the recording path end to end, and the estimate within 10%. The `small` model, so
    that cuBLAS workspaces (up to 32 MiB per handle, not in the estimate) stay a few percent."""
    from lmreport.estimate.memory import estimate_memory
    plan = runner.Plan(PROFILE, ED25)
    c = runner.cell(plan, "memory", "measured-small-ctx128-train-fp32", requires="cuda", size="small", ctx=128,
                    batch=4, mode="train", dtype="fp32", source="measured", step="steady", grad=None)
    out = exp.run_cell(c, tmp_path / "art")
    m = out["metrics"]
    assert (tmp_path / "art" / out["artifacts"]["snapshot"]).exists()
    assert m["trace_events"] > 0 and m["peak_active_bytes"] <= m["max_allocated_bytes"] * 1.01
    assert {p["name"] for p in m["phases"]} >= {"forward", "backward", "optimizer step"}
    est = estimate_memory(ED25.study_models["small"], 4, 128, "train", "fp32")
    assert est.peak_bytes == pytest.approx(m["peak_active_bytes"], rel=0.10)


def test_bf16_peak_direction_treats_rounding_noise_as_unchanged():
    from lmreport.report.sections.memory import _direction
    assert _direction({"delta": -2.0, "rel": -0.04}) == "lower"
    assert _direction({"delta": 1.0, "rel": 0.001}) == "same"
    assert _direction({"delta": 3.0, "rel": 0.039}) == "higher"


class _FakeCudaMemory:
    """Stands in for torch.cuda.memory on a CPU machine: records the calls the measured cell
    makes, and `_dump_snapshot` writes a synthetic snapshot whose trace falls inside the recorded
    step, with a stale annotation from before recording (an earlier cell in the same process)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.started_us = None

    def _record_memory_history(self, enabled="all", **kw):
        import time
        self.calls.append(("record", enabled, kw.get("max_entries")))
        if enabled is not None:
            self.started_us = time.time_ns() // 1000

    def _dump_snapshot(self, filename):
        import time
        self.calls.append(("dump", filename))
        obj, _ = synthetic_snapshot(events=400, seed=12)
        trace = obj["device_traces"][0]
        now = time.time_ns() // 1000
        for i, e in enumerate(trace):
            e["time_us"] = self.started_us + 1 + (now - self.started_us - 2) * i // len(trace)
        obj["external_annotations"] = [
            {"stage": "START", "name": "forward", "device": 0, "time_us": self.started_us - 10_000_000},
            {"stage": "END", "name": "forward", "device": 0, "time_us": self.started_us - 9_000_000}]
        with open(filename, "wb") as f:
            pickle.dump(obj, f)


@pytest.fixture
def fake_cuda(monkeypatch):
    import torch
    from lmreport import workloads
    fake = _FakeCudaMemory()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 123)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a, **k: 456)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", fake._record_memory_history)
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", fake._dump_snapshot)
    real = workloads.make_workload
    monkeypatch.setattr(workloads, "make_workload", lambda cfg, b, t, mode, device, dtype, **kw: real(
        CPU_MODELS["tiny"], 1, 16, mode, device="cpu", dtype=dtype, **kw))
    return fake


def _measured_cell(mode="train"):
    plan = runner.Plan(PROFILE, ED25)
    return runner.cell(plan, "memory", f"measured-tiny-ctx16-{mode}-fp32", requires="cuda", size="tiny", ctx=16,
                       batch=1, mode=mode, dtype="fp32", source="measured", step="steady", grad=None)


def test_measured_cell_plumbing_with_cuda_mocked(fake_cuda, tmp_path):
    """The CUDA recording path, run on CPU with torch.cuda's memory calls stubbed: the calls come in
    the documented order, the snapshot lands in the artifacts, the step's phases are the cell's own
    (the stale annotation from before recording is dropped) and the record is JSON."""
    out = exp.run_cell(_measured_cell(), tmp_path / "art")
    assert [c[0] for c in fake_cuda.calls] == ["record", "dump", "record"]
    assert fake_cuda.calls[0] == ("record", "all", exp.MAX_ENTRIES) and fake_cuda.calls[2][1] is None
    assert (tmp_path / "art" / out["artifacts"]["snapshot"]).exists()
    m = out["metrics"]
    assert [p["name"] for p in m["phases"]] == ["forward", "backward", "optimizer step"]
    assert all(p["start_ms"] >= 0 for p in m["phases"])
    assert m["max_allocated_bytes"] == 123 and m["max_reserved_bytes"] == 456 and m["trace_events"] > 0
    json.dumps(out)


def test_measured_cell_times_its_parts(fake_cuda, tmp_path, monkeypatch):
    """Where a measured cell's time goes: each part in seconds in the metrics; a slow `_dump_snapshot` (symbolising
    stacks on a GPU machine) lands in dump_s, not in the step or the post-processing."""
    import time

    import torch
    slow_s = 0.5  # far above a tiny model's step on a CPU, and above its post-processing
    real_dump = torch.cuda.memory._dump_snapshot

    def slow_dump(filename):
        time.sleep(slow_s)
        real_dump(filename)
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", slow_dump)
    t0 = time.perf_counter()
    m = exp.run_cell(_measured_cell(), tmp_path / "art")["metrics"]
    wall_s = time.perf_counter() - t0
    parts = ("build_s", "warmup_s", "step_s", "dump_s", "load_s", "summarize_s", "viewer_s", "postprocess_s")
    assert all(isinstance(m[p], float) and m[p] >= 0 for p in parts)
    assert m["dump_s"] >= slow_s and m["step_s"] < slow_s and m["postprocess_s"] < slow_s
    assert m["load_s"] + m["summarize_s"] + m["viewer_s"] <= m["postprocess_s"]  # its parts, inside it
    assert sum(m[p] for p in ("build_s", "warmup_s", "step_s", "dump_s", "postprocess_s")) <= wall_s


def test_measured_cell_out_of_memory_keeps_the_oom_and_stops_recording(fake_cuda, tmp_path, monkeypatch):
    import torch
    from lmreport import workloads

    real_step = workloads.Workload.step

    def oom_when_recorded(self, phase=None):
        if fake_cuda.calls:  # warm-up runs, the recorded step runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_step(self)

    def dump_fails(filename):
        fake_cuda.calls.append(("dump", filename))
        raise OSError("disk full")
    monkeypatch.setattr(workloads.Workload, "step", oom_when_recorded)
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", dump_fails)
    with pytest.raises(torch.OutOfMemoryError) as e:  # not the failed dump's OSError
        exp.run_cell(_measured_cell(), tmp_path / "art")
    assert runner.is_out_of_memory(e.value)  # so the runner records the cell as `oom`
    assert [c[0] for c in fake_cuda.calls] == ["record", "dump", "record"]  # a dump was tried
    assert fake_cuda.calls[-1] == ("record", None, None)  # recording stopped


H100 = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "host": "gpu-node-07", "torch": "2.5.1",
        "cuda": "12.4"}


def _gpu_record(ed, cell, status, seed=0, **config):
    """A record as `lmreport run memory --profile handout-YYYY` writes it on an H100 (faked from a
    synthetic snapshot's replay, which is what the measured cell stores)."""
    from lmreport.ingest.snapshot import record_metrics, summarize
    cfg = {"edition": ed.year, "profile": PROFILE.name, "batch": 4, "source": "measured", **config}
    metrics, error = None, None
    if status == "ok":
        obj, _ = synthetic_snapshot(events=500, seed=seed)
        f = pytest.importorskip("tempfile").NamedTemporaryFile(suffix=".pickle", delete=False)
        f.write(pickle.dumps(obj))
        f.close()
        metrics = record_metrics(summarize(f.name)) | {"max_allocated_bytes": 1, "max_reserved_bytes": 1}
    elif status == "oom":
        error = "OutOfMemoryError: CUDA out of memory. Tried to allocate 1.25 GiB"
    else:
        error = "RuntimeError: CUBLAS_STATUS_EXECUTION_FAILED"
    return store.make_record("memory", cell, cfg, H100, status, metrics=metrics, error=error)


def test_gpu_shaped_partial_records_render_and_say_what_is_missing(tmp_path):
    """Only some measured cells ok, one OOM, one error, two snapshots of one configuration, no
    estimates: the section renders, marks OOM/ERROR, names the GPU, and says what to run."""
    recs = [
        _gpu_record(ED25, "measured-2.7B-ctx128-train-fp32", "ok", 1, size="2.7B", ctx=128, mode="train", dtype="fp32"),
        _gpu_record(ED25, "measured-2.7B-ctx128-train-bf16", "ok", 2, size="2.7B", ctx=128, mode="train", dtype="bf16"),
        _gpu_record(ED25, "measured-2.7B-ctx128-train-fp32-other", "ok", 3, size="2.7B", ctx=128, mode="train",
                    dtype="fp32", ingested=True),
        _gpu_record(ED25, "measured-2.7B-ctx512-train-fp32", "oom", size="2.7B", ctx=512, mode="train", dtype="fp32"),
        _gpu_record(ED25, "measured-2.7B-ctx256-forward-bf16", "error", size="2.7B", ctx=256, mode="forward",
                    dtype="bf16"),
    ]
    recs[0]["metrics"]["peak_phase"] = "backward"  # as the cell's phase spans or torch's annotations say
    md = _render(recs, ED25, tmp_path)
    main_peak = recs[0]["metrics"]["peak_active_bytes"]
    # the run's cell, not the extra snapshot of the same configuration; when the peak happened
    assert f"| 128 | train | fp32 | not run | – | {main_peak / 1024**3:,.2f} (in backward) |" in md
    assert "| 512 | train | fp32 | not run | – | OOM |" in md and "| 256 | forward | bf16 | not run | – | ERROR |" in md
    assert "Device: NVIDIA H100 80GB HBM3 · host gpu-node-07" in md and "Device: CPU" not in md
    assert "*No estimates yet: run `lmreport run memory --profile cpu --edition 2025`" in md
    assert "## Other snapshots" in md and "measured-2.7B-ctx128-train-fp32-other" in md
    assert (tmp_path / "figures" / "memory-measured-train.png").exists()
    assert "Measured (snapshot of train, context 128, fp32)" in md  # (e) from the chosen snapshot
    assert "Measured only (no estimate of these cells yet)" in md and "*The estimated comparison needs" in md


def test_estimates_next_to_partial_gpu_measurements(small_runs, tmp_path):
    ed, runs, plan = small_runs
    records = store.select(store.load_records(runs), ed.year, PROFILE.name)
    # the fixture's runs folder is shared with the ingest test above: keep its estimates and CPU checks only
    records = [r for r in records if r["config"]["source"] != "measured"]
    records += [_gpu_record(ed, "measured-mini-ctx64-train-fp32", "ok", 5, size="mini", ctx=64, mode="train",
                            dtype="fp32"),
                _gpu_record(ed, "measured-mini-ctx64-train-bf16", "oom", size="mini", ctx=64, mode="train",
                            dtype="bf16")]
    md = _render(records, ed, tmp_path)
    est = next(r for r in records if r["cell"] == "estimated-mini-ctx64-train-fp32")["metrics"]["peak_bytes"]
    meas = records[-2]["metrics"]["peak_active_bytes"]
    assert f"| {meas / est:,.3f} |" in md  # measured / estimated, side by side
    assert "| 64 | train | bf16 |" in md and "| OOM |" in md
    assert "Measurements: Device: NVIDIA H100 80GB HBM3" in md and "Estimates: Device: CPU" in md
    mixed = md.split("## (c) What mixed precision changes")[1].split("## (d)")[0]
    assert "| 64 | train |" in mixed and mixed.count("| – |") >= 1  # no measured change: bf16 ran out of memory


def test_mixed_precision_sentences_follow_the_data(small_runs, tmp_path):
    """M-c's conclusion is computed: make bf16 lower the training peak at one context (as it would for
    a model whose activations dominate) and the text must say so, with the state's share of the peak."""
    import copy
    ed, runs, plan = small_runs
    records = [r for r in store.select(store.load_records(runs), ed.year, PROFILE.name)
               if r["config"]["source"] != "measured"]
    md = _render(records, ed, tmp_path)
    assert "does not lower the memory a training step needs at any context here" in md
    fp32 = next(r for r in records if r["cell"] == "estimated-mini-ctx64-train-fp32")["metrics"]
    from lmreport import accounting as acc
    share = 16 * acc.parameter_count(CPU_MODELS["mini"]) / fp32["peak_bytes"]  # weights, grads, m, v: 16 B each
    assert f"make up {share:.1%} of the fp32\ntraining peak at context 32" not in md  # the first context comes first
    assert f"{share:.1%} at context 64" in md
    bf16 = next(r for r in records if r["cell"] == "estimated-mini-ctx64-train-bf16")
    lowered = copy.deepcopy(bf16)
    lowered["metrics"]["peak_bytes"] = int(fp32["peak_bytes"] * 0.8)
    records = [lowered if r is bf16 else r for r in records]
    md = _render(records, ed, tmp_path)
    assert "lower with bf16 at context 64" in md and "bf16\nautocast lowers the training peak at context\n64" in md
    assert "Training at context 64: bf16 autocast lowers the peak by" in md
    assert "does not lower the memory" not in md


def test_a_record_missing_what_the_section_reads_is_left_out_with_a_warning(tmp_path):
    good = _gpu_record(ED25, "measured-2.7B-ctx128-train-fp32", "ok", 1, size="2.7B", ctx=128, mode="train",
                       dtype="fp32")
    old = _gpu_record(ED25, "measured-2.7B-ctx256-train-fp32", "ok", 2, size="2.7B", ctx=256, mode="train",
                      dtype="fp32")
    del old["metrics"]["timeline"]  # e.g. written by an older version
    noconf = _gpu_record(ED25, "measured-2.7B-ctx512-train-fp32", "oom", size="2.7B", ctx=512, mode="train",
                         dtype="fp32")
    del noconf["config"]["ctx"]
    with pytest.warns(UserWarning, match=r"measured-2.7B-ctx256-train-fp32 left out \(no metrics.timeline\)") as caught:
        md = _render([good, old, noconf], ED25, tmp_path)
    # one warning per record left out, however many tables would have read it
    left_out = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(left_out) == 2 and sum("ctx256" in w for w in left_out) == 1
    assert f"{good['metrics']['peak_active_bytes'] / 1024**3:,.2f}" in md
    assert "| 256 | train | fp32 | not run | – | not run |" in md and "| 512 | train | fp32 | not run | – | not run |" in md
