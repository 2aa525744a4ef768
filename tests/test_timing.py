import time

import pytest

from lmreport.timing import Stats, time_phases, time_steps


def test_time_steps_counts_warmup_and_measures():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.002)

    s = time_steps(step, "cpu", warmup=2, steps=5)
    assert len(calls) == 7 and s.n == 5 and len(s.samples) == 5
    assert 1.5 < s.median < 50 and s.min <= s.mean <= s.max


def test_stats_of_single_sample_has_zero_std():
    assert Stats.of([3.0]).std == 0.0 and Stats.of([1.0, 3.0]).to_metric()["mean"] == 2.0


def test_profiler_ranges_are_record_functions_only_while_torch_profiler_records():
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    from lmreport.timing import _torch_profiler_range, profiler_range
    assert isinstance(_torch_profiler_range("step"), contextlib.nullcontext)  # no profiler: nothing to pay
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with profiler_range("forward"):
            torch.ones(2) + 1
    assert "forward" in {e.name for e in prof.events()}


def test_after_step_runs_after_every_step_outside_the_timed_code():
    calls = []
    stats = time_phases(lambda phase: calls.append("step"), "cpu", warmup=2, steps=3,
                        after_step=lambda: calls.append("after"))
    assert calls == ["step", "after"] * 5 and stats["step"].n == 3


def test_after_step_is_neither_timed_nor_ranged(monkeypatch):
    """prof.step (which stops Kineto and writes the trace) must not count in the record's timed_s, nor sit in a range."""
    import contextlib

    from lmreport import timing
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])  # time moves only in after_step
    open_ranges: list[str] = []

    @contextlib.contextmanager
    def fake_range(name):
        open_ranges.append(name)
        try:
            yield
        finally:
            open_ranges.pop()

    monkeypatch.setattr(timing, "profiler_range", fake_range)
    seen: list[list[str]] = []

    def after_step():
        seen.append(list(open_ranges))
        clock[0] += 100.0

    def step(phase):
        with phase("forward"):
            clock[0] += 1.0

    before = timing.timed_seconds()
    stats = time_phases(step, "cpu", warmup=2, steps=3, after_step=after_step)
    assert timing.timed_seconds() - before == pytest.approx(5 * 1.0)  # 2 warm-up + 3 measured steps, no after_step
    assert seen == [[]] * 5 and stats["step"].samples == (1000.0,) * 3 and stats["forward"].n == 3


def test_without_torch_profiler_a_range_is_the_bare_nvtx_annotation():
    """The hot path (four ranges per attention call): no generator-based wrapper when torch.profiler is off."""
    import nvtx
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lmreport.timing import profiler_range
    assert type(profiler_range("forward")) is nvtx.annotate
    with profile(activities=[ProfilerActivity.CPU]):
        assert type(profiler_range("forward")) is not nvtx.annotate
        torch.ones(1)
