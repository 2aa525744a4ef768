"""Profiling: cells per profile, nsys command lines, versions, and run_cell against a fake nsys.

nsys cannot be installed here, so a small script stands in for it: it answers --version and
--help-reports, "profiles" by writing the worker's result and a report file, and "exports" by
copying synthetic CSVs (tests/test_nsys_synthetic.py). What is tested is lmreport's side:
the calls, the timeouts, the parsing into the record, OOM and missing-NVTX handling.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pytest

from lmreport import runner
from lmreport.experiments import nsys as ex
from lmreport.presets import resolve
from test_nsys_synthetic import FORWARD_TOTAL, SGEMM_TN, write_profile

HELP_NEW = """
The following built-in reports are available:

  cuda_api_gpu_sum[:nvtx-name][:base|:mangled] -- CUDA Summary (API/Kernels/MemOps)
  cuda_api_sum -- CUDA API Summary
  cuda_gpu_kern_sum[:nvtx-name][:base|:mangled] -- CUDA GPU Kernel Summary
  nvtx_gpu_proj_sum -- NVTX GPU Projection Summary
  nvtx_kern_sum[:base|:mangled] -- NVTX Range Kernel Summary
  nvtx_sum -- NVTX Range Summary
  osrt_sum -- OS Runtime Summary
"""
HELP_OLD = """
The following built-in reports are available:

  cudaapisum -- CUDA API Summary
  gpukernsum[:base] -- CUDA GPU Kernel Summary
  nvtxkernsum -- NVTX Range Kernel Summary
  nvtxppsum -- NVTX Push/Pop Range Summary
  osrtsum -- OS Runtime Summary
