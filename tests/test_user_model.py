"""`--model MODULE:CLASS`: the user's own implementation, built through one seam, checked against the
accounting, named in every record and table, kept apart from other implementations.

The two models of tests/fixtures: my_model.py (the course's architecture, written independently of
lmreport.model) and planted_model.py (tied embeddings, biases on the attention projections, its own
d_ff). bad_models.py holds the ones lmreport must refuse or measure through a fallback.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path

import pytest
import torch

from lmreport import conformance as cf
from lmreport import runner, store, user_model
from lmreport.cli import main
from lmreport.presets import CPU_MODELS, ModelConfig, edition, profile

ROOT = Path(__file__).resolve().parent.parent
MY_MODEL = "tests.fixtures.my_model:TransformerLM"
PLANTED = "tests.fixtures.planted_model:TransformerLM"
TINY = CPU_MODELS["tiny"]  # d 128, d_ff 512, 2 layers, 4 heads, vocab 10,000
ED = edition(2025)
CPU = profile("cpu")


@pytest.fixture(autouse=True)
def _from_the_repository_root(monkeypatch):
    """lmreport imports `tests.fixtures...` from the current directory, as `make report MODEL=...` does."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(user_model.IMPORT_DIR_VARIABLE, raising=False)


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the spec and the adapters -------------------------------------------------------------------------


def test_no_flags_is_lmreport_own_model_without_importing_anything():
    spec = user_model.load_spec()
    assert spec is user_model.reference() and spec.is_reference and spec.flags() == ""
    cfg = spec.to_config()
    assert cfg["model"] == "lmreport.model:TransformerLM" and len(cfg["model_sha256"]) == 64
    assert cfg["loss_sha256"] is None  # torch's own: the record's torch version says which
    assert runner.Plan(CPU, ED).run == runner.Plan(CPU, ED, spec).run == "2025-cpu"


def test_a_user_model_gets_its_own_run_folder_and_flags():
    spec = user_model.load_spec(MY_MODEL)
    assert not spec.is_reference and spec.model.source == "tests.fixtures.my_model"
    digest = __import__("hashlib").sha256((ROOT / "tests/fixtures/my_model.py").read_bytes()).hexdigest()
    assert spec.model.sha256 == digest
    assert runner.Plan(CPU, ED, spec).run == "2025-cpu--tests.fixtures.my_model-TransformerLM"
    assert spec.flags() == f" --model {MY_MODEL}"
    assert user_model.ModelSpec.from_config(json.loads(json.dumps(spec.to_config()))) == spec  # travels as JSON
    assert os.environ[user_model.IMPORT_DIR_VARIABLE] == str(ROOT)  # where child processes import it from


@pytest.mark.parametrize("model, optimizer, loss, label, slug, flags", [
    (None, "opt:SGD", "l:ce", "lmreport.model:TransformerLM (optimizer opt:SGD, loss l:ce)",
     "lmreport.model-TransformerLM--opt-opt-SGD--loss-l-ce", " --optimizer opt:SGD --loss l:ce"),
    ("my pkg.m:Model", None, "l:ce", "my pkg.m:Model (loss l:ce)", "my-pkg.m-Model--loss-l-ce",
     " --model my pkg.m:Model --loss l:ce"),
])
def test_label_slug_and_flags_name_the_parts_that_are_not_lmreports(model, optimizer, loss, label, slug, flags):
    ref = user_model.REFERENCE_TARGETS
    spec = user_model.ModelSpec(*(user_model.Part(t or ref[k], "m", None)
                                  for k, t in (("model", model), ("optimizer", optimizer), ("loss", loss))))
    assert (spec.label, spec.slug, spec.flags()) == (label, slug, flags)


def test_adapters_rename_theta_and_pass_device_and_dtype():
    cls = user_model.import_target(MY_MODEL, "--model")
    kw = user_model.constructor_keywords(cls, TINY, "meta", MY_MODEL)
    assert kw["theta"] == TINY.rope_theta and "rope_theta" not in kw
    assert kw["device"] == torch.device("meta") and kw["dtype"] == torch.float32
    assert {k: kw[k] for k in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff")} == {
        "vocab_size": 10_000, "context_length": TINY.context_length, "d_model": 128, "num_layers": 2, "num_heads": 4,
        "d_ff": 512}


