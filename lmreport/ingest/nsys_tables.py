"""Tables of `nsys stats` exports, whatever their version and however they were saved.

Two forms exist, and one file may hold several tables of either:

- CSV, from `nsys stats --format csv` (a file per report with `--output`, or stdout): a
  header such as `Time (%),Total Time (ns),Instances,Avg (ns),...,Name`, names quoted only
  when they contain a comma (QUOTE_MINIMAL), possibly after NOTICE lines and a
  `Processing [x.sqlite] with [.../reports/cuda_api_sum.py]...` line.
- Console tables, from `nsys stats` or `nsys profile --stats=true`, pasted into notes: a
  header, a line of dashes, column-aligned rows with thousands separators, long names cut
  with "…"; each under `[6/8] Executing 'cuda_gpu_kern_sum' stats report`, a title such as
  ` ** CUDA GPU Kernel Summary (cuda_gpu_kern_sum):`, or (nsys 2021 and older) titles such
  as `CUDA Kernel Statistics:`; `SKIPPED: ... does not contain ...` for empty reports.

The report is recognised from its columns (and the title when there is one), never from the
file name. Report names are normalised to the current ones (nsys 2023.1 renamed `gpukernsum`
to `cuda_gpu_kern_sum`, `nvtxsum` to `nvtx_sum`, ...); column names to keys with the unit
folded in: `Time(%)`/`Time (%)` -> `time_pct`, `Average`/`Avg (ns)`/`Avg (us)` -> `avg_ns` in
nanoseconds, `Instances`/`Num Calls`/`Count` -> `instances`, `Kernel Name` -> `name`.

Anything that is not such a table gives an InputFileError that names the file, the line and
the problem (empty, binary, wrong columns, a row cut short).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from lmreport.errors import InputFileError
from lmreport.kernels import TRUNCATION_MARK

# Old report names (nsys 2022.x and earlier) -> current names.
REPORT_ALIASES = {
    "gpukernsum": "cuda_gpu_kern_sum", "cudaapisum": "cuda_api_sum", "gpumemtimesum": "cuda_gpu_mem_time_sum",
    "gpumemsizesum": "cuda_gpu_mem_size_sum", "nvtxsum": "nvtx_sum", "nvtxppsum": "nvtx_pushpop_sum",
    "nvtxkernsum": "nvtx_kern_sum", "nvtxgpuprojsum": "nvtx_gpu_proj_sum", "osrtsum": "osrt_sum",
    "gpusum": "cuda_gpu_sum", "kernexecsum": "cuda_kern_exec_sum",
}
# Console titles of nsys 2021 and older.
OLD_TITLES = {
    "cuda api statistics": "cuda_api_sum",
    "cuda kernel statistics": "cuda_gpu_kern_sum",
    "cuda memory operation statistics (by time)": "cuda_gpu_mem_time_sum",
    "cuda memory operation statistics (by size in kib)": "cuda_gpu_mem_size_sum",
    "cuda memory operation statistics (by size)": "cuda_gpu_mem_size_sum",
    "operating system runtime api statistics": "osrt_sum",
    "nvtx push-pop range statistics": "nvtx_pushpop_sum",
    "nvtx range statistics": "nvtx_sum",
}
REPORTS = ("cuda_gpu_kern_sum", "nvtx_sum", "nvtx_pushpop_sum", "nvtx_kern_sum", "nvtx_gpu_proj_sum", "cuda_api_sum",
           "osrt_sum", "cuda_gpu_mem_time_sum", "cuda_gpu_mem_size_sum", "cuda_gpu_sum")
REQUIRED = {  # report -> keys a table must have for lmreport to use it
    "cuda_gpu_kern_sum": ("name", "total_time_ns"), "nvtx_sum": ("range", "total_time_ns"),
    "nvtx_pushpop_sum": ("range", "total_time_ns"), "nvtx_kern_sum": ("range", "name", "total_time_ns"),
    "nvtx_gpu_proj_sum": ("range", "proj_total_ns"), "cuda_api_sum": ("name", "total_time_ns"),
    "osrt_sum": ("name", "total_time_ns"), "cuda_gpu_mem_time_sum": ("name", "total_time_ns"),
    "cuda_gpu_mem_size_sum": ("name",), "cuda_gpu_sum": ("name", "total_time_ns"),
}
TEXT_KEYS = {"name", "range", "style", "category", "operation"}

# Column header (lower case, unit removed) -> key before units.
_COLUMN_KEYS = {
    "time": "time_pct", "time(%)": "time_pct",
    "total time": "total_time", "total": "total",
    "instances": "instances", "num calls": "calls", "calls": "calls", "count": "count", "operations": "count",
    "kern inst": "kern_instances", "nvtx inst": "nvtx_instances", "range instances": "range_instances",
    "avg": "avg", "average": "avg", "med": "med", "median": "med", "min": "min", "minimum": "min",
    "max": "max", "maximum": "max", "stddev": "stddev", "std dev": "stddev",
    "name": "name", "kernel name": "name", "operation": "operation", "range": "range", "nvtx range": "range",
    "style": "style", "category": "category", "pid": "pid", "tid": "tid", "device": "device",
    "total proj time": "proj_total", "total range time": "range_total", "proj avg": "proj_avg",
    "proj med": "proj_med", "proj min": "proj_min", "proj max": "proj_max", "proj stddev": "proj_stddev",
    "total gpu ops": "gpu_ops", "avg gpu ops": "avg_gpu_ops", "avg range lvl": "avg_range_level",
    "avg num child": "avg_children",
}
_TIME_KEYS = {"total_time", "avg", "med", "min", "max", "stddev", "proj_total", "range_total", "proj_avg",
              "proj_med", "proj_min", "proj_max", "proj_stddev"}
_TIME_UNITS_NS = {"ns": 1, "us": 1e3, "μs": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}
_HEADER_UNIT = re.compile(r"^(?P<base>.*?)\s*\((?P<unit>[^()]*)\)\s*$")

_EXECUTING = re.compile(r"Executing '([\w\-]+)(?::[^']*)?' stats report")
_PROCESSING = re.compile(r"Processing \[(?P<input>[^\]]*)\] with \[(?P<script>[^\]]*)\]")
_STARRED_TITLE = re.compile(r"^\s*\*\*\s*(?P<title>.+?)\s*\((?P<name>[\w\-]+)(?::[^)]*)?\):?\s*$")
_SKIPPED = re.compile(r"^\s*SKIPPED:\s*(?P<reason>.*)$")
_DASHES = re.compile(r"^\s*-{2,}(\s+-{2,})+\s*$")
_NSYS_VERSION = re.compile(r"nsight[-_ ]systems[-_ /](\d{4}\.\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass
class Table:
    """One report's table: rows keyed by normalised column keys, times in nanoseconds."""

    report: str  # current nsys report name, e.g. "cuda_gpu_kern_sum"
    columns: list[str]  # original column headers
    keys: list[str]  # their normalised keys
    rows: list[dict]
    form: str  # "csv" or "console"
    line: int  # 1-based line of the header in its file
    title: str | None = None  # the title or "Executing" line it appeared under
    truncated_names: int = 0  # names cut with "…" (console output)

    @property
    def total_time_ns(self) -> float | None:
        key = "proj_total_ns" if self.report == "nvtx_gpu_proj_sum" else "total_time_ns"
        if key not in self.keys:
            return None
        return sum(r.get(key) or 0 for r in self.rows)


