"""The command line: one-line errors, non-zero exits, the commands a newcomer uses."""

from __future__ import annotations

import pytest

from lmreport.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_section_is_one_line_error(capsys):
    code, _, err = run(capsys, "run", "nosuch")
    assert code == 2 and err.count("\n") == 1 and "unknown section 'nosuch'" in err


def test_profile_and_edition_conflict(capsys):
    code, _, err = run(capsys, "render", "--profile", "handout-2025", "--edition", "2026", "--no-pdf")
    assert code == 2 and "handout-2026" in err and "Traceback" not in err


def test_list_shows_sections_profiles_and_records(capsys, tmp_path):
    code, out, _ = run(capsys, "list", "--runs-dir", str(tmp_path))
    assert code == 0 and "accounting" in out and "handout-2026" in out and "none" in out


def test_run_accounting_then_render(capsys, tmp_path):
    runs, build = str(tmp_path / "runs"), str(tmp_path / "build")
    code, _, err = run(capsys, "run", "accounting", "--profile", "cpu", "--runs-dir", runs, "--no-progress",
                       "--size", "nothing-matches")
    assert code == 0 and "no cells" in err
    code, _, err = run(capsys, "render", "--profile", "cpu", "--runs-dir", runs, "--out", build, "--no-pdf")
    assert code == 0 and "writeup.md" in err


def test_bad_record_file_is_a_warning_not_a_crash(capsys, tmp_path):
    bad = tmp_path / "runs" / "2025-cpu" / "accounting" / "x.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{truncated")
    code, _, err = run(capsys, "render", "--profile", "cpu", "--runs-dir", str(tmp_path / "runs"),
                       "--out", str(tmp_path / "b"), "--no-pdf")
    assert code == 0 and "x.json" in err and "not valid JSON" in err and "Traceback" not in err
