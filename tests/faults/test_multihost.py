"""Several hosts on one machine: RabbitMQ, the searcher and three workers, each in a
network namespace of its own with its own address on a bridge, talking real TCP. The
broker is a RabbitMQ node of this test's own, started inside its namespace, with the
least-privilege definitions of deploy/rabbitmq. Mid-trial, one worker host's link is
cut: its trial moves to another host and the experiment completes.

Needs root and iproute2 (``ip netns``); without them it skips and says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import EXAMPLES, read_log
from tests.hosts import Hosts, running_hosts
from tests.support import wait_sync

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(600)]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with running_hosts(tmp_path) as made:
        yield made


def _ready(hosts: Hosts, worker: str) -> bool:
    return "worker ready" in hosts.log_text(worker)


def test_a_worker_host_cut_off_mid_trial_hands_its_trial_on(hosts: Hosts) -> None:
    config = yaml.safe_load((EXAMPLES / "3_hpsearch.yaml").read_text())
    config["hyperparameters"]["batch_sleep"] = {"type": "const", "val": 0.04}
    config["searcher"]["max_trials"] = 6  # enough for each worker to run trials
    path = hosts.tmp / "multihost.yaml"
    path.write_text(yaml.safe_dump(config))
    state = hosts.tmp / "state"
    hosts.rung(
        "searcher",
        "searcher",
        "rung-searcher",
        "searcher",
        "--state-dir",
        str(state),
        "--worker-timeout",
        "4",
        "--verify-worker-users",
    )
    wait_sync(lambda: "searcher ready" in hosts.log_text("searcher"), 60, "the searcher")
    for worker in ("w1", "w2", "w3"):
        hosts.rung(
            worker,
            worker,
            worker,
            "worker",
            "--id",
            worker,
            "--slots",
            "1",
            "--gpus",
            "none",
            "--heartbeat",
            "0.5",
            "--work-dir",
            str(hosts.tmp / worker),
        )
    for worker in ("w1", "w2", "w3"):
        wait_sync(partial(_ready, hosts, worker), 60, f"{worker} ready")
    hosts.rung(
        "client",
        "searcher",
        "rung-client",
        "experiment",
        "create",
        str(path),
        str(EXAMPLES),
        "--follow",
        "--json",
    )
    # Mid-trial on w1: pull its cable.
    wait_sync(lambda: "trial started" in hosts.log_text("w1"), 120, "a trial on w1")
    hosts.net.cut("w1")
    cut_at = time.time()
    client = hosts.processes["client"]
    client.wait(300)
    assert client.returncode == 0, hosts.log_text("client")[-3000:]
    summary = json.loads((hosts.tmp / "client.out").read_text())
    assert summary["state"] == "COMPLETED"
    log = read_log(summary["event_log"])
    inputs = [r["input"] for r in log if r.get("kind") == "input" and r.get("input")]
    lost = [i for i in inputs if i["type"] == "worker_lost"]
    assert [i["worker_id"] for i in lost] == ["w1"]
    # The trial w1 was running went on elsewhere, over the network, after the cut.
    on_w1 = {
        i["trial_id"] for i in inputs if i["type"] == "trial_started" and i["worker_id"] == "w1"
    }
    moved = {
        i["trial_id"]
        for i in inputs
        if i["type"] == "trial_started" and i["worker_id"] != "w1" and i["trial_id"] in on_w1
    }
    assert moved, f"no trial of w1's ({sorted(on_w1)}) started elsewhere"
    assert all(t["state"] == "COMPLETED" for t in summary["trials"])
    assert time.time() - cut_at < 300
