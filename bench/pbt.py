"""Population-based training on ``lrsched`` (issue 21): Rung's PBT beside Ray Tune's.

``lrsched`` (searcher/simulate/schedule.py) is an objective where a decaying learning
rate beats every constant one, so a search that changes a trial's hyperparameters while
it trains (PBT) can beat one that only picks constants (ASHA). The systems, each with 8
workers, a population of 8, 10 rounds of 10 epochs (100 epochs a trial, 800 in all), the
space ``lr`` log-uniform in [1e-3, 1] and ``x`` uniform in [0, 1]:

* ``rung pbt sync``: ``searcher.name: pbt`` (Determined's synchronous rounds), truncate
  fraction 0.25, resample probability 0.2, perturb factor 0.2;
* ``rung pbt async``: the same, ``mode: asynchronous`` with ``quantile_fraction: 0.25``;
* ``rung asha``: ``async_halving`` over constants (max length 100, 3 rungs, divisor 3),
  stopped by the simulator's budget of 800 epochs (operations under way then finish);
* ``ray pbt`` and ``ray pbt synch``: Ray Tune's ``PopulationBasedTraining`` with
  ``synch=False`` (its default) and ``synch=True``, configured the same way
  (``peer_scripts/pbt_ray.py``: real ``tune.Tuner`` runs, 8 trials of a quarter CPU).

Rung's systems run in its simulator (the real search methods, 8 simulated workers, an
epoch one unit of virtual time; a clone trains on from its source's checkpoint and
``lrsched`` sees the whole path of hyperparameters). PBT runs to its own end: every
member of the last round at 100 epochs. Asynchronous PBT, Rung's and Ray's, may copy a
checkpoint older than the member it replaces and train those epochs again, so its runs
execute more than 800 epochs: the rows give the epochs executed, and the best result
at full length within 800 executed epochs besides the final one.

The figure per run is the best loss among the trials that reached full length (100):
Rung's ``SimulationResult.best_metric`` (``Experiment.best_trial``: the best metric among
the trials trained furthest), checked against the trials at full length; Ray's, the
least loss reported at ``training_iteration`` 100. The row of a system gives its median,
quartiles (``statistics.quantiles``, as workload 5), min and max over seeds 1 to 10.

Replay: each of Rung's runs is run again in this process and once more in a fresh
process with another ``PYTHONHASHSEED``; the row says whether every result (every
operation's result, every trial, the best) is byte-identical across the three.

``python -m bench.pbt [--quick] [--rung-only] [--seeds N] [--systems a,b]`` prints the
table and writes ``bench/results/DATE-COMMIT-pbt.jsonl``; ``python -m bench --only pbt``
runs it as a workload of the suite.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import PeerError, run_peer
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.simulate import BENCHMARKS, simulate

__all__ = ["RAY_SYSTEMS", "RUNG_SYSTEMS", "Shape", "run", "rung_config", "rung_run"]

RUNG_SYSTEMS = ("rung pbt sync", "rung pbt async", "rung asha")
# Ray's system -> its peer script's MODE.
RAY_SYSTEMS = {"ray pbt": "async", "ray pbt synch": "synch"}
SYSTEMS = (*RUNG_SYSTEMS, *RAY_SYSTEMS)
SPACE: dict[str, Any] = {
    "lr": {"type": "log", "minval": -3, "maxval": 0, "base": 10},
    "x": {"type": "double", "minval": 0, "maxval": 1},
}
RESULTS = Path(__file__).resolve().parent / "results"
# A Ray run took 2 to 3.5 minutes on 2 CPUs; a stuck one is cut here.
RAY_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Shape:
    """The population, its rounds, and the workers that train it."""

    population: int = 8
    rounds: int = 10
    per_round: int = 10
    workers: int = 8

    @property
    def length(self) -> int:
        """A trial's full length."""
        return self.rounds * self.per_round

    @property
    def budget(self) -> int:
        """Epochs of a synchronous population: every member to full length."""
        return self.population * self.length

    def args(self) -> list[str]:
        return [str(n) for n in (self.population, self.rounds, self.per_round, self.workers)]


