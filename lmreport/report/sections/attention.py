"""Attention section (At-a, C-a): timings or OOM per (d, T), memory against the formulas,
eager against compiled, and why the fused kernel needs no T x T memory.

Formulas (accounting.attention_memory_*) need no records, so the memory accounting and the
out-of-memory answer always render (on an 80 GB GPU by formula when no GPU ran); the records
of `lmreport run attention` add the measured rows, the comparisons and the plots.
"""

from __future__ import annotations

import math
import statistics

import sympy as sp

from lmreport import accounting as acc
from lmreport.presets import ATTENTION_HANDOUT_GRID
from lmreport.presets import ATTENTION_OOM_PROBE as OOM_PROBE  # a cell sized to run out of memory on any GPU
from lmreport.presets import ATTENTION_VARIANTS as VARIANTS
from lmreport.report.context import SectionView
from lmreport.report.sections import _records
from lmreport.sections import Section

SECTION = Section(
    name="attention", title="Attention at scale: eager, compiled and fused", order=60,
    experiment="lmreport.experiments.attention", report="lmreport.report.sections.attention",
    summary="naive attention timings and memory per (d, T), torch.compile, fused SDPA, memory accounting")

VARIANT_LABELS = {"eager": "eager (model's attention)", "compiled": "torch.compile", "sdpa": "fused SDPA"}
TOLERANCE = 0.10  # "measured within 10% of the formula"
_G = ATTENTION_HANDOUT_GRID  # the grid the experiment runs on a GPU (and estimates on meta)
HANDOUT_BATCH, HANDOUT_D, HANDOUT_T = _G.batch, _G.d, _G.seq_len


def _latex(expr: sp.Expr) -> str:
    if isinstance(expr, sp.Max):
        return r"\max\left(" + ", ".join(_latex(a) for a in expr.args) + r"\right)"
    return sp.latex(sp.expand(expr), symbol_names=acc.SYMBOL_LATEX)


def formula(batch: int, seq_len: int, d: int, variant: str, device: str = "cuda") -> dict[str, int]:
    """Formula bytes for a variant on the device whose kernels ran it (CUDA's softmax backward holds one
    T x T temporary more than the CPU's); the compiled one saves what eager saves (checked by its records)."""
    return acc.attention_memory_bytes(batch, seq_len, d, fused=variant == "sdpa", device=device)


def inputs_bytes(batch: int, seq_len: int, d: int, variant: str) -> int:
    """Bytes that exist before the forward: Q, K, V, the output gradient dO, and (eager) the bool mask."""
    return int(acc.attention_inputs_expr(fused=variant == "sdpa").subs({acc.B: batch, acc.T: seq_len, acc.D: d}))


def _ratio(measured, expected):
    return measured / expected if measured is not None and expected else None


def _minus(a, b):
    return a - b if a is not None and b is not None else None


def _mean(m: dict, key: str):
    s = m.get(key)
    return s.get("mean") if isinstance(s, dict) else None


