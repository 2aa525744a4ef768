"""What `lmreport gpu-check` concludes from a `gpu-quick` run: one table, built from records and test results.

Pure functions (no torch, no GPU): the command (lmreport/commands/gpu_check.py) runs the steps and
feeds their records and pytest's JUnit XML here; tests feed the records of a real H200 run
(../shared/samples/h200). The table has one row per fact, each with what was expected and a
verdict:

- per section: cells ok / oom / error / skipped / not run, and the section's wall seconds (from the
  records' start times and durations); any `error` or a planned cell without a record fails. The check
  proves its own run: a record that started before the check began (an old run's, one copied from another
  machine, an ok record kept beside a failed rerun) counts as not run and takes no part in any row;
- the CUDA tests (`pytest -m cuda`): any failure or error fails, as does no test result at all;
- cross-checks: each measured memory peak against its estimate; the eager attention's peak above its
  baseline against the CUDA formula at T >= 1,024; the out-of-memory probe recorded as `oom`; the MFU
  of the largest fp32 benchmark cell against the datasheet peak.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lmreport import accounting as acc
from lmreport.errors import InputFileError
from lmreport.presets import ATTENTION_OOM_PROBE

PASS, FAIL, NA = "PASS", "FAIL", "n/a"
STATUSES = ("ok", "oom", "error", "skipped")
# Memory: the estimate counts the tensors' requested bytes; a measured "active" peak also holds the cuBLAS
# workspaces, which go through PyTorch's caching allocator (32 MiB per handle on Hopper and Blackwell,
# aten/src/ATen/cuda/CublasHandlePool.cpp, parseChosenWorkspaceSize; the forward's thread and the autograd
# thread may each hold one). The H200 run measured 0.1% to 0.2% above its estimates at 2.7B.
MEMORY_TOLERANCE = 0.02
CUBLAS_WORKSPACES_BYTES = 2 * 32 * acc.MIB
ATTENTION_TOLERANCE = 0.05  # formula, meta estimate and CUDA measurement within 5% at T >= 1,024
ATTENTION_MIN_SEQ_LEN = 1024  # below it the (B, T, d) tensors and allocator rounding weigh more than the T x T ones
# MFU of a matmul-dominated fp32 step: above 100% the FLOPs or the peak are wrong; under 5% the timing is
# (the H200 run read 42% to 66% for fp32 at context 512).
MFU_RANGE = (0.05, 1.0)


@dataclass(frozen=True)
class TestResults:
    """What pytest's JUnit XML says."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: tuple[str, ...] = ()  # test ids that failed or errored


@dataclass(frozen=True)
class Step:
    """One step of the check: a command run under a timeout."""

    name: str
    returncode: int | None  # None: did not run, or killed at its timeout
    wall_s: float
    timed_out: bool = False
    log: str | None = None


