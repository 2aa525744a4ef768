"""Profiling section: the questions (a)-(e) answered from kernel profiles, and GPU busy/idle.

Records come from `lmreport run nsys` (Nsight Systems, or torch.profiler where nsys is missing
or `--profiler torch` asks for it), `lmreport ingest nsys` (nsys stats exports made elsewhere) or
`lmreport ingest trace` (torch.profiler traces made elsewhere); all carry the metrics of
lmreport.ingest.nsys_summary (kineto_summary writes the same shape), and `metrics.profiler`
and `metrics.activity` say what made them and whether they hold GPU kernels or, for a
torch.profiler trace of a CPU run, CPU operators (labelled so in every table). Without records
the section still gives what formulas give (matmul calls per forward pass, the FLOP ratio of
the attention matmuls to softmax) and says how to make the profiles.

Where the forward pass's kernels come from: the kernels launched inside the range "forward"
when the profile has them (nvtx_kern_sum, or the trace's launches), else every kernel of a
forward-only profile. A training step's kernels are the whole kernel summary: with nsys the
backward kernels are launched by PyTorch's autograd thread, outside the main thread's NVTX
ranges.
"""

from __future__ import annotations

from lmreport import accounting as acc
from lmreport.experiments.bench import cell_name as bench_cell_name
from lmreport.ingest.nsys_summary import class_ns
from lmreport.kernels import CLASSES
from lmreport.presets import PROFILER_VARIABLE, model_table
from lmreport.report.context import SectionView
from lmreport.report.sections import _records
from lmreport.sections import Section

SECTION = Section(
    name="nsys", title="Kernel profiles: where the GPU time goes", order=40,
    experiment="lmreport.experiments.nsys", report="lmreport.report.sections.nsys",
    summary="kernel profiles of forward and training steps (Nsight Systems or torch.profiler; ingested nsys "
            "exports or torch.profiler traces), kernels by class, GPU busy/idle",
    measures_model=True)

CONFIG_KEYS = ("size", "ctx", "mode")  # the record contract (dtype defaults to fp32)
NOTICEABLE_SHARE = 0.01  # (c): non-matmul kernels with at least 1% of the forward pass's kernel time
ATTENTION_RANGES = ("computing attention scores", "computing softmax", "final matmul")
INGEST_EXAMPLE = {"size": "small", "ctx": 512, "mode": "forward"}


KERNEL_KEYS = {"name", "full_name", "class", "total_ns", "instances"}  # nsys_summary.kernel_row


def _kernel_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(k, dict) and KERNEL_KEYS <= k.keys() and k["class"] in CLASSES
                                       for k in x)


def in_contract(r: dict) -> bool:
    """A record this section can read: config with size, integer ctx and mode; metrics as nsys_summary writes them."""
    c, m = r.get("config"), r.get("metrics")
    if not (isinstance(c, dict) and all(k in c for k in CONFIG_KEYS) and isinstance(c["ctx"], int)
            and isinstance(m, dict)):
        return False
    ranges, by_range = m.get("ranges") or {}, m.get("range_kernels") or {}
    return (_kernel_list(m.get("kernels") or []) and isinstance(ranges, dict)
            and all(isinstance(v, dict) for v in ranges.values()) and isinstance(by_range, dict)
            and all(isinstance(v, dict) and _kernel_list(v.get("kernels")) for v in by_range.values()))


def record_problem(r: dict) -> str | None:
    """Why an nsys record cannot be shown (None when it can), for _records.readable."""
    return None if in_contract(r) else (
        "not a profiling record this section can read (config needs size, an integer ctx and mode; metrics the kernel "
        "and range tables `lmreport ingest nsys` or `lmreport ingest trace` writes)")


def profiler_of(r: dict) -> str:
    """"nsys" or "torch.profiler" (records of older versions hold nsys profiles only)."""
    return r["metrics"].get("profiler") or "nsys"


def is_torch(r: dict) -> bool:
    return profiler_of(r) == "torch.profiler"


def cpu_only(r: dict) -> bool:
    """A torch.profiler record of a CPU run: its "kernels" are CPU operators (self time), not GPU kernels."""
    return r["metrics"].get("activity") == "cpu"


PROFILER_NAMES = {"nsys": "Nsight Systems", "torch.profiler": "torch.profiler"}