def _memory_source(r: dict) -> dict:
    """Where a record's memory figures come from, and which device's formula they are compared with.

    - CUDA (`memory_allocated`): the baseline is what was allocated before the forward (Q, K, V, dO,
      the mask, and whatever the process held already: the cuBLAS workspace, ...).
    - The tracker of operator outputs (CPU cells, meta estimates): its baseline is the inputs it was
      given (`live_before_forward_bytes`; by their shapes in records older than that field). It sees
      what CPU kernels allocate; a meta estimate also gives the peak with CUDA's kernel temporaries
      (`live_peak_cuda_bytes`), compared with the CUDA formula.
    """
    c, m = r["config"], r.get("metrics") or {}
    if "allocated_before_backward_bytes" in m or "allocated_before_forward_bytes" in m:
        return {"kind": "memory_allocated", "device": "cuda", "baseline": m.get("allocated_before_forward_bytes"),
                "in_use": m.get("allocated_before_backward_bytes"), "peak": m.get("max_allocated_bytes")}
    if "live_before_backward_bytes" in m or "live_peak_bytes" in m:
        baseline = m.get("live_before_forward_bytes", inputs_bytes(c["batch"], c["seq_len"], c["d"], c["variant"]))
        if "live_peak_cuda_bytes" in m:
            return {"kind": "live tensors + CUDA kernel temporaries", "device": "cuda", "baseline": baseline,
                    "in_use": m.get("live_before_backward_bytes"), "peak": m["live_peak_cuda_bytes"]}
        return {"kind": "live tensors", "device": "cpu", "baseline": baseline,
                "in_use": m.get("live_before_backward_bytes"), "peak": m.get("live_peak_bytes")}
    device = "cuda" if (r.get("environment") or {}).get("device_type") == "cuda" else "cpu"
    return {"kind": None, "device": device, "baseline": None, "in_use": None, "peak": None}


def record_row(r: dict) -> dict:
    """One record as a table row: config, status, timings, memory measured and by formula.

    Memory is compared above the baseline (what existed before the forward), on both sides: the
    measured bytes minus the measured baseline against the formula minus the inputs it starts from
    (Q, K, V, dO, mask). So what a CUDA process held before the forward beyond the inputs (the cuBLAS
    workspace, 64 MiB on the H200 run) is reported on its own (`allocated_extra_bytes`), not folded
    into the ratio.
    """
    c, m = r["config"], r.get("metrics") or {}
    src = _memory_source(r)
    f = formula(c["batch"], c["seq_len"], c["d"], c["variant"], src["device"])
    if c["variant"] == "compiled":
        # It saves what eager saves (its records check that), but Inductor fuses the scaling, masking and
        # softmax and their backward into fewer kernels that hold fewer T x T buffers: eager's peak is not its own.
        f = {k: v for k, v in f.items() if k not in ("backward_peak", "softmax_backward_live", "end_of_backward_live")}
    baseline = src["baseline"]
    row = {
        "cell": r["cell"], "variant": c["variant"], "d": c["d"], "seq_len": c["seq_len"], "batch": c["batch"],
        "record": r,  # its environment names the device of the OOM answer
        "status": r["status"], "error": r.get("error"), "source": c.get("source", "measured"),
        "probe": c.get("purpose") == OOM_PROBE,
        "forward_ms": _mean(m, "forward_ms"), "forward_std_ms": (m.get("forward_ms") or {}).get("std"),
        "backward_ms": _mean(m, "backward_ms"), "backward_std_ms": (m.get("backward_ms") or {}).get("std"),
        "forward_median_ms": (m.get("forward_ms") or {}).get("median"),
        "backward_median_ms": (m.get("backward_ms") or {}).get("median"),
        "passes": (m.get("forward_ms") or {}).get("n"),
        "saved_bytes": m.get("saved_bytes"), "saved_formula_bytes": f["saved"],
        "formula_device": src["device"], "memory_source": src["kind"],
        "in_use_source": src["kind"] if src["in_use"] is not None else None,
        "baseline_bytes": baseline, "inputs_formula_bytes": f["inputs"],
        "in_use_bytes": src["in_use"], "in_use_formula_bytes": f["in_use_before_backward"],
        "in_use_added_bytes": _minus(src["in_use"], baseline),
        "in_use_added_formula_bytes": f["in_use_before_backward"] - f["inputs"],
        "peak_bytes": src["peak"], "peak_formula_bytes": f.get("backward_peak"),
        "peak_added_bytes": _minus(src["peak"], baseline),
        "peak_added_formula_bytes": _minus(f.get("backward_peak"), f["inputs"]),
        "first_pass_s": m.get("first_pass_s"),
        "device_total_bytes": m.get("device_total_bytes"),
        # CUDA: what memory_allocated held before the forward beyond the inputs (cuBLAS workspace, rounding).
        "allocated_extra_bytes": _minus(m.get("allocated_before_forward_bytes"), f["inputs"]),
    }
    row["saved_ratio"] = _ratio(row["saved_bytes"], row["saved_formula_bytes"])
    row["in_use_ratio"] = _ratio(row["in_use_added_bytes"], row["in_use_added_formula_bytes"])
    row["peak_ratio"] = _ratio(row["peak_added_bytes"], row["peak_added_formula_bytes"])
    return row