@dataclass
class Summary:
    rows: list[dict] = field(default_factory=list)  # what, result, expected, verdict

    def add(self, what: str, result: str, expected: str, verdict: str) -> None:
        self.rows.append({"what": what, "result": result, "expected": expected, "verdict": verdict})

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["verdict"] == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_junit(path: Path) -> TestResults:
    """Counts of a pytest `--junitxml` file (testsuites > testsuite > testcase)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise InputFileError(path, f"not a JUnit XML report ({e})") from None
    passed = failed = errors = skipped = 0
    failures = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            failed += 1
            failures.append(name)
        elif case.find("error") is not None:
            errors += 1
            failures.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return TestResults(passed, failed, errors, skipped, tuple(failures))


def _time(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def started_since(record: dict, since: str) -> bool:
    """Whether the record started at or after `since` (both ISO times as store.now_iso() writes them, to the
    second: a cell that starts in the check's first second counts); a record without a start time did not."""
    t, t0 = _time(record.get("started_at")), _time(since)
    return t is not None and t0 is not None and t >= t0


def select_for_check(records: list[dict], edition: int, profile: str, since: str) -> list[dict]:
    """One record per cell as store.select chooses it, but among the records started since the check began
    first: a cell whose rerun failed shows that error, not the ok record store.write_record kept from before
    (`<cell>.kept-<time>.json`); a cell with no record of this check keeps its older one (summarize counts
    it as not run)."""
    from lmreport import store
    chosen = {(r["section"], r["cell"]): r for r in store.select(records, edition, profile)}
    fresh = store.select([r for r in records if started_since(r, since)], edition, profile)
    chosen.update({(r["section"], r["cell"]): r for r in fresh})
    return sorted(chosen.values(), key=lambda r: (r["section"], r["cell"]))


def section_wall_s(records: list[dict]) -> float | None:
    """From the first cell's start to the last cell's end (records' started_at + duration_s)."""
    spans = [(t, t + float(r.get("duration_s") or 0)) for r in records if (t := _time(r.get("started_at"))) is not None]
    return max(b for _, b in spans) - min(a for a, _ in spans) if spans else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _sections(s: Summary, records: list[dict], planned: dict[str, list[str]], before: set[tuple[str, str]],
              expected: str) -> None:
    for section, cells in planned.items():
        mine = [r for r in records if r["section"] == section]
        counts = {k: sum(r["status"] == k for r in mine) for k in STATUSES}
        missing = sorted(set(cells) - {r["cell"] for r in mine})
        old = sum((section, c) in before for c in missing)
        wall = section_wall_s(mine)
        result = ", ".join(f"{counts[k]} {k}" for k in STATUSES) + f", {len(missing)} not run" + (
            f" ({old} recorded only before this check)" if old else "") + (f"; {wall:.0f} s" if wall is not None else "")
        verdict = FAIL if counts["error"] or missing else PASS
        if counts["error"]:
            first = next(r for r in mine if r["status"] == "error")
            result += f"; first error: {first['cell']}: {(first.get('error') or '')[:120]}"
        elif missing:
            result += f"; first not run: {missing[0]}"
        s.add(f"{section}: cells", result, expected, verdict)


def _tests(s: Summary, tests: TestResults | None) -> None:
    if tests is None:
        s.add("CUDA tests (pytest -m cuda)", "no result (the step did not finish)", "no failure", FAIL)
        return
    result = f"{tests.passed} passed, {tests.failed} failed, {tests.errors} errors, {tests.skipped} skipped"
    if tests.failures:
        result += f"; {', '.join(tests.failures[:3])}"
    bad = tests.failed or tests.errors or not (tests.passed + tests.skipped)
    s.add("CUDA tests (pytest -m cuda)", result, "no failure", FAIL if bad else PASS)


def _memory(s: Summary, records: list[dict]) -> None:
    by_cell = {r["cell"]: r for r in records if r["section"] == "memory"}
    measured = [r for r in by_cell.values() if (r.get("config") or {}).get("source") == "measured"]
    if not measured:
        s.add("memory: measured / estimated peak", "no measured cell", "one per measured cell", FAIL)
        return
    for r in sorted(measured, key=lambda r: r["cell"]):
        what = f"memory {r['cell']}: measured / estimated peak"
        est = by_cell.get(r["cell"].replace("measured-", "estimated-", 1))
        if r["status"] != "ok" or not est or est["status"] != "ok":
            s.add(what, f"measured {r['status']}, estimate {est['status'] if est else 'not run'}", "both ok", FAIL)
            continue
        m, e = r["metrics"]["peak_active_bytes"], est["metrics"]["peak_bytes"]
        high = 1 + MEMORY_TOLERANCE + CUBLAS_WORKSPACES_BYTES / e
        verdict = PASS if 1 - MEMORY_TOLERANCE <= m / e <= high else FAIL
        s.add(what, f"{m / e:.4f} ({m / acc.GIB:.2f} / {e / acc.GIB:.2f} GiB)",
              f"{1 - MEMORY_TOLERANCE:.2f} to {high:.3f}", verdict)


def _attention(s: Summary, records: list[dict]) -> None:
    from lmreport.report.sections.attention import record_row
    eager = [r for r in records if r["section"] == "attention" and (r.get("config") or {}).get("variant") == "eager"
             and r["config"].get("source", "measured") == "measured"]
    probes = [r for r in eager if r["config"].get("purpose") == ATTENTION_OOM_PROBE]
    checked = [r for r in eager if r not in probes and r["config"]["seq_len"] >= ATTENTION_MIN_SEQ_LEN]
    if not checked:
        s.add("attention: peak / formula", f"no eager cell at T >= {ATTENTION_MIN_SEQ_LEN:,}", "one per cell", FAIL)
    for r in sorted(checked, key=lambda r: (r["config"]["d"], r["config"]["seq_len"])):
        what = f"attention {r['cell']}: peak above baseline / formula"
        row = record_row(r) if r["status"] == "ok" else None
        if row is None or row["peak_ratio"] is None:
            s.add(what, r["status"] if row is None else "no peak measured", "ok, CUDA memory counters", FAIL)
            continue
        verdict = PASS if abs(row["peak_ratio"] - 1) <= ATTENTION_TOLERANCE else FAIL
        extra = row["allocated_extra_bytes"]
        s.add(what, f"{row['peak_ratio']:.4f} (before the forward {row['baseline_bytes'] / acc.MIB:.0f} MiB"
              + (f", {extra / acc.MIB:.0f} MiB of it beyond Q, K, V, dO, mask)" if extra is not None else ")"),
              f"within {_pct(ATTENTION_TOLERANCE)}", verdict)
    if not probes:
        s.add("attention out-of-memory probe", "no probe cell", "recorded as oom", FAIL)
    for r in probes:
        c = r["config"]
        s.add(f"attention out-of-memory probe {r['cell']} (B={c['batch']}, T={c['seq_len']:,})",
              r["status"] + (f": {(r.get('error') or '')[:100]}" if r.get("error") else ""),
              "oom", PASS if r["status"] == "oom" else FAIL)


def _mfu(s: Summary, records: list[dict]) -> None:
    grid = [r for r in records if r["section"] == "bench" and r["status"] == "ok"
            and (r.get("config") or {}).get("experiment") == "step" and r["config"].get("dtype") == "fp32"
            and not r["config"].get("compiled") and "-warmup" not in r["cell"]]
    if not grid:
        s.add("bench: MFU of the largest fp32 cell", "no ok fp32 cell", "a measured MFU", FAIL)
        return
    top = max(grid, key=lambda r: r["metrics"].get("flops_per_step") or 0)
    m = top["metrics"]
    what = f"bench {top['cell']}: MFU (largest fp32 cell)"
    lo, hi = MFU_RANGE
    if m.get("mfu") is None:  # a GPU lmreport/peaks.py does not list: no datasheet peak to compare with
        s.add(what, f"{m.get('achieved_tflops', 0):.1f} TFLOP/s; {m.get('peak_source') or 'no peak'}",
              f"{_pct(lo)} to {_pct(hi)}", NA)
        return
    s.add(what, f"{_pct(m['mfu'])} ({m['achieved_tflops']:.1f} of {m['peak_tflops']:.1f} TFLOP/s, "
          f"{(m.get('peak_source') or '').split(':')[0]})", f"{_pct(lo)} to {_pct(hi)}",
          PASS if lo <= m["mfu"] <= hi else FAIL)


def summarize(records: list[dict], planned: dict[str, list[str]], tests: TestResults | None,
              steps: list[Step] = (), since: str | None = None) -> Summary:
    """The table of a gpu-check from the run's records (one per cell, e.g. select_for_check), the planned cell
    names per section, the CUDA tests' results (None when they did not finish) and the steps that ran.

    since: when the check began (store.now_iso(), taken before its first step). A record that started before
    it is not this check's: its cell counts as not run, and the record is in no other row (wall seconds,
    cross-checks). None: every record counts (a summary of records alone)."""
    before: set[tuple[str, str]] = set()
    if since is not None:
        before = {(r["section"], r["cell"]) for r in records if not started_since(r, since)}
        records = [r for r in records if (r["section"], r["cell"]) not in before]
    s = Summary()
    for step in steps:
        ok = step.returncode is not None and not step.timed_out
        result = ("timed out" if step.timed_out else f"exit {step.returncode}") + f" after {step.wall_s:.0f} s"
        # a run or a render that ends non-zero because a cell failed is judged by the rows below
        s.add(f"step: {step.name}", result, "finished within its timeout", PASS if ok else FAIL)
    _sections(s, records, planned, before,
              "no error, every cell recorded" + (" by this check" if since is not None else ""))
    _tests(s, tests)
    _memory(s, records)
    _attention(s, records)
    _mfu(s, records)
    return s


def table(summary: Summary) -> str:
    """The summary as one plain-text table (pandas), then a verdict line."""
    import pandas as pd
    frame = pd.DataFrame(summary.rows, columns=["what", "result", "expected", "verdict"])
    widths = {c: max([len(c), *frame[c].map(len)]) for c in frame.columns}
    text = frame.to_string(index=False, justify="left",
                           formatters={c: (lambda v, w=w: v.ljust(w)) for c, w in widths.items()})
    n = len(summary.failed)
    verdict = "gpu-check: PASS" if summary.ok else f"gpu-check: FAIL ({n} row{'s' if n > 1 else ''} failed)"
    return f"{text}\n{verdict}"