def test_optimizer_keywords_are_lmreport_adamw_defaults():
    from lmreport.optim import AdamW
    defaults = {k: p.default for k, p in inspect.signature(AdamW).parameters.items() if k != "params"}
    assert defaults == user_model.OPTIMIZER_KEYWORDS


def test_workload_builds_the_spec_model_and_runs_every_mode():
    from lmreport.workloads import make_workload
    spec = user_model.load_spec(MY_MODEL)
    w = make_workload(TINY, 2, 16, "train", spec=spec)
    assert type(w.model).__module__ == "tests.fixtures.my_model" and w.optimizer is not None
    w.step()
    assert all(p.grad is not None for p in w.model.parameters())
    ref = make_workload(TINY, 2, 16, "forward")
    assert type(ref.model).__module__ == "lmreport.model"


# --- one-line errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, says", [
    ("tests.fixtures.my_model.TransformerLM", "expected MODULE:NAME with a colon"),
    ("no_such_package.model:TransformerLM", "no module named 'no_such_package.model'"),
    ("tests.fixtures.my_model:TransformerLMX", "has no 'TransformerLMX'; it defines"),
    ("tests.fixtures.bad_models:NoRopeTheta", "does not accept rope_theta or theta"),
    ("tests.fixtures.bad_models:HiddenStates", "returned shape (2, 16, 32)"),
    ("tests.fixtures.bad_models:not_a_scalar_loss", "names a function, not a class"),
])
def test_bad_model_values_are_one_line_errors(capsys, tmp_path, value, says):
    code, _, err = cli(capsys, "run", "accounting", "--model", value, "--runs-dir", str(tmp_path), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"lmreport: error: --model {value}: ") and says in err, err
    assert "Traceback" not in err and not any(tmp_path.iterdir())  # nothing was measured


def test_bad_optimizer_and_loss_are_one_line_errors(capsys, tmp_path):
    code, _, err = cli(capsys, "estimate", "memory", "--size", "tiny", "--ctx", "16", "--mode", "train",
                       "--model", MY_MODEL, "--optimizer", "tests.fixtures.bad_models:SGDLike")
    assert code == 2 and err.strip().splitlines()[-1].startswith("lmreport: error: --optimizer")
    assert "does not accept betas, eps, weight_decay" in err
    code, _, err = cli(capsys, "estimate", "memory", "--size", "tiny", "--ctx", "16", "--mode", "train",
                       "--model", MY_MODEL, "--loss", "tests.fixtures.bad_models:not_a_scalar_loss")
    assert code == 2 and "--loss" in err and "must return a scalar tensor" in err


# --- fallbacks: meta, fake tensors, real CPU tensors -------------------------------------------------------


def test_a_model_meta_refuses_runs_on_fake_tensors_and_says_why(capsys):
    code, out, err = cli(capsys, "estimate", "memory", "--size", "mini", "--ctx", "32", "--mode", "forward",
                         "--model", "tests.fixtures.bad_models:OwnDevice")
    assert code == 0 and "does not run on the meta device" in err and "FakeTensorMode" in err
    assert "peak" in out
    m = _accounting_cell("tests.fixtures.bad_models:OwnDevice", "study", "small", 1, 64)
    assert m["built_on"] == "fake" and "not on the meta device" in m["fallback"]


def test_the_estimator_builds_under_fake_tensors_what_meta_cannot_build():
    from lmreport.estimate.memory import estimate_memory
    spec = user_model.load_spec("tests.fixtures.bad_models:BuildsOnlyOnCpu")
    est = estimate_memory(TINY, 2, 16, "train", spec=spec)
    assert est.built_on == "fake" and est.fallback.startswith("not built on the meta device (RuntimeError")
    params = TINY.vocab_size * TINY.d_model * 2  # embedding and head (the buffer is no parameter)
    assert est.breakdown["parameters"] >= 4 * params  # and the scale buffer, counted with them or not
    assert estimate_memory(TINY, 2, 16, "train").built_on == "meta"


def test_a_model_that_reads_values_is_checked_on_real_tensors_at_the_cpu_size(capsys):
    from lmreport.runner import CellSkipped
    target = "tests.fixtures.bad_models:ChecksItsInput"
    m = _accounting_cell(target, "cpu", "tiny", 2, 64)
    assert m["built_on"] == "cpu" and "not on fake tensors" in m["fallback"]
    assert m["parameters_module"] == m["reference"]["parameters_module"]
    with pytest.raises(CellSkipped, match="check at the CPU size"):
        _accounting_cell(target, "study", "small", 1, 64)
    code, _, err = cli(capsys, "estimate", "memory", "--size", "tiny", "--ctx", "16", "--mode", "forward",
                       "--model", target)
    assert code == 2 and "cannot be estimated without allocating" in err.splitlines()[-1]


