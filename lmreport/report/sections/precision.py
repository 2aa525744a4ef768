"""Precision section: accumulation (P-1), autocast dtypes per device (P-a), norm sensitivity (P-b),
bf16 autocast timings from the bench records (P-c).

Each answer is computed from the section's records (lmreport/experiments/precision.py) and the
benchmark's; the explanations in the template compare the recorded numbers, so they follow
what was measured. Autocast dtypes are per device: a CPU record never stands in for CUDA.
"""

from __future__ import annotations

from lmreport.report.context import SectionView
from lmreport.report.sections import bench as bench_report
from lmreport.sections import Section

SECTION = Section(
    name="precision", title="Mixed precision: accumulation, autocast and normalisation", order=20,
    experiment="lmreport.experiments.precision", report="lmreport.report.sections.precision",
    summary="accumulation loops, ToyModel autocast dtypes per device, norm sensitivity, bf16 timings")

# The documented CUDA behaviour, shown (labelled as documentation) when no CUDA record exists:
# PyTorch's "Autocast Op Reference" (https://docs.pytorch.org/docs/stable/amp.html) lists
# `linear` among "CUDA Ops that can autocast to float16" and `layer_norm` and `cross_entropy`
# among "CUDA Ops that can autocast to float32"; autocast never changes a parameter's dtype.
AMP_DOCS = "https://docs.pytorch.org/docs/stable/amp.html"
DOCUMENTED_CUDA = {
    "parameters inside autocast": "float32", "fc1 output": "{low}", "ReLU output": "{low}",
    "LayerNorm output": "float32", "logits": "{low}", "loss": "float32", "gradients": "float32",
}
LOW_NAMES = {"fp16": "float16", "bf16": "bfloat16"}
ROWS = ("parameters inside autocast", "fc1 matmul operands", "fc1 output", "ReLU output", "LayerNorm output",
        "logits", "loss", "gradients")


def _one(view: SectionView, cell: str) -> dict | None:
    return view.by_cell().get(cell)


def _autocast(view: SectionView) -> dict:
    """Measured dtypes per (device, dtype); which devices have records; what CUDA would need."""
    entries = []
    for r in view.records:
        c = r["config"]
        if c.get("experiment") != "toy-autocast":
            continue
        entries.append({"device": c["device"], "dtype": c["dtype"], "ok": r["status"] == "ok",
                        "status": r["status"], "error": r.get("error"),
                        "dtypes": r["metrics"].get("dtypes") if r["status"] == "ok" else None,
                        "provenance": view.provenance([r])["line"], "record": r})
    entries.sort(key=lambda e: (e["device"] != "cpu", e["dtype"] != "fp16"))
    measured = {(e["device"], e["dtype"]): e for e in entries if e["ok"]}
    devices = sorted({d for d, _ in measured}, key=lambda d: d != "cpu")
    documented = {low: {k: v.format(low=LOW_NAMES[low]) for k, v in DOCUMENTED_CUDA.items()} for low in LOW_NAMES}
    # Where the measured CPU dtypes differ from the documented CUDA ones (the reason for the labels).
    cpu_vs_docs = [{"dtype": low, "row": k, "cpu": measured[("cpu", low)]["dtypes"][k], "cuda_docs": v}
                   for low, rows in documented.items() if ("cpu", low) in measured
                   for k, v in rows.items() if measured[("cpu", low)]["dtypes"][k] != v]
    cuda_vs_cpu = [{"dtype": low, "row": k, "cpu": measured[("cpu", low)]["dtypes"][k],
                    "cuda": measured[("cuda", low)]["dtypes"][k]}
                   for low in LOW_NAMES if ("cpu", low) in measured and ("cuda", low) in measured
                   for k in ROWS if measured[("cpu", low)]["dtypes"][k] != measured[("cuda", low)]["dtypes"][k]]
    cuda_skips = [e for e in entries if e["device"] == "cuda" and not e["ok"]]
    return {"entries": entries, "measured": measured, "devices": devices, "rows": ROWS,
            "documented": documented, "cpu_vs_docs": cpu_vs_docs, "cuda_vs_cpu": cuda_vs_cpu,
            "cuda_measured": any(d == "cuda" for d, _ in measured),
            "cuda_skip_reason": cuda_skips[0]["error"] if cuda_skips else None, "amp_docs": AMP_DOCS}


def _accumulation(view: SectionView) -> dict | None:
    r = _one(view, "accumulation")
    if not r or r["status"] != "ok":
        return None
    loops = {row["name"]: row for row in r["metrics"]["loops"]}
    return {"loops": r["metrics"]["loops"], "by_name": loops, "formats": r["metrics"]["formats"],
            "provenance": view.provenance([r])["line"]}


def _norm(view: SectionView) -> dict | None:
    r = _one(view, "norm-sensitivity")
    if not r or r["status"] != "ok":
        return None
    m = r["metrics"]
    widths = m["mean_error_by_width"]
    largest = widths[-1]
    # The first width at which a running sum in each format is off by more than 1%.
    first_over = {f: next((w["d"] for w in widths if w[f]["running_sum_rel_error"] > 0.01), None)
                  for f in ("fp32", "fp16", "bf16")}
    overflow_at = {f: next((row["x"] for row in m["square_overflow"] if row[f]["overflow"]), None)
                   for f in ("fp32", "fp16", "bf16")}
    return {**m, "largest": largest, "first_over_1pct": first_over, "overflow_at": overflow_at,
            "provenance": view.provenance([r])["line"]}


def _command(view: SectionView, section: str) -> str:
    ed = "" if view.profile.edition else f" --edition {view.edition.year}"
    return f"lmreport run {section} --profile {view.profile.name}{ed}"


def build(view: SectionView) -> dict:
    bench = view.records_of("bench")
    comparison = bench_report.bf16_comparison(view, bench)
    return {
        "accumulation": _accumulation(view),
        "autocast": _autocast(view),
        "norm": _norm(view),
        "bf16": comparison,
        "bf16_figure": bench_report.bf16_speedup_figure(view, comparison),
        "bf16_provenance": view.provenance(comparison["records"])["line"] if comparison["records"] else None,
        "mode_titles": bench_report.MODE_TITLES,
        "run_command": view.run_command(),
        "bench_command": _command(view, "bench"),
        "has_records": bool(view.records),
        "edition_year": view.edition.year,
    }