def profiler_label(r: dict) -> str:
    """'Nsight Systems 2024.5.1', 'torch.profiler 2.13.0+cpu'."""
    m = r["metrics"]
    version = m.get("nsys_version") if not is_torch(r) else m.get("torch_version") or (r.get("environment") or {}).get("torch")
    return PROFILER_NAMES.get(profiler_of(r), profiler_of(r)) + (f" {version}" if version else "")


def profilers_line(records: list[dict]) -> str:
    """What follows a table's provenance line: the profiler(s) behind it, and what its rows are."""
    if not records:
        return ""
    labels = "; ".join(sorted({profiler_label(r) for r in records}))
    what = ("CPU operators' self time, no GPU kernels (a CPU run)" if all(cpu_only(r) for r in records) else
            "GPU kernels" if not any(cpu_only(r) for r in records) else
            "GPU kernels, and CPU operators' self time in the rows marked (CPU)")
    return f" · {labels}: {what}"


def kernel_word(records: list[dict]) -> str:
    """What the tables' rows are: 'GPU kernel', 'CPU operator', or both."""
    cpu = [cpu_only(r) for r in records]
    return "CPU operator" if cpu and all(cpu) else "GPU kernel" if not any(cpu) else "kernel (or CPU operator)"


# --- one record -----------------------------------------------------------------------------


def _ranges(r: dict) -> dict:
    return r["metrics"].get("ranges") or {}


def steps_of(r: dict) -> int | None:
    m = r["metrics"]
    return m.get("steps") or r["config"].get("steps") or (_ranges(r).get("step") or {}).get("instances") or None


def forward_kernels(r: dict) -> dict | None:
    """The forward pass's kernels of a record, how many passes they cover, and where from."""
    m, mode = r["metrics"], r["config"].get("mode")
    fwd_range = (m.get("range_kernels") or {}).get("forward")
    if fwd_range and fwd_range["kernels"]:
        passes = fwd_range.get("nvtx_instances") or (_ranges(r).get("forward") or {}).get("instances") or steps_of(r)
        # workloads.py: a training step's "forward" phase computes the loss too (log-softmax, NLL)
        of = "" if mode == "forward" else " of the training step, the loss included"
        where = (("CPU operators run" if cpu_only(r) else "kernels launched") + " inside the range “forward”"
                 if is_torch(r) else "nvtx_kern_sum, range “forward”")
        return {"kernels": fwd_range["kernels"], "total_ns": fwd_range["kernel_ns"], "passes": passes,
                "source": where + of, "includes_warmup": False}
    if mode == "forward" and m.get("kernels"):
        passes = (_ranges(r).get("forward") or {}).get("instances") or steps_of(r)
        return {"kernels": m["kernels"], "total_ns": m["kernel_total_ns"], "passes": passes,
                "source": f"{_all(r)} of a forward-only profile", "includes_warmup": bool(m.get("includes_warmup"))}
    return None


def _all(r: dict) -> str:
    """Where a record's whole kernel list comes from."""
    return ("every CPU operator of the trace" if cpu_only(r) else "every kernel of the trace") if is_torch(r) \
        else "cuda_gpu_kern_sum"


def subtract(kernels: list[dict], minus: list[dict]) -> list[dict]:
    """Kernels minus those of a range (by name), e.g. a training step without its optimizer step."""
    take = {k["full_name"]: k for k in minus}
    out = []
    for k in kernels:
        s = take.get(k["full_name"])
        if s is None:
            out.append(k)
        elif k["total_ns"] - s["total_ns"] > 0:
            out.append({**k, "total_ns": k["total_ns"] - s["total_ns"],
                        "instances": max(0, k["instances"] - s["instances"])})
    return sorted(out, key=lambda k: -k["total_ns"])


def forward_backward_kernels(r: dict) -> dict | None:
    """Forward + backward of a training record: every kernel but the optimizer step's."""
    m, mode = r["metrics"], r["config"].get("mode")
    if mode not in ("train", "forward_backward") or not m.get("kernels"):
        return None
    what = "CPU operator" if cpu_only(r) else "kernel"
    kernels, note = m["kernels"], f"every {what} of the step"
    opt = (m.get("range_kernels") or {}).get("optimizer step")
    if mode == "train":
        if opt:
            kernels, note = subtract(kernels, opt["kernels"]), f"every {what} but those of the range “optimizer step”"
        else:
            note = (f"every {what} of the step, the optimizer step included "
                    f"({'no range “optimizer step” in the trace' if is_torch(r) else 'no nvtx_kern_sum'})")
    return {"kernels": kernels, "total_ns": sum(k["total_ns"] for k in kernels), "passes": steps_of(r),
            "source": note, "includes_warmup": bool(m.get("includes_warmup"))}


