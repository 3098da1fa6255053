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
* ``dead_letter(reason)`` moves the message to the dead queue and logs the reason. Who
  moves it depends on who may write the dead exchange (``docs/security.md``): on the
  queues only the searcher consumes (events, heartbeats, rpc), the adapter publishes it
  there with the reason, the queue it died in and its validated sender in headers
  (:func:`dead_letter_headers`); everywhere else (the work queues, whose consumers are
  workers) it is rejected (``nack`` without requeue) and the broker's dead-letter exchange
  moves it, adding its own ``x-death`` header; the reason is then in the consumer's log;
* a handler that raises does not lose its message, and cannot spin on it for ever: each
  implementation runs its handlers through a :class:`PoisonGuard`, which puts the message
  back after a failure and, once the handler has raised :data:`DELIVERY_LIMIT` times for
  the same message, dead-letters it with the exception in the reason (a private queue's
  message is dropped instead, with an error in the log; see ``docs/faults.md``, "Poison
  messages").
"""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from rung.broker.errors import BrokerError
from rung.broker.topology import Topology

__all__ = [
    "DEAD_QUEUE_HEADER",
    "DEAD_REASON_HEADER",
    "DEAD_SENDER_HEADER",
    "DELIVERY_LIMIT",
    "ORIGINAL_USER_HEADER",
    "Broker",
    "Delivery",
    "Handler",
    "PoisonGuard",
    "Subscription",
    "body_id",
    "dead_letter_headers",
    "describe",
]

# A dead letter the searcher moved (it alone may write the dead exchange) says why, where
# it died, and who had sent it (the user_id the broker validated, "" if none). Readers
# trust these only on a dead letter whose own validated user_id is the searcher's
# (broker.deadletters): anyone else's are claims.
DEAD_REASON_HEADER = "x-rung-dead-reason"
DEAD_QUEUE_HEADER = "x-rung-dead-queue"
DEAD_SENDER_HEADER = "x-rung-dead-sender"
# On a message an operator sent back with ``rung dlq requeue``: the validated user_id of
# its original sender. The searcher takes it only from an operator or admin, and then
# checks the message as that user's.
ORIGINAL_USER_HEADER = "x-rung-original-user"
# How much of a reason a header carries.
_REASON_CHARS = 1000
# A message whose handler raised this many times is dead-lettered (dropped, on a private
# queue). Failures caused by the link to the broker (or a peer) being down do not count.
DELIVERY_LIMIT = 5

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
    # Whether ack, requeue or dead_letter was called (a second one raises BrokerError).
    settled: bool = field(default=False, init=False)

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def requeue(self) -> None: ...

    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead queue, and say so in the log with ``reason``.

        The log line is where the reason always is (with the message id, the queue and
        the sender); the dead letter carries it too where its mover may write the dead
        exchange (the searcher's queues; see the module's docstring).
        """
        log.warning(
            "message sent to the dead-letter queue",
            message_id=self.message_id or body_id(self.body),
            queue=self.queue,
            sender=self.user_id,
            reason=reason,
        )
        await self._move_to_dead_queue(reason)

    @abstractmethod
    async def _move_to_dead_queue(self, reason: str) -> None: ...

    def link_lost(self) -> bool:
        """Whether the link this delivery came over is gone: the broker delivers the
        message again by itself, and nothing can settle this delivery any more."""
        return False


Handler = Callable[[Delivery], Awaitable[None]]


def body_id(body: bytes) -> str:
    """What a message without a message id is known by: a digest of its body."""
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


def dead_letter_headers(delivery: Delivery, reason: str) -> dict[str, Any]:
    """The headers of a dead letter an adapter publishes itself: the message's own, with
    the reason, the queue it died in and its validated sender put in (overwriting any the
    sender had set: those would be lies)."""
    return {
        **delivery.headers,
        DEAD_REASON_HEADER: reason[:_REASON_CHARS],
        DEAD_QUEUE_HEADER: delivery.queue,
        DEAD_SENDER_HEADER: delivery.user_id or "",
    }


def describe(exc: BaseException) -> str:
    """An exception as a dead letter's reason names it: its type and its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Failures:
    count: int
    last: str  # the last exception, described


class PoisonGuard:
    """Runs a broker's handlers, and keeps a message that makes its handler raise from
    spinning for ever.

    A handler that raises has its message put back in the queue (requeued), as before: a
    handler bug must not lose a message. The guard also counts, per queue and message,
    how many times the handler raised; at ``limit`` it gives up on the message:

    * on a shared queue (work, events, heartbeats, rpc) it is dead-lettered
      (:meth:`Delivery.dead_letter`), with the count and the last exception (type and
      message) in the reason: in the log always, and in ``x-rung-dead-reason`` where the
      searcher moves it;
    * on a private queue (a worker's control queue, a reply or feed queue) it is dropped,
      with an error in the log: such a queue has no dead-letter route (RabbitMQ deletes
      it with its connection, only the searcher's broker user may write to the dead
      exchange, and ``rung dlq requeue`` could not send it back), and every message sent
      there is asked for again by its sender when it goes unanswered;
    * on the dead queue itself it goes back, as always: there is nowhere further to go.

    The count lives in this process (the adapter's memory), keyed by the queue and the
    message id; a message without one is known by a digest of its body. It does not
    survive a restart of the consumer, which only gives a poison message ``limit`` more
    tries, never loses one; where a message kills its consumer outright, the quorum
    queues' own delivery limit (``topology.BROKER_DELIVERY_LIMIT``) ends the loop. The
    counts of the last ``remember`` failed messages are kept; one forgotten starts over.

    A failure is not counted when it is the link's fault, not the message's: when the
    delivery's link to the broker is gone (the broker redelivers it by itself), or when
    the exception (or its ``__cause__``) is a broker error that is also a
    ``ConnectionError`` or a ``TimeoutError`` (the broker unreachable or blocked, a peer
    that did not answer), or one of ``link_errors``. A handler that returns normally
    clears its message's count, so one that fails twice and then succeeds leaves no trace.
    """

    def __init__(
        self,
        *,
        dead_queue: str,
        limit: int = DELIVERY_LIMIT,
        remember: int = 10_000,
        link_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        if limit < 1:
            raise ValueError(f"the delivery limit must be at least 1, not {limit}")
        self.dead_queue = dead_queue
        self.limit = limit
        self.remember = remember
        self.link_errors = link_errors
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    @staticmethod
    def key(delivery: Delivery) -> tuple[str, str]:
        return delivery.queue, delivery.message_id or body_id(delivery.body)

    def failures(self, delivery: Delivery) -> int:
        """How many times this message's handler has raised (and counted)."""
        entry = self._failures.get(self.key(delivery))
        return 0 if entry is None else entry.count

    async def run(self, handler: Handler, delivery: Delivery, *, private: bool = False) -> None:
        key = self.key(delivery)
        spent = self._failures.get(key)
        if spent is not None and spent.count >= self.limit and delivery.queue != self.dead_queue:
            # The handler had settled it itself (requeued it) before it raised for the
            # last time; it is back, and goes no further.
            await self._give_up(delivery, key, spent, private=private)
            return
        try:
            await handler(delivery)
        except Exception as exc:  # noqa: BLE001 (a handler bug must not lose the message)
            await self._failed(delivery, key, exc, private=private)
        else:
            self._failures.pop(key, None)

    def _links_fault(self, delivery: Delivery, exc: BaseException) -> bool:
        if delivery.link_lost():
            return True
        seen: BaseException | None = exc
        for _ in range(8):
            if seen is None:
                return False
            if isinstance(seen, BrokerError) and isinstance(seen, ConnectionError | TimeoutError):
                return True
            if isinstance(seen, self.link_errors):
                return True
            seen = seen.__cause__
        return False

    async def _failed(
        self, delivery: Delivery, key: tuple[str, str], exc: Exception, *, private: bool
    ) -> None:
        if self._links_fault(delivery, exc):
            log.warning(
                "handler failed with the link to the broker down; not counted against the "
                "message, which goes back to the queue",
                queue=delivery.queue,
                message_id=delivery.message_id,
                error=describe(exc),
            )
            await self._put_back(delivery)
            return
        entry = self._failures.pop(key, None) or _Failures(0, "")
        entry.count += 1
        entry.last = describe(exc)
        self._failures[key] = entry  # the most recent last
        while len(self._failures) > self.remember:
            self._failures.popitem(last=False)
        log.error(
            "handler failed" if entry.count < self.limit else "handler failed; limit reached",
            queue=delivery.queue,
            message_id=delivery.message_id,
            failures=entry.count,
            limit=self.limit,
            exc_info=exc,
        )
        if delivery.settled:
            return  # the handler settled it itself; if it comes back spent, it goes no further
        if entry.count >= self.limit and delivery.queue != self.dead_queue:
            await self._give_up(delivery, key, entry, private=private)
        else:
            await self._put_back(delivery)

    async def _give_up(
        self, delivery: Delivery, key: tuple[str, str], entry: _Failures, *, private: bool
    ) -> None:
        reason = (
            f"the handler raised {entry.count} times (the delivery limit is {self.limit}); "
            f"last: {entry.last}"
        )
        if private:
            log.error(
                "poison message dropped: a private queue has no dead-letter queue",
                queue=delivery.queue,
                message_id=delivery.message_id,
                reason=reason,
            )
            self._failures.pop(key, None)
            try:
                await delivery.ack()
            except BrokerError as exc:
                log.warning("could not drop the poison message", error=describe(exc))
            return
        try:
            await delivery.dead_letter(reason)
        except BrokerError as exc:
            # Kept, not lost: back to its queue; it is dead-lettered when it comes again.
            log.exception(
                "could not dead-letter a poison message; it goes back to its queue",
                queue=delivery.queue,
                message_id=delivery.message_id,
                error=describe(exc),
            )
            if not delivery.settled and not delivery.link_lost():
                await asyncio.sleep(1.0)  # whatever refused it, do not ask again at once
            await self._put_back(delivery)
            return
        self._failures.pop(key, None)

    @staticmethod
    async def _put_back(delivery: Delivery) -> None:
        if delivery.settled:
            return
        try:
            await delivery.requeue()
        except BrokerError as exc:
            # The link is gone: the broker delivers the message again by itself.
            log.warning(
                "could not put the message back; the broker will deliver it again",
                queue=delivery.queue,
                message_id=delivery.message_id,
                error=describe(exc),
            )


class Subscription(ABC):
    @abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new deliveries. Those already delivered stay the handler's to
        settle; they go back to the queue only if the connection is lost first."""


class Broker(ABC):
    """A connection to a broker with Rung's topology declared."""

    topology: Topology
    # Runs the handlers of every subscription; counts their failures per message.
    guard: PoisonGuard
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
    async def subscribe(
        self, queue: str, handler: Handler, *, prefetch: int, priority: int = 0
    ) -> Subscription:
        """Consume ``queue``, at most ``prefetch`` deliveries unsettled at a time. Among a
        queue's consumers with room, those of the highest ``priority`` get its messages
        first (RabbitMQ's consumer priorities, ``x-priority``); a lower one gets a message
        only while every higher one is full."""

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
