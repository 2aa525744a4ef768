"""Attention section: the memory formulas against what autograd saves and what is live, the
sweep through the real cell function on a tiny grid, OOM as a record, and the rendered section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmreport import accounting as acc
from lmreport import runner, store
from lmreport.experiments import attention as A
from lmreport.model import scaled_dot_product_attention
from lmreport.presets import resolve
from lmreport.report import render as render_mod
from lmreport.report.context import SectionView
from lmreport.report.sections import attention as report
from lmreport.saved_tensors import measure_saved_bytes
from lmreport.sections import get

PROFILE, ED25 = resolve("cpu", 2025, False)
PLAN = runner.Plan(PROFILE, ED25)
# DivBackward0 keeps the scalar 1/sqrt(d) as a 0-dim float64 tensor: the formula leaves out these 8 bytes.
SCALAR_BYTES = 8


@pytest.mark.parametrize("batch,seq_len,d", [(8, 64, 16), (2, 100, 24), (3, 16, 128), (8, 4096, 64), (8, 16384, 128)])
def test_eager_formulas_equal_autograd_and_live_bytes_on_meta(batch, seq_len, d):
    m = A.estimate({"batch": batch, "seq_len": seq_len, "d": d})["metrics"]
    f = acc.attention_memory_bytes(batch, seq_len, d)  # CUDA's kernels
    cpu = acc.attention_memory_bytes(batch, seq_len, d, device="cpu")
    assert 0 <= m["saved_bytes"] - f["saved"] <= SCALAR_BYTES
    assert m["saved_input_bytes"] == 3 * 4 * batch * seq_len * d  # Q, K, V themselves
    assert m["live_before_forward_bytes"] == f["inputs"]
    assert 0 <= m["live_before_backward_bytes"] - f["in_use_before_backward"] <= SCALAR_BYTES
    # What the dispatcher sees is the CPU's accounting; with CUDA's kernel temporary, the CUDA formula.
    assert 0 <= m["live_peak_bytes"] - cpu["backward_peak"] <= SCALAR_BYTES
    assert 0 <= m["live_peak_cuda_bytes"] - f["backward_peak"] <= SCALAR_BYTES
    assert m["kernel_temporaries"] == ["aten::_softmax_backward_data"]
    assert set(m["saved_bytes_by_node"]) >= {"SoftmaxBackward0", "MaskedFillBackward0"}


def test_cuda_formula_has_softmax_backwards_product_as_its_one_extra_matrix():
    """The CUDA term and the tracker's correction are the same tensor: one B x T x T fp32 matrix, shaped like
    the gradient softmax's backward receives (accounting.CUDA_KERNEL_TEMPORARIES)."""
    batch, seq_len, d = 8, 1024, 64
    cuda = dict((t.name, n) for t, n in acc.attention_term_bytes(batch, seq_len, d))
    cpu = dict((t.name, n) for t, n in acc.attention_term_bytes(batch, seq_len, d, device="cpu"))
    assert set(cuda) - set(cpu) == {acc.SOFTMAX_BACKWARD_PRODUCT}
    assert cuda[acc.SOFTMAX_BACKWARD_PRODUCT] == 4 * batch * seq_len**2 == cuda["gradient of P"]
    (temporary,) = acc.kernel_temporaries("cuda").values()
    assert temporary.term == acc.SOFTMAX_BACKWARD_PRODUCT and acc.kernel_temporaries("cpu") == {}
    f, c = acc.attention_memory_bytes(batch, seq_len, d), acc.attention_memory_bytes(batch, seq_len, d, device="cpu")
    assert f["softmax_backward_live"] - c["softmax_backward_live"] == 4 * batch * seq_len**2
    assert f["saved"] == c["saved"] and f["in_use_before_backward"] == c["in_use_before_backward"]
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        acc.attention_memory_terms(device="tpu")


def test_peak_is_the_larger_of_the_two_moments():
    long_ = acc.attention_memory_bytes(8, 1024, 16)
    short = acc.attention_memory_bytes(3, 16, 128)  # T < d: the end of backward is the peak
    assert long_["backward_peak"] == long_["softmax_backward_live"] > long_["end_of_backward_live"]
    assert short["backward_peak"] == short["end_of_backward_live"] > short["softmax_backward_live"]


@pytest.mark.parametrize("batch,seq_len,d", [(8, 64, 16), (2, 96, 32)])
def test_fused_formula_equals_what_the_fused_kernel_saves(batch, seq_len, d):
    q, k, v, _ = A.random_qkv(batch, seq_len, d, "cpu")
    out, saved = measure_saved_bytes(lambda: A.fused_attention(q, k, v), [q, k, v])
    assert "ScaledDotProduct" in type(out.grad_fn.next_functions[0][0]).__name__  # a fused kernel, not the math path
    assert saved.total_bytes == acc.attention_memory_bytes(batch, seq_len, d, fused=True)["saved"]


