"""The broker drops every connection mid-experiment (`rabbitmqctl close_all_connections`),
or stops and starts again (`stop_app`, `start_app`): the searcher and the workers
reconnect by themselves, and the experiment finishes with every trial, nothing lost and
nothing applied twice."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from searcher.eventlog import InputRecord, replay
from searcher.eventlog import read_log as read_records
from tests.e2e.conftest import EXAMPLES, Cluster, read_log
from tests.support import wait_sync

pytestmark = pytest.mark.rabbitmq

CONFIG = (
    "name: drops\nentrypoint: python3 3_hpsearch.py\n"
    "hyperparameters: {increment_by: {type: int, minval: 1, maxval: 9}, batch_sleep: 0.02}\n"
    "searcher: {name: asha, metric: x, max_length: 100, max_trials: 6, num_rungs: 2, "
    "divisor: 2, max_concurrent_trials: 2}\nmax_restarts: 0\n"
)


def _inputs(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r["input"] for r in log if r.get("input") and r["input"]["type"] == kind]


def _rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _run_through(cluster: Cluster, tmp_path: Path, fault: Callable[[], None]) -> None:
    config = tmp_path / "drops.yaml"
    config.write_text(CONFIG)
    cluster.start_worker("w1", 2)
    created = cluster.create(config, EXAMPLES, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    path = cluster.state_dir / "experiments" / experiment_id / "events.jsonl"
    wait_sync(lambda: len(_inputs(read_log(path), "op_completed")) >= 1, 60, "a first result")

    fault()

    done = cluster.rung("experiment", "wait", experiment_id, "--json", timeout=240)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 6
    records = read_records(path)
    ids = [r.message_id for r in records if isinstance(r, InputRecord)]
    assert len(ids) == len(set(ids))  # nothing applied twice
    assert replay(records, verify=True).divergence is None
    for trial in summary["trials"]:
        # No trial errored on the way (max_restarts is 0), and none lost a batch.
        assert trial["metric"] == trial["hparams"]["increment_by"] * trial["length"]


def test_every_connection_dropped_mid_run_and_the_experiment_finishes(
    cluster: Cluster, tmp_path: Path
) -> None:
    _run_through(cluster, tmp_path, lambda: _rabbitmqctl("close_all_connections", "fault test"))
    assert "CONNECTION_FORCED - fault test" in cluster.log_text("searcher")


def test_the_broker_restarts_mid_run_and_the_experiment_finishes(
    cluster: Cluster, tmp_path: Path
) -> None:
    def restart() -> None:
        _rabbitmqctl("stop_app")
        try:
            _rabbitmqctl("start_app")
        finally:
            _rabbitmqctl("await_startup")

    _run_through(cluster, tmp_path, restart)
