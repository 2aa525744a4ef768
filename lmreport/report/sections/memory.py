"""Memory section: where memory goes in a forward pass and a training step.

Measured numbers come from CUDA memory snapshots (recorded by `lmreport run memory` on a
GPU, or ingested with `lmreport ingest memory`); estimated numbers come from the same step
replayed on fake tensors at full size (lmreport.estimate). Both are labelled, side by side
when both exist, next to the accounting formula (A-a). Without any record the section still
shows the formulas and the commands that produce the rest.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from lmreport import accounting as acc
from lmreport import store
from lmreport.experiments.memory import CHECKPOINT_EDITIONS
from lmreport.ingest.snapshot import cell_name as ingest_cell_name
from lmreport.ingest.snapshot_frames import autograd_node
from lmreport.report.context import SectionView
from lmreport.sections import Section

SECTION = Section(
    name="memory", title="Memory profiling", order=50,
    experiment="lmreport.experiments.memory", report="lmreport.report.sections.memory",
    summary="CUDA memory snapshots, full-size estimates on fake tensors, timelines and largest allocations",
    measures_model=True)

MODES = ("forward", "train")
DTYPES = ("fp32", "bf16")
CHECK_TOLERANCE = 0.05  # issue 4: the estimate within 5% of memory really allocated on CPU


def _variant(cfg: dict) -> str:
    if cfg.get("mode") == "train" and cfg.get("step") == "first":
        return "first_step"
    if cfg.get("mode") == "forward" and cfg.get("grad"):
        return "with_grad"
    return ""


def _source_label(src: str | None) -> dict:
    """How to show where an allocation comes from: a code frame, a backward node, or nothing."""
    if not src:
        return {"kind": "none", "text": ""}
    if src.startswith("autograd:"):
        return {"kind": "autograd", "text": src.split(":", 1)[1]}
    node = autograd_node(src)
    if node:
        return {"kind": "autograd", "text": node}
    return {"kind": "code", "text": src}


# What build() reads from a record of each source: a record without it (hand-edited, or written
# by another version of lmreport) is left out with a warning instead of failing the whole writeup.
_NEEDS_CONFIG = {"estimated": ("size", "ctx", "mode", "dtype"), "measured": ("size", "ctx", "mode", "dtype"),
                 "cpu_check": ("size", "ctx", "mode", "dtype"), "block": ("size", "ctx", "batch"),
                 "checkpointing": ("size", "ctx", "checkpoint_every")}
_NEEDS_METRICS = {
    "estimated": ("peak_bytes", "breakdown", "initial_bytes", "final_bytes", "peak_event", "timeline", "phase_spans",
                  "top_allocations"),
    "measured": ("peak_active_bytes", "peak_reserved_bytes", "initial_active_bytes", "trace_events", "timeline",
                 "top_allocations"),
    "cpu_check": ("estimated_peak_bytes", "measured_peak_bytes", "relative_error"),
    "block": ("saved_activation_bytes", "saved_parameter_bytes", "block_input_bytes", "gradient_bytes",
              "block_parameters", "top_nodes"),
    "checkpointing": ("peak_bytes", "peak_phase"),
}


def _usable(r: dict) -> bool:
    cfg, metrics = r.get("config") or {}, r.get("metrics") or {}
    source = cfg.get("source")
    missing = [k for k in _NEEDS_CONFIG.get(source, ()) if k not in cfg]
    if r.get("status") == "ok":
        missing += [f"metrics.{k}" for k in _NEEDS_METRICS.get(source, ()) if k not in metrics]
    if missing:
        warnings.warn(f"memory: record {r.get('_path') or r.get('cell')} left out (no {', '.join(missing)})",
                      stacklevel=2)
    return not missing


def _records(view: SectionView, source: str) -> list[dict]:
    return [r for r in view.records if (r.get("config") or {}).get("source") == source]


def _measured_by_key(view: SectionView, size: str) -> dict[tuple, dict]:
    """One measured record per (ctx, mode, dtype, variant) of the edition's model: an ok one first,
    then the cell a run writes (no file-name suffix), then by cell name. Several snapshots ingested
    for one configuration are all kept; those not chosen here are listed under "Other snapshots"."""
    def rank(r):
        canonical = r["cell"] == ingest_cell_name(size, r["config"]["ctx"], r["config"]["mode"], r["config"]["dtype"],
                                                  _variant(r["config"]) == "first_step",
                                                  _variant(r["config"]) == "with_grad")
        return (r["status"] != "ok", not canonical, r["cell"])
    out: dict[tuple, dict] = {}
    for r in sorted((r for r in _records(view, "measured") if r["config"].get("size") == size), key=rank):
        k = r["config"]
        out.setdefault((k["ctx"], k["mode"], k["dtype"], _variant(k)), r)
    return out


def _estimated_by_key(view: SectionView, size: str) -> dict[tuple, dict]:
    """One ok estimated record per (ctx, mode, dtype) of the edition's model."""
    return {(r["config"]["ctx"], r["config"]["mode"], r["config"]["dtype"]): r
            for r in _records(view, "estimated") if r["status"] == "ok" and r["config"]["size"] == size}


