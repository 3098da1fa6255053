"""Successive-halving arithmetic against Determined's documented numbers."""

from __future__ import annotations

import pytest

from rung.searcher.config import AdaptiveMode
from rung.searcher.rungs import (
    bracket_concurrency,
    bracket_rung_counts,
    bracket_trials,
    int_log,
    rung_lengths,
)


def test_rung_lengths_match_determined_tests() -> None:
    # asha_stopping_test.go: 576000 records, divisor 3, 3 rungs; and 12 epochs.
    assert rung_lengths(3, 3, 576000) == [64000, 192000, 576000]
    assert rung_lengths(3, 3, 12) == [1, 4, 12]
    assert rung_lengths(2, 4, 100) == [25, 100]
    assert rung_lengths(1, 4, 100) == [100]


@pytest.mark.parametrize(
    ("value", "base"),
    [(64, 4), (100, 4), (81, 3), (80, 3), (1, 2), (1000, 10), (999, 10), (7, 2.5)],
)
def test_int_log_is_exact(value: int, base: float) -> None:
    expected = 0
    while base ** (expected + 1) <= value:
        expected += 1
    assert int_log(value, base) == expected


def test_the_seed_tutorial_plan() -> None:
    # 3_hpsearch: adaptive_asha, max_length 100, max_trials 10, divisor 4, max_rungs 5.
    max_rungs = min(5, int_log(100, 4) + 1, int_log(10, 4) + 1)
    assert max_rungs == 2
    counts = bracket_rung_counts(5, 100, 10, 4, AdaptiveMode.STANDARD)
    assert counts == [2, 1]
    # weights 4^1/2 = 2 and 4^0/1 = 1: int(2/3*10) = 6, int(1/3*10) = 3, remainder 1 to 0
    assert bracket_trials(10, 4, counts) == [7, 3]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (AdaptiveMode.AGGRESSIVE, [5]),
        (AdaptiveMode.STANDARD, [5, 4, 3]),
        (AdaptiveMode.CONSERVATIVE, [5, 4, 3, 2, 1]),
    ],
)
def test_modes_pick_bracket_rungs(mode: AdaptiveMode, expected: list[int]) -> None:
    assert bracket_rung_counts(5, 10_000, 10_000, 3, mode) == expected


def test_concurrency_is_split_evenly_remainder_first() -> None:
    assert bracket_concurrency(16, 4, [7, 3]) == [8, 8]
    assert bracket_concurrency(7, 4, [5, 3, 2]) == [3, 2, 2]
    # unlimited: max(trials of the last bracket, divisor)
    assert bracket_concurrency(0, 4, [50, 20, 3]) == [4, 4, 4]
    # below the number of brackets every bracket still gets one (the experiment caps)
    assert bracket_concurrency(2, 4, [5, 3, 2]) == [1, 1, 1]