def test_a_model_raising_its_own_value_error_on_fake_tensors_is_skipped_not_an_error(capsys):
    """A ValueError from the user's forward is the model failing on fake tensors (NotAbstract, a skipped cell, a
    one-line error), never taken for the estimator's own argument checks, which still raise ValueError first."""
    from lmreport.estimate.memory import estimate_memory
    from lmreport.experiments import memory
    from lmreport.runner import CellSkipped
    target = "tests.fixtures.bad_models:RefusesTensorsWithoutData"
    spec = user_model.load_spec(target)
    with pytest.raises(user_model.NotAbstract, match="ValueError: token ids hold no data"):
        estimate_memory(TINY, 2, 16, "train", spec=spec)
    with pytest.raises(ValueError, match="unknown mode"):
        estimate_memory(TINY, 2, 16, "sideways", spec=spec)
    # the cell's main estimate fails (train, forward), or only its with-grad variant does (forward): skipped either way
    for model, mode in ((target, "train"), (target, "forward"), (target + "WithGrad", "forward")):
        c = runner.Cell("memory", "x", {"edition": 2025, "profile": "cpu", "size": "tiny", "batch": 2, "ctx": 16,
                                        "mode": mode, "dtype": "fp32", "source": "estimated",
                                        "implementation": user_model.load_spec(model).to_config()})
        with pytest.raises(CellSkipped, match="cannot be estimated without allocating"):
            memory.run_cell(c, Path("unused"))
    code, _, err = cli(capsys, "estimate", "memory", "--size", "tiny", "--ctx", "16", "--mode", "forward",
                       "--model", target)
    assert code == 2 and "cannot be estimated without allocating" in err.splitlines()[-1]


def _accounting_cell(target, family, size, batch, ctx):
    from lmreport.experiments import accounting
    spec = user_model.load_spec(target)
    c = runner.Cell("accounting", "x", {"edition": 2025, "family": family, "model": size, "batch": batch, "ctx": ctx,
                                        "implementation": spec.to_config()})
    return accounting.run_cell(c, Path("unused"))["metrics"]


# --- conformance -------------------------------------------------------------------------------------------


def test_the_compatible_model_equals_the_reference_exactly():
    """Parameters and forward FLOPs equal exactly, at a CPU size and at a handout size (on meta)."""
    for family, size, batch, ctx in (("cpu", "tiny", 2, 64), ("study", "small", 4, 512)):
        m = _accounting_cell(MY_MODEL, family, size, batch, ctx)
        cfg = TINY if family == "cpu" else ED.study_models[size]
        assert m["built_on"] == "meta" and m["fallback"] is None
        assert m["parameters_module"] == m["reference"]["parameters_module"] == sum(cf.formula_by_component(cfg).values())
        assert m["forward_flops_counter"] == m["reference"]["forward_flops_counter"]
        d = cf.diagnose(cfg, batch, ctx, m["parameters_by_component"], m["forward_flops_counter"],
                        m["unplaced_parameters"], m["matrices_by_component"])
        assert d.conforms and d.causes == [] and not d.unplaced
        # the same tensors saved for backward, plus my_model's RoPE cos/sin tables: slices of buffers built for
        # the whole context, whose storage autograd keeps whole (128 KiB here, 3% of the tiny model's total)
        extra = m["saved_activation_bytes"] - m["reference"]["saved_activation_bytes"]
        assert 0 <= extra <= 2 * 4 * cfg.context_length * cfg.d_head // 2


