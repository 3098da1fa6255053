"""Workload 5: search quality at equal budget (shared/reference/benchmarks.md §2).

Rung's random search, ASHA and adaptive ASHA run in Rung's simulator, which drives the
real search methods with one simulated worker; the peers run ``peer_scripts/quality.py``
in their environments: Optuna's TPE with the Hyperband pruner (and, as the protocol of
the reference asks, random sampling with its SuccessiveHalving and Hyperband pruners),
and Ray Tune's ASHAScheduler. Every system is scored on the same objective function.

The budget is epochs actually executed, stopped and paused trials included, resumed
training counted once. The incumbent at a budget is the best trial trained to full
fidelity within it. For each benchmark, system and budget the row gives the median and
interquartile range over seeds of the regret (the incumbent's value less the optimum;
for digits, whose optimum is unknown, the validation error itself), the share of seeds
that reached the target, and the median epochs to reach it.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.objectives import DIGITS_MAX, DIGITS_SPACE, Digits
from bench.peers import PeerError, run_peer
from rung.searcher.config import parse_config
from rung.searcher.simulate import BENCHMARKS, Benchmark, simulate
from rung.searcher.simulate.hartmann import OPTIMUM, Z_MAX

__all__ = ["run"]


@dataclass(frozen=True)
class Problem:
    name: str
    z_max: int
    target: float  # target A
    budgets: tuple[int, ...]  # in full-fidelity evaluations
    optimum: float | None


PROBLEMS = {
    "mfh6": Problem("mfh6", Z_MAX, -2.5, (25, 100), OPTIMUM),
    "mfh6_bad": Problem("mfh6_bad", Z_MAX, -2.5, (25, 100), OPTIMUM),
    "digits": Problem("digits", DIGITS_MAX, 4 / 359, (10, 50), None),
}
HARTMANN_SPACE = {f"x{i}": {"type": "double", "minval": 0, "maxval": 1} for i in range(6)}
PEERS = (
    ("optuna", "tpe_hyperband"),
    ("optuna", "random_sh"),
    ("optuna", "random_hyperband"),
    ("ray", "asha"),
)


def _rung_searcher(method: str, problem: Problem, budget: int) -> dict[str, Any]:
    searcher: dict[str, Any] = {
        "metric": "value",
        "smaller_is_better": True,
        "max_length": problem.z_max,
        "max_concurrent_trials": 1,
    }
    if method == "random":
        return {**searcher, "name": "random", "max_trials": budget // problem.z_max + 1}
    # Enough trials that the budget, not the trial count, ends the run.
    searcher |= {"name": method, "max_trials": budget, "divisor": 3}
    if method == "asha":  # rungs at 1, 3, 9, 27 (and 81 on 100), as the peers'
        searcher["num_rungs"] = 5 if problem.z_max == Z_MAX else 4
    return searcher


def _rung_runs(
    method: str, problem: Problem, seeds: Iterable[int], budget: int
) -> list[dict[str, Any]]:
    bench: Benchmark = Digits() if problem.name == "digits" else BENCHMARKS[problem.name]
    space = DIGITS_SPACE if problem.name == "digits" else HARTMANN_SPACE
    runs = []
    for seed in seeds:
        raw = {"hyperparameters": space, "searcher": _rung_searcher(method, problem, budget)}
        config = parse_config(raw).config.with_seed(seed)
        result = simulate(config, bench, workers=1, budget=budget)
        trace = [
            [point.epochs, point.metric]
            for point in result.history
            if point.length == problem.z_max and point.metric is not None
        ]
        runs.append({"seed": seed, "epochs": result.total_length, "trace": trace})
    return runs


def _score(problem: Problem, runs: list[dict[str, Any]], budget_evals: int) -> dict[str, Any]:
    budget = budget_evals * problem.z_max
    regrets, to_target = [], []
    for run in runs:
        values = [v for spent, v in run["trace"] if spent <= budget]
        best = min(values) if values else float("inf")
        regrets.append(best - (problem.optimum or 0.0))
        hit = next((spent for spent, v in run["trace"] if v <= problem.target), None)
        if hit is not None and hit <= budget:
            to_target.append(hit)
    finite = sorted(r for r in regrets if r != float("inf"))
    median = statistics.median(regrets) if regrets else float("inf")
    quartiles = statistics.quantiles(finite, n=4) if len(finite) >= 2 else [None, None, None]
    return {
        "budget_evals": budget_evals,
        "seeds": len(runs),
        # None: most seeds had no trial trained to full fidelity within the budget.
        "regret_median": None if median == float("inf") else median,
        "no_incumbent": len(regrets) - len(finite),
        "regret_q1": quartiles[0],
        "regret_q3": quartiles[2],
        "reached_target": len(to_target) / len(runs) if runs else 0.0,
        "epochs_to_target_median": statistics.median(to_target) if to_target else None,
    }


def run(*, quick: bool, rung_only: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for problem in PROBLEMS.values():
        seed_count = 2 if quick else 10
        budgets = problem.budgets if not quick else (problem.budgets[0] // 5 or 1,)
        budget = max(budgets) * problem.z_max
        seeds = list(range(1, seed_count + 1))
        systems: list[tuple[str, list[dict[str, Any]] | str]] = [
            (f"rung {method}", _rung_runs(method, problem, seeds, budget))
            for method in ("random", "asha", "adaptive_asha")
        ]
        if not rung_only:
            for peer, mode in PEERS:
                try:
                    result = run_peer(
                        peer,
                        "quality.py",
                        peer,
                        mode,
                        problem.name,
                        str(budget),
                        *map(str, seeds),
                        timeout=3600,
                    )
                    systems.append((f"{peer} {mode}", result["runs"]))
                except PeerError as exc:
                    systems.append((f"{peer} {mode}", str(exc)[-500:]))
        for system, runs in systems:
            if isinstance(runs, str):
                rows.append({"benchmark": problem.name, "system": system, "error": runs})
                continue
            for budget_evals in budgets:
                row = {"benchmark": problem.name, "system": system, "target": problem.target}
                rows.append(row | _score(problem, runs, budget_evals))
            # The regret curve for the plot: the median incumbent at each tenth of the budget.
            rows.append(
                {
                    "benchmark": problem.name,
                    "system": system,
                    "curve": _curve(problem, runs, max(budgets)),
                }
            )
        print(f"bench: quality {problem.name} done", file=sys.stderr, flush=True)
    return rows


def _curve(problem: Problem, runs: list[dict[str, Any]], budget_evals: int) -> list[list[float]]:
    points = []
    for step in range(1, 21):
        evals = budget_evals * step / 20
        regrets = []
        for run in runs:
            values = [v for spent, v in run["trace"] if spent <= evals * problem.z_max]
            if values:
                regrets.append(min(values) - (problem.optimum or 0.0))
        if len(regrets) * 2 > len(runs):  # a median over most seeds, or no point
            points.append([evals, statistics.median(regrets)])
    return points
