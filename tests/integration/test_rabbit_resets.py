"""The RabbitMQ adapter across connection resets, through a TCP proxy that sends RST."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from rung.broker import Delivery, RabbitBroker, Topology
from rung.broker.errors import BrokerError
from tests.proxy import FaultProxy
from tests.support import unique_prefix, wait_for

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def broker(proxy: FaultProxy) -> AsyncIterator[RabbitBroker]:
    instance = RabbitBroker(
        proxy.url("heartbeat=2"), Topology(unique_prefix()), name="resets", retry_interval=0.2
    )
    await instance.start()
    try:
        yield instance
    finally:
        with contextlib.suppress(BrokerError):
            await instance.delete_topology()
        await instance.close()


async def test_a_handler_under_way_runs_to_its_end_across_a_reset(
    broker: RabbitBroker, proxy: FaultProxy
) -> None:
    """aiormq cancels its channels' tasks when the connection drops; a handler must not be
    cancelled with them half-way (a worker's trial start, announced and never run, held
    its slot for good). It finishes; its ack is refused; the message comes again."""
    topology = broker.topology
    release = asyncio.Event()
    calls: list[str] = []

    async def handler(delivery: Delivery) -> None:
        call = len([c for c in calls if c.startswith("in")]) + 1
        calls.append(f"in {call}")
        await release.wait()
        calls.append(f"out {call}")
        with contextlib.suppress(BrokerError):
            await delivery.ack()

    await broker.subscribe(topology.work_queue, handler, prefetch=1)
    await broker.publish(topology.commands_exchange, topology.WORK_KEY, b"{}", message_id="m1")
    await wait_for(lambda: calls == ["in 1"], 10, "the handler under way")
    accepted = proxy.connections
    assert proxy.reset() >= 2
    # Both connections come back (the old channels' tasks are cancelled by then), and the
    # unacknowledged message is delivered again.
    await wait_for(lambda: proxy.connections >= accepted + 2, 20, "the reconnection")
    await wait_for(lambda: "in 2" in calls, 20, "the message delivered again")
    release.set()
    await wait_for(lambda: "out 2" in calls, 10, "the second call's end")
    assert "out 1" in calls  # the first call ran to its end too, not cancelled half-way