def test_the_planted_differences_are_found_with_their_sizes():
    d_model, d_ff, L, V, B, T = TINY.d_model, TINY.d_ff, TINY.num_layers, TINY.vocab_size, 2, 64
    own_d_ff = 320  # planted_model.own_d_ff(128): the multiple of 64 nearest to 8/3 * 128
    m = _accounting_cell(PLANTED, "cpu", "tiny", B, T)
    d = cf.diagnose(TINY, B, T, m["parameters_by_component"], m["forward_flops_counter"], m["unplaced_parameters"],
                    m["matrices_by_component"])
    by = {r["component"]: r["difference"] for r in d.rows}
    assert by[cf.LM_HEAD] == -V * d_model  # tied embeddings
    assert by[cf.BIASES] == 4 * d_model * L  # Q, K, V, O biases
    assert by[cf.FEED_FORWARD] == 3 * d_model * (own_d_ff - d_ff) * L
    assert d.parameter_difference == m["parameters_module"] - sum(cf.formula_by_component(TINY).values())
    assert d.flop_difference == 6 * B * T * d_model * (own_d_ff - d_ff) * L  # only d_ff changes what matmuls cost
    assert [c.text.split(":")[0] for c in d.causes] == ["tied embeddings", "biases on the Q, K, V and output projections",
                                                       f"d_ff = {own_d_ff} instead of {d_ff}"]
    assert d.explains_parameters and d.explains_flops and not d.alternatives


def test_components_of_lmreport_model_are_its_formula():
    from lmreport.model import build_model
    cfg = ED.study_models["small"]
    with torch.device("meta"):
        model = build_model(cfg)
    placed = cf.parameters_by_component(((n, tuple(p.shape)) for n, p in model.named_parameters()), cfg)
    assert placed["counts"] == cf.formula_by_component(cfg) and not placed["unplaced"]


CFG = ModelConfig("t", d_model=64, d_ff=192, num_layers=3, num_heads=4, vocab_size=1000)


def _observed(**changes):
    counts = cf.formula_by_component(CFG)
    for k, v in changes.items():
        counts[k] += v
    return counts


@pytest.mark.parametrize("changes, flops, matrices, expected", [
    ({cf.BIASES: (2 * 3 + 1) * 64}, 0, None, ["norms with a bias (LayerNorm instead of RMSNorm)"]),
    ({cf.BIASES: 4 * 64 * 3 + (2 * 192 + 64) * 3 + 1000}, 0, None,
     ["biases on the Q, K, V and output projections", "biases on the feed-forward matrices", "a bias on the LM head"]),
    ({cf.FEED_FORWARD: -64 * 192 * 3}, -2 * 8 * 64 * 192 * 3, 2 * 3, ["a two-matrix feed-forward (no W3)"]),
    ({cf.FEED_FORWARD: -64 * 192 * 3}, -2 * 8 * 64 * 192 * 3, 3 * 3, ["d_ff = 128 instead of 192"]),
    ({cf.NORMS: -64}, 0, None, ["no final norm"]),
    ({cf.ROPE: 1234}, 0, None, ["RoPE kept as 1,234 trainable parameters (RoPE has none)"]),
    ({}, 4 * 8 * 64 * 16 * 3, None, ["RoPE applied as a (d_k × d_k) matrix product on Q and K"]),
])
def test_diagnose_solves_for_the_causes(changes, flops, matrices, expected):
    batch, ctx = 1, 8
    import lmreport.accounting as acc
    counted = acc.forward_flops(CFG, batch, ctx) + flops
    d = cf.diagnose(CFG, batch, ctx, _observed(**changes), counted,
                    matrices={cf.FEED_FORWARD: matrices} if matrices else None)
    assert [c.text for c in d.causes] == expected and d.explains_parameters and d.explains_flops


def test_diagnose_admits_what_it_cannot_explain():
    d = cf.diagnose(CFG, 1, 8, _observed(**{cf.ATTENTION: 7}), None)
    assert d.causes == [] and not d.explains_parameters and d.parameter_difference == 7


def test_matching_parameters_with_an_unexplained_flop_difference_have_no_cause():
    """A cause's parameters count against components that match too: none of them fits a model whose parameters
    equal the formula's, and no cause is offered for FLOPs it does not explain."""
    import lmreport.accounting as acc
    d = cf.diagnose(CFG, 1, 8, _observed(), acc.forward_flops(CFG, 1, 8) + 12_345)
    assert d.parameter_difference == 0 and d.flop_difference == 12_345 and not d.conforms
    assert d.causes == [] and d.alternatives == [] and d.explains_parameters and not d.explains_flops