def test_variants_compute_the_same_attention():
    q, k, v, _ = A.random_qkv(2, 33, 8, "cpu")
    eager = scaled_dot_product_attention(q, k, v, A.causal_mask(33, "cpu"))
    torch.testing.assert_close(A.fused_attention(q, k, v), eager)


def test_model_attention_compiles_to_one_graph():
    q, k, v, _ = A.random_qkv(2, 16, 8, "cpu")
    explained = torch._dynamo.explain(scaled_dot_product_attention)(q, k, v, A.causal_mask(16, "cpu"))
    assert explained.graph_count == 1 and explained.graph_break_count == 0


def test_model_attention_compiles_to_one_graph_while_torch_profiler_records():
    """The ranges open record_function under torch.profiler; while Dynamo traces they are dropped, as NVTX is."""
    from torch.profiler import ProfilerActivity, profile
    torch._dynamo.reset()
    q, k, v, _ = A.random_qkv(2, 16, 8, "cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        explained = torch._dynamo.explain(scaled_dot_product_attention)(q, k, v, A.causal_mask(16, "cpu"))
        scaled_dot_product_attention(q, k, v, A.causal_mask(16, "cpu"))  # eager: the ranges are recorded
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    assert {"computing softmax", "final matmul"} <= {e.name for e in prof.events()}


def test_first_oom_by_formula():
    budget = 80 * 10**9
    found = report.first_oom(budget)
    assert found == {"seq_len": 32768, "d": 16, "in_grid": False}  # the handout grid fits an 80 GB GPU
    assert acc.attention_memory_bytes(8, 32768, 16)["backward_peak"] > budget
    assert acc.attention_memory_bytes(8, 16384, 128)["backward_peak"] <= budget
    small = report.first_oom(16 * 2**30)
    assert small["in_grid"] and small["seq_len"] == 16384


def test_cpu_profile_cells():
    cells = A.cells(PLAN)
    measured = [c for c in cells if c.config["source"] == "measured"]
    assert {c.config["variant"] for c in measured} == set(A.VARIANTS)
    assert len(measured) == 3 * len(A.CPU_GRID.d) * len(A.CPU_GRID.seq_len)
    assert all(c.requires == "any" for c in cells)
    assert len({c.name for c in cells}) == len(cells)
    handout = runner.Plan(*resolve("handout-2025", None, False))
    assert {c.requires for c in A.cells(handout) if c.config["source"] == "measured"} == {"cuda"}
    assert max(c.config["seq_len"] for c in A.cells(handout)) == 16384


def test_report_restates_the_handout_grid_of_the_experiment():
    g = A.HANDOUT_GRID
    assert (report.HANDOUT_BATCH, report.HANDOUT_D, report.HANDOUT_T) == (g.batch, g.d, g.seq_len)
    assert report.VARIANTS == A.VARIANTS


TINY = A.Grid(batch=2, d=(8, 16), seq_len=(16, 32), warmup=1, passes=3)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The real cells (compiled included) on a tiny grid, through the runner, plus one OOM cell."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(A, "CPU_GRID", TINY)
        mp.setattr(A, "HANDOUT_GRID", A.Grid(batch=8, d=(16, 128), seq_len=(256, 16384), warmup=0, passes=0))
        cells = A.cells(PLAN)
        result = runner.run_sweep(cells, runs, PLAN.run, executor="inline", progress=False)
        assert result.counts["ok"] == len(cells), result.records
        # A cell that runs out of memory is a record, not a crash.
        oom = runner.cell(PLAN, "attention", A.cell_name("eager", 16, 64), d=16, seq_len=64, batch=2,
                          variant="eager", source="measured", warmup=1, passes=3)

        def no_memory(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

        mp.setattr(A, "random_qkv", no_memory)
        runner.run_sweep([oom], runs, PLAN.run, executor="inline", progress=False)
    return runs


def _records(runs: Path) -> list[dict]:
    return store.select(store.load_records(runs), ED25.year, PROFILE.name)


def test_sweep_records_measure_time_and_memory(tiny_runs):
    recs = {r["cell"]: r for r in _records(tiny_runs)}
    for variant in A.VARIANTS:
        m = recs[A.cell_name(variant, 16, 32)]["metrics"]
        assert m["forward_ms"]["n"] == m["backward_ms"]["n"] == TINY.passes
        assert m["forward_ms"]["mean"] > 0 and m["backward_ms"]["mean"] > 0
        f = acc.attention_memory_bytes(2, 32, 16, fused=variant == "sdpa")
        assert abs(m["saved_bytes"] / f["saved"] - 1) < 0.10  # the Must-show tolerance
    eager = recs[A.cell_name("eager", 16, 32)]["metrics"]
    assert eager["live_before_backward_bytes"] == acc.attention_memory_bytes(2, 32, 16)["in_use_before_backward"]
    compiled = recs[A.cell_name("compiled", 8, 16)]["metrics"]
    assert compiled["compile_dynamic"] is True and compiled["first_pass_s"] > 0
    # One dynamic-shape compilation serves the later shapes: their first pass is no compilation.
    later = [recs[A.cell_name("compiled", d, t)]["metrics"]["first_pass_s"] for d, t in ((8, 32), (16, 16), (16, 32))]
    assert max(later) < compiled["first_pass_s"]
    oom = recs[A.cell_name("eager", 16, 64)]
    assert oom["status"] == "oom" and "during setup" in oom["error"]


def _view(runs: Path, tmp_path: Path) -> SectionView:
    section = get("attention")
    recs = [r for r in _records(runs) if r["section"] == "attention"]
    return SectionView(section, recs, ED25, PROFILE, PLAN.run, tmp_path / "figures", all_records=tuple(recs))


def test_section_shows_measured_rows_formulas_and_the_compiled_comparison(tiny_runs, tmp_path):
    view = _view(tiny_runs, tmp_path)
    ctx = report.build(view)
    md = render_mod.jinja_env().get_template("sections/attention.md.j2").render(ctx=ctx)
    assert ctx["checks"]["n"] > 0 and ctx["checks"]["within"] == ctx["checks"]["n"]
    eager = {(r["d"], r["seq_len"]): r for r in ctx["tables"]["eager"]}
    row = eager[(16, 32)]
    assert f"| 16 | 32 | {row['forward_ms']:.3g}" in md.replace(",", "")  # a measured row with its timing
    assert "| 16 | 64 | **OOM** |" in md
    assert view.provenance()["line"] in md
    assert "## (b) torch.compile: compiled against eager" in md and "| 16 | 32 |" in md.split("## (b)")[1]
    # The OOM record is the smallest configuration that ran out of memory on this device.
    assert "eager sweep that ran out of memory is **$d$ = 16, $T$ = 64**" in " ".join(md.split())
    assert "Here the later cells reused it" in md  # one dynamic-shape compilation in this process
    assert (tmp_path / "figures" / "attention-time.png").stat().st_size > 0
    assert (tmp_path / "figures" / "attention-memory.png").stat().st_size > 0


def test_section_renders_formulas_without_records(tmp_path):
    view = SectionView(get("attention"), [], ED25, PROFILE, PLAN.run, tmp_path / "figures")
    md = render_mod.jinja_env().get_template("sections/attention.md.j2").render(ctx=report.build(view))
    assert "No GPU ran this sweep" in md and "**$T$ = 32,768**" in md  # smallest OOM on an 80 GB GPU, by formula
    assert "batch 8: **nothing in the handout's grid runs out of memory**" in " ".join(md.split())
    assert "more than the 80.0 GB (74.51 GiB) available" in " ".join(md.split())
    assert "4 B T^{2} + 12 B T d + T^{2}" in md  # the saved-for-backward formula
    assert "lmreport run attention --profile cpu --edition 2025" in md


@pytest.mark.cuda
def test_cuda_cell_allocated_memory_matches_the_formula(tmp_path):
    """Above what was allocated before the forward (Q, K, V, dO, the mask and the cuBLAS workspace), the
    bytes added before backward and at the peak match the CUDA formula above its inputs within 5%: the
    comparison the chapter makes (report._row) and tests/test_attention_h200.py checks on the H200 records."""
    c = runner.cell(PLAN, "attention", "eager-d64-T4096", requires="cuda", d=64, seq_len=4096, batch=8,
                    variant="eager", source="measured", warmup=1, passes=2)
    m = A.run_cell(c, tmp_path)["metrics"]
    in_use_ratio, peak_ratio = allocated_memory_ratios(m, 8, 4096, 64)
    assert abs(in_use_ratio - 1) < 0.05 and abs(peak_ratio - 1) < 0.05
    row = report.record_row({"cell": c.name, "config": c.config, "status": "ok", "metrics": m})
    assert abs(row["peak_ratio"] - 1) < 0.05 and abs(row["in_use_ratio"] - 1) < 0.05


def allocated_memory_ratios(m: dict, batch: int, seq_len: int, d: int) -> tuple[float, float]:
    """(bytes added before backward, peak above the baseline) of a CUDA cell's metrics, each over the CUDA
    formula's figure above its inputs; also run on the H200 records (tests/test_h200_records.py)."""
    f = acc.attention_memory_bytes(batch, seq_len, d)
    before = m["allocated_before_forward_bytes"]
    assert before >= f["inputs"]  # Q, K, V, dO and the mask exist before the forward
    return ((m["allocated_before_backward_bytes"] - before) / (f["in_use_before_backward"] - f["inputs"]),
            (m["max_allocated_bytes"] - before) / (f["backward_peak"] - f["inputs"]))


def _stats(ms: float) -> dict:
    from lmreport.timing import Stats
    return Stats.of([ms, ms * 1.01, ms * 0.99]).to_metric()


def test_section_with_gpu_records(tmp_path):
    """The report on records shaped like a CUDA run's (memory_allocated, device memory, an OOM cell)."""
    env = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "host": "gpu-node"}
    plan = runner.Plan(*resolve("handout-2025", None, False))
    recs = []
    for variant in A.VARIANTS:
        for d in (16, 64):
            for t in (256, 1024, 4096, 16384):
                cfg = {"edition": 2025, "profile": plan.profile.name, "d": d, "seq_len": t, "batch": 8,
                       "variant": variant, "source": "measured", "warmup": 5, "passes": 100}
                name = A.cell_name(variant, d, t)
                if variant == "eager" and t == 16384:
                    recs.append(store.make_record("attention", name, cfg, env, "oom",
                                                  error="OutOfMemoryError: out of memory during backward"))
                    continue
                f = report.formula(8, t, d, variant)
                before = report.inputs_bytes(8, t, d, variant) + 8 * 2**20  # plus a cuBLAS workspace
                metrics = {"forward_ms": _stats(t / 100), "backward_ms": _stats(t / 50), "first_pass_s": 0.5,
                           "saved_bytes": f["saved"], "device_total_bytes": 80 * 2**30,
                           "allocated_before_forward_bytes": before,
                           "allocated_before_backward_bytes": before + f["in_use_before_backward"]
                           - report.inputs_bytes(8, t, d, variant),
                           "max_allocated_bytes": f.get("backward_peak", f["in_use_before_backward"]) + 8 * 2**20}
                recs.append(store.make_record("attention", name, cfg, env, "ok", metrics=metrics))
    view = SectionView(get("attention"), recs, ED25, plan.profile, plan.run, tmp_path / "figures")
    md = " ".join(render_mod.jinja_env().get_template("sections/attention.md.j2").render(ctx=report.build(view)).split())
    assert "These are CPU measurements" not in md and "`torch.cuda.memory_allocated`" in md
    assert "ran out of memory is **$d$ = 16, $T$ = 16,384**" in md and "80.00 GiB" in md
    # the formula's peak (32.55 GiB) fits 80 GiB: the text must not claim it exceeds the device
    assert "more than the 85.9 GB" not in md and "of the device by formula, yet the cell ran out" in md
    assert "| 16 | 16,384 | **OOM** |" in md
    assert "8.00 MiB to 8.00 MiB beyond" in md  # what memory_allocated held besides the inputs
    assert "Here the later cells compiled again" in md  # every compiled cell's first pass took 0.5 s
    assert "Device: NVIDIA H100 80GB HBM3 · host gpu-node · profile handout-2025" in md


@pytest.mark.parametrize("change,why", [({"metrics": {}}, "metric forward_ms is missing"),
                                       ({"config_d": "16"}, "must be positive integers"),
                                       ({"config_variant": "flash"}, "unknown variant 'flash'")])
def test_a_record_outside_the_contract_is_skipped_with_a_warning(tiny_runs, tmp_path, change, why):
    view = _view(tiny_runs, tmp_path)
    bad = next(r for r in view.records if r["cell"] == A.cell_name("eager", 16, 32))
    if "metrics" in change:
        bad["metrics"] = change["metrics"]
    for key in ("d", "variant"):
        if f"config_{key}" in change:
            bad["config"] = {**bad["config"], key: change[f"config_{key}"]}
    with pytest.warns(UserWarning, match=f"skipped .*{A.cell_name('eager', 16, 32)}.json: .*{why}"):
        ctx = report.build(view)
    assert (16, 32) not in {(r["d"], r["seq_len"]) for r in ctx["tables"]["eager"]}
    assert ctx["tables"]["eager"] and ctx["checks"]["within"] == ctx["checks"]["n"]


@pytest.mark.parametrize("keep", [("eager",), ("sdpa",), ("compiled",), ()])
def test_section_renders_with_only_some_variants(tiny_runs, tmp_path, keep):
    """Partial data: the missing variants say so, the formulas and the rest still render."""
    view = _view(tiny_runs, tmp_path)
    view.records = [r for r in view.records if r["config"]["variant"] in keep or r["config"]["source"] == "estimated"]
    md = render_mod.jinja_env().get_template("sections/attention.md.j2").render(ctx=report.build(view))
    assert "### Memory accounting" in md and "### One of the smallest configurations" in md
    assert ("No torch.compile records yet" in md) == ("compiled" not in keep)
    for v in ("eager", "sdpa"):  # (a) has a table per measured variant, and only then
        assert (f"**{report.VARIANT_LABELS[v]}.** Mean" in md) == (v in keep)
