"""Population-based training under faults: a worker (SIGKILL) and the searcher (SIGKILL,
then restarted) die in the middle of a round. The round neither hangs nor loses a member:
the lost worker's trials resume from their checkpoints elsewhere, the restarted searcher
continues the round from its log, and every copy still starts from a checkpoint its
source saved."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, read_log, running_cluster
from tests.e2e.gang_scripts import records_of
from tests.e2e.pbt_scripts import CONTEXT, clones, pbt_config
from tests.faults.checker import check_invariants
from tests.faults.scenario import wait_events

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, "--worker-timeout", "3") as instance:
        yield instance


def test_a_worker_and_the_searcher_killed_mid_round(cluster: Cluster, tmp_path: Path) -> None:
    for name in ("w1", "w2", "w3"):
        cluster.start_worker(name, 2, "--heartbeat", "0.5")
    # 4 members, 3 rounds of 40 batches of 50 ms: 2 s of training per member a round.
    config = pbt_config(tmp_path, per_round=40, batch_sleep=0.05)
    created = cluster.create(config, CONTEXT, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    wait_events(cluster, experiment_id, "trial_started", 4, timeout=120)
    records = records_of(cluster, experiment_id)
    done_ops = {
        r["input"]["trial_id"]
        for r in records
        if (r.get("input") or {}).get("type") == "op_completed"
    }
    busy = [
        r["input"]["worker_id"]
        for r in records
        if (r.get("input") or {}).get("type") == "trial_started"
        and r["input"]["trial_id"] not in done_ops
    ]
    victim = busy[0]  # a worker in the middle of a member's first round
    cluster.stop(victim, signal.SIGKILL)  # its trials' processes are orphaned, then lost
    wait_events(cluster, experiment_id, "op_completed", 4, timeout=120)
    cluster.stop("searcher", signal.SIGKILL)
    cluster.start(
        "searcher-2", "searcher", "--state-dir", str(cluster.state_dir), "--worker-timeout", "3"
    )
    cluster.wait_log("searcher-2", "searcher ready")
    cluster.processes["searcher"] = cluster.processes.pop("searcher-2")
    done = cluster.rung("experiment", "wait", experiment_id, "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED"
    # 4 members, 3 rounds: one copy at each of the two round ends, whatever died.
    assert len(summary["trials"]) == 6
    records = read_log(summary["event_log"])
    assert len(clones(records)) == 2
    assert all(t["state"] == "COMPLETED" for t in summary["trials"])
    lost = [
        r
        for r in records
        if (r.get("input") or {}).get("type") == "worker_lost" and r.get("ignored") is None
    ]
    assert {r["input"]["worker_id"] for r in lost} == {victim}
    assert "experiment recovered from its log" in cluster.log_text("searcher-2")
    report = check_invariants(cluster, experiment_id, bound_s=240, planned_trials=6)
    assert report.restarts == 0  # a lost worker is a preemption, not a failure
