"""Ray Tune's side of the benchmarks, run in its own environment.

usage: ray_bench.py null N CONCURRENCY reuse
       ray_bench.py sleep N CONCURRENCY asha
Prints one JSON object.
"""

import json
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

STEP_S = 0.02
MAX_T = 10


def _report(metrics):
    report = getattr(tune, "report", None)
    if report is None:
        from ray import train

        report = train.report
    report(metrics)


def null_trainable(_config):
    _report({"loss": 0.0})


def sleep_trainable(config):
    x, y = config["x"], config["y"]
    final = (x - 0.3) ** 2 + (y - 0.6) ** 2
    for t in range(1, MAX_T + 1):
        time.sleep(STEP_S)
        _report({"loss": final + (1 - final) * math.exp(-(0.15 + 1.2 * y) * t), "step": t})


def run(workload, n, concurrency):
    ray.init(num_cpus=concurrency, include_dashboard=False, log_to_driver=False)
    if workload == "null":
        space = {
            "x": tune.uniform(-10, 10),
            "lr": tune.loguniform(1e-5, 1e-1),
            "width": tune.lograndint(16, 512),
        }
        trainable, scheduler = null_trainable, None
    else:
        space = {"x": tune.uniform(0, 1), "y": tune.uniform(0, 1)}
        trainable = sleep_trainable
        scheduler = ASHAScheduler(max_t=MAX_T, grace_period=1, reduction_factor=3)
    run_config_type = getattr(tune, "RunConfig", None)
    if run_config_type is None:
        from ray.train import RunConfig

        run_config_type = RunConfig
    storage = tempfile.mkdtemp(prefix="ray-bench-")
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        run_config=run_config_type(storage_path=storage, verbose=0),
        tune_config=tune.TuneConfig(
            metric="loss",
            mode="min",
            num_samples=n,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            scheduler=scheduler,
        ),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    steps = sum(int(r.metrics.get("training_iteration", 0)) for r in results if r.metrics)
    ray.shutdown()
    return {"trials": n, "seconds": wall, "steps": steps}


if __name__ == "__main__":
    workload, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps({"ray": ray.__version__, **run(workload, n, concurrency)}))
