"""Wall-clock medians for benchmarks and the demo: warm up, then time each call, report the median.
Speed is only ever reported as figures and ratios, never asserted in tests."""
from __future__ import annotations

import statistics
import time
from typing import Callable


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
