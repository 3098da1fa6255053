"""Network faults between every service and the broker, made by a TCP proxy: links reset
with RST, a partition longer than the AMQP heartbeat, and a slow network. The searcher and
the workers connect through the proxy; the test's own commands connect directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.faults.checker import Baseline
from tests.faults.scenario import event_count, fault_env, finish, start_experiment, wait_events
from tests.proxy import FaultProxy
from tests.support import wait_sync

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def cluster(tmp_path: Path, proxy: FaultProxy) -> Iterator[Cluster]:
    # Heartbeats every 2 s: a partition is noticed in seconds, not minutes.
    with running_cluster(tmp_path, service_url=proxy.url("heartbeat=2")) as instance:
        yield instance


def _workers(cluster: Cluster, tmp_path: Path) -> None:
    env = fault_env(tmp_path / "faults")
    cluster.start_worker("w1", 2, env=env)
    cluster.start_worker("w2", 1, env=env)


def test_every_link_reset_twice_mid_run(
    cluster: Cluster, proxy: FaultProxy, tmp_path: Path, baseline: Baseline
) -> None:
    _workers(cluster, tmp_path)
    experiment_id = start_experiment(cluster, tmp_path)
    wait_events(cluster, experiment_id, "checkpoint_saved", 1)
    assert proxy.reset() >= 6  # two connections per service
    wait_sync(lambda: proxy.live_connections() >= 6, 30, "every service to reconnect")
    wait_events(cluster, experiment_id, "op_completed", 2)
    assert proxy.reset() >= 6
    finish(cluster, experiment_id, baseline, bound_s=120)
    assert proxy.connections >= 18  # everyone reconnected, twice


def test_a_partition_longer_than_the_heartbeat(
    cluster: Cluster, proxy: FaultProxy, tmp_path: Path, baseline: Baseline
) -> None:
    _workers(cluster, tmp_path)
    experiment_id = start_experiment(cluster, tmp_path)
    wait_events(cluster, experiment_id, "checkpoint_saved", 1)
    before = proxy.connections
    with proxy.blackholed():
        # Nothing moves; trials keep training, their events wait in the workers.
        completed = event_count(cluster, experiment_id, "op_completed")
        # Both sides give the links up after missed heartbeats (2 s each), and the
        # services start reconnecting (into the partition, where the attempts stall).
        wait_sync(lambda: proxy.connections >= before + 3, 60, "reconnect attempts")
        assert event_count(cluster, experiment_id, "op_completed") == completed
    report = finish(cluster, experiment_id, baseline, bound_s=150)
    assert report.summary["state"] == "COMPLETED"
    # The silent links were noticed by the missing heartbeats, not by a close.
    logs = {name: cluster.log_text(name) for name in ("searcher", "w1", "w2")}
    assert any("No frames were received" in text for text in logs.values())


def test_a_slow_network(
    cluster: Cluster, proxy: FaultProxy, tmp_path: Path, baseline: Baseline
) -> None:
    _workers(cluster, tmp_path)
    proxy.delay(0.05)  # each way, on every packet: 100 ms for each confirm
    experiment_id = start_experiment(cluster, tmp_path)
    report = finish(cluster, experiment_id, baseline, bound_s=120)
    assert report.summary["state"] == "COMPLETED"
