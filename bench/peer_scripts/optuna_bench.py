"""Optuna's side of the benchmarks, run in its own environment.

usage: optuna_bench.py null N CONCURRENCY {memory,journal}
       optuna_bench.py sleep N CONCURRENCY {sh,hyperband}
Prints one JSON object.
"""

import json
import math
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEP_S = 0.02
MAX_T = 10


def null_objective(trial):
    trial.suggest_float("x", -10, 10)
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    trial.suggest_int("width", 16, 512, log=True)
    return 0.0


def _journal_worker(path, study_name, n):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.optimize(null_objective, n_trials=n)


def null(n, concurrency, mode):
    if mode == "memory":
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        start = time.perf_counter()
        study.optimize(null_objective, n_trials=n, n_jobs=concurrency)
        wall = time.perf_counter() - start
    else:
        path = str(Path(tempfile.mkdtemp()) / "journal.log")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        optuna.create_study(
            study_name="null", storage=storage, sampler=optuna.samplers.RandomSampler()
        )
        share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
        procs = [
            multiprocessing.Process(target=_journal_worker, args=(path, "null", k)) for k in share
        ]
        start = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        wall = time.perf_counter() - start
    return {"trials": n, "seconds": wall}


def sleep_objective(trial):
    x = trial.suggest_float("x", 0, 1)
    y = trial.suggest_float("y", 0, 1)
    final = (x - 0.3) ** 2 + (y - 0.6) ** 2
    loss = 1.0
    for t in range(1, MAX_T + 1):
        time.sleep(STEP_S)
        loss = final + (1 - final) * math.exp(-(0.15 + 1.2 * y) * t)
        trial.set_user_attr("steps", t)
        trial.report(loss, t)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


def sleep(n, concurrency, pruner):
    pruners = {
        "sh": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "hyperband": optuna.pruners.HyperbandPruner(1, MAX_T, 3),
    }
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruners[pruner]
    )
    start = time.perf_counter()
    study.optimize(sleep_objective, n_trials=n, n_jobs=concurrency, catch=())
    wall = time.perf_counter() - start
    steps = sum(t.user_attrs.get("steps", 0) for t in study.trials)
    best = min(t.value for t in study.trials if t.value is not None)
    return {"trials": n, "seconds": wall, "steps": steps, "best": best}


if __name__ == "__main__":
    workload, n, concurrency, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    result = (null if workload == "null" else sleep)(n, concurrency, mode)
    print(json.dumps({"optuna": optuna.__version__, **result}))
