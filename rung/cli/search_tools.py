"""``rung preview-search`` and ``rung simulate``: the search core, without a cluster."""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from rung.searcher.config import ExperimentConfig, load_config_file
from rung.searcher.errors import SimulationError
from rung.searcher.methods import build_method
from rung.searcher.plan import SearchPlan, plan_search
from rung.searcher.simulate import (
    BENCHMARKS,
    Benchmark,
    Curves,
    SimulationResult,
    benchmark_named,
    load_objective,
)
from rung.searcher.simulate import simulate as run_simulation

__all__ = ["register"]

log = structlog.get_logger("rung.cli")


def register(commands: Any) -> None:
    preview = commands.add_parser(
        "preview-search",
        help="show what a searcher config will do",
        description="Show brackets, rung lengths, trial counts and the length budget.",
    )
    preview.add_argument("config", type=Path, help="experiment config (YAML)")
    preview.add_argument("--json", action="store_true", help="print one JSON object")
    preview.set_defaults(handler=preview_search)

    sim = commands.add_parser(
        "simulate",
        help="run a search against simulated workers in virtual time",
        description="Run the real search method against simulated workers. An operation "
        "costs the length it trains; ties break first-in, first-out.",
    )
    sim.add_argument("config", type=Path, help="experiment config (YAML)")
    source = sim.add_mutually_exclusive_group(required=True)
    source.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="objective to optimise")
    source.add_argument(
        "--curves",
        type=Path,
        metavar="FILE",
        help='learning curves, JSON lines of {"hparams": ..., "curve": ...}',
    )
    source.add_argument(
        "--objective",
        metavar="FILE.py:FUNCTION",
        help="your own deterministic function (hparams: dict, length: int) -> float; the "
        "file may set MAX_LENGTH and OPTIMUM",
    )
    sim.add_argument("--workers", type=int, default=4, help="simulated workers (default 4)")
    sim.add_argument(
        "--seed", type=int, help="experiment seed (default: the config's, else drawn and printed)"
    )
    sim.add_argument(
        "--budget",
        type=int,
        metavar="UNITS",
        help="stop once this much length has been trained in all (operations under way "
        "finish); the state is then BUDGET_SPENT. For comparing methods at equal cost",
    )
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(handler=simulate)


def _load(path: Path) -> ExperimentConfig:
    loaded = load_config_file(path)
    for warning in loaded.warnings:
        log.warning(warning, config=str(path))
    return loaded.config


# ---------------------------------------------------------------- preview-search
def preview_search(args: argparse.Namespace) -> int:
    config = _load(args.config)
    plan = plan_search(config)
    if args.json:
        print(json.dumps(plan.model_dump(mode="json")))
        return 0
    _print_plan(plan)
    return 0


def _print_plan(plan: SearchPlan) -> None:
    console = Console()
    unit = f" ({plan.unit})" if plan.unit else ""
    mode = " stop_once" if plan.stop_once else ""
    console.print(f"searcher: [bold]{plan.searcher}[/bold]{mode}")
    if plan.grid_points is not None:
        console.print(f"grid points: {plan.grid_points}")
    if not plan.brackets:
        console.print("a custom searcher decides its trials as it runs: no plan to preview")
        return
    table = Table(title=f"brackets, lengths{unit}")
    for column in (
        "bracket",
        "trials",
        "concurrency",
        "rungs",
        "trials reaching each rung",
        "length trained",
        "at most",
    ):
        table.add_column(column, justify="right")
    for index, bracket in enumerate(plan.brackets):
        table.add_row(
            str(index),
            str(bracket.trials),
            str(bracket.max_concurrent_trials or "unlimited"),
            ", ".join(map(str, bracket.rungs)),
            ", ".join(map(str, bracket.trials_per_rung)),
            str(bracket.nominal_length),
            str(bracket.max_length),
        )
    console.print(table)
    schedule = "the rounds" if plan.searcher == "pbt" else "the halving schedule"
    console.print(
        f"total trials: {plan.total_trials}; length trained: "
        f"{plan.nominal_total_length} by {schedule}, "
        f"{plan.max_total_length} at most{unit}"
    )


# ---------------------------------------------------------------- simulate
def _benchmark(args: argparse.Namespace) -> Benchmark:
    if args.benchmark:
        return benchmark_named(args.benchmark)
    if args.objective is not None:
        return load_objective(args.objective)
    path: Path = args.curves
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SimulationError(f"--curves: cannot read {path}: {exc.strerror or exc}") from exc
    return Curves.from_lines(lines, source=str(path))


def simulate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    seed = args.seed if args.seed is not None else config.experiment_seed
    if seed is None:
        seed = secrets.randbelow(2**32)
    config = config.with_seed(seed)
    benchmark = _benchmark(args)
    method = build_method(config, context_dir=args.config.parent)
    result = run_simulation(
        config, benchmark, workers=args.workers, method=method, budget=args.budget
    )
    if args.json:
        payload = result.model_dump(mode="json", exclude={"trial_details", "history"})
        payload |= {"seed": seed, "benchmark": benchmark.name}
        print(json.dumps(payload))
        return 0
    _print_result(result, seed, benchmark.name)
    return 0


def _print_result(result: SimulationResult, seed: int, benchmark: str) -> None:
    console = Console()
    table = Table(title=f"simulation of {benchmark}, seed {seed}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("state", result.state),
        (
            "best final metric",
            f"{result.best_metric:.6g}" if result.best_metric is not None else "none",
        ),
        ("best trial", str(result.best_trial_id)),
        ("best hyperparameters", json.dumps(result.best_hparams)),
        ("trials", str(result.trials)),
        ("total length trained", str(result.total_length)),
        ("simulated wall time", f"{result.sim_time:.6g}"),
        ("worker utilization", f"{result.utilization:.1%} of {result.workers} workers"),
    ]
    if result.regret is not None:
        rows.append(("regret", f"{result.regret:.6g}"))
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
