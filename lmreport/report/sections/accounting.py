"""Accounting section: parameters, FLOPs and memory from formulas, checked against torch.

Formulas (accounting.py) need no records, so this section always renders; the records of
`lmreport run accounting` add the checks: module parameter count, FlopCounterMode and the
bytes really saved for backward, each next to its formula. For a user's model (`--model`) they
add its conformance: parameters by component, the FLOP difference and the bytes saved for
backward next to lmreport's model, with the causes conformance.diagnose derives from the numbers.
"""

from __future__ import annotations

from lmreport import accounting as acc
from lmreport import conformance
from lmreport.presets import CPU_MODELS, accounting_table
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
        cfg = accounting_table(ed, c["family"]).get(c["model"])
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
            "cfg": cfg,
        })
    order = {n: i for i, n in enumerate([*ed.gpt2, *ed.study_models, *CPU_MODELS])}
    rows.sort(key=lambda row: (order.get(row["model"], len(order)), row["ctx"]))
    for row in rows:
        row["params_match"] = row["params_formula"] == row["params_module"]
        row["flops_match"] = row["flops_formula"] == row["flops_counter"]
    return rows


def _conformance(view: SectionView, checks: list[dict]) -> dict | None:
    """A user's model against the formulas and against lmreport's model at the same sizes (None for lmreport's)."""
    if view.spec.is_reference:
        return None
    rows = []
    for c in checks:
        m = c["record"]["metrics"]
        if "parameters_by_component" not in m:
            continue
        d = conformance.diagnose(c["cfg"], c["batch"], c["ctx"], m["parameters_by_component"],
                                 m["forward_flops_counter"], m.get("unplaced_parameters") or (),
                                 m.get("matrices_by_component"))
        ref = m.get("reference") or {}
        rows.append({"model": c["model"], "batch": c["batch"], "ctx": c["ctx"], "diagnosis": d,
                     "flops_formula": c["flops_formula"], "flops_counter": c["flops_counter"],
                     "flops_ratio": c["flops_counter"] / c["flops_formula"],
                     "saved_bytes": m["saved_activation_bytes"], "reference_saved_bytes": ref.get("saved_activation_bytes"),
                     "saved_ratio": (m["saved_activation_bytes"] / ref["saved_activation_bytes"]
                                     if ref.get("saved_activation_bytes") else None),
                     "built_on": m.get("built_on", "meta"), "fallback": m.get("fallback"),
                     "by_node": _node_differences(m["saved_bytes_by_node"], ref.get("saved_bytes_by_node") or {}),
                     "record": c["record"]})
    skipped = [{"cell": r["cell"], "reason": r["error"]} for r in view.records if r["status"] == "skipped"]
    if not rows and not skipped:
        return None
    # the table by component for one size: the first that differs, else GPT-2 XL at its context (or the first)
    detail = next((r for r in rows if not r["diagnosis"].conforms), None) or next(
        (r for r in rows if r["model"] == "GPT-2 XL"), rows[0] if rows else None)
    benched = view.profile.models(view.edition)  # the sizes the benchmark times
    flop_ratios = [{"model": r["model"], "ctx": r["ctx"], "ratio": r["flops_ratio"]} for r in rows
                   if r["model"] in benched and r["flops_ratio"] != 1]
    return {"rows": rows, "detail": detail, "skipped": skipped, "label": view.spec.label, "flop_ratios": flop_ratios,
            "conforms": bool(rows) and all(r["diagnosis"].conforms for r in rows),
            "fallbacks": sorted({r["fallback"] for r in rows if r["fallback"]}),
            "built_on": sorted({r["built_on"] for r in rows}),
            "provenance": view.provenance([r["record"] for r in rows]) if rows else None}


def _node_differences(mine: dict, reference: dict, top: int = 8) -> list[dict]:
    """Saved bytes per autograd node, this model against lmreport's, the largest differences first."""
    nodes = sorted(set(mine) | set(reference), key=lambda n: -abs(mine.get(n, 0) - reference.get(n, 0)))
    return [{"node": n, "mine": mine.get(n, 0), "reference": reference.get(n, 0),
             "difference": mine.get(n, 0) - reference.get(n, 0)}
            for n in nodes[:top] if mine.get(n, 0) != reference.get(n, 0)]


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
        "conformance": _conformance(view, checks),
        "saved": _saved_explanation(ref, xl, swiglu) if ref else None,
        "saved_ref": ref,
        # Where each table's numbers come from: formulas, or the records (device, host, profile).
        "formulas_line": view.provenance([])["line"],
        "checks_provenance": view.provenance([c["record"] for c in checks]),
        "saved_provenance": view.provenance([ref["record"]]) if ref else None,
        "run_command": view.run_command(),
    }
