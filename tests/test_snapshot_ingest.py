"""`lmreport ingest memory`: flags that cannot describe a memory cell are one-line errors naming
the flag; ingesting never loses data (no partial writes, no silent overwrite of a record)."""

from __future__ import annotations

import json
import pickle

import pytest

from lmreport.cli import main
from lmreport.ingest.snapshot_synthetic import synthetic_snapshot

CELL = "measured-2.7B-ctx128-train-fp32"


def _snap(path, seed=1):
    obj, truth = synthetic_snapshot(events=300, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path, truth


def _ingest(runs, *args) -> int:
    return main(["ingest", "memory", *map(str, args), "--profile", "cpu", "--runs-dir", str(runs)])


def _records(runs) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(runs.rglob("*.json"))}


@pytest.mark.parametrize("flags,expected", [
    (["--size", "2.7b", "--ctx", "128", "--mode", "train"], "--size '2.7b' is not a model of the 2025 edition"),
    (["--size", "2.7B", "--ctx", "128", "--mode", "train", "--edition", "2026"], "is not a model of the 2026 edition"),
    (["--size", "2.7B", "--ctx", "0", "--mode", "train"], "--ctx must be positive"),
    (["--size", "2.7B", "--ctx", "128", "--mode", "train", "--batch", "-1"], "--batch must be positive"),
    (["--size", "2.7B", "--ctx", "128", "--mode", "forward", "--first-step"], "--first-step describes a training step"),
    (["--size", "2.7B", "--ctx", "128", "--mode", "train", "--with-grad"], "--with-grad describes a forward pass"),
])
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, capsys, flags, expected):
    f, _ = _snap(tmp_path / "s.pickle")
    assert _ingest(tmp_path / "runs", f, *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "runs").exists()


def test_an_existing_record_is_kept_unless_replace(tmp_path, capsys):
    runs = tmp_path / "runs"
    a, truth_a = _snap(tmp_path / "a.pickle", seed=1)
    b, truth_b = _snap(tmp_path / "b.pickle", seed=2)
    flags = ["--size", "2.7B", "--ctx", "128", "--mode", "train"]
    assert _ingest(runs, a, *flags) == 0
    before = _records(runs)
    assert _ingest(runs, a, *flags) == 0  # the same file again: allowed, same content
    assert _ingest(runs, b, *flags) == 2  # another file for the same cell: refused
    err = capsys.readouterr().err
    assert "already holds a snapshot ingested from" in err and str(a) in err and "--replace" in err
    rec = json.loads(next(runs.rglob(f"{CELL}.json")).read_text())
    assert rec["metrics"]["peak_active_bytes"] == truth_a.peak_active[0]
    assert set(_records(runs)) == set(before)
    assert _ingest(runs, b, *flags, "--replace") == 0
    rec = json.loads(next(runs.rglob(f"{CELL}.json")).read_text())
    assert rec["metrics"]["peak_active_bytes"] == truth_b.peak_active[0]


def test_a_bad_file_among_several_writes_no_record(tmp_path, capsys):
    runs = tmp_path / "runs"
    good, _ = _snap(tmp_path / "good.pickle")
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps(synthetic_snapshot(events=100)[0])[:-40])
    assert _ingest(runs, good, bad, "--size", "2.7B", "--ctx", "128", "--mode", "train") == 2
    assert str(bad) in capsys.readouterr().err
    assert _records(runs) == {}


def test_files_with_the_same_name_from_two_folders_keep_both(tmp_path, capsys):
    runs = tmp_path / "runs"
    a, ta = _snap(tmp_path / "gpu0" / "snap.pickle", seed=3)
    b, tb = _snap(tmp_path / "gpu1" / "snap.pickle", seed=4)
    assert _ingest(runs, a, b, "--size", "2.7B", "--ctx", "128", "--mode", "train") == 0
    capsys.readouterr()
    peaks = {json.loads(t)["metrics"]["peak_active_bytes"] for t in _records(runs).values()}
    assert len(_records(runs)) == 2 and peaks == {ta.peak_active[0], tb.peak_active[0]}


def test_a_skipped_placeholder_is_replaced_but_an_oom_record_is_kept(tmp_path, capsys):
    from lmreport import store
    runs = tmp_path / "runs"
    f, truth = _snap(tmp_path / "s.pickle")
    rec_file = store.record_path(runs, "2025-cpu", "memory", CELL)
    for status, code in (("skipped", 0), ("oom", 2)):
        store.write_record(rec_file, store.make_record("memory", CELL, {"edition": 2025, "profile": "cpu"},
                                                       {"device": "NVIDIA H100 80GB HBM3"}, status, error="x"))
        assert _ingest(runs, f, "--size", "2.7B", "--ctx", "128", "--mode", "train") == code
        assert json.loads(rec_file.read_text())["status"] == ("ok" if code == 0 else "oom")
    assert "already holds an out-of-memory record" in capsys.readouterr().err


def test_a_file_that_is_no_record_is_set_aside_not_lost(tmp_path, capsys):
    from lmreport import store
    runs = tmp_path / "runs"
    f, truth = _snap(tmp_path / "s.pickle")
    rec_file = store.record_path(runs, "2025-cpu", "memory", CELL)
    rec_file.parent.mkdir(parents=True)
    rec_file.write_text('{"hand-edited": ')  # truncated: not a record
    assert _ingest(runs, f, "--size", "2.7B", "--ctx", "128", "--mode", "train") == 0
    assert "not a readable record; kept as" in capsys.readouterr().err
    assert json.loads(rec_file.read_text())["metrics"]["peak_active_bytes"] == truth.peak_active[0]
    assert rec_file.with_name(rec_file.name + ".unreadable").read_text() == '{"hand-edited": '
