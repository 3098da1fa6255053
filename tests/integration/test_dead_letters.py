"""`rung dlq`'s core on both brokers: list dead letters in place, send one back."""

from __future__ import annotations

import pytest

from rung.broker import Broker, Delivery
from rung.broker.deadletters import DeadLetterError, peek, requeue
from rung.broker.schemas import Envelope, WorkerHeartbeat, encode
from tests.support import wait_for

from .test_broker_conformance import collect


async def _kill(broker: Broker, bodies: dict[str, bytes]) -> None:
    """Publish to the events queue, and dead-letter each as a consumer that failed would."""
    t = broker.topology
    for message_id, body in bodies.items():
        await broker.publish(t.events_exchange, t.EVENTS_KEY, body, message_id=message_id)
    killed: list[str] = []

    async def fail(delivery: Delivery) -> None:
        await delivery.dead_letter(f"refused {delivery.message_id}")
        killed.append(delivery.message_id or "")

    subscription = await broker.subscribe(t.events_queue, fail, prefetch=10)
    await wait_for(lambda: len(killed) == len(bodies), 10, "the dead letters")
    await subscription.cancel()


async def test_list_leaves_them_and_requeue_sends_one_back(broker: Broker) -> None:
    good = Envelope(message_id="good-1", body=WorkerHeartbeat(worker_id="w", slots=1, free_slots=1))
    await _kill(broker, {"bad-1": b"{not json", "good-1": encode(good)})
    letters = sorted(await peek(broker), key=lambda letter: letter.message_id)
    assert [(x.message_id, x.type, x.queue) for x in letters] == [
        ("bad-1", None, broker.topology.events_queue),
        ("good-1", "worker_heartbeat", broker.topology.events_queue),
    ]
    assert letters[0].reason == "refused bad-1"
    assert len(await peek(broker)) == 2  # listing took nothing away

    sent = await requeue(broker, "good-1")
    assert sent.message_id == "good-1"
    assert [x.message_id for x in await peek(broker)] == ["bad-1"]
    back = await collect(broker, broker.topology.events_queue)
    await wait_for(lambda: len(back) == 1, 10, "the message back in the events queue")
    assert back[0].body == encode(good)
    assert back[0].message_id == "good-1"

    with pytest.raises(DeadLetterError, match="no dead letter with id 'nope'"):
        await requeue(broker, "nope")
    assert [x.message_id for x in await peek(broker)] == ["bad-1"]
