"""Bad nsys exports through the command line: one line naming the file and the problem, exit 2."""

from __future__ import annotations

import pytest

from lmreport.cli import main
from test_nsys_synthetic import KERN_HEADER, kern_rows, FORWARD, stats_stdout, to_csv, write_profile

GOOD = to_csv(KERN_HEADER, kern_rows(FORWARD))
MALFORMED = {
    "empty.csv": (b"", "empty file"),
    "blank.txt": (b"\n   \n\n", "empty file"),
    "report.nsys-rep": (b"\x00\x00NSYS\x01" + bytes(range(256)) * 8, "binary file"),
    "profile.sqlite": (b"SQLite format 3\x00" + bytes(200), "an SQLite export"),
    "wrong_columns.csv": (b"Time (%),Total Time (ns),Instances,Avg (ns),Colour\n1.0,2,3,4.0,red\n",
                          "is not an nsys stats report"),
    "not_nsys.csv": (b"model,params\nsmall,128625408\n", "no nsys stats table found"),
    "truncated.csv": (GOOD[:GOOD.rindex(",") - 3].encode(), "looks truncated"),
    "truncated_console.txt": (stats_stdout().rstrip()[:-150].encode(), "looks truncated"),
    "bad_number.csv": (GOOD.replace("40000000", "4e7x", 1).encode(), "is not a number in column 'Total Time (ns)'"),
    "infinite.csv": (GOOD.replace("40000000", "inf", 1).encode(), "'inf' is not a finite number in column 'Total Time"),
    "negative.csv": (GOOD.replace("40000000", "-40000000", 1).encode(), "is negative in column 'Total Time (ns)'"),
    "fractional_calls.csv": (GOOD.replace(",70,", ",70.5,", 1).encode(), "'70.5' is not a whole number of calls"),
}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_inspect_rejects_malformed_exports_in_one_line(tmp_path, capsys, name):
    data, problem = MALFORMED[name]
    path = tmp_path / name
    path.write_bytes(data)
    code, out, err = run(capsys, "inspect", "nsys", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"lmreport: error: {path}: ") and problem in err, err
    assert "Traceback" not in err


def test_ingest_rejects_a_malformed_file_among_good_ones(tmp_path, capsys):
    files = write_profile(tmp_path / "good")
    bad = tmp_path / "stats_nvtx_sum.csv"
    bad.write_bytes(MALFORMED["truncated.csv"][0])
    code, _, err = run(capsys, "ingest", "nsys", *files[:1], bad, "--size", "tiny", "--ctx", "64", "--mode", "forward",
                       "--runs-dir", tmp_path / "runs", "--profile", "cpu")
    assert code == 2 and err.count("\n") == 1 and str(bad) in err and "looks truncated" in err
    assert not (tmp_path / "runs").exists()


def test_missing_file_and_folder(tmp_path, capsys):
    code, _, err = run(capsys, "inspect", "nsys", tmp_path / "nope.csv")
    assert code == 2 and "nope.csv: no such file" in err
    code, _, err = run(capsys, "inspect", "nsys", tmp_path)
    assert code == 2 and "is a folder" in err


def test_ingest_needs_a_kernel_table_and_a_known_size(tmp_path, capsys):
    files = write_profile(tmp_path)
    api_only = [f for f in files if "cuda_api_sum" in f.name]
    code, _, err = run(capsys, "ingest", "nsys", *api_only, "--size", "tiny", "--ctx", "64", "--mode", "forward",
                       "--runs-dir", tmp_path / "runs", "--profile", "cpu")
    assert code == 2 and "needs cuda_gpu_kern_sum or nvtx_kern_sum" in err and err.count("\n") == 1
    code, _, err = run(capsys, "ingest", "nsys", *files, "--size", "huge", "--ctx", "64", "--mode", "forward",
                       "--runs-dir", tmp_path / "runs", "--profile", "cpu")
    assert code == 2 and "unknown size 'huge'" in err and "small" in err