def _grid(est: dict[tuple, dict], meas: dict[tuple, dict], contexts, batch: int, cfg, swiglu: bool) -> list[dict]:
    rows = []
    for ctx in contexts:
        formula = acc.peak_memory_bytes(cfg, batch, ctx, swiglu)
        for mode in MODES:
            for dtype in DTYPES:
                e = est.get((ctx, mode, dtype))
                variants = [""] + sorted({v for (c, m, d, v) in meas if (c, m, d) == (ctx, mode, dtype) and v})
                for variant in variants:
                    em = None
                    if e is not None:
                        em = e["metrics"] if not variant else (e["metrics"].get("variants") or {}).get(variant)
                    mr = meas.get((ctx, mode, dtype, variant))
                    m = None
                    if mr is not None:
                        m = {"status": mr["status"], "error": mr.get("error"), "cell": mr["cell"],
                             "ingested": bool(mr["config"].get("ingested"))}
                        if mr["status"] == "ok":
                            mm = mr["metrics"]
                            m.update(peak=mm["peak_active_bytes"], reserved=mm["peak_reserved_bytes"],
                                     max_allocated=mm.get("max_allocated_bytes"), phase=mm.get("peak_phase"))
                    rows.append({
                        "ctx": ctx, "mode": mode, "dtype": dtype, "variant": variant,
                        "est": None if em is None else {"peak": em["peak_bytes"], "phase": em.get("peak_phase"),
                                                         "breakdown": em["breakdown"],
                                                         "weight_copies": em.get("weight_copies_bytes", 0)},
                        "meas": m,
                        "ratio": (m["peak"] / em["peak_bytes"]) if em and m and m.get("peak") else None,
                        "formula": formula["total"] if mode == "train" else formula["parameters"],
                        "formula_kind": "A-a total (fp32)" if mode == "train" else "parameters (fp32)",
                    })
    return rows


def _canonical(rows, ctx, mode, dtype):
    return next((r for r in rows if (r["ctx"], r["mode"], r["dtype"], r["variant"]) == (ctx, mode, dtype, "")), None)


def _measured_pair(a, b) -> dict | None:
    ma, mb = a["meas"], b["meas"]
    if ma and mb and ma.get("peak") and mb.get("peak"):
        return {"fp32": ma["peak"], "bf16": mb["peak"], "rel": mb["peak"] / ma["peak"] - 1}
    return None


def _precision_pairs(rows, contexts):
    """(ctx, mode, fp32 row, bf16 row) of the grid, for every context and mode that has both rows."""
    for ctx in contexts:
        for mode in MODES:
            a, b = _canonical(rows, ctx, mode, "fp32"), _canonical(rows, ctx, mode, "bf16")
            if a and b:
                yield ctx, mode, a, b


def _mixed_measured_only(rows, contexts) -> list[dict]:
    """M-c where both precisions were measured but not estimated (snapshots ingested, no estimate run)."""
    out = []
    for ctx, mode, a, b in _precision_pairs(rows, contexts):
        pair = None if (a["est"] and b["est"]) else _measured_pair(a, b)
        if pair:
            out.append({"ctx": ctx, "mode": mode, **pair})
    return out


