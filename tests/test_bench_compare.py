"""bench/compare.py's verdict: pass or FAIL only when the whole spread is on one side of the goal line."""

from __future__ import annotations

import pytest

from bench.compare import MIN_ROUNDS, spread, verdict


def test_spread_is_median_and_range():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "rounds": [3.0, 1.0, 2.0]}


@pytest.mark.parametrize("ours, ref, status", [
    ([3.1, 3.2, 3.3], [0.99, 1.0, 1.03], "pass"),        # worst pairing 3.1 / 1.03 = 3.01 >= 3
    ([3.1, 3.2, 3.3], [0.99, 1.0, 1.04], "inconclusive"),  # medians 3.2x, but 3.1 / 1.04 = 2.98 < 3
    ([2.0, 2.5, 3.1], [0.97, 1.0, 1.01], "inconclusive"),  # median 2.5x, but best pairing 3.1 / 0.97 = 3.2
    ([2.0, 2.5, 2.9], [0.98, 1.0, 1.01], "FAIL"),        # best pairing 2.9 / 0.98 = 2.959 < 3
    ([9.0, 1.0, 3.0], [1.0, 1.0, 1.0], "inconclusive"),  # median 3.0x, spread 1x-9x
])
def test_higher_is_better(ours, ref, status):
    v = verdict(ours, ref, 3.0)
    assert v["status"] == status, v
    assert v["ratio"] == pytest.approx(sorted(ours)[1] / sorted(ref)[1])


def test_lower_is_better_memory():
    assert verdict([900, 910, 920], [950, 1000, 1010], 1.0, higher_is_better=False)["status"] == "pass"
    assert verdict([900, 910, 960], [950, 1000, 1010], 1.0, higher_is_better=False)["status"] == "inconclusive"
    assert verdict([1020, 1030, 1040], [950, 1000, 1010], 1.0, higher_is_better=False)["status"] == "FAIL"


def test_quick_and_too_few_rounds_are_never_judged():
    clear_pass = ([10.0] * MIN_ROUNDS, [1.0] * MIN_ROUNDS)
    assert verdict(*clear_pass, 3.0)["status"] == "pass"
    assert verdict(*clear_pass, 3.0, quick=True)["status"] == "not judged"
    assert verdict([10.0] * (MIN_ROUNDS - 1), [1.0] * (MIN_ROUNDS - 1), 3.0)["status"] == "not judged"