def step_kernels(r: dict) -> dict | None:
    m = r["metrics"]
    if not m.get("kernels"):
        return None
    return {"kernels": m["kernels"], "total_ns": m["kernel_total_ns"], "passes": steps_of(r),
            "source": _all(r), "includes_warmup": bool(m.get("includes_warmup"))}


def view_of(kset: dict | None) -> dict | None:
    """Shares by class, the top kernel and the noticeable non-matmul kernels of a kernel set."""
    if not kset or not kset["kernels"]:
        return None
    kernels = kset["kernels"]
    total = kset["total_ns"] or sum(k["total_ns"] for k in kernels) or 1
    passes = kset["passes"]
    by_class = class_ns(kernels)
    top = kernels[0]

    def per_pass(k):
        return k["instances"] / passes if passes else None

    return {
        "total_ns": total, "passes": passes, "per_pass_ms": total / passes / 1e6 if passes else None,
        "source": kset["source"], "includes_warmup": kset["includes_warmup"],
        "shares": {c: by_class[c] / total for c in CLASSES},
        "class_ms_per_pass": {c: by_class[c] / passes / 1e6 if passes else None for c in CLASSES},
        "matmul_share": by_class["matmul"] / total,
        "top": {**top, "share": top["total_ns"] / total, "per_pass": per_pass(top)},
        "non_matmul": [{**k, "share": k["total_ns"] / total, "per_pass": per_pass(k)} for k in kernels
                       if k["class"] != "matmul" and k["total_ns"] / total >= NOTICEABLE_SHARE][:8],
        "names": {k["name"] for k in kernels},
    }


def attention_times(r: dict) -> dict | None:
    """GPU time of the three attention sub-ranges of one record, per call, and its source."""
    m = r["metrics"]
    rk, gpu, cpu = m.get("range_kernels") or {}, m.get("range_gpu") or {}, _ranges(r)
    if all(n in rk for n in ATTENTION_RANGES):
        out = {n: {"ns": rk[n]["kernel_ns"], "calls": rk[n].get("nvtx_instances") or (cpu.get(n) or {}).get("instances"),
                   "matmul_ns": rk[n]["class_ns"]["matmul"]} for n in ATTENTION_RANGES}
        source = ("CPU operator self time inside each range (torch.profiler)" if cpu_only(r) else
                  "kernel time inside each range (torch.profiler launches)" if is_torch(r) else
                  "kernel time inside each range (nvtx_kern_sum)")
        gpu_time = not cpu_only(r)
    elif all(n in gpu for n in ATTENTION_RANGES):
        out = {n: {"ns": gpu[n]["proj_ns"], "calls": gpu[n]["instances"], "matmul_ns": None} for n in ATTENTION_RANGES}
        source = ("GPU time projected onto each range (gpu_user_annotation)" if is_torch(r) else
                  "GPU time projected onto each range (nvtx_gpu_proj_sum)")
        gpu_time = True
    elif all(n in cpu for n in ATTENTION_RANGES):
        out = {n: {"ns": cpu[n]["total_ns"], "calls": cpu[n]["instances"], "matmul_ns": None} for n in ATTENTION_RANGES}
        source, gpu_time = "CPU time of each range (nvtx_sum): kernel launches only, the GPU runs them later", False
    else:
        return None
    for v in out.values():
        v["per_call_us"] = v["ns"] / v["calls"] / 1e3 if v["calls"] else None
    soft = out["computing softmax"]["ns"] or None
    scores = out["computing attention scores"]
    return {"ranges": out, "source": source, "gpu_time": gpu_time, "cpu_only": cpu_only(r),
            "scores_to_softmax": scores["ns"] / soft if soft else None,
            "scores_matmul_to_softmax": scores["matmul_ns"] / soft if soft and scores["matmul_ns"] else None,
            "final_to_softmax": out["final matmul"]["ns"] / soft if soft else None}


# --- the section ----------------------------------------------------------------------------


def _order(view: SectionView):
    sizes = list(dict.fromkeys([*view.profile.models(view.edition), *view.edition.study_models]))
    modes = {"forward": 0, "forward_backward": 1, "train": 2}

    def key(r):
        c = r["config"]
        return (sizes.index(c["size"]) if c.get("size") in sizes else len(sizes), c.get("ctx", 0),
                modes.get(c.get("mode"), 3), r["cell"])
    return key