def _mixed_precision(rows, contexts) -> list[dict]:
    """M-c: bf16 against fp32, per context and mode (estimated; measured when both exist)."""
    out = []
    for ctx, mode, a, b in _precision_pairs(rows, contexts):
        if a["est"] and b["est"]:
            ea, eb = a["est"], b["est"]
            row = {"ctx": ctx, "mode": mode, "fp32": ea["peak"], "bf16": eb["peak"], "delta": eb["peak"] - ea["peak"],
                   "rel": eb["peak"] / ea["peak"] - 1,
                   "act_fp32": ea["breakdown"]["activations"], "act_bf16": eb["breakdown"]["activations"],
                   "tmp_fp32": ea["breakdown"]["temporaries"], "tmp_bf16": eb["breakdown"]["temporaries"],
                   "weight_copies": eb["weight_copies"], "measured": _measured_pair(a, b)}
            out.append(row)
    return out


def _estimated_metrics(est: dict[tuple, dict], mode: str) -> dict[int, dict[str, dict]]:
    cells: dict[int, dict[str, dict]] = {}
    for (ctx, mode_, dtype), r in est.items():
        if mode_ == mode:
            cells.setdefault(ctx, {})[dtype] = r["metrics"]
    return cells


def _measured_metrics(chosen: dict[tuple, dict], mode: str) -> dict[int, dict[str, dict]]:
    cells: dict[int, dict[str, dict]] = {}
    for (ctx, mode_, dtype, variant), r in chosen.items():
        if r["status"] == "ok" and mode_ == mode and not variant:
            cells.setdefault(ctx, {})[dtype] = r["metrics"]
    return cells


def _phase_story(m: dict | None) -> dict | None:
    """Numbers that describe a timeline: start, highest point of each phase, end."""
    if not m:
        return None
    return {"initial": m["initial_bytes"], "final": m["final_bytes"], "peak": m["peak_bytes"],
            "peak_phase": m.get("peak_phase"), "phases": m.get("phase_peaks", {}), "breakdown": m["breakdown"],
            "weight_copies": m.get("weight_copies_bytes", 0)}


def _top(view, est: dict[tuple, dict], chosen: dict[tuple, dict], ctxs) -> dict:
    """M-e: the largest allocations, measured (snapshot frames) and estimated (model lines / backward nodes)."""
    out = {"measured": None, "estimated": None}
    order = [(ctx, mode, dtype) for ctx in sorted(ctxs, reverse=True) for mode in ("train", "forward")
             for dtype in DTYPES]
    meas = {key[:3]: r for key, r in chosen.items() if r["status"] == "ok" and not key[3]}
    variants = {key[:3]: r for key, r in sorted(chosen.items(), key=lambda kv: kv[0][3], reverse=True)
                if r["status"] == "ok" and key[3]}
    pool = meas or variants  # canonical measurements first; else an ingested variant (first step, with autograd)
    for key in order:
        r = pool.get(key)
        if r is not None:
            out["measured"] = {"ctx": key[0], "mode": key[1], "dtype": key[2], "cell": r["cell"],
                               "variant": _variant(r["config"]),
                               "rows": [{**a, "where": _source_label(a["frame"])} for a in r["metrics"]["top_allocations"]],
                               "provenance": view.provenance([r])["line"]}
            break
    for key in order:
        if key in est:
            r = est[key]
            out["estimated"] = {"ctx": key[0], "mode": key[1], "dtype": key[2],
                                "rows": [{**a, "where": _source_label(a["source"])}
                                         for a in r["metrics"]["top_allocations"]],
                                "provenance": view.provenance([r])["line"]}
            break
    return out


def _in_grid(chosen: dict[tuple, dict], contexts) -> set[str]:
    """Cells of the measured records the peak table shows (one per configuration and variant)."""
    return {r["cell"] for key, r in chosen.items() if key[0] in contexts}


def _other_snapshots(view, chosen: dict[tuple, dict], contexts) -> list[dict]:
    """Measured records the grid does not show: other configurations, or further snapshots of one."""
    out = []
    shown = _in_grid(chosen, contexts)
    for r in _records(view, "measured"):
        k = r["config"]
        if r["status"] != "ok" or r["cell"] in shown:
            continue
        m = r["metrics"]
        out.append({"cell": r["cell"], "config": k, "peak": m["peak_active_bytes"], "reserved": m["peak_reserved_bytes"],
                    "initial": m["initial_active_bytes"], "events": m["trace_events"], "phase": m.get("peak_phase"),
                    "file": (m.get("source_file") or {}).get("path"), "provenance": view.provenance([r])["line"],
                    "top": [{**a, "where": _source_label(a["frame"])} for a in m["top_allocations"][:5]]})
    return out


