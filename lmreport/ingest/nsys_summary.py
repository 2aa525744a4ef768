"""Tables of one profile -> the metrics of an nsys record (the contract the report reads).

One profile is one set of reports (kernel summary, NVTX summary, kernels per NVTX range,
GPU projection of NVTX ranges, CUDA API summary); `summarise` turns them into plain JSON:

- `kernels`: every kernel of the capture (cuda_gpu_kern_sum), with display name and class.
  The kernel summary counts kernels of every thread, so it includes the backward pass, which
  PyTorch's autograd engine launches from its own thread on CUDA.
- `ranges`: NVTX ranges (nvtx_sum): instances and CPU-side duration. The study's phase
  ranges end with a device synchronisation (timing.py), so a "forward" range lasts as long as
  the GPU work it launched.
- `range_kernels`: kernels launched inside each NVTX range (nvtx_kern_sum), per range. NVTX
  ranges belong to the thread that pushed them, so kernels of the autograd thread fall in no
  range: "backward" there holds only what the main thread launched.
- `range_gpu`: GPU time projected onto each range (nvtx_gpu_proj_sum).
- `api`: the CUDA API summary's total and top calls.

Times are integer nanoseconds (`_ns`); range names lose their NVTX domain prefix (":forward"
and "NVTX:forward" are "forward").
"""

from __future__ import annotations

from collections import Counter

from lmreport.ingest.nsys_tables import Table
from lmreport.kernels import CLASSES, parse_kernel_name

FULL_NAME_CHARS = 300  # enough to tell kernels apart; the CSV artifact keeps the whole name
MAX_RANGES = 60
MAX_KERNELS_PER_RANGE = 120
# The NVTX ranges lmreport's workloads emit (timing.py, workloads.py, model.py).
STUDY_RANGES = ("warmup", "step", "forward", "backward", "optimizer step", "scaled dot product attention",
                "computing attention scores", "computing softmax", "final matmul")
KERNEL_REPORTS = ("cuda_gpu_kern_sum", "nvtx_kern_sum")


def range_name(raw: str) -> str:
    """':forward' / 'NVTX:forward' / 'forward ' -> 'forward' (the NVTX domain prefix dropped)."""
    name = (raw or "").strip()
    if name.startswith(":"):
        return name[1:].strip()
    if ":" in name:
        domain, rest = name.split(":", 1)
        if rest.strip() in STUDY_RANGES or domain.strip() in ("NVTX", ""):
            return rest.strip()
    return name


def kernel_row(name: str, total_ns, instances) -> dict:
    k = parse_kernel_name(name)
    full = name.strip()
    return {"name": k.display, "full_name": full[:FULL_NAME_CHARS], "class": k.kernel_class,
            "total_ns": int(total_ns or 0), "instances": int(instances or 0)}


def class_ns(kernels: list[dict]) -> dict[str, int]:
    out = dict.fromkeys(CLASSES, 0)
    for k in kernels:
        out[k["class"]] += k["total_ns"]
    return out


def _kernels(table: Table) -> list[dict]:
    rows = [kernel_row(r.get("name", ""), r.get("total_time_ns"), r.get("instances")) for r in table.rows]
    return sorted(rows, key=lambda r: -r["total_ns"])


def _ranges(table: Table) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in sorted(table.rows, key=lambda r: -(r.get("total_time_ns") or 0)):
        name = range_name(r.get("range", ""))
        if name in out or len(out) >= MAX_RANGES:
            continue  # the same range in another style (PushPop, StartEnd): keep the larger
        out[name] = {"instances": int(r.get("instances") or 0), "total_ns": int(r.get("total_time_ns") or 0),
                     **{f"{k}_ns": r[f"{k}_ns"] for k in ("avg", "med", "min", "max", "stddev")
                        if r.get(f"{k}_ns") is not None}}
    return out


