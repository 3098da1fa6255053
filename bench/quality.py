"""Workload 5: search quality at equal budget (shared/reference/benchmarks.md §2, issue 17).

Rung's schedulers (random search, ASHA, adaptive ASHA), each with each sampler (random,
TPE, GP: ``searcher.sampler``), run in Rung's simulator, which drives the real search
methods with 1 or 8 simulated workers (``max_concurrent_trials`` set to the same). The
peers run ``peer_scripts/quality.py`` in their environments: Optuna's TPE with the
Hyperband pruner, TPE without pruning, random sampling with its SuccessiveHalving and
Hyperband pruners (8 workers: 8 threads of one study), and Ray Tune's ASHAScheduler
(8 workers: 8 concurrent trials). Every system is scored on the same objective function.

The budget is epochs actually executed, stopped and paused trials included, resumed
training counted once. The incumbent at a budget is the best trial trained to full
fidelity within it. For each benchmark, worker count, system and budget the row gives
the median and interquartile range over seeds of the regret (the incumbent's value less
the optimum; for digits, whose optimum is unknown, the validation error itself), the
share of seeds that reached the target, and the median epochs to reach it.

``Options`` chooses a subset (``python -m bench --only quality --quality-benchmarks
mfh6 --quality-workers 8 ...``), so that a long run can be split; ``bench.report``
merges the files.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.objectives import (
    DIGITS_MAX,
    DIGITS_SPACE,
    MIXED_MAX,
    MIXED_OPTIMUM,
    MIXED_SPACE,
    Digits,
    Mixed,
)
from bench.peers import PeerError, run_peer
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.simulate import BENCHMARKS, Benchmark, simulate
from rung.searcher.simulate.hartmann import OPTIMUM, Z_MAX

__all__ = ["PEERS", "PROBLEMS", "SAMPLERS", "SCHEDULERS", "Options", "run"]


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
    "digits": Problem("digits", DIGITS_MAX, 4 / 359, (25, 100), None),
    # Target: 0.10 % of random configurations reach it (bench/objectives.py).
    "mixed": Problem("mixed", MIXED_MAX, 0.10, (25, 100), MIXED_OPTIMUM),
}
HARTMANN_SPACE = {f"x{i}": {"type": "double", "minval": 0, "maxval": 1} for i in range(6)}
SPACES: dict[str, dict[str, Any]] = {
    "mfh6": HARTMANN_SPACE,
    "mfh6_bad": HARTMANN_SPACE,
    "digits": DIGITS_SPACE,
    "mixed": MIXED_SPACE,
}
SCHEDULERS = ("random", "asha", "adaptive_asha")
SAMPLERS = ("random", "tpe", "gp")
WORKERS = (1, 8)
PEERS = (
    ("optuna", "tpe_hyperband"),
    ("optuna", "tpe_nopruning"),
    ("optuna", "random_sh"),
    ("optuna", "random_hyperband"),
    ("ray", "asha"),
)


@dataclass(frozen=True)
class Options:
    """Which part of the workload to run; None: all of it (or the quick subset)."""

    benchmarks: tuple[str, ...] | None = None
    workers: tuple[int, ...] | None = None
    seeds: int | None = None
    samplers: tuple[str, ...] | None = None
    # Systems whose name contains one of these (``rung``, ``+tpe``, ``optuna``, ...), or
    # is one of them written ``=NAME`` (``=rung asha+gp``).
    systems: tuple[str, ...] | None = None


def _bench(name: str) -> Benchmark:
    if name == "digits":
        return Digits()
    if name == "mixed":
        return Mixed()
    return BENCHMARKS[name]


def _rung_searcher(
    scheduler: str, sampler: str, problem: Problem, budget: int, workers: int
) -> dict[str, Any]:
    searcher: dict[str, Any] = {
        "metric": "value",
        "smaller_is_better": True,
        "max_length": problem.z_max,
        "max_concurrent_trials": workers,
    }
    if sampler != "random":  # the default; left out, so that the config reads anywhere
        searcher["sampler"] = sampler
    if scheduler == "random":
        return {**searcher, "name": "random", "max_trials": budget // problem.z_max + workers}
    # Enough trials that the budget, not the trial count, ends the run.
    searcher |= {"name": scheduler, "max_trials": budget, "divisor": 3}
    if scheduler == "asha":  # rungs at 1, 3, 9, 27 (and 81), as the peers'
        searcher["num_rungs"] = 1 + int(math.log(problem.z_max) / math.log(3) + 1e-9)
    return searcher


def sampler_available(sampler: str) -> str | None:
    """None if Rung's config parser takes ``searcher.sampler: sampler``, else why not."""
    if sampler == "random":
        return None
    raw = {
        "hyperparameters": HARTMANN_SPACE,
        "searcher": _rung_searcher("asha", sampler, PROBLEMS["mfh6"], 100, 1),
    }
    try:
        parse_config(raw)
    except Exception as exc:  # noqa: BLE001 (any refusal means: not in this commit)
        return f"searcher.sampler: {sampler} is not accepted here: {str(exc)[:200]}"
    return None