def test_the_planted_causes_explain_its_parameters_but_not_an_extra_flop_difference():
    """The planted model's parameter causes are still found when its FLOPs differ by something none predicts."""
    m = _accounting_cell(PLANTED, "cpu", "tiny", 2, 64)
    d = cf.diagnose(TINY, 2, 64, m["parameters_by_component"], m["forward_flops_counter"] + 1, m["unplaced_parameters"],
                    m["matrices_by_component"])
    assert [c.text.split(":")[0] for c in d.causes] == ["tied embeddings", "biases on the Q, K, V and output projections",
                                                       f"d_ff = 320 instead of {TINY.d_ff}"]
    assert d.explains_parameters and not d.explains_flops and not d.alternatives


# --- records, runs and the writeup -----------------------------------------------------------------------------


def _bench_cells(plan):
    from lmreport.experiments import bench
    return [c for c in bench.cells(plan) if c.config["experiment"] == "step" and not c.config["compiled"]
            and c.config["size"] == "tiny" and c.config["ctx"] == 64 and c.config["dtype"] == "fp32"
            and "-warmup" not in c.name]  # the grid cells, not the warm-up ablation


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The compatible model and lmreport's, benchmarked into one runs/ folder; the planted model's accounting."""
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    runs = tmp_path_factory.mktemp("runs")
    try:
        quick = dataclasses.replace(CPU, measure_steps=3, bench_modes=("forward", "train"))
        mine = runner.Plan(quick, ED, user_model.load_spec(MY_MODEL))
        ref = runner.Plan(quick, ED)
        for a, b in zip(_bench_cells(ref), _bench_cells(mine)):  # interleaved: both meet the same load
            for plan, c in ((ref, a), (mine, b)):
                runner.run_sweep([c], runs, plan.run, progress=False)
        code = main(["run", "accounting", "--ctx", "64", "--model", MY_MODEL, "--runs-dir", str(runs), "--no-progress"])
        code |= main(["run", "accounting", "--ctx", "64", "--model", PLANTED, "--runs-dir", str(runs), "--no-progress"])
        assert code == 0
    finally:
        mp.undo()
    return runs


def test_every_record_names_its_implementation_and_runs_stay_apart(two_runs):
    records = store.load_records(two_runs)
    by_folder = {}
    for r in records:
        by_folder.setdefault(Path(r["_path"]).relative_to(two_runs).parts[0], set()).add(r["config"]["implementation"]["model"])
    assert by_folder == {"2025-cpu": {"lmreport.model:TransformerLM"},
                         "2025-cpu--tests.fixtures.my_model-TransformerLM": {MY_MODEL},
                         "2025-cpu--tests.fixtures.planted_model-TransformerLM": {PLANTED}}


def test_compatible_model_records_match_the_reference_within_noise(two_runs):
    records = store.load_records(two_runs)
    bench = {(r["config"]["implementation"]["model"], r["cell"]): r["metrics"] for r in records if r["section"] == "bench"}
    cells = sorted({cell for _, cell in bench})
    assert len(cells) == 2
    for cell in cells:
        a, b = bench[(MY_MODEL, cell)], bench[("lmreport.model:TransformerLM", cell)]
        assert a["parameters"] == b["parameters"] and a["flops_per_step"] == b["flops_per_step"]
        assert a["step_ms"]["n"] == b["step_ms"]["n"] == 3


def test_compatible_model_estimates_the_same_memory():
    """Its step's memory on fake tensors: the same parameters, gradients and optimizer state, the same peak but
    for its RoPE tables. (Its timings against the reference: benchmarks/bench_user_model.py.)"""
    from lmreport.estimate.memory import estimate_memory
    spec = user_model.load_spec(MY_MODEL)
    for mode in ("forward", "train"):
        mine, ref = estimate_memory(TINY, 2, 64, mode, spec=spec), estimate_memory(TINY, 2, 64, mode)
        for k in ("parameters", "gradients", "optimizer_state"):
            assert mine.breakdown[k] == ref.breakdown[k], (mode, k)
        assert mine.peak_phase == ref.peak_phase and abs(mine.peak_bytes / ref.peak_bytes - 1) < 0.01, mode


def test_render_keeps_implementations_apart_and_names_the_model(two_runs, tmp_path, capsys):
    code, _, err = cli(capsys, "render", "--runs-dir", str(two_runs), "--out", str(tmp_path / "ref"), "--no-pdf")
    ref_md = (tmp_path / "ref" / "writeup.md").read_text()
    assert code == 0 and "records of another implementation (--model tests.fixtures.my_model:TransformerLM)" in err
    assert MY_MODEL not in ref_md and "lmreport's reference implementation" in ref_md

    code, _, err = cli(capsys, "render", "--model", MY_MODEL, "--runs-dir", str(two_runs), "--out",
                       str(tmp_path / "mine"), "--no-pdf")
    md = (tmp_path / "mine" / "writeup.md").read_text()
    assert code == 0 and "This writeup measures **your implementation**" in md
    lines = [line for line in md.splitlines() if line.startswith("Device: ")]
    bench_lines = [line for line in lines if "CPU" in line]
    assert bench_lines and all(f"model {MY_MODEL}" in line for line in bench_lines)  # every measured table names it
    assert "Your model has exactly the formula's parameters and forward FLOPs at every size checked" in md
    about = md[md.index("| section |"):md.index("\n\n", md.index("| section |"))]
    assert f"`{MY_MODEL}`" in about and "none of yours" in about
    assert "has no ranges of its own" in md and "not the attention of" in " ".join(md.split())


def test_the_planted_model_chapter_reports_each_mismatch_with_its_size(two_runs, tmp_path, capsys):
    code, _, _ = cli(capsys, "render", "--model", PLANTED, "--runs-dir", str(two_runs), "--out", str(tmp_path), "--no-pdf")
    md = " ".join((tmp_path / "writeup.md").read_text().split())
    d, L, V, B, T, delta = 128, 2, 10_000, 2, 64, 320 - 512
    assert code == 0 and "## Conformance of your model" in md
    assert f"tied embeddings: the LM head reuses the token-embedding matrix (its matmul still runs): −V·d = −{V * d:,} parameters" in md
    assert f"biases on the Q, K, V and output projections: +4·d·L = +{4 * d * L:,} parameters" in md
    assert (f"d_ff = 320 instead of 512: 3·d·Δ·L with Δ = −192 = −{-3 * d * delta * L:,} parameters, "
            f"−{-6 * B * T * d * delta * L:,} forward FLOPs") in md
    total = -V * d + 4 * d * L + 3 * d * delta * L
    assert f"Together they account exactly for the parameter difference of −{-total:,} (component by component)" in md
    assert "MFU as overstated" in md


def test_records_of_an_edited_source_are_flagged(tmp_path):
    from lmreport.report.context import model_facts
    spec = user_model.load_spec(MY_MODEL)
    fresh = {"config": {"implementation": spec.to_config()}}
    old = {"config": {"implementation": {**spec.to_config(), "model_sha256": "0" * 64}}}
    assert "earlier version" not in model_facts([fresh])["line"] and MY_MODEL in model_facts([fresh])["line"]
    facts = model_facts([fresh, old])
    assert facts["stale"] == 1 and "1 of these records measured an earlier version of its source" in facts["line"]
    legacy = {"config": {"size": "tiny"}}  # written before records named their model: lmreport's, unflagged
    assert model_facts([legacy])["line"] == ""


def test_a_spec_reaches_a_subprocess_worker(tmp_path, monkeypatch):
    """The spec travels in the cell config; the worker imports the model from the directory it was named in."""
    from lmreport.experiments import accounting
    spec = user_model.load_spec(MY_MODEL)
    plan = runner.Plan(CPU, ED, spec)
    cells = [c for c in accounting.cells(plan) if c.config["family"] == "cpu"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the worker starts here; LMREPORT_IMPORT_DIR still names the repository root
    res = runner.run_sweep(cells, tmp_path / "runs", plan.run, executor="subprocess", progress=False)
    assert res.counts["ok"] == 1, res.records
    r = res.records[0]
    assert r["config"]["implementation"]["model"] == MY_MODEL
    assert r["metrics"]["parameters_module"] == r["metrics"]["reference"]["parameters_module"]


def test_nsys_chapter_shows_how_to_add_the_attention_ranges():
    from lmreport.report.render import jinja_env
    from lmreport.report.sections.nsys import ATTENTION_RANGES
    t = jinja_env().get_template("sections/_user_model_ranges.md.j2")
    assert t.render().strip() == ""  # lmreport's model has its ranges
    text = t.render(model=user_model.load_spec(MY_MODEL))
    assert all(f'nvtx.annotate("{name}")' in text for name in ATTENTION_RANGES)
    assert "lmreport\ncannot add them" in text or "lmreport cannot add them" in " ".join(text.split())
