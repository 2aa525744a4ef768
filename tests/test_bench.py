"""The benchmark: cells follow the record contract, metrics are computed from formulas and
measurements, OOM is a row of the table, and every answer renders with and without records."""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch

from lmreport import accounting as acc
from lmreport import peaks, runner, store
from lmreport.experiments import bench
from lmreport.presets import CPU_MODELS, resolve
from lmreport.report.context import SectionView
from lmreport.report.render import jinja_env
from lmreport.sections import get

CPU_PROFILE, ED25 = resolve("cpu", 2025, False)
# A cut-down cpu profile: one tiny context and few steps, so a whole sweep takes seconds.
# Its ablation (0, 1) runs cells for w = 0 only: w = 1 is the grid's own warm-up, so that row is a grid cell.
SMALL = dataclasses.replace(CPU_PROFILE, contexts=(16,), warmup_steps=1, measure_steps=3,
                            warmup_ablation=(0, 1), compile_sizes=(), compile_contexts=())
SMALL_NO_COMPILE = runner.Plan(SMALL, ED25)
CONTRACT_METRICS = {"step_ms", "forward_ms", "tokens_per_s", "achieved_tflops", "mfu", "peak_tflops", "peak_source"}


def test_cells_follow_the_contract():
    plan = runner.Plan(CPU_PROFILE, ED25)
    cells = bench.cells(plan)
    names = [c.name for c in cells]
    assert names[:2] == ["matmul-cpu-fp32", "matmul-cpu-bf16"]  # the CPU peak runs before the cells that use it
    assert len(names) == len(set(names))
    assert "mini-ctx128-forward_backward-bf16" in names and "tiny-ctx64-forward-fp32-warmup0" in names
    assert {n for n in names if n.endswith("-compiled")} == {"tiny-ctx64-forward-fp32-compiled",
                                                          "tiny-ctx64-train-fp32-compiled"}
    for c in cells:
        if c.config["experiment"] == "step":
            assert {"size", "ctx", "batch", "mode", "dtype", "compiled", "warmup", "steps"} <= set(c.config)
            assert c.requires == "any"
    grid = [c for c in cells if c.config["experiment"] == "step" and not c.config["compiled"]
            and "-warmup" not in c.name]
    assert len(grid) == 2 * 2 * 3 * 2  # sizes x contexts x modes x dtypes
    # the cpu profile's ablation is (0, 1, 2, 5) with 2 warm-up steps in the grid: w = 2 is no cell of its own but
    # the grid's fp32 cell at the ablation's (smallest) context, which has the same configuration
    ablation = [c for c in cells if "-warmup" in c.name]
    assert {c.config["warmup"] for c in ablation} == {0, 1, 5} and CPU_PROFILE.warmup_steps == 2
    assert len(ablation) == 2 * 3 * 3  # sizes x modes x warm-up counts
    for c in ablation:
        twin = bench.cell_name(c.config["size"], 64, c.config["mode"], "fp32")
        assert c.config["ctx"] == 64 and next(g for g in grid if g.name == twin).config["warmup"] == 2


@pytest.mark.parametrize("name,year,sizes,contexts", [("handout-2025", 2025, 5, (128, 256, 512, 1024)),
                                                     ("handout-2026", 2026, 5, (512,))])
def test_handout_profiles_cover_the_table(name, year, sizes, contexts):
    prof, ed = resolve(name, None, True)
    cells = bench.cells(runner.Plan(prof, ed))
    grid = [c for c in cells if c.config.get("experiment") == "step" and not c.config["compiled"]
            and "-warmup" not in c.name]
    assert {c.config["size"] for c in grid} == set(ed.study_models) and len(ed.study_models) == sizes
    assert tuple(sorted({c.config["ctx"] for c in grid})) == contexts
    assert {c.config["mode"] for c in grid} == {"forward", "forward_backward", "train"}
    assert all(c.requires == "cuda" and c.config["warmup"] == 5 and c.config["steps"] == 10 for c in grid)
    # C-b: compiled vs eager per size, forward and the training step, at context 512 (both editions)
    compiled = {(c.config["size"], c.config["ctx"], c.config["mode"]) for c in cells if c.config.get("compiled")}
    assert compiled == {(s, 512, m) for s in ed.study_models for m in ("forward", "train")}


