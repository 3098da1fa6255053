"""A worker of a gang dies for real (SIGKILL) while its trial runs on two workers: the
attempt ends as a preemption, the other part is stopped, and the trial is placed again
and resumes from its latest checkpoint, without a restart counted."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.gang_scripts import gang_config, records_of
from tests.faults.checker import check_invariants
from tests.faults.scenario import wait_events

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, "--worker-timeout", "3") as instance:
        yield instance


def test_a_gang_worker_killed_mid_trial_resumes_as_a_preemption(
    cluster: Cluster, tmp_path: Path
) -> None:
    for name in ("w-a", "w-b", "w-c"):
        cluster.start_worker(name, 4, "--heartbeat", "0.5")
    config = gang_config(tmp_path, slots=8, length=150, sleep=0.1)
    created = cluster.create(config, tmp_path / "gang", follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    wait_events(cluster, experiment_id, "checkpoint_saved", 2, timeout=120)
    (plan,) = [r for r in records_of(cluster, experiment_id) if _is(r, "gang_planned")]
    chief, member = (part["worker_id"] for part in plan["input"]["parts"])
    cluster.processes[member].send_signal(signal.SIGKILL)  # the machine goes away
    done = cluster.rung("experiment", "wait", experiment_id, "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED"
    (trial,) = summary["trials"]
    assert trial["restarts"] == 0  # a lost worker is a preemption, not a failure
    assert trial["metric"] == 8 * 150  # the steps after the checkpoint were trained again
    records = records_of(cluster, experiment_id)
    lost = [r for r in records if _is(r, "worker_lost") and not r["ignored"]]
    assert [r["input"]["worker_id"] for r in lost] == [member]
    # Every part was told to stop with the attempt: the lost worker's too, should it
    # come back.
    kills = [c for c in lost[0]["commands"] if c["body"]["type"] == "kill_trial"]
    assert sorted(c["worker_id"] for c in kills) == sorted([chief, member])
    plans = [r for r in records if _is(r, "gang_planned") and not r["ignored"]]
    assert len(plans) == 2
    again = sorted(p["worker_id"] for p in plans[1]["input"]["parts"])
    assert member not in again  # placed again on the live workers
    report = check_invariants(cluster, experiment_id, bound_s=240, planned_trials=1)
    assert report.restarts == 0


def _is(record: dict[str, object], kind: str) -> bool:
    body = record.get("input")
    return record.get("kind") == "input" and isinstance(body, dict) and body.get("type") == kind
