"""The dead-letter queue, for people: see what is there, and send one back after a fix.

A message that could not be handled (malformed JSON, an unknown type, a wrong schema
version, a refused input, a handler that raised ``DELIVERY_LIMIT`` times) is moved to the
dead queue with the reason and the queue it died in. One the broker dead-lettered itself
(its quorum queue's delivery limit) carries RabbitMQ's ``x-death`` headers instead, which
are read the same way. ``peek`` lists them and leaves them there; ``requeue`` sends one
back to the queue it came from and removes it from the dead queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from rung.broker.errors import BrokerError, DecodeError
from rung.broker.port import DEAD_REASON_HEADER, Broker, Delivery, Subscription
from rung.broker.schemas import decode

__all__ = ["DEAD_QUEUE_HEADER", "DeadLetter", "DeadLetterError", "peek", "requeue"]

DEAD_QUEUE_HEADER = "x-rung-dead-queue"
# What RabbitMQ adds when it dead-letters a message itself, and counts on delivery: not
# sent back with a requeued message, which starts afresh.
_BROKER_HEADERS = (
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    "x-delivery-count",
)
# More than this many are listed in part: a dead queue that long needs a look anyway.
LIMIT = 1000


class DeadLetterError(BrokerError):
    """A dead letter that cannot be found or sent back."""


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    reason: str
    queue: str
    type: str | None  # the body's type, when the message decodes now
    size: int

    @classmethod
    def of(cls, delivery: Delivery) -> DeadLetter:
        try:
            kind: str | None = decode(delivery.body).body.type
        except DecodeError:
            kind = None
        headers = delivery.headers
        reason = _text(headers.get(DEAD_REASON_HEADER))
        queue = _text(headers.get(DEAD_QUEUE_HEADER))
        if not reason and (broker_reason := _text(headers.get("x-first-death-reason"))):
            # Dead-lettered by the broker itself (delivery_limit, say), not by Rung.
            reason = f"{broker_reason} (dead-lettered by the broker)"
            queue = queue or _text(headers.get("x-first-death-queue"))
        return cls(
            message_id=delivery.message_id or "",
            reason=reason,
            queue=queue,
            type=kind,
            size=len(delivery.body),
        )


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def _hold_all(broker: Broker, quiet_s: float) -> tuple[list[Delivery], Subscription]:
    """Take every dead letter without settling it (``_put_back`` returns them).

    The broker hands over what is ready at once (up to the prefetch), so the letters are
    all here once none has come for ``quiet_s``. (RabbitMQ 3.10 reports no message count
    for a quorum queue in its declare reply, so there is no count to wait for.)
    """
    held: list[Delivery] = []
    arrived = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)
        arrived.set()

    subscription = await broker.subscribe(broker.topology.dead_queue, hold, prefetch=LIMIT)
    while True:
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), quiet_s)
        except TimeoutError:
            return held, subscription
        if len(held) >= LIMIT:
            return held, subscription


async def peek(broker: Broker, *, quiet_s: float = 0.5) -> list[DeadLetter]:
    """The dead letters (the first 1,000), left in the queue."""
    held, subscription = await _hold_all(broker, quiet_s)
    await _put_back(held, subscription)
    return [DeadLetter.of(d) for d in held]


async def _put_back(held: list[Delivery], subscription: Subscription) -> None:
    await subscription.cancel()  # first, or they would come straight back to us
    for delivery in held:
        await delivery.requeue()


def _route(broker: Broker, queue: str) -> tuple[str, str]:
    t = broker.topology
    routes = {
        t.events_queue: (t.events_exchange, t.EVENTS_KEY),
        t.rpc_queue: (t.rpc_exchange, t.RPC_KEY),
        t.work_queue: (t.commands_exchange, t.WORK_KEY),
    }
    if queue not in routes:
        raise DeadLetterError(
            f"the message died in {queue or 'an unknown queue'}, which rung dlq cannot send "
            f"back to; it sends back to {', '.join(sorted(routes))}"
        )
    return routes[queue]


async def requeue(broker: Broker, message_id: str, *, quiet_s: float = 0.5) -> DeadLetter:
    """Send one dead letter back to the queue it died in; it leaves the dead queue."""
    held, subscription = await _hold_all(broker, quiet_s)
    try:
        match = next((d for d in held if d.message_id == message_id), None)
        if match is None:
            known = ", ".join(d.message_id or "?" for d in held[:10]) or "none"
            raise DeadLetterError(
                f"no dead letter with id {message_id!r} (dead letters: {known}); see rung dlq list"
            )
        letter = DeadLetter.of(match)
        exchange, key = _route(broker, letter.queue)
        headers = {
            k: v
            for k, v in match.headers.items()
            if k not in (DEAD_REASON_HEADER, DEAD_QUEUE_HEADER, *_BROKER_HEADERS)
        }
        await broker.publish(exchange, key, match.body, message_id=message_id, headers=headers)
        await match.ack()
        held.remove(match)
        return letter
    finally:
        await _put_back(held, subscription)
