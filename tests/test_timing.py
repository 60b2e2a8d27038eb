"""vimc.timing: the one timing helper behind every figure vimc prints."""

from __future__ import annotations

import time

import pytest

from vimc.timing import Timing, quantile, round_ratios, time_fn, time_round_robin


def test_quantile_interpolates_like_numpy():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert quantile(xs, 0.0) == 1.0 and quantile(xs, 1.0) == 4.0
    assert quantile(xs, 0.5) == pytest.approx(2.5)
    assert quantile(xs, 0.2) == pytest.approx(1.6)
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)


def test_timing_summary_in_milliseconds():
    t = Timing(times_s=[0.001, 0.002, 0.003], first_s=0.5)
    assert t.n == 3 and t.median_ms == pytest.approx(2.0)
    assert t.p20_ms == pytest.approx(1.4) and t.p80_ms == pytest.approx(2.6)
    assert t.per_second(8) == pytest.approx(4000.0)
    assert t.summary()["first_s"] == 0.5


def test_time_fn_warmup_repeats_and_budget():
    calls = []
    t = time_fn(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and t.n == 5 and t.first_s is not None
    # a budget stops early once spent, after at least min_repeats timed calls
    t = time_fn(lambda: time.sleep(0.02), warmup=0, repeats=1000, min_repeats=3, budget_s=0.05)
    assert 3 <= t.n < 10 and t.first_s is None
    assert t.median_ms >= 15
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)


def test_round_robin_interleaves_and_rotates():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = time_round_robin(fns, rounds=4, warmup=1)
    assert calls == list("abc") + list("abc") * 4  # warm-up, then rounds in order
    assert all(t.n == 4 and t.first_s is not None for t in timings.values())
    calls.clear()
    # rotated: round r starts at the (r mod n)-th, so no function always follows the same one
    timings = time_round_robin(fns, rounds=4, warmup=0, rotate=True)
    assert calls == list("abcbcacababc")
    assert set(timings) == set("abc") and all(t.n == 4 for t in timings.values())
    with pytest.raises(ValueError, match="rounds"):
        time_round_robin(fns, rounds=0)


def test_round_robin_settles_each_function_before_its_timed_call():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    timings = time_round_robin(fns, rounds=2, warmup=0, settle=2)
    assert calls == list("aaabbb") * 2  # two untimed calls, then the timed one, per turn
    assert all(t.n == 2 for t in timings.values())  # only the timed calls are kept
    with pytest.raises(ValueError, match="settle"):
        time_round_robin(fns, settle=-1)


def test_round_ratios_pair_each_rounds_calls():
    # rounds 2 and 3 ran in a slow spell for both: per round the ratio stays 1.5
    vim, deit = Timing([0.030, 0.060, 0.090, 0.036]), Timing([0.020, 0.040, 0.060, 0.024])
    r = round_ratios(vim, deit)
    assert r == pytest.approx({"p20": 1.5, "median": 1.5, "p80": 1.5})
    # rounds that disagree (ratios 1.5, 1.5, 1/3, 1.67): the per-round median is 1.5, the
    # ratio of the two medians, taken from different rounds, 0.035 / 0.032 = 1.09
    vim = Timing([0.030, 0.060, 0.020, 0.040])
    r = round_ratios(vim, deit)
    assert r["median"] == pytest.approx(1.5) and r["p20"] < 1.5 < r["p80"]
    assert vim.median_ms / deit.median_ms == pytest.approx(0.035 / 0.032)
    with pytest.raises(ValueError):
        round_ratios(Timing([0.01]), deit)  # rounds must pair up