"""


def plan(profile, edition=None):
    return runner.Plan(*resolve(profile, edition, False))


def test_cells_of_each_profile():
    h25 = ex.cells(plan("handout-2025"))
    assert len(h25) == 5 * 4 * 2 and {c.requires for c in h25} == {"cuda"}  # nsys or torch.profiler, chosen there
    assert h25[0].name == "small-ctx128-forward-fp32" and h25[1].name == "small-ctx128-train-fp32"
    config = dict(h25[0].config)
    assert config.pop("implementation")["model"] == "lmreport.model:TransformerLM"  # the model it profiles (user_model.py)
    assert config == {"edition": 2025, "profile": "handout-2025", "size": "small", "ctx": 128, "mode": "forward",
                      "dtype": "fp32", "batch": 4, "warmup": 5, "steps": 10, "device": "cuda", "profiler": "auto"}
    h26 = ex.cells(plan("handout-2026"))
    assert {c.config["size"] for c in h26} == {"small", "large"}
    assert sorted({c.config["ctx"] for c in h26}) == [256, 512, 1024, 2048, 4096, 8192, 16384]
    cpu = ex.cells(plan("cpu"))  # torch.profiler on the CPU, the shortest context only (the cpu writeup's time)
    assert [c.name for c in cpu] == ["tiny-ctx64-forward-fp32", "tiny-ctx64-train-fp32", "mini-ctx64-forward-fp32",
                                     "mini-ctx64-train-fp32"]
    assert {c.requires for c in cpu} == {"any"} and {c.config["device"] for c in cpu} == {"cpu"}


def test_the_profiler_is_chosen_per_machine(monkeypatch):
    assert ex.choose_profiler("auto", "cuda", nsys_on_path=True) == "nsys"
    assert ex.choose_profiler("auto", "cuda", nsys_on_path=False) == "torch"
    assert ex.choose_profiler("auto", "cpu", nsys_on_path=True) == "torch"
    assert ex.choose_profiler("torch", "cuda", nsys_on_path=True) == "torch"
    assert ex.choose_profiler("nsys", "cuda", nsys_on_path=False) == "nsys"  # then skipped, saying what to install
    monkeypatch.setenv("LMREPORT_PROFILER", " Torch ")
    assert {c.config["profiler"] for c in ex.cells(plan("handout-2025"))} == {"torch"}
    monkeypatch.setenv("LMREPORT_PROFILER", "nsys")
    assert {c.requires for c in ex.cells(plan("handout-2025"))} == {"nsys"}


def test_nsys_on_a_cpu_cell_is_skipped_with_the_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("LMREPORT_PROFILER", "nsys")
    c = ex.cells(plan("cpu"))[0]
    with pytest.raises(runner.CellSkipped, match="--profiler torch"):
        ex.run_cell(c, tmp_path / "cell")


@pytest.mark.parametrize("flag", [[], ["--profiler", "nsys"]])
def test_a_bad_profiler_choice_is_one_line_before_any_cell_runs(tmp_path, monkeypatch, capsys, flag):
    from lmreport.cli import main
    monkeypatch.setenv("LMREPORT_PROFILER", "perf")
    code = main(["run", "nsys", "--profile", "cpu", "--runs-dir", str(tmp_path), "--no-progress", *flag])
    err = capsys.readouterr().err
    if flag:  # the flag overrides the variable: nsys on a CPU profile skips every cell, with the alternative
        assert code == 0 and "--profiler torch" in err
    else:
        assert code == 2 and err.count("\n") == 1 and "LMREPORT_PROFILER='perf'" in err
        assert not any(tmp_path.rglob("*.json"))


def test_command_lines():
    worker = ex.worker_command({"size": "small", "ctx": 128}, Path("/r/result.json"))
    assert worker[:3] == [sys.executable, "-m", "lmreport.experiments.nsys_worker"]
    assert json.loads(worker[3]) == {"ctx": 128, "size": "small"} and worker[4] == "/r/result.json"
    cmd = ex.profile_command("/opt/nsys", Path("/r/profile"), worker)
    assert cmd[:2] == ["/opt/nsys", "profile"] and cmd[-5:] == worker
    for opt in ("--trace=cuda,nvtx", "--capture-range=nvtx", "--nvtx-capture=step", "--capture-range-end=none",
                "--force-overwrite=true", "--output=/r/profile", "--sample=none"):
        assert opt in cmd
    stats = ex.stats_command("nsys", Path("/r/profile.nsys-rep"), ["cuda_gpu_kern_sum", "nvtx_sum"], Path("/r/stats"))
    assert stats == ["nsys", "stats", "--format=csv", "--force-export=true", "--output=/r/stats",
                     "--report=cuda_gpu_kern_sum", "--report=nvtx_sum", "/r/profile.nsys-rep"]
    assert ex.profile_env({"PATH": "/bin"}) == {"PATH": "/bin", "NSYS_NVTX_PROFILER_REGISTER_ONLY": "0"}


@pytest.mark.parametrize("text, version", [
    ("NVIDIA Nsight Systems version 2024.5.1.113-245134619542v0", "2024.5.1"),
    ("NVIDIA Nsight Systems version 2022.4.2.50-32196742v0", "2022.4.2"),
    ("NVIDIA Nsight Systems version 2021.3.1.54-ee9c30a", "2021.3.1"),
    ("command not found", None),
])
def test_nsys_version(text, version):
    assert ex.parse_nsys_version(text) == version


def test_nvtx_version_trap():
    warning = ex.nvtx_trap_warning("2022.4.2", "0.2.12")
    assert "2022.4" in warning and "nvtx<=0.2.11" in warning and "2023.1 or newer" in warning
    assert ex.nvtx_trap_warning("2022.4.2", "0.2.11") is None
    assert ex.nvtx_trap_warning("2024.5.1", "0.2.17") is None
    assert ex.nvtx_trap_warning(None, "0.2.17") is None


def test_report_names_follow_the_nsys_version():
    assert ex.choose_reports(HELP_NEW) == {"cuda_gpu_kern_sum": "cuda_gpu_kern_sum", "nvtx_sum": "nvtx_sum",
                                           "nvtx_kern_sum": "nvtx_kern_sum", "nvtx_gpu_proj_sum": "nvtx_gpu_proj_sum",
                                           "cuda_api_sum": "cuda_api_sum"}
    assert ex.choose_reports(HELP_OLD) == {"cuda_gpu_kern_sum": "gpukernsum", "nvtx_sum": "nvtxppsum",
                                           "nvtx_kern_sum": "nvtxkernsum", "cuda_api_sum": "cudaapisum"}
    assert ex.choose_reports("usage: nsys stats ...")["cuda_gpu_kern_sum"] == "cuda_gpu_kern_sum"
    with pytest.raises(RuntimeError, match="cuda_gpu_kern_sum"):
        ex.choose_reports("  nvtx_sum -- NVTX Range Summary\n  osrt_sum -- OS Runtime Summary\n")


FAKE_NSYS = '''#!{python}
import json, os, shutil, sys, time
from pathlib import Path
args = sys.argv[1:]
mode = os.environ.get("FAKE_NSYS_MODE", "ok")
data = Path(os.environ["FAKE_NSYS_DATA"])
if args == ["--version"]:
    print("NVIDIA Nsight Systems version " + os.environ.get("FAKE_NSYS_VERSION", "2024.5.1.113-245134619542v0"))
elif args[:2] == ["stats", "--help-reports"]:
    print({help!r})
elif args[0] == "profile":
    (data / "pid").write_text(str(os.getpid()))
    assert os.environ["NSYS_NVTX_PROFILER_REGISTER_ONLY"] == "0"
    out = next(a for a in args if a.startswith("--output=")).split("=", 1)[1]
    i = args.index("-m")
    config, result = json.loads(args[i + 2]), Path(args[i + 3])
    if mode == "hang":
        time.sleep(120)
    if mode == "oom":
        result.write_text(json.dumps({{"status": "oom", "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB"}}))
        sys.exit(0)
    stats = {{"mean": 16.9, "std": 0.2, "median": 16.9, "min": 16.7, "max": 17.2, "n": config["steps"], "samples": []}}
    result.write_text(json.dumps({{"status": "ok", "timing": {{"step_ms": stats, "forward_ms": stats}}}}))
    if mode != "noreport":
        Path(out + ".nsys-rep").write_bytes(b"\\x00fake")
elif args[0] == "stats":
    prefix = next(a for a in args if a.startswith("--output=")).split("=", 1)[1]
    for a in args:
        if a.startswith("--report="):
            name = a.split("=", 1)[1]
            src = data / f"stats_{{name}}.csv"
            if src.exists() and not (mode == "nonvtx" and name == "nvtx_sum"):
                shutil.copyfile(src, prefix + "_" + name + ".csv")
'''


@pytest.fixture
def fake_nsys(tmp_path, monkeypatch):
    bin_dir, data = tmp_path / "bin", tmp_path / "data"
    bin_dir.mkdir()
    write_profile(data, "forward")
    script = bin_dir / "nsys"
    script.write_text(FAKE_NSYS.format(python=sys.executable, help=HELP_NEW))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NSYS_DATA", str(data))
    return data


def a_cell():
    """A GPU cell (profiler auto: Nsight Systems, since the fake one is on PATH) of the synthetic profile's 5 steps."""
    c = next(c for c in ex.cells(plan("handout-2025")) if c.config["mode"] == "forward")
    return dataclasses.replace(c, config={**c.config, "steps": 5})


