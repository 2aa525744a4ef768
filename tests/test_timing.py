import time

from lmreport.timing import Stats, time_steps


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
