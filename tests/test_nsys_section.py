"""The nsys section: answers (a)-(e) computed from ingested synthetic profiles, and without any.

The synthetic profiles (tests/test_nsys_synthetic.py) have hand-checkable totals: the forward
pass of "tiny" is 79.5 ms of kernels over 5 passes, 40 ms of it in ampere_sgemm_128x64_tn run
70 times; softmax takes 200 µs per call, the Q Kᵀ matmul 300 µs, the A V matmul 300 µs.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lmreport import accounting as acc
from lmreport import runner, store
from lmreport.ingest import nsys as ingest
from lmreport.presets import CPU_MODELS, resolve
from lmreport.report.context import SectionView
from lmreport.report.render import jinja_env
from lmreport.report.sections import nsys as section
from lmreport.sections import get
from test_nsys_synthetic import FORWARD_TOTAL, SGEMM_DGRAD, SGEMM_TN, write_profile

PROFILE, ED = resolve("cpu", 2025, False)
PLAN = runner.Plan(PROFILE, ED)
DEVICE = "NVIDIA A100-SXM4-80GB"


def ingest_synthetic(tmp_path: Path, runs: Path) -> None:
    for mode in ("forward", "train"):
        files = write_profile(tmp_path / mode, mode)
        args = types.SimpleNamespace(size="tiny", ctx=64, mode=mode, dtype="fp32", batch=None, steps=None,
                                     device=DEVICE, host="gpu1", run=None, runs_dir=runs)
        ingest.ingest_files(files, args, PLAN)


def bench_record(runs: Path) -> None:
    stats = {"mean": 15.0, "std": 0.3, "median": 15.0, "min": 14.6, "max": 15.5, "n": 10, "samples": []}
    rec = store.make_record("bench", "tiny-ctx64-forward-fp32",
                            {"edition": 2025, "profile": "cpu", "size": "tiny", "ctx": 64, "batch": 4, "mode": "forward",
                             "dtype": "fp32", "compiled": False, "warmup": 2, "steps": 5},
                            {"device": DEVICE, "host": "gpu1"}, "ok", metrics={"forward_ms": stats, "step_ms": stats})
    store.write_record(store.record_path(runs, PLAN.run, "bench", rec["cell"]), rec)


def view_of(runs: Path, figures: Path) -> SectionView:
    records = store.select(store.load_records(runs), ED.year, PROFILE.name)
    return SectionView(get("nsys"), [r for r in records if r["section"] == "nsys"], ED, PROFILE, PLAN.run, figures,
                       all_records=tuple(records))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nsys")
    runs = tmp / "runs"
    ingest_synthetic(tmp, runs)
    bench_record(runs)
    ctx = section.build(view_of(runs, tmp / "figures"))
    return ctx, jinja_env().get_template("sections/nsys.md.j2").render(ctx=ctx), tmp


def test_a_forward_time_next_to_the_benchmark(built):
    ctx, md, _ = built
    fwd = next(r for r in ctx["forward_rows"] if r["mode"] == "forward")
    assert fwd["nvtx_ms"] == pytest.approx(16.8) and fwd["nvtx_n"] == 5
    assert fwd["kernel_ms"] == pytest.approx(FORWARD_TOTAL / 5 / 1e6)
    assert fwd["bench_ms"] == 15.0 and fwd["diff"] == pytest.approx(16.8 / 15.0 - 1)
    assert "| tiny | 64 | forward | 16.80 | 5 | 15.90 | – | 15.00 ± 0.30 | +12.0% |" in md
    assert "Device: NVIDIA A100-SXM4-80GB · host gpu1 · profile cpu" in md


def test_b_top_forward_kernel_and_forward_backward(built):
    ctx, md, _ = built
    k = ctx["kernel_rows"][0]
    top = k["forward"]["top"]
    assert top["name"] == SGEMM_TN and top["share"] == pytest.approx(40 / 79.5) and top["per_pass"] == 14
    assert k["matmul_calls"] == 9 * CPU_MODELS["tiny"].num_layers + 1
    fb = k["forward_backward"]
    assert fb["top"]["name"] == SGEMM_DGRAD and k["same_top"] is False
    # forward + backward = the step without the kernels of the range "optimizer step" (13 ms)
    assert fb["total_ns"] == k["step"]["total_ns"] - 13_000_000
    assert f"| tiny | 64 | `{SGEMM_TN}` | matmul | 50.3% | 14.0 | 19 | `{SGEMM_DGRAD}` |" in md


def test_c_noticeable_non_matmul_kernels(built):
    ctx, md, _ = built
    names = [(n["name"], round(100 * n["share"], 1)) for n in ctx["kernel_rows"][0]["forward"]["non_matmul"]]
    assert names == [("vectorized_elementwise_kernel<MulFunctor>", 6.3), ("vectorized_elementwise_kernel<CUDAFunctor_add>", 3.1),
                     ("softmax_warp_forward", 2.5), ("reduce_kernel<MeanOps>", 1.9),
                     ("elementwise_kernel<direct_copy_kernel_cuda>", 1.3), ("elementwise_kernel<masked_fill_kernel>", 1.3)]
    assert "DivFunctor" not in md.split("## (c)")[1].split("## (d)")[0]  # 0.6%: under the 1% bar


def test_d_training_step(built):
    ctx, md, _ = built
    k = ctx["kernel_rows"][0]
    assert k["forward"]["matmul_share"] == pytest.approx(66 / 79.5)
    step_total = k["step"]["total_ns"]
    assert k["step"]["matmul_share"] == pytest.approx((66_000_000 + 95_000_000) / step_total)
    new = {n["name"] for n in k["new_in_train"]}
    assert {SGEMM_DGRAD, "softmax_warp_backward", "vectorized_elementwise_kernel<sqrt_kernel_cuda>"} <= new
    assert SGEMM_TN not in new and k["change"]["direction"] == "stays about the same"
    assert "matmul share\nstays about the same (83.0% → 83.1%)" in md


def test_e_softmax_against_the_attention_matmuls(built):
    ctx, md, _ = built
    a = ctx["attention_rows"][0]
    r = a["ranges"]
    assert (r["computing attention scores"]["per_call_us"], r["computing softmax"]["per_call_us"],
            r["final matmul"]["per_call_us"]) == (450, 200, 300)
    assert a["scores_matmul_to_softmax"] == 1.5 and a["flops"]["ratio"] == pytest.approx(2 * 32 / 5)
    assert a["rate_ratio"] == pytest.approx(12.8 / 1.5)
    assert "softmax runs 8.53× fewer FLOPs per second" in md


def test_flop_ratio_is_there_for_every_size(built):
    ctx, md, _ = built
    ratios = {f["size"]: f["ratio"] for f in ctx["attention_flops"]}
    for size, cfg in ED.study_models.items():
        assert ratios[size] == pytest.approx(2 * cfg.d_head / acc.SOFTMAX_FLOPS_PER_SCORE)
    assert "| 2.7B | 80 |" in md and "| 32.0 |" in md


def test_class_shares_and_plot(built):
    ctx, md, tmp = built
    for row in ctx["class_rows"]:
        assert sum(row["shares"].values()) == pytest.approx(1.0)
    assert [r["scope"] for r in ctx["class_rows"]] == ["forward pass", "training step"]
    assert ctx["figure"] == "figures/nsys-kernel-classes.png" and (tmp / "figures" / "nsys-kernel-classes.png").exists()
    assert "![GPU kernel time by class per profile](figures/nsys-kernel-classes.png)" in md


def test_without_records_the_section_says_how_and_shows_the_formulas(tmp_path):
    ctx = section.build(view_of(tmp_path / "none", tmp_path / "figures"))
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=ctx)
    assert not ctx["has_data"] and "No profiles yet" in md
    assert "lmreport run nsys --profile handout-2025" in md
    # a CPU run makes torch.profiler profiles (of CPU operators): the section says so, not "needs a GPU"
    assert "`lmreport run nsys --profile cpu --edition 2025` profiles the CPU operators with torch.profiler" in md
    assert "lmreport ingest nsys stats_*.csv --size small --ctx 512 --mode forward" in md
    assert "--nvtx-capture=step" in md and "| small | 64 |" in md and "| 25.6 |" in md
    assert "small 109, medium 217" in md


def test_skipped_cells_are_one_line(tmp_path):
    """A GPU profile's cells on a CPU machine: skipped, one line for all of them, with the command for a GPU."""
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine the cells may run")
    from lmreport.experiments.nsys import cells
    prof, ed = resolve("handout-2025", 2025, False)
    plan = runner.Plan(prof, ed)
    runs = tmp_path / "runs"
    res = runner.run_sweep(runner.filter_cells(cells(plan), {"size": ["small", "medium"]}), runs, plan.run,
                           progress=False)
    assert res.counts["skipped"] == 16
    records = store.select(store.load_records(runs), ed.year, prof.name)
    view = SectionView(get("nsys"), records, ed, prof, plan.run, tmp_path / "f", all_records=tuple(records))
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=section.build(view))
    assert md.count("cells skipped on this machine") == 1 and "*16 cells skipped on this machine: needs a CUDA GPU" in md
    assert "what the formulas give.\n\n*16 cells skipped" in md  # its own paragraph, not glued to the one before
    assert "on such a machine: `lmreport run nsys --profile handout-2025`.*" in md


