"""Benchmark section: tables per mode and precision, plots, and the answers B-a..B-c and C-b.

Reads the bench records (lmreport/experiments/bench.py): the grid (every size x context x
mode x precision), the warm-up ablation (whose row at the grid's own warm-up count is the grid's
cell), the torch.compile cells and the matmul peaks. The
helpers `grid_rows` and `bf16_comparison` are also used by the precision section (P-c).
Without records the section still shows what the script does and the peak table.
"""

from __future__ import annotations

import statistics

from lmreport import accounting as acc
from lmreport import peaks
from lmreport.experiments.bench import (COMPILE_MODES, MODE_PHASES, PHASE_METRICS, ablation_warmups, cell_name,
                                       matmul_cell_name)
from lmreport.report.context import SectionView
from lmreport.report.sections import _records
from lmreport.sections import Section

SECTION = Section(
    name="bench", title="End-to-end benchmark", order=30,
    experiment="lmreport.experiments.bench", report="lmreport.report.sections.bench",
    summary="forward / backward / training-step times, warm-up ablation, bf16, torch.compile, MFU",
    measures_model=True)

MODE_TITLES = {"forward": "forward", "forward_backward": "forward + backward", "train": "full training step"}
DTYPE_TITLES = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
STATUS_LABELS = {"ok": "ok", "oom": "OOM", "error": "error", "skipped": "skipped"}
SAME_BAND = 0.05  # speedups within 5% of each other count as "about the same" (P-c trend)
SLOW_FIRST_STEP = 1.2  # a first step 20% above the median of the others counts as "slower" in B-c
# B-c compares cells that differ only in their warm-up count, so their steady steps (the median
# after the first) should agree; when they differ by more than this factor the machine's load
# changed between the cells, and the sentence says so instead of crediting warm-up.
STEADY_SPREAD = 1.5


# --- records -> rows ------------------------------------------------------------------------

STEP_CONFIG = ("size", "ctx", "batch", "mode", "dtype", "warmup", "steps")
MATMUL_CONFIG = ("device", "dtype", "n")


def record_problem(r: dict) -> str | None:
    """Why a bench record cannot be shown (None when it can): the record contract of the section."""
    why, c, m = _records.config_and_metrics(r, ("experiment",))
    if why:
        return why
    if c["experiment"] == "matmul":
        why = _records.missing_keys(c, MATMUL_CONFIG, "config")
        if why is None and r["status"] == "ok":
            why = _records.missing_keys(m, ("tflops", "median_tflops"), "metrics")
        return why
    if c["experiment"] != "step":
        return f"unknown bench experiment {c['experiment']!r}"
    why = _records.missing_keys(c, STEP_CONFIG, "config")
    if why:
        return why
    if c["mode"] not in MODE_TITLES or c["dtype"] not in DTYPE_TITLES:
        return f"unknown mode {c['mode']!r} or dtype {c['dtype']!r}"
    if r["status"] != "ok":
        return None
    for key in ("step_ms", *(PHASE_METRICS[p] for p in MODE_PHASES[c["mode"]])):
        why = _records.bad_stats(m, key)
        if why:
            return why
    return None


def contract_records(records: list[dict], warn: bool = True) -> list[dict]:
    """The bench records the report can read; the others are skipped (with a warning naming the file)."""
    return _records.readable(records, record_problem, warn=warn)


def kind_of(r: dict) -> str:
    """grid, ablation, compiled or matmul, from the record's config and name."""
    c = r["config"]
    if c.get("experiment") == "matmul":
        return "matmul"
    if c.get("compiled"):
        return "compiled"
    if r["cell"] == cell_name(c["size"], c["ctx"], c["mode"], c["dtype"], warmup=c["warmup"]):
        return "ablation"
    return "grid"


def size_order(view: SectionView, records: list[dict]) -> list[str]:
    """The profile's sizes in table order, then any other size found in the records."""
    names = list(view.profile.models(view.edition))
    for r in records:
        s = r["config"].get("size")
        if s and s not in names:
            names.append(s)
    return names


def _cv(stats: dict | None) -> float | None:
    if not stats or not stats.get("mean"):
        return None
    return stats["std"] / stats["mean"]


