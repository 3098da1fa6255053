"""kill -9 the searcher in the middle of a real run, again and again: every restart
rebuilds the experiment from its log, and the run completes with nothing lost, nothing
run twice, and decisions that replay identically."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from random import Random
from typing import Any

import pytest

from rung.searcher.eventlog import read_log, replay
from tests.support import wait_sync

from .conftest import Cluster

pytestmark = pytest.mark.rabbitmq


def _describe(cluster: Cluster, experiment_id: str) -> dict[str, Any] | None:
    result = cluster.rung("e", "describe", experiment_id, "--json", timeout=60)
    if result.returncode != 0:
        return None
    described: dict[str, Any] = json.loads(result.stdout)
    return described


def test_searcher_killed_repeatedly_still_finishes_the_search(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "crash.yaml"
    config.write_text(
        "name: crash\nentrypoint: python3 3_hpsearch.py\n"
        "hyperparameters:\n  increment_by: {type: int, minval: 1, maxval: 8}\n"
        "  batch_sleep: 0.01\n"
        "searcher: {name: adaptive_asha, metric: x, max_length: 100, max_trials: 10, "
        "max_concurrent_trials: 4}\nreproducibility: {experiment_seed: 11}\n"
        "max_restarts: 0\n"
    )
    cluster.start_worker("w1", slots=2)
    cluster.start_worker("w2", slots=2)
    created = cluster.create(config, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    log_path = cluster.state_dir / "experiments" / experiment_id / "events.jsonl"
    rng = Random(3)
    for kill in range(4):
        # Let a random number of records be written, then kill -9, wherever it is.
        target = len(read_log(log_path)) + rng.randint(2, 12)

        def progressed(target: int = target) -> bool:
            return len(read_log(log_path)) >= target

        wait_sync(progressed, 60, "progress")
        process = cluster.processes["searcher"]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        cluster.start(f"searcher-{kill}", "searcher", "--state-dir", str(cluster.state_dir))
        cluster.wait_log(f"searcher-{kill}", "searcher ready")
        cluster.processes["searcher"] = cluster.processes.pop(f"searcher-{kill}")
    wait_sync(
        lambda: (_describe(cluster, experiment_id) or {}).get("state") == "COMPLETED",
        180,
        "the experiment to complete",
    )
    summary = _describe(cluster, experiment_id)
    assert summary is not None
    trials = summary["trials"]
    assert len(trials) == 10  # no trial lost, none created twice
    assert sorted(t["trial_id"] for t in trials) == list(range(1, 11))
    assert all(t["state"] == "COMPLETED" for t in trials)
    for trial in trials:
        assert trial["metric"] == trial["hparams"]["increment_by"] * trial["length"]
    records = read_log(log_path)
    # Every recorded decision re-decides identically from the recorded inputs.
    assert replay(records, verify=True).divergence is None
    # Each trial's validations were applied once per length: nothing had a double effect.
    applied = [
        (e.request_id, e.length)
        for r in records
        if r.kind == "input"
        for e in r.applied
        if e.type == "validation_completed"
    ]
    assert len(applied) == len(set(applied))
    full = [t for t in trials if t["length"] == 100]
    assert summary["best_trial"]["metric"] == min(t["metric"] for t in full)
    assert "experiment recovered from its log" in cluster.log_text("searcher-3")


def test_a_second_searcher_cannot_take_a_live_ones_experiments(cluster: Cluster) -> None:
    second = cluster.rung("searcher", "--state-dir", str(cluster.state_dir), timeout=60)
    assert second.returncode == 2
    assert "is in use by a live searcher" in second.stderr
    assert "Traceback" not in second.stderr
    # Once the owner is gone (even by kill -9), a new searcher takes over at once.
    cluster.stop("searcher", signal.SIGKILL)
    cluster.start("searcher-2", "searcher", "--state-dir", str(cluster.state_dir))
    cluster.wait_log("searcher-2", "searcher ready")


@pytest.mark.parametrize("point", ["consumed", "appended", "published", "overtaken"])
@pytest.mark.parametrize("nth", [3, 11])
def test_searcher_crashing_at_each_step_of_handling_an_event(
    cluster: Cluster, tmp_path: Path, point: str, nth: int
) -> None:
    """Crash after consuming, after appending, or after publishing (before acking); or
    once a later input's record is durable while a decision's commands wait to go out
    (overtaken): the restart sends that decision from the later record's mark."""
    cluster.stop("searcher")
    cluster.start(
        "doomed",
        "searcher",
        "--state-dir",
        str(cluster.state_dir),
        env={"RUNG_CRASH_AT": f"{point}:{nth}"},
    )
    cluster.wait_log("doomed", "searcher ready")
    config = tmp_path / "crash.yaml"
    config.write_text(
        "name: crash-at\nentrypoint: python3 3_hpsearch.py\n"
        "hyperparameters:\n  increment_by: {type: int, minval: 1, maxval: 8}\n"
        "searcher: {name: adaptive_asha, metric: x, max_length: 100, max_trials: 10, "
        "max_concurrent_trials: 4}\nreproducibility: {experiment_seed: 5}\n"
        "max_restarts: 0\n"
    )
    cluster.start_worker("w1", slots=2)
    created = cluster.create(config, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    assert cluster.processes["doomed"].wait(60) == 137  # it crashed where it was told
    if point == "overtaken":  # with a later record durable while the decision waited
        cluster.wait_log("doomed", "crash point overtaken: ready")
    cluster.start("searcher", "searcher", "--state-dir", str(cluster.state_dir))
    wait_sync(
        lambda: (_describe(cluster, experiment_id) or {}).get("state") == "COMPLETED",
        120,
        "the experiment to complete after the crash",
    )
    summary = _describe(cluster, experiment_id)
    assert summary is not None
    assert sorted(t["trial_id"] for t in summary["trials"]) == list(range(1, 11))
    records = read_log(cluster.state_dir / "experiments" / experiment_id / "events.jsonl")
    assert replay(records, verify=True).divergence is None
    applied = [
        (e.request_id, e.length)
        for r in records
        if r.kind == "input"
        for e in r.applied
        if e.type == "validation_completed"
    ]
    assert len(applied) == len(set(applied))
