"""bitops._timing: the interleaved timing the benchmarks report from, and its paired ratios."""
import pytest

from bitops._timing import interleaved_median_ms, interleaved_times_ms, paired_ratio


def test_interleaved_times_are_per_round_in_alternating_order():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = interleaved_times_ms(fns, repeats=4, warmup=2)
    # Warm-up per function, then round-robin, odd rounds in reverse order.
    assert order == ["a", "a", "b", "b"] + ["a", "b", "b", "a"] * 2
    assert set(times) == {"a", "b"} and all(len(ts) == 4 and min(ts) >= 0 for ts in times.values())
    medians = interleaved_median_ms(fns, repeats=3, warmup=0)
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_paired_ratio_pairs_rounds():
    # The machine slows down 2x halfway: per-round ratios stay 3, while the ratio of the two medians does not.
    slow = [30.0, 30.0, 60.0, 60.0, 60.0]
    fast = [10.0, 10.0, 20.0, 20.0, 20.0]
    assert paired_ratio(slow, fast) == (3.0, 3.0, 3.0)
    drifting = [30.0, 30.0, 30.0, 60.0, 60.0]
    assert paired_ratio(drifting, fast)[0] == 3.0  # median of (3, 3, 1.5, 3, 3)
    med, q1, q3 = paired_ratio([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    assert (med, q1, q3) == (2.5, 1.75, 3.25)
    assert paired_ratio([5.0], [2.0]) == (2.5, 2.5, 2.5)


@pytest.mark.parametrize("a, b", [([1.0, 2.0], [1.0]), ([], [])])
def test_paired_ratio_rejects_unpaired_times(a, b):
    with pytest.raises(ValueError, match=f"got {len(a)} and {len(b)} times; expected two equal, nonempty lists"):
        paired_ratio(a, b)


def test_interleaved_times_rejects_no_rounds():
    with pytest.raises(ValueError, match="repeats=0; expected at least 1"):
        interleaved_times_ms({"a": lambda: None}, repeats=0)