def _within(ratio) -> bool:
    return ratio is not None and abs(ratio - 1) <= TOLERANCE


def _table(rows: list[dict], variant: str) -> list[dict]:
    return sorted((r for r in rows if r["variant"] == variant), key=lambda r: (r["d"], r["seq_len"]))


def _comparison(rows: list[dict], a: str = "eager", b: str = "compiled") -> list[dict]:
    """Per (d, T): forward and backward of variant a and b, and a's median time over b's (b's speed-up).

    Medians, not means: one pass slowed by another process on the machine moves a mean of a few
    passes a lot and a median little.
    """
    index = {(r["variant"], r["d"], r["seq_len"]): r for r in rows}
    keys = sorted({(r["d"], r["seq_len"]) for r in rows})
    out = []
    for d, t in keys:
        ra, rb, rf = index.get((a, d, t)), index.get((b, d, t)), index.get(("sdpa", d, t))
        if ra is None and rb is None:
            continue
        row = {"d": d, "seq_len": t, "a": ra, "b": rb, "fused": rf}
        for phase in ("forward_ms", "backward_ms"):
            median = phase.replace("_ms", "_median_ms")
            ta, tb = (ra or {}).get(median), (rb or {}).get(median)
            row[f"{phase}_speedup"] = ta / tb if ta and tb else None
        out.append(row)
    return out


def _geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else None


def _speedup_summary(comp: list[dict]) -> dict:
    out = {}
    for phase in ("forward_ms", "backward_ms"):
        s = [r[f"{phase}_speedup"] for r in comp if r[f"{phase}_speedup"]]
        if not s:
            out[phase] = None
            continue
        largest = max((r for r in comp if r[f"{phase}_speedup"]), key=lambda r: (r["seq_len"], r["d"]))
        out[phase] = {"geomean": _geomean(s), "min": min(s), "max": max(s), "n": len(s),
                      "faster": sum(x > 1 for x in s), "largest": largest}
    return out


def _growth(rows: list[dict], key: str) -> list[dict]:
    """Per d: how `key` grows from the second-largest to the largest T (log-log slope)."""
    out = []
    for d in sorted({r["d"] for r in rows}):
        pts = sorted((r["seq_len"], r[key]) for r in rows if r["d"] == d and r.get(key))
        if len(pts) < 2:
            continue
        (t0, m0), (t1, m1) = pts[-2], pts[-1]
        out.append({"d": d, "t0": t0, "t1": t1, "m0": m0, "m1": m1, "factor": m1 / m0,
                    "length_factor": t1 / t0, "slope": math.log(m1 / m0) / math.log(t1 / t0)})
    return out


def _term_rows(batch: int, seq_len: int, d: int, fused: bool = False) -> list[dict]:
    return [{"name": t.name, "group": t.group, "latex": _latex(t.bytes), "bytes": n}
            for t, n in acc.attention_term_bytes(batch, seq_len, d, fused)]


