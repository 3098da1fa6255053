"""Successive-halving arithmetic shared by the config checks, the methods and the planner.

All of it follows Determined 0.37 (``asha.go``, ``adaptive_asha.go``), with integer
logarithms computed exactly instead of through floating-point ``log`` ratios.
"""

from __future__ import annotations

from typing import assert_never

from rung.searcher.config.searchers import AdaptiveMode

__all__ = [
    "bracket_concurrency",
    "bracket_rung_counts",
    "bracket_trials",
    "int_log",
    "rung_lengths",
]


def rung_lengths(num_rungs: int, divisor: float, max_length: int) -> list[int]:
    """Absolute length of each rung: ``max(floor(max_length / divisor**(n-1-i)), 1)``."""
    return [max(int(max_length / divisor ** (num_rungs - 1 - i)), 1) for i in range(num_rungs)]


def int_log(value: int, base: float) -> int:
    """``floor(log(value) / log(base))`` without floating-point surprises (log(64)/log(4))."""
    power, exponent = base, 0
    while power <= value * (1 + 1e-12):
        power *= base
        exponent += 1
    return exponent


def bracket_rung_counts(
    max_rungs: int, max_length: int, max_trials: int, divisor: float, mode: AdaptiveMode
) -> list[int]:
    """Rungs per bracket, most aggressive early stopping first."""
    rungs = min(max_rungs, int_log(max_length, divisor) + 1, int_log(max_trials, divisor) + 1)
    match mode:
        case AdaptiveMode.AGGRESSIVE:
            counts = [rungs]
        case AdaptiveMode.STANDARD:
            counts = list(range((rungs - 1) // 2 + 1, rungs + 1))
        case AdaptiveMode.CONSERVATIVE:
            counts = list(range(1, rungs + 1))
        case _:
            assert_never(mode)
    return sorted(counts, reverse=True)


def bracket_trials(max_trials: int, divisor: float, rung_counts: list[int]) -> list[int]:
    """Trials per bracket, weighted so each bracket gets a similar total length budget."""
    weights = [divisor ** (n - 1) / n for n in rung_counts]
    total = sum(weights)
    trials = [max(int(w / total * max_trials), 1) for w in weights]
    trials[0] += max(max_trials - sum(trials), 0)
    return trials


def bracket_concurrency(max_concurrent: int, divisor: float, trials: list[int]) -> list[int]:
    """Concurrency per bracket: an even split, the remainder to the first brackets.

    Every bracket gets at least 1. When ``max_concurrent`` is below the number of brackets,
    the experiment's admission queue still holds the total to ``max_concurrent`` (Determined
    raised the cap to the number of brackets instead, and so ran more trials than asked).
    """
    count = len(trials)
    if max_concurrent == 0:
        return [max(trials[-1], int(divisor))] * count
    share, remainder = divmod(max_concurrent, count)
    return [max(share + (1 if i < remainder else 0), 1) for i in range(count)]
