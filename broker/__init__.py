"""Message schemas, topology and the broker port with its two implementations.

Nothing is imported until it is used: the message schemas (``rung.broker.schemas``) are
shared with the pure search core and with training processes, which must load neither
aio-pika nor the adapters (``tests/unit/searcher/test_purity.py`` checks it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rung.broker.errors import (
        BrokerError,
        BrokerSettingsError,
        BrokerUnavailableError,
        DecodeError,
        MessageTooLargeError,
        PublishTimeoutError,
        UnroutableError,
    )
    from rung.broker.memory import MemoryBroker
    from rung.broker.port import DEAD_REASON_HEADER, Broker, Delivery, Handler, Subscription
    from rung.broker.rabbit import RabbitBroker, redact
    from rung.broker.tls import TlsSettings
    from rung.broker.topology import Topology

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
    "MessageTooLargeError",
    "PublishTimeoutError",
    "RabbitBroker",
    "Subscription",
    "TlsSettings",
    "Topology",
    "UnroutableError",
    "connect_broker",
    "redact",
]

# Where each public name lives, imported on first use.
_HOMES = {
    **dict.fromkeys(
        (
            "BrokerError",
            "BrokerSettingsError",
            "BrokerUnavailableError",
            "DecodeError",
            "MessageTooLargeError",
            "PublishTimeoutError",
            "UnroutableError",
        ),
        "errors",
    ),
    **dict.fromkeys(
        ("DEAD_REASON_HEADER", "Broker", "Delivery", "Handler", "Subscription"), "port"
    ),
    "MemoryBroker": "memory",
    "RabbitBroker": "rabbit",
    "redact": "rabbit",
    "TlsSettings": "tls",
    "Topology": "topology",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rung.broker' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rung.broker.{home}"), name)


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
            from rung.broker.errors import BrokerSettingsError  # noqa: PLC0415

            raise BrokerSettingsError(
                f"{', '.join(tls.given)} given without a broker URL; TLS options apply to "
                "an amqps:// --broker URL"
            )
        from rung.broker.memory import MemoryBroker  # noqa: PLC0415

        return MemoryBroker(topology)
    from rung.broker.rabbit import RabbitBroker  # noqa: PLC0415

    return RabbitBroker(url, topology, name=name, tls=tls)