def _range_kernels(table: Table) -> dict[str, dict]:
    by_range: dict[str, list[dict]] = {}
    nvtx_instances: dict[str, int] = {}
    for r in table.rows:
        name = range_name(r.get("range", ""))
        if not name:  # kernels outside every range
            continue
        row = kernel_row(r.get("name", ""), r.get("total_time_ns"), r.get("instances"))
        by_range.setdefault(name, []).append(row)
        if r.get("nvtx_instances") is not None:
            nvtx_instances[name] = max(nvtx_instances.get(name, 0), int(r["nvtx_instances"]))
    order = sorted(by_range, key=lambda n: (n not in STUDY_RANGES, -sum(k["total_ns"] for k in by_range[n])))
    out = {}
    for name in order[:MAX_RANGES]:
        kernels = _merge_same(by_range[name])
        out[name] = {"kernel_ns": sum(k["total_ns"] for k in kernels), "nvtx_instances": nvtx_instances.get(name),
                     "class_ns": class_ns(kernels), "kernels": kernels[:MAX_KERNELS_PER_RANGE]}
    return out


def _merge_same(rows: list[dict]) -> list[dict]:
    """One row per kernel (nvtx_kern_sum splits a range by process and thread)."""
    merged: dict[str, dict] = {}
    for r in rows:
        cur = merged.get(r["full_name"])
        if cur is None:
            merged[r["full_name"]] = dict(r)
        else:
            cur["total_ns"] += r["total_ns"]
            cur["instances"] += r["instances"]
    return sorted(merged.values(), key=lambda r: -r["total_ns"])


def _range_gpu(table: Table) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in sorted(table.rows, key=lambda r: -(r.get("proj_total_ns") or 0)):
        name = range_name(r.get("range", ""))
        if name in out or len(out) >= MAX_RANGES:
            continue
        out[name] = {"proj_ns": int(r.get("proj_total_ns") or 0), "instances": int(r.get("instances") or 0),
                     "range_ns": int(r["range_total_ns"]) if r.get("range_total_ns") is not None else None}
    return out


def _api(table: Table) -> dict:
    rows = sorted(table.rows, key=lambda r: -(r.get("total_time_ns") or 0))
    return {"total_ns": int(sum(r.get("total_time_ns") or 0 for r in rows)),
            "top": [{"name": r.get("name", ""), "total_ns": int(r.get("total_time_ns") or 0),
                     "calls": int(r.get("instances") or 0)} for r in rows[:10]]}


def summarise(tables: dict[str, Table], steps: int | None = None) -> dict:
    """The record metrics of one profile from its tables (one per report name)."""
    m: dict = {"reports": sorted(tables)}
    if "cuda_gpu_kern_sum" in tables:
        kernels = _kernels(tables["cuda_gpu_kern_sum"])
        m["kernels"] = kernels
        m["kernel_total_ns"] = sum(k["total_ns"] for k in kernels)
        m["class_ns"] = class_ns(kernels)
        m["truncated_names"] = tables["cuda_gpu_kern_sum"].truncated_names
    nvtx = tables.get("nvtx_sum") or tables.get("nvtx_pushpop_sum")
    if nvtx is not None:
        m["ranges"] = _ranges(nvtx)
    if "nvtx_kern_sum" in tables:
        m["range_kernels"] = _range_kernels(tables["nvtx_kern_sum"])
    if "nvtx_gpu_proj_sum" in tables:
        m["range_gpu"] = _range_gpu(tables["nvtx_gpu_proj_sum"])
    if "cuda_api_sum" in tables:
        m["api"] = _api(tables["cuda_api_sum"])
    if "cuda_gpu_mem_time_sum" in tables:
        rows = tables["cuda_gpu_mem_time_sum"].rows
        m["memops_ns"] = {r.get("name", ""): int(r.get("total_time_ns") or 0) for r in rows}
    ranges = m.get("ranges", {})
    m["steps"] = steps or (ranges.get("step") or {}).get("instances") or None
    m["includes_warmup"] = ("warmup" in ranges) if ranges else None
    return m


def pick_tables(tables: list[Table], run: int | None = None) -> tuple[dict[str, Table], list[str]]:
    """One table per report; `run` picks the n-th (1-based) of files holding several profiles.

    Returns the tables and, when a report occurs more than once and no run is given, the
    names of those reports (the caller decides whether that is an error).
    """
    counts = Counter(t.report for t in tables)
    chosen: dict[str, Table] = {}
    seen: Counter = Counter()
    for t in tables:
        seen[t.report] += 1
        if run is None and t.report not in chosen:
            chosen[t.report] = t
        elif run is not None and seen[t.report] == run:
            chosen[t.report] = t
    ambiguous = sorted(r for r, n in counts.items() if n > 1) if run is None else []
    return chosen, ambiguous
