"""Search quality at equal budget, in a peer's environment (shared/reference/benchmarks.md §2).

    python quality.py SYSTEM MODE BENCHMARK BUDGET_EPOCHS WORKERS SEED [SEED...]

SYSTEM MODE is ``optuna tpe_hyperband``, ``optuna tpe_nopruning``, ``optuna random_sh``,
``optuna random_hyperband`` or ``ray asha``; BENCHMARK ``mfh6``, ``mfh6_bad``, ``digits``
or ``mixed``. Trials run epoch by epoch, each epoch reported, until the method stops the
trial or it reaches full fidelity, and the run ends when BUDGET_EPOCHS epochs have been
executed (counted under a lock, one at a time, so never more).

Optuna: one worker runs trials one after another in this thread; WORKERS > 1 run as
that many threads of one study (ask and tell; the in-memory storage is thread-safe), and
each epoch then also sleeps EPOCH_S, so that the threads train concurrently, epoch by
epoch, as workers would (an MF-Hartmann epoch takes 17 µs; without the sleep a thread
would run whole trials between two switches of the GIL). TPE is
``TPESampler(seed=seed, constant_liar=WORKERS > 1)``: Optuna's defaults (independent,
not multivariate; 10 random startup trials; 24 candidates), with, for parallel trials,
the constant liar that Optuna recommends for them, so that trials under way are not
sampled again. (With one worker the liar is not neutral in Optuna 5.1, though no other
trial is under way at an ask: one worker keeps the default, False.)

Ray Tune: the ASHAScheduler is driven directly, as its trial runner drives it with
``max_concurrent_trials`` WORKERS, without Ray's actors (their overhead is workload 1's
subject, not this one's): WORKERS trials train in step, one epoch each in turn, their
results handed to the scheduler as they come, and a freed slot takes a new trial.

Prints one JSON object: for each seed, the epochs executed and the trace of full-fidelity
results as ``[epochs executed by then, value]``, in that order.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
EPOCH_S = 0.001  # with more than one Optuna thread: what an epoch takes, at least


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def objective(name: str) -> tuple[Any, int, Any]:
    """(evaluate(config, z), z_max, sample(rng)) for a benchmark."""
    if name in ("digits", "mixed"):
        objectives = _load("objectives", BENCH / "objectives.py")
        if name == "mixed":
            return objectives.mixed_value, objectives.MIXED_MAX, objectives.sample_mixed
        bench = objectives.Digits()
        return bench.evaluate, objectives.DIGITS_MAX, objectives.sample_digits
    hartmann = _load("hartmann", ROOT / "searcher" / "simulate" / "hartmann.py")
    preset = hartmann.PRESETS[name]

    def evaluate(config: dict[str, Any], z: int) -> float:
        x = tuple(float(config[f"x{i}"]) for i in range(6))
        return float(hartmann.mf_hartmann6(x, z, **preset))

    def sample(rng: np.random.Generator) -> dict[str, Any]:
        return {f"x{i}": float(rng.uniform(0, 1)) for i in range(6)}

    return evaluate, hartmann.Z_MAX, sample


def _suggest(trial: Any, bench: str) -> dict[str, Any]:
    """The benchmark's space, as Optuna's trial suggests it (the ranges of Rung's)."""
    if bench == "digits":
        return {
            "lr": trial.suggest_float("lr", 1e-4, 1, log=True),
            "width": trial.suggest_float("width", 8, 512, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128, 256]),
        }
    if bench == "mixed":
        return {
            "optimizer": trial.suggest_categorical("optimizer", ["sgd", "momentum", "adam"]),
            "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128, 256]),
            "layers": trial.suggest_int("layers", 1, 8),
            "lr": trial.suggest_float("lr", 1e-5, 1, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
            "dropout": trial.suggest_float("dropout", 0, 0.8),
        }
    return {f"x{i}": trial.suggest_float(f"x{i}", 0, 1) for i in range(6)}


class _Budget:
    """Epochs executed, counted under a lock: ``take()`` is the next epoch's number, or
    None once the budget is spent."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.spent = 0
        self.lock = threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            if self.spent >= self.budget:
                return None
            self.spent += 1
            return self.spent


def optuna_run(mode: str, bench: str, budget: int, workers: int, seed: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    evaluate, z_max, _ = objective(bench)
    if mode in ("tpe_hyperband", "tpe_nopruning"):
        # The constant liar is for parallel trials; one worker keeps Optuna's default.
        sampler: Any = optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    if mode == "tpe_nopruning":
        pruner: Any = optuna.pruners.NopPruner()
    elif mode == "random_sh":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    else:
        pruner = optuna.pruners.HyperbandPruner(1, z_max, 3)
    # HyperbandPruner puts a trial in a bracket by a hash of the study's name and the
    # trial's number: a name of the seed's, not a random one, makes a run repeatable.
    study = optuna.create_study(
        study_name=f"quality-{seed}", direction="minimize", sampler=sampler, pruner=pruner
    )
    spent = _Budget(budget)
    trace: list[list[float]] = []

    def worker() -> None:
        while spent.spent < budget:
            trial = study.ask()
            config = _suggest(trial, bench)
            state, value = optuna.trial.TrialState.FAIL, None  # FAIL: cut by the budget
            for z in range(1, z_max + 1):
                epoch = spent.take()
                if epoch is None:
                    break
                if workers > 1:
                    time.sleep(EPOCH_S)
                result = evaluate(config, z)
                if z == z_max:
                    state, value = optuna.trial.TrialState.COMPLETE, result
                    with spent.lock:
                        trace.append([epoch, result])
                    break
                trial.report(result, z)
                if trial.should_prune():
                    state = optuna.trial.TrialState.PRUNED
                    break
            study.tell(trial, value, state=state)

    if workers == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    trace.sort()
    return {"seed": seed, "epochs": spent.spent, "trace": trace}


class _Trial:
    """What Ray's schedulers read of a trial: its id (and a config, for logging)."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id = trial_id
        self.config = config

    def __hash__(self) -> int:
        return hash(self.trial_id)


def ray_run(bench: str, budget: int, workers: int, seed: int) -> dict[str, Any]:
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
    running: list[tuple[_Trial, list[int]]] = []  # a trial, and [epochs it trained]
    while True:
        while len(running) < workers and spent < budget:
            number += 1
            trial = _Trial(f"t{number}", sample(rng))
            scheduler.on_trial_add(None, trial)
            running.append((trial, [0]))
        if not running:
            break
        for trial, trained in list(running):  # one epoch each, in turn
            if spent >= budget:
                running.clear()
                break
            spent += 1
            trained[0] += 1
            z = trained[0]
            value = evaluate(trial.config, z)
            result = {"training_iteration": z, "loss": value}
            if z == z_max:
                trace.append([spent, value])
            elif scheduler.on_trial_result(None, trial, result) != TrialScheduler.STOP:
                continue
            scheduler.on_trial_complete(None, trial, result)
            running.remove((trial, trained))
    return {"seed": seed, "epochs": spent, "trace": trace}


def main(argv: list[str]) -> None:
    system, mode, bench, budget, workers, *seeds = argv
    runs = []
    for seed in map(int, seeds):
        if system == "optuna":
            runs.append(optuna_run(mode, bench, int(budget), int(workers), seed))
        else:
            runs.append(ray_run(bench, int(budget), int(workers), seed))
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main(sys.argv[1:])