def _viewers(view) -> list[dict]:
    out = []
    for r in _records(view, "measured"):
        name = (r.get("artifacts") or {}).get("viewer")
        if r["status"] == "ok" and name and r.get("_path"):
            p = store.artifacts_dir(Path(r["_path"])) / name
            try:
                shown = os.path.relpath(p)
            except ValueError:
                shown = str(p)
            if shown.startswith(".."):
                shown = str(p.resolve())
            out.append({"cell": r["cell"], "path": shown})
    return out


def _cpu_checks(view) -> dict:
    rows = []
    for r in _records(view, "cpu_check"):
        if r["status"] != "ok":
            continue
        m, k = r["metrics"], r["config"]
        rows.append({"size": k["size"], "ctx": k["ctx"], "mode": k["mode"], "dtype": k["dtype"],
                     "estimated": m["estimated_peak_bytes"], "measured": m["measured_peak_bytes"],
                     "error": m["relative_error"], "ok": abs(m["relative_error"]) <= CHECK_TOLERANCE})
    rows.sort(key=lambda x: (x["size"], x["mode"], x["dtype"]))
    recs = [r for r in _records(view, "cpu_check") if r["status"] == "ok"]
    return {"rows": rows, "all_ok": bool(rows) and all(x["ok"] for x in rows),
            "max_error": max((abs(x["error"]) for x in rows), default=None), "tolerance": CHECK_TOLERANCE,
            "provenance": view.provenance(recs)["line"] if recs else None}


SAME_PEAK_REL = 0.005  # |bf16 - fp32| / fp32 below this reads as "the same peak" (tables round to 0.01 GiB)


def _direction(m: dict) -> str:
    """How bf16 autocast moves one peak: "lower", "same" or "higher"."""
    if abs(m["rel"]) < SAME_PEAK_REL:
        return "same"
    return "lower" if m["delta"] < 0 else "higher"


def _figures(view, size, est: dict[tuple, dict], chosen: dict[tuple, dict], ed_contexts) -> dict:
    from lmreport.report.sections import _memory_figures as figs
    out = {"estimated": dict.fromkeys(MODES), "measured": dict.fromkeys(MODES), "peaks": None, "snapshots": []}
    for mode in MODES:
        cells = _estimated_metrics(est, mode)
        if cells:
            what = "forward (inference)" if mode == "forward" else "training step"
            fig = figs.estimated_timelines(cells, f"{size}, {what}: estimated memory by category")
            out["estimated"][mode] = view.save_figure(fig, f"estimated-{mode}")
        mcells = _measured_metrics(chosen, mode)
        if mcells:
            what = "forward" if mode == "forward" else "training step"
            fig = figs.measured_timelines(mcells, f"{size}, {what}: measured active memory (CUDA snapshots)")
            out["measured"][mode] = view.save_figure(fig, f"measured-{mode}")
    series = []
    for source, pool in (("estimated", est), ("measured", chosen)):
        for mode in MODES:
            for dtype in DTYPES:
                pts = sorted((r["config"]["ctx"], r["metrics"]["peak_bytes" if source == "estimated" else "peak_active_bytes"])
                             for r in pool.values() if r["status"] == "ok"
                             and r["config"]["mode"] == mode and r["config"]["dtype"] == dtype
                             and not _variant(r["config"]))
                if pts:
                    series.append({"label": f"{source} {mode} {dtype}", "ctx": [p[0] for p in pts],
                                   "peak_bytes": [p[1] for p in pts], "measured": source == "measured"})
    if series:
        out["peaks"] = view.save_figure(figs.peaks_by_context(series), "peaks")
    shown = _in_grid(chosen, ed_contexts)
    for r in _records(view, "measured"):
        k = r["config"]
        if r["status"] == "ok" and (_variant(k) or r["cell"] not in shown):
            fig = figs.measured_timeline(r["metrics"], f"{r['cell']}: measured active memory")
            # file names without dots ("2.7B" -> "2_7B"), as plain to any Markdown or Typst reader as the others
            path = view.save_figure(fig, "snapshot-" + r["cell"].replace(".", "_"))
            out["snapshots"].append({"cell": r["cell"], "path": path})
    return out


