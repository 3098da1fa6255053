"""Ray Tune's PopulationBasedTraining on ``lrsched``, in Ray's environment (issue 21).

    python pbt_ray.py MODE POPULATION ROUNDS PER_ROUND WORKERS SEED

MODE is ``async`` (``synch=False``, Ray's default) or ``synch`` (``synch=True``).

Real Ray Tune, not the scheduler driven by hand: ``tune.Tuner`` runs POPULATION trials of a
function trainable (``num_samples``), each in an actor with ``{"cpu": 2 / WORKERS}`` on a
Ray of 2 CPUs, so that WORKERS of them (8: a quarter of a CPU each) train at once, with
``max_concurrent_trials`` WORKERS. An iteration is one epoch of ``lrsched``; the trainable
reports its loss and a checkpoint (the model's state: its unscaled loss and epoch) at
every iteration, as PBT needs, and restores from ``tune.get_checkpoint()`` after an
exploit. Each trial stops at ``training_iteration`` ROUNDS * PER_ROUND
(``RunConfig.stop``; after a restore ``training_iteration`` is the checkpoint's, which the
run checks against the trainable's own epoch).

The scheduler, as Rung's ``pbt`` is set up (bench/pbt.py):
``PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=PER_ROUND,
quantile_fraction=0.25, resample_probability=0.2, perturbation_factors=(1.2, 0.8),
hyperparam_mutations={"lr": tune.loguniform(1e-3, 1), "x": tune.uniform(0, 1)},
synch=...)``, the same space in ``param_space``, ``metric="loss", mode="min"``. Ray's
explore multiplies a value by 1.2 or 0.8 without looking at its range; Rung's clamps it
to the range. The objective is defined for ``lr`` in (0, 1] only, so a
``custom_explore_fn`` (Ray's hook for constraining explored values, applied after its
perturbation) clamps ``lr`` to [1e-3, 1] and ``x`` to [0, 1], as Rung does: both search
the same box. Ray's PBT draws from Python's ``random`` and its initial configurations
from numpy's global generator: both are seeded with SEED (the order of results between
actors still varies from run to run, so Ray's runs are not exactly repeatable).

The objective is ``lrsched`` (searcher/simulate/schedule.py): each epoch with rate ``lr``
takes the loss ``L`` to ``floor + (L - floor) * (1 - A * lr)`` with ``floor = B * lr /
A``, from ``L = 1``, and the reported loss is ``L * (1 + (x - X_BEST) ** 2)``. Rung's
module imports Rung, so it cannot be loaded here; its constants ``_A``, ``_B`` and
``_X_BEST`` are read from its source (``ast``) and the epoch's update re-implemented
(tests/unit/bench/test_pbt.py checks it against Rung's ``evaluate_path``).

Epochs executed are counted as the results arrive (a tune ``Callback``): one reported
result is one epoch trained, retraining after an exploit from an older checkpoint
included. Prints one JSON object: the best loss among results at the full length, the
epochs executed, the full-length results as ``[epochs executed by then, loss]``, the
exploits (Ray's own count) and the wall time.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = ROOT / "searcher" / "simulate" / "schedule.py"
LR_RANGE = (1e-3, 1.0)
X_RANGE = (0.0, 1.0)
RAY_CPUS = 2


def _constants(path: Path = SCHEDULE) -> dict[str, float]:
    """``_A``, ``_B`` and ``_X_BEST`` as Rung's lrsched module assigns them."""
    wanted = {"_A", "_B", "_X_BEST"}
    found: dict[str, float] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in wanted:
                found[target.id] = float(ast.literal_eval(node.value))
    if set(found) != wanted:
        raise RuntimeError(f"{path}: expected {sorted(wanted)}, found {sorted(found)}")
    return found


CONSTANTS = _constants()


