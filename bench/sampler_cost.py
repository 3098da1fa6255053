"""What a model-based suggestion costs the searcher, at 100, 1,000 and 10,000 results.

A sampler holds ``n`` results of mfh6 over five rungs (most at the lowest, as under ASHA)
and eight pending trials; it is then asked for 15 suggestions. The first one fits the
kernel (a ``gp`` refit happens when the results grow by a quarter); the median is what
the searcher pays per new trial. Issue 17's target: at most 50 ms at the median with
1,000 results on these 2-core machines.

    python -m bench.sampler_cost
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from rung.searcher.config import parse_config
from rung.searcher.samplers import Pending, SamplerData, build_sampler
from rung.searcher.simulate import BENCHMARKS

__all__ = ["run"]

_SPACE = {f"x{i}": {"type": "double", "minval": 0, "maxval": 1} for i in range(6)}
_RUNGS = (1, 3, 9, 27, 81)


def _measure(sampler_name: str, results: int, asks: int) -> dict[str, Any]:
    raw = {
        "hyperparameters": _SPACE,
        "searcher": {
            "name": "asha",
            "metric": "value",
            "max_length": 100,
            "max_trials": 100_000,
            "num_rungs": 5,
            "divisor": 3,
            "max_concurrent_trials": 8,
            "sampler": sampler_name,
        },
    }
    config = parse_config(raw).config.with_seed(1)
    sampler = build_sampler(config)
    rng = np.random.default_rng(0)
    bench = BENCHMARKS["mfh6"]
    points: dict[int, dict[str, Any]] = {}
    for index in range(results):
        point = {f"x{j}": float(rng.random()) for j in range(6)}
        points[index] = point
        length = _RUNGS[min(int(rng.exponential(0.6)), len(_RUNGS) - 1)]
        sampler.observe(index, length, bench.evaluate(point, length))
    pending = [Pending(points[i], 3) for i in range(8)]
    data = SamplerData(1, config.hyperparameters, 100, 8, points.__getitem__, pending)
    times = []
    for ask in range(asks):
        start = time.perf_counter()
        sampler.suggest(results + ask, data)
        times.append(time.perf_counter() - start)
    return {
        "workload": "sampler_cost",
        "sampler": sampler_name,
        "results": results,
        "first_ms": round(times[0] * 1e3, 2),
        "median_ms": round(statistics.median(times) * 1e3, 2),
        "max_ms": round(max(times) * 1e3, 2),
    }


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    sizes = (100, 1000) if quick else (100, 1000, 10_000)
    return [_measure(name, n, 5 if quick else 15) for name in ("gp", "tpe") for n in sizes]


if __name__ == "__main__":
    for row in run():
        print(row)
