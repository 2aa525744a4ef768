"""torch.profiler (Kineto) traces: the format, the summary, exact busy/idle, malformed files, inspect/ingest.

No GPU here, so CUDA traces are synthetic (lmreport.ingest.kineto_synthetic writes them as
Kineto's ChromeTraceLogger does); the study's synthetic profile is the one the nsys tests use
(tests/test_nsys_synthetic.py), so that the same kernels give the same answers from either
profiler. Traces of the CPU are real: torch.profiler writes them here.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import types
from pathlib import Path

import pytest

from lmreport import runner, store
from lmreport.cli import main
from lmreport.errors import InputFileError
from lmreport.ingest import nsys as nsys_ingest
from lmreport.ingest import trace as trace_ingest
from lmreport.ingest.kineto_summary import summarise_trace
from lmreport.ingest.nsys_summary import FULL_NAME_CHARS
from lmreport.ingest.kineto_synthetic import DEVICE, KinetoTraceWriter, Launch, Range, spread, us, write_trace
from lmreport.presets import resolve
from lmreport.report.context import SectionView
from lmreport.report.render import jinja_env
from lmreport.report.sections import nsys as section
from lmreport.sections import get
from test_nsys_synthetic import (ATTENTION, BACKWARD, BMM, DIV, FILL, FORWARD, FORWARD_TOTAL, LAYERS, LOSS, OPTIMIZER,
                                 SGEMM_TN, SOFTMAX, STEPS, TRAIN_KERNELS, WHERE, write_profile)

PROFILE, ED = resolve("cpu", 2025, False)
PLAN = runner.Plan(PROFILE, ED)
H100 = DEVICE["name"]


# --- the study's synthetic profile as a trace -------------------------------------------------------


def _pool(group) -> dict[str, "iter"]:
    """kernel -> its durations (the table's total spread over its instances), taken one launch at a time."""
    return {name: iter(spread(total, n)) for name, total, n in group}


def _launches(group, pool, thread="main") -> list[Launch]:
    """One step's share of each kernel of a table."""
    return [Launch(name, next(pool[name]), thread=thread) for name, _, n in group for _ in range(n // STEPS)]


def study_steps(mode: str) -> list[Range]:
    """STEPS steps of the tiny model (2 layers) with exactly the kernels of test_nsys_synthetic's tables."""
    fwd, loss, bwd, opt = _pool(FORWARD), _pool(LOSS), _pool(BACKWARD), _pool(OPTIMIZER)
    in_attention = {BMM, DIV, WHERE, SOFTMAX}
    others = [k for k in FORWARD if k[0] not in in_attention]
    autograd = [k for k in BACKWARD if k[0] != FILL]  # FILL (zeroing a gradient) is the main thread's launch
    steps = []
    for s in range(STEPS):
        layers = [Range("scaled dot product attention", [
            Range(r, [Launch(name, next(fwd[name])) for name, _, n in ks for _ in range(n // (STEPS * LAYERS))])
            for r, ks in ATTENTION.items()]) for _ in range(LAYERS)]
        forward = Range("forward", [*layers, *_launches(others, fwd)]
                        + (_launches(LOSS, loss) if mode != "forward" else []), sync=True)
        phases = [forward]
        if mode != "forward":
            phases.append(Range("backward", [Launch(FILL, next(bwd[FILL])), *_launches(autograd, bwd, "autograd")],
                                sync=True))
            phases.append(Range("optimizer step", _launches(OPTIMIZER, opt), sync=True))
        steps.append(Range(f"ProfilerStep#{s + 2}", [Range("step", phases, sync=True)]))
    return steps


def write_study_trace(path: Path, mode: str = "forward", gz: bool = False) -> KinetoTraceWriter:
    buf = io.StringIO()
    w = write_trace(buf, study_steps(mode), trace_name=str(path))
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return w


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("kineto")
    out = {}
    for mode in ("forward", "train"):
        out[mode] = tmp / f"{mode}.json"
        write_study_trace(out[mode], mode)
    out["forward.gz"] = tmp / "forward.json.gz"
    write_study_trace(out["forward.gz"], "forward", gz=True)
    return out


# --- the format -----------------------------------------------------------------------------------


def test_the_synthetic_trace_is_shaped_like_kinetos(traces):
    """What output_json.cpp writes: header keys in order, "ts"/"dur" as µs with three decimals, kernel args."""
    text = traces["forward"].read_text()
    d = json.loads(text)
    assert list(d)[:2] == ["schemaVersion", "deviceProperties"] and list(d)[-3:] == ["baseTimeNanoseconds",
                                                                                     "traceEvents", "traceName"]
    assert d["schemaVersion"] == 1 and d["displayTimeUnit"] == "ms" and d["deviceProperties"][0]["name"] == H100
    assert re.search(r'"cat": "cpu_op", "name": "aten::mm", "pid": 4242, "tid": 4242, "ts": \d+\.\d{3}, "dur": 6\.000',
                     text)  # numbers printed as Kineto prints them
    events = d["traceEvents"]
    kernel = next(e for e in events if e.get("cat") == "kernel")
    assert set(kernel) == {"ph", "cat", "name", "pid", "tid", "ts", "dur", "args"} and kernel["pid"] == 0
    assert set(kernel["args"]) == {"External id", "queued", "device", "context", "stream", "correlation",
                                   "registers per thread", "shared memory", "blocks per SM", "warps per SM", "grid",
                                   "block", "est. achieved occupancy %"}
    launch = next(e for e in events if e.get("cat") == "cuda_runtime" and e["args"]["correlation"] ==
                  kernel["args"]["correlation"])
    assert launch["name"] == "cudaLaunchKernel" and launch["args"]["cbid"] == 211 and launch["ts"] < kernel["ts"]
    assert {e.get("cat") for e in events} >= {"cpu_op", "user_annotation", "gpu_user_annotation", "cuda_runtime",
                                              "kernel", "ac2g"}
    assert events[-1]["name"] == "Record Window End" and us(1_234_567) == "1234.567"


def test_a_real_cpu_trace_has_the_same_layout(tmp_path):
    """torch.profiler here (CPU activity): same header, same event shape as the synthetic CUDA trace's CPU side."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("step"):
            torch.ones(8, 8) @ torch.ones(8, 8)
    path = tmp_path / "real.json"
    prof.export_chrome_trace(str(path))
    d = json.loads(path.read_text())
    assert list(d)[:2] == ["schemaVersion", "deviceProperties"] and "baseTimeNanoseconds" in d
    assert list(d)[-2:] == ["traceEvents", "traceName"]
    op = next(e for e in d["traceEvents"] if e.get("cat") == "cpu_op" and e["name"] == "aten::mm")
    assert {"ph", "cat", "name", "pid", "tid", "ts", "dur", "args"} <= set(op) and "External id" in op["args"]
    m = summarise_trace(path)
    assert m["activity"] == "cpu" and m["ranges"]["step"]["instances"] == 1
    assert any(k["name"] == "aten::mm" and k["class"] == "matmul" for k in m["kernels"])


# --- the summary: same tables as nsys's -------------------------------------------------------------


def test_kernels_ranges_and_launches(traces):
    m = summarise_trace(traces["forward"])
    assert m["profiler"] == "torch.profiler" and m["activity"] == "cuda" and m["steps"] == STEPS
    assert m["kernel_total_ns"] == FORWARD_TOTAL and m["kernels"][0]["name"] == SGEMM_TN
    assert {(k["full_name"], k["total_ns"], k["instances"]) for k in m["kernels"]} == {
        (name[:FULL_NAME_CHARS], t, n) for name, t, n in FORWARD}
    assert m["ranges"]["forward"]["instances"] == STEPS and "warmup" not in m["ranges"]
    assert m["ranges"]["ProfilerStep"]["instances"] == STEPS  # "ProfilerStep#2" ... counted as one range
    rk = m["range_kernels"]
    assert rk["forward"]["kernel_ns"] == FORWARD_TOTAL and rk["forward"]["nvtx_instances"] == STEPS
    assert rk["computing softmax"]["class_ns"]["softmax"] == 2_000_000
    assert rk["computing attention scores"]["kernel_ns"] == 4_500_000 and rk["final matmul"]["kernel_ns"] == 3_000_000
    assert rk["computing softmax"]["nvtx_instances"] == STEPS * LAYERS
    gpu = m["range_gpu"]["computing softmax"]
    assert gpu["instances"] == STEPS * LAYERS and gpu["proj_ns"] == 2_000_000 + 2 * STEPS * LAYERS  # Kineto's ±1 ns
    assert m["api"]["top"][0]["name"] in ("cudaLaunchKernel", "cudaDeviceSynchronize")
    assert next(a for a in m["api"]["top"] if a["name"] == "cudaLaunchKernel")["calls"] == sum(n for _, _, n in FORWARD)
    assert m["trace_devices"][0]["name"] == H100


def test_kernels_of_the_autograd_thread_count_in_backward(traces):
    m = summarise_trace(traces["train"])
    assert m["kernel_total_ns"] == sum(t for _, t, _ in TRAIN_KERNELS)
    rk = m["range_kernels"]
    # nsys's nvtx_kern_sum would hold only FILL here (the main thread's launch); the trace's time-based
    # attribution also has what the autograd thread launched during loss.backward()
    assert rk["backward"]["kernel_ns"] == sum(t for _, t, _ in BACKWARD)
    assert {k["name"] for k in rk["backward"]["kernels"]} >= {"ampere_sgemm_128x32_sliced1x4_nn", "fill_kernel"} or \
        len(rk["backward"]["kernels"]) == len(BACKWARD)
    assert rk["optimizer step"]["kernel_ns"] == sum(t for _, t, _ in OPTIMIZER)
    assert rk["forward"]["kernel_ns"] == FORWARD_TOTAL + sum(t for _, t, _ in LOSS)


def test_plain_and_gzipped_traces_read_the_same(traces):
    assert summarise_trace(traces["forward"]) == summarise_trace(traces["forward.gz"])


def _views(tmp_path: Path, trace_files: dict[str, Path], nsys: bool) -> dict:
    runs = tmp_path / ("nsys-runs" if nsys else "trace-runs")
    for mode, path in trace_files.items():
        args = types.SimpleNamespace(size="tiny", ctx=64, mode=mode, dtype="fp32", batch=None, steps=None,
                                     device=H100, host="gpu1", run=None, runs_dir=runs, replace=False)
        if nsys:
            nsys_ingest.ingest_files(write_profile(tmp_path / f"nsys-{mode}", mode), args, PLAN)
        else:
            trace_ingest.ingest_files([path], args, PLAN)
    records = store.select(store.load_records(runs), ED.year, PROFILE.name)
    view = SectionView(get("nsys"), records, ED, PROFILE, PLAN.run, tmp_path / "fig", all_records=tuple(records))
    return section.build(view)


def test_same_kernels_give_the_same_answers_from_either_profiler(traces, tmp_path):
    files = {"forward": traces["forward"], "train": traces["train"]}
    from_nsys, from_trace = _views(tmp_path, files, nsys=True), _views(tmp_path, files, nsys=False)
    a, b = from_nsys["kernel_rows"][0], from_trace["kernel_rows"][0]
    for key in ("forward", "forward_backward", "step"):
        for field in ("total_ns", "passes", "shares", "matmul_share", "top", "non_matmul"):
            assert a[key][field] == b[key][field], (key, field)
    assert a["change"] == b["change"] and a["new_in_train"] == b["new_in_train"]
    ea, eb = from_nsys["attention_rows"][0], from_trace["attention_rows"][0]
    assert {n: r["per_call_us"] for n, r in ea["ranges"].items()} == {n: r["per_call_us"] for n, r in eb["ranges"].items()}
    assert ea["scores_matmul_to_softmax"] == eb["scores_matmul_to_softmax"] == 1.5
    assert [r["shares"] for r in from_nsys["class_rows"]] == [r["shares"] for r in from_trace["class_rows"]]
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=from_trace)
    assert "| tiny | 64 | forward | ingested | 5 | 15.9 | torch.profiler | GPU kernels |" in md
    assert " · torch.profiler: GPU kernels" in md and "CPU operator" not in md.split("## Profiles")[1].split("## GPU")[0]
    assert from_trace["busy_rows"] and "nsys_only_cells" in from_nsys and from_nsys["nsys_only_cells"]


# --- busy and idle --------------------------------------------------------------------------------


def test_busy_and_idle_are_exact_on_known_intervals(tmp_path):
    """Two steps; kernels overlapping on two streams' worth of time, a copy, one kernel past the step's end,
    one on another GPU and one between the steps (neither counts)."""
    buf = io.StringIO()
    w = KinetoTraceWriter(buf)
    w.user_annotation("step", 1_000_000, 2_000_000)
    w.kernel("ampere_sgemm_128x64_tn", 1_010_000, 1_100_000, 200_000)
    w.kernel("ampere_sgemm_128x64_tn", 1_020_000, 1_200_000, 200_000)  # overlaps: [1.1 ms, 1.4 ms) in all
    w.kernel("softmax_warp_forward", 1_030_000, 1_500_000, 100_000)
    w.kernel("Memcpy DtoD (Device -> Device)", 1_040_000, 1_700_000, 50_000, kind="gpu_memcpy")
    w.kernel("ampere_sgemm_128x64_tn", 1_050_000, 1_800_000, 100_000, device=1)  # another GPU, less work
    w.kernel("ampere_sgemm_128x64_tn", 2_100_000, 2_500_000, 100_000)  # between the steps
    w.user_annotation("step", 3_000_000, 3_500_000)
    w.kernel("ampere_sgemm_128x64_tn", 3_010_000, 3_100_500, 299_750)
    w.kernel("ampere_sgemm_128x64_tn", 3_020_000, 3_450_000, 150_000)  # runs 50 µs past the step's end
    w.close(4_000_000)
    path = tmp_path / "busy.json"
    path.write_text(buf.getvalue())
    b = summarise_trace(path)["busy"]
    assert (b["activity"], b["device"], b["window"], b["windows"]) == ("gpu", 0, "step", 2)
    assert [(s["wall_ns"], s["busy_ns"], s["idle_ns"]) for s in b["steps"]] == [(1_000_000, 450_000, 550_000),
                                                                                 (500_000, 349_750, 150_250)]
    assert b["steps"][0]["idle_share"] == 0.55 and b["steps"][1]["idle_share"] == 150_250 / 500_000
    assert (b["wall_ns"], b["busy_ns"]) == (1_500_000, 799_750) and b["idle_share"] == 700_250 / 1_500_000
    code, out, _ = _cli("inspect", "trace", path, "--json")
    assert code == 0 and json.loads(out)["busy"]["busy_ns"] == 799_750


def test_without_step_ranges_the_profiler_steps_or_the_whole_trace_are_the_windows(tmp_path):
    buf = io.StringIO()
    w = KinetoTraceWriter(buf)
    w.kernel("k", 1_000_000, 1_100_000, 100_000)
    w.kernel("k", 1_000_000, 1_300_000, 100_000)
    w.close()
    path = tmp_path / "nostep.json"
    path.write_text(buf.getvalue())
    b = summarise_trace(path)["busy"]
    assert (b["window"], b["wall_ns"], b["busy_ns"]) == ("trace", 300_000, 200_000)


def test_the_study_trace_idles_between_launches(traces):
    """Every step's idle time is what its wall time leaves after the (serial) kernels: checked against the writer."""
    buf = io.StringIO()
    w = write_trace(buf, study_steps("forward"))
    b = summarise_trace(_write(traces["forward"].parent / "again.json", buf.getvalue()))["busy"]
    steps = w.windows["step"]
    assert [s["wall_ns"] for s in b["steps"]] == [e - s for s, e in steps]
    busy = [sum(max(0, min(e, we) - max(s, ws)) for s, e in w.kernels) for ws, we in steps]  # one stream: no overlap
    assert [s["busy_ns"] for s in b["steps"]] == busy
    assert sum(busy) == FORWARD_TOTAL


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- files that are not traces --------------------------------------------------------------------


def _cli(*argv) -> tuple[int, str, str]:
    import contextlib
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


GOOD = b'{"schemaVersion": 1, "traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, ' \
       b'"ts": 1.000, "dur": 2.500, "args": {"correlation": 5}}], "traceName": "t"}'
MALFORMED = {
    "empty.json": (b"", "empty file"),
    "blank.json": (b"  \n\n ", "empty file (only white space)"),
    "truncated.json": (GOOD[:70], "truncated: the JSON stops before its end"),
    "truncated.json.gz": (gzip.compress(GOOD * 50)[:60], "truncated: the gzip stream ends"),
    "not_json.json": (b"Step,Time\n1,2\n", "not valid JSON"),
    "binary.pt": (b"\x80\x04\x95" + bytes(range(256)), "not valid JSON"),
    "bad_utf8.json": (b'{"traceEvents": [{"name": "\xe9"}]}', "not valid JSON (lexical error: invalid bytes in UTF8"),
    "no_events.json": (b'{"schemaVersion": 1, "deviceProperties": []}', 'JSON without "traceEvents"'),
    "array.json": (b'[{"ph": "X", "name": "k", "ts": 1, "dur": 2}]', "not a Kineto trace"),
    "event_not_object.json": (b'{"traceEvents": [1, 2]}', "traceEvents item 0 is not a JSON object"),
    "bad_ts.json": (GOOD.replace(b'"ts": 1.000', b'"ts": "soon"'), "traceEvents item 0: ts 'soon' is not a finite"),
    "negative.json": (GOOD.replace(b'"dur": 2.500', b'"dur": -2.5'), "has a negative duration"),
    "infinite.json": (GOOD.replace(b'"dur": 2.500', b'"dur": 1e999'), "numeric (floating point) overflow"),
    "gz_of_nothing.json.gz": (gzip.compress(b""), "empty"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_traces_are_one_line_errors(tmp_path, name):
    data, problem = MALFORMED[name]
    path = tmp_path / name
    path.write_bytes(data)
    for argv in (["inspect", "trace", path], ["ingest", "trace", path, "--size", "tiny", "--ctx", "64", "--mode",
                                                 "forward", "--runs-dir", tmp_path / "runs", "--profile", "cpu"]):
        code, out, err = _cli(*argv)
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert err.count("\n") == 1 and err.startswith(f"lmreport: error: {path}: ") and problem in err, err
    assert not (tmp_path / "runs").exists()


def test_a_trace_with_no_events_is_inspected_but_not_ingested(tmp_path):
    path = tmp_path / "nothing.json"
    path.write_text('{"schemaVersion": 1, "traceEvents": []}')
    code, out, _ = _cli("inspect", "trace", path, "--json")
    assert code == 0 and json.loads(out)["activity"] is None
    code, _, err = _cli("ingest", "trace", path, "--size", "tiny", "--ctx", "64", "--mode", "forward", "--runs-dir",
                        tmp_path / "runs", "--profile", "cpu")
    assert code == 2 and "holds no kernels and no CPU operators" in err


def test_reader_errors_name_the_position(tmp_path):
    path = tmp_path / "cut.json"
    path.write_bytes(b'{"traceEvents": [' + b", ".join([b'{"ph": "M", "name": "x"}'] * 3000)[:50_000])
    with pytest.raises(InputFileError, match=r"truncated.*after [\d,]+ events, [\d,]+ bytes\)"):
        summarise_trace(path)


# --- inspect and ingest ---------------------------------------------------------------------------


def test_inspect_trace_json(traces):
    code, out, _ = _cli("inspect", "trace", traces["forward.gz"], "--json")
    s = json.loads(out)
    assert code == 0 and set(s) == {"file", "profiler", "activity", "device", "events", "kernels", "gpu_time_ns",
                                    "cpu_operators", "cpu_operator_self_time_ns", "top", "ranges", "busy"}
    assert (s["activity"], s["device"], s["gpu_time_ns"]) == ("cuda", H100, FORWARD_TOTAL)
    assert s["kernels"] == sum(n for _, _, n in FORWARD) and s["cpu_operators"] == 0
    assert s["top"][0] == {"name": SGEMM_TN, "total_time_ns": 40_000_000, "instances": 70, "class": "matmul"}
    assert set(s["top"][1]) == {"name", "total_time_ns", "instances", "class"}
    assert {"name": "computing softmax", "instances": 10} == {k: v for k, v in next(
        r for r in s["ranges"] if r["name"] == "computing softmax").items() if k != "total_time_ns"}
    code, out, _ = _cli("inspect", "trace", traces["forward"])
    assert code == 0 and "GPU kernels on NVIDIA H100 80GB HBM3" in out and "50.3%" in out


def test_ingest_trace_keeps_the_file_and_refuses_to_overwrite(traces, tmp_path):
    runs = tmp_path / "runs"
    base = ["ingest", "trace", "--size", "tiny", "--ctx", "64", "--mode", "forward", "--runs-dir", runs,
            "--profile", "cpu"]
    code, _, err = _cli(*base[:2], traces["forward.gz"], *base[2:])
    assert code == 0, err
    rec = store.read_record(runs / "2025-cpu" / "nsys" / "tiny-ctx64-forward-fp32.json")
    assert rec["metrics"]["source"] == "ingested" and rec["environment"]["device"] == H100
    assert rec["artifacts"] == {"trace": "forward.json.gz"} and rec["environment"]["device_type"] == "cuda"
    assert rec["metrics"]["source_file"]["bytes"] == traces["forward.gz"].stat().st_size
    assert (runs / "2025-cpu" / "nsys" / "tiny-ctx64-forward-fp32" / "forward.json.gz").read_bytes() == \
        traces["forward.gz"].read_bytes()
    assert _cli(*base[:2], traces["forward.gz"], *base[2:])[0] == 0  # the same file again changes nothing
    code, _, err = _cli(*base[:2], traces["train"], *base[2:])
    assert code == 2 and "already holds a profile ingested from" in err and "--replace" in err
    assert _cli(*base[:2], traces["forward"], *base[2:], "--replace")[0] == 0  # a plain .json: kept gzipped
    folder = runs / "2025-cpu" / "nsys" / "tiny-ctx64-forward-fp32"
    assert gzip.decompress((folder / "forward.json.gz").read_bytes()) == traces["forward"].read_bytes()
    assert not list(folder.glob("*.json"))  # no .json beside records but records (the loader would read it)
    assert _cli(*base[:2], traces["forward"], *base[2:])[0] == 0  # the same file again: its SHA-256 is recorded
    code, _, err = _cli(*base[:2], traces["forward"], traces["train"], *base[2:])
    assert code == 2 and "one trace (one profile) at a time" in err


# --- what lmreport writes, read back --------------------------------------------------------------


def test_the_traces_lmreport_writes_are_read_back(tmp_path):
    """A real CPU cell through torch_profile: its trace.json.gz holds the measured steps only, with every range."""
    from lmreport.experiments import torch_profile
    config = {"edition": 2025, "profile": "cpu", "size": "tiny", "ctx": 16, "mode": "train", "dtype": "fp32",
              "batch": 2, "warmup": 2, "steps": 2, "device": "cpu", "profiler": "torch"}
    out = torch_profile.run(config, tmp_path / "cell")
    trace = tmp_path / "cell" / out["artifacts"]["trace"]
    assert trace.name == "trace.json.gz" and trace.read_bytes()[:2] == b"\x1f\x8b"
    json.loads(gzip.decompress(trace.read_bytes()))  # plain JSON inside: Perfetto and chrome://tracing open it
    code, text, _ = _cli("inspect", "trace", trace, "--json")
    s = json.loads(text)
    assert code == 0 and s["activity"] == "cpu" and s["kernels"] == 0 and s["cpu_operators"] > 0
    ranges = {r["name"]: r["instances"] for r in s["ranges"]}
    assert ranges["step"] == ranges["forward"] == ranges["backward"] == ranges["optimizer step"] == 2
    assert ranges["computing softmax"] == ranges["final matmul"] == 2 * 2  # 2 layers x 2 measured steps
    assert "warmup" not in ranges  # the schedule records the measured steps only
    m = out["metrics"]
    assert m["source"] == "profiled" and m["steps"] == 2 and m["python_timing"]["step_ms"]["n"] == 2
    assert m["kernels"][0]["class"] in ("matmul", "elementwise", "reduction", "softmax", "copy/memset", "other")
    assert {k["name"] for k in m["kernels"]} >= {"aten::mm", "aten::bmm", "aten::_softmax"}
    assert m["busy"]["activity"] == "cpu" and m["busy"]["windows"] == 2


def test_cpu_cells_render_as_cpu_operators(tmp_path):
    runs = tmp_path / "runs"
    cells = [c for c in __import__("lmreport.experiments.nsys", fromlist=["cells"]).cells(PLAN)
             if c.config["size"] == "tiny"]
    cells = [runner.Cell(c.section, c.name, {**c.config, "ctx": 16, "warmup": 1, "steps": 2}, c.requires) for c in cells]
    res = runner.run_sweep(cells, runs, PLAN.run, progress=False)
    assert res.counts["ok"] == 2
    records = store.select(store.load_records(runs), ED.year, PROFILE.name)
    ctx = section.build(SectionView(get("nsys"), records, ED, PROFILE, PLAN.run, tmp_path / "fig",
                                    all_records=tuple(records)))
    md = jinja_env().get_template("sections/nsys.md.j2").render(ctx=ctx)
    assert ctx["all_cpu"] and ctx["word"] == "CPU operator"
    assert "**These profiles were made on a CPU.**" in md and "lmreport run nsys --profile handout-2025" in md
    assert "| top forward CPU operator |" in md and "GPU kernel time" not in md.split("## Profiles")[1]
    assert "torch.profiler 2.13" in md or "torch.profiler 2." in md
    assert "CPU operators' self time, no GPU kernels (a CPU run)" in md
    assert "On a CPU there is no GPU to idle" in md


def test_the_schedule_records_the_measured_steps_only():
    from lmreport.experiments.torch_profile import schedule_arguments
    assert schedule_arguments(5, 10) == {"wait": 4, "warmup": 1, "active": 10, "repeat": 1}
    assert schedule_arguments(1, 3) == {"wait": 0, "warmup": 1, "active": 3, "repeat": 1}
    assert schedule_arguments(0, 3) == {"wait": 0, "warmup": 0, "active": 3, "repeat": 1}
    with pytest.raises(ValueError):
        schedule_arguments(2, 0)


def test_a_cell_without_warm_up_records_its_one_step(tmp_path):
    from lmreport.experiments import torch_profile
    config = {"edition": 2025, "profile": "cpu", "size": "tiny", "ctx": 8, "mode": "forward", "dtype": "fp32",
              "batch": 1, "warmup": 0, "steps": 1, "device": "cpu"}
    m = torch_profile.run(config, tmp_path)["metrics"]
    assert m["ranges"]["step"]["instances"] == m["ranges"]["forward"]["instances"] == 1 and m["steps"] == 1
    assert m["includes_warmup"] is False and "warmup" not in m["ranges"]  # no warm-up step, so no "(with warm-up)"


def test_a_gzipped_trace_named_json_is_kept_as_json_gz(traces, tmp_path):
    """A gzipped trace whose name lacks .gz is kept as NAME.gz, not as a .json the loader would take for a record."""
    runs = tmp_path / "runs"
    gzipped = tmp_path / "mytrace.json"
    gzipped.write_bytes(traces["forward.gz"].read_bytes())
    code, _, err = _cli("ingest", "trace", gzipped, "--size", "tiny", "--ctx", "64", "--mode", "forward",
                        "--runs-dir", runs, "--profile", "cpu")
    assert code == 0, err
    folder = runs / "2025-cpu" / "nsys" / "tiny-ctx64-forward-fp32"
    assert store.read_record(folder.with_suffix(".json"))["artifacts"] == {"trace": "mytrace.json.gz"}
    assert (folder / "mytrace.json.gz").read_bytes() == gzipped.read_bytes()  # copied as it is, not gzipped twice
    assert not list(folder.glob("*.json"))
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(store.load_records(runs)) == 1
    assert not caught  # the loader found no file it took for a record and could not read


def test_a_bare_array_is_refused_before_its_events_are_read(tmp_path, monkeypatch):
    from lmreport.ingest import kineto_summary
    path = tmp_path / "array.json"
    path.write_bytes(b'[{"ph": "X", "name": "k", "ts": 1, "dur": 2}, ' + b"x" * 1000)  # invalid further on, too
    monkeypatch.setattr(kineto_summary, "iter_events", lambda p: pytest.fail("the events were streamed"))
    with pytest.raises(InputFileError, match=r"is a JSON array \(Chrome's bare array format\), not a Kineto trace"):
        summarise_trace(path)


def test_range_kernels_are_those_of_the_ranges_kept(tmp_path):
    """More range names than MAX_RANGES: the kernels of a range are given for the ranges the summary lists."""
    from lmreport.ingest.nsys_summary import MAX_RANGES
    buf = io.StringIO()
    w = KinetoTraceWriter(buf)
    w.user_annotation("step", 1_000_000, 20_000_000)
    for i in range(MAX_RANGES + 30):  # later layers: short CPU ranges, long kernels
        start = 1_000_000 + i * 100_000
        w.user_annotation(f"layer {i}", start, start + 90_000 - 500 * i)
        w.kernel("k", start + 1_000, start + 2_000, 1_000 * (i + 1))
    w.close(21_000_000)
    m = summarise_trace(_write(tmp_path / "many.json", buf.getvalue()))
    assert len(m["ranges"]) == MAX_RANGES and set(m["range_kernels"]) == set(m["ranges"])
    assert m["range_kernels"]["step"]["kernel_ns"] == m["kernel_total_ns"]
    layer = m["range_kernels"]["layer 3"]
    assert (layer["kernel_ns"], layer["nvtx_instances"], [(k["name"], k["instances"]) for k in layer["kernels"]]) == \
        (4_000, 1, [("k", 1)])


def test_a_range_of_zero_duration_holds_no_kernels(tmp_path):
    """An empty range (e.g. an empty "warmup") covers no time: no kernels, no crash."""
    buf = io.StringIO()
    w = KinetoTraceWriter(buf)
    w.user_annotation("warmup", 1_000_000, 1_000_000)
    w.user_annotation("step", 2_000_000, 3_000_000)
    w.kernel("k", 2_100_000, 2_200_000, 100_000)
    w.close(4_000_000)
    m = summarise_trace(_write(tmp_path / "empty_range.json", buf.getvalue()))
    assert m["ranges"]["warmup"]["total_ns"] == 0 and set(m["range_kernels"]) == {"step"}
    assert m["includes_warmup"] is False  # an empty "warmup" range: no warm-up kernel in the trace


def test_a_trace_includes_warm_up_when_kernels_ran_in_its_warmup_range(tmp_path):
    buf = io.StringIO()
    w = KinetoTraceWriter(buf)
    w.user_annotation("warmup", 1_000_000, 1_500_000)
    w.kernel("k", 1_100_000, 1_200_000, 100_000)
    w.user_annotation("step", 2_000_000, 3_000_000)
    w.kernel("k", 2_100_000, 2_200_000, 100_000)
    w.close(4_000_000)
    m = summarise_trace(_write(tmp_path / "warm.json", buf.getvalue()))
    assert m["includes_warmup"] is True and m["range_kernels"]["warmup"]["kernel_ns"] == 100_000


def test_a_refused_ingest_does_not_parse_the_trace(traces, tmp_path, monkeypatch):
    """The overwrite check comes before the (streamed, long) parse; the same file again is still allowed."""
    runs = tmp_path / "runs"
    base = ["--size", "tiny", "--ctx", "64", "--mode", "forward", "--runs-dir", runs, "--profile", "cpu"]
    assert _cli("ingest", "trace", traces["forward"], *base)[0] == 0
    parsed = []
    real = trace_ingest.summarise_trace
    monkeypatch.setattr(trace_ingest, "summarise_trace", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    code, _, err = _cli("ingest", "trace", traces["train"], *base)
    assert code == 2 and "already holds a profile ingested from" in err and parsed == []
    assert _cli("ingest", "trace", traces["forward"], *base)[0] == 0 and parsed == [traces["forward"]]