def row_of(r: dict) -> dict:
    """One table row from a step record (any status)."""
    c, m = r["config"], r["metrics"]
    ok = r["status"] == "ok"
    return {
        "cell": r["cell"], "size": c["size"], "ctx": c["ctx"], "mode": c["mode"], "dtype": c["dtype"],
        "warmup": c["warmup"], "steps": c["steps"], "batch": c["batch"], "compiled": c.get("compiled", False),
        "status": r["status"], "status_label": STATUS_LABELS[r["status"]], "error": r.get("error"), "ok": ok,
        "step": m.get("step_ms") if ok else None,
        "phases": {p: m.get(metric) for p, metric in PHASE_METRICS.items() if ok and metric in m},
        "cv": _cv(m.get("step_ms")) if ok else None,
        "first_step_ms": m.get("first_step_ms") if ok else None,
        "tokens_per_s": m.get("tokens_per_s") if ok else None,
        "achieved_tflops": m.get("achieved_tflops") if ok else None,
        "mfu": m.get("mfu") if ok else None,
        "peak_tflops": m.get("peak_tflops") if ok else None,
        "peak_source": m.get("peak_source") if ok else None,
        "flops_per_step": m.get("flops_per_step"), "flops_formula": m.get("flops_formula"),
        "first_cell_in_process": m.get("first_cell_in_process"),
        "record": r,
    }


def _sorted(rows: list[dict], sizes: list[str]) -> list[dict]:
    rank = {s: i for i, s in enumerate(sizes)}
    return sorted(rows, key=lambda row: (rank.get(row["size"], len(rank)), row["ctx"], row["warmup"]))


def grid_rows(records: list[dict], sizes: list[str]) -> list[dict]:
    return _sorted([row_of(r) for r in records if kind_of(r) == "grid"], sizes)


def _pick(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


# --- P-c (used by the precision section) ------------------------------------------------------


def bf16_comparison(view: SectionView, records: list[dict]) -> dict:
    """fp32 vs bf16 autocast step times per size, context and mode, and the trend with size."""
    sizes = size_order(view, records)
    rows = grid_rows(records, sizes)
    pairs = []
    for r32 in (r for r in rows if r["dtype"] == "fp32"):
        r16 = _pick(rows, size=r32["size"], ctx=r32["ctx"], mode=r32["mode"], dtype="bf16")
        if r16 is None:
            continue
        both = r32["ok"] and r16["ok"]
        pairs.append({"size": r32["size"], "ctx": r32["ctx"], "mode": r32["mode"], "fp32": r32, "bf16": r16,
                      "ok": both, "speedup": r32["step"]["mean"] / r16["step"]["mean"] if both else None,
                      "phase_speedups": {p: r32["phases"][p]["mean"] / r16["phases"][p]["mean"]
                                         for p in r32["phases"] if both and p in r16["phases"]}})
    trends = []
    for mode in dict.fromkeys(p["mode"] for p in pairs):
        for ctx in sorted({p["ctx"] for p in pairs if p["mode"] == mode}):
            ok = [p for p in pairs if p["mode"] == mode and p["ctx"] == ctx and p["ok"]]
            if len(ok) >= 2:
                change = ok[-1]["speedup"] / ok[0]["speedup"]
                direction = "rises" if change > 1 + SAME_BAND else "falls" if change < 1 - SAME_BAND else "stays"
                trends.append({"mode": mode, "ctx": ctx, "first": ok[0], "last": ok[-1], "direction": direction,
                               "rises": direction == "rises"})
    used = [p[d]["record"] for p in pairs for d in ("fp32", "bf16")]
    speedups = [p["speedup"] for p in pairs if p["ok"]]
    return {"pairs": pairs, "trends": trends, "records": used,
            "best": max((p for p in pairs if p["ok"]), key=lambda p: p["speedup"], default=None),
            "worst": min((p for p in pairs if p["ok"]), key=lambda p: p["speedup"], default=None),
            "faster_count": sum(s > 1 for s in speedups), "count": len(speedups), "same_band": SAME_BAND}


def bf16_speedup_figure(view: SectionView, comparison: dict) -> str | None:
    ok = [p for p in comparison["pairs"] if p["ok"]]
    if not ok:
        return None
    from lmreport.report import plots
    modes = list(dict.fromkeys(p["mode"] for p in ok))
    sizes = [s for s in size_order(view, comparison["records"]) if any(p["size"] == s for p in ok)]
    fig, axes = plots.new_figure(ncols=len(modes), sharey=True, squeeze=False,
                                 figsize=(3.2 * len(modes), 3.0))
    for ax, mode in zip(axes[0], modes):
        for ctx in sorted({p["ctx"] for p in ok if p["mode"] == mode}):
            pts = [(sizes.index(p["size"]), p["speedup"]) for p in ok if p["mode"] == mode and p["ctx"] == ctx]
            ax.plot(*zip(*pts), marker="o", label=f"ctx {ctx}")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log", base=2)  # a ratio: 2x faster and 2x slower sit symmetrically around 1
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_title(MODE_TITLES[mode])
        ax.set_xlabel("model size")
    axes[0][0].set_ylabel("fp32 time / bf16 time")
    _legend(axes[0])
    return view.save_figure(fig, "bf16-speedup")


# --- figures ----------------------------------------------------------------------------------


def _legend(axes, **kw) -> None:
    """One legend, on the last panel that has labelled lines."""
    for ax in reversed(list(axes)):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**kw)
            return