def attention_flops(cfg, batch: int, ctx: int) -> dict:
    """Forward FLOPs (all layers) of Q Kᵀ, softmax and A V, and the matmul-to-softmax ratio."""
    core = {m.name: m.flops for m in acc.forward_matmuls(cfg, batch, ctx) if m.component == acc.ATTN_CORE}
    scores, weighted = core["attention scores Q K^T"], core["weighted sum of values A V"]
    softmax = acc.attention_softmax_flops(cfg, batch, ctx)
    return {"d_head": cfg.d_head, "scores": scores, "softmax": softmax, "weighted": weighted,
            "ratio": scores / softmax}


def _bench_match(view: SectionView, bench: list[dict], r: dict) -> dict | None:
    """The ok bench record of the same size, context, mode and precision (eager, default warm-up)."""
    c = r["config"]
    name = bench_cell_name(c["size"], c["ctx"], c["mode"], c.get("dtype", "fp32"))
    for b in bench:
        if b["cell"] == name:
            return b
    for b in bench:
        bc = b["config"]
        if (bc.get("size"), bc.get("ctx"), bc.get("mode"), bc.get("dtype", "fp32")) == (
                c["size"], c["ctx"], c["mode"], c.get("dtype", "fp32")) and not bc.get("compiled") \
                and bc.get("warmup", view.profile.warmup_steps) == view.profile.warmup_steps:
            return b
    return None


def _forward_time_row(view: SectionView, bench_ok: list[dict], r: dict) -> dict | None:
    c, m = r["config"], r["metrics"]
    fwd = _ranges(r).get("forward")
    kview = view_of(forward_kernels(r))
    if not fwd and not kview:
        return None
    nvtx_ms = (fwd.get("avg_ns") or fwd["total_ns"] / max(fwd["instances"], 1)) / 1e6 if fwd else None
    py = (m.get("python_timing") or {}).get("forward_ms")
    bench = _bench_match(view, bench_ok, r)
    bench_fwd = (bench or {}).get("metrics", {}).get("forward_ms")
    kernel_ms = kview["per_pass_ms"] if kview else None
    if nvtx_ms is None and kernel_ms is None:
        return None  # an export without NVTX ranges or step count: nothing per pass to compare
    return {"size": c["size"], "ctx": c["ctx"], "mode": c["mode"], "nvtx_ms": nvtx_ms, "record": r,
            "cpu": cpu_only(r), "nvtx_n": fwd["instances"] if fwd else None, "kernel_ms": kernel_ms,
            "python_nsys_ms": py["mean"] if py else None, "bench_ms": bench_fwd["mean"] if bench_fwd else None,
            "bench_std_ms": bench_fwd.get("std") if bench_fwd else None, "bench": bench,
            "diff": (nvtx_ms / bench_fwd["mean"] - 1) if nvtx_ms and bench_fwd else None}


def _pairs(ok: list[dict]) -> dict[tuple, dict]:
    """(size, ctx, dtype) -> {mode: record}."""
    out: dict[tuple, dict] = {}
    for r in ok:
        c = r["config"]
        out.setdefault((c["size"], c["ctx"], c.get("dtype", "fp32")), {})[c["mode"]] = r
    return out


