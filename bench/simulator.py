"""Workload 6, searcher scale: a 100,000-trial experiment in the simulator, timed.

ASHA and adaptive ASHA on mfh6 with 64 simulated workers, each run in a process of its
own so that its peak memory (the resident set's high-water mark) is its own: the search
method, the experiment's state and every trial's record, as the searcher holds them.
Prints trials, decisions, seconds, decisions/s and peak memory; with 3 repetitions
(1 for the full size, which takes a while) the median and min..max. The replay workload
(``bench/replay.py``) measures reading such a log back.

``python -m bench.simulator METHOD TRIALS`` is one run: it prints one JSON object.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.simulate import BENCHMARKS, simulate

__all__ = ["run"]

HPS = {f"x{i}": {"type": "double", "minval": 0, "maxval": 1} for i in range(6)}
SEARCHERS: dict[str, dict[str, Any]] = {
    "asha": {"name": "asha", "num_rungs": 5, "divisor": 3},
    "adaptive_asha": {"name": "adaptive_asha", "divisor": 3},
}


def _config(method: str, trials: int) -> ExperimentConfig:
    searcher = {
        "metric": "value",
        "max_length": 100,
        "max_trials": trials,
        "max_concurrent_trials": 64,
        **SEARCHERS[method],
    }
    return parse_config({"hyperparameters": HPS, "searcher": searcher}).config.with_seed(1)


def one_run(method: str, trials: int) -> dict[str, Any]:
    config = _config(method, trials)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = simulate(config, BENCHMARKS["mfh6"], workers=64)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "trials": result.trials,
        "decisions": result.decisions,
        "seconds": seconds,
        "peak_rss_mib": peak / 1024,
        "baseline_rss_mib": baseline / 1024,
    }


def run(*, quick: bool) -> list[dict[str, Any]]:
    trials = 5_000 if quick else 100_000
    repetitions = 3 if quick else 1
    rows: list[dict[str, Any]] = []
    for method in SEARCHERS:
        runs = []
        for _ in range(repetitions):
            done = subprocess.run(
                [sys.executable, "-m", "bench.simulator", method, str(trials)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        seconds = [r["seconds"] for r in runs]
        median = statistics.median(seconds)
        decisions = runs[0]["decisions"]
        rows.append(
            {
                "method": method,
                "trials": runs[0]["trials"],
                "decisions": decisions,
                "seconds_median": round(median, 3),
                "seconds_min": round(min(seconds), 3),
                "seconds_max": round(max(seconds), 3),
                "decisions_per_s": round(decisions / median),
                "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs)),
                "rss_before_mib": round(min(r["baseline_rss_mib"] for r in runs)),
            }
        )
    return rows


if __name__ == "__main__":
    print(json.dumps(one_run(sys.argv[1], int(sys.argv[2]))))
