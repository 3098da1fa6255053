"""`rung experiment pause|activate|kill` against a real cluster: real training processes
are preempted, resumed from their checkpoints, and killed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_sync

from .conftest import Cluster, read_log

pytestmark = pytest.mark.rabbitmq

# One trial of 100 batches at 50 ms each: about 5 s of training, checkpointing every op.
SLOW = (
    "name: control\nentrypoint: python3 3_hpsearch.py\n"
    "hyperparameters: {increment_by: 1, batch_sleep: 0.2}\n"
    "searcher: {name: single, metric: x, max_length: 100}\nmax_restarts: 0\n"
)


def _trial(cluster: Cluster, experiment_id: str) -> dict[str, Any]:
    trials: list[dict[str, Any]] = cluster.describe(experiment_id)["trials"]
    return trials[0]


def _running(cluster: Cluster, tmp_path: Path, config_text: str) -> str:
    """Create the experiment on a one-slot worker; return its id once its trial runs."""
    config = tmp_path / "slow.yaml"
    config.write_text(config_text)
    cluster.start_worker("w1")
    created = cluster.create(config, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    wait_sync(lambda: _trial(cluster, experiment_id)["state"] == "RUNNING", 60, "a running trial")
    return experiment_id


def _control(cluster: Cluster, action: str, experiment_id: str) -> dict[str, Any]:
    result = cluster.rung("experiment", action, experiment_id, "--json")
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def test_pause_then_activate_resumes_from_the_checkpoint(cluster: Cluster, tmp_path: Path) -> None:
    experiment_id = _running(cluster, tmp_path, SLOW)

    assert _control(cluster, "pause", experiment_id)["state"] == "PAUSED"
    wait_sync(lambda: _trial(cluster, experiment_id)["state"] == "PAUSED", 60, "the trial held")
    assert cluster.describe(experiment_id)["state"] == "PAUSED"
    assert _control(cluster, "activate", experiment_id)["state"] == "ACTIVE"
    done = cluster.rung("experiment", "wait", experiment_id, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED"
    assert summary["trials"][0]["metric"] == 100

    log = read_log(summary["event_log"])
    runs = [
        c["body"] for r in log for c in r.get("commands", []) if c["body"]["type"] == "run_trial"
    ]
    # The second attempt resumed from the checkpoint the preempted first one saved.
    assert [r["attempt"] for r in runs] == [1, 2]
    assert runs[1]["latest_checkpoint"] is not None
    exits = [r["input"] for r in log if r.get("input") and r["input"]["type"] == "trial_exited"]
    assert [e["reason"] for e in exits] == ["PREEMPTED", "COMPLETED"]


def test_kill_ends_the_experiment_and_its_process_at_once(cluster: Cluster, tmp_path: Path) -> None:
    experiment_id = _running(cluster, tmp_path, SLOW.replace("batch_sleep: 0.2", "batch_sleep: 5"))

    assert _control(cluster, "kill", experiment_id)["state"] == "CANCELED"
    assert _trial(cluster, experiment_id)["state"] == "CANCELED"
    # The worker kills the process (each batch sleeps 5 s: it did not just finish).
    cluster.wait_log("w1", "killing a trial's process")
    cluster.wait_log("w1", "was killed")
    assert _control(cluster, "activate", experiment_id)["ignored"] == (
        "activate: the experiment has ended (CANCELED)"
    )
