"""Precision: the loops give the handout's values by computation, dtypes are measured per device,
the norm-sensitivity numbers say what the writeup claims, and CPU results never pose as CUDA's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lmreport import precision as P
from lmreport import runner, store
from lmreport.presets import resolve
from lmreport.report.context import SectionView
from lmreport.report.render import jinja_env
from lmreport.sections import get

ROOT = Path(__file__).resolve().parent.parent
PLAN = runner.Plan(*resolve("cpu", 2025, False))


def test_accumulation_values_are_computed():
    rows = {r["name"]: r for r in P.accumulation()}
    assert "%.9g" % rows["fp32 += fp32"]["result"] == "10.0001335"
    assert "%.9g" % rows["fp16 += fp16"]["result"] == "9.953125"
    assert "%.9g" % rows["fp32 += fp16"]["result"] == "10.0021362"
    assert rows["fp32 += fp16 cast to fp32"]["result"] == rows["fp32 += fp16"]["result"]
    assert rows["bf16 += bf16"]["result"] == 4.0  # stalls where half a bf16 ULP exceeds 0.01
    for r in rows.values():  # the error decomposition is an identity
        assert r["representation_error"] + r["rounding_error"] == pytest.approx(r["result"] - 10.0, abs=1e-12)
    # fp16's 0.01 has 11 significant bits: its sums up to 10 are exact in fp32
    assert rows["fp32 += fp16"]["rounding_error"] == 0.0


def test_handout_values_are_not_typed_anywhere():
    """The three must-show values may appear only as computed output, never in code or templates."""
    values = ("10.0001335", "9.953125", "10.0021362")
    files = [p for folder in ("lmreport", "templates") for p in (ROOT / folder).rglob("*") if p.is_file()
             and p.suffix in (".py", ".j2", ".typ", ".md")]
    assert files
    typed = [str(p) for p in files if any(v in p.read_text(errors="replace") for v in values)]
    assert typed == []


@pytest.mark.parametrize("name,mantissa,ulp", [("fp32", 23, 2.0**-20), ("fp16", 10, 2.0**-7), ("bf16", 7, 2.0**-4)])
def test_format_facts_from_torch_agree_with_the_format_definition(name, mantissa, ulp):
    f = P.format_facts(name)
    assert f["mantissa_bits"] == mantissa and f["ulp"] == ulp == f["ulp_from_eps"]


def test_cpu_autocast_dtypes_are_measured():
    for low, name in (("fp16", "float16"), ("bf16", "bfloat16")):
        d = P.toy_autocast_dtypes("cpu", low)
        assert d["parameters inside autocast"] == "float32" and d["gradients"] == "float32"
        assert d["fc1 output"] == d["logits"] == name and d["loss"] == "float32"
        assert d["fc1 matmul operands"] == f"{low} × {low}"
        # CPU autocast does not put layer_norm on its fp32 list (CUDA does): the reason for device labels
        assert d["LayerNorm output"] == name


@pytest.mark.cuda
def test_cuda_autocast_keeps_layernorm_in_fp32():
    d = P.toy_autocast_dtypes("cuda", "fp16")
    assert d["LayerNorm output"] == "float32" and d["fc1 output"] == "float16" and d["loss"] == "float32"


def test_norm_sensitivity_numbers():
    rows = {r["x"]: r for r in P.square_overflow()}
    assert not rows[255.0]["fp16"]["overflow"] and rows[256.0]["fp16"]["overflow"]
    assert not any(r["bf16"]["overflow"] or r["fp32"]["overflow"] for r in rows.values())
    o = P.rms_norm_with_outlier(300.0)
    assert o["fp16_mean_of_squares_overflow"] and o["naive_fp16_all_zero"]
    assert o["upcast_fp16_max_error"] < 1e-2 < o["naive_fp16_max_error"]
    widths = P.mean_error_by_width((64, 4096))
    small, big = widths
    for fmt in ("fp16", "bf16"):
        assert big[fmt]["running_sum_rel_error"] > small[fmt]["running_sum_rel_error"]
        assert big[fmt]["torch_mean_rel_error"] < big[fmt]["running_sum_rel_error"] / 10  # fp32 accumulation
    assert big["bf16"]["running_sum_rel_error"] > big["fp16"]["running_sum_rel_error"] > big["fp32"]["running_sum_rel_error"]
    eps = P.eps_representation()
    assert eps["fp16"]["subnormal"] and not eps["bf16"]["subnormal"] and eps["bf16"]["one_plus_eps_is_one"]


# --- the section ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def precision_records(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    from lmreport.experiments import precision as exp
    res = runner.run_sweep(exp.cells(PLAN), runs, PLAN.run, progress=False)
    assert res.counts["error"] == 0, res.records
    return store.select(store.load_records(runs), 2025, "cpu")


def render(records, tmp_path) -> str:
    s = get("precision")
    view = SectionView(s, [r for r in records if r["section"] == "precision"], PLAN.edition, PLAN.profile,
                       PLAN.run, tmp_path / "figures", all_records=tuple(records))
    return jinja_env().get_template(s.template).render(ctx=s.report_module().build(view))


def test_section_shows_computed_values_and_labels_the_device(precision_records, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only wording")
    md = render(precision_records, tmp_path)
    for value in ("**10.0001335**", "**9.953125**", "**10.0021362**"):
        assert value in md
    assert "The CUDA answer is not measured here" in md and "CPU autocast" in md
    assert "| tensor | CPU, fp16 autocast | CPU, bf16 autocast |" in md  # columns named by device
    assert "LayerNorm output under fp16 (CPU `float16`, CUDA documented `float32`)" in md
    assert "Device: CPU" in md
    assert "No benchmark records with both fp32 and bf16 yet" in md  # P-c waits for the bench records


def test_a_cuda_record_replaces_the_documented_answer(precision_records, tmp_path):
    """With a (here simulated) CUDA record the section shows it, under its own device line."""
    cpu = next(r for r in precision_records if r["cell"] == "toy-autocast-cpu-fp16")
    cuda = {**cpu, "cell": "toy-autocast-cuda-fp16", "config": {**cpu["config"], "device": "cuda"},
            "environment": {**cpu["environment"], "device": "NVIDIA H100 80GB HBM3", "device_type": "cuda"},
            "metrics": {"dtypes": {**cpu["metrics"]["dtypes"], "LayerNorm output": "float32"}}}
    records = [r for r in precision_records if r["cell"] != "toy-autocast-cuda-fp16"] + [cuda]
    md = render(records, tmp_path)
    assert "The CUDA answer is not measured here" not in md
    assert "| CUDA, fp16 autocast |" in md and "NVIDIA H100 80GB HBM3" in md
    assert "LayerNorm output under fp16 is `float16` on CPU and `float32` on CUDA" in md


def test_section_without_records_says_what_to_run(tmp_path):
    md = render([], tmp_path)
    assert "lmreport run precision --profile cpu --edition 2025" in md  # rendered without any record


@pytest.mark.parametrize("cell,break_it,why", [
    ("accumulation", lambda m: m.__setitem__("loops", []), "metrics.loops lacks fp32 += fp32"),
    ("norm-sensitivity", lambda m: m.pop("eps"), "metrics lacks eps"),
    ("toy-autocast-cpu-fp16", lambda m: m["dtypes"].pop("loss"), "metrics.dtypes lacks loss"),
])
def test_a_record_outside_the_contract_is_skipped_and_the_rest_renders(precision_records, tmp_path, cell, break_it, why):
    import copy
    records = copy.deepcopy(precision_records)
    bad = next(r for r in records if r["cell"] == cell)
    break_it(bad["metrics"])
    with pytest.warns(UserWarning, match=re.escape(f"skipped {bad['_path']}: {why}")):
        md = render(records, tmp_path)
    assert "## (b) Which parts of a normalisation layer" in md
    missing = {"accumulation": "No accumulation record yet", "norm-sensitivity": "No norm-sensitivity record yet",
               "toy-autocast-cpu-fp16": "| tensor | CPU, bf16 autocast |"}[cell]
    assert missing in md  # the skipped record's part says so; the others show their records


def test_a_record_whose_config_is_not_an_object_is_unreadable(tmp_path):
    from lmreport.errors import InputFileError
    p = tmp_path / "r.json"
    p.write_text('{"schema": 1, "section": "precision", "cell": "x", "config": "x", "status": "ok", "metrics": {}}')
    with pytest.raises(InputFileError, match="config and metrics must be JSON objects"):
        store.read_record(p)
