"""The one timing helper behind every latency figure vimc prints: ``vimc demo``, ``vimc bench``,
``benchmarks/*.py`` and the examples.

Each call is timed on its own with ``time.perf_counter`` after untimed warm-up calls (the
first of which carries one-time costs: compilation, lazy kernel loading, thread pools, and is
reported apart). On CUDA the device is synchronized before and after each call, so a figure
is the kernel's time, not the launch's. Results are quantiles, p20/p50/p80, because these
machines are shared and noisy: the spread says how much to trust the median. Backends that
are compared run interleaved (:func:`time_round_robin`), so a busy spell slows all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def quantile(xs, q: float) -> float:
    """The q-quantile of ``xs`` with linear interpolation (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        raise ValueError("quantile of no values")
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Timing:
    """Timed calls of one function. ``times_s``: each timed call in seconds; ``first_s``: the
    first warm-up call (None without warm-up)."""

    times_s: list[float] = field(default_factory=list)
    first_s: float | None = None

    @property
    def n(self) -> int:
        return len(self.times_s)

    @property
    def p20_ms(self) -> float:
        return quantile(self.times_s, 0.2) * 1e3

    @property
    def median_ms(self) -> float:
        return quantile(self.times_s, 0.5) * 1e3

    @property
    def p80_ms(self) -> float:
        return quantile(self.times_s, 0.8) * 1e3

    def per_second(self, items: int = 1) -> float:
        """``items`` per second at the median (images/s for a batch of ``items``)."""
        return items / quantile(self.times_s, 0.5)

    def summary(self) -> dict:
        return {
            "n": self.n,
            "median_ms": self.median_ms,
            "p20_ms": self.p20_ms,
            "p80_ms": self.p80_ms,
            "first_s": self.first_s,
        }


def _syncer(device) -> Callable[[], None]:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def time_fn(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    repeats: int = 20,
    min_repeats: int = 1,
    budget_s: float | None = None,
    device=None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones. With
    ``budget_s``, stop early once that many seconds (warm-up included) are spent and at least
    ``min_repeats`` calls are timed. ``device``: synchronize this CUDA device around calls."""
    if repeats < 1 or min_repeats < 1:
        raise ValueError(f"repeats and min_repeats must be >= 1, got {repeats}, {min_repeats}")
    sync = _syncer(device)
    t_begin = time.perf_counter()
    result = Timing()
    for i in range(warmup):
        t = _timed(fn, sync)
        if i == 0:
            result.first_s = t
    while result.n < repeats:
        result.times_s.append(_timed(fn, sync))
        spent = time.perf_counter() - t_begin
        if budget_s is not None and result.n >= min_repeats and spent >= budget_s:
            break
    return result


def time_round_robin(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 10,
    warmup: int = 1,
    device=None,
    pause_s: float = 0.0,
    rotate: bool = False,
    settle: int = 0,
) -> dict[str, Timing]:
    """Time several functions side by side: ``warmup`` untimed calls each, then ``rounds``
    rounds that call each function once, in turn. ``pause_s``: an untimed sleep after every
    timed call (lets a runtime's spinning threads go idle before the next one is timed).
    ``rotate``: round r starts at the (r mod n)-th function, so that no function always runs
    right after the same other one (and inherits its cache state). ``settle``: that many
    untimed calls of a function right before each of its timed ones, so each is timed as its
    own repeated calls leave the caches and the thread pool (a steady state), while a slow
    spell still falls on every function of a round alike. Without it a fast kernel timed
    right after a slow Python loop pays for the loop's effect on caches and idle cores (the
    README's scan.py section has the numbers)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if settle < 0:
        raise ValueError(f"settle must be >= 0, got {settle}")
    sync = _syncer(device)
    results = {name: Timing() for name in fns}
    for name, fn in fns.items():
        for i in range(warmup):
            t = _timed(fn, sync)
            if i == 0:
                results[name].first_s = t
    names = list(fns)
    for r in range(rounds):
        k = r % len(names) if rotate and names else 0
        for name in names[k:] + names[:k]:
            for _ in range(settle):
                _timed(fns[name], sync)
            results[name].times_s.append(_timed(fns[name], sync))
            if pause_s:
                time.sleep(pause_s)
    return results


def round_ratios(a: Timing, b: Timing) -> dict[str, float]:
    """p20, median and p80 of a's time over b's within each round of a round robin (the i-th
    timed call of each): a spell that slows both for a round cancels in its ratio, where the
    ratio of the two medians takes each median from different rounds. ValueError unless both
    have the same number of timed calls."""
    paired = [x / y for x, y in zip(a.times_s, b.times_s, strict=True)]
    return {k: quantile(paired, q) for k, q in (("p20", 0.2), ("median", 0.5), ("p80", 0.8))}
