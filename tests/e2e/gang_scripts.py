"""Scripts and helpers for the tests of trials on several workers (gang scheduling)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cluster, read_log

__all__ = ["GANG", "SMALL", "gang_config", "records_of", "small_config"]

# Ranks through rung.launch.torch_distributed: every step sums one from every rank
# (allgather across the workers), the chief saves every ten steps and reports.
GANG = """
import time
import rung as det

info = det.get_cluster_info()
dist = det.core.DistributedContext.from_torch_distributed()
with det.core.init(distributed=dist) as core:
    x, step = 0, 0
    if info.latest_checkpoint is not None:
        with core.checkpoint.restore_path(info.latest_checkpoint) as path:
            x, step = (int(v) for v in (path / "state").read_text().split(","))
        if dist.get_rank() == 0:
            print(f"resumed at step {step} with x {x}", flush=True)
    print(
        f"part {info.container_rank} of {len(info.container_addrs)}:",
        f"rank {dist.get_rank()} of {dist.get_size()}",
        flush=True,
    )
    for op in core.searcher.operations():
        while step < op.length:
            x += sum(core.distributed.allgather(1))
            step += 1
            time.sleep(info.trial.hparams["sleep"])
            if step % 10 == 0 and dist.get_rank() == 0:
                with core.checkpoint.store_path({"steps_completed": step}) as (path, _):
                    (path / "state").write_text(f"{x},{step}")
                op.report_progress(step)
        if dist.get_rank() == 0:
            core.train.report_validation_metrics(step, {"x": x})
            op.report_completed(x)
"""

# One slot, one operation: sleep, report.
SMALL = """
import time
import rung as det

with det.core.init() as core:
    for op in core.searcher.operations():
        time.sleep(det.get_cluster_info().trial.hparams["sleep"])
        op.report_completed(1.0)
"""


def _experiment(tmp_path: Path, name: str, script: str, config: dict[str, Any]) -> Path:
    """``<name>/<name>.py`` as the context, and ``<name>.yaml``: the config's path."""
    context = tmp_path / name
    context.mkdir(exist_ok=True)
    (context / f"{name}.py").write_text(script)
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "max_restarts": 0, **config}))
    return path


def gang_config(tmp_path: Path, *, slots: int, length: int, sleep: float) -> Path:
    return _experiment(
        tmp_path,
        "gang",
        GANG,
        {
            "entrypoint": "python3 -m rung.launch.torch_distributed -- python3 gang.py",
            "hyperparameters": {"sleep": sleep},
            "searcher": {"name": "single", "metric": "x", "max_length": length},
            "resources": {"slots_per_trial": slots},
        },
    )


def small_config(tmp_path: Path, *, trials: int, sleep: float) -> Path:
    searcher = {"name": "random", "metric": "x", "max_length": 1, "max_trials": trials}
    return _experiment(
        tmp_path,
        "small",
        SMALL,
        {
            "entrypoint": "python3 small.py",
            "hyperparameters": {"sleep": sleep, "x": {"type": "double", "minval": 0, "maxval": 1}},
            "searcher": {**searcher, "max_concurrent_trials": trials},
        },
    )


def records_of(cluster: Cluster, experiment_id: str) -> list[dict[str, Any]]:
    """The experiment's log records, as JSON."""
    return read_log(cluster.describe(experiment_id)["event_log"])
