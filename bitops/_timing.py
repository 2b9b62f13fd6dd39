"""Wall-clock medians for benchmarks and the demo: warm up, then time each call, report the median.
Speed is only ever reported as figures and ratios, never asserted in tests."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict


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


def interleaved_median_ms(fns: Dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> Dict[str, float]:
    """Median wall time in milliseconds of each of ``fns``, timed round-robin: every round calls each
    function once, in turn. On a shared machine whose speed drifts by 2x within a minute (this
    project's CI and dev machines do), timing one function's repeats after another's puts the drift
    into their ratio; interleaved, the drift lands on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, list] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