@dataclass
class Export:
    """Everything found in one file."""

    path: Path
    tables: list[Table] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"report", "reason"} for SKIPPED reports
    nsys_version: str | None = None  # when a "Processing [...] with [...]" path names it


def canonical_report(name: str | None) -> str | None:
    if not name:
        return None
    name = name.strip().lower().split(":")[0]
    name = REPORT_ALIASES.get(name, name)
    return name if name in REPORTS else None


# --- columns ----------------------------------------------------------------------------------


def _column(header: str) -> tuple[str | None, str | None]:
    """(key before units, unit) of one header; key None when unknown."""
    h = " ".join(header.strip().strip('"').split())
    unit = None
    m = _HEADER_UNIT.match(h)
    if m and m.group("base"):
        h, unit = m.group("base"), m.group("unit").strip()
    low = h.lower()
    if low in ("time", "time(%)") and (unit == "%" or low == "time(%)"):
        return "time_pct", "%"
    return _COLUMN_KEYS.get(low), unit


def _known_columns(headers: list[str]) -> list[str | None]:
    return [_column(h)[0] for h in headers]


def looks_like_header(headers: list[str]) -> bool:
    """Three or more nsys columns, among them a time or a name/range column."""
    keys = [k for k in _known_columns(headers) if k]
    return len(keys) >= 3 and bool({"total_time", "proj_total", "time_pct"} & set(keys)
                                   or {"name", "range", "operation"} & set(keys))


