"""Wall-clock medians for benchmarks and the demo: warm up, then time each call, report the median.
Speed is only ever reported as figures and ratios, never asserted in tests."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3, min_time_s: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds over at least ``repeats`` calls (and ``min_time_s``)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def interleaved_times_ms(fns: Dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> Dict[str, List[float]]:
    """Wall times in milliseconds of each of ``fns``, timed round-robin: every round calls each
    function once, in turn; entry r of every list is round r. On a shared machine whose speed drifts
    by 2x within a minute (this project's CI and dev machines do), timing one function's repeats after
    another's puts the drift into their ratio; interleaved, the drift lands on all of them alike. Odd
    rounds go in reverse order, so that no function always runs right after the same other one
    (bench_e2e at 32 x 128: a model always timed right after another measured 0.98x of it, 1.04x in
    alternating order)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}; expected at least 1")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(repeats):
        for name, fn in order if r % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved_median_ms(fns: Dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> Dict[str, float]:
    """Median wall time in milliseconds of each of ``fns``, timed round-robin (see interleaved_times_ms)."""
    return {name: statistics.median(ts) for name, ts in interleaved_times_ms(fns, repeats, warmup).items()}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Tuple[float, float, float]:
    """(median, first quartile, third quartile) of the per-round ratios numerator[r] / denominator[r]
    of two interleaved timings (interleaved_times_ms, in any one unit): the speed-up of the
    denominator's function over the numerator's. Pairing each round's two times cancels the drift between rounds, which a ratio of
    the two medians keeps when the machine's speed changes during the run."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"got {len(numerator)} and {len(denominator)} times; expected two equal, nonempty lists (one per round)")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), quartiles[0], quartiles[2]
