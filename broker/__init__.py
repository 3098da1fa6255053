"""Message schemas, topology and the broker port with its two implementations."""

from broker.errors import (
    BrokerError,
    BrokerUnavailableError,
    DecodeError,
    PublishTimeoutError,
    UnroutableError,
)
from broker.memory import MemoryBroker
from broker.port import DEAD_REASON_HEADER, Broker, Delivery, Handler, Subscription
from broker.rabbit import RabbitBroker, redact
from broker.topology import Topology

__all__ = [
    "DEAD_REASON_HEADER",
    "Broker",
    "BrokerError",
    "BrokerUnavailableError",
    "DecodeError",
    "Delivery",
    "Handler",
    "MemoryBroker",
    "PublishTimeoutError",
    "RabbitBroker",
    "Subscription",
    "Topology",
    "UnroutableError",
    "connect_broker",
    "redact",
]


def connect_broker(
    url: str | None, topology: Topology | None = None, *, name: str = "rung"
) -> Broker:
    """RabbitMQ for an ``amqp://`` or ``amqps://`` URL; the in-memory broker for None."""
    if url is None or url in ("memory", "memory://"):
        return MemoryBroker(topology)
    return RabbitBroker(url, topology, name=name)