def _detect_report(keys: list[str | None]) -> set[str]:
    """Reports whose columns these are (two when only the content can tell: CUDA API vs OS runtime)."""
    ks = set(keys)
    if "proj_total" in ks:
        return {"nvtx_gpu_proj_sum"}
    if "range" in ks and "name" in ks and ("nvtx_instances" in ks or "kern_instances" in ks):
        return {"nvtx_kern_sum"}
    if "range" in ks and "name" not in ks:
        return {"nvtx_sum"} if "style" in ks else {"nvtx_pushpop_sum"}
    if "category" in ks and ("name" in ks or "operation" in ks):
        return {"cuda_gpu_sum"}
    if "operation" in ks:
        return {"cuda_gpu_mem_time_sum"} if "total_time" in ks else {"cuda_gpu_mem_size_sum"}
    if "name" in ks and "calls" in ks:
        return {"cuda_api_sum", "osrt_sum"}
    if "name" in ks and ("instances" in ks or "count" in ks):
        return {"cuda_gpu_kern_sum"}
    return set()


def _final_keys(headers: list[str], report: str) -> tuple[list[str], list[float | None]]:
    """Keys with units folded in and the factor that converts each value to them."""
    keys, scales = [], []
    seen: set[str] = set()
    for h in headers:
        base, unit = _column(h)
        scale: float | None = None
        if base is None:
            key = re.sub(r"[^a-z0-9]+", "_", h.strip().strip('"').lower()).strip("_") or "column"
        elif base in ("instances", "calls", "count", "kern_instances", "range_instances"):
            key = "instances"
        elif base == "operation":
            key = "name"
        elif base in _TIME_KEYS and report != "cuda_gpu_mem_size_sum":
            if unit is None or unit.lower() in _TIME_UNITS_NS:
                scale = _TIME_UNITS_NS[(unit or "ns").lower()] if unit else 1.0
                key = f"{base}_ns"
            else:
                key = f"{base}_{re.sub(r'[^a-z0-9]+', '', unit.lower())}"
        elif unit and base not in TEXT_KEYS and base != "time_pct":
            key = f"{base}_{re.sub(r'[^a-z0-9]+', '', unit.lower())}"
        else:
            key = base
        while key in seen:
            key += "_"
        seen.add(key)
        keys.append(key)
        scales.append(scale)
    return keys, scales


def _cuda_api_names(rows: list[dict]) -> bool:
    names = [r.get("name") or "" for r in rows]
    if not names:
        return True
    cuda = sum(bool(re.match(r"^(cuda|cu|nccl|cublas|cudnn)[A-Z_]", n)) for n in names)
    return cuda * 2 >= len(names)


# --- values -----------------------------------------------------------------------------------


def _number(text: str) -> float | int | None:
    """'3,481,709' -> 3481709; '182472.0' -> 182472.0; '' or 'nan' -> None; ValueError otherwise."""
    t = text.strip().replace(",", "").replace("\u202f", "").replace("\xa0", "")
    if t in ("", "-", "nan", "-nan", "NaN", "N/A"):
        return None
    v = float(t)
    return int(v) if v.is_integer() and "." not in t and "e" not in t.lower() else v


