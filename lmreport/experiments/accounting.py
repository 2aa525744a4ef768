"""Accounting checks: the formulas of accounting.py against the real module, on `meta`.

Nothing is allocated: the model is built on the meta device, where shapes and autograd
work but no memory is touched, so even GPT-2 XL at 16,384 tokens runs in seconds on a CPU.
Each cell records what torch itself counts; the report puts the formula beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lmreport.model import build_model, count_parameters
from lmreport.runner import Cell, Plan, cell
from lmreport.saved_tensors import measure_saved_bytes, saved_by_node

SECTION = "accounting"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def cells(plan: Plan) -> list[Cell]:
    ed = plan.edition
    out = [cell(plan, SECTION, f"check-{slug(n)}-ctx{cfg.context_length}", model=n, family="gpt2",
                batch=1, ctx=cfg.context_length) for n, cfg in ed.gpt2.items()]
    out.append(cell(plan, SECTION, f"check-gpt-2-xl-ctx{ed.long_context}", model="GPT-2 XL", family="gpt2",
                    batch=1, ctx=ed.long_context))
    out += [cell(plan, SECTION, f"check-{slug(n)}-ctx512", model=n, family="study", batch=ed.batch_size, ctx=512)
            for n in ed.study_models]
    return out


def model_config(plan_edition, config: dict):
    table = plan_edition.gpt2 if config["family"] == "gpt2" else plan_edition.study_models
    return table[config["model"]]


def run_cell(c: Cell, artifacts_dir: Path) -> dict:
    from lmreport.presets import edition
    cfg = model_config(edition(c.config["edition"]), c.config)
    batch, ctx = c.config["batch"], c.config["ctx"]
    with torch.device("meta"):
        model = build_model(cfg, context_length=max(ctx, cfg.context_length))
        ids = torch.zeros(batch, ctx, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        model(ids)
    logits, saved = measure_saved_bytes(lambda: model(ids), model.parameters())
    by_node = saved_by_node(logits, model.parameters())
    return {"metrics": {
        "parameters_module": count_parameters(model),
        "forward_flops_counter": counter.get_total_flops(),
        "saved_activation_bytes": saved.activation_bytes,
        "saved_parameter_bytes": saved.parameter_bytes,
        "saved_bytes_by_node": dict(by_node.bytes_by_node.most_common()),
        "saved_by_node_total_bytes": by_node.activation_bytes,
    }}
