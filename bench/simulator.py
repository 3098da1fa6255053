"""How fast the search core decides: a large simulated experiment, timed.

Prints trials, decisions and seconds for promotion-based ASHA and adaptive ASHA on mfh6,
with the median of the repetitions and the min..max beside it.
"""

from __future__ import annotations

import resource
import statistics
import time

from searcher.config import ExperimentConfig, parse_config
from searcher.simulate import BENCHMARKS, simulate

HPS = {f"x{i}": {"type": "double", "minval": 0, "maxval": 1} for i in range(6)}


def _config(searcher: dict[str, object]) -> ExperimentConfig:
    raw = {"hyperparameters": HPS, "searcher": {"metric": "value", "max_length": 100, **searcher}}
    return parse_config(raw).config.with_seed(1)


def run(*, quick: bool) -> list[dict[str, object]]:
    trials = 2_000 if quick else 10_000
    repetitions = 3
    rows: list[dict[str, object]] = []
    for name, searcher in (
        (
            "asha",
            {
                "name": "asha",
                "max_trials": trials,
                "num_rungs": 5,
                "divisor": 3,
                "max_concurrent_trials": 64,
            },
        ),
        (
            "adaptive_asha",
            {
                "name": "adaptive_asha",
                "max_trials": trials,
                "divisor": 3,
                "max_concurrent_trials": 64,
            },
        ),
    ):
        config = _config(searcher)
        seconds: list[float] = []
        decisions = 0
        for _ in range(repetitions):
            start = time.perf_counter()
            result = simulate(config, BENCHMARKS["mfh6"], workers=64)
            seconds.append(time.perf_counter() - start)
            decisions = result.decisions
        median = statistics.median(seconds)
        rows.append(
            {
                "workload": "simulator",
                "method": name,
                "trials": trials,
                "decisions": decisions,
                "seconds_median": round(median, 3),
                "seconds_min": round(min(seconds), 3),
                "seconds_max": round(max(seconds), 3),
                "decisions_per_s": round(decisions / median),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    return rows