def _cells_table(view: SectionView, records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        c, m = r["config"], r["metrics"]
        step = view_of(step_kernels(r)) if r["status"] == "ok" else None
        ok = r["status"] == "ok"
        rows.append({"cell": r["cell"], "size": c.get("size"), "ctx": c.get("ctx"), "mode": c.get("mode"),
                     "status": r["status"], "error": r.get("error"), "source": m.get("source") or c.get("source"),
                     "steps": steps_of(r) if ok else None,
                     "kernel_ms": step["per_pass_ms"] if step else None,
                     "warmup": bool(step and step["includes_warmup"]),
                     "profiler": profiler_label(r) if ok else None,
                     "what": ("CPU operators" if cpu_only(r) else "GPU kernels") if ok else None,
                     "reports": m.get("reports", [])})
    return rows


def busy_row(r: dict) -> dict | None:
    """Per cell: how much of each measured step the GPU (or, for a CPU trace, every CPU operator) sat idle."""
    b = r["metrics"].get("busy")
    if not isinstance(b, dict) or not b.get("wall_ns") or b.get("idle_share") is None:
        return None
    c, n = r["config"], b.get("windows") or 1
    return {"size": c["size"], "ctx": c["ctx"], "mode": c["mode"], "cpu": b.get("activity") == "cpu",
            "window": b.get("window"), "windows": n, "wall_ms": b["wall_ns"] / n / 1e6, "busy_ms": b["busy_ns"] / n / 1e6,
            "idle_share": b["idle_share"], "idle_min": b.get("idle_share_min"), "idle_max": b.get("idle_share_max"),
            "record": r}


def _not_ok(records: list[dict]) -> list[dict]:
    """Failed or skipped cells grouped by status and reason."""
    groups: dict[tuple, list[str]] = {}
    for r in records:
        if r["status"] != "ok":
            groups.setdefault((r["status"], r.get("error") or ""), []).append(r["cell"])
    return [{"status": s, "reason": reason, "cells": cells} for (s, reason), cells in sorted(groups.items())]


def _longest_fitting(ok: list[dict], records: list[dict]) -> list[dict]:
    """Per size and mode, the longest context that profiled, and the shortest that ran out of memory."""
    out: dict[tuple, dict] = {}
    for r in records:
        c = r["config"]
        slot = out.setdefault((c.get("size"), c.get("mode")), {"size": c.get("size"), "mode": c.get("mode"),
                                                              "longest_ok": None, "first_oom": None})
        if r["status"] == "ok":
            slot["longest_ok"] = max(slot["longest_ok"] or 0, c["ctx"])
        elif r["status"] == "oom":
            slot["first_oom"] = min(slot["first_oom"] or c["ctx"], c["ctx"])
    return [v for v in out.values() if v["first_oom"]]


def _plot(view: SectionView, rows: list[dict], word: str = "GPU kernel") -> str | None:
    if not rows:
        return None
    from lmreport.report import plots
    fig, ax = plots.new_figure(figsize=(max(6.4, 0.45 * len(rows) + 2), 3.8))
    labels = [f"{r['size']}\n{r['ctx']}\n{'fwd' if r['mode'] == 'forward' else r['mode']}" for r in rows]
    bottom = [0.0] * len(rows)
    colors = dict(zip(CLASSES, ("#1f77b4", "#9467bd", "#d62728", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")))
    for cls in CLASSES:
        vals = [100 * r["shares"][cls] for r in rows]
        if any(vals):
            ax.bar(range(len(rows)), vals, bottom=bottom, label=cls, color=colors[cls], width=0.7)
            bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):
        if r["ms"] is not None:
            ax.text(i, 101, f"{r['ms']:.3g}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_ylim(0, 112)
    ax.set_ylabel(f"share of {word} time (%)")
    ax.set_title(f"{word[0].upper() + word[1:]} time by class (forward pass or training step; ms per pass on top)",
                 fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return view.save_figure(fig, "kernel-classes")


def build(view: SectionView) -> dict:
    from lmreport.experiments.nsys import HANDOUT_SWEEPS, MODES, WANTED_REPORTS, profile_command, stats_command, sweep
    from lmreport.runner import Plan

    ed, prof = view.edition, view.profile
    models = model_table(view.edition, view.profile)
    order = _order(view)
    records = sorted(_records.readable(view.records, record_problem), key=order)
    ok = [r for r in records if r["status"] == "ok"]
    sizes, contexts = sweep(Plan(prof, ed))
    handout = HANDOUT_SWEEPS.get(ed.year)

    # Formulas (no records needed): matmul launches per forward pass and the FLOP ratio of (e).
    ref_ctx = 512 if 512 in contexts else max(contexts)
    flop_sizes = list(dict.fromkeys([*sizes, *ed.study_models, *(r["config"]["size"] for r in ok)]))
    flops = [{"size": s, "ctx": ref_ctx, **attention_flops(models[s], ed.batch_size, ref_ctx),
              "matmul_calls": sum(m.occurrences for m in acc.forward_matmuls(models[s], ed.batch_size, ref_ctx))}
             for s in flop_sizes if s in models]

    # How many matmuls one forward pass launches, per layer and once, with their names (accounting).
    ref_cfg = models[flop_sizes[0]]
    per_layer = [m for m in acc.forward_matmuls(ref_cfg, ed.batch_size, ref_ctx) if m.component != acc.LM_HEAD]
    once = [m for m in acc.forward_matmuls(ref_cfg, ed.batch_size, ref_ctx) if m.component == acc.LM_HEAD]

    # (a) forward time from NVTX next to the Python timing.
    bench_ok = [b for b in view.records_of("bench") if b["status"] == "ok"]
    forward_rows = [row for r in ok if (row := _forward_time_row(view, bench_ok, r))]
    bench_used = [row["bench"] for row in forward_rows if row["bench"]]

    # (b), (c), (d) per (size, ctx).
    kernel_rows = []
    for (size, ctx, dtype), modes in sorted(_pairs(ok).items(), key=lambda kv: order(next(iter(kv[1].values())))):
        fwd_rec = modes.get("forward")
        train_rec = modes.get("train") or modes.get("forward_backward")
        fwd = view_of(forward_kernels(fwd_rec)) if fwd_rec else None
        if fwd is None and train_rec:
            fwd = view_of(forward_kernels(train_rec))  # the forward range of the training step
        fb = view_of(forward_backward_kernels(train_rec)) if train_rec else None
        step = view_of(step_kernels(train_rec)) if train_rec else None
        new_in_train, change = [], None
        if step and fwd:
            new = [{**k, "share": k["total_ns"] / step["total_ns"]} for k in train_rec["metrics"]["kernels"]
                   if k["name"] not in fwd["names"]]
            new_by_class: dict[str, float] = {}
            for k in new:
                new_by_class[k["class"]] = new_by_class.get(k["class"], 0.0) + k["share"]
            delta = step["matmul_share"] - fwd["matmul_share"]
            change = {"delta": delta, "direction": "rises" if delta > 0.005 else "falls" if delta < -0.005 else
                      "stays about the same", "new_share": sum(k["share"] for k in new),
                      "new_classes": sorted(new_by_class.items(), key=lambda kv: -kv[1])}
            new_in_train = new[:6]
        cfg = models.get(size)
        kernel_rows.append({
            "size": size, "ctx": ctx, "dtype": dtype, "forward": fwd, "forward_backward": fb, "step": step,
            "same_top": (fwd["top"]["full_name"] == fb["top"]["full_name"]) if fwd and fb else None,
            "new_in_train": new_in_train, "change": change,
            "matmul_calls": sum(m.occurrences for m in acc.forward_matmuls(cfg, ed.batch_size, ctx)) if cfg else None,
            "records": [x for x in (fwd_rec, train_rec) if x],
            "cpu": any(cpu_only(x) for x in (fwd_rec, train_rec) if x),
        })

    # (e) softmax vs the attention matmuls.
    attention_rows = []
    for r in ok:
        t = attention_times(r)
        cfg = models.get(r["config"]["size"])
        if t and cfg:
            f = attention_flops(cfg, r["config"].get("batch", ed.batch_size), r["config"]["ctx"])
            matmul_time = t["scores_matmul_to_softmax"] or t["scores_to_softmax"]
            attention_rows.append({"size": r["config"]["size"], "ctx": r["config"]["ctx"], "mode": r["config"]["mode"],
                                   **t, "flops": f, "record": r,
                                   # FLOP/s of the Q K^T matmul over FLOP/s of softmax
                                   "rate_ratio": f["ratio"] / matmul_time if matmul_time else None})
    attention_fwd = [a for a in attention_rows if a["mode"] == "forward"] or attention_rows

    # Class shares per cell, and the plot.
    class_rows, class_records = [], []
    for r in ok:
        v = view_of(forward_kernels(r) if r["config"]["mode"] == "forward" else step_kernels(r))
        if v:
            class_rows.append({"size": r["config"]["size"], "ctx": r["config"]["ctx"], "mode": r["config"]["mode"],
                               "cpu": cpu_only(r),
                               "scope": "forward pass" if r["config"]["mode"] == "forward" else "training step"
                               if r["config"]["mode"] == "train" else "forward + backward",
                               "shares": v["shares"], "ms": v["per_pass_ms"], "warmup": v["includes_warmup"]})
            class_records.append(r)
    word = kernel_word(ok)
    figure = _plot(view, class_rows, word)

    # GPU busy vs idle per measured step (torch.profiler traces), or CPU operators' for a CPU trace.
    busy_rows = [row for r in ok if (row := busy_row(r))]
    gpu_busy = [b for b in busy_rows if not b["cpu"]]

    example = {**INGEST_EXAMPLE, "size": INGEST_EXAMPLE["size"] if INGEST_EXAMPLE["size"] in ed.study_models
               else next(iter(ed.study_models))}
    plan_flags = view.plan_flags()
    report_names = [names[0] for names in WANTED_REPORTS.values()]
    return {
        "edition": ed, "profile": prof, "has_data": bool(ok),
        "sweep": {"sizes": sizes, "contexts": contexts, "modes": MODES,
                  "handout_sizes": (handout.sizes or tuple(ed.study_models)) if handout else None,
                  "handout_contexts": handout.contexts if handout else None},
        "commands": {
            "run": view.run_command(),
            "run_gpu": view.run_command(prof=view.gpu_profile),
            "profile": " ".join(profile_command("nsys", "CELL_DIR/profile", [
                "python", "-m", "lmreport.experiments.nsys_worker", "CELL_CONFIG_JSON", "RESULT_JSON"])),
            "stats": " ".join(stats_command("nsys", "profile.nsys-rep", report_names, "stats")),
            "ingest": (f"lmreport ingest nsys stats_*.csv --size {example['size']} --ctx {example['ctx']} "
                       f"--mode {example['mode']} --device \"NVIDIA H100 80GB HBM3\"{plan_flags}"),
            "ingest_trace": (f"lmreport ingest trace trace.json.gz --size {example['size']} --ctx {example['ctx']} "
                             f"--mode {example['mode']}{plan_flags}"),
            "run_gpu_torch": view.run_command(prof=view.gpu_profile) + " --profiler torch",
            "render": f"lmreport render{plan_flags}",
            "render_gpu": f"lmreport render{view.plan_flags(view.gpu_profile)}",
        },
        "cells": _cells_table(view, records),
        "word": word, "all_cpu": bool(ok) and all(cpu_only(r) for r in ok), "any_torch": any(is_torch(r) for r in ok),
        "profiler_variable": PROFILER_VARIABLE,
        "busy_rows": busy_rows,
        "busy_most": max(gpu_busy, key=lambda b: b["idle_share"]) if gpu_busy else None,
        "busy_least": min(gpu_busy, key=lambda b: b["idle_share"]) if len(gpu_busy) > 1 else None,
        "cpu_busy": [b for b in busy_rows if b["cpu"]],
        "nsys_only_cells": [r["cell"] for r in ok if not is_torch(r)],
        "busy_provenance": view.provenance([b["record"] for b in busy_rows])["line"],
        "busy_profilers": profilers_line([b["record"] for b in busy_rows]),
        "profilers": profilers_line(ok),
        "forward_profilers": profilers_line([row["record"] for row in forward_rows]),
        "kernel_profilers": profilers_line([x for k in kernel_rows if k["forward"] for x in k["records"]]),
        "step_profilers": profilers_line([x for k in kernel_rows if k["step"] for x in k["records"]]),
        "attention_profilers": profilers_line([a["record"] for a in attention_fwd]),
        "class_profilers": profilers_line(class_records),
        "not_ok": _not_ok(records),
        "oom_limits": _longest_fitting(ok, records),
        # cells skipped here were not run by any device of the table
        "provenance": view.provenance([r for r in records if r["status"] != "skipped"])["line"],
        "forward_rows": forward_rows,
        "forward_provenance": view.provenance([row["record"] for row in forward_rows] + bench_used)["line"],
        "kernel_rows": kernel_rows,
        "kernel_provenance": view.provenance([x for k in kernel_rows if k["forward"] for x in k["records"]])["line"],
        "step_provenance": view.provenance([x for k in kernel_rows if k["step"] for x in k["records"]])["line"],
        "formula_provenance": view.provenance([])["line"],
        "attention_provenance": view.provenance([a["record"] for a in attention_fwd])["line"],
        "class_provenance": view.provenance(class_records)["line"],
        "attention_flops": flops,
        "attention_rows": attention_fwd,
        "softmax_flops_per_score": acc.SOFTMAX_FLOPS_PER_SCORE,
        "class_rows": class_rows,
        "classes": CLASSES,
        "figure": figure,
        "warnings": sorted({w for r in ok for w in r["metrics"].get("warnings", [])}),
        "with_warmup": [r["cell"] for r in ok if r["metrics"].get("includes_warmup")],
        "noticeable": NOTICEABLE_SHARE,
        "matmuls_per_layer": len(per_layer), "matmuls_once": len(once),
        "matmul_names_per_layer": [m.name for m in per_layer], "matmul_names_once": [m.name for m in once],
    }
