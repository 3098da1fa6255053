"""``preview-search``: what a search config will do, before it runs.

For each bracket: its rung lengths, how many trials it starts, how many trials reach
each rung by successive halving's book (``floor(n / divisor**i)``), and the most length
it can possibly train. ``max_total_length`` is a true upper bound:

* promotion-based ASHA promotes at most one trial per result, and never one of the
  first ``ceil(divisor) - 1`` results of a rung, so at most ``n - ceil(divisor) + 1`` of
  ``n`` trials leave a rung;
* stopping-based ASHA may continue every trial whose result is the best so far, so in
  the worst case every trial trains to ``max_length``;
* random, single and grid train every trial to ``max_length``;
* pbt (one "bracket" whose rungs are the rounds' ends): every member trains every round,
  so ``population_size * num_rounds * length_per_round`` in synchronous mode, where a
  copy continues from its source's length; in asynchronous mode a member may copy one
  that is behind it and train that length again, so at most every trial it may create
  (``population_size * (num_rounds + 1)``) trains the whole length.
"""

from __future__ import annotations

import math
from typing import assert_never

from pydantic import BaseModel, ConfigDict

from rung.searcher.config import (
    AdaptiveASHASearcher,
    AsyncHalvingSearcher,
    CustomSearcher,
    ExperimentConfig,
    GridSearcher,
    PBTMode,
    PBTSearcher,
    RandomSearcher,
    SingleSearcher,
)
from rung.searcher.methods import ASHAParams, plan_brackets
from rung.searcher.rungs import rung_lengths
from rung.searcher.space import grid_size

__all__ = ["BracketPlan", "SearchPlan", "plan_search"]


class BracketPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    rungs: list[int]
    trials: int
    max_concurrent_trials: int
    trials_per_rung: list[int]
    nominal_length: int
    max_length: int


class SearchPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    searcher: str
    unit: str | None
    stop_once: bool
    brackets: list[BracketPlan]
    total_trials: int
    nominal_total_length: int
    max_total_length: int
    grid_points: int | None = None


def _trained(counts: list[int], rungs: list[int]) -> int:
    """Length trained when ``counts[i]`` trials reach rung ``i`` (resuming each time)."""
    steps = [high - low for low, high in zip([0, *rungs], rungs, strict=False)]
    return sum(c * s for c, s in zip(counts, steps, strict=True))


def _asha_bracket(params: ASHAParams, *, stop_once: bool) -> BracketPlan:
    rungs = rung_lengths(params.num_rungs, params.divisor, params.max_length)
    nominal = [params.max_trials]
    worst = [params.max_trials]
    for _ in rungs[1:]:
        nominal.append(int(nominal[-1] / params.divisor))
        if stop_once:
            worst.append(worst[-1])
        else:
            worst.append(max(worst[-1] - math.ceil(params.divisor) + 1, 0))
    return BracketPlan(
        rungs=rungs,
        trials=params.max_trials,
        max_concurrent_trials=params.max_concurrent,
        trials_per_rung=nominal,
        nominal_length=_trained(nominal, rungs),
        max_length=_trained(worst, rungs),
    )


def _flat_bracket(trials: int, max_length: int, concurrency: int) -> BracketPlan:
    return BracketPlan(
        rungs=[max_length],
        trials=trials,
        max_concurrent_trials=concurrency,
        trials_per_rung=[trials],
        nominal_length=trials * max_length,
        max_length=trials * max_length,
    )


def _pbt_bracket(searcher: PBTSearcher) -> BracketPlan:
    population, rounds = searcher.population_size, searcher.num_rounds
    per_round = searcher.length_per_round.units
    synchronous = searcher.mode is PBTMode.SYNCHRONOUS
    # Synchronous: the cut of each round but the last, nothing failing. Asynchronous: as
    # many, on average, if a member's result falls in the bottom quantile as often.
    cut = searcher.truncate_fraction if synchronous else searcher.quantile
    replaced = int(population * cut)
    trials = population + replaced * (rounds - 1)
    nominal = population * rounds * per_round
    return BracketPlan(
        rungs=[per_round * (r + 1) for r in range(rounds)],
        trials=trials,
        max_concurrent_trials=searcher.max_concurrent_trials,
        trials_per_rung=[population] * rounds,
        nominal_length=nominal,
        max_length=nominal if synchronous else population * (rounds + 1) * per_round * rounds,
    )


def plan_search(config: ExperimentConfig) -> SearchPlan:
    searcher = config.searcher
    grid: int | None = None
    stop_once = False
    match searcher:
        case SingleSearcher():
            brackets = [_flat_bracket(1, searcher.max_length.units, 1)]
        case RandomSearcher():
            brackets = [
                _flat_bracket(
                    searcher.max_trials, searcher.max_length.units, searcher.max_concurrent_trials
                )
            ]
        case GridSearcher():
            grid = grid_size(config.hyperparameters)
            brackets = [
                _flat_bracket(grid, searcher.max_length.units, searcher.max_concurrent_trials)
            ]
        case AsyncHalvingSearcher():
            stop_once = searcher.stop_once
            brackets = [_asha_bracket(ASHAParams.from_config(searcher), stop_once=stop_once)]
        case AdaptiveASHASearcher():
            stop_once = searcher.stop_once
            brackets = [_asha_bracket(p, stop_once=stop_once) for p in plan_brackets(searcher)]
        case PBTSearcher():
            brackets = [_pbt_bracket(searcher)]
        case CustomSearcher():
            brackets = []
        case _:
            assert_never(searcher)
    length = getattr(searcher, "max_length", None)
    return SearchPlan(
        searcher=searcher.name,
        unit=length.unit if length is not None else None,
        stop_once=stop_once,
        brackets=brackets,
        total_trials=sum(b.trials for b in brackets),
        nominal_total_length=sum(b.nominal_length for b in brackets),
        max_total_length=sum(b.max_length for b in brackets),
        grid_points=grid,
    )