def test_run_cell_profiles_exports_and_parses(fake_nsys, tmp_path):
    out = ex.run_cell(a_cell(), tmp_path / "cell")
    m = out["metrics"]
    assert m["source"] == "profiled" and m["nsys_version"] == "2024.5.1" and m["warnings"] == []
    assert m["kernel_total_ns"] == FORWARD_TOTAL and m["kernels"][0]["name"] == SGEMM_TN
    assert m["ranges"]["forward"]["instances"] == 5 and m["steps"] == 5 and m["includes_warmup"] is False
    assert m["range_kernels"]["computing softmax"]["class_ns"]["softmax"] == 2_000_000
    assert m["python_timing"]["forward_ms"]["mean"] == 16.9
    assert out["artifacts"]["cuda_gpu_kern_sum"] == "stats_cuda_gpu_kern_sum.csv"
    for name in out["artifacts"].values():
        assert (tmp_path / "cell" / name).exists(), name
    log = (tmp_path / "cell" / "nsys-profile.log").read_text()
    assert log.startswith("$ ") and "--nvtx-capture=step" in log


def test_oom_in_the_profiled_worker_is_an_oom_record(fake_nsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NSYS_MODE", "oom")
    monkeypatch.setattr(runner, "missing_requirement", lambda requires: None)
    rec = runner.execute_cell(a_cell(), tmp_path / "r.json", run_fn=ex.run_cell)
    assert rec["status"] == "oom" and "Tried to allocate 8.00 GiB" in rec["error"]


def test_a_hanging_profile_is_killed_at_the_timeout(fake_nsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NSYS_MODE", "hang")
    monkeypatch.setattr(ex, "PROFILE_TIMEOUT_S", 1.5)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="did not finish within 2 s"):
        ex.run_cell(a_cell(), tmp_path / "cell")
    assert time.perf_counter() - t0 < 15
    pid = int((fake_nsys / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_no_report_and_no_nvtx_ranges_explain_the_nvtx_trap(fake_nsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NSYS_VERSION", "2022.4.2.50-32196742v0")
    monkeypatch.setattr(ex, "_nvtx_version", lambda: "0.2.14")
    monkeypatch.setenv("FAKE_NSYS_MODE", "noreport")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"never seen.*nvtx<=0\.2\.11"):
            ex.run_cell(a_cell(), tmp_path / "cell")
    assert any("Nsight Systems 2022.4.2" in str(w.message) for w in caught)
    monkeypatch.setenv("FAKE_NSYS_MODE", "nonvtx")
    monkeypatch.setenv("FAKE_NSYS_VERSION", "2024.5.1")
    with pytest.raises(RuntimeError, match="holds no NVTX ranges"):
        ex.run_cell(a_cell(), tmp_path / "cell2")


def test_without_nsys_the_cell_is_skipped_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LMREPORT_PROFILER", "nsys")
    with pytest.raises(runner.CellSkipped, match=r"--profiler torch.*lmreport ingest nsys"):
        ex.run_cell(a_cell(), tmp_path / "cell")


def test_worker_records_a_failure_instead_of_crashing(tmp_path, monkeypatch):
    from lmreport.experiments import nsys_worker
    monkeypatch.setattr(nsys_worker, "run", lambda config: (_ for _ in ()).throw(MemoryError("no room")))
    assert nsys_worker.main([json.dumps(a_cell().config), str(tmp_path / "res.json")]) == 0
    assert json.loads((tmp_path / "res.json").read_text()) == {"status": "oom", "error": "MemoryError: no room"}


def test_worker_needs_cuda(tmp_path, monkeypatch):
    import torch
    from lmreport.experiments import nsys_worker
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    nsys_worker.main([json.dumps(a_cell().config), str(tmp_path / "res.json")])
    assert json.loads((tmp_path / "res.json").read_text())["error"].startswith("RuntimeError: no CUDA device")


def test_worker_model_config_covers_every_size():
    from lmreport.experiments.nsys_worker import model_config
    for c in ex.cells(plan("handout-2025")) + ex.cells(plan("handout-2026")) + ex.cells(plan("cpu")):
        assert model_config(c.config).name == c.config["size"]


@pytest.mark.cuda
def test_worker_times_the_workload_on_cuda(tmp_path):
    from lmreport.experiments import nsys_worker
    config = {**a_cell().config, "mode": "train", "ctx": 32, "warmup": 1, "steps": 2}
    nsys_worker.main([json.dumps(config), str(tmp_path / "res.json")])
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["status"] == "ok", res
    assert set(res["timing"]) == {"step_ms", "forward_ms", "backward_ms", "optimizer_step_ms"}
    assert res["timing"]["step_ms"]["n"] == 2


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan"])
def test_a_bad_timeout_variable_is_one_line_before_any_cell_runs(tmp_path, monkeypatch, capsys, value):
    from lmreport.cli import main
    monkeypatch.setenv("LMREPORT_NSYS_TIMEOUT_S", value)
    code = main(["run", "nsys", "--profile", "cpu", "--runs-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"LMREPORT_NSYS_TIMEOUT_S={value!r}" in err
    assert not any(tmp_path.rglob("*.json"))


def test_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LMREPORT_NSYS_TIMEOUT_S", "120")
    monkeypatch.setenv("LMREPORT_NSYS_STATS_TIMEOUT_S", " ")
    assert ex.timeouts() == (120.0, ex.STATS_TIMEOUT_S)
