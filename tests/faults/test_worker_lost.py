"""A worker that vanishes mid-trial: frozen with SIGSTOP, so the broker still sees its
connection and only the missing heartbeats tell. The trial must resume from its latest
checkpoint on another worker, in bounded time, without using a restart."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import EXAMPLES, Cluster, read_log, running_cluster
from tests.faults.checker import check_invariants
from tests.support import wait_sync

pytestmark = pytest.mark.rabbitmq

# One trial of 100 batches at 50 ms: about 5 s, with a checkpoint every 10 batches.
CONFIG = (
    "name: lost\nentrypoint: python3 3_hpsearch.py\n"
    "hyperparameters: {increment_by: 1, batch_sleep: 0.05}\n"
    "searcher: {name: single, metric: x, max_length: 100}\nmax_restarts: 0\n"
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, "--worker-timeout", "3") as instance:
        yield instance


def _log(cluster: Cluster, experiment_id: str) -> list[dict[str, Any]]:
    path = cluster.state_dir / "experiments" / experiment_id / "events.jsonl"
    return read_log(path) if path.exists() else []


def _inputs(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r["input"] for r in log if r.get("input") and r["input"]["type"] == kind]


def _trial_pid(cluster: Cluster, worker: str) -> int:
    for line in cluster.log_text(worker).splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "trial started":
            return int(entry["pid"])
    raise AssertionError(f"no 'trial started' in {worker}'s log")


def test_a_frozen_worker_s_trial_resumes_on_another_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "lost.yaml"
    config.write_text(CONFIG)
    w1 = cluster.start_worker("w1", 1, "--heartbeat", "0.5")
    created = cluster.create(config, EXAMPLES, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    checkpointed = lambda: bool(_inputs(_log(cluster, experiment_id), "checkpoint_saved"))  # noqa: E731
    wait_sync(checkpointed, 60, "a checkpoint")
    cluster.start_worker("w2", 1, "--heartbeat", "0.5")
    trial_pid = _trial_pid(cluster, "w1")
    # The machine vanishes: the worker and its training process stop dead.
    os.kill(w1.pid, signal.SIGSTOP)
    os.killpg(trial_pid, signal.SIGSTOP)
    try:
        done = cluster.rung("experiment", "wait", experiment_id, "--json")
    finally:
        os.killpg(trial_pid, signal.SIGKILL)
        w1.kill()
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    (trial,) = summary["trials"]
    assert trial["state"] == "COMPLETED"
    assert trial["metric"] == 100  # x counts batches: no batch lost or counted twice
    assert trial["restarts"] == 0  # a lost worker does not use a restart

    log = _log(cluster, experiment_id)
    (lost,) = _inputs(log, "worker_lost")
    assert lost["worker_id"] == "w1"
    assert lost["silent_s"] >= 3
    starts = [(e["attempt"], e["worker_id"]) for e in _inputs(log, "trial_started")]
    assert starts == [(1, "w1"), (2, "w2")]
    runs = [
        c["body"] for r in log for c in r.get("commands", []) if c["body"]["type"] == "run_trial"
    ]
    assert runs[1]["latest_checkpoint"] is not None  # it resumed, not restarted from zero
    assert "worker lost" in cluster.log_text("searcher")
    check_invariants(cluster, experiment_id, bound_s=120, planned_trials=1)
