"""Accounting section: parameters, FLOPs and memory from formulas, checked against torch.

Formulas (accounting.py) need no records, so this section always renders; the records of
`lmreport run accounting` add the checks: module parameter count, FlopCounterMode and the
bytes really saved for backward, each next to its formula.
"""

from __future__ import annotations

from lmreport import accounting as acc
from lmreport.report.context import SectionView
from lmreport.sections import Section

SECTION = Section(
    name="accounting", title="Accounting: parameters, FLOPs and memory", order=10,
    experiment="lmreport.experiments.accounting", report="lmreport.report.sections.accounting",
    summary="closed-form parameters, FLOPs and AdamW memory, checked on the meta device",
    measures_model=True)


def _matmul_rows(cfg, batch: int, ctx: int) -> list[dict]:
    mms = acc.forward_matmuls(cfg, batch, ctx)
    total = sum(m.flops for m in mms)
    return [{"name": m.name, "component": m.component, "m": m.m, "n": m.n, "p": m.p,
             "repeats": m.repeats, "occurrences": m.occurrences, "flops": m.flops, "share": m.flops / total}
            for m in mms]


def _proportions(models: dict, ctx: int | None = None) -> list[dict]:
    rows = []
    for name, cfg in models.items():
        parts = acc.flops_by_component(cfg, 1, ctx)
        total = sum(parts.values())
        rows.append({"model": name, "d_model": cfg.d_model, "num_layers": cfg.num_layers,
                     "total_flops": total, "shares": {k: v / total for k, v in parts.items()}})
    return rows


def _trend(rows: list[dict]) -> list[dict]:
    """How each component's share moves from the smallest to the largest model."""
    first, last = rows[0], rows[-1]
    return [{"component": c, "from": first["shares"][c], "to": last["shares"][c],
             "direction": "rises" if last["shares"][c] > first["shares"][c] else "falls"}
            for c in acc.COMPONENTS]


def _checks(view: SectionView) -> list[dict]:
    """Formula vs what torch counts, per accounting record."""
    ed = view.edition
    rows = []
    for r in view.ok:
        c, m = r["config"], r["metrics"]
        cfg = (ed.gpt2 if c["family"] == "gpt2" else ed.study_models).get(c["model"])
        if cfg is None:
            continue
        b, t = c["batch"], c["ctx"]
        act_formula = acc.FP32_BYTES * acc.activation_elements(cfg, b, t, ed.swiglu_activations)
        rows.append({
            "model": c["model"], "batch": b, "ctx": t,
            "params_formula": acc.parameter_count(cfg), "params_module": m["parameters_module"],
            "flops_formula": acc.forward_flops(cfg, b, t), "flops_counter": m["forward_flops_counter"],
            "act_formula_bytes": act_formula, "act_saved_bytes": m["saved_activation_bytes"],
            "param_saved_bytes": m["saved_parameter_bytes"],
            "act_ratio": m["saved_activation_bytes"] / act_formula,
            "by_node": m["saved_bytes_by_node"],
            "record": r,  # for the provenance line of the tables it feeds
        })
    order = {n: i for i, n in enumerate([*ed.gpt2, *ed.study_models])}
    rows.sort(key=lambda row: (order.get(row["model"], len(order)), row["ctx"]))
    for row in rows:
        row["params_match"] = row["params_formula"] == row["params_module"]
        row["flops_match"] = row["flops_formula"] == row["flops_counter"]
    return rows


def _saved_explanation(check: dict, cfg, swiglu: bool) -> dict:
    """Where formula and autograd differ for one model: the terms autograd does not keep."""
    b, t = check["batch"], check["ctx"]
    terms = {name: acc.FP32_BYTES * acc.evaluate(e, cfg, b, t) for name, e in acc.activation_terms(swiglu)}
    by_node = sorted(check["by_node"].items(), key=lambda kv: -kv[1])
    total = sum(v for _, v in by_node)
    return {"terms": terms, "by_node": [{"node": k, "bytes": v, "share": v / total} for k, v in by_node[:8]],
            "logits_once_bytes": terms["output embedding (logits)"],
            "scores_bytes": terms["Q K^T scores (x L)"]}


