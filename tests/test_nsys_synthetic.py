"""Synthetic nsys stats exports of every variant, and the parsed numbers checked.

The builders here write what nsys writes (CSV of 2021-era and current versions, console
tables as `nsys stats` prints them); other nsys tests import them. A synthetic profile of
the study's workload (tiny model, 2 layers, 5 measured steps) has known totals, so the
answers computed from it can be checked by hand.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from lmreport.errors import InputFileError
from lmreport.ingest.nsys_tables import parse_file, parse_text

# --- kernel names as nsys demangles them (PyTorch 2.x, Ampere) ----------------------------------------

SGEMM_TN = "ampere_sgemm_128x64_tn"
SGEMM_HEAD = "ampere_sgemm_32x128_tn"
BMM = "void cutlass::Kernel2<cutlass_80_simt_sgemm_128x64_8x5_nn_align1>(T1::Params)"
SOFTMAX = ("void at::native::(anonymous namespace)::softmax_warp_forward<float, float, float, (int)7, (bool)0, (bool)0>"
           "(T2 *, const T1 *, int, int, int, const bool *, int, bool)")
MUL = ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::BinaryFunctor<float, float, float, "
       "at::native::binary_internal::MulFunctor<float>>, std::array<char *, (unsigned long)3>>(int, T2, T3)")
ADD = ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::CUDAFunctor_add<float>, "
       "std::array<char *, (unsigned long)3>>(int, T2, T3)")
MEAN = ("void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<float, at::native::MeanOps<float, float, "
        "float, float>, unsigned int, float, (int)4>>(T3)")
COPY = ("void at::native::elementwise_kernel<(int)128, (int)2, void at::native::gpu_kernel_impl_nocast<at::native::"
        "direct_copy_kernel_cuda(at::TensorIteratorBase &)::[lambda() (instance 3)]::operator ()() const::[lambda() "
        "(instance 7)]::operator ()() const::[lambda(float) (instance 1)]>(at::TensorIteratorBase &, const T1 &)::"
        "[lambda(int) (instance 1)]>(int, T3)")
WHERE = ("void at::native::elementwise_kernel<(int)128, (int)4, void at::native::gpu_kernel_impl_nocast<at::native::"
         "masked_fill_kernel(at::TensorIterator &, const c10::Scalar &)::[lambda() (instance 1)]::operator ()() const::"
         "[lambda() (instance 7)]::operator ()() const::[lambda(float, bool) (instance 1)]>(at::TensorIteratorBase &, "
         "const T1 &)::[lambda(int) (instance 1)]>(int, T3)")
DIV = ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::AUnaryFunctor<float, float, float, "
       "at::native::binary_internal::DivFunctor<float>>, std::array<char *, (unsigned long)2>>(int, T2, T3)")
SGEMM_DGRAD = "ampere_sgemm_128x32_sliced1x4_nn"
SGEMM_WGRAD = "ampere_sgemm_128x64_nt"
SOFTMAX_BWD = ("void at::native::(anonymous namespace)::softmax_warp_backward<float, float, float, (int)7, (bool)0, "
               "(bool)0>(T2 *, const T1 *, const T1 *, int, int, int, const bool *)")
LOG_SOFTMAX = ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<(int)4, float, float, float, at::native::"
               "(anonymous namespace)::LogSoftMaxForwardEpilogue>(T4 *, const T2 *, int)")
NLL = ("void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>(T1 *, T1 *, "
       "const T1 *, const T3 *, const T1 *, bool, long, long, long)")
SUM = ("void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
       "at::native::sum_functor<float, float, float>::operator ()(at::TensorIterator &)::[lambda(float, float) "
       "(instance 1)]>, unsigned int, float, (int)4>>(T3)")
SQRT = ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::sqrt_kernel_cuda(at::TensorIteratorBase &)::"
        "[lambda() (instance 2)]::operator ()() const::[lambda() (instance 2)]::operator ()() const::[lambda(float) "
        "(instance 1)], std::array<char *, (unsigned long)2>>(int, T2, T3)")
ADDCDIV = ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::(anonymous namespace)::addcdiv_cuda_kernel("
           "at::TensorIteratorBase &, const c10::Scalar &)::[lambda() (instance 1)]::operator ()() const::[lambda() "
           "(instance 4)]::operator ()() const::[lambda(float, float, float) (instance 1)], std::array<char *, "
           "(unsigned long)4>>(int, T2, T3)")
FILL = ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::FillFunctor<float>, std::array<char *, "
        "(unsigned long)1>>(int, T2, T3)")

STEPS, LAYERS = 5, 2
# (name, total ns over the 5 measured steps, instances): forward pass of "tiny" (2 layers) at ctx 64.
FORWARD = [
    (SGEMM_TN, 40_000_000, STEPS * LAYERS * 7),  # Q, K, V, O, W1, W3, W2 of each layer
    (SGEMM_HEAD, 20_000_000, STEPS),  # the LM head
    (BMM, 6_000_000, STEPS * LAYERS * 2),  # Q K^T and A V
    (MUL, 5_000_000, STEPS * LAYERS * 10),
    (ADD, 2_500_000, STEPS * LAYERS * 2),
    (SOFTMAX, 2_000_000, STEPS * LAYERS),
    (MEAN, 1_500_000, STEPS * (2 * LAYERS + 1)),
    (COPY, 1_000_000, STEPS * LAYERS * 2),
    (WHERE, 1_000_000, STEPS * LAYERS),
    (DIV, 500_000, STEPS * LAYERS),
]
FORWARD_TOTAL = sum(t for _, t, _ in FORWARD)  # 79.5 ms
LOSS = [(LOG_SOFTMAX, 1_000_000, STEPS), (NLL, 200_000, STEPS)]
BACKWARD = [(SGEMM_DGRAD, 50_000_000, STEPS * 14), (SGEMM_WGRAD, 45_000_000, STEPS * 15),
            (SOFTMAX_BWD, 3_000_000, STEPS * LAYERS), (SUM, 2_000_000, STEPS * 5), (FILL, 100_000, STEPS)]
OPTIMIZER = [(SQRT, 4_000_000, STEPS * 23), (ADDCDIV, 3_000_000, STEPS * 23), (MUL, 6_000_000, STEPS * 69)]
ATTENTION = {  # range -> kernels inside it over all calls (STEPS * LAYERS calls)
    "computing attention scores": [(BMM, 3_000_000, STEPS * LAYERS), (DIV, 500_000, STEPS * LAYERS),
                                   (WHERE, 1_000_000, STEPS * LAYERS)],
    "computing softmax": [(SOFTMAX, 2_000_000, STEPS * LAYERS)],
    "final matmul": [(BMM, 3_000_000, STEPS * LAYERS)],
}
KERN_HEADER = ["Time (%)", "Total Time (ns)", "Instances", "Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)",
               "StdDev (ns)", "Name"]
NVTX_HEADER = ["Time (%)", "Total Time (ns)", "Instances", "Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)",
               "StdDev (ns)", "Style", "Range"]
NVTX_KERN_HEADER = ["NVTX Range", "Style", "PID", "TID", "NVTX Inst", "Kern Inst", "Total Time (ns)", "Avg (ns)",
                    "Med (ns)", "Min (ns)", "Max (ns)", "StdDev (ns)", "Kernel Name"]
PROJ_HEADER = ["Range", "Style", "Total Proj Time (ns)", "Total Range Time (ns)", "Range Instances", "Proj Avg (ns)",
               "Proj Med (ns)", "Proj Min (ns)", "Proj Max (ns)", "Proj StdDev (ns)", "Total GPU Ops",
               "Avg GPU Ops", "Avg Range Lvl", "Avg Num Child"]
API_HEADER = ["Time (%)", "Total Time (ns)", "Num Calls", "Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)",
              "StdDev (ns)", "Name"]


def merge(*groups) -> list[tuple[str, int, int]]:
    acc: dict[str, list[int]] = {}
    for g in groups:
        for name, total, n in g:
            cur = acc.setdefault(name, [0, 0])
            cur[0] += total
            cur[1] += n
    return sorted(((k, v[0], v[1]) for k, v in acc.items()), key=lambda r: -r[1])


def kern_rows(kernels) -> list[list]:
    total = sum(t for _, t, _ in kernels)
    return [[round(100 * t / total, 1), t, n, round(t / n, 1), t // n, t // n - 10, t // n + 10, 5.0, name]
            for name, t, n in merge(kernels)]


def nvtx_rows(ranges: dict[str, tuple[int, int]], domain_prefix: str = ":") -> list[list]:
    total = sum(t for t, _ in ranges.values())
    return [[round(100 * t / total, 1), t, n, round(t / n, 1), t // n, t // n, t // n, 0.0, "PushPop",
             f"{domain_prefix}{name}"] for name, (t, n) in sorted(ranges.items(), key=lambda kv: -kv[1][0])]


def nvtx_kern_rows(by_range: dict[str, tuple[int, list]], domain_prefix: str = ":") -> list[list]:
    rows = []
    for rng, (nvtx_n, kernels) in by_range.items():
        for name, t, n in merge(kernels):
            rows.append([f"{domain_prefix}{rng}", "PushPop", 4242, 4242, nvtx_n, n, t, round(t / n, 1), t // n,
                         t // n, t // n, 0.0, name])
    return rows


def proj_rows(by_range: dict[str, tuple[int, list]]) -> list[list]:
    rows = []
    for rng, (nvtx_n, kernels) in by_range.items():
        t = sum(k[1] for k in kernels)
        rows.append([f":{rng}", "PushPop", t, t + 1000, nvtx_n, t // nvtx_n, t // nvtx_n, t // nvtx_n, t // nvtx_n,
                     0.0, sum(k[2] for k in kernels), 1.0, 2.0, 0.0])
    return rows


def to_csv(header: list[str], rows: list[list], quoting=csv.QUOTE_MINIMAL, preamble: str = "") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, quoting=quoting, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return preamble + buf.getvalue()


def _cell(v) -> tuple[str, bool]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v), False
    if isinstance(v, int):
        return f"{v:,}", True
    return f"{v:,.1f}", True


def to_console(header: list[str], rows: list[list], max_name: int | None = None, pct_first: bool = True) -> str:
    """A table as `nsys stats` prints it: centred headers, dashes, thousands separators, names cut with '…'."""
    cells = []
    for r in rows:
        out = []
        for i, v in enumerate(r):
            text, num = _cell(v)
            if i == 0 and pct_first and isinstance(v, float):
                text = f"{v:.1f}"
            if not num and max_name and len(text) > max_name:
                text = text[:max_name - 1] + "…"
            out.append((text, num))
        cells.append(out)
    widths = [max([len(h)] + [len(r[i][0]) for r in cells]) for i, h in enumerate(header)]
    lines = [" " + "  ".join(h.center(w) for h, w in zip(header, widths)),
             " " + "  ".join("-" * w for w in widths)]
    for r in cells:
        lines.append(" " + "  ".join(t.rjust(w) if num else t.ljust(w) for (t, num), w in zip(r, widths)))
    return "\n".join(lines) + "\n"


def forward_by_range() -> dict[str, tuple[int, list]]:
    attention_all = merge(*ATTENTION.values())
    return {"step": (STEPS, FORWARD), "forward": (STEPS, FORWARD),
            "scaled dot product attention": (STEPS * LAYERS, attention_all),
            **{k: (STEPS * LAYERS, v) for k, v in ATTENTION.items()}}


def forward_nvtx() -> dict[str, tuple[int, int]]:
    return {"step": (85_000_000, STEPS), "forward": (84_000_000, STEPS), "scaled dot product attention": (2_000_000, 10),
            "computing attention scores": (800_000, 10), "computing softmax": (300_000, 10), "final matmul": (300_000, 10)}


def train_by_range() -> dict[str, tuple[int, list]]:
    attention_all = merge(*ATTENTION.values())
    main_thread = merge(FORWARD, LOSS, [(FILL, 100_000, STEPS)], OPTIMIZER)
    return {"step": (STEPS, main_thread), "forward": (STEPS, merge(FORWARD, LOSS)),
            "backward": (STEPS, [(FILL, 100_000, STEPS)]), "optimizer step": (STEPS, OPTIMIZER),
            "scaled dot product attention": (STEPS * LAYERS, attention_all),
            **{k: (STEPS * LAYERS, v) for k, v in ATTENTION.items()}}


def train_nvtx() -> dict[str, tuple[int, int]]:
    return {"step": (300_000_000, STEPS), "forward": (90_000_000, STEPS), "backward": (180_000_000, STEPS),
            "optimizer step": (29_000_000, STEPS), "scaled dot product attention": (2_000_000, 10),
            "computing attention scores": (800_000, 10), "computing softmax": (300_000, 10),
            "final matmul": (300_000, 10)}


TRAIN_KERNELS = merge(FORWARD, LOSS, BACKWARD, OPTIMIZER)


def write_profile(folder: Path, mode: str = "forward", prefix: str = "stats") -> list[Path]:
    """The five CSVs `nsys stats --format csv --output PREFIX` writes for one synthetic profile."""
    folder.mkdir(parents=True, exist_ok=True)
    kernels = FORWARD if mode == "forward" else TRAIN_KERNELS
    by_range = forward_by_range() if mode == "forward" else train_by_range()
    nvtx = forward_nvtx() if mode == "forward" else train_nvtx()
    files = {
        "cuda_gpu_kern_sum": to_csv(KERN_HEADER, kern_rows(kernels)),
        "nvtx_sum": to_csv(NVTX_HEADER, nvtx_rows(nvtx)),
        "nvtx_kern_sum": to_csv(NVTX_KERN_HEADER, nvtx_kern_rows(by_range)),
        "nvtx_gpu_proj_sum": to_csv(PROJ_HEADER, proj_rows(by_range)),
        "cuda_api_sum": to_csv(API_HEADER, [[60.0, 90_000_000, 2000, 45000.0, 40000, 1000, 900000, 10.0,
                                             "cudaDeviceSynchronize"],
                                            [40.0, 60_000_000, 30000, 2000.0, 1900, 1000, 50000, 10.0,
                                             "cudaLaunchKernel"]]),
    }
    out = []
    for report, text in files.items():
        p = folder / f"{prefix}_{report}.csv"
        p.write_text(text)
        out.append(p)
    return out


# --- CSV variants ---------------------------------------------------------------------------------------


def test_current_csv_with_preamble_and_quoted_long_names(tmp_path):
    long_name = "void cutlass::device_kernel<" + ", ".join(f"cute::C<(int){i}>" for i in range(600)) + ">(T1::Params)"
    assert len(long_name) > 5000 and "," in long_name
    rows = kern_rows(FORWARD) + [[0.0, 7, 1, 7.0, 7, 7, 7, 0.0, long_name]]
    preamble = ("\nNOTICE: Existing SQLite export found: /x/profile.sqlite\n        It is assumed file was previously "
                "exported from: /x/profile.nsys-rep\n        Consider using --force-export=true if needed.\n\n"
                "Processing [/x/profile.sqlite] with [/opt/nvidia/nsight-systems/2024.5.1/host-linux-x64/reports/"
                "cuda_gpu_kern_sum.py]... \n")
    p = tmp_path / "stdout.txt"
    p.write_text(to_csv(KERN_HEADER, rows, preamble=preamble))
    e = parse_file(p)
    assert e.nsys_version == "2024.5.1" and len(e.tables) == 1
    t = e.tables[0]
    assert (t.report, t.form, t.line, len(t.rows)) == ("cuda_gpu_kern_sum", "csv", 7, len(FORWARD) + 1)
    assert t.rows[0] == {"time_pct": 50.3, "total_time_ns": 40_000_000, "instances": 70, "avg_ns": 571428.6,
                         "med_ns": 571428, "min_ns": 571418, "max_ns": 571438, "stddev_ns": 5.0, "name": SGEMM_TN}
    assert t.rows[-1]["name"] == long_name  # QUOTE_MINIMAL: the commas stay inside the name
    assert t.total_time_ns == FORWARD_TOTAL + 7


def test_2021_csv_quoted_headers_old_columns_and_old_report_name(tmp_path):
    header = ["Time(%)", "Total Time (ns)", "Instances", "Average", "Minimum", "Maximum", "Name"]
    rows = [[r[0], r[1], r[2], r[3], r[5], r[6], r[8]] for r in kern_rows(FORWARD)]
    text = to_csv(header, rows, quoting=csv.QUOTE_NONNUMERIC,
                  preamble="Using report7.sqlite for SQL queries.\nRunning [/opt/nsys/reports/gpukernsum.py "
                           "report7.sqlite]... \n\n")
    p = tmp_path / "report7_gpukernsum.csv"
    p.write_text(text)
    t = parse_file(p).tables[0]
    assert t.report == "cuda_gpu_kern_sum"
    assert t.keys == ["time_pct", "total_time_ns", "instances", "avg_ns", "min_ns", "max_ns", "name"]
    assert t.rows[1]["name"] == SGEMM_HEAD and t.rows[1]["total_time_ns"] == 20_000_000 and t.rows[1]["instances"] == 5
    assert t.rows[1]["avg_ns"] == 4_000_000


def test_old_report_name_in_processing_line_is_normalised(tmp_path):
    text = ("Processing [r.sqlite] with [/opt/nvidia/nsight-systems/2022.4.2/host-linux-x64/reports/cudaapisum.py]...\n"
            + to_csv(API_HEADER, [[100.0, 5, 1, 5.0, 5, 5, 5, 0.0, "poll"]]))
    e = parse_text(text, tmp_path / "x.csv")
    # Title says CUDA API; a single row named "poll" would look like OS runtime by content.
    assert e.tables[0].report == "cuda_api_sum" and e.nsys_version == "2022.4.2"


def test_time_unit_columns_are_converted_to_ns(tmp_path):
    header = ["Time (%)", "Total Time (us)", "Instances", "Avg (us)", "Med (us)", "Min (us)", "Max (us)",
              "StdDev (us)", "Name"]
    t = parse_text(to_csv(header, [[100.0, 40000.5, 70, 571.4, 571.0, 571.0, 572.0, 0.1, SGEMM_TN]]),
                   tmp_path / "k.csv").tables[0]
    assert t.rows[0]["total_time_ns"] == 40_000_500 and t.rows[0]["avg_ns"] == 571_400


def test_report_is_detected_from_columns_not_file_name(tmp_path):
    p = tmp_path / "cuda_api_sum.csv"  # misleading name: it holds kernels
    p.write_text(to_csv(KERN_HEADER, kern_rows(FORWARD)))
    assert parse_file(p).tables[0].report == "cuda_gpu_kern_sum"
    q = tmp_path / "cuda_gpu_kern_sum.csv"  # an OS runtime summary (same columns as the CUDA API one)
    q.write_text(to_csv(API_HEADER, [[70.0, 700, 2, 350.0, 350, 300, 400, 1.0, "sem_wait"],
                                     [30.0, 300, 3, 100.0, 100, 90, 110, 1.0, "ioctl"]]))
    assert parse_file(q).tables[0].report == "osrt_sum"


def test_all_five_reports_of_a_profile(tmp_path):
    files = write_profile(tmp_path, "forward")
    reports = [parse_file(f).tables[0] for f in files]
    assert [t.report for t in reports] == ["cuda_gpu_kern_sum", "nvtx_sum", "nvtx_kern_sum", "nvtx_gpu_proj_sum",
                                           "cuda_api_sum"]
    kern_by_range = reports[2]
    assert {r["range"] for r in kern_by_range.rows} >= {":forward", ":computing attention scores"}
    assert kern_by_range.rows[0]["nvtx_instances"] == STEPS and "instances" in kern_by_range.keys
    assert reports[3].rows[0]["proj_total_ns"] == FORWARD_TOTAL


# --- console variants -----------------------------------------------------------------------------------


def stats_stdout(run: int = 1) -> str:
    """`nsys profile --stats=true` output of one run: four reports, one skipped, numbers with separators."""
    kern = to_console(KERN_HEADER, kern_rows(FORWARD), max_name=60)
    nvtx = to_console(NVTX_HEADER, nvtx_rows(forward_nvtx(), domain_prefix=""))
    api = to_console(API_HEADER, [[96.9, 106_912_410, 3, 35_637_470.0, 6584, 4697, 106_901_129, 61_716_139.1,
                                   "cudaMalloc"], [3.1, 3_201_638, 1010, 3169.9, 2922, 0, 138_218, 5124.5,
                                                   "cudaLaunchKernel"]])
    return (f"Generating '/tmp/nsys-report-{run}.qdstrm'\n[1/8] [========================100%] r{run}.nsys-rep\n"
            f"[2/8] [========================100%] r{run}.sqlite\n[3/8] Executing 'nvtx_sum' stats report\n\n{nvtx}\n"
            "[4/8] Executing 'osrt_sum' stats report\n\nSKIPPED: /tmp/r.sqlite does not contain OS Runtime trace data.\n\n"
            f"[5/8] Executing 'cuda_api_sum' stats report\n\n{api}\n"
            f"[6/8] Executing 'cuda_gpu_kern_sum' stats report\n\n{kern}\n")


def test_pasted_console_tables_with_prose_skipped_reports_truncation_and_separators(tmp_path):
    md = tmp_path / "notes.md"
    md.write_text("# My profile\n\nSome prose about it, with numbers 1,234 and a list:\n\n- one\n\n```\n"
                  + stats_stdout(1) + "```\n\nThen I changed the code and got:\n\n" + stats_stdout(2))
    e = parse_file(md)
    assert [t.report for t in e.tables] == ["nvtx_sum", "cuda_api_sum", "cuda_gpu_kern_sum"] * 2
    assert e.skipped == [{"report": "osrt_sum", "reason": "/tmp/r.sqlite does not contain OS Runtime trace data."}] * 2
    nvtx, api, kern = e.tables[:3]
    assert nvtx.form == "console" and nvtx.rows[0]["range"] == "step" and nvtx.rows[0]["total_time_ns"] == 85_000_000
    assert {r["range"] for r in nvtx.rows} >= {"computing attention scores", "scaled dot product attention"}
    assert api.rows[0] == {"time_pct": 96.9, "total_time_ns": 106_912_410, "instances": 3, "avg_ns": 35_637_470.0,
                           "med_ns": 6584, "min_ns": 4697, "max_ns": 106_901_129, "stddev_ns": 61_716_139.1,
                           "name": "cudaMalloc"}
    assert len(kern.rows) == len(FORWARD) and kern.total_time_ns == FORWARD_TOTAL
    cut = [r for r in kern.rows if r.get("truncated")]
    assert kern.truncated_names == len(cut) > 0 and all(r["name"].endswith("…") for r in cut)
    assert kern.rows[3]["name"].startswith("void at::native::vectorized_elementwise_kernel<(int)4, at::")


def test_old_console_titles(tmp_path):
    header = ["Time(%)", "Total Time (ns)", "Instances", "Average", "Minimum", "Maximum", "Name"]
    rows = [[r[0], r[1], r[2], r[3], r[5], r[6], r[8]] for r in kern_rows(FORWARD)]
    nvtx_header = ["Time(%)", "Total Time (ns)", "Instances", "Average", "Minimum", "Maximum", "Range"]
    nvtx = [[r[0], r[1], r[2], r[3], r[5], r[6], r[9]] for r in nvtx_rows(forward_nvtx(), domain_prefix="")]
    api_header = ["Time(%)", "Total Time (ns)", "Num Calls", "Average", "Minimum", "Maximum", "Name"]
    text = ("Collecting data...\nProcessing events...\n\nCUDA API Statistics:\n\n"
            + to_console(api_header, [[100.0, 3_000, 2, 1500.0, 1000, 2000, "cudaLaunchKernel"]])
            + "\n\n\nCUDA Kernel Statistics:\n\n" + to_console(header, rows, max_name=40)
            + "\n\n\nNVTX Push-Pop Range Statistics:\n\n" + to_console(nvtx_header, nvtx) + "\n")
    e = parse_text(text, tmp_path / "old.txt")
    assert [t.report for t in e.tables] == ["cuda_api_sum", "cuda_gpu_kern_sum", "nvtx_pushpop_sum"]
    kern = e.tables[1]
    assert kern.keys == ["time_pct", "total_time_ns", "instances", "avg_ns", "min_ns", "max_ns", "name"]
    assert kern.rows[0]["name"] == SGEMM_TN and kern.rows[0]["total_time_ns"] == 40_000_000
    assert e.tables[2].rows[1]["range"] == "forward" and e.tables[2].rows[1]["instances"] == STEPS


def test_console_kernels_per_range_with_spaces_in_the_range_column(tmp_path):
    rows = nvtx_kern_rows(forward_by_range(), domain_prefix=":")
    t = parse_text("** NVTX Range Kernel Summary (nvtx_kern_sum):\n\n" + to_console(NVTX_KERN_HEADER, rows, max_name=50,
                                                                                   pct_first=False),
                   tmp_path / "k.txt").tables[0]
    assert t.report == "nvtx_kern_sum" and len(t.rows) == len(rows)
    scores = [r for r in t.rows if r["range"] == ":computing attention scores"]
    assert len(scores) == 3 and sum(r["total_time_ns"] for r in scores) == 4_500_000
    assert all(r["nvtx_instances"] == STEPS * LAYERS for r in scores)


def test_console_paste_that_lost_its_alignment(tmp_path):
    text = ("[6/8] Executing 'cuda_gpu_kern_sum' stats report\n\n"
            " Time (%)  Total Time (ns)  Instances  Avg (ns)  Med (ns)  Min (ns)  Max (ns)  StdDev (ns)  Name\n"
            " --------  ---------------  ---------  --------  --------  --------  --------  -----------  ----\n"
            "100.0 1,831,281 1,010 1,813.1 1,823.0 1,791 4,705 93.3 vectorAdd(const float *, const float *, float *, int)\n")
    t = parse_text(text, tmp_path / "p.txt").tables[0]
    assert t.rows == [{"time_pct": 100.0, "total_time_ns": 1_831_281, "instances": 1010, "avg_ns": 1813.1,
                       "med_ns": 1823.0, "min_ns": 1791, "max_ns": 4705, "stddev_ns": 93.3,
                       "name": "vectorAdd(const float *, const float *, float *, int)"}]


@pytest.mark.parametrize("text, problem", [
    ("", "empty file"),
    ("Name,Total,Colour\nx,1,red\n", "no nsys stats table found"),
    ("Time (%),Total Time (ns),Instances,Avg (ns),Banana\n1.0,2,3,4.0,x\n", "is not an nsys stats report"),
    ("Range,Style,Total Range Time (ns)\n:a,PushPop,5\n", "lacks column(s) total_time_ns"),
    (",".join(KERN_HEADER) + "\n100.0,5,1,5.0,5,5,5,0.0,k\n50.0,4,1\n", "looks truncated"),
    (",".join(KERN_HEADER) + '\n100.0,5,1,5.0,5,5,5,0.0,"void k<a, b\n', "unterminated quoted name"),
    (",".join(KERN_HEADER) + "\nhigh,5,1,5.0,5,5,5,0.0,k\n", "'high' is not a number in column 'Time (%)'"),
])
def test_malformed_text_names_the_file_and_the_problem(tmp_path, text, problem):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputFileError) as e:
        parse_file(p)
    assert str(e.value).startswith(str(p)) and problem in str(e.value) and "\n" not in str(e.value)


def test_truncated_console_table(tmp_path):
    text = stats_stdout(1).rstrip("\n")
    cut = text[:text.rindex("\n") + 40]  # the last row stops after its first numbers
    p = tmp_path / "cut.txt"
    p.write_text(cut)
    with pytest.raises(InputFileError, match="looks truncated"):
        parse_file(p)


@pytest.mark.parametrize("data, problem", [
    (b"SQLite format 3\x00" + bytes(100), "an SQLite export"),
    (b"\x00\x01\x02NSYS" + bytes(range(256)) * 4, "a binary file"),
])
def test_binary_files(tmp_path, data, problem):
    p = tmp_path / "report.nsys-rep"
    p.write_bytes(data)
    with pytest.raises(InputFileError, match=problem):
        parse_file(p)