def epoch(loss: float, lr: float) -> float:
    """The unscaled loss after one epoch at rate ``lr`` (lrsched's update)."""
    if not 0 < lr <= 1:
        raise ValueError(f"lrsched needs lr in (0, 1], got {lr!r}")
    a, b = CONSTANTS["_A"], CONSTANTS["_B"]
    floor = b * lr / a
    return floor + (loss - floor) * (1 - a * lr)


def scaled(loss: float, x: float) -> float:
    """The reported loss: the unscaled one times lrsched's ``x`` factor."""
    if not math.isfinite(x):
        raise ValueError(f"lrsched needs a finite x, got {x!r}")
    return loss * (1 + (x - CONSTANTS["_X_BEST"]) ** 2)


def clamp(config: dict[str, Any]) -> dict[str, Any]:
    """The ``custom_explore_fn``: explored values back into the space's box (as Rung)."""
    config["lr"] = min(max(float(config["lr"]), LR_RANGE[0]), LR_RANGE[1])
    config["x"] = min(max(float(config["x"]), X_RANGE[0]), X_RANGE[1])
    return config


def run(*, mode: str, population: int, rounds: int, per_round: int, workers: int, seed: int):
    import random

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import numpy as np
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    length = rounds * per_round

    def trainable(config: dict[str, Any]) -> None:
        loss, done = 1.0, 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                state = json.loads((Path(directory) / "state.json").read_text())
            loss, done = float(state["loss"]), int(state["epoch"])
        while done < length:
            loss = epoch(loss, float(config["lr"]))
            done += 1
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / "state.json").write_text(
                    json.dumps({"loss": loss, "epoch": done})
                )
                tune.report(
                    {"loss": scaled(loss, float(config["x"])), "epoch": done},
                    checkpoint=tune.Checkpoint.from_directory(directory),
                )

    class Count(tune.Callback):
        """Every result in the order the driver gets them: the epochs executed."""

        def __init__(self) -> None:
            self.results = 0
            self.trace: list[list[float]] = []
            self.mismatched = 0

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.results += 1
            if int(result["training_iteration"]) != int(result["epoch"]):
                self.mismatched += 1
            if int(result["epoch"]) == length:
                self.trace.append([self.results, float(result["loss"])])

    random.seed(seed)
    np.random.seed(seed)
    space = {"lr": tune.loguniform(*LR_RANGE), "x": tune.uniform(*X_RANGE)}
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=per_round,
        quantile_fraction=0.25,
        resample_probability=0.2,
        perturbation_factors=(1.2, 0.8),
        hyperparam_mutations=dict(space),
        custom_explore_fn=clamp,
        synch=mode == "synch",
    )
    count = Count()
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="ray-pbt-")
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": RAY_CPUS / workers}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="loss",
                mode="min",
                num_samples=population,
                max_concurrent_trials=workers,
                scheduler=scheduler,
            ),
            run_config=tune.RunConfig(
                storage_path=storage,
                verbose=0,
                callbacks=[count],
                stop={"training_iteration": length},
            ),
        )
        start = time.perf_counter()
        results = tuner.fit()
        seconds = time.perf_counter() - start
        errors = len(results.errors)
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    finals = [loss for _, loss in count.trace]
    return {
        "ray": ray.__version__,
        "seed": seed,
        "best": min(finals) if finals else None,
        "epochs": count.results,
        "full_length_results": len(finals),
        "trace": count.trace,
        "exploits": scheduler._num_perturbations,  # noqa: SLF001 (no public count)
        "iteration_mismatches": count.mismatched,
        "errors": errors,
        "seconds": seconds,
    }


def main(argv: list[str]) -> None:
    mode, population, rounds, per_round, workers, seed = argv
    if mode not in ("async", "synch"):
        raise SystemExit(f"MODE must be async or synch, got {mode!r}")
    result = run(
        mode=mode,
        population=int(population),
        rounds=int(rounds),
        per_round=int(per_round),
        workers=int(workers),
        seed=int(seed),
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
