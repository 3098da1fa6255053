"""The simulator runs population-based training: checkpoints at each operation's end,
a copy continuing its source's path, and lrsched, where a schedule beats every constant."""

from __future__ import annotations

import statistics

import pytest

from rung.searcher.config import ExperimentConfig
from rung.searcher.errors import SimulationError
from rung.searcher.simulate import BENCHMARKS, simulate
from rung.searcher.simulate.schedule import LRSchedule

from .helpers import make_config, pbt_searcher


def _best_constant(length: int) -> float:
    bench = LRSchedule()
    rates = [10 ** (-3 + 3 * i / 2000) for i in range(2001)]  # the space's lr, finely
    return min(bench.evaluate({"lr": lr, "x": 0.3}, length) for lr in rates)


def test_lrsched_rewards_a_decaying_schedule_over_every_constant() -> None:
    bench = LRSchedule()
    decaying = bench.evaluate_path(
        [({"lr": 0.5}, 0, 10), ({"lr": 0.1}, 10, 40), ({"lr": 0.03}, 40, 100)]
    )
    assert decaying < _best_constant(100)
    # One segment is the constant rate, and x scales the loss by 1 + (x - 0.3)^2.
    assert bench.evaluate_path([({"lr": 0.1}, 0, 100)]) == bench.evaluate({"lr": 0.1}, 100)
    assert bench.evaluate({"lr": 0.1, "x": 1.3}, 50) == pytest.approx(
        2 * bench.evaluate({"lr": 0.1, "x": 0.3}, 50)
    )
    with pytest.raises(SimulationError, match="needs a numeric hyperparameter lr"):
        bench.evaluate({"x": 0.1}, 10)


def _config(mode: str, seed: int) -> ExperimentConfig:
    return make_config(
        pbt_searcher(8, 10, 10, mode=mode, max_concurrent_trials=8),
        {"lr": {"type": "log", "minval": -3, "maxval": 0, "base": 10}},
        seed=seed,
    )


@pytest.mark.parametrize("mode", ["synchronous", "asynchronous"])
def test_pbt_in_the_simulator_finds_schedules_and_repeats_exactly(mode: str) -> None:
    results = [
        simulate(_config(mode, seed), BENCHMARKS["lrsched"], workers=8) for seed in range(10)
    ]
    assert simulate(_config(mode, 0), BENCHMARKS["lrsched"], workers=8) == results[0]
    for result in results:
        assert result.state == "COMPLETED"
        if mode == "synchronous":
            # Every member trains 100 epochs along its path: 8 x 100, no more, no less.
            assert result.total_length == 800
        else:
            # A member may copy one that is behind it (ranked on its latest result) and
            # train those epochs again, or one ahead and skip some; each trial at most
            # trains to 100.
            assert 0 < result.total_length <= 100 * result.trials
    # Over 10 seeds, the median best beats the best constant learning rate there is.
    best = sorted(r.best_metric for r in results if r.best_metric is not None)
    assert len(best) == 10
    assert statistics.median(best) < _best_constant(100)
