"""Records: atomic writes, lenient loading, selection of the newest ok record."""

from __future__ import annotations

import json
import warnings

import pytest

from lmreport import store
from lmreport.errors import InputFileError

ENV = {"device": "CPU: test", "host": "h1"}


def rec(cell, status="ok", started="2026-01-01T00:00:00+00:00", section="bench", **cfg):
    return store.make_record(section, cell, {"edition": 2025, "profile": "cpu", **cfg}, ENV, status,
                             metrics={"x_ms": {"mean": 1.0}}, started_at=started)


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    path = store.record_path(tmp_path, "2025-cpu", "bench", "c1")
    store.write_record(path, rec("c1"))
    assert store.read_record(path)["status"] == "ok"
    assert [p.name for p in path.parent.iterdir()] == ["c1.json"]


def test_failed_write_keeps_old_record(tmp_path):
    path = store.record_path(tmp_path, "r", "bench", "c1")
    store.write_record(path, rec("c1"))
    bad = rec("c1")
    bad["metrics"] = {"x": object()}  # not serialisable: the write fails midway
    with pytest.raises(TypeError):
        store.write_record(path, bad)
    assert store.read_record(path)["metrics"] == {"x_ms": {"mean": 1.0}}
    assert [p.name for p in path.parent.iterdir()] == ["c1.json"]


@pytest.mark.parametrize("content,problem", [
    ("{not json", "not valid JSON"), ('{"a": 1}', "not an lmreport record"), ("", "not valid JSON"),
    ("[1, 2]", "not an lmreport record"),
    ('{"schema": "1", "section": "s", "cell": "c", "config": {}, "status": "ok", "metrics": {}}', "schema '1' is not 1"),
    ('{"schema": 1, "section": 7, "cell": null, "config": {}, "status": "ok", "metrics": {}}', "must be strings"),
    ('{"schema": 1, "section": "s", "cell": "c", "config": [], "status": "ok", "metrics": {}}', "must be JSON objects"),
    ('{"schema": 1, "section": "s", "cell": "c", "config": {}, "status": "ok", "metrics": {}, "artifacts": "x"}',
     "environment and artifacts must be JSON objects")])
def test_bad_files_give_one_line_error_naming_the_file(tmp_path, content, problem):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(InputFileError) as e:
        store.read_record(p)
    assert str(p) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_binary_file_is_not_a_record(tmp_path):
    p = tmp_path / "bin.json"
    p.write_bytes(b"\x80\x81\xff\x00")
    with pytest.raises(InputFileError, match="not a text file"):
        store.read_record(p)


def test_loader_skips_bad_files_with_warning(tmp_path):
    store.write_record(tmp_path / "a" / "bench" / "c1.json", rec("c1"))
    (tmp_path / "a" / "bench" / "c2.json").write_text("{oops")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        records = store.load_records(tmp_path)
    assert [r["cell"] for r in records] == ["c1"]
    assert any("c2.json" in str(x.message) for x in w)


def test_select_prefers_newest_ok_and_merges_hosts(tmp_path):
    rs = [rec("c1", "ok", "2026-01-01T00:00:00+00:00"), rec("c1", "ok", "2026-02-01T00:00:00+00:00"),
          rec("c1", "oom", "2026-03-01T00:00:00+00:00"), rec("c2", "oom"), rec("c3", edition=2026)]
    chosen = store.select(rs, edition=2025, profile="cpu")
    assert [(r["cell"], r["status"], r["started_at"][:7]) for r in chosen] == [
        ("c1", "ok", "2026-02"), ("c2", "oom", "2026-01")]


def test_a_record_is_in_the_plan_it_names_or_in_every_plan_when_it_names_none():
    old = store.make_record("bench", "c4", {}, ENV, "ok")  # written before records named their plan
    rs = [rec("c1"), rec("c2", edition=2026), rec("c3", profile="handout-2025"), old]
    assert [store.in_plan(r, 2025, "cpu") for r in rs] == [True, False, False, True]
    assert all(store.in_plan(r, None, None) for r in rs) and store.in_plan(rs[1], None, "cpu")
    # select keeps what in_plan admits, other_plans counts the rest by the plan they name
    assert [r["cell"] for r in store.select(rs, 2025, "cpu")] == ["c1", "c4"]
    assert store.other_plans(rs, 2025, "cpu") == {(2026, "cpu"): 1, (2025, "handout-2025"): 1}


def test_record_is_plain_json(tmp_path):
    path = store.write_record(tmp_path / "x.json", rec("c1"))
    data = json.loads(path.read_text())
    assert set(store.REQUIRED_KEYS) <= set(data)


def test_records_are_readable_by_the_group_like_other_files(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        p = store.write_record(tmp_path / "r.json", store.make_record("s", "c", {}, {}, "ok"))
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644


def test_a_failed_rerun_keeps_the_ok_record_it_replaces(tmp_path):
    path = tmp_path / "run" / "bench" / "c.json"
    good = store.make_record("bench", "c", {}, {}, "ok", metrics={"step_ms": {"mean": 1.0}},
                             started_at="2026-01-01T00:00:00+00:00")
    store.write_record(path, good)
    store.write_record(path, store.make_record("bench", "c", {}, {}, "oom", error="CUDA out of memory"))
    kept = [p for p in path.parent.iterdir() if store.is_kept_copy(p)]
    assert len(kept) == 1 and store.read_record(kept[0])["metrics"] == good["metrics"]
    assert store.read_record(path)["status"] == "oom" and not store.is_ok(path)  # a plain rerun retries it
    (chosen,) = store.select(store.load_records(tmp_path))
    assert chosen["status"] == "ok"  # the writeup keeps the measurement
    # An ok result replaces an ok one without keeping copies.
    store.write_record(path, store.make_record("bench", "c", {}, {}, "ok"))
    store.write_record(path, store.make_record("bench", "c", {}, {}, "ok"))
    assert len([p for p in path.parent.iterdir() if store.is_kept_copy(p)]) == 1
