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


@pytest.mark.parametrize("argv", [
    [],
    ["nosuch"],
    ["run"],
    ["run", "nsys", "--profile", "nope"],
    ["run", "nsys", "--edition", "2030"],
    ["run", "nsys", "--ctx", "abc"],
    ["inspect"],
    ["inspect", "nsys"],
    ["ingest", "nsys", "x.csv", "--size", "small", "--ctx", "x", "--mode", "forward"],
    ["estimate", "memory", "--size", "tiny"],
    ["status", "--cells", "--bogus"],
])
def test_usage_errors_are_one_line_with_exit_2(capsys, argv):
    """argparse's own errors too: one line naming the flag, not the whole usage block."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("lmreport") and "--help" in err, err


def test_runs_dir_that_is_a_file_is_refused(capsys, tmp_path):
    f = tmp_path / "records.txt"
    f.write_text("not a folder")
    for argv in (["list"], ["render", "--no-pdf"], ["status"], ["run", "accounting"]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--runs-dir", str(f)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and f"{f} is a file, not a folder of records" in err


def test_an_output_path_the_system_refuses_is_one_line_naming_it(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "render", "--profile", "cpu", "--runs-dir", str(tmp_path / "none"),
                       "--out", str(blocker / "build"), "--no-pdf")
    assert code == 2 and err.count("\n") == 1 and str(blocker / "build") in err and "Traceback" not in err


def test_output_into_a_closed_pipe_is_not_an_error(samples_dir):
    """`lmreport inspect ... | head -1`: the reader leaves early; exit 0, no error line.

    The read end is closed before the child has even started, so its first write fails with
    EPIPE for sure (a real `head` may leave before or after a small output is written).
    """
    import subprocess
    import sys
    files = sorted(str(p) for p in (samples_dir / "nsys").iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "lmreport", "inspect", "nsys", *files],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "error" not in err.lower(), err


def test_commands_start_without_torch_and_matplotlib_when_they_need_neither(tmp_path):
    """Building the parser (every command, `--help` too) and `lmreport list` load neither torch, matplotlib nor
    pandas; a render without --profile on a CPU-only torch build does not load torch (the default profile is
    read from torch/version.py) and draws its figures with matplotlib only when there are any."""
    import subprocess
    import sys

    import torch

    from lmreport.device import _torch_build_for_gpu
    assert _torch_build_for_gpu() == bool(torch.version.cuda or torch.version.hip)
    probe = ("import sys; from lmreport.cli import main; main(sys.argv[1:]); "
             "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules), file=sys.stderr)")
    listed = subprocess.run([sys.executable, "-c", probe, "list", "--runs-dir", str(tmp_path)], capture_output=True,
                            text=True)
    assert listed.returncode == 0 and listed.stderr.strip().splitlines()[-1] == "[]"
    if not _torch_build_for_gpu():
        render = subprocess.run([sys.executable, "-c", probe, "render", "--runs-dir", str(tmp_path), "--out",
                                 str(tmp_path / "build"), "--no-pdf"], capture_output=True, text=True)
        assert render.returncode == 0 and "'torch'" not in render.stderr.strip().splitlines()[-1]
