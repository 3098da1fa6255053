"""One suite, two brokers: the in-memory broker must behave like RabbitMQ."""

from __future__ import annotations

import asyncio

import pytest

from rung.broker import DEAD_REASON_HEADER, Broker, Delivery, UnroutableError
from tests.support import wait_for


async def collect(broker: Broker, queue: str, prefetch: int = 10) -> list[Delivery]:
    got: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery)
        await delivery.ack()

    await broker.subscribe(queue, handler, prefetch=prefetch)
    return got


async def test_publish_then_consume_round_trip(broker: Broker) -> None:
    t = broker.topology
    await broker.publish(
        t.events_exchange, t.EVENTS_KEY, b'{"a": 1}', message_id="m1", headers={"h": "v"}
    )
    got = await collect(broker, t.events_queue)
    await wait_for(lambda: len(got) == 1, 10, "the message")
    assert got[0].body == b'{"a": 1}'
    assert got[0].message_id == "m1"
    assert got[0].headers["h"] == "v"
    assert not got[0].redelivered


async def test_unroutable_mandatory_publish_raises(broker: Broker) -> None:
    t = broker.topology
    with pytest.raises(UnroutableError):
        await broker.publish(t.commands_exchange, t.worker_key("nobody"), b"{}", message_id="m")


async def test_prefetch_bounds_handlers_in_flight(broker: Broker) -> None:
    t = broker.topology
    for i in range(6):
        await broker.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id=f"m{i}")
    held: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)

    await broker.subscribe(t.work_queue, hold, prefetch=2)
    await wait_for(lambda: len(held) == 2, 10, "two deliveries")
    await asyncio.sleep(0.3)  # give the broker a chance to over-deliver; it must not
    assert len(held) == 2
    await held[0].ack()
    await wait_for(lambda: len(held) == 3, 10, "a third delivery after an ack")
    for delivery in held[1:]:
        await delivery.ack()


async def test_requeue_redelivers_with_the_flag(broker: Broker) -> None:
    t = broker.topology
    await broker.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id="again")
    seen: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            await delivery.requeue()
        else:
            await delivery.ack()

    await broker.subscribe(t.work_queue, handler, prefetch=1)
    await wait_for(lambda: len(seen) == 2, 10, "the redelivery")
    assert seen[1].message_id == "again"
    assert seen[1].redelivered


async def test_dead_letter_keeps_the_reason(broker: Broker) -> None:
    t = broker.topology
    await broker.publish(t.events_exchange, t.EVENTS_KEY, b"not json", message_id="bad")

    async def reject(delivery: Delivery) -> None:
        await delivery.dead_letter("not valid JSON")

    await broker.subscribe(t.events_queue, reject, prefetch=1)
    dead = await collect(broker, t.dead_queue)
    await wait_for(lambda: len(dead) == 1, 10, "the dead letter")
    assert dead[0].body == b"not json"
    assert dead[0].headers[DEAD_REASON_HEADER] == "not valid JSON"
    assert dead[0].headers["x-rung-dead-queue"] == t.events_queue


async def test_private_queue_routing_and_removal(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    t = broker.topology
    name = await broker.declare_private_queue((t.commands_exchange, t.worker_key("w1")))
    got = await collect(broker, name)
    await broker.publish(t.commands_exchange, t.worker_key("w1"), b"x", message_id="c1")
    await wait_for(lambda: len(got) == 1, 10, "the control message")
    await broker.delete_private_queue(name)
    with pytest.raises(UnroutableError):
        await broker.publish(t.commands_exchange, t.worker_key("w1"), b"x", message_id="c2")
    # Its consumer was cancelled first: the broker had none to cancel (which the client
    # library would log as a warning at every worker's shutdown).
    assert not [r for r in caplog.records if "cancelled by the broker" in r.getMessage()]


async def test_reply_to_a_private_queue_through_the_default_exchange(broker: Broker) -> None:
    name = await broker.declare_private_queue()
    got = await collect(broker, name)
    await broker.publish("", name, b"reply", message_id="r1", correlation_id="c-1")
    await wait_for(lambda: len(got) == 1, 10, "the reply")
    assert got[0].correlation_id == "c-1"


async def test_messages_wait_for_a_consumer(broker: Broker) -> None:
    t = broker.topology
    for i in range(3):
        await broker.publish(t.rpc_exchange, t.RPC_KEY, str(i).encode(), message_id=f"q{i}")
    got = await collect(broker, t.rpc_queue)
    await wait_for(lambda: len(got) == 3, 10, "three queued messages")
    assert sorted(d.body for d in got) == [b"0", b"1", b"2"]
