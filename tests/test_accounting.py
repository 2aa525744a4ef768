"""The formulas of accounting.py against known answers and against torch's own counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmreport import accounting as acc
from lmreport.model import build_model, count_parameters
from lmreport.presets import CPU_MODELS, EDITION_TABLES, edition
from lmreport.saved_tensors import measure_saved_bytes, saved_by_node

ED25, ED26 = edition(2025), edition(2026)
XL25 = ED25.gpt2["GPT-2 XL"]


def all_configs():
    seen = {}
    for ed in EDITION_TABLES.values():
        for cfg in [*ed.study_models.values(), *ed.gpt2.values()]:
            seen[(cfg.name, cfg.d_model, cfg.d_ff, cfg.vocab_size)] = cfg
    seen.update({(c.name, 0, 0, 0): c for c in CPU_MODELS.values()})
    return list(seen.values())


def test_known_answers():
    # Known-correct values (DESIGN.md, "Correctness"): the seeds' 1.56 B for GPT-2 XL is wrong.
    assert acc.parameter_count(XL25) == 2_127_057_600
    assert acc.forward_flops(XL25) == 4_513_336_524_800
    assert acc.parameter_count(ED25.study_models["2.7B"]) == 3_406_809_600
    assert acc.residual_activation_bytes(4, 512, 2560) == 20 * 1024**2


def test_symbolic_parameter_count_matches_numeric():
    for cfg in all_configs():
        assert acc.evaluate(acc.PARAMETERS_EXPR, cfg, 1, 1) == acc.parameter_count(cfg)


def test_parameter_breakdown_is_keyed_by_the_named_components_in_order():
    """conformance.py places a module's parameters in these names; the chapter's tables print them."""
    from lmreport import conformance
    for cfg in all_configs():
        assert tuple(acc.parameter_breakdown(cfg)) == acc.PARAMETER_COMPONENTS
    assert conformance.COMPONENTS[:5] == acc.PARAMETER_COMPONENTS


@pytest.mark.parametrize("cfg", all_configs(), ids=lambda c: f"{c.name}-{c.d_model}-{c.vocab_size}")
def test_parameter_formula_equals_module(cfg):
    with torch.device("meta"):
        model = build_model(cfg)
    assert count_parameters(model) == acc.parameter_count(cfg)


@pytest.mark.parametrize("cfg,batch,ctx", [
    (XL25, 1, 1024), (ED25.study_models["small"], 4, 256), (ED26.study_models["10B"], 2, 128),
    (CPU_MODELS["tiny"], 3, 37), (ED26.gpt2["GPT-2 medium"], 1, 1024)])
def test_flop_formula_equals_flop_counter(cfg, batch, ctx):
    with torch.device("meta"):
        model = build_model(cfg, context_length=max(ctx, cfg.context_length))
        ids = torch.zeros(batch, ctx, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        model(ids)
    assert counter.get_total_flops() == acc.forward_flops(cfg, batch, ctx)


def test_backward_is_twice_forward_in_flop_counter():
    cfg = CPU_MODELS["tiny"]
    with torch.device("meta"):
        model = build_model(cfg)
        ids = torch.zeros(2, 64, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        model(ids).sum().backward()
    # embedding backward has no matmul; every forward matmul costs two in backward
    assert counter.get_total_flops() == 3 * acc.forward_flops(cfg, 2, 64)


def test_saved_tensor_hooks_and_graph_walk_agree_and_track_the_formula():
    cfg = ED25.study_models["small"]
    with torch.device("meta"):
        model = build_model(cfg)
        ids = torch.zeros(4, 512, dtype=torch.long)
    logits, saved = measure_saved_bytes(lambda: model(ids), model.parameters())
    by_node = saved_by_node(logits, model.parameters())
    assert abs(by_node.activation_bytes - saved.activation_bytes) < 1024  # scalar tensors aside
    assert by_node.parameter_bytes == saved.parameter_bytes
    formula = acc.FP32_BYTES * acc.activation_elements(cfg, 4, 512, swiglu=False)
    # Not equal by construction (the writeup explains why), but the same order of magnitude.
    assert 0.5 < saved.activation_bytes / formula < 2
    # softmax keeps its (B, H, T, T) output, one per layer
    assert by_node.bytes_by_node["SoftmaxBackward0"] == cfg.num_layers * 4 * cfg.num_heads * 512 * 512 * 4


def test_quadratic_term_of_saved_memory_is_softmax():
    """Saved activations grow like B*H*T^2 per layer: doubling T adds the softmax outputs."""
    cfg = CPU_MODELS["tiny"]

    def saved_at(t):
        with torch.device("meta"):
            model = build_model(cfg, context_length=t)
            ids = torch.zeros(1, t, dtype=torch.long)
        return measure_saved_bytes(lambda: model(ids), model.parameters())[1].activation_bytes

    s1, s2, s4 = saved_at(256), saved_at(512), saved_at(1024)
    second_diff = (s4 - s2) - 2 * (s2 - s1)  # removes the linear part: 4 (B H T^2) terms
    assert second_diff > 0


def test_memory_algebra():
    a, b = acc.memory_affine_in_batch(XL25, 1024, swiglu=False)
    assert b == 16 * acc.parameter_count(XL25) == acc.training_state_bytes(XL25)  # the batch-free part of A-a
    parts = acc.peak_memory_bytes(XL25, 3, 1024, swiglu=False)
    assert parts["total"] == a * 3 + b
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    # the handout's list at batch 1: logits twice (B T V each), softmax and scores (B h T^2 each per layer)
    L, T, V, h = 48, 1024, 50_257, 25
    assert acc.activation_elements(XL25, 1, T, False) == L * (8 * T * 1600 + 2 * T * 6400 + 2 * h * T * T) + T * 1600 + 2 * T * V
    assert acc.activation_elements(XL25, 1, T, True) - acc.activation_elements(XL25, 1, T, False) == L * 2 * T * 6400
    assert acc.max_batch_size(a, b, 80 * 10**9) == 2


def test_adamw_and_training_time():
    assert acc.ADAMW_FLOPS_PER_PARAMETER == 14
    q = ED25.training_time
    t = acc.training_time_s(XL25, q)
    expected = q.steps * (3 * acc.forward_flops(XL25, 1024) + 14 * 2_127_057_600) / (0.5 * 19.5e12)
    assert t == pytest.approx(expected)
    assert 6_000 < t / 86_400 < 7_000  # the well-known ~6,600 days


def test_2026_gpt2_widths():
    assert [c.d_ff for c in ED26.gpt2.values()] == [2048, 2752, 3392, 4288]
    assert [c.d_ff for c in ED25.gpt2.values()] == [3072, 4096, 5120, 6400]


def test_flop_proportions_sum_to_one_and_attention_grows_with_context():
    short, long = acc.flop_proportions(XL25), acc.flop_proportions(XL25, ctx=16_384)
    assert sum(short.values()) == pytest.approx(1)
    assert long[acc.ATTN_CORE] > 0.5 > short[acc.ATTN_CORE]
