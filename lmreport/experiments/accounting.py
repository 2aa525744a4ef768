"""Accounting checks: the formulas of accounting.py against the real module, on `meta`.

Nothing is allocated: the model is built on the meta device, where shapes and autograd
work but no memory is touched, so even GPT-2 XL at 16,384 tokens runs in seconds on a CPU.
Each cell records what torch itself counts; the report puts the formula beside it.

The module is the run's implementation (user_model.py: lmreport's own, or `--model`). A user's
model is checked before anything is measured (the accounting section runs first): its
parameters by component (conformance.py), its FLOPs and the bytes it saves for backward, with the
reference model's at the same size beside them. A model that cannot run on `meta` runs on fake
tensors, and at the CPU sizes on real tensors (`built_on` and `fallback` in the record say so);
a user's model also gets a check at the CPU profile's smallest size, which real tensors can always run.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch.utils.flop_counter import FlopCounterMode

from lmreport import user_model
from lmreport.conformance import parameters_by_component
from lmreport.model import count_parameters
from lmreport.presets import accounting_table
from lmreport.runner import Cell, CellSkipped, Plan, cell
from lmreport.saved_tensors import measure_saved_bytes, saved_by_node

SECTION = "accounting"
CPU_CHECK = ("tiny", 64, 2)  # size, context, batch of a user model's check on real CPU tensors
REAL_TENSORS_MAX_BYTES = 64 * 1024**2  # fp32 weights allowed for the real-tensor fallback: the CPU sizes (a few MB)


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
    if plan.model is not None and not plan.model.is_reference:
        size, ctx, batch = CPU_CHECK
        out.append(cell(plan, SECTION, f"check-{size}-ctx{ctx}", model=size, family="cpu", batch=batch, ctx=ctx))
    return out


def model_config(plan_edition, config: dict):
    return accounting_table(plan_edition, config["family"])[config["model"]]


def measure(model, ids) -> dict:
    """What torch counts for one forward pass of `model` on `ids`: parameters (by component), FLOPs, saved bytes."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(ids)
    logits, saved = measure_saved_bytes(lambda: model(ids), model.parameters())
    by_node = saved_by_node(logits, model.parameters())
    return {
        "parameters_module": count_parameters(model),
        "forward_flops_counter": counter.get_total_flops(),
        "saved_activation_bytes": saved.activation_bytes,
        "saved_parameter_bytes": saved.parameter_bytes,
        "saved_bytes_by_node": dict(by_node.bytes_by_node.most_common()),
        "saved_by_node_total_bytes": by_node.activation_bytes,
        "named_shapes": [(n, tuple(p.shape)) for n, p in model.named_parameters()],
    }


def run_cell(c: Cell, artifacts_dir: Path) -> dict:
    from lmreport import accounting as acc
    from lmreport.presets import edition
    cfg = model_config(edition(c.config["edition"]), c.config)
    batch, ctx = c.config["batch"], c.config["ctx"]
    spec = user_model.spec_of(c.config)
    kinds = user_model.ABSTRACT_KINDS
    if acc.FP32_BYTES * acc.parameter_count(cfg) <= REAL_TENSORS_MAX_BYTES:
        kinds += ("cpu",)  # small enough for real tensors, the last resort of a model meta and fake refuse
    try:
        m, kind, notes = user_model.run_abstract(spec, cfg, ctx, batch, measure, kinds)
    except user_model.NotAbstract as e:
        raise CellSkipped(f"{spec.model.target} cannot be checked at this size ({e}); its check at the CPU size "
                          f"(check-{CPU_CHECK[0]}-ctx{CPU_CHECK[1]}) runs on real tensors") from None
    placed = parameters_by_component(m.pop("named_shapes"), cfg)
    metrics = {**m, "parameters_by_component": placed["counts"], "matrices_by_component": placed["matrices"],
               "unplaced_parameters": placed["unplaced"],
               "built_on": kind, "fallback": "; ".join(notes) or None}
    if not spec.is_reference:  # the reference at the same size, for the bytes saved for backward
        ref, _, _ = user_model.run_abstract(None, cfg, ctx, batch, measure, ("meta",))
        metrics["reference"] = {k: ref[k] for k in ("parameters_module", "forward_flops_counter",
                                                   "saved_activation_bytes", "saved_bytes_by_node")}
    return {"metrics": metrics}