def build(view: SectionView) -> dict:
    ed = view.edition
    xl = ed.gpt2["GPT-2 XL"]
    xl_long = xl.with_(context_length=ed.long_context)
    swiglu = ed.swiglu_activations
    mem = acc.memory_exprs(swiglu)
    a, b = acc.memory_affine_in_batch(xl, xl.context_length, swiglu)
    q = ed.training_time
    t_s = acc.training_time_s(xl, q)
    unit_s = {"days": 86_400, "hours": 3_600}[q.time_unit]
    matmuls = _matmul_rows(xl, 1, xl.context_length)
    components = acc.flops_by_component(xl)
    ranked = sorted(components.items(), key=lambda kv: -kv[1])
    proportions = _proportions(ed.gpt2)
    long_parts = acc.flop_proportions(xl_long)
    checks = _checks(view)
    ref = next((c for c in checks if c["model"] == "GPT-2 XL" and c["ctx"] == xl.context_length), None)
    return {
        "edition": ed,
        "xl": xl,
        "xl_params": acc.parameter_count(xl),
        "xl_param_breakdown": acc.parameter_breakdown(xl),
        "xl_fp32_bytes": acc.FP32_BYTES * acc.parameter_count(xl),
        "matmuls": matmuls,
        "xl_forward_flops": acc.forward_flops(xl),
        "components": [{"name": k, "flops": v, "share": v / sum(components.values())} for k, v in ranked],
        "proportions": proportions,
        "component_names": acc.COMPONENTS,
        "trend": _trend(proportions),
        "long": {"ctx": ed.long_context, "flops": acc.forward_flops(xl_long),
                 "ratio": acc.forward_flops(xl_long) / acc.forward_flops(xl),
                 "shares": long_parts, "short_shares": acc.flop_proportions(xl)},
        "memory_latex": {k: acc.latex(e) for k, e in mem.items()},
        "parameters_latex": acc.latex(acc.PARAMETERS_EXPR),
        "activation_terms": [{"name": n, "latex": acc.latex(e)} for n, e in acc.activation_terms(swiglu)],
        "xl_memory": acc.peak_memory_bytes(xl, 1, xl.context_length, swiglu),
        "affine": {"a": a, "b": b, "budget": ed.memory_budget_bytes,
                   "max_batch": acc.max_batch_size(a, b, ed.memory_budget_bytes),
                   "max_batch_gib": acc.max_batch_size(a, b, 80 * acc.GIB)},
        "adamw": {"ops": acc.ADAMW_OPS_PER_PARAMETER, "per_param": acc.ADAMW_FLOPS_PER_PARAMETER,
                  "latex": acc.latex(acc.adamw_flops_expr()), "xl_flops": acc.adamw_step_flops(xl)},
        "training": {"q": q, "seconds": t_s, "in_unit": t_s / unit_s,
                     "step_flops": acc.train_step_flops(xl, q.batch_size, xl.context_length, q.backward_to_forward),
                     "forward_flops_batch": acc.forward_flops(xl, q.batch_size)},
        "study_models": [{"name": n, "cfg": cfg, "params": acc.parameter_count(cfg),
                          "fp32_bytes": acc.FP32_BYTES * acc.parameter_count(cfg),
                          "forward_flops": acc.forward_flops(cfg, ed.batch_size, 512)}
                         for n, cfg in ed.study_models.items()],
        "residual": [{"batch": ed.residual_batch, "ctx": t, "d_model": ed.study_models[ed.memory_model].d_model,
                      "elements": ed.residual_batch * t * ed.study_models[ed.memory_model].d_model,
                      "bytes": acc.residual_activation_bytes(ed.residual_batch, t,
                                                             ed.study_models[ed.memory_model].d_model)}
                     for t in ed.residual_contexts],
        "checks": checks,
        "all_match": bool(checks) and all(c["params_match"] and c["flops_match"] for c in checks),
        "saved": _saved_explanation(ref, xl, swiglu) if ref else None,
        "saved_ref": ref,
        # Where each table's numbers come from: formulas, or the records (device, host, profile).
        "formulas_line": view.provenance([])["line"],
        "checks_provenance": view.provenance([c["record"] for c in checks]),
        "saved_provenance": view.provenance([ref["record"]]) if ref else None,
        "run_command": view.run_command(),
    }
