"""The shared workload: every mode runs, phases are timed, AdamW follows the course's update."""

from __future__ import annotations

import math

import pytest
import torch

from lmreport.optim import AdamW
from lmreport.presets import CPU_MODELS
from lmreport.timing import time_phases
from lmreport.workloads import PHASES, make_workload

TINY = CPU_MODELS["tiny"]


@pytest.mark.parametrize("mode", list(PHASES))
def test_each_mode_times_its_phases(mode):
    w = make_workload(TINY, batch=2, ctx=16, mode=mode)
    stats = time_phases(w.step, "cpu", warmup=1, steps=2)
    assert set(stats) == {"step", *PHASES[mode]}
    assert all(s.n == 2 and s.mean > 0 for s in stats.values())
    assert sum(stats[p].mean for p in PHASES[mode]) <= stats["step"].mean * 1.01


def test_train_step_changes_weights_and_allocates_state_once():
    w = make_workload(TINY, batch=2, ctx=16, mode="train")
    before = w.model.lm_head.weight.detach().clone()
    w.step()
    assert not torch.equal(before, w.model.lm_head.weight)
    n_params = sum(1 for _ in w.model.parameters())
    assert len(w.optimizer.state) == n_params
    m = w.optimizer.state[w.model.lm_head.weight]["m"]
    w.step()
    assert w.optimizer.state[w.model.lm_head.weight]["m"] is m  # reused, not reallocated


def test_bf16_autocast_lowers_logits_on_cpu():
    w = make_workload(TINY, batch=1, ctx=8, mode="forward", dtype="bf16")
    with torch.no_grad(), w.autocast():
        assert w.model(w.inputs).dtype == torch.bfloat16


def test_workload_builds_on_meta():
    w = make_workload(TINY, batch=2, ctx=16, mode="train", device="meta")
    w.step()
    assert w.model.lm_head.weight.grad.device.type == "meta"


def test_adamw_matches_the_written_update():
    """One step by hand, from the algorithm in the course handout."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, 0.25])
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.01
    AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd).step()
    for theta, g, got in zip([1.0, -2.0], [0.5, 0.25], p.tolist()):
        m, v = (1 - b1) * g, (1 - b2) * g * g
        alpha_t = lr * math.sqrt(1 - b2) / (1 - b1)
        theta = theta - alpha_t * m / (math.sqrt(v) + eps)
        theta = theta - lr * wd * theta
        assert got == pytest.approx(theta, rel=1e-6)
    with pytest.raises(ValueError):
        AdamW([p], lr=-1)
