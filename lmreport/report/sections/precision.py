"""Precision section: accumulation (P-1), autocast dtypes per device (P-a), norm sensitivity (P-b),
bf16 autocast timings from the bench records (P-c).

Each answer is computed from the section's records (lmreport/experiments/precision.py) and the
benchmark's; the explanations in the template compare the recorded numbers, so they follow
what was measured. Autocast dtypes are per device: a CPU record never stands in for CUDA.
"""

from __future__ import annotations

import math

from lmreport.report.context import SectionView
from lmreport.report.sections import _records
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


HANDOUT_LOOPS = ("fp32 += fp32", "fp16 += fp16", "fp32 += fp16", "fp32 += fp16 cast to fp32")  # P-1's four
BF16_LOOPS = ("bf16 += bf16", "fp32 += bf16")  # shown together when present
LOOP_KEYS = ("name", "n", "value", "result", "abs_error", "stored_addend", "representation_error", "rounding_error",
             "ulp_at_result")
FORMAT_KEYS = ("eps", "max", "smallest_normal", "mantissa_bits", "exponent_bits", "ulp", "ulp_from_eps", "sqrt_max")
FORMATS = ("fp32", "fp16", "bf16")
NORM_KEYS = ("square_overflow", "outlier_row", "mean_error_by_width", "eps", "formats")


def _formats_problem(formats) -> str | None:
    why = _records.missing_keys(formats, FORMATS, "metrics.formats")
    return why or next((w for f in FORMATS if (w := _records.missing_keys(formats[f], FORMAT_KEYS, f"format {f}"))),
                       None)


def record_problem(r: dict) -> str | None:
    """Why a precision record cannot be shown (None when it can)."""
    why, c, m = _records.config_and_metrics(r, ("experiment",))
    if why:
        return why
    kind = c["experiment"]
    if kind == "toy-autocast":
        why = _records.missing_keys(c, ("device", "dtype"), "config")
        if why is None and c["dtype"] not in LOW_NAMES:
            why = f"autocast dtype {c['dtype']!r} is not one of {', '.join(LOW_NAMES)}"
        if why is None and r["status"] == "ok":
            why = _records.missing_keys(m.get("dtypes"), ROWS, "metrics.dtypes")
        return why
    if kind not in ("accumulation", "norm-sensitivity"):
        return f"unknown precision experiment {kind!r}"
    if r["status"] != "ok":
        return None
    if kind == "norm-sensitivity":
        why = _records.missing_keys(m, NORM_KEYS, "metrics")
        if why is None and not m["mean_error_by_width"]:
            why = "metrics.mean_error_by_width is empty"
        return why or _records.missing_keys(m["eps"], FORMATS, "metrics.eps") or _formats_problem(m["formats"])
    loops = m.get("loops")
    if not isinstance(loops, list) or not all(isinstance(x, dict) for x in loops):
        return "metrics.loops is not a list of loops"
    names = {x.get("name") for x in loops}
    needed = HANDOUT_LOOPS + (BF16_LOOPS if names & set(BF16_LOOPS) else ())
    lacking = [n for n in needed if n not in names]
    if lacking:
        return f"metrics.loops lacks {', '.join(lacking)}"
    return next((w for x in loops if (w := _records.missing_keys(x, LOOP_KEYS, f"loop {x.get('name')}"))), None) \
        or _formats_problem(m.get("formats"))


def _one(records: list[dict], cell: str) -> dict | None:
    return next((r for r in records if r["cell"] == cell), None)


def _autocast(view: SectionView, records: list[dict]) -> dict:
    """Measured dtypes per (device, dtype); which devices have records; what CUDA would need."""
    entries = []
    for r in records:
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


def _accumulation(view: SectionView, records: list[dict]) -> dict | None:
    r = _one(records, "accumulation")
    if not r or r["status"] != "ok":
        return None
    # Where the sum ends, each add is rounded to a multiple of the ULP of its binade [2^k, 2^(k+1)).
    loops = [{**row, "binade_start": 2.0 ** math.floor(math.log2(abs(row["result"]))) if row["result"] else None}
             for row in r["metrics"]["loops"]]
    by_name = {row["name"]: row for row in loops}
    handout = [by_name[n] for n in HANDOUT_LOOPS]
    first = handout[0]
    return {"loops": loops, "by_name": by_name, "formats": r["metrics"]["formats"],
            "n": first["n"], "value": first["value"], "exact": first["n"] * first["value"],
            "worst_handout": max(handout, key=lambda row: row["abs_error"])["name"],
            "provenance": view.provenance([r])["line"]}


def _norm(view: SectionView, records: list[dict]) -> dict | None:
    r = _one(records, "norm-sensitivity")
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


def build(view: SectionView) -> dict:
    records = _records.readable(view.records, record_problem)
    bench = bench_report.contract_records(view.records_of("bench"), warn=False)  # bench warns
    comparison = bench_report.bf16_comparison(view, bench)
    return {
        "accumulation": _accumulation(view, records),
        "autocast": _autocast(view, records),
        "norm": _norm(view, records),
        "bf16": comparison,
        "bf16_figure": bench_report.bf16_speedup_figure(view, comparison),
        "bf16_provenance": view.provenance(comparison["records"])["line"] if comparison["records"] else None,
        "mode_titles": bench_report.MODE_TITLES,
        "run_command": view.run_command(),
        "bench_command": view.run_command("bench"),
        "has_records": bool(records),
        "edition_year": view.edition.year,
    }
