"""Two searcher processes on one shared state directory, as two machines on NFS would be:
no file lock between them, only the owner epochs in the logs. The second takes the
experiment over mid-run; the first must stop acting on it at once (it exits), and the
experiment must finish under the second with a log that verifies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rung.searcher.eventlog import InputRecord, OwnerRecord, replay
from rung.searcher.eventlog import read_log as read_records
from tests.e2e.conftest import EXAMPLES, Cluster, read_log, running_cluster
from tests.faults.checker import check_invariants
from tests.support import wait_sync

pytestmark = pytest.mark.rabbitmq

CONFIG = (
    "name: shared\nentrypoint: python3 3_hpsearch.py\n"
    "hyperparameters: {increment_by: 1, batch_sleep: 0.03}\n"
    "searcher: {name: asha, metric: x, max_length: 100, max_trials: 4, num_rungs: 2, "
    "divisor: 2, max_concurrent_trials: 1}\nmax_restarts: 0\n"
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, "--shared-state-dir") as instance:
        yield instance


def _inputs(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r["input"] for r in log if r.get("input") and r["input"]["type"] == kind]


def test_a_second_searcher_takes_over_and_the_first_stops_acting(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "shared.yaml"
    config.write_text(CONFIG)
    cluster.start_worker("w1")
    created = cluster.create(config, EXAMPLES, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    path = cluster.state_dir / "experiments" / experiment_id / "events.jsonl"
    wait_sync(lambda: len(_inputs(read_log(path), "op_completed")) >= 1, 60, "a first result")

    # The second searcher, "on another machine": same directory, no lock between them.
    cluster.start(
        "searcher-b", "searcher", "--state-dir", str(cluster.state_dir), "--shared-state-dir"
    )
    cluster.wait_log("searcher-b", "experiment recovered from its log")
    # The first finds a record it did not write at its next append, and stops.
    cluster.wait_log("searcher", "another searcher took over the experiment", timeout=60)

    done = cluster.rung("experiment", "wait", experiment_id, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 4

    records = read_records(path)
    owners = [(r.epoch, r.owner) for r in records if isinstance(r, OwnerRecord)]
    assert [epoch for epoch, _ in owners] == [1, 2]
    assert owners[0][1] != owners[1][1]
    assert replay(records, verify=True).divergence is None
    # Nothing was applied twice: every applied message id appears once.
    ids = [r.message_id for r in records if isinstance(r, InputRecord)]
    assert len(ids) == len(set(ids))
    # The first searcher left the shared directory to the second, and exited.
    assert cluster.processes["searcher"].wait(30) == 0
    assert "another searcher owns this shared state directory now" in cluster.log_text("searcher")
    check_invariants(cluster, experiment_id, bound_s=120, planned_trials=4)
