"""Search quality at equal budget, in a peer's environment (shared/reference/benchmarks.md §2).

    python quality.py SYSTEM MODE BENCHMARK BUDGET_EPOCHS SEED [SEED...]

SYSTEM MODE is ``optuna tpe_hyperband``, ``optuna random_sh``, ``optuna random_hyperband``
or ``ray asha``. One worker: trials run one after another, each epoch reported, until the
method stops the trial or it reaches full fidelity, and the run ends when BUDGET_EPOCHS
epochs have been executed. Ray Tune's ASHAScheduler is driven directly, as its trial
runner drives it with one trial at a time, without Ray's actors (their overhead is
workload 1's subject, not this one's).

Prints one JSON object: for each seed, the epochs executed and the trace of full-fidelity
results as ``[epochs so far, value]``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def objective(name: str) -> tuple[Any, int, Any]:
    """(evaluate(config, z), z_max, sample(rng)) for a benchmark."""
    if name == "digits":
        digits = _load("objectives", BENCH / "objectives.py")
        bench = digits.Digits()
        return bench.evaluate, digits.DIGITS_MAX, digits.sample_digits
    hartmann = _load("hartmann", ROOT / "searcher" / "simulate" / "hartmann.py")
    preset = hartmann.PRESETS[name]

    def evaluate(config: dict[str, Any], z: int) -> float:
        x = tuple(float(config[f"x{i}"]) for i in range(6))
        return float(hartmann.mf_hartmann6(x, z, **preset))

    def sample(rng: np.random.Generator) -> dict[str, Any]:
        return {f"x{i}": float(rng.uniform(0, 1)) for i in range(6)}

    return evaluate, hartmann.Z_MAX, sample


def optuna_run(mode: str, bench: str, budget: int, seed: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    evaluate, z_max, _ = objective(bench)
    if mode == "tpe_hyperband":
        sampler: Any = optuna.samplers.TPESampler(seed=seed)
        pruner: Any = optuna.pruners.HyperbandPruner(1, z_max, 3)
    elif mode == "random_hyperband":
        sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = optuna.pruners.HyperbandPruner(1, z_max, 3)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    spent, trace = 0, []
    while spent < budget:
        trial = study.ask()
        config = (
            {
                "lr": trial.suggest_float("lr", 1e-4, 1, log=True),
                "width": trial.suggest_float("width", 8, 512, log=True),
                "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
                "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128, 256]),
            }
            if bench == "digits"
            else {f"x{i}": trial.suggest_float(f"x{i}", 0, 1) for i in range(6)}
        )
        value = float("nan")
        pruned = False
        for z in range(1, z_max + 1):
            if spent >= budget:
                break
            spent += 1
            value = evaluate(config, z)
            if z == z_max:
                trace.append([spent, value])
                break
            trial.report(value, z)
            if trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return {"seed": seed, "epochs": spent, "trace": trace}


class _Trial:
    """What Ray's schedulers read of a trial: its id (and a config, for logging)."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id = trial_id
        self.config = config

    def __hash__(self) -> int:
        return hash(self.trial_id)


def ray_run(bench: str, budget: int, seed: int) -> dict[str, Any]:
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    evaluate, z_max, sample = objective(bench)
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        metric="loss",
        mode="min",
        max_t=z_max,
        grace_period=1,
        reduction_factor=3,
    )
    rng = np.random.default_rng(seed)
    spent, trace, number = 0, [], 0
    while spent < budget:
        number += 1
        config = sample(rng)
        trial = _Trial(f"t{number}", config)
        scheduler.on_trial_add(None, trial)
        result: dict[str, Any] = {}
        for z in range(1, z_max + 1):
            if spent >= budget:
                break
            spent += 1
            value = evaluate(config, z)
            result = {"training_iteration": z, "loss": value}
            if z == z_max:
                trace.append([spent, value])
                break
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                break
        scheduler.on_trial_complete(None, trial, result)
    return {"seed": seed, "epochs": spent, "trace": trace}


def main(argv: list[str]) -> None:
    system, mode, bench, budget, *seeds = argv
    runs = []
    for seed in map(int, seeds):
        if system == "optuna":
            runs.append(optuna_run(mode, bench, int(budget), seed))
        else:
            runs.append(ray_run(bench, int(budget), seed))
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main(sys.argv[1:])
