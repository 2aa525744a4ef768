"""Every real nsys export in ../shared/samples/nsys: report type, row count and top entry.

Expected values were read off the files by eye (SOURCES.md says what each one is).
"""

from __future__ import annotations

import json

import pytest

from lmreport.cli import main
from lmreport.ingest.nsys import inspect_file

MOE = "gujialiang123_MOEresearch__"
EXPECTED = {  # file -> [(report, rows, top name, top time %, top total ns, top instances)]
    f"{MOE}AT_OFF_CG_OFF_cuda_gpu_kern_sum.csv": [
        ("cuda_gpu_kern_sum", 88, "cutlass::device_kernel<GemmUniversal>", 79.8, 14_198_407_375, 97_620)],
    f"{MOE}AT_OFF_CG_OFF_cuda_api_sum.csv": [("cuda_api_sum", 33, "cudaMemcpyAsync", 61.5, 10_224_630_561, 79_186)],
    f"{MOE}AT_ON_CG_ON_cuda_api_sum_stdout_head.txt": [
        ("cuda_api_sum", 13, "cudaMemcpyAsync", 72.1, 10_414_705_400, 20_599)],
}
VECTOR_ADD = "vectorAdd"
README = "ayush-os_nsight-systems-deep-dive__README_stats_table.md"
README_REPORTS = ["nvtx_sum", "osrt_sum", "cuda_api_sum", "cuda_gpu_kern_sum", "cuda_gpu_mem_time_sum",
                  "cuda_gpu_mem_size_sum"]


def test_every_sample_file_is_recognised(samples_dir):
    files = sorted(p.name for p in (samples_dir / "nsys").iterdir())
    assert set(files) == {*EXPECTED, README}, "a new sample needs its expected values here"
    for name, tables in EXPECTED.items():
        got = inspect_file(samples_dir / "nsys" / name)
        assert [(t["report"], t["rows"]) for t in got["tables"]] == [(r, n) for r, n, *_ in tables], name
        for t, (_, _, top, pct, total, inst) in zip(got["tables"], tables):
            assert t["top"][0] == {"name": top, "time_pct": pct, "total_time_ns": total, "instances": inst}, name


def test_readme_with_five_pasted_profiles(samples_dir):
    got = inspect_file(samples_dir / "nsys" / README)
    assert [t["report"] for t in got["tables"]] == README_REPORTS * 5
    first = {t["report"]: t for t in got["tables"][:6]}
    assert first["nvtx_sum"]["rows"] == 2 and first["nvtx_sum"]["top"][0]["name"] == "Profile_Loop"
    assert first["nvtx_sum"]["top"][0]["total_time_ns"] == 3_481_709
    assert first["osrt_sum"]["rows"] == 27 and first["osrt_sum"]["top"][0]["name"] == "sem_wait"
    assert first["cuda_api_sum"]["top"][0] == {"name": "cudaMalloc", "time_pct": 96.9, "total_time_ns": 106_912_410,
                                               "instances": 3}
    assert first["cuda_gpu_kern_sum"]["top"][0] == {"name": VECTOR_ADD, "time_pct": 100.0,
                                                    "total_time_ns": 1_831_281, "instances": 1010}
    assert first["cuda_gpu_mem_time_sum"]["top"][0]["name"] == "[CUDA memcpy HtoD]"
    assert first["cuda_gpu_mem_size_sum"]["rows"] == 2 and first["cuda_gpu_mem_size_sum"]["total_time_ns"] is None
    last_kernels = [t for t in got["tables"] if t["report"] == "cuda_gpu_kern_sum"][-1]
    assert last_kernels["top"][0]["total_time_ns"] == 14_835_396 and last_kernels["top"][0]["instances"] == 410


def test_inspect_json_through_the_cli(samples_dir, capsys):
    path = samples_dir / "nsys" / f"{MOE}AT_OFF_CG_OFF_cuda_gpu_kern_sum.csv"
    assert main(["inspect", "nsys", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"file", "tables"} and out["file"] == str(path)
    t = out["tables"][0]
    assert set(t) == {"report", "rows", "total_time_ns", "top"} and t["report"] == "cuda_gpu_kern_sum"
    assert t["total_time_ns"] == 17_784_350_413 and len(t["top"]) == 5
    assert set(t["top"][0]) == {"name", "time_pct", "total_time_ns", "instances"}


def test_inspect_text_through_the_cli(samples_dir, capsys):
    assert main(["inspect", "nsys", str(samples_dir / "nsys" / README)]) == 0
    out = capsys.readouterr().out
    assert out.count("cuda_gpu_kern_sum: 1 rows") == 5 and "vectorAdd" in out and "cudaMalloc" in out


@pytest.mark.parametrize("run, total", [(1, 1_831_281), (5, 14_835_396)])
def test_ingest_one_profile_of_the_readme(samples_dir, tmp_path, capsys, run, total):
    from lmreport import store
    code = main(["ingest", "nsys", str(samples_dir / "nsys" / README), "--size", "small", "--ctx", "128",
                 "--mode", "forward", "--run", str(run), "--profile", "cpu", "--runs-dir", str(tmp_path),
                 "--device", "NVIDIA A100-SXM4-80GB"])
    assert code == 0, capsys.readouterr().err
    rec = store.read_record(store.record_path(tmp_path, "2025-cpu", "nsys", "small-ctx128-forward-fp32"))
    assert rec["metrics"]["kernel_total_ns"] == total and rec["environment"]["device"] == "NVIDIA A100-SXM4-80GB"
    assert rec["artifacts"]["cuda_gpu_kern_sum"] == README
    assert (tmp_path / "2025-cpu" / "nsys" / "small-ctx128-forward-fp32" / README).exists()