class _BadValue(ValueError):
    """A value lmreport needs that is not what its column promises: (key, what is wrong)."""


_COUNT_KEYS = ("instances", "nvtx_instances")


def _checked(x: float | int | None, k: str) -> None:
    """Times, shares and counts are finite and not negative (StdDev included); counts are whole."""
    if x is None or not (k == "time_pct" or k.endswith("_ns") or k in _COUNT_KEYS):
        return
    if x != x or x in (float("inf"), float("-inf")):
        raise _BadValue(k, "is not a finite number")
    if x < 0:
        raise _BadValue(k, "is negative")
    if k in _COUNT_KEYS and not float(x).is_integer():
        raise _BadValue(k, "is not a whole number of calls")


def _row(values: list[str], keys: list[str], scales: list[float | None]) -> tuple[dict, bool]:
    """A row dict; raises _BadValue(column, problem) for a value lmreport uses that is not a valid number."""
    row, cut = {}, False
    for v, k, s in zip(values, keys, scales):
        if k in TEXT_KEYS:
            v = v.strip()
            if v.endswith(TRUNCATION_MARK):
                cut = True
            row[k] = v
            continue
        try:
            x = _number(v)
        except ValueError:
            if k == "time_pct" or k.endswith("_ns") or k in _COUNT_KEYS:
                raise _BadValue(k, "is not a number") from None
            row[k] = v.strip()  # a column lmreport does not use: keep it as text
            continue
        _checked(x, k)
        if x is not None and s not in (None, 1, 1.0):
            x = x * s
            x = int(round(x)) if abs(x - round(x)) < 1e-6 else x
        row[k] = x
    if cut:
        row["truncated"] = True
    return row, cut


