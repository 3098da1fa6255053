"""The broker port: what Rung needs from a message broker, and nothing more.

Two implementations: :mod:`broker.rabbit` (RabbitMQ through aio-pika) and
:mod:`broker.memory` (in-process, for zero-setup local runs and fast tests). One
conformance suite (``tests/integration/test_broker_conformance.py``) runs against both.

Semantics every implementation keeps:

* ``publish`` returns only once the broker has the message (publisher confirm), is
  mandatory unless asked otherwise (a message no queue takes raises
  :class:`UnroutableError`) and persistent;
* a delivery stays owned by the consumer until ``ack``, ``requeue`` or ``dead_letter``;
* at most ``prefetch`` deliveries are in a subscription's handlers at once;
* ``dead_letter(reason)`` moves the message to the dead queue with the reason in the
  ``x-rung-dead-reason`` header.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from rung.broker.topology import Topology

__all__ = ["DEAD_REASON_HEADER", "Broker", "Delivery", "Handler", "Subscription"]

DEAD_REASON_HEADER = "x-rung-dead-reason"

log = structlog.get_logger("rung.broker")


@dataclass
class Delivery(ABC):
    body: bytes
    message_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False
    queue: str = ""
    # The publisher's user, as the broker validated it (RabbitMQ refuses a message whose
    # user_id is not its connection's user); None where nobody vouches for it.
    user_id: str | None = None

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def requeue(self) -> None: ...

    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead queue with ``reason``, and say so in the log."""
        log.warning(
            "message sent to the dead-letter queue",
            message_id=self.message_id,
            queue=self.queue,
            reason=reason,
        )
        await self._move_to_dead_queue(reason)

    @abstractmethod
    async def _move_to_dead_queue(self, reason: str) -> None: ...


Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(ABC):
    @abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new deliveries. Those already delivered stay the handler's to
        settle; they go back to the queue only if the connection is lost first."""


class Broker(ABC):
    """A connection to a broker with Rung's topology declared."""

    topology: Topology
    # The broker user this connection authenticates as, when known; the RabbitMQ broker
    # stamps it on every message as the validated ``user_id``.
    username: str | None = None

    @abstractmethod
    async def start(self) -> None:
        """Connect (retrying while the broker is unreachable) and declare the topology."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        timeout: float = 30.0,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the confirm. ``mandatory=False`` drops a message no queue
        takes instead of raising (for live feeds nobody may be listening to)."""

    @abstractmethod
    async def subscribe(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription: ...

    @abstractmethod
    async def declare_private_queue(self, bind_to: tuple[str, str] | None = None) -> str:
        """A queue only this connection uses, deleted when it closes; optionally bound."""

    @abstractmethod
    async def delete_private_queue(self, name: str) -> None: ...

    @abstractmethod
    async def delete_topology(self) -> None:
        """Remove every queue and exchange of the topology (tests, uninstall)."""

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