class _CountSoftmax(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._softmax.default:
            self.elements += args[0].numel()
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("size, batch, ctx", [("tiny", 2, 16), ("mini", 1, 24)])
def test_softmax_flops_count_the_score_elements_the_model_softmaxes(size, batch, ctx):
    from lmreport.model import build_model
    cfg = CPU_MODELS[size]
    with torch.device("meta"):
        model = build_model(cfg, context_length=ctx)
        ids = torch.zeros(batch, ctx, dtype=torch.long)
    counter = _CountSoftmax()
    with torch.no_grad(), counter:
        model(ids)
    assert acc.attention_softmax_flops(cfg, batch, ctx) == acc.SOFTMAX_FLOPS_PER_SCORE * counter.elements


def test_foreign_exports_render_with_what_they_have(samples_dir, tmp_path):
    runs = tmp_path / "runs"
    nsys_dir = samples_dir / "nsys"
    cases = [([nsys_dir / "ayush-os_nsight-systems-deep-dive__README_stats_table.md"], "small", 128, "forward", 1, None),
             ([nsys_dir / "gujialiang123_MOEresearch__AT_OFF_CG_OFF_cuda_gpu_kern_sum.csv",
               nsys_dir / "gujialiang123_MOEresearch__AT_OFF_CG_OFF_cuda_api_sum.csv"], "medium", 256, "train", None,
              "NVIDIA H100 80GB HBM3")]
    for files, size, ctx, mode, run, device in cases:
        args = types.SimpleNamespace(size=size, ctx=ctx, mode=mode, dtype="fp32", batch=None, steps=None, device=device,
                                     host=None, run=run, runs_dir=runs)
        ingest.ingest_files(files, args, PLAN)
    ctx = section.build(view_of(runs, tmp_path / "figures"))
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=ctx)
    assert ctx["has_data"] and ctx["forward_rows"] == []  # no NVTX "forward" range, no step count
    assert "**Mixed devices:** NVIDIA H100 80GB HBM3; unknown GPU (ingested nsys export)" in md
    assert "| small | 128 | `vectorAdd` | elementwise | 100.0% | – |" in md
    train = next(k for k in ctx["kernel_rows"] if k["step"])
    assert train["step"]["top"]["name"] == "cutlass::device_kernel<GemmUniversal>" and train["forward"] is None
    assert "no time per forward pass to compare" in md