# --- files ------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """The text of an export; InputFileError for a missing, empty or binary file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a folder; pass the exported files themselves") from None
    except OSError as e:
        raise InputFileError(path, f"cannot be read ({e.strerror})") from None
    if not data.strip():
        raise InputFileError(path, "empty file, not an nsys stats export")
    if data.startswith(b"SQLite format 3\x00"):
        raise InputFileError(path, "an SQLite export, not a stats table: run `nsys stats --format csv "
                                   "--report cuda_gpu_kern_sum ... FILE` on it and pass the CSV")
    head = data[:65536]
    if b"\x00" in head:
        raise InputFileError(path, "a binary file (an .nsys-rep report?), not a text export: run `nsys stats "
                                   "--format csv --report cuda_gpu_kern_sum ... FILE` and pass the CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if text.count("\ufffd") > max(16, len(text) // 100):
            raise InputFileError(path, "a binary file, not a text export of nsys stats") from None
        return text


def _title_of(line: str) -> tuple[str, str | None] | None:
    """(title line, report name or None) when this line announces a report."""
    m = _EXECUTING.search(line)
    if m:
        return line.strip(), canonical_report(m.group(1))
    m = _PROCESSING.search(line)
    if m:
        script = Path(m.group("script").strip()).name
        return line.strip(), canonical_report(script.removesuffix(".py"))
    m = _STARRED_TITLE.match(line)
    if m:
        return line.strip(), canonical_report(m.group("name"))
    t = line.strip().rstrip(":").strip().lower()
    if line.strip().endswith(":") and t in OLD_TITLES:
        return line.strip(), OLD_TITLES[t]
    return None


def parse_text(text: str, path: Path) -> Export:
    """Every table in the text of one file."""
    lines = text.splitlines()
    export = Export(Path(path))
    title: tuple[str, str | None] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if export.nsys_version is None:
            v = _NSYS_VERSION.search(line)
            if v:
                export.nsys_version = v.group(1)
        announced = _title_of(line)
        if announced:
            title = announced
            i += 1
            continue
        skipped = _SKIPPED.match(line)
        if skipped:
            export.skipped.append({"report": title[1] if title else None, "reason": skipped.group("reason").strip()})
            title = None
            i += 1
            continue
        if i + 1 < len(lines) and _DASHES.match(lines[i + 1]) and line.strip():
            table, i = _console_table(lines, i, path, title)
            if table is not None:
                export.tables.append(table)
                title = None
            continue
        if "," in line:
            try:
                headers = next(csv.reader([line], strict=True))
            except csv.Error:
                headers = []
            if looks_like_header(headers):
                table, i = _csv_table(lines, i, headers, path, title)
                export.tables.append(table)
                title = None
                continue
        i += 1
    if not export.tables and not export.skipped:
        first = next((ln.strip() for ln in lines if ln.strip()), "")
        raise InputFileError(path, "no nsys stats table found (a CSV header like 'Time (%),Total Time (ns),"
                                   "Instances,...,Name' or a console table with a line of dashes); the file "
                                   f"starts with {first[:80]!r}")
    return export


def parse_file(path: Path) -> Export:
    """Every nsys stats table in one file (CSV or console text); InputFileError when there is none."""
    return parse_text(read_text(path), Path(path))


def _choose_report(keys: list[str | None], title: tuple[str, str | None] | None, headers: list[str],
                   path: Path, line_no: int) -> str:
    candidates = _detect_report(keys)
    named = title[1] if title else None
    if len(candidates) == 1:
        return next(iter(candidates))
    if named in candidates:
        return named
    if candidates:  # CUDA API vs OS runtime: decided from the names once the rows are read
        return "cuda_api_sum|osrt_sum"
    cols = ", ".join(repr(h.strip()) for h in headers)
    raise InputFileError(path, f"line {line_no}: a table with columns {cols} is not an nsys stats report "
                               "lmreport reads (it needs a 'Name' or 'Range' column, e.g. cuda_gpu_kern_sum, "
                               "nvtx_sum, nvtx_kern_sum, cuda_api_sum)")


def _finish(report: str, headers: list[str], rows_raw: list[tuple[int, list[str]]], path: Path, header_line: int,
            form: str, title: tuple[str, str | None] | None) -> Table:
    provisional = report.split("|")[0]
    keys, scales = _final_keys(headers, provisional)
    rows, cut = [], 0
    for line_no, values in rows_raw:
        try:
            row, was_cut = _row(values, keys, scales)
        except _BadValue as e:
            key, problem = e.args
            col, bad = headers[keys.index(key)].strip(), values[keys.index(key)].strip()
            raise InputFileError(path, f"line {line_no}: {bad[:40]!r} {problem} in column {col!r}") from None
        rows.append(row)
        cut += was_cut
    if "|" in report:
        report = "cuda_api_sum" if _cuda_api_names(rows) else "osrt_sum"
    missing = [k for k in REQUIRED[report] if k not in keys]
    if missing:
        raise InputFileError(path, f"line {header_line}: the {report} table lacks column(s) {', '.join(missing)} "
                                   f"(it has {', '.join(h.strip() for h in headers)})")
    return Table(report, [h.strip() for h in headers], keys, rows, form, header_line,
                 title[0] if title else None, cut)


def _csv_table(lines: list[str], i: int, headers: list[str], path: Path,
               title: tuple[str, str | None] | None) -> tuple[Table, int]:
    header_line = i + 1
    report = _choose_report(_known_columns(headers), title, headers, path, header_line)
    n = len(headers)
    text_last = _column(headers[-1])[0] in TEXT_KEYS
    rows_raw = []
    i += 1
    while i < len(lines):
        line = lines[i]
        if not line.strip() or _title_of(line) or _SKIPPED.match(line):
            break
        try:
            values = next(csv.reader([line], strict=True))
        except csv.Error:
            raise InputFileError(path, f"line {i + 1}: unterminated quoted name; the file looks truncated") from None
        if len(values) < n:
            raise InputFileError(path, f"line {i + 1}: {len(values)} of the {n} columns of the {report.split('|')[0]} "
                                       "header; the file looks truncated")
        if len(values) > n:
            if not text_last:
                raise InputFileError(path, f"line {i + 1}: {len(values)} fields for the {n} columns of the header")
            values = values[:n - 1] + [",".join(values[n - 1:])]  # an unquoted name holding commas
        rows_raw.append((i + 1, values))
        i += 1
    return _finish(report, headers, rows_raw, path, header_line, "csv", title), i


def _spans(dash_line: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"-+", dash_line)]


