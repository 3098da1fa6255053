"""preview-search plans."""

from __future__ import annotations

import math

from rung.searcher.plan import plan_search

from .helpers import make_config


def test_the_seed_tutorial_plan() -> None:
    plan = plan_search(make_config("{name: adaptive_asha, max_length: 100, max_trials: 10}"))
    assert [(b.rungs, b.trials) for b in plan.brackets] == [([25, 100], 7), ([100], 3)]
    assert plan.total_trials == 10
    # Halving book: 7 trials to 25, floor(7/4) = 1 on to 100; 3 trials to 100.
    assert plan.nominal_total_length == 7 * 25 + 1 * 75 + 3 * 100
    # At most 7 - ceil(4) + 1 = 4 trials can leave the bottom rung.
    assert plan.max_total_length == 7 * 25 + 4 * 75 + 3 * 100


def test_random_and_grid_plans() -> None:
    plan = plan_search(make_config("{name: random, max_length: 10, max_trials: 7}"))
    assert plan.max_total_length == plan.nominal_total_length == 70
    grid = plan_search(
        make_config(
            "{name: grid, max_length: 5}",
            "{a: {type: int, minval: 0, maxval: 9, count: 4}, "
            "b: {type: categorical, vals: [1, 2]}}",
        )
    )
    assert grid.grid_points == 8
    assert grid.total_trials == 8
    assert grid.max_total_length == 40


def test_stop_once_worst_case_trains_everything() -> None:
    plan = plan_search(
        make_config(
            "{name: asha, max_length: 27, max_trials: 9, num_rungs: 3, divisor: 3, stop_once: true}"
        )
    )
    assert plan.max_total_length == 9 * 27
    assert plan.brackets[0].trials_per_rung == [9, 3, 1]


def test_max_total_length_bounds_every_simulated_run() -> None:
    from random import Random

    from rung.searcher.experiment import Experiment

    from .helpers import Driver

    for seed in range(20):
        config = make_config(
            "{name: asha, max_length: 64, max_trials: 30, num_rungs: 4, divisor: 2.5}", seed=seed
        )
        exp = Experiment(config)
        Driver(exp, Random(seed)).run()
        trained = sum(t.trained for t in exp.trials.values())
        assert trained <= plan_search(config).max_total_length
        assert math.isfinite(trained)


def test_a_pbt_plan_has_a_rung_per_round() -> None:
    searcher = {
        "name": "pbt",
        "population_size": 8,
        "num_rounds": 10,
        "length_per_round": {"batches": 10},
        "replace_function": {"truncate_fraction": 0.25},
        "explore_function": {"resample_probability": 0.2, "perturb_factor": 0.2},
    }
    plan = plan_search(make_config(searcher))
    (bracket,) = plan.brackets
    assert plan.unit == "batches"
    assert bracket.rungs == list(range(10, 101, 10))
    assert bracket.trials_per_rung == [8] * 10
    assert bracket.trials == plan.total_trials == 8 + 2 * 9
    assert bracket.nominal_length == bracket.max_length == 800
    # Asynchronous: a member may copy one behind it, so at most every trial the search
    # may create trains the whole length.
    asynchronous = plan_search(make_config({**searcher, "mode": "asynchronous"}))
    assert asynchronous.max_total_length == 8 * 11 * 100
    assert asynchronous.nominal_total_length == 800