def _simulate(
    config: ExperimentConfig, bench: Benchmark, workers: int, budget: int
) -> tuple[list[list[float]], int]:
    """``simulate(config, bench, workers, budget)``'s full-fidelity results as ``[epochs
    trained, value]``, and the epochs started in all.

    The simulator counts an operation's epochs when it starts; the peers count epochs as
    they are trained. So Rung's results are placed the same way: at the epochs trained
    when they came (``SimulatedResult.trained``)."""
    result = simulate(config, bench, workers, budget=budget)
    trace = [
        [point.trained, point.metric]
        for point in result.history
        if point.length == bench.max_length
    ]
    return sorted(trace), result.total_length


def _rung_runs(
    scheduler: str,
    sampler: str,
    problem: Problem,
    *,
    seeds: Iterable[int],
    budget: int,
    workers: int,
) -> list[dict[str, Any]]:
    bench = _bench(problem.name)
    runs = []
    for seed in seeds:
        raw = {
            "hyperparameters": SPACES[problem.name],
            "searcher": _rung_searcher(scheduler, sampler, problem, budget, workers),
        }
        config = parse_config(raw).config.with_seed(seed)
        trace, epochs = _simulate(config, bench, workers, budget)
        runs.append({"seed": seed, "epochs": epochs, "trace": trace})
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


def _wanted(system: str, options: Options) -> bool:
    """Whether a name of ``options.systems`` is part of ``system`` (``=NAME``: is it)."""
    if options.systems is None:
        return True
    return any(
        system == part[1:] if part.startswith("=") else part in system for part in options.systems
    )


def run(
    *, quick: bool, rung_only: bool, options: Options | None = None, **_: Any
) -> list[dict[str, Any]]:
    options = options or Options()
    rows: list[dict[str, Any]] = []
    # --quick (CI's smoke test): one seed, 8 workers, a fifth of the small budget, on
    # mfh6 and the mixed space; every scheduler with every sampler this commit has.
    names = options.benchmarks or (("mfh6", "mixed") if quick else tuple(PROBLEMS))
    worker_counts = options.workers or ((8,) if quick else WORKERS)
    seed_count = options.seeds or (1 if quick else 10)
    samplers = options.samplers or SAMPLERS
    seeds = list(range(1, seed_count + 1))
    refused = {s: why for s in samplers if (why := sampler_available(s)) is not None}
    for name in names:
        problem = PROBLEMS[name]
        budgets = problem.budgets if not quick else (problem.budgets[0] // 5,)
        budget = max(budgets) * problem.z_max
        for workers in worker_counts:
            systems: list[tuple[str, list[dict[str, Any]] | str]] = []
            for sampler in samplers:
                for scheduler in SCHEDULERS:
                    system = f"rung {scheduler}+{sampler}"
                    if not _wanted(system, options):
                        continue
                    if sampler in refused:
                        systems.append((system, refused[sampler]))
                        continue
                    runs = _rung_runs(
                        scheduler, sampler, problem, seeds=seeds, budget=budget, workers=workers
                    )
                    systems.append((system, runs))
            for peer, mode in () if rung_only else PEERS:
                system = f"{peer} {mode}"
                if not _wanted(system, options):
                    continue
                try:
                    args = (peer, mode, name, str(budget), str(workers), *map(str, seeds))
                    result = run_peer(peer, "quality.py", *args, timeout=7200)
                    systems.append((system, result["runs"]))
                except PeerError as exc:
                    systems.append((system, str(exc)[-500:]))
            rows += _rows(problem, workers, budgets, systems)
            print(f"bench: quality {name}, {workers} workers done", file=sys.stderr, flush=True)
    return rows


def _rows(
    problem: Problem,
    workers: int,
    budgets: tuple[int, ...],
    systems: list[tuple[str, list[dict[str, Any]] | str]],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for system, runs in systems:
        key = {"benchmark": problem.name, "workers": workers, "system": system}
        if isinstance(runs, str):
            rows.append(key | {"error": runs})
            continue
        rows.extend(
            key | {"target": problem.target} | _score(problem, runs, budget_evals)
            for budget_evals in budgets
        )
        # The regret curve for the plot: the median incumbent at each 20th of the budget.
        rows.append(key | {"curve": _curve(problem, runs, max(budgets))})
    return rows


def _curve(problem: Problem, runs: list[dict[str, Any]], budget_evals: int) -> list[list[float]]:
    points = []
    for step in range(1, 21):
        evals = budget_evals * step / 20
        regrets = []
        for run in runs:
            values = [v for spent, v in run["trace"] if spent <= evals * problem.z_max]
            regrets.append(min(values) - (problem.optimum or 0.0) if values else math.inf)
        median = statistics.median(regrets) if regrets else math.inf
        if median != math.inf:  # no point while most seeds have no incumbent
            points.append([evals, median])
    return points