def test_step_flops_follow_the_accounting():
    cfg = CPU_MODELS["tiny"]
    f = acc.forward_flops(cfg, 4, 64)
    assert bench.step_flops(cfg, 4, 64, "forward") == (f, "F")
    assert bench.step_flops(cfg, 4, 64, "forward_backward") == (3 * f, "3F")
    assert bench.step_flops(cfg, 4, 64, "train")[0] == 3 * f + 14 * acc.parameter_count(cfg)


@pytest.mark.parametrize("device,expected", [
    ("NVIDIA A100-SXM4-80GB", "A100 (SXM4 / PCIe)"), ("NVIDIA A100 80GB PCIe", "A100 (SXM4 / PCIe)"),
    ("NVIDIA H100 80GB HBM3", "H100 SXM5"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA B200", "B200 (HGX)")])
def test_peak_table_matches_device_names(device, expected):
    assert peaks.lookup(device).name == expected


def test_peak_table_agrees_with_the_handout_and_says_its_source():
    assert peaks.lookup("NVIDIA A100-SXM4-40GB").tflops["fp32"] == ED25.training_time.peak_flops / 1e12
    h100_tf32 = resolve("cpu", 2026, False)[1].training_time.peak_flops / 1e12  # the 2026 handout's 495
    assert peaks.lookup("NVIDIA H100 80GB HBM3").tflops["tf32"] == pytest.approx(h100_tf32, rel=0.002)
    for p in peaks.PEAKS:
        assert set(p.tflops) == set(peaks.PRECISIONS) and ("datasheet" in p.source or "specifications" in p.source)
        # bf16 runs at about twice tf32 on every GPU listed (B200: 2,250 vs 1,100, as its datasheet rounds)
        assert p.tflops["bf16"] == pytest.approx(2 * p.tflops["tf32"], rel=0.03) and p.tflops["tf32"] > p.tflops["fp32"]
    assert peaks.peak_tflops("Some Other GPU", "bf16")[0] is None
    assert peaks.matmul_precision("bf16") == "bf16" and peaks.matmul_precision("fp32", "high") == "tf32"
    assert peaks.matmul_precision("fp32") == "fp32"


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """A real sweep of the cut-down profile; the mini size is made to run out of memory."""
    runs = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setattr(bench, "MATMUL_N", {"cpu": 256})
    mp.setattr(bench, "MATMUL_MIN_RUN_TIME_S", 0.05)
    import lmreport.workloads as workloads
    real = workloads.make_workload

    def make_workload(cfg, *args, **kw):
        if cfg.name == "mini":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return real(cfg, *args, **kw)

    mp.setattr(workloads, "make_workload", make_workload)
    try:
        cells = [c for c in bench.cells(SMALL_NO_COMPILE) if not c.config.get("compiled")]
        res = runner.run_sweep(cells, runs, SMALL_NO_COMPILE.run, progress=False)
    finally:
        mp.undo()
    return res, store.select(store.load_records(runs), 2025, "cpu"), cells


def test_sweep_records_oom_and_goes_on(small_sweep):
    res, records, cells = small_sweep
    by = {r["cell"]: r for r in records}
    assert len(by) == len(cells)
    mini = [r for r in records if r["config"].get("size") == "mini"]
    tiny = [r for r in records if r["config"].get("size") == "tiny"]
    assert mini and all(r["status"] == "oom" and "out of memory" in r["error"] for r in mini)
    assert tiny and all(r["status"] == "ok" for r in tiny)
    assert res.counts["oom"] == len(mini) and res.counts.get("error", 0) == 0


def test_metrics_follow_the_contract_and_the_formulas(small_sweep):
    _, records, _ = small_sweep
    by = {r["cell"]: r for r in records}
    peak = by["matmul-cpu-fp32"]["metrics"]["tflops"]
    r = by["tiny-ctx16-train-fp32"]
    m = r["metrics"]
    assert CONTRACT_METRICS | {"backward_ms", "optimizer_step_ms"} <= set(m)
    assert m["step_ms"]["n"] == 3 and len(m["step_ms"]["samples"]) == 3 and m["first_step_ms"] > 0
    flops = 3 * acc.forward_flops(CPU_MODELS["tiny"], 4, 16) + 14 * acc.parameter_count(CPU_MODELS["tiny"])
    assert m["flops_per_step"] == flops
    assert m["achieved_tflops"] == pytest.approx(flops / (m["step_ms"]["mean"] / 1e3) / 1e12)
    assert m["tokens_per_s"] == pytest.approx(4 * 16 / (m["step_ms"]["mean"] / 1e3))
    assert m["peak_tflops"] == peak and "measured in this run" in m["peak_source"]
    assert m["mfu"] == pytest.approx(m["achieved_tflops"] / peak)
    fwd = by["tiny-ctx16-forward-bf16"]["metrics"]
    assert "backward_ms" not in fwd and fwd["peak_tflops"] == by["matmul-cpu-bf16"]["metrics"]["tflops"]
    assert by["tiny-ctx16-forward-fp32-warmup0"]["metrics"]["first_step_ms"] is None


def test_cpu_mfu_needs_the_matmul_record(tmp_path):
    peak, why = bench.peak_for("cpu", "fp32", tmp_path / "bench" / "some-cell")
    assert peak is None and "no matmul-cpu-fp32 record" in why


def render(records, tmp_path, section="bench", plan=SMALL_NO_COMPILE) -> str:
    s = get(section)
    view = SectionView(s, [r for r in records if r["section"] == section], plan.edition, plan.profile,
                       plan.run, tmp_path / "figures", all_records=tuple(records))
    return jinja_env().get_template(s.template).render(ctx=s.report_module().build(view))


def test_bench_section_renders_tables_oom_rows_and_plots(small_sweep, tmp_path):
    _, records, _ = small_sweep
    md = render(records, tmp_path)
    assert "### forward + backward, fp32" in md and "### full training step, bf16 autocast" in md
    assert "| mini | 16 | **OOM** |" in md and "Cells that did not run: mini at context 16" in md
    assert md.count("Device: CPU") >= 6  # every table carries its provenance line
    assert "## Warm-up (c)" in md and "| tiny | forward | 0 |" in md and "with 0 and 1 warm-up steps" in md
    assert "| tiny | forward | 1 (b) |" in md and "e.g. `tiny-ctx16-forward-fp32`" in md  # w = 1: the grid's cell
    for fig in ("bench-time-vs-context.png", "bench-warmup-ablation.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 1000 and f"figures/{fig}" in md
    assert "No torch.compile records yet" in md  # this cut-down profile has no compile cells


def test_precision_section_takes_bf16_timings_from_bench(small_sweep, tmp_path):
    _, records, _ = small_sweep
    md = render(records, tmp_path, section="precision")
    assert "| tiny | 16 | forward |" in md and "| mini | 16 | forward | **OOM** | **OOM** | – |" in md
    assert "These timings come from a CPU" in md
    assert (tmp_path / "figures" / "precision-bf16-speedup.png").exists()


def test_bench_section_without_records_still_answers_what_it_can(tmp_path):
    md = render([], tmp_path, plan=runner.Plan(CPU_PROFILE, ED25))
    assert "## The benchmarking script (a)" in md and "w = 2 and n = 5" in md
    assert "| H100 SXM5 | 67.0 | 494.5 | 989.5 |" in md
    assert "No benchmark records yet: run `lmreport run bench --profile cpu --edition 2025`" in md


def test_handout_profile_on_a_cpu_machine_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr("lmreport.device.cuda_available", lambda: False)
    prof, ed = resolve("handout-2026", None, True)
    plan = runner.Plan(prof, ed)
    cells = [c for c in bench.cells(plan) if c.config.get("size") in (None, "small")][:6]
    res = runner.run_sweep(cells, tmp_path, plan.run, progress=False)
    assert res.counts == {"skipped": len(cells)}
    records = store.select(store.load_records(tmp_path), 2026, "handout-2026")
    md = render(records, tmp_path, plan=plan)
    assert "Every benchmark cell of this profile was skipped here: needs a CUDA GPU" in md


@pytest.mark.cuda
def test_cuda_cell_uses_the_datasheet_peak(tmp_path):
    prof, ed = resolve("handout-2025", None, True)
    plan = runner.Plan(dataclasses.replace(prof, sizes=("small",), contexts=(128,), measure_steps=2,
                                           warmup_steps=1), ed)
    c = next(c for c in bench.cells(plan) if c.name == "small-ctx128-forward-bf16")
    m = runner.execute_cell(c, tmp_path / "r.json")["metrics"]
    assert m["step_ms"]["mean"] > 0 and m["matmul_precision"] == "bf16"
    if m["peak_tflops"] is not None:  # a GPU of the table: MFU against its bf16 dense datasheet peak
        assert "bf16 dense" in m["peak_source"] and 0 < m["mfu"] < 1


def test_records_from_a_gpu_get_the_gpu_wording(small_sweep, tmp_path):
    """The CUDA branches of both templates render (records relabelled as if a GPU made them)."""
    _, records, _ = small_sweep
    gpu = [{**r, "environment": {**r["environment"], "device": "NVIDIA H100 80GB HBM3", "device_type": "cuda"}}
           for r in records]
    md = render(gpu, tmp_path)
    assert "cuBLAS picks a GEMM algorithm" in md and "Device: NVIDIA H100 80GB HBM3" in md
    assert "On a CPU the spread" not in md
    assert "These timings come from a CPU" not in render(gpu, tmp_path, section="precision")


@pytest.mark.parametrize("flag,value,choices", [("--size", "xl", "mini, tiny"), ("--ctx", "512", "64, 128"),
                                                 ("--mode", "fwd", "forward, forward_backward, train"),
                                                 ("--dtype", "fp8", "bf16, fp32")])
def test_a_filter_that_matches_no_cell_is_one_line_naming_the_flag(flag, value, choices, tmp_path, capsys):
    from lmreport.cli import main
    code = main(["run", "bench", "--profile", "cpu", "--runs-dir", str(tmp_path), "--no-progress", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{flag} {value} matches no cell of bench in profile cpu" in err and choices in err
    assert not any(tmp_path.rglob("*.json"))  # nothing ran, nothing written


def test_mode_phases_restate_the_workload_phases():
    from lmreport.workloads import PHASES
    assert bench.MODE_PHASES == PHASES


@pytest.mark.parametrize("cell,break_it,why", [
    ("tiny-ctx16-forward-fp32", lambda r: r["metrics"].clear(), "metric step_ms is missing"),
    ("tiny-ctx16-train-fp32", lambda r: r["metrics"].__setitem__("optimizer_step_ms", "x"), "is not a timing"),
    ("tiny-ctx16-forward-bf16", lambda r: r["config"].pop("size"), "config lacks size"),
    ("matmul-cpu-fp32", lambda r: r["metrics"].pop("tflops"), "metrics lacks tflops"),
])
def test_a_record_outside_the_contract_is_skipped_with_a_warning_naming_it(small_sweep, tmp_path, cell, break_it, why):
    """Valid JSON that is not a bench record (hand-edited, older version): the rest still renders."""
    import copy
    _, records, _ = small_sweep
    records = copy.deepcopy(records)
    bad = next(r for r in records if r["cell"] == cell)
    break_it(bad)
    with pytest.warns(UserWarning, match=re.escape(f"skipped {bad['_path']}: ") + ".*" + re.escape(why)):
        md = render(records, tmp_path)
    assert "### forward, fp32" in md and "| tiny | 16 |" in md
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # precision reads bench's records without warning again
        render(records, tmp_path, section="precision")


# --- a GPU-shaped record set (no GPU here: records as a handout-2025 run on an H100 would write them) ---

H100 = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "host": "gpu-node", "torch": "2.5.1", "cuda": "12.4"}


def _stats(mean_ms: float, first: float | None = None, n: int = 10) -> dict:
    from lmreport.timing import Stats
    samples = [mean_ms * (1 + 0.01 * ((i % 3) - 1)) for i in range(n)]
    if first is not None:
        samples[0] = first
    return Stats.of(samples).to_metric()


def _step_record(plan, size, ctx, mode, dtype, status="ok", warmup=5, compiled=False, speed=0.4, first=None,
                 ablation=False):
    """One bench record with metrics computed the way run_step computes them (FLOPs from accounting)."""
    cfg = plan.profile.models(plan.edition)[size]
    name = bench.cell_name(size, ctx, mode, dtype, compiled=compiled, warmup=warmup if ablation else None)
    config = {"edition": 2025, "profile": plan.profile.name, "experiment": "step", "device": "cuda", "size": size,
              "ctx": ctx, "batch": 4, "mode": mode, "dtype": dtype, "compiled": compiled, "warmup": warmup, "steps": 10}
    if status != "ok":
        error = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" if status == "oom" else "RuntimeError: boom"
        return store.make_record("bench", name, config, H100, status, error=error)
    flops, formula = bench.step_flops(cfg, 4, ctx, mode)
    peak, source = peaks.peak_tflops(H100["device"], peaks.matmul_precision(dtype))
    step_ms = flops / (speed * peak * 1e12) * 1e3
    metrics = {"step_ms": _stats(step_ms, first), "first_step_ms": 20 * step_ms if warmup else None,
               "tokens_per_s": 4 * ctx / (step_ms / 1e3), "flops_per_step": flops, "flops_formula": formula,
               "achieved_tflops": speed * peak, "peak_tflops": peak, "peak_source": source, "mfu": speed,
               "first_cell_in_process": True}
    share = {"forward": (1.0,), "forward_backward": (1 / 3, 2 / 3), "train": (0.3, 0.6, 0.1)}[mode]
    metrics.update({bench.PHASE_METRICS[p]: _stats(step_ms * f) for p, f in zip(bench.MODE_PHASES[mode], share)})
    return store.make_record("bench", name, config, H100, "ok", metrics=metrics)


@pytest.fixture(scope="module")
def gpu_records():
    prof, ed = resolve("handout-2025", None, True)
    plan = runner.Plan(prof, ed)
    recs = [store.make_record("bench", bench.matmul_cell_name("cuda", dt), {
        "edition": 2025, "profile": prof.name, "experiment": "matmul", "device": "cuda", "dtype": dt, "n": 8192},
        H100, "ok", metrics={"tflops": t, "median_tflops": 0.97 * t, "n": 8192}) for dt, t in (("fp32", 51.0), ("bf16", 702.0))]
    for size in ed.study_models:
        for ctx in ed.bench_contexts:
            for mode in prof.bench_modes:
                for dtype in prof.bench_dtypes:
                    status = "oom" if (size, ctx) == ("2.7B", 1024) and mode != "forward" else \
                        "error" if (size, ctx, mode, dtype) == ("xl", 1024, "forward_backward", "bf16") else "ok"
                    # bf16 pays more the larger the model (matmul share), as on a real GPU
                    speed = 0.35 if dtype == "fp32" else 0.15 + 0.05 * list(ed.study_models).index(size)
                    recs.append(_step_record(plan, size, ctx, mode, dtype, status, speed=speed))
    for mode in prof.bench_modes:  # warm-up ablation for small only: the cold first step is 30x dearer
        for w in bench.ablation_warmups(prof):  # 0, 1, 2: w = 5 is the grid's cell
            recs.append(_step_record(plan, "small", 128, mode, "fp32", warmup=w, first=None if w else 300.0,
                                     ablation=True))
    recs += [_step_record(plan, "small", c.config["ctx"], c.config["mode"], "fp32", warmup=5, compiled=True, speed=0.5)
             for c in bench.cells(plan) if c.config.get("compiled") and c.config["size"] == "small"]
    return plan, recs


def test_gpu_shaped_records_render_with_oom_error_and_missing_cells(gpu_records, tmp_path):
    plan, recs = gpu_records
    md = render(recs, tmp_path, plan=plan)
    assert "| 2.7B | 1,024 | **OOM** |" in md and "| xl | 1,024 | **error** |" in md
    assert "Cells that did not run: " in md and "2.7B at context 1024 (forward + backward, fp32): OOM" in md
    assert "| `matmul-cuda-bf16` | cuda | bf16 | 8,192 | 702 |" in md
    assert "| small | 128 | " in md and "| 35.0% |" in md  # MFU against the H100's datasheet peak
    assert "MFU above 100%" not in md and "On a CPU" not in md
    assert "cuBLAS picks a GEMM algorithm" in md and "Every cell here ran in a fresh process" in md
    assert "Without warm-up the first measured step is clearly dearer than the others in small forward" in md
    assert "Read these rows with care" not in md  # steady steps agree across the warm-up counts
    assert "- Forward: the compiled model is 1.43× as fast as eager (faster)" in md
    # C-b per size at handout-2025's one compile context, forward and the training step
    assert "the optimizer step stays eager), per size at context 512." in " ".join(md.split())
    assert "| small | 512 | forward | " in md and "| small | 512 | full training step | " in md
    assert md.count("Device: NVIDIA H100 80GB HBM3 · host gpu-node · profile handout-2025") >= 8
    # B-c's w = 5 rows are the grid's cells (no ablation cell of that count is planned or recorded)
    assert "with 0, 1, 2 and 5 warm-up steps" in md and "| small | forward | 5 (b) |" in md
    assert "Rows marked (b) are grid cells of (b), `<size>-ctx128-<mode>-fp32` (3 here, e.g. `small-ctx128-forward-fp32`)" in md
    pmd = render(recs, tmp_path, section="precision", plan=plan)
    assert "These timings come from a CPU" not in pmd and "| 2.7B | 1,024 | full training step | **OOM** | **OOM** | – |" in pmd
    assert "the speedup rises with size in 12 of 12" in " ".join(pmd.split())


def test_an_old_ablation_record_of_the_grids_warmup_is_used_only_without_the_grid_cell(gpu_records, tmp_path):
    """Runs made before the ablation left out the grid's warm-up count hold `...-fp32-warmup5` records too."""
    import copy
    plan, recs = gpu_records
    old = _step_record(plan, "small", 128, "forward", "fp32", warmup=5, speed=0.1, ablation=True)  # 3.5x slower
    assert old["cell"] == "small-ctx128-forward-fp32-warmup5"
    grid_ms = next(r for r in recs if r["cell"] == "small-ctx128-forward-fp32")["metrics"]["step_ms"]["mean"]
    md = render(copy.deepcopy(recs) + [old], tmp_path, plan=plan)
    row = next(line for line in md.splitlines() if line.startswith("| small | forward | 5"))
    assert row.startswith("| small | forward | 5 (b) |") and f"{grid_ms:.3g}" in row.replace(",", "")  # the grid's
    assert md.count("| small | forward | 5") == 1
    without_grid = [r for r in copy.deepcopy(recs) if r["cell"] != "small-ctx128-forward-fp32"] + [old]
    md = render(without_grid, tmp_path, plan=plan)
    row = next(line for line in md.splitlines() if line.startswith("| small | forward | 5"))
    assert row.startswith("| small | forward | 5 |") and f"{grid_ms * 3.5:.3g}" in row.replace(",", "")  # the old one
    assert "(2 here, e.g. `small-ctx128-forward_backward-fp32`)" in md


def test_mfu_above_one_is_explained_per_device(gpu_records, small_sweep, tmp_path):
    import copy
    plan, recs = gpu_records
    recs = copy.deepcopy(recs)
    hot = next(r for r in recs if r["cell"] == "large-ctx512-forward-bf16")
    hot["metrics"]["mfu"], hot["metrics"]["achieved_tflops"] = 1.25, 1.25 * hot["metrics"]["peak_tflops"]
    md = " ".join(render(recs, tmp_path, plan=plan).split())
    assert "(!) 1 of " in md and "up to 125.0% (large at context 512, forward, bf16" in md
    assert "Against a datasheet peak that cannot happen" in md
    _, cpu, _ = small_sweep
    cpu = copy.deepcopy(cpu)
    r = next(r for r in cpu if r["cell"] == "tiny-ctx16-forward-fp32")
    r["metrics"]["mfu"] = 50.0  # above whatever this machine measured
    md = " ".join(render(cpu, tmp_path).split())
    assert "up to 5000.0% (tiny at context 16, forward, fp32" in md and "measurement of one square matmul" in md


def test_warmup_rows_whose_steady_steps_disagree_are_flagged(gpu_records, tmp_path):
    import copy
    plan, recs = gpu_records
    recs = copy.deepcopy(recs)
    slow = next(r for r in recs if r["cell"] == "small-ctx128-train-fp32-warmup2")
    slow["metrics"]["step_ms"] = _stats(3 * slow["metrics"]["step_ms"]["mean"])  # a busy moment of the machine
    md = " ".join(render(recs, tmp_path, plan=plan).split())
    assert "Read these rows with care" in md and "in small full training step (3.0×) they differ" in md


def test_the_cold_start_stays_an_ablation_cell_when_the_grid_has_no_warm_up():
    # w = 0 is measured in a clean process (fresh_process); a grid cell of warm-up 0 is not, so it cannot stand in
    prof = dataclasses.replace(resolve("cpu", 2025, False)[0], warmup_steps=0, warmup_ablation=(0, 1, 2))
    assert bench.ablation_warmups(prof) == (0, 1, 2)
    assert bench.ablation_warmups(dataclasses.replace(prof, warmup_steps=2)) == (0, 1)
