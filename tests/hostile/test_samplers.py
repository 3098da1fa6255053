"""Hostile input to the model-based samplers: configs at the edge of their ranges,
metrics that are not numbers or are absurd, and data that would make a model's memory
or time explode. A suggestion must stay valid and bounded; it never fails the search."""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

from rung.searcher.errors import ConfigError
from rung.searcher.samplers import Pending, SamplerData, build_sampler
from tests.hostile.conftest import HostileTally
from tests.unit.searcher.helpers import make_config

CLASS = "sampler input"
SPACE = {
    "lr": {"type": "log", "minval": -300, "maxval": 300, "base": 10},
    "n": {"type": "int", "minval": 0, "maxval": 1},
    "x": {"type": "double", "minval": -1e300, "maxval": 1e300},
    "c": {"type": "categorical", "vals": list(range(200))},
}


def _searcher(sampler: Any) -> dict[str, Any]:
    return {
        "name": "asha",
        "max_length": 27,
        "max_trials": 100_000,
        "num_rungs": 3,
        "divisor": 3,
        "max_concurrent_trials": 64,
        "sampler": sampler,
    }


def _loaded(sampler: Any, results: int, value: Any) -> tuple[Any, SamplerData]:
    config = make_config(_searcher(sampler), hps=SPACE, seed=5)
    built = build_sampler(config)
    rng = np.random.default_rng(5)
    points: dict[int, dict[str, Any]] = {}
    for index in range(results):
        points[index] = {
            "lr": float(10 ** rng.uniform(-300, 300)),
            "n": int(rng.integers(0, 2)),
            "x": float(rng.uniform(-1e300, 1e300)),
            "c": int(rng.integers(0, 200)),
        }
        built.observe(index, 27 if index % 3 == 0 else 9, value(index))
    pending = [Pending(points[i], 9) for i in range(64)]
    return built, SamplerData(5, config.hyperparameters, 27, 64, points.__getitem__, pending)


EDGES = {
    "gp at its largest: 134 candidates, 1,000 results fitted": {
        "name": "gp",
        "candidates": 134,
        "max_data": 1_000,
    },
    "gp at its largest: 10,000 candidates": {"name": "gp", "candidates": 10_000, "max_data": 115},
    "tpe at its largest: 10,000 candidates": {"name": "tpe", "candidates": 10_000},
}


@pytest.mark.parametrize("case", EDGES)
def test_a_sampler_at_the_edge_of_its_ranges_stays_bounded(
    case: str, hostile: HostileTally
) -> None:
    sampler, data = _loaded(EDGES[case], 3_000, math.sin)
    tracemalloc.start()
    started = time.monotonic()
    suggested = sampler.suggest(3_001, data)
    seconds = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert suggested is not None
    assert suggested.suggestion.kind in {"model", "random"}
    assert peak < 200 * 2**20, f"{case}: {peak / 2**20:.0f} MiB"
    hostile.record(CLASS, case, "contained", seconds)


METRICS = {
    "every metric NaN": lambda i: None,
    "every metric the same": lambda i: 1.0,
    "absurd magnitudes": lambda i: (-1) ** i * 1e308,
    "one huge outlier": lambda i: 1e300 if i == 7 else float(i % 13),
}


@pytest.mark.parametrize("sampler", ["gp", "tpe"])
@pytest.mark.parametrize("case", METRICS)
def test_absurd_metrics_give_valid_points(sampler: str, case: str, hostile: HostileTally) -> None:
    built, data = _loaded(sampler, 300, METRICS[case])
    started = time.monotonic()
    for index in range(300, 305):
        suggested = built.suggest(index, data)
        assert suggested is not None
        point = suggested.hparams
        assert 1e-300 <= point["lr"] <= 1e300
        assert math.isfinite(point["x"])
        assert point["n"] in (0, 1)
        assert point["c"] in range(200)
    hostile.record(CLASS, f"{sampler}: {case}", "contained", time.monotonic() - started)


REFUSED = {
    "a sampler that does not exist": "bayesian",
    "a negative random share": {"name": "gp", "random_fraction": -0.1},
    "no model at all (random_fraction 1)": {"name": "tpe", "random_fraction": 1.0},
    "a million candidates": {"name": "gp", "candidates": 1_000_000},
    "max_data past the cap": {"name": "gp", "max_data": 5_000},
    "a suggestion too costly for the searcher": {
        "name": "gp",
        "candidates": 10_000,
        "max_data": 1_000,
    },
    "an unknown option": {"name": "tpe", "liar": "worst"},
    "a list for a sampler": ["gp"],
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_sampler_configs_are_refused_with_the_field(case: str, hostile: HostileTally) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        make_config(_searcher(REFUSED[case]), hps=SPACE)
    assert "searcher.sampler" in str(caught.value)
    hostile.record(CLASS, case, "refused", time.monotonic() - started)
