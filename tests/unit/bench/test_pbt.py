"""The Rung side of `python -m bench.pbt` (issue 21), on a tiny population."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.pbt import RUNG_SYSTEMS, Shape, rung_config, rung_rows, rung_run
from rung.searcher.config import PBTSearcher
from rung.searcher.simulate.schedule import LRSchedule

ROOT = Path(__file__).resolve().parents[3]
TINY = Shape(population=4, rounds=3, per_round=3, workers=4)  # 36 epochs; ASHA rungs 1, 3, 9


@pytest.mark.parametrize("system", RUNG_SYSTEMS)
def test_a_seed_run_again_gives_the_same_result(system: str) -> None:
    first, again = rung_run(system, 7, TINY), rung_run(system, 7, TINY)
    assert first == again
    assert rung_run(system, 8, TINY)["digest"] != first["digest"]  # the seed matters


def test_synchronous_pbt_trains_every_member_to_full_length_in_the_budget() -> None:
    for seed in (1, 2, 3):
        run = rung_run("rung pbt sync", seed, TINY)
        assert run["state"] == "COMPLETED"
        assert run["epochs"] == TINY.budget == 4 * 9
        assert run["full_length_trials"] == TINY.population
        # One loser replaced in each of the rounds but the last: int(4 * 0.25) = 1.
        assert run["trials"] == TINY.population + (TINY.rounds - 1)
        assert run["best"] == run["best_full_length"] == run["within_budget"]


def test_asynchronous_pbt_ends_with_a_full_population() -> None:
    for seed in (1, 2, 3):
        run = rung_run("rung pbt async", seed, TINY)
        assert run["state"] == "COMPLETED"
        assert run["full_length_trials"] == TINY.population
        assert run["best"] == run["best_full_length"]


def test_asha_is_stopped_by_the_same_budget() -> None:
    for seed in (1, 2, 3):
        run = rung_run("rung asha", seed, TINY)
        assert run["state"] == "BUDGET_SPENT"
        # Operations under way when the budget is spent finish: less than one trial more.
        assert TINY.budget <= run["epochs"] < TINY.budget + TINY.length
        assert run["best"] == run["best_full_length"]


def test_the_rows_replay_identically_in_a_fresh_process() -> None:
    rows = rung_rows([1, 2], TINY, systems=("rung pbt sync", "rung pbt async"))
    for row in rows:
        assert row["replay_identical"], row["replay_differs"]
        assert row["best_is_full_length"]
        assert row["seeds"] == 2
        assert row["min"] <= row["median"] <= row["max"]


def test_the_configs_are_the_examples() -> None:
    example = yaml.safe_load((ROOT / "examples/simulate/lrsched_pbt.yaml").read_text())
    for system, mode in (("rung pbt sync", "synchronous"), ("rung pbt async", "asynchronous")):
        config = rung_config(system, 1).searcher
        assert isinstance(config, PBTSearcher)
        searcher = example["searcher"]
        for field in ("population_size", "num_rounds", "max_concurrent_trials"):
            assert getattr(config, field) == searcher[field]
        assert config.length_per_round.units == searcher["length_per_round"]["epochs"]
        assert config.replace_function is not None
        assert config.replace_function.model_dump() == searcher["replace_function"]
        assert config.explore_function.model_dump() == searcher["explore_function"]
        assert config.mode.value == mode
        assert config.quantile == 0.25  # async: set; sync: not read
    asha = yaml.safe_load((ROOT / "examples/simulate/lrsched_asha.yaml").read_text())
    for system in RUNG_SYSTEMS:
        parsed = rung_config(system, 1).hyperparameters
        assert parsed == rung_config("rung pbt sync", 1, TINY).hyperparameters
        assert set(parsed) == set(example["hyperparameters"]) == set(asha["hyperparameters"])


def _peer_script() -> Any:
    """The Ray script's objective only: its module imports Ray inside ``run``."""
    path = ROOT / "bench/peer_scripts/pbt_ray.py"
    spec = importlib.util.spec_from_file_location("pbt_ray", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_peers_lrsched_is_rungs() -> None:
    peer = _peer_script()
    rng = random.Random(5)
    for _ in range(50):
        segments, start, loss = [], 0, 1.0
        for _ in range(rng.randint(1, 5)):
            hparams = {"lr": 10 ** rng.uniform(-3, 0), "x": rng.uniform(0, 1)}
            end = start + rng.randint(0, 20)
            for _ in range(start, end):
                loss = peer.epoch(loss, hparams["lr"])
            segments.append((hparams, start, end))
            start = end
        expected = LRSchedule().evaluate_path(segments)
        assert peer.scaled(loss, segments[-1][0]["x"]) == pytest.approx(expected, rel=1e-9)
    assert peer.clamp({"lr": 1.2, "x": -0.1}) == {"lr": 1.0, "x": 0.0}
    assert peer.clamp({"lr": 0.0008, "x": 0.5}) == {"lr": 1e-3, "x": 0.5}
