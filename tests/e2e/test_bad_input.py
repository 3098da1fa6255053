"""Bad input against the real cluster: poison messages and an unreachable broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rung.broker import DEAD_REASON_HEADER, Delivery, RabbitBroker, Topology
from rung.broker.schemas import Envelope, GangPart, GangPlanned, WorkerLost, encode
from tests.support import AMQP_URL, wait_for, wait_sync

from .conftest import EXAMPLES, ROOT, Cluster

pytestmark = pytest.mark.rabbitmq


async def _poison_and_read_dead(namespace: str) -> list[Delivery]:
    broker = RabbitBroker(AMQP_URL, Topology(namespace), name="poisoner")
    await broker.start()
    topology = broker.topology
    try:
        bodies = [
            b"{not json",
            json.dumps({"schema_version": 99, "message_id": "x", "body": {}}).encode(),
            json.dumps(
                {"schema_version": 1, "message_id": "y", "body": {"type": "launch_missiles"}}
            ).encode(),
        ]
        for index, body in enumerate(bodies):
            await broker.publish(
                topology.events_exchange, topology.EVENTS_KEY, body, message_id=f"poison-{index}"
            )
        dead: list[Delivery] = []

        async def keep(delivery: Delivery) -> None:
            dead.append(delivery)
            await delivery.ack()

        await broker.subscribe(topology.dead_queue, keep, prefetch=10)
        await wait_for(lambda: len(dead) == 3, 30, "three dead letters")
        return dead
    finally:
        await broker.close()


def test_malformed_messages_go_to_the_dead_letter_queue_and_the_service_goes_on(
    cluster: Cluster,
) -> None:
    dead = asyncio.run(_poison_and_read_dead(cluster.namespace))
    reasons = sorted(str(d.headers[DEAD_REASON_HEADER]) for d in dead)
    assert reasons[0].startswith("invalid message at body")
    assert "unknown" in reasons[0] or "does not match" in reasons[0]
    assert reasons[1].startswith("not valid JSON")
    assert reasons[2] == "unsupported schema_version 99; this Rung speaks version 1"
    assert "malformed event sent to the dead-letter queue" in cluster.log_text("searcher")
    # The searcher is still up and runs an experiment.
    cluster.start_worker("w1")
    result = cluster.create(EXAMPLES / "3_hpsearch.yaml")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "COMPLETED"


def test_an_unreachable_broker_is_reported_and_retried(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rung",
                "worker",
                "--gpus",
                "none",
                "--broker",
                "amqp://guest:secret@127.0.0.1:1/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            wait_sync(
                lambda: log.read_text().count("waiting for the broker") >= 2,
                30,
                "two connection attempts",
            )
            assert process.poll() is None  # still retrying, not crashed
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
    text = log.read_text()
    assert "amqp://guest:******@127.0.0.1:1/" in text  # the password never reaches a log
    assert "secret" not in text
    assert "ConnectionError" in text or "refused" in text.lower()


async def _poison(namespace: str, bodies: dict[str, bytes]) -> None:
    broker = RabbitBroker(AMQP_URL, Topology(namespace), name="poisoner")
    await broker.start()
    try:
        topology = broker.topology
        for message_id, body in bodies.items():
            await broker.publish(
                topology.events_exchange, topology.EVENTS_KEY, body, message_id=message_id
            )
    finally:
        await broker.close()


def test_rung_dlq_lists_dead_letters_and_sends_one_back(cluster: Cluster) -> None:
    # A worker may not send worker_lost (the searcher's own timer input): a valid message
    # that the searcher refuses, and that rung dlq may send back.
    lost = Envelope(
        message_id="p-lost",
        body=WorkerLost(experiment_id="exp-00000000", worker_id="w9", silent_s=1.0),
    )
    # Nor gang_planned (its placement of a trial on several workers).
    gang = Envelope(
        message_id="p-gang",
        body=GangPlanned(
            experiment_id="exp-00000000",
            trial_id=1,
            attempt=1,
            parts=[GangPart(worker_id="w9", slots=2, address="10.0.0.9")],
        ),
    )
    bodies = {
        "p-json": b"{not json",
        "p-big": b"[" * 10,
        "p-lost": encode(lost),
        "p-gang": encode(gang),
    }
    asyncio.run(_poison(cluster.namespace, bodies))

    def dead() -> list[dict[str, object]]:
        result = cluster.rung("dlq", "list", "--json")
        assert result.returncode == 0, result.stderr
        letters: list[dict[str, object]] = json.loads(result.stdout)
        return letters

    wait_sync(lambda: len(dead()) == 4, 30, "four dead letters")
    letters = {str(x["message_id"]): x for x in dead()}
    assert set(letters) == {"p-json", "p-big", "p-lost", "p-gang"}
    assert str(letters["p-json"]["reason"]).startswith("not valid JSON")
    assert str(letters["p-json"]["queue"]).endswith(".events")
    assert "searcher's own timer input" in str(letters["p-lost"]["reason"])
    assert "gang_planned is the searcher's own" in str(letters["p-gang"]["reason"])
    table = cluster.rung("dlq", "list")
    assert "p-json" in table.stdout
    assert "does not decode" in table.stdout

    # What does not decode never goes back: it could never be handled.
    refused = cluster.rung("dlq", "requeue", "p-json")
    assert refused.returncode == 2
    assert "does not decode" in refused.stderr
    sent = cluster.rung("dlq", "requeue", "p-lost")
    assert sent.returncode == 0, sent.stderr
    assert "p-lost: sent back to" in sent.stdout
    # Still refused: the searcher dead-letters it again, and says so in its log.
    wait_sync(
        lambda: cluster.log_text("searcher").count("refused event sent to the dead") >= 3,
        30,
        "the second dead-lettering",
    )
    wait_sync(lambda: len(dead()) == 4, 30, "all four dead letters again")
    missing = cluster.rung("dlq", "requeue", "nope")
    assert missing.returncode == 2
    assert "no dead letter with id 'nope'" in missing.stderr
