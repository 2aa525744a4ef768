"""The About page: how long the run took and how much of it was overhead, per section, from the records."""

from __future__ import annotations

import pytest

from lmreport import store
from lmreport.presets import resolve
from lmreport.report import render as render_mod
from lmreport.report.run_cost import run_cost

PROFILE, ED25 = resolve("cpu", 2025, False)
SECTIONS = [("accounting", "Accounting"), ("bench", "Benchmark")]


def rec(section, cell, duration_s, **extra):
    r = store.make_record(section, cell, {"edition": 2025, "profile": "cpu"}, {"device": "CPU: test", "host": "h"}, "ok",
                          duration_s=duration_s)
    return {**r, **extra}


def test_overhead_is_launch_plus_the_time_around_timed_steps():
    records = [
        rec("bench", "a", 10.0, wall_s=13.0, timed_s=6.0, launcher="subprocess"),  # 3 s launch + 4 s around the steps
        rec("bench", "b", 5.0, wall_s=5.0, timed_s=4.0, launcher="worker"),  # 1 s around
        rec("accounting", "c", 2.0, wall_s=2.5, launcher="worker"),  # no timed steps: only its 0.5 s launch
        rec("accounting", "ingested", 0.0),  # nothing ran here: left out
    ]
    cost = run_cost(records, SECTIONS)
    acc, bench = cost["sections"]
    assert (acc["name"], acc["cells"], acc["wall_s"], acc["overhead_s"], acc["timed_s"]) == ("accounting", 1, 2.5, 0.5, 0.0)
    assert (bench["cells"], bench["wall_s"], bench["timed_s"], bench["overhead_s"]) == (2, 18.0, 10.0, 8.0)
    assert bench["launchers"] == "subprocess (1), worker (1)"
    total = cost["total"]
    assert (total["cells"], total["wall_s"], total["overhead_s"]) == (3, 20.5, 8.5)
    assert total["overhead_share"] == 8.5 / 20.5


def test_records_from_before_the_launch_times_count_their_duration_only():
    cost = run_cost([rec("bench", "old", 7.0), rec("bench", "new", 3.0, wall_s=4.0, timed_s=2.0)], SECTIONS)
    t = cost["total"]
    assert (t["cells"], t["wall_s"], t["known_cells"], t["known_wall_s"], t["overhead_s"]) == (2, 11.0, 1, 4.0, 2.0)
    assert run_cost([rec("bench", "old", 7.0)], SECTIONS)["total"]["overhead_s"] is None
    assert run_cost([rec("bench", "ingested", 0.0)], SECTIONS) is None


@pytest.mark.filterwarnings("ignore::UserWarning")  # the chapters refuse these synthetic records; the About page counts them
def test_the_about_page_shows_it(tmp_path):
    runs = tmp_path / "runs"
    for r in (rec("bench", "a", 60.0, wall_s=95.0, timed_s=50.0, launcher="subprocess"),
              rec("accounting", "c", 2.0, wall_s=2.0, launcher="inline")):
        store.write_record(store.record_path(runs, "2025-cpu", r["section"], r["cell"]), r)
    md = render_mod.render(runs, tmp_path / "build", ED25, PROFILE, pdf=False).markdown.read_text()
    about = md[md.index("# About this writeup"):md.index("# Accounting")]
    assert "The 2 cells behind this writeup ran for 1:37 in all" in about
    assert "Of that, 0:45 (46%) was overhead" in about
    assert "| End-to-end benchmark | 1 | 1:35 | 0:50 | 0:45 | 47% | subprocess (1) |" in about
    assert "| **all** | 2 | 1:37 | 0:50 | 0:45 | 46% | |" in about

    empty = render_mod.render(tmp_path / "none", tmp_path / "b2", ED25, PROFILE, pdf=False).markdown.read_text()
    assert "How long the run took" not in empty
