"""Progress off a terminal (CI, Slurm logs, `| tee`): a few plain lines, never carriage-return updates."""

from __future__ import annotations

import io
import types

from lmreport import runner
from lmreport.presets import resolve
from lmreport.progress import Progress, clock_text

PLAN = runner.Plan(*resolve("cpu", 2025, False))


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_every_tenth_and_every_minute():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(100, "bench", file=out, clock=clock)
    assert not bar.terminal
    for i in range(100):
        clock.t += 1.0
        bar.update(1, postfix=f"c{i}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 10  # one per 10 cells; the last is 100%, close adds none
    assert lines[0] == "bench: 10/100 cells (10%), 0:10 elapsed, ETA 1:30 [c9]"
    assert lines[-1] == "bench: 100/100 cells (100%), 1:40 elapsed [c99]"

    out, clock = io.StringIO(), FakeClock()
    slow = Progress(1000, "jobs", file=out, clock=clock)
    clock.t = 61.0
    slow.set_postfix("3 queued, 1 running")  # nothing finished, but a minute passed: say where it stands
    slow.update(1)
    assert out.getvalue().splitlines() == ["jobs: 0/1000 cells (0%), 1:01 elapsed [3 queued, 1 running]"]
    slow.close()
    assert out.getvalue().splitlines()[-1] == "jobs: 1/1000 cells (0%), 1:01 elapsed, ETA 16:55:39 [3 queued, 1 running]"


def test_disabled_progress_prints_only_written_lines():
    out = io.StringIO()
    bar = Progress(3, "x", enabled=False, file=out)
    bar.update(3)
    bar.write("  c1: error (boom)")
    bar.close()
    assert out.getvalue() == "  c1: error (boom)\n"


def test_a_sweep_logs_plain_lines_to_a_captured_stderr(tmp_path, monkeypatch, capsys):
    mod = types.SimpleNamespace(run_cell=lambda c, a: {"metrics": {}} if c.name != "c3" else 1 / 0)
    monkeypatch.setattr("lmreport.sections.get", lambda name: types.SimpleNamespace(experiment_module=lambda: mod))
    cells = [runner.cell(PLAN, "fake", f"c{i}") for i in range(5)]
    runner.run_sweep(cells, tmp_path, PLAN.run, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "  c3: error (ZeroDivisionError: division by zero)" in err
    assert [ln for ln in err.splitlines() if ln.startswith("fake: ")][-1].startswith("fake: 5/5 cells (100%), ")


def test_clock_text():
    assert [clock_text(s) for s in (0, 42.4, 605, 3723)] == ["0:00", "0:42", "10:05", "1:02:03"]