def _searcher(system: str, shape: Shape) -> dict[str, Any]:
    common: dict[str, Any] = {
        "metric": "loss",
        "smaller_is_better": True,
        "max_concurrent_trials": shape.workers,
    }
    if system == "rung asha":
        # Enough trials that the budget, not the trial count, ends the run.
        return common | {
            "name": "async_halving",
            "max_length": {"epochs": shape.length},
            "max_trials": shape.budget,
            "num_rungs": 3,
            "divisor": 3,
        }
    pbt = common | {
        "name": "pbt",
        "population_size": shape.population,
        "num_rounds": shape.rounds,
        "length_per_round": {"epochs": shape.per_round},
        "replace_function": {"truncate_fraction": 0.25},
        "explore_function": {"resample_probability": 0.2, "perturb_factor": 0.2},
    }
    if system == "rung pbt async":
        return pbt | {"mode": "asynchronous", "quantile_fraction": 0.25}
    if system == "rung pbt sync":
        return pbt
    raise ValueError(f"not one of Rung's systems: {system!r}; choose from {RUNG_SYSTEMS}")


def rung_config(system: str, seed: int, shape: Shape = Shape()) -> ExperimentConfig:
    """The experiment config of one of Rung's systems, with the seed."""
    raw = {"hyperparameters": SPACE, "searcher": _searcher(system, shape)}
    return parse_config(raw).config.with_seed(seed)


def rung_run(system: str, seed: int, shape: Shape = Shape()) -> dict[str, Any]:
    """One simulated run: its figures, and a digest of its whole result."""
    budget = shape.budget if system == "rung asha" else None
    result = simulate(
        rung_config(system, seed, shape), BENCHMARKS["lrsched"], shape.workers, budget=budget
    )
    full = [
        t.metric for t in result.trial_details if t.length == shape.length and t.metric is not None
    ]
    trace = sorted(
        [point.trained, point.metric] for point in result.history if point.length == shape.length
    )
    within = [metric for trained, metric in trace if trained <= shape.budget]
    return {
        "seed": seed,
        "best": result.best_metric,
        # The least loss among the trials at full length: the same, or the best trial
        # was not trained to full length.
        "best_full_length": min(full) if full else None,
        "full_length_trials": len(full),
        "within_budget": min(within) if within else None,
        "epochs": result.total_length,
        "trials": result.trials,
        "state": result.state,
        "best_hparams": result.best_hparams,
        "digest": hashlib.sha256(result.model_dump_json().encode()).hexdigest(),
    }