def time_vs_context_figure(view: SectionView, rows: list[dict]) -> str | None:
    ok = [r for r in rows if r["ok"]]
    if not ok:
        return None
    from lmreport.report import plots
    modes = list(dict.fromkeys(r["mode"] for r in ok))
    fig, axes = plots.new_figure(ncols=len(modes), squeeze=False, figsize=(3.2 * len(modes), 3.0))
    styles = {"fp32": "-", "bf16": "--", "fp16": ":"}
    for ax, mode in zip(axes[0], modes):
        for i, size in enumerate(dict.fromkeys(r["size"] for r in ok)):
            for dtype in dict.fromkeys(r["dtype"] for r in ok):
                pts = sorted((r["ctx"], r["step"]["mean"]) for r in ok
                             if r["mode"] == mode and r["size"] == size and r["dtype"] == dtype)
                if pts:
                    ax.plot(*zip(*pts), ls=styles.get(dtype, "-"), marker="o", color=f"C{i}",
                            label=f"{size} {dtype}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(MODE_TITLES[mode])
        ax.set_xlabel("context length")
    axes[0][0].set_ylabel("step time (ms)")
    _legend(axes[0], ncols=2)
    return view.save_figure(fig, "time-vs-context")


def ablation_figure(view: SectionView, groups: list[dict]) -> str | None:
    """Measured step times in order, one line per warm-up count, for the largest size measured."""
    measured = [g for g in groups if any(e["ok"] for e in g["by_warmup"])]
    if not measured:
        return None
    from lmreport.report import plots
    size = measured[-1]["size"]
    mine = [g for g in groups if g["size"] == size]
    fig, axes = plots.new_figure(ncols=len(mine), squeeze=False, figsize=(3.2 * len(mine), 3.0))
    for ax, g in zip(axes[0], mine):
        for e in g["by_warmup"]:
            if e["ok"]:
                samples = e["row"]["step"]["samples"]
                ax.plot(range(1, len(samples) + 1), samples, marker="o", label=f"{e['warmup']} warm-up")
        ax.set_yscale("log")
        ax.set_title(f"{size}, {MODE_TITLES[g['mode']]}")
        ax.set_xlabel("measured step")
    axes[0][0].set_ylabel("step time (ms)")
    _legend(axes[0])
    return view.save_figure(fig, "warmup-ablation")


# --- answers ----------------------------------------------------------------------------------


def tables(view: SectionView, rows: list[dict]) -> list[dict]:
    out = []
    modes = [m for m in view.profile.bench_modes if any(r["mode"] == m for r in rows)]
    modes += [m for m in dict.fromkeys(r["mode"] for r in rows) if m not in modes]
    dtypes = [d for d in view.profile.bench_dtypes if any(r["dtype"] == d for r in rows)]
    dtypes += [d for d in dict.fromkeys(r["dtype"] for r in rows) if d not in dtypes]
    for mode in modes:
        for dtype in dtypes:
            mine = [r for r in rows if r["mode"] == mode and r["dtype"] == dtype]
            if not mine:
                continue
            phases = [p for p in PHASE_METRICS if any(p in r["phases"] for r in mine)]
            out.append({"mode": mode, "dtype": dtype, "title": f"{MODE_TITLES[mode]}, {DTYPE_TITLES[dtype]}",
                        "rows": mine, "phases": phases, "all_skipped": all(r["status"] == "skipped" for r in mine),
                        "not_run": not_run(view, mine),
                        "provenance": view.provenance([r["record"] for r in mine])["line"]})
    return out


def not_run(view: SectionView, rows: list[dict]) -> list[dict]:
    """The profile's (size, context) cells of one table that have no record (a sweep cut short, a cell still
    queued): per size, the contexts, so a table of a partial run says what it lacks instead of leaving it out."""
    have = {(r["size"], r["ctx"]) for r in rows}
    out = []
    for size in view.profile.models(view.edition):
        missing = [t for t in view.profile.bench_contexts(view.edition) if (size, t) not in have]
        if missing:
            out.append({"size": size, "contexts": missing})
    return out


def peaks_used(rows: list[dict]) -> list[dict]:
    """Which datasheet peak each device's MFU was computed against (from the records, as the cells chose it)."""
    seen = {}
    for r in rows:
        if r["ok"] and r["peak_tflops"] and r["peak_source"]:
            device = (r["record"].get("environment") or {}).get("device")
            seen.setdefault((device, r["peak_source"]), {"device": device, "peak_tflops": r["peak_tflops"],
                                                         "source": r["peak_source"], "cells": 0})["cells"] += 1
    return sorted(seen.values(), key=lambda p: (p["device"] or "", p["peak_tflops"]))


def variability(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["ok"] and r["cv"] is not None and r["steps"] > 1]
    if not ok:
        return None
    worst = max(ok, key=lambda r: r["cv"])
    calm = min(ok, key=lambda r: r["cv"])
    return {"count": len(ok), "median_cv": statistics.median(r["cv"] for r in ok), "max": worst, "min": calm,
            "under_5pct": sum(r["cv"] < 0.05 for r in ok)}


def first_step_cost(rows: list[dict]) -> dict | None:
    """Each grid cell times its first warm-up step on its own: how much dearer than a measured step."""
    ratios = sorted(((r["first_step_ms"] / r["step"]["mean"], r) for r in rows
                     if r["ok"] and r["first_step_ms"] and r["step"]["mean"] and not r["compiled"]),
                    key=lambda x: x[0])  # equal ratios must not fall back to comparing the row dicts
    if not ratios:
        return None
    return {"count": len(ratios), "median": statistics.median(x for x, _ in ratios),
            "max": ratios[-1][0], "max_row": ratios[-1][1]}


def with_grid_twins(view: SectionView, rows: list[dict], grid: list[dict]) -> list[dict]:
    """The ablation's rows plus, per (size, mode), the grid's fp32 cell at the ablation's context when its warm-up
    count is one the ablation asks for (the profile's warm-up steps: the plan runs no ablation cell for that count,
    bench.ablation_warmups), marked `from_grid`.

    Runs made before that change also hold an ablation record of the same count (`...-fp32-warmup5`). The grid's
    record wins: it is the cell the plan still runs, so `--rerun` refreshes it, while the old one is never measured
    again. The old record is used only when the grid has no such cell yet (a run cut short before the grid reached
    it), so that its row is not lost."""
    out = list(rows)
    from_grid = set(view.profile.warmup_ablation) - set(ablation_warmups(view.profile))  # counts the plan runs no cell of
    for size, mode, ctx in dict.fromkeys((r["size"], r["mode"], r["ctx"]) for r in rows):
        twin = _pick(grid, size=size, ctx=ctx, mode=mode, dtype="fp32", compiled=False)
        if twin is None or twin["warmup"] not in from_grid:
            continue
        out = [r for r in out if (r["size"], r["mode"], r["ctx"], r["warmup"]) != (size, mode, ctx, twin["warmup"])]
        out.append({**twin, "from_grid": True})
    return out


def ablation(view: SectionView, records: list[dict], sizes: list[str], grid: list[dict]) -> dict | None:
    rows = [row_of(r) for r in records if kind_of(r) == "ablation"]
    if not rows:
        return None
    rows = _sorted(with_grid_twins(view, rows, grid), sizes)
    groups = []
    for size in dict.fromkeys(r["size"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["size"] == size):
            entries = []
            for r in sorted((r for r in rows if r["size"] == size and r["mode"] == mode), key=lambda r: r["warmup"]):
                e = {"warmup": r["warmup"], "ok": r["ok"], "row": r, "status_label": r["status_label"],
                     "from_grid": r.get("from_grid", False)}
                if r["ok"]:
                    samples = r["step"]["samples"]
                    rest = samples[1:] or samples
                    e.update(first_sample=samples[0], rest_median=statistics.median(rest),
                             first_ratio=samples[0] / statistics.median(rest))
                entries.append(e)
            steady = [e["rest_median"] for e in entries if e["ok"]]
            spread = max(steady) / min(steady) if len(steady) >= 2 and min(steady) > 0 else None
            groups.append({"size": size, "mode": mode, "ctx": rows[0]["ctx"], "by_warmup": entries,
                           "steady_spread": spread, "noisy": spread is not None and spread > STEADY_SPREAD})
    # The sentence of B-c: the largest size's groups, cold (fewest warm-up steps) vs warm (most).
    summary = []
    for g in (g for g in groups if g["size"] == groups[-1]["size"]):
        ok = [e for e in g["by_warmup"] if e["ok"]]
        if len(ok) >= 2:
            summary.append({"group": g, "cold": ok[0], "warm": ok[-1], "middle": ok[1:-1]})
    fresh = [r for r in rows if r["first_cell_in_process"]]
    cold = [(g, e) for g in groups for e in g["by_warmup"] if e["ok"] and e["warmup"] == 0 and len(
        e["row"]["step"]["samples"]) > 1]
    return {"groups": groups, "summary": summary, "ctx": rows[0]["ctx"],
            "warmups": sorted({r["warmup"] for r in rows}),
            "noisy": [g for g in groups if g["noisy"]], "steady_spread_limit": STEADY_SPREAD,
            "cold_slow": [{"size": g["size"], "mode": g["mode"], "ratio": e["first_ratio"]}
                          for g, e in cold if e["first_ratio"] > SLOW_FIRST_STEP],
            "cold_max_ratio": max((e["first_ratio"] for _, e in cold), default=None),
            "slow_threshold": SLOW_FIRST_STEP,
            "figure": ablation_figure(view, groups),
            "figure_size": next((g["size"] for g in reversed(groups) if any(e["ok"] for e in g["by_warmup"])), None),
            "all_fresh": all(r["first_cell_in_process"] for r in rows if r["ok"]),
            # the worker launcher runs the cells without warm-up in fresh processes (their steps are the cold start)
            "cold_fresh": bool(cold) and all(e["row"]["first_cell_in_process"] for _, e in cold),
            "fresh_cells": [r["cell"] for r in fresh],
            "grid_cells": [r["cell"] for r in rows if r.get("from_grid")],
            "provenance": view.provenance([r["record"] for r in rows])["line"]}


def compile_comparison(view: SectionView, records: list[dict], grid: list[dict], sizes: list[str]) -> dict | None:
    compiled = _sorted([row_of(r) for r in records if kind_of(r) == "compiled"], sizes)
    if not compiled:
        return None
    rows = []
    for c in compiled:
        e = _pick(grid, size=c["size"], ctx=c["ctx"], mode=c["mode"], dtype=c["dtype"])
        both = bool(e and e["ok"] and c["ok"])
        rows.append({"size": c["size"], "ctx": c["ctx"], "mode": c["mode"], "eager": e, "compiled": c, "ok": both,
                     "speedup": e["step"]["mean"] / c["step"]["mean"] if both else None})
    used = [r["compiled"]["record"] for r in rows] + [r["eager"]["record"] for r in rows if r["eager"]]
    by_mode = {}
    for m in COMPILE_MODES:
        ok = sorted((r for r in rows if r["mode"] == m and r["ok"]), key=lambda r: r["speedup"])
        if ok:
            lo, hi = ok[0]["speedup"], ok[-1]["speedup"]
            verdict = "faster" if lo > 1 + SAME_BAND else "slower" if hi < 1 - SAME_BAND else (
                "about as fast" if lo >= 1 - SAME_BAND and hi <= 1 + SAME_BAND else "faster in some cells, slower in others")
            by_mode[m] = {"rows": ok, "worst": ok[0], "best": ok[-1], "verdict": verdict}
    # C-b asks per size; a profile may time one context only (handout-2025 and -2026: 512), and then the
    # sentences name it once instead of per row
    contexts = sorted({r["ctx"] for r in rows})
    return {"rows": rows, "by_mode": by_mode, "same_band": SAME_BAND, "provenance": view.provenance(used)["line"],
            "contexts": contexts, "one_context": contexts[0] if len(contexts) == 1 else None}


def matmul_rows(view: SectionView, records: list[dict]) -> list[dict]:
    order = {d: i for i, d in enumerate(view.profile.bench_dtypes)}
    out = []
    for r in records:
        if kind_of(r) != "matmul":
            continue
        ok = r["status"] == "ok"
        out.append({"cell": r["cell"], "device": r["config"]["device"], "dtype": r["config"]["dtype"],
                    "n": r["config"]["n"], "ok": ok, "status_label": STATUS_LABELS[r["status"]],
                    "error": r.get("error"), "metrics": r["metrics"] if ok else None, "record": r})
    return sorted(out, key=lambda m: (m["device"], order.get(m["dtype"], len(order))))


def _device_type(records: list[dict]) -> str | None:
    kinds = {(r.get("environment") or {}).get("device_type") for r in records if r["status"] == "ok"}
    kinds.discard(None)
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)


def build(view: SectionView) -> dict:
    prof, ed = view.profile, view.edition
    records = contract_records(view.records)
    sizes = size_order(view, records)
    grid = grid_rows(records, sizes)
    matmuls = matmul_rows(view, records)
    models = prof.models(ed)
    skipped = [r for r in records if r["status"] == "skipped"]
    return {
        "profile": prof, "edition": ed, "batch": ed.batch_size,
        "contexts": prof.bench_contexts(ed), "modes": prof.bench_modes, "dtypes": prof.bench_dtypes,
        "mode_titles": MODE_TITLES, "dtype_titles": DTYPE_TITLES,
        "models": [{"name": n, "cfg": cfg, "params": acc.parameter_count(cfg)} for n, cfg in models.items()],
        "adamw_per_param": acc.ADAMW_FLOPS_PER_PARAMETER,
        "has_records": bool(records),
        "all_skipped": bool(records) and len(skipped) == len(records),
        "skip_reason": skipped[0]["error"] if skipped else None,
        "device_type": _device_type(records),
        "matmuls": matmuls,
        "matmul_provenance": view.provenance([m["record"] for m in matmuls])["line"] if matmuls else None,
        "tables": tables(view, grid),
        "failed": [r for r in grid if r["status"] in ("oom", "error")],
        "mfu_over_one": sorted((r for r in grid if r["mfu"] and r["mfu"] > 1), key=lambda r: -r["mfu"]),
        "mfu_count": sum(1 for r in grid if r["mfu"]),
        "variability": variability(grid),
        "first_step": first_step_cost(grid),
        "time_figure": time_vs_context_figure(view, grid),
        "ablation": ablation(view, records, sizes, grid),
        "compile": compile_comparison(view, records, grid, sizes),
        "peaks": [{"name": p.name, "tflops": p.tflops, "source": p.source} for p in peaks.PEAKS],
        "peaks_used": peaks_used(grid),
        "precisions": peaks.PRECISIONS,
        "matmul_cell": {dt: matmul_cell_name(prof.device, dt) for dt in prof.bench_dtypes},
        "run_command": view.run_command(),
        "formula_line": view.provenance([])["line"],
    }
