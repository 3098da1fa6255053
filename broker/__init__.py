"""Message schemas, topology and the broker port with its two implementations."""

from broker.errors import (
    BrokerError,
    BrokerSettingsError,
    BrokerUnavailableError,
    DecodeError,
    PublishTimeoutError,
    UnroutableError,
)
from broker.memory import MemoryBroker
from broker.port import DEAD_REASON_HEADER, Broker, Delivery, Handler, Subscription
from broker.rabbit import RabbitBroker, redact
from broker.tls import TlsSettings
from broker.topology import Topology

__all__ = [
    "DEAD_REASON_HEADER",
    "Broker",
    "BrokerError",
    "BrokerSettingsError",
    "BrokerUnavailableError",
    "DecodeError",
    "Delivery",
    "Handler",
    "MemoryBroker",
    "PublishTimeoutError",
    "RabbitBroker",
    "Subscription",
    "TlsSettings",
    "Topology",
    "UnroutableError",
    "connect_broker",
    "redact",
]


def connect_broker(
    url: str | None,
    topology: Topology | None = None,
    *,
    name: str = "rung",
    tls: TlsSettings | None = None,
) -> Broker:
    """RabbitMQ for an ``amqp://`` or ``amqps://`` URL; the in-memory broker for None."""
    if url is None or url in ("memory", "memory://"):
        if tls is not None and tls.given:
            raise BrokerSettingsError(
                f"{', '.join(tls.given)} given without a broker URL; TLS options apply to "
                "an amqps:// --broker URL"
            )
        return MemoryBroker(topology)
    return RabbitBroker(url, topology, name=name, tls=tls)
