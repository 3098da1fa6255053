"""`rung dlq`'s core on both brokers: list dead letters in place, send one back; and the
dead letters a handler that keeps raising leaves there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from rung.broker import (
    DEAD_REASON_HEADER,
    Broker,
    Delivery,
    MemoryBroker,
    RabbitBroker,
    Topology,
)
from rung.broker.deadletters import DeadLetterError, peek, requeue
from rung.broker.errors import BrokerError
from rung.broker.port import DELIVERY_LIMIT, body_id
from rung.broker.schemas import Envelope, WorkerHeartbeat, encode
from rung.broker.topology import BROKER_DELIVERY_LIMIT
from tests.proxy import FaultProxy
from tests.support import AMQP_URL, unique_prefix, wait_for, wait_for_async

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


# ---------------------------------------------------------------- poison messages


async def test_a_poison_message_is_listed_and_sent_back_after_a_fix(broker: Broker) -> None:
    """Dead-lettering keeps the message: rung dlq lists it with the exception, and sends
    it back to its queue, where a fixed handler takes it."""
    t = broker.topology
    await broker.publish(t.rpc_exchange, t.RPC_KEY, b"{}", message_id="req-1")
    fixed = asyncio.Event()
    tries: list[int] = []
    handled: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        if not fixed.is_set():
            tries.append(1)
            raise ZeroDivisionError("division by zero")
        handled.append(delivery)
        await delivery.ack()

    await broker.subscribe(t.rpc_queue, handler, prefetch=4)
    await wait_for(lambda: len(tries) == DELIVERY_LIMIT, 20, "every try")

    async def listed() -> bool:
        return [x.message_id for x in await peek(broker)] == ["req-1"]

    await wait_for_async(listed, 20, "the dead letter")
    (letter,) = await peek(broker)
    assert letter.queue == t.rpc_queue
    assert letter.reason == (
        f"the handler raised {DELIVERY_LIMIT} times (the delivery limit is {DELIVERY_LIMIT}); "
        "last: ZeroDivisionError: division by zero"
    )
    fixed.set()
    await requeue(broker, "req-1")
    await wait_for(lambda: len(handled) == 1, 10, "the message back, handled")
    assert handled[0].message_id == "req-1"
    assert await peek(broker) == []
    assert len(tries) == DELIVERY_LIMIT


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitBroker]:
    instance = RabbitBroker(AMQP_URL, Topology(unique_prefix()), name="poison")
    await instance.start()
    try:
        yield instance
    finally:
        await instance.delete_topology()
        await instance.close()


async def test_a_message_without_an_id_is_known_by_its_body() -> None:
    """Published by something other than Rung, with no message id (aio-pika always adds
    one, so the in-memory broker stands in for such a publisher): the failures are counted
    all the same, under a digest of the body, and the dead letter is named by it."""
    broker = MemoryBroker(Topology(unique_prefix()))
    await broker.start()
    t = broker.topology
    await broker.publish(t.events_exchange, t.events_key("w1"), b"anonymous", message_id="")
    tries: list[str | None] = []

    async def handler(delivery: Delivery) -> None:
        tries.append(delivery.message_id)
        raise ValueError("who sent this?")

    await broker.subscribe(t.events_queue, handler, prefetch=1)
    letters = await collect(broker, t.dead_queue)
    await wait_for(lambda: len(letters) == 1, 10, "the dead letter")
    assert tries == [""] * DELIVERY_LIMIT
    assert letters[0].body == b"anonymous"
    assert letters[0].message_id == body_id(b"anonymous")  # rung dlq requeue can name it
    assert "ValueError: who sent this?" in letters[0].headers[DEAD_REASON_HEADER]
    await broker.close()


@pytest.mark.rabbitmq
async def test_the_quorum_queues_rung_declares_have_the_brokers_delivery_limit(
    rabbit: RabbitBroker,
) -> None:
    """The safety net for a message that kills its consumer, which no count in the
    consumer survives: RabbitMQ itself dead-letters a message delivered too often. Here
    the handler puts it back every time without raising, which the guard never counts."""
    t = rabbit.topology
    await rabbit.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id="bouncing")
    deliveries: list[int] = []

    async def handler(delivery: Delivery) -> None:
        deliveries.append(1)
        await delivery.requeue()

    subscription = await rabbit.subscribe(t.work_queue, handler, prefetch=1)

    async def listed() -> bool:
        return [x.message_id for x in await peek(rabbit, quiet_s=0.2)] == ["bouncing"]

    await wait_for_async(listed, 30, "the broker's dead letter")
    await subscription.cancel()
    assert len(deliveries) == BROKER_DELIVERY_LIMIT + 1  # a limit of N allows N + 1
    (letter,) = await peek(rabbit)
    assert letter.reason == "delivery_limit (dead-lettered by the broker)"
    assert letter.queue == t.work_queue
    await requeue(rabbit, "bouncing")  # back, with RabbitMQ's death headers left behind
    back = await collect(rabbit, t.work_queue)
    await wait_for(lambda: len(back) == 1, 10, "the message back in the work queue")
    assert not [k for k in back[0].headers if k.startswith("x-death") or "death" in k]


@pytest.fixture
async def reset_broker(proxy: FaultProxy) -> AsyncIterator[RabbitBroker]:
    instance = RabbitBroker(
        proxy.url("heartbeat=2"),
        Topology(unique_prefix()),
        name="poison-resets",
        retry_interval=0.2,
        delivery_limit=3,
    )
    await instance.start()
    try:
        yield instance
    finally:
        with contextlib.suppress(BrokerError):
            await instance.delete_topology()
        await instance.close()


@pytest.mark.rabbitmq
async def test_a_delivery_lost_with_its_link_is_not_counted(
    reset_broker: RabbitBroker, proxy: FaultProxy
) -> None:
    """A message delivered again because the link dropped is not the handler's fault:
    the first try, held across a reset and failing on its refused ack, does not count,
    and the message is dead-lettered only after three failures of its own."""
    broker = reset_broker
    t = broker.topology
    release = asyncio.Event()
    tries: list[str] = []

    async def handler(delivery: Delivery) -> None:
        tries.append("try")
        if len(tries) == 1:
            await release.wait()
            await delivery.ack()  # refused: the link is gone (BrokerUnavailableError)
        raise ValueError("poison")

    # Both consumers before the reset: they come back with the connection.
    dead = await collect(broker, t.dead_queue)
    await broker.subscribe(t.events_queue, handler, prefetch=1)
    await broker.publish(t.events_exchange, t.events_key("w1"), b"{}", message_id="m1")
    await wait_for(lambda: len(tries) == 1, 10, "the first try under way")
    accepted = proxy.connections
    assert proxy.reset() >= 2
    await wait_for(lambda: proxy.connections >= accepted + 2, 20, "the reconnection")
    release.set()
    await wait_for(lambda: len(dead) == 1, 30, "the dead letter")
    assert "raised 3 times" in dead[0].headers[DEAD_REASON_HEADER]
    assert len(tries) == 4  # the try lost with the link, then three failures
