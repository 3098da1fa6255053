"""The dead queue is bounded on the real broker: declared with ``x-max-length`` and
``x-overflow: drop-head``, which RabbitMQ's quorum queues honour by dropping the oldest."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest

from rung.broker import RabbitBroker, Topology
from rung.broker.topology import DEAD_QUEUE_MAX_LENGTH, QueueSpec
from tests.support import AMQP_URL, unique_prefix

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(AMQP_URL, Topology(unique_prefix()), name="dead-bound")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.delete_topology()
        await broker.close()


async def test_the_dead_queue_is_declared_with_its_bound(rabbit: RabbitBroker) -> None:
    t = rabbit.topology
    spec = next(q for q in t.queues if q.name == t.dead_queue)
    assert spec.declare_arguments()["x-max-length"] == DEAD_QUEUE_MAX_LENGTH
    assert spec.declare_arguments()["x-overflow"] == "drop-head"
    connection = await aio_pika.connect(AMQP_URL)
    try:
        # The same arguments: RabbitMQ finds the queue equivalent.
        channel = await connection.channel()
        await channel.declare_queue(t.dead_queue, durable=True, arguments=spec.declare_arguments())
        # Without the bound: RabbitMQ says the queue has one (inequivalent arguments).
        unbounded = {
            k: v for k, v in spec.declare_arguments().items() if k not in ("x-max-length",)
        }
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="x-max-length"):
            await channel.declare_queue(t.dead_queue, durable=True, arguments=unbounded)
    finally:
        await connection.close()


async def test_a_bounded_quorum_queue_drops_the_oldest(rabbit: RabbitBroker) -> None:
    """What the dead queue's overflow does, on a small queue of the same kind."""
    spec = QueueSpec(f"{rabbit.topology.prefix}.bounded", max_length=3, overflow="drop-head")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            spec.name, durable=True, arguments=spec.declare_arguments()
        )
        for i in range(5):
            await channel.default_exchange.publish(
                aio_pika.Message(str(i).encode(), message_id=f"m{i}"), routing_key=spec.name
            )
        kept = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            kept.append(message.message_id)
        assert kept == ["m2", "m3", "m4"]
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