def first_oom(budget_bytes: int, batch: int = HANDOUT_BATCH, ds=HANDOUT_D, seq_lens=HANDOUT_T,
              extend_to: int = 1 << 22, held_bytes: int = 0) -> dict:
    """The smallest (T, then d) configuration whose eager backward peak on CUDA, plus `held_bytes`
    the process held before the forward beyond the inputs (the cuBLAS workspace), exceeds budget_bytes.

    Looks through the handout grid first; when all of it fits, doubles T beyond the grid, and
    says so (`in_grid` False).
    """
    def peak(t, d):
        return acc.attention_memory_bytes(batch, t, d)["backward_peak"] + held_bytes

    for t in seq_lens:
        for d in sorted(ds):
            if peak(t, d) > budget_bytes:
                return {"seq_len": t, "d": d, "in_grid": True}
    t = max(seq_lens)
    while t < extend_to:
        t *= 2
        d = min(ds)
        if peak(t, d) > budget_bytes:
            return {"seq_len": t, "d": d, "in_grid": False}
    raise ValueError(f"no configuration up to T={extend_to} exceeds {budget_bytes} bytes")


def _oom_answer(view: SectionView, eager_rows: list[dict]) -> dict:
    """At-a's accounting of one of the smallest configurations that run out of memory.

    If the eager sweep recorded OOM cells, the smallest of them on that device; otherwise an
    80 GB GPU (the edition's budget) by formula. The peak is the CUDA formula's (four T x T
    matrices at softmax's backward). An out-of-memory probe (a cell sized beyond any GPU, which
    a short profile runs to prove an OOM is recorded) answers nothing about the first length
    that fails, so it is reported beside the answer, not as the answer.
    """
    ooms = sorted((r for r in eager_rows if r["status"] == "oom" and r["source"] == "measured" and not r["probe"]),
                  key=lambda r: (r["seq_len"], r["d"]))
    # What the process held before the forward beyond the inputs, measured (CUDA): it is not the attention's,
    # but the device must hold it too.
    held = max((r["allocated_extra_bytes"] for r in eager_rows if r["allocated_extra_bytes"] is not None), default=0)
    if ooms:
        r = ooms[0]
        batch, t, d = r["batch"], r["seq_len"], r["d"]
        budget = next((x["device_total_bytes"] for x in eager_rows if x.get("device_total_bytes")), None)
        device = (r["record"].get("environment") or {}).get("device")
        basis = {"kind": "measured", "device": device, "error": r["error"], "budget_bytes": budget, "in_grid": True}
        prev = [x for x in eager_rows if x["d"] == d and x["seq_len"] < t and x["status"] == "ok"]
    else:
        # Nothing ran out: by formula on the GPU that ran the sweep, else on the handout's 80 GB GPU.
        gpu = next((x for x in eager_rows if x.get("device_total_bytes")), None)
        budget = gpu["device_total_bytes"] if gpu else view.edition.memory_budget_bytes
        found = first_oom(budget, held_bytes=held)
        batch, t, d = HANDOUT_BATCH, found["seq_len"], found["d"]
        device = (gpu["record"].get("environment") or {}).get("device") if gpu else None
        basis = {"kind": "formula", "device": device, "error": None, "budget_bytes": budget, "in_grid": found["in_grid"]}
        prev = []
    totals = acc.attention_memory_bytes(batch, t, d)
    fits = acc.attention_memory_bytes(batch, t // 2, d)
    return {"batch": batch, "seq_len": t, "d": d, **basis, "terms": _term_rows(batch, t, d), "held_bytes": held,
            "end_terms": [{"name": x.name, "bytes": n} for x, n in acc.attention_term_bytes(batch, t, d, end_of_backward=True)],
            "totals": totals, "half": {"seq_len": t // 2, **fits},
            "largest_grid_peak": acc.attention_memory_bytes(HANDOUT_BATCH, max(HANDOUT_T), max(HANDOUT_D))["backward_peak"],
            "largest_grid_t": max(HANDOUT_T), "largest_grid_d": max(HANDOUT_D), "widest_d": max(HANDOUT_D),
            "widest_peak": acc.attention_memory_bytes(batch, t, max(HANDOUT_D))["backward_peak"], "last_ok": max(prev, key=lambda x: x["seq_len"]) if prev else None,
            "square_share": 4 * batch * t * t / totals["saved"],
            "probes": [{"d": x["d"], "seq_len": x["seq_len"], "batch": x["batch"], "status": x["status"], "error": x["error"],
                        "peak_bytes": acc.attention_memory_bytes(x["batch"], x["seq_len"], x["d"])["backward_peak"],
                        "square_bytes": acc.FP32_BYTES * x["batch"] * x["seq_len"] ** 2,
                        "device": (x["record"].get("environment") or {}).get("device"),
                        "budget_bytes": x.get("device_total_bytes")} for x in eager_rows if x["probe"]]}


def _legend(ax, ds, colors, styles, labels):
    """Two short legends: colour = d, line style/marker = variant (instead of one entry per line)."""
    from matplotlib.lines import Line2D
    first = ax.legend([Line2D([], [], color=colors[d], lw=1.5) for d in ds], [f"d = {d}" for d in ds],
                      loc="upper left", bbox_to_anchor=(1.0, 1.0), title="width", title_fontsize=6, fontsize=6)
    ax.add_artist(first)
    ax.legend([Line2D([], [], color="0.3", **kw) for kw in styles], labels, loc="lower left",
              bbox_to_anchor=(1.0, 0.0), fontsize=6)


def _plots(view: SectionView, rows: list[dict], estimated: list[dict], device: str) -> dict:
    """Log-log time and memory against T per d; returns Markdown paths (None when nothing to plot)."""
    measured = [r for r in rows if r["status"] == "ok"]
    out = {"time": None, "memory": None}
    if not measured and not estimated:
        return out
    from lmreport.report import plots
    ds = sorted({r["d"] for r in measured + estimated})
    colors = {d: f"C{i}" for i, d in enumerate(ds)}
    styles = {"eager": "-", "compiled": "--", "sdpa": ":"}
    markers = {"eager": "o", "compiled": "s", "sdpa": "^"}
    if measured:
        fig, axes = plots.new_figure(ncols=2, figsize=(7.2, 3.4), sharey=True)
        for ax, phase, label in zip(axes, ("forward_median_ms", "backward_median_ms"), ("forward", "backward")):
            for v in VARIANTS:
                for d in ds:
                    pts = sorted((r["seq_len"], r[phase]) for r in measured if r["variant"] == v and r["d"] == d and r[phase])
                    if pts:
                        ax.plot(*zip(*pts), styles[v], marker=markers[v], color=colors[d], ms=3, lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T")
            ax.set_title(f"{label} pass", fontsize=8)
        axes[0].set_ylabel("median time per pass (ms)")
        _legend(axes[1], ds, colors, [{"ls": styles[v], "marker": markers[v], "ms": 3} for v in VARIANTS],
                [VARIANT_LABELS[v] for v in VARIANTS])
        fig.suptitle(f"Attention time, batch {measured[0]['batch']} ({device})", fontsize=8)
        out["time"] = view.save_figure(fig, "time")
    fig, ax = plots.new_figure(figsize=(6.4, 3.6))
    for d in ds:
        for v in ("eager", "sdpa"):
            pts = sorted((r["seq_len"], r["saved_bytes"] / acc.MIB) for r in measured
                         if r["variant"] == v and r["d"] == d and r["saved_bytes"])
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker=markers[v], color=colors[d], ms=4)
        pts = sorted((r["seq_len"], r["saved_bytes"] / acc.MIB) for r in estimated if r["d"] == d and r["saved_bytes"])
        if pts:
            ax.plot(*zip(*pts), linestyle="none", marker="x", color=colors[d], ms=5)
        ts = sorted({r["seq_len"] for r in measured + estimated if r["d"] == d})
        if ts:
            grid = [2 ** e for e in range(int(math.log2(min(ts))), int(math.log2(max(ts))) + 1)]
            for v in ("eager", "sdpa"):
                ax.plot(grid, [formula(HANDOUT_BATCH, t, d, v)["saved"] / acc.MIB for t in grid], styles[v],
                        color=colors[d], lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("saved for backward (MiB)")
    ax.set_title(f"Memory saved for backward, batch {HANDOUT_BATCH}", fontsize=8)
    _legend(ax, ds, colors, [{"ls": "none", "marker": "o"}, {"ls": "none", "marker": "^"}, {"ls": "none", "marker": "x"},
                             {"ls": "-"}, {"ls": ":"}],
            ["eager, measured", "fused SDPA, measured", "eager, meta device", "eager formula", "fused formula"])
    out["memory"] = view.save_figure(fig, "memory")
    return out


CONFIG_KEYS = ("d", "seq_len", "batch", "variant")  # the record contract of this section


def record_problem(r: dict) -> str | None:
    """Why an attention record cannot be shown (None when it can)."""
    why, c, m = _records.config_and_metrics(r, CONFIG_KEYS)
    if why:
        return why
    if c["variant"] not in VARIANTS:
        return f"unknown variant {c['variant']!r}"
    if not all(isinstance(c[k], int) and c[k] > 0 for k in ("d", "seq_len", "batch")):
        return "d, seq_len and batch must be positive integers"
    if r["status"] != "ok":
        return None
    if c.get("source", "measured") == "estimated":
        return _records.missing_keys(m, ("saved_bytes",), "metrics")
    return _records.bad_stats(m, "forward_ms") or _records.bad_stats(m, "backward_ms") \
        or _records.missing_keys(m, ("saved_bytes",), "metrics")


def build(view: SectionView) -> dict:
    records = _records.readable(view.records, record_problem)
    rows = [record_row(r) for r in records]
    measured = [r for r in rows if r["source"] == "measured"]
    estimated = sorted((r for r in rows if r["source"] == "estimated" and r["status"] == "ok"),
                       key=lambda r: (r["d"], r["seq_len"]))
    tables = {v: _table(measured, v) for v in VARIANTS}
    checked = [r for r in measured + estimated if r["status"] == "ok"]
    comp = _comparison(measured)
    measured_records = [r for r in records if r["config"].get("source") != "estimated"]
    # Cells this machine could not run (CUDA cells on a CPU) are not measurements: the chapter says why they
    # are missing instead of describing a sweep that did not happen.
    ran = [r for r in measured if r["status"] != "skipped"]
    ran_records = [r["record"] for r in ran]
    skipped = [r for r in measured if r["status"] == "skipped"]
    estimated_records = [r for r in records if r["config"].get("source") == "estimated"]
    ok_eager = [r for r in tables["eager"] if r["status"] == "ok"]
    ok_fused = [r for r in tables["sdpa"] if r["status"] == "ok"]
    fused_index = {(r["d"], r["seq_len"]): r for r in ok_fused}
    longest = max((r["seq_len"] for r in ok_eager if (r["d"], r["seq_len"]) in fused_index), default=None)
    removal_rows = [{"d": r["d"], "seq_len": r["seq_len"], "eager": r, "fused": fused_index[(r["d"], r["seq_len"])],
                     "factor": r["saved_bytes"] / fused_index[(r["d"], r["seq_len"])]["saved_bytes"]}
                    for r in ok_eager if r["seq_len"] == longest and r["saved_bytes"]
                    and fused_index[(r["d"], r["seq_len"])]["saved_bytes"]]
    compiled_ok = [r for r in tables["compiled"] if r["status"] == "ok"]
    compile_times = [r["first_pass_s"] for r in compiled_ok if r["first_pass_s"] is not None]
    devices = view.provenance(ran_records)["devices"] if ran_records else []
    on_cuda = any(r["in_use_source"] == "memory_allocated" for r in measured)
    extras = [r["allocated_extra_bytes"] for r in measured if r["allocated_extra_bytes"] is not None]
    exprs = {k: _latex(e) for k, e in acc.attention_memory_exprs().items()}
    fused_exprs = {k: _latex(e) for k, e in acc.attention_memory_exprs(fused=True).items()}
    return {
        "grid": {"batch": HANDOUT_BATCH, "d": HANDOUT_D, "seq_len": HANDOUT_T},
        "measured_grid": {"d": sorted({r["d"] for r in ran}), "seq_len": sorted({r["seq_len"] for r in ran}),
                          "batch": ran[0]["batch"] if ran else None,
                          "passes": next((r["passes"] for r in ran if r["passes"]), None)},
        "has_measured": bool(ran),
        "skipped": {"count": len(skipped), "reason": skipped[0]["error"] if skipped else None},
        "on_cuda": on_cuda,
        "allocated_extra": {"min": min(extras), "max": max(extras)} if extras else None,
        "devices": devices,
        "labels": VARIANT_LABELS,
        "tables": tables,
        "not_run_variants": [v for v in VARIANTS if not tables[v]],
        "estimated": estimated,
        "comparison": comp,
        "speedup": _speedup_summary(comp),
        "fused_speedup": _speedup_summary(_comparison(measured, "eager", "sdpa")),
        "compile": {"first_s": max(compile_times) if compile_times else None,
                    "rest_median_s": statistics.median(sorted(compile_times)[:-1]) if len(compile_times) > 1 else None,
                    "cells": len(compile_times),
                    "saved_same": all(r["saved_ratio"] and abs(r["saved_ratio"] - 1) <= TOLERANCE for r in compiled_ok)},
        "checks": {"n": len([r for r in checked if r["saved_ratio"] is not None]),
                   "within": sum(_within(r["saved_ratio"]) for r in checked),
                   "in_use_n": sum(r["in_use_ratio"] is not None for r in checked),
                   "in_use_within": sum(_within(r["in_use_ratio"]) for r in checked),
                   "peak_n": sum(r["peak_ratio"] is not None for r in checked),
                   "peak_within": sum(_within(r["peak_ratio"]) for r in checked),
                   "worst": max((abs(r["saved_ratio"] - 1) for r in checked if r["saved_ratio"]), default=None)},
        "tolerance": TOLERANCE,
        "formulas": {"eager": exprs, "fused": fused_exprs,
                     "cuda_temporaries": [{"op": k.op, "term": k.term, "source": k.source}
                                          for k in acc.CUDA_KERNEL_TEMPORARIES],
                     "eager_terms": [{"name": t.name, "group": t.group, "latex": _latex(t.bytes)}
                                     for t in acc.attention_memory_terms()],
                     "end_terms": [{"name": t.name, "latex": _latex(t.bytes)} for t in acc.attention_end_of_backward_terms()],
                     "fused_terms": [{"name": t.name, "group": t.group, "latex": _latex(t.bytes)}
                                     for t in acc.attention_memory_terms(fused=True)]},
        "oom": _oom_answer(view, tables["eager"]),
        "growth": {"measured": _growth(ok_eager, "saved_bytes"), "estimated": _growth(estimated, "saved_bytes"),
                   "formula": [{"t": t, "bytes": formula(HANDOUT_BATCH, t, 16, "eager")["saved"]} for t in HANDOUT_T]},
        "removal": {"measured": removal_rows,
                    "handout": {"eager": formula(HANDOUT_BATCH, max(HANDOUT_T), 64, "eager"),
                                "fused": formula(HANDOUT_BATCH, max(HANDOUT_T), 64, "sdpa"),
                                "seq_len": max(HANDOUT_T), "d": 64}},
        "figures": _plots(view, measured, estimated, "; ".join(devices)),
        "provenance": {"measured": view.provenance(measured_records)["line"],
                       "estimated": view.provenance(estimated_records)["line"],
                       "formula": view.provenance([])["line"]},
        "run_command": view.run_command(),
        "gpu_command": view.run_command(prof=view.gpu_profile),
    }
