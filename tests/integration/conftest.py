"""Brokers for the conformance suite: the in-memory one and the real local RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rung.broker import Broker, MemoryBroker, RabbitBroker, Topology
from tests.support import AMQP_URL, unique_prefix


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    topology = Topology(unique_prefix())
    instance: Broker
    if request.param == "memory":
        instance = MemoryBroker(topology)
    else:
        instance = RabbitBroker(AMQP_URL, topology, name=request.node.name)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.delete_topology()
        await instance.close()