def test_out_of_memory_cells_are_shown_with_the_longest_context_that_fits(tmp_path):
    runs = tmp_path / "runs"
    ingest_synthetic(tmp_path, runs)
    rec = store.make_record("nsys", "tiny-ctx128-train-fp32", {"edition": 2025, "profile": "cpu", "size": "tiny",
                                                              "ctx": 128, "mode": "train", "dtype": "fp32"},
                            {"device": DEVICE, "host": "gpu1"}, "oom",
                            error="RuntimeError: CUDA out of memory in the profiled worker: Tried to allocate 8.00 GiB")
    store.write_record(store.record_path(runs, PLAN.run, "nsys", rec["cell"]), rec)
    ctx = section.build(view_of(runs, tmp_path / "figures"))
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=ctx)
    assert ctx["oom_limits"] == [{"size": "tiny", "mode": "train", "longest_ok": 64, "first_oom": 128}]
    assert "| tiny | 128 | train | **OOM** |" in md and "the longest context that fits is 64; 128 runs out of memory" in md


H100 = "NVIDIA H100 80GB HBM3"


def test_gpu_shaped_partial_records_render_and_say_what_is_missing(tmp_path):
    """handout-2025 records as a GPU run leaves them: some ok, one OOM, one error, one skipped, one foreign."""
    prof, ed = resolve("handout-2025", 2025, False)
    plan = runner.Plan(prof, ed)
    runs = tmp_path / "runs"
    for size, ctx, mode in [("small", 128, "forward"), ("small", 128, "train"), ("medium", 256, "forward")]:
        files = write_profile(tmp_path / f"{size}-{ctx}-{mode}", mode)
        args = types.SimpleNamespace(size=size, ctx=ctx, mode=mode, dtype="fp32", batch=None, steps=None, device=H100,
                                     host="h100-node", run=None, runs_dir=runs)
        ingest.ingest_files(files, args, plan)
    env = {"device": H100, "host": "h100-node", "device_type": "cuda"}

    def record(cell, status, error=None, metrics=None, **config):
        r = store.make_record("nsys", cell, {"edition": 2025, "profile": plan.profile.name, **config}, env, status,
                              error=error, metrics=metrics)
        store.write_record(store.record_path(runs, plan.run, "nsys", cell), r)

    xl = {"size": "xl", "mode": "train", "dtype": "fp32"}
    record("xl-ctx1024-train-fp32", "oom", "RuntimeError: CUDA out of memory in the profiled worker", ctx=1024, **xl)
    record("xl-ctx512-train-fp32", "error", "RuntimeError: nsys stats wrote no kernel summary (log: x)", ctx=512, **xl)
    record("large-ctx128-forward-fp32", "skipped", "needs Nsight Systems (`nsys` on PATH)", size="large", ctx=128,
           mode="forward", dtype="fp32")
    env = {"device": None, "host": "h100-node", "device_type": "cuda"}  # a worker that died before saying its GPU
    record("large-ctx1024-train-fp32", "error", "worker exited with -9 before writing a record; log: x", size="large",
           ctx=1024, mode="train", dtype="fp32")
    record("hand-made", "ok", metrics={"kernels": [{"name": "k"}]}, size="small", ctx=512, mode="forward")
    records = store.select(store.load_records(runs), ed.year, prof.name)
    view = SectionView(get("nsys"), [r for r in records if r["section"] == "nsys"], ed, prof, plan.run,
                       tmp_path / "figures", all_records=tuple(records))
    with pytest.warns(UserWarning, match="hand-made.json: not a profiling record this section can read"):
        ctx = section.build(view)
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=ctx)
    assert "**OOM** (1 cell: xl-ctx1024-train-fp32)" in md and "**ERROR** (1 cell: xl-ctx512-train-fp32)" in md
    assert "*1 cell skipped on this machine: needs Nsight Systems" in md
    assert ("- xl, train: context 1024 runs out of memory, and no other context of xl has a profile in this mode yet."
            in md) and "none of those tried" not in md
    assert "| xl | 1024 | train | **OOM** |" in md and "| xl | 512 | train | **error** |" in md
    assert "hand-made" not in md and "Device: NVIDIA H100 80GB HBM3 · host h100-node · profile handout-2025" in md
    assert "| large | 1024 | train | **error** |" in md and "Mixed devices" not in md
    assert "per forward pass (source:\nnvtx_kern_sum" in md  # a space before the bracket
    assert [k["size"] for k in ctx["kernel_rows"]] == ["small", "medium"] and ctx["kernel_rows"][1]["step"] is None
    assert "One forward pass runs 9 L + 1 matrix multiplies" in md  # counted from accounting.forward_matmuls
    assert "small 109, medium 217, large 325, xl 433, 2.7B 289" in md  # 9 L + 1 for L = 12, 24, 36, 48, 32


