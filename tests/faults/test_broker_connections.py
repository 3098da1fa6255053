"""The broker drops every connection mid-experiment (`rabbitmqctl close_all_connections`),
or stops and starts again (`stop_app`, `start_app`): the searcher and the workers
reconnect by themselves, and the experiment finishes with every trial, nothing lost and
nothing applied twice, and the best trial of the fault-free run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.faults.checker import Baseline
from tests.faults.scenario import fault_env, finish, start_experiment, wait_events

pytestmark = pytest.mark.rabbitmq


def _rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _run_through(
    cluster: Cluster, tmp_path: Path, baseline: Baseline, fault: Callable[[], None]
) -> None:
    cluster.start_worker("w1", 2, env=fault_env(tmp_path / "faults"))
    experiment_id = start_experiment(cluster, tmp_path)
    wait_events(cluster, experiment_id, "op_completed", 1)
    fault()
    report = finish(cluster, experiment_id, baseline, bound_s=150)
    assert report.summary["state"] == "COMPLETED"
    assert report.restarts == 0  # no trial errored on the way


def test_every_connection_dropped_mid_run_and_the_experiment_finishes(
    cluster: Cluster, tmp_path: Path, baseline: Baseline
) -> None:
    _run_through(
        cluster,
        tmp_path,
        baseline,
        lambda: _rabbitmqctl("close_all_connections", "fault test"),
    )
    assert "CONNECTION_FORCED - fault test" in cluster.log_text("searcher")


def test_the_broker_restarts_mid_run_and_the_experiment_finishes(
    cluster: Cluster, tmp_path: Path, baseline: Baseline
) -> None:
    def restart() -> None:
        _rabbitmqctl("stop_app")
        try:
            _rabbitmqctl("start_app")
        finally:
            _rabbitmqctl("await_startup")

    _run_through(cluster, tmp_path, baseline, restart)
