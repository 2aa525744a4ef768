"""The gpu-quick profile: one short pass over every GPU code path, sized from a real H200 run.

Its plan covers each section's CUDA paths, its cells fit a 24 GB card by the accounting formulas
(except the out-of-memory probe, which must not fit any GPU), the other profiles' plans are unchanged,
and its wall time, estimated from the H200 run's records (../shared/samples/h200), stays within 5 minutes.
"""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest

from conftest import SAMPLES
from lmreport import accounting as acc
from lmreport.presets import ATTENTION_OOM_PROBE, model_of, resolve
from lmreport.runner import Cell, Plan
from lmreport.sections import all_sections, get

GPU_QUICK = Plan(*resolve("gpu-quick", None, True))
CARD_24GB = 24 * 10**9
BUDGET_S = 5 * 60


def _cells(plan: Plan) -> dict[str, list[Cell]]:
    return {name: get(name).experiment_module().cells(plan) for name in all_sections()}


def test_every_section_has_its_gpu_cells():
    cells = _cells(GPU_QUICK)
    cuda = {s: [c for c in cs if c.requires in ("cuda", "nsys")] for s, cs in cells.items()}
    bench = {c.name for c in cells["bench"]}
    # two sizes at two contexts, every mode, fp32 and bf16; the warm-up ablation and torch.compile of one size
    assert {c.config["size"] for c in cells["bench"] if c.config["experiment"] == "step"} == {"small", "medium"}
    for size in ("small", "medium"):
        for ctx in (128, 256):
            for mode in ("forward", "forward_backward", "train"):
                assert {f"{size}-ctx{ctx}-{mode}-fp32", f"{size}-ctx{ctx}-{mode}-bf16"} <= bench
    # the ablation's w = 2 is the grid's own warm-up count: that row is the grid cell, not a cell of its own
    assert {f"small-ctx128-{m}-fp32-warmup{w}" for m in ("forward", "train") for w in (0, 1, 5)} <= bench
    assert not any(n.endswith("-warmup2") for n in bench) and GPU_QUICK.profile.warmup_steps == 2
    assert {c.name for c in cells["bench"] if c.config.get("compiled")} == {"small-ctx128-train-fp32-compiled"}
    assert {"matmul-cuda-fp32", "matmul-cuda-bf16"} <= bench
    # precision: the CUDA ToyModel
    assert {c.name for c in cuda["precision"]} == {"toy-autocast-cuda-fp16", "toy-autocast-cuda-bf16"}
    # memory: one size at two contexts, forward and train, fp32 and bf16, each next to its estimate
    measured = [c for c in cuda["memory"] if c.config["source"] == "measured"]
    assert len(measured) == 8 and {c.config["size"] for c in measured} == {"small"}
    assert {c.config["ctx"] for c in measured} == {128, 256}
    estimated = {c.name for c in cells["memory"] if c.config["source"] == "estimated"}
    assert {c.name.replace("measured-", "estimated-") for c in measured} == estimated
    # attention: every variant at a few (d, T), and the probe last
    attention = [c for c in cuda["attention"] if c.config.get("purpose") != ATTENTION_OOM_PROBE]
    assert {c.config["variant"] for c in attention} == {"eager", "compiled", "sdpa"}
    assert len(attention) == 3 * 2 * 3 and min(c.config["seq_len"] for c in attention) >= 1024
    assert cuda["attention"][-1].config.get("purpose") == ATTENTION_OOM_PROBE
    # profiling: the cells of one size and context (forward and training step), on the GPU with nsys or
    # torch.profiler (chosen where they run)
    assert [c.name for c in cuda["nsys"]] == ["small-ctx128-forward-fp32", "small-ctx128-train-fp32"]
    assert all(c.requires == "cuda" for c in cells["nsys"])
    assert all(c.config["profile"] == "gpu-quick" for cs in cells.values() for c in cs)