def _checkpointing(view: SectionView, size: str, cfg, base: int) -> dict | None:
    """2026 (f): what one block saves, its gradients, and single-level activation checkpointing.

    base: the bytes every step holds whatever the checkpointing (fp32 weights, gradients, m, v)."""
    import math
    blocks = sorted((r for r in _records(view, "block") if r["status"] == "ok" and r["config"]["size"] == size),
                    key=lambda r: r["config"]["ctx"])
    ck = sorted((r for r in _records(view, "checkpointing") if r["status"] == "ok" and r["config"]["size"] == size),
                key=lambda r: r["config"]["checkpoint_every"])
    if not blocks and not ck:
        return None
    block_rows = []
    for r in blocks:
        m = r["metrics"]
        total = m["saved_activation_bytes"]
        block_rows.append({"ctx": r["config"]["ctx"], "batch": r["config"]["batch"], "saved": total,
                           "weights_reused": m["saved_parameter_bytes"], "input": m["block_input_bytes"],
                           "gradient": m["gradient_bytes"], "params": m["block_parameters"],
                           "top": [{**t, "share": t["bytes"] / total} for t in m["top_nodes"]]})
    out = {"blocks": block_rows, "rows": [], "best": None, "predicted_k": None, "ctx": None,
           "budget": view.edition.memory_budget_bytes, "layers": cfg.num_layers,
           "provenance": view.provenance(ck or blocks)["line"],
           "block_provenance": view.provenance(blocks)["line"] if blocks else None}
    if not ck:
        return out
    ctx = ck[0]["config"]["ctx"]
    out["ctx"] = ctx
    ref = next((b for b in block_rows if b["ctx"] == ctx), None)
    if ref:
        out["predicted_k"] = math.sqrt(cfg.num_layers * ref["input"] / ref["saved"])
        out["base"] = base
    for r in ck:
        k, m = r["config"]["checkpoint_every"], r["metrics"]
        model = base + cfg.num_layers // k * ref["input"] + k * ref["saved"] if (ref and k) else None
        out["rows"].append({"k": k, "groups": cfg.num_layers // k if k else None, "peak": m["peak_bytes"],
                            "phase": m["peak_phase"], "model": model, "fits": m["peak_bytes"] <= out["budget"]})
    with_ck = [x for x in out["rows"] if x["k"]]
    if with_ck:
        best = min(with_ck, key=lambda x: x["peak"])
        i = with_ck.index(best)
        out["best"] = best
        out["neighbours"] = [x for x in with_ck[max(0, i - 1):i + 2] if x is not best]
        out["none"] = next((x for x in out["rows"] if not x["k"]), None)
    return out


