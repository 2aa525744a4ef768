"""The fake-tensor estimator: equal (within 5%) to what the CPU allocator really hands out for
the same step, tied to the accounting formulas, CUDA's autocast rules, the command line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from lmreport import accounting as acc
from lmreport.cli import main
from lmreport.estimate.cpu_check import measure_step
from lmreport.estimate.cuda_autocast import CudaAutocastRules
from lmreport.estimate.memory import clear_cache, estimate_memory
from lmreport.estimate.tracker import CATEGORIES
from lmreport.presets import CPU_MODELS

TINY = CPU_MODELS["tiny"]
P = acc.parameter_count(TINY)


@pytest.mark.parametrize("mode,dtype,kw", [
    ("train", "fp32", {}), ("train", "bf16", {}), ("forward", "fp32", {}), ("forward", "bf16", {}),
    ("train", "fp32", {"step": "first"}), ("forward", "bf16", {"grad": True}),
])
def test_estimate_matches_memory_really_allocated_on_cpu(mode, dtype, kw):
    est = estimate_memory(TINY, 2, 64, mode, dtype, target="cpu", **kw)
    real = measure_step(TINY, 2, 64, mode, dtype, **kw)
    assert est.initial_bytes == real.baseline_bytes
    assert est.peak_bytes == pytest.approx(real.peak_bytes, rel=0.05)


@pytest.mark.parametrize("every", [1, 2])
def test_checkpointed_estimate_matches_the_cpu_too(every):
    est = estimate_memory(TINY, 2, 64, "train", "fp32", target="cpu", checkpoint_every=every)
    real = measure_step(TINY, 2, 64, "train", "fp32", checkpoint_every=every)
    assert est.peak_bytes == pytest.approx(real.peak_bytes, rel=0.05)
    plain = estimate_memory(TINY, 2, 64, "train", "fp32", target="cpu")
    assert est.phase_peaks["forward"] < plain.phase_peaks["forward"]  # fewer activations kept in forward


def test_block_saved_for_backward_is_tied_to_autograd():
    from lmreport.estimate.checkpointing import block_saved
    b = block_saved(TINY, 2, 64)
    assert b["gradient_bytes"] == 4 * (4 * TINY.d_model**2 + 3 * TINY.d_model * TINY.d_ff + 2 * TINY.d_model)
    # the two views of saved memory (pack hook, graph walk) agree up to scalars autograd keeps as wrapped numbers
    assert abs(b["saved_activation_bytes"] - sum(b["by_node_bytes"].values())) <= 64
    assert len(b["top_nodes"]) == 5 and b["top_nodes"][0]["bytes"] == max(b["by_node_bytes"].values())
    assert b["block_input_bytes"] == 4 * 2 * 64 * TINY.d_model


def test_breakdown_is_tied_to_the_accounting():
    e = estimate_memory(TINY, 2, 64, "train", "fp32")
    assert set(e.breakdown) == set(CATEGORIES) and sum(e.breakdown.values()) == e.peak_bytes
    assert e.breakdown["parameters"] == 4 * P
    assert e.breakdown["optimizer_state"] == 2 * 4 * P  # AdamW's m and v, allocated at warm-up
    assert e.initial_bytes == 3 * 4 * P + 2 * 2 * 64 * 8  # weights, m, v, int64 inputs and targets
    assert e.final_bytes == e.initial_bytes + 4 * P  # a gradient per parameter when the step ends
    assert list(e.phase_peaks) == ["forward", "backward", "optimizer step"]
    assert max(e.phase_peaks.values()) == e.peak_bytes
    first = estimate_memory(TINY, 2, 64, "train", "fp32", step="first")
    assert first.initial_bytes == 4 * P + 2 * 2 * 64 * 8  # no optimizer state before the first step
    assert first.final_bytes == e.final_bytes  # ... but the same memory after it


def test_inference_keeps_no_activations_and_barely_grows_with_context():
    short = estimate_memory(TINY, 2, 32, "forward", "fp32")
    long = estimate_memory(TINY, 2, 128, "forward", "fp32")
    assert short.breakdown["activations"] == 0 and short.breakdown["gradients"] == 0
    grad = estimate_memory(TINY, 2, 128, "forward", "fp32", grad=True)
    assert grad.breakdown["activations"] > 0 and grad.peak_bytes > long.peak_bytes
    train_short = estimate_memory(TINY, 2, 32, "train", "fp32")
    train_long = estimate_memory(TINY, 2, 128, "train", "fp32")
    assert (long.peak_bytes - short.peak_bytes) < (train_long.peak_bytes - train_short.peak_bytes)


def test_bf16_keeps_a_cached_copy_of_each_matrix_weight():
    e = estimate_memory(TINY, 2, 64, "forward", "bf16")
    matrix_params = P - TINY.vocab_size * TINY.d_model - (2 * TINY.num_layers + 1) * TINY.d_model  # all but embedding, norms
    assert e.weight_copies_bytes == 2 * matrix_params  # bf16: 2 bytes per weight, each cast once (autocast's cache)


def test_cuda_autocast_rules_make_softmax_fp32():
    with FakeTensorMode():
        x = torch.empty(4, 8, dtype=torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.softmax(x, -1).dtype == torch.bfloat16  # CPU autocast keeps bf16
            with CudaAutocastRules():
                assert torch.softmax(x, -1).dtype == torch.float32
                assert F.softmax(x, dim=-1).dtype == torch.float32
                assert x.softmax(-1).dtype == torch.float32
                assert torch.log_softmax(x, -1).dtype == torch.float32
                assert torch.softmax(x, -1, dtype=torch.bfloat16).dtype == torch.bfloat16  # an explicit dtype wins
                assert F.linear(x, torch.empty(3, 8)).dtype == torch.bfloat16  # everything else untouched
        with CudaAutocastRules():
            assert torch.softmax(x, -1).dtype == torch.bfloat16  # outside autocast: no change


def test_cuda_rules_add_fp32_softmax_outputs_to_the_activations():
    cpu = estimate_memory(TINY, 2, 128, "train", "bf16", target="cpu")
    cuda = estimate_memory(TINY, 2, 128, "train", "bf16", target="cuda")
    scores = 2 * TINY.num_heads * 128 * 128  # elements of one layer's softmax output
    # CUDA saves each layer's softmax output in fp32 (4 bytes) instead of bf16 (2) and casts a bf16 copy for A V
    assert cuda.phase_peaks["forward"] - cpu.phase_peaks["forward"] >= TINY.num_layers * scores * 2


def test_cached_model_gives_identical_estimates():
    a = estimate_memory(TINY, 2, 64, "train", "bf16")
    b = estimate_memory(TINY, 2, 64, "train", "bf16")
    clear_cache()
    c = estimate_memory(TINY, 2, 64, "train", "bf16")
    assert a.peak_bytes == b.peak_bytes == c.peak_bytes and a.breakdown == c.breakdown


def test_cli_json_has_the_exact_shape(capsys):
    assert main(["estimate", "memory", "--size", "tiny", "--ctx", "64", "--mode", "train", "--batch", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"peak_bytes", "breakdown"} and set(out["breakdown"]) == set(CATEGORIES)
    assert out["peak_bytes"] == sum(out["breakdown"].values())
    assert main(["estimate", "memory", "--size", "tiny", "--ctx", "64", "--mode", "forward", "--dtype", "bf16",
                 "--edition", "2026"]) == 0
    text = capsys.readouterr().out
    assert "peak" in text and "autocast weight copies" in text


def test_cli_errors_are_one_line(capsys):
    assert main(["estimate", "memory", "--size", "huge", "--ctx", "64", "--mode", "train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown size 'huge'" in err
    assert main(["estimate", "memory", "--size", "tiny", "--ctx", "0", "--mode", "train"]) == 2
    assert "must be positive" in capsys.readouterr().err
    for flags, expected in ((["--mode", "forward", "--first-step"], "--first-step describes a training step"),
                            (["--mode", "train", "--with-grad"], "--with-grad describes a forward pass")):
        assert main(["estimate", "memory", "--size", "tiny", "--ctx", "64", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err