def test_the_oom_probe_cannot_fit_any_gpu_and_never_runs_on_a_cpu():
    (probe,) = [c for c in _cells(GPU_QUICK)["attention"] if c.config.get("purpose") == ATTENTION_OOM_PROBE]
    b, t = probe.config["batch"], probe.config["seq_len"]
    assert probe.requires == "cuda" and probe.config["variant"] == "eager"
    assert 4 * b * t * t > 200 * 10**9  # the first product Q K^T alone: 550 GB
    # a CPU profile with the same grid would still keep it to CUDA (its 17 GB mask would swap on a CPU)
    cpu = dataclasses.replace(resolve("cpu", 2025, False)[0], attention_grid=GPU_QUICK.profile.attention_grid)
    assert [c.requires for c in get("attention").experiment_module().cells(Plan(cpu, GPU_QUICK.edition))
            if c.config.get("purpose") == ATTENTION_OOM_PROBE] == ["cuda"]


def test_cells_fit_a_24gb_card_by_the_formulas():
    cells = _cells(GPU_QUICK)
    for c in cells["bench"] + cells["memory"]:
        k = c.config
        if k.get("experiment") == "matmul" or k.get("source") in ("estimated", "cpu_check"):
            continue
        # the handout's fp32 training total (parameters, gradients, AdamW state, every activation at once) plus a
        # bf16 copy of every weight (autocast's cache): more than any of the three modes holds
        cfg = model_of(k)
        bound = acc.peak_memory_bytes(cfg, k["batch"], k["ctx"], GPU_QUICK.edition.swiglu_activations)["total"] \
            + 2 * acc.parameter_count(cfg)
        assert bound < CARD_24GB / 2, c.name
    for c in cells["attention"]:
        k = c.config
        if k.get("source") == "estimated" or k.get("purpose") == ATTENTION_OOM_PROBE:
            continue
        f = acc.attention_memory_bytes(k["batch"], k["seq_len"], k["d"], fused=k["variant"] == "sdpa")
        assert f.get("backward_peak", f["in_use_before_backward"]) < CARD_24GB, c.name


def test_other_profiles_plan_what_they_planned():
    """gpu-quick's fields default to the editions' values: the cpu and handout plans are the ones they were
    (cell for cell: 1,002 cells over cpu 2025/2026 and both handouts, checked against the previous commit)."""
    def counts(name, edition=None):
        return {s: len(cs) for s, cs in _cells(Plan(*resolve(name, edition, False))).items()}
    # cpu nsys: torch.profiler of CPU operators at the shortest context only (4 cells, were 8 skipped nsys cells)
    # bench = matmuls (2) + warm-up ablation (sizes x 3 modes x the counts but the grid's own: cpu 0/1/5, handouts
    # 0/1/2) + grid (sizes x contexts x 3 modes x 2 dtypes) + compiled (sizes x compile contexts x 2 modes):
    # cpu 2 + 2*3*3 + 2*2*3*2 + 1*1*2 = 46 (6 fewer than when the ablation repeated a grid cell);
    # handout-2026 2 + 5*3*3 + 5*1*3*2 + 5*1*2 = 87 (15 fewer);
    # handout-2025 2 + 5*3*3 + 5*4*3*2 + 5*1*2 = 177 (15 fewer, and 30 fewer compiled cells: it compiles at context
    # 512 only, as C-b asks compiled vs not per size)
    assert counts("cpu", 2025) == {"accounting": 10, "precision": 6, "bench": 46, "nsys": 4, "memory": 32,
                                   "attention": 68}
    assert counts("handout-2025") == {"accounting": 10, "precision": 6, "bench": 177, "nsys": 40, "memory": 32,
                                      "attention": 80}
    assert counts("handout-2026") == {"accounting": 10, "precision": 6, "bench": 87, "nsys": 28, "memory": 33,
                                      "attention": 80}
    memory = [c for c in _cells(Plan(*resolve("handout-2025", None, False)))["memory"] if c.config["source"] == "measured"]
    assert {(c.config["size"], c.config["ctx"]) for c in memory} == {("2.7B", t) for t in (128, 256, 512)}


# --- wall time, estimated from the H200 run ----------------------------------------------------------------
# Cells of a kind the H200 run has records of take their time from those records; the rest are assumptions,
# named here. On that run the inline executor ran one cell after another with about a second between them.
MATMUL_S = 2.0  # torch.utils.benchmark's blocked_autorange runs at least 1 s (MATMUL_MIN_RUN_TIME_S), plus setup
COMPILE_TRAIN_S = 60.0  # torch.compile of `small` (12 identical layers), forward and backward graphs, cold cache:
#                         no record exists (the H200 run ended before its compiled cells); the largest unknown
PROBE_S = 2.0  # Q, K, V drawn on the CPU, then the first T x T allocation fails at once
ACCOUNTING_S = 10.0  # meta-device checks, no GPU; 6.4 s on this project's 2-core CI machine
PROCESS_S = 10.0  # interpreter, imports and the CUDA context of the one `lmreport run all` process