def test_ingest_of_several_profiles_asks_which(tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text(stats_stdout(1) + "\nafter a change:\n\n" + stats_stdout(2))
    code, _, err = run(capsys, "ingest", "nsys", notes, "--size", "tiny", "--ctx", "64", "--mode", "forward",
                       "--runs-dir", tmp_path / "runs", "--profile", "cpu")
    assert code == 2 and f"{notes}: holds 2 profiles" in err and "--run N (1 to 2)" in err
    code, _, err = run(capsys, "ingest", "nsys", notes, "--size", "tiny", "--ctx", "64", "--mode", "forward",
                       "--runs-dir", tmp_path / "runs", "--profile", "cpu", "--run", "2")
    assert code == 0 and "wrote" in err
    code, _, err = run(capsys, "ingest", "nsys", notes, "--size", "tiny", "--ctx", "64", "--mode", "forward",
                       "--runs-dir", tmp_path / "runs", "--profile", "cpu", "--run", "3")
    assert code == 2 and "no profile number 3" in err


def test_reingesting_the_records_own_artifacts_keeps_them(tmp_path, capsys):
    files = write_profile(tmp_path / "profile")
    argv = ["--size", "tiny", "--ctx", "64", "--mode", "forward", "--runs-dir", tmp_path / "runs", "--profile", "cpu"]
    assert run(capsys, "ingest", "nsys", *files, *argv)[0] == 0
    own = sorted((tmp_path / "runs" / "2025-cpu" / "nsys" / "tiny-ctx64-forward-fp32").glob("stats_*.csv"))
    assert len(own) == len(files)
    before = [f.read_bytes() for f in own]
    code, _, err = run(capsys, "ingest", "nsys", *own, *argv)
    assert code == 0, err
    assert [f.read_bytes() for f in own] == before


def test_ingest_refuses_a_profile_without_kernels(tmp_path, capsys):
    empty = tmp_path / "stats_cuda_gpu_kern_sum.csv"
    empty.write_text(",".join(KERN_HEADER) + "\n")
    code, _, err = run(capsys, "ingest", "nsys", empty, "--size", "tiny", "--ctx", "64", "--mode", "forward",
                       "--runs-dir", tmp_path / "runs", "--profile", "cpu")
    assert code == 2 and err.count("\n") == 1 and f"{empty}: line 1: the cuda_gpu_kern_sum table has no rows" in err
    assert not (tmp_path / "runs").exists()


def test_ingest_keeps_an_existing_profile_unless_replace(tmp_path, capsys):
    from lmreport import store
    first, second = write_profile(tmp_path / "a"), write_profile(tmp_path / "b")
    second[0].write_text(second[0].read_text().replace("40000000", "41000000", 1))  # another profile
    argv = ["--size", "tiny", "--ctx", "64", "--mode", "forward", "--runs-dir", tmp_path / "runs", "--profile", "cpu"]
    record_file = tmp_path / "runs" / "2025-cpu" / "nsys" / "tiny-ctx64-forward-fp32.json"
    # a CPU run's skipped placeholder is replaced
    skipped = store.make_record("nsys", "tiny-ctx64-forward-fp32", {"size": "tiny", "ctx": 64, "mode": "forward"},
                                {"device": "CPU"}, "skipped", error="needs a CUDA GPU")
    store.write_record(record_file, skipped)
    assert run(capsys, "ingest", "nsys", *first, *argv)[0] == 0
    assert run(capsys, "ingest", "nsys", *first, *argv)[0] == 0  # the same files again: nothing to lose
    code, _, err = run(capsys, "ingest", "nsys", *second, *argv)
    assert code == 2 and err.count("\n") == 1 and f"{record_file} already holds a profile ingested from" in err
    assert "--replace" in err and store.read_record(record_file)["metrics"]["kernel_total_ns"] == 79_500_000
    assert run(capsys, "ingest", "nsys", *second, *argv, "--replace")[0] == 0
    assert store.read_record(record_file)["metrics"]["kernel_total_ns"] == 80_500_000