def test_forward_kernels_of_a_training_step_say_they_include_the_loss(built):
    _, _, tmp = built
    records = {r["cell"]: r for r in store.load_records(tmp / "runs")}
    train, fwd = records["tiny-ctx64-train-fp32"], records["tiny-ctx64-forward-fp32"]
    assert section.forward_kernels(train)["source"] == "nvtx_kern_sum, range “forward” of the training step, the loss included"
    assert section.forward_kernels(fwd)["source"] == "nvtx_kern_sum, range “forward”"
    names = {k["name"] for k in section.forward_kernels(train)["kernels"]}
    assert "cunn_SoftMaxForward" in names and "cunn_SoftMaxForward" not in {k["name"] for k in section.forward_kernels(fwd)["kernels"]}


def test_an_ingested_profile_with_its_warm_up_is_marked(tmp_path):
    from test_nsys_synthetic import NVTX_HEADER, forward_nvtx, nvtx_rows, to_csv
    files = write_profile(tmp_path / "p", "forward")
    nvtx = next(f for f in files if f.name == "stats_nvtx_sum.csv")
    nvtx.write_text(to_csv(NVTX_HEADER, nvtx_rows({**forward_nvtx(), "warmup": (50_000_000, 1)})))
    args = types.SimpleNamespace(size="tiny", ctx=64, mode="forward", dtype="fp32", batch=None, steps=None,
                                 device=DEVICE, host="gpu1", run=None, runs_dir=tmp_path / "runs")
    ingest.ingest_files(files, args, PLAN)
    ctx = section.build(view_of(tmp_path / "runs", tmp_path / "figures"))
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=ctx)
    assert ctx["with_warmup"] == ["tiny-ctx64-forward-fp32"]
    assert "ingested profiles with a “warmup” range (tiny-ctx64-forward-fp32)\ncount its kernels" in md
    assert "| tiny | 64 | forward | ingested | 5 | 15.9 (with warm-up) |" in md
    # the forward pass itself comes from the range "forward": no warm-up in it
    assert "| tiny | 64 | forward pass | 15.9 |" in md


def test_lmreport_profiles_say_they_hold_no_warm_up(built):
    _, md, _ = built
    assert "Both leave the warm-up\nout (Nsight Systems starts collecting at the first measured step" in md
    assert "torch.profiler's schedule records only the measured steps" in md
