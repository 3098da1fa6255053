"""Processes die for real: workers and the searcher get SIGKILL mid-run, training scripts
crash, hang, exit without finishing or report NaN on command, and poison messages land
in the queues. Every scenario ends with the shared checker, against the fault-free run."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.faults.checker import Baseline
from tests.faults.scenario import (
    TRIALS,
    altered,
    command_fault,
    event_count,
    fault_env,
    finish,
    poison,
    start_experiment,
    trial_pids,
    wait_events,
)
from tests.support import AMQP_URL, wait_sync

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, "--worker-timeout", "3") as instance:
        yield instance


def _alive(pid: int) -> bool:
    try:
        with Path(f"/proc/{pid}/stat").open() as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_workers_killed_with_sigkill_mid_trial(
    cluster: Cluster, tmp_path: Path, baseline: Baseline
) -> None:
    env = fault_env(tmp_path / "faults")
    w1 = cluster.start_worker("w1", 2, "--heartbeat", "0.5", env=env)
    cluster.start_worker("w2", 1, "--heartbeat", "0.5", env=env)
    experiment_id = start_experiment(cluster, tmp_path)
    wait_events(cluster, experiment_id, "checkpoint_saved", 2)
    orphans = trial_pids(cluster, "w1")
    assert orphans
    w1.send_signal(signal.SIGKILL)  # the worker only: its trials must not live on
    wait_sync(lambda: not any(_alive(pid) for pid in orphans), 10, "w1's trials to die with it")
    cluster.start_worker("w3", 2, "--heartbeat", "0.5", env=env)
    wait_events(cluster, experiment_id, "op_completed", 3)
    cluster.processes["w2"].send_signal(signal.SIGKILL)
    report = finish(cluster, experiment_id, baseline, bound_s=120)
    assert report.summary["state"] == "COMPLETED"
    assert report.restarts == 0  # a lost worker does not use a restart
    assert "worker lost" in cluster.log_text("searcher")


def test_the_searcher_killed_with_sigkill_twice(
    cluster: Cluster, tmp_path: Path, baseline: Baseline
) -> None:
    cluster.start_worker("w1", 3, env=fault_env(tmp_path / "faults"))
    experiment_id = start_experiment(cluster, tmp_path)
    for kill, after in enumerate((1, 3), start=1):
        wait_events(cluster, experiment_id, "op_completed", after)
        cluster.stop("searcher", signal.SIGKILL)
        name = f"searcher-{kill}"
        cluster.start(name, "searcher", "--state-dir", str(cluster.state_dir))
        cluster.wait_log(name, "searcher ready")
        cluster.processes["searcher"] = cluster.processes.pop(name)
    report = finish(cluster, experiment_id, baseline, bound_s=120)
    assert report.summary["state"] == "COMPLETED"
    assert "experiment recovered from its log" in cluster.log_text("searcher-2")


def test_scripts_that_misbehave_and_poison_messages(
    cluster: Cluster, tmp_path: Path, baseline: Baseline
) -> None:
    faults = tmp_path / "faults"
    others = [t for t in range(1, TRIALS + 1) if t != baseline.best_trial_id]
    # The best trial crashes once; others hang, stop early, or diverge.
    command_fault(faults, baseline.best_trial_id, "crash", at=12)
    command_fault(faults, others[0], "hang", at=7)
    command_fault(faults, others[1], "exit0", at=8)
    command_fault(faults, others[2], "nan", at=3)
    env = fault_env(faults)
    cluster.start_worker("w1", 2, "--hang-timeout", "2", env=env)
    cluster.start_worker("w2", 1, "--hang-timeout", "2", env=env)
    experiment_id = start_experiment(cluster, tmp_path)
    wait_events(cluster, experiment_id, "op_completed", 1)
    poison(
        cluster,
        [
            ("events", b"{not json", "poison/json"),
            ("events", altered("poison/type", type="no_such_event"), "poison/type"),
            ("events", altered("poison/version", schema_version=99), "poison/version"),
            ("work", b"\x80\x04\x95pickle", "poison/pickle"),
        ],
    )
    report = finish(cluster, experiment_id, baseline, bound_s=150)
    assert report.summary["state"] == "COMPLETED"
    trials = {t["trial_id"]: t for t in report.summary["trials"]}
    assert trials[baseline.best_trial_id]["restarts"] == 1  # the crash, then resumed
    assert trials[others[0]]["restarts"] == 1  # killed as hung, then resumed
    assert trials[others[1]]["length"] < 20  # stopped early, at its own request
    assert trials[others[1]]["restarts"] == 0  # and not restarted in a loop
    assert trials[others[2]]["metric"] is None  # NaN ranks worst: never promoted
    dead = {d.message_id: d.reason for d in report.dead_letters}
    assert set(dead) == {"poison/json", "poison/type", "poison/version", "poison/pickle"}
    assert "no_such_event" in dead["poison/type"]
    assert "99" in dead["poison/version"]
    for order in (baseline.best_trial_id, *others[:3]):
        assert (faults / f"trial-{order}.fired").exists()


def test_the_searcher_frozen_longer_than_the_worker_timeout_and_the_heartbeat(
    tmp_path: Path, baseline: Baseline
) -> None:
    # AMQP heartbeats every 2 s: the broker drops the frozen searcher's connections while
    # it is stopped, so its message in hand is redelivered and its ack fails on waking.
    with running_cluster(
        tmp_path, "--worker-timeout", "3", service_url=AMQP_URL + "?heartbeat=2"
    ) as cluster:
        cluster.start_worker("w1", 3, "--heartbeat", "0.5", env=fault_env(tmp_path / "faults"))
        experiment_id = start_experiment(cluster, tmp_path)
        wait_events(cluster, experiment_id, "checkpoint_saved", 2)
        searcher = cluster.processes["searcher"]
        searcher.send_signal(signal.SIGSTOP)
        try:
            time.sleep(8)  # the fault's length: past the worker timeout and two heartbeats
        finally:
            searcher.send_signal(signal.SIGCONT)
        report = finish(cluster, experiment_id, baseline, bound_s=120)
        assert report.summary["state"] == "COMPLETED"
        # The workers were alive all along: the searcher must not blame them for its own
        # stall (their heartbeats were waiting in the queue).
        assert event_count(cluster, experiment_id, "worker_lost") == 0
        assert "the searcher itself was stalled" in cluster.log_text("searcher")