def build(view: SectionView) -> dict:
    # Each record is checked once, here (one warning per unusable record); the helpers read the rest.
    view = dataclasses.replace(view, records=[r for r in view.records if _usable(r)])
    ed = view.edition
    size, contexts = view.profile.memory_cells(ed)
    cfg = ed.study_models[size]
    batch = ed.batch_size
    contexts = list(contexts)
    swiglu = ed.swiglu_activations
    est, chosen = _estimated_by_key(view, size), _measured_by_key(view, size)
    rows = _grid(est, chosen, contexts, batch, cfg, swiglu)
    est_recs = [r for r in _records(view, "estimated") if r["status"] == "ok"]
    meas_all = _records(view, "measured")
    meas_ok = [r for r in meas_all if r["status"] == "ok"]
    skipped = [r for r in meas_all if r["status"] == "skipped"]
    largest = max(contexts)
    est_metrics = {mode: _estimated_metrics(est, mode) for mode in MODES}
    stories = {mode: {dtype: _phase_story(est_metrics[mode].get(largest, {}).get(dtype)) for dtype in DTYPES}
               for mode in MODES}
    smallest_story = {mode: _phase_story(est_metrics[mode].get(min(contexts), {}).get("fp32")) for mode in MODES}
    first_vs_steady = [
        {"ctx": r["ctx"], "dtype": r["dtype"], "steady": r["est"]["peak"], "steady_phase": r["est"]["phase"],
         "first": f["est"]["peak"], "first_phase": f["est"]["phase"]}
        for r in rows if r["mode"] == "train" and r["variant"] == "" and r["est"]
        for f in [_est_variant(est, r["ctx"], "train", r["dtype"], "first_step")] if f]
    with_grad = [
        {"ctx": r["ctx"], "dtype": r["dtype"], "inference": r["est"]["peak"], "grad": f["est"]["peak"]}
        for r in rows if r["mode"] == "forward" and r["variant"] == "" and r["est"]
        for f in [_est_variant(est, r["ctx"], "forward", r["dtype"], "with_grad")] if f]
    residual = [{"ctx": t, "bytes": acc.residual_activation_bytes(ed.residual_batch, t, cfg.d_model),
                 "batch": ed.residual_batch} for t in ed.residual_contexts]
    mixed = _mixed_precision(rows, contexts)
    for m in mixed:
        m["direction"] = _direction(m)
    mixed_summary = {mode: {way: [str(m["ctx"]) for m in mixed if m["mode"] == mode and m["direction"] == way]
                            for way in ("lower", "same", "higher")} for mode in MODES}
    # M-c "whether it matters": how much of each fp32 training peak is what autocast leaves in fp32
    # (weights, gradients, AdamW's m and v: 16 bytes per parameter)
    state_bytes = acc.training_state_bytes(cfg)
    state_share = [{"ctx": r["ctx"], "share": state_bytes / r["est"]["peak"]} for r in rows
                   if r["mode"] == "train" and r["dtype"] == "fp32" and not r["variant"] and r["est"]]
    sizes = {"ffn_weight": 4 * cfg.d_model * cfg.d_ff, "embedding": 4 * cfg.vocab_size * cfg.d_model,
             "attn_weight": 4 * cfg.d_model * cfg.d_model,
             "scores": [{"ctx": t, "bytes": 4 * batch * cfg.num_heads * t * t} for t in contexts]}
    return {
        "edition": ed, "size": size, "cfg": cfg, "batch": batch, "contexts": contexts, "largest": largest,
        "params": acc.parameter_count(cfg), "rows": rows,
        "has_estimates": bool(est_recs), "has_measured": bool(meas_ok),
        "skipped": {"count": len(skipped), "reason": skipped[0]["error"] if skipped else None},
        "estimated_line": view.provenance(est_recs)["line"] if est_recs else None,
        # a model `meta` cannot build was built under FakeTensorMode (estimate/memory.py): say so and why
        "estimate_fallbacks": sorted({r["metrics"].get("fallback") for r in est_recs} - {None}),
        "measured_line": view.provenance(meas_ok)["line"] if meas_ok else None,
        "grid_line": view.provenance(est_recs + meas_ok)["line"] if (est_recs or meas_ok) else view.provenance([])["line"],
        "mixed": mixed, "mixed_summary": mixed_summary, "sizes": sizes,
        "mixed_measured": _mixed_measured_only(rows, contexts),
        "has_ratio": any(r["ratio"] for r in rows),
        "state_bytes": state_bytes, "state_share": state_share,
        "stories": stories, "smallest_story": smallest_story,
        "first_vs_steady": first_vs_steady, "with_grad": with_grad,
        "top": _top(view, est, chosen, contexts),
        "others": _other_snapshots(view, chosen, contexts),
        "viewers": _viewers(view),
        "checks": _cpu_checks(view),
        "figures": _figures(view, size, est, chosen, contexts),
        "ckpt": _checkpointing(view, size, cfg, state_bytes), "ckpt_edition": ed.year in CHECKPOINT_EDITIONS,
        "residual": residual,
        "formula_latex": acc.latex(acc.memory_exprs(swiglu)["total"]),
        "run_command": view.run_command(),
        "gpu_command": view.run_command(prof=view.gpu_profile),
        "ingest_command": f"lmreport ingest memory FILE --size {size} --ctx N --mode forward|train --dtype fp32|bf16",
    }


def _est_variant(est: dict[tuple, dict], ctx, mode, dtype, variant) -> dict | None:
    r = est.get((ctx, mode, dtype))
    v = (r["metrics"].get("variants") or {}).get(variant) if r else None
    if not v:
        return None
    return {"est": {"peak": v["peak_bytes"], "phase": v.get("peak_phase"), "breakdown": v["breakdown"]}}