def _h200() -> dict[tuple[str, str], dict]:
    root = SAMPLES / "h200" / "runs" / "2025-handout-2025"
    if not root.is_dir():
        pytest.skip("../shared/samples/h200 is not beside this checkout")
    return {(p.parent.name, p.stem): json.loads(p.read_text()) for p in root.glob("*/*.json")}


def _bench_s(c: Cell, h200: dict, overhead_s: float) -> float:
    """A step cell: the per-cell overhead plus (warm-up + measured) steps at the H200's step time of the same
    size, mode and precision, at the same context or the next longer one it recorded (never shorter)."""
    k = c.config
    if k["experiment"] == "matmul":
        return MATMUL_S
    if k["compiled"]:
        return COMPILE_TRAIN_S
    same = [r for (s, _), r in h200.items() if s == "bench" and r["config"]["size"] == k["size"]
            and r["config"]["mode"] == k["mode"] and r["config"]["dtype"] == k["dtype"] and r["config"]["ctx"] >= k["ctx"]]
    r = min(same, key=lambda r: r["config"]["ctx"])
    return overhead_s + (k["warmup"] + k["steps"]) * r["metrics"]["step_ms"]["mean"] / 1000


def estimate_wall_s(plan: Plan, h200: dict) -> dict[str, float]:
    bench = [r for (s, _), r in h200.items() if s == "bench" and not r["metrics"]["first_cell_in_process"]]
    overhead_s = statistics.median(r["duration_s"] - (r["config"]["warmup"] + r["config"]["steps"])
                                   * r["metrics"]["step_ms"]["mean"] / 1000 for r in bench)
    out = {}
    for section, cells in _cells(plan).items():
        total = 0.0
        for c in cells:
            k = c.config
            if section == "bench":
                total += _bench_s(c, h200, overhead_s)
            elif section == "memory" and k["source"] == "measured":
                # the 2.7B snapshot cells' durations: an upper bound (most of it does not grow with the model)
                total += h200[("memory", f"measured-2.7B-ctx{k['ctx']}-{k['mode']}-{k['dtype']}")]["duration_s"]
            elif section == "memory" and k["source"] == "estimated":
                # fake-tensor estimates cost per operator, and operators per layer: scaled by the layer count
                r = h200[("memory", f"estimated-2.7B-ctx{k['ctx']}-{k['mode']}-{k['dtype']}")]
                total += r["duration_s"] * model_of(k).num_layers / model_of(r["config"]).num_layers
            elif section in ("memory", "precision") or (section == "attention" and k["source"] == "estimated"):
                total += h200[(section, c.name)]["duration_s"]
            elif section == "attention" and k.get("purpose") == ATTENTION_OOM_PROBE:
                total += PROBE_S
            elif section == "attention":
                # the H200's eager cell of the same (d, T) (100 passes there, 20 here); the fused kernel is faster
                # than eager; compiled cells share one dynamic-shape compilation, paid by the H200's first one
                variant = "compiled" if k["variant"] == "compiled" else "eager"
                d = 16 if variant == "compiled" else k["d"]
                total += h200[("attention", f"{variant}-d{d}-T{k['seq_len']}")]["duration_s"]
            elif section == "accounting":
                total += ACCOUNTING_S / len(cells)
            # nsys: skipped without Nsight Systems (the H200 machine had none that worked)
        out[section] = total
    first_compile = h200[("attention", "compiled-d16-T256")]["duration_s"]
    out["attention"] += first_compile
    out["process"] = PROCESS_S
    return out


def test_gpu_quick_fits_five_minutes_by_the_h200_records():
    est = estimate_wall_s(GPU_QUICK, _h200())  # 295 s: bench 91, memory 145, attention 34, the rest 35
    assert sum(est.values()) <= BUDGET_S, est
    assert est["memory"] < 0.6 * BUDGET_S and est["bench"] < 0.6 * BUDGET_S