def _replayed(system: str, seeds: list[int], shape: Shape) -> dict[int, str]:
    """The digests of the same runs in a fresh process with another hash seed."""
    env = os.environ | {"PYTHONHASHSEED": "2111"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.pbt", "--digests", system, *shape.args(), *map(str, seeds)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    digests: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(seed): digest for seed, digest in digests.items()}


def _median(values: list[float | None]) -> float | None:
    """The median, a run without a value counted as the worst; None if that is it."""
    median = statistics.median([math.inf if v is None else v for v in values])
    return None if median == math.inf else median


def _stats(values: list[float | None]) -> dict[str, float | None]:
    """Median (as :func:`_median`), quartiles, min and max of the runs with a value."""
    finite = [v for v in values if v is not None]
    if not finite:
        return {"median": None, "q1": None, "q3": None, "min": None, "max": None}
    quartiles = statistics.quantiles(finite, n=4) if len(finite) >= 2 else [finite[0]] * 3
    return {
        "median": _median(values),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "min": min(finite),
        "max": max(finite),
    }


def _row(system: str, shape: Shape, runs: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    within = [r["within_budget"] for r in runs]
    epochs = [r["epochs"] for r in runs]
    return {
        "system": system,
        "seeds": len(runs),
        "population": shape.population,
        "rounds": shape.rounds,
        "per_round": shape.per_round,
        "workers": shape.workers,
        **_stats([r["best"] for r in runs]),
        "no_full_length": sum(r["best"] is None for r in runs),
        "epochs_median": statistics.median(epochs),
        "epochs_min": min(epochs),
        "epochs_max": max(epochs),
        # The best full-length result within the synchronous budget of epochs executed
        # (None while most seeds have none).
        "within_budget_median": _median(within),
        "within_budget_seeds": sum(w is not None for w in within),
        "seconds": round(seconds, 2),
        "runs": runs,
    }


def rung_rows(
    seeds: list[int], shape: Shape = Shape(), systems: tuple[str, ...] = RUNG_SYSTEMS
) -> list[dict[str, Any]]:
    """A row per Rung system: its figures over the seeds, and whether they replay."""
    rows = []
    for system in systems:
        start = time.perf_counter()
        runs = [rung_run(system, seed, shape) for seed in seeds]
        seconds = time.perf_counter() - start
        again = {seed: rung_run(system, seed, shape)["digest"] for seed in seeds}
        fresh = _replayed(system, seeds, shape)
        differ = [
            r["seed"]
            for r in runs
            if again[r["seed"]] != r["digest"] or fresh.get(r["seed"]) != r["digest"]
        ]
        row = _row(system, shape, runs, seconds)
        row |= {
            "replay_identical": not differ,
            "replay_differs": differ,
            # Every run's best trial was trained to full length.
            "best_is_full_length": all(r["best"] == r["best_full_length"] for r in runs),
        }
        rows.append(row)
    return rows


def ray_rows(
    seeds: list[int], shape: Shape = Shape(), systems: tuple[str, ...] = tuple(RAY_SYSTEMS)
) -> list[dict[str, Any]]:
    """A row per Ray system; a run that fails makes the row an error."""
    rows: list[dict[str, Any]] = []
    for system in systems:
        start = time.perf_counter()
        runs = []
        try:
            for seed in seeds:
                result = run_peer(
                    "ray",
                    "pbt_ray.py",
                    RAY_SYSTEMS[system],
                    *shape.args(),
                    str(seed),
                    timeout=RAY_TIMEOUT_S,
                )
                within = [loss for spent, loss in result["trace"] if spent <= shape.budget]
                runs.append(result | {"within_budget": min(within) if within else None})
                print(f"bench: {system} seed {seed}: {result['best']}", file=sys.stderr, flush=True)
        except (PeerError, subprocess.TimeoutExpired) as exc:
            rows.append({"system": system, "error": str(exc)[-500:]})
            continue
        row = _row(system, shape, runs, time.perf_counter() - start)
        row["ray"] = runs[0]["ray"] if runs else None
        rows.append(row)
    return rows


def run(
    *,
    quick: bool,
    rung_only: bool = False,
    seeds: int | None = None,
    systems: tuple[str, ...] = SYSTEMS,
    **_: Any,
) -> list[dict[str, Any]]:
    """The workload: 10 seeds of every system (``quick``: 2 of Rung's, 1 of Ray's
    asynchronous PBT)."""
    count = seeds or (2 if quick else 10)
    numbers = list(range(1, count + 1))
    rows = rung_rows(numbers, systems=tuple(s for s in RUNG_SYSTEMS if s in systems))
    if not rung_only:
        ray = tuple(s for s in RAY_SYSTEMS if s in systems and not (quick and s != "ray pbt"))
        rows += ray_rows(numbers[:1] if quick else numbers, systems=ray)
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as a plain-text table."""
    head = ["system", "seeds", "median", "q1", "q3", "min", "max", "epochs", "at 800", "replay"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["system"], "failed: " + r["error"][:60]])
            continue
        epochs = f"{r['epochs_median']:g} [{r['epochs_min']}..{r['epochs_max']}]"
        within = f"{_fmt(r['within_budget_median'])} ({r['within_budget_seeds']}/{r['seeds']})"
        replay = "-"
        if "replay_identical" in r:
            replay = "identical" if r["replay_identical"] else f"differs {r['replay_differs']}"
        lines.append(
            [
                r["system"],
                str(r["seeds"]),
                *(_fmt(r[k]) for k in ("median", "q1", "q3", "min", "max")),
                epochs,
                within,
                replay,
            ]
        )
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    )


def _header(args: argparse.Namespace) -> dict[str, Any]:
    """When, on which commit, on what machine (as ``python -m bench``'s first line)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "kind": "run",
        "quick": args.quick,
        "rung_only": args.rung_only,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpus": os.cpu_count(),
        "memory_gib": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pbt", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="2 seeds; Ray: 1, async only")
    parser.add_argument("--rung-only", action="store_true", help="skip Ray Tune")
    parser.add_argument("--seeds", type=int, help="seeds 1..N (default 10)")
    parser.add_argument(
        "--systems",
        type=lambda text: tuple(text.split(",")),
        default=SYSTEMS,
        help=f"a comma-separated subset of {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--out", type=Path, help="results file (default: bench/results/...)")
    parser.add_argument("--digests", nargs="+", help=argparse.SUPPRESS)  # internal: replay
    args = parser.parse_args(argv)
    if args.digests:
        system, population, rounds, per_round, workers, *seeds = args.digests
        shape = Shape(int(population), int(rounds), int(per_round), int(workers))
        print(json.dumps({seed: rung_run(system, int(seed), shape)["digest"] for seed in seeds}))
        return
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    header = _header(args)
    out = args.out or RESULTS / f"{header['date'][:10]}-{header['commit']}-pbt.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = run(quick=args.quick, rung_only=args.rung_only, seeds=args.seeds, systems=args.systems)
    with out.open("w") as results:
        results.write(json.dumps(header) + "\n")
        for row in rows:
            results.write(json.dumps({"workload": "pbt", **row}) + "\n")
    print(table(rows))
    print(f"written to {out}", flush=True)


if __name__ == "__main__":
    main()