def _split_console_row(line: str, spans: list[tuple[int, int]], numeric: list[bool]) -> list[str] | None:
    """The cells of one aligned row, or None when it does not fit the header's columns."""
    n = len(spans)
    # 1. By the dash spans: each cell runs from its column's start to the next column's start.
    cells = []
    for k, (start, _end) in enumerate(spans):
        stop = spans[k + 1][0] if k + 1 < n else len(line)
        cells.append(line[start:stop].strip())
    if _fits(cells, numeric) and line[:spans[0][0]].strip() == "":
        return cells
    # 2. By runs of two or more spaces (a paste that lost its alignment).
    cells = re.split(r"\s{2,}", line.strip())
    if len(cells) == n and _fits(cells, numeric):
        return cells
    # 3. Numbers first, text columns last: single spaces split the numbers, the last text takes the rest.
    first_text = numeric.index(False) if False in numeric else n
    if first_text and not any(numeric[first_text:]):
        tokens = line.split()
        texts = n - first_text
        if len(tokens) >= n:
            cells = tokens[:first_text] + tokens[first_text:first_text + texts - 1]
            cells.append(" ".join(tokens[first_text + texts - 1:]))
            if _fits(cells, numeric):
                return cells
    return None


def _fits(cells: list[str], numeric: list[bool]) -> bool:
    if len(cells) != len(numeric):
        return False
    for c, is_num in zip(cells, numeric):
        if is_num:  # console tables print every number; an empty cell means a row cut short
            try:
                if _number(c) is None and not c.strip():
                    return False
            except ValueError:
                return False
    return True


def _console_table(lines: list[str], i: int, path: Path,
                   title: tuple[str, str | None] | None) -> tuple[Table | None, int]:
    header, dashes = lines[i], lines[i + 1]
    spans = _spans(dashes)
    headers = re.split(r"\s{2,}", header.strip())
    if len(headers) != len(spans):
        headers = [header[s:(spans[k + 1][0] if k + 1 < len(spans) else len(header))].strip()
                   for k, (s, _e) in enumerate(spans)]
    if not looks_like_header(headers):
        return None, i + 2  # some other dashed table (a benchmark printout): not ours
    header_line = i + 1
    report = _choose_report(_known_columns(headers), title, headers, path, header_line)
    numeric = [_column(h)[0] not in TEXT_KEYS and _column(h)[0] is not None for h in headers]
    rows_raw = []
    i += 2
    while i < len(lines):
        line = lines[i]
        if not line.strip() or _title_of(line) or _SKIPPED.match(line) or line.strip().startswith("```"):
            break
        cells = _split_console_row(line, spans, numeric)
        if cells is None:
            rest = [ln for ln in lines[i + 1:] if ln.strip()]
            if not rest and _partial_row(line, numeric):
                raise InputFileError(path, f"line {i + 1}: a row with fewer columns than the header; "
                                           "the file looks truncated")
            break  # prose right after the table
        rows_raw.append((i + 1, cells))
        i += 1
    return _finish(report, headers, rows_raw, path, header_line, "console", title), i


def _partial_row(line: str, numeric: list[bool]) -> bool:
    """A row cut short: it starts with the numbers the header promises but has too few cells."""
    tokens = line.split()
    lead = numeric.index(False) if False in numeric else len(numeric)
    if not tokens or lead == 0:
        return False
    try:
        for t in tokens[:min(lead, len(tokens))]:
            _number(t)
    except ValueError:
        return False
    return len(tokens) < len(numeric)
