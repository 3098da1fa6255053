"""The dead-letter queue, for people: see what is there, and send one back after a fix.

A message that could not be handled (malformed JSON, an unknown type, a wrong schema
version, a refused input, a handler that raised ``DELIVERY_LIMIT`` times) ends in the dead
queue in one of two ways, and only these two (``docs/security.md``):

* **moved by the searcher**, the one role that may write the dead exchange: the message
  with its reason, the queue it died in and the validated ``user_id`` of its sender in
  headers (``broker.port.dead_letter_headers``), published as the searcher's own user;
* **moved by the broker**: a work queue's consumer (a worker) rejected it, or it was
  delivered more than the queue's delivery limit; RabbitMQ's dead-letter exchange moves
  it, puts its own ``x-death`` entry first (the queue, and ``rejected`` or
  ``delivery_limit``), and leaves the sender's ``user_id`` as the broker validated it.
  The reason of a rejection is in the consumer's log.

Everything else in a message is a claim of whoever sent it. :class:`DeadLetter` reads a
dead letter's origin only from what the broker vouches for: the Rung headers only on a
dead letter whose validated ``user_id`` is the searcher's; else the first ``x-death``
entry (never ``x-first-death-*``, which the broker leaves as a sender wrote them) and the
validated ``user_id``. ``peek`` lists them and leaves them there; ``requeue`` sends one
back, and refuses what it cannot vouch for: a letter neither the searcher nor the broker
moved, one that does not decode, a message whose type does not belong to the queue it
died in, a command (``run_trial``) the searcher did not send. Nothing a worker or client
sent ever becomes a command. A command goes back through the searcher, the one role that
writes the commands exchange: ``requeue`` asks it (``ResendCommand``) to publish again
what its log holds under the letter's message id. An event or request goes back with its
original sender in ``x-rung-original-user``, for the searcher to check it as that user's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from rung.broker.errors import BrokerError, DecodeError
from rung.broker.port import (
    DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER,
    DEAD_SENDER_HEADER,
    ORIGINAL_USER_HEADER,
    Broker,
    Delivery,
    Subscription,
)
from rung.broker.rpc import RpcClient, RpcTimeoutError
from rung.broker.schemas import (
    CheckpointSaved,
    CloseTrial,
    ContinueTrial,
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    DeleteCheckpoints,
    DescribeExperiment,
    GetContext,
    KillTrial,
    ListExperiments,
    ListWorkers,
    LogLines,
    MetricsReported,
    OpCompleted,
    PauseTrial,
    PreemptTrial,
    ProgressReported,
    ReadRecords,
    ReadTrialLogs,
    RunTrial,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
    WorkerLost,
    decode,
)
from rung.broker.schemas.rpc import ResendCommand

__all__ = [
    "DEAD_QUEUE_HEADER",
    "DeadLetter",
    "DeadLetterError",
    "MovedBy",
    "peek",
    "requeue",
    "searcher_user_for",
]

# What RabbitMQ adds when it dead-letters a message itself, and counts on delivery; and
# what Rung adds to a dead letter: never sent back with a requeued message, which starts
# afresh (its original sender is set again, from what the broker vouched for).
_DEAD_HEADERS = (
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    "x-delivery-count",
    DEAD_REASON_HEADER,
    DEAD_QUEUE_HEADER,
    DEAD_SENDER_HEADER,
    ORIGINAL_USER_HEADER,
)
# More than this many are listed in part: a dead queue that long needs a look anyway.
LIMIT = 1000

# What may go back where: the types each queue's consumer takes.
_EVENTS = (
    TrialStarted,
    ProgressReported,
    MetricsReported,
    OpCompleted,
    CheckpointSaved,
    TrialExited,
    LogLines,
    WorkerHeartbeat,
    WorkerLost,
)
_REQUESTS = (
    CreateExperiment,
    DescribeExperiment,
    ListExperiments,
    GetContext,
    ControlExperiment,
    ControlTrial,
    ReadRecords,
    ReadTrialLogs,
    ListWorkers,
)

# What only the searcher sends: sent back by the searcher itself (ResendCommand).
_COMMANDS = (
    RunTrial,
    ContinueTrial,
    PauseTrial,
    CloseTrial,
    PreemptTrial,
    KillTrial,
    DeleteCheckpoints,
)

# How a dead letter's origin is known: "searcher" (it moved it, and the broker validated
# that it did), "broker" (its own dead-lettering: x-death), "unknown" (neither: its
# headers are claims, and nothing of it is sent back).
MovedBy = Literal["searcher", "broker", "unknown"]


class DeadLetterError(BrokerError):
    """A dead letter that cannot be found or sent back."""


def searcher_user_for(operator_user: str | None) -> str:
    """The searcher's broker user, as ``broker.definitions`` names it beside an operator's
    (``<prefix>operator`` -> ``<prefix>searcher``); ``guest`` beside ``guest`` (a
    development broker where one user plays every role); ``rung-searcher`` otherwise."""
    if operator_user == "guest":
        return operator_user
    if operator_user and operator_user.endswith("operator"):
        return operator_user[: -len("operator")] + "searcher"
    return "rung-searcher"


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    reason: str
    queue: str  # the queue it died in
    type: str | None  # the body's type, when the message decodes now
    size: int
    # The validated user_id of the message's original sender; "" where nobody vouches.
    sender: str
    moved_by: MovedBy

    @classmethod
    def of(
        cls, delivery: Delivery, *, searcher_user: str | None, operator_user: str | None = None
    ) -> DeadLetter:
        """What the broker vouches for about ``delivery``, a message of the dead queue.

        ``searcher_user``: the searcher's broker user, whose dead letters' headers are
        believed. ``operator_user``: the user reading them, whose own ``requeue`` named
        the original sender of a message that died again (``x-rung-original-user``).
        """
        try:
            kind: str | None = decode(delivery.body).body.type
        except DecodeError:
            kind = None
        headers = delivery.headers
        validated = delivery.user_id or ""
        death = _first_death(headers)
        moved_by: MovedBy
        if validated and validated == searcher_user and DEAD_QUEUE_HEADER in headers:
            moved_by = "searcher"
            queue = _text(headers.get(DEAD_QUEUE_HEADER))
            reason = _text(headers.get(DEAD_REASON_HEADER))
            sender = _text(headers.get(DEAD_SENDER_HEADER))
        elif death is not None:
            moved_by = "broker"
            queue = _text(death.get("queue"))
            why = _text(death.get("reason"))
            reason = f"{why} (dead-lettered by the broker)"
            if why == "rejected":
                reason += "; the reason is in the log of the consumer of " + (queue or "it")
            sender = validated
        else:
            # Published to the dead exchange by someone else (an admin, a tool): its
            # headers are shown for what they are, and nothing of it is sent back.
            moved_by = "unknown"
            queue = _text(headers.get(DEAD_QUEUE_HEADER))
            reason = _text(headers.get(DEAD_REASON_HEADER))
            sender = validated
        if operator_user and sender == operator_user:
            # Sent back by this operator before, and dead again: its original sender is
            # what the operator's requeue named (the broker validated the operator).
            sender = _text(headers.get(ORIGINAL_USER_HEADER)) or sender
        return cls(
            message_id=delivery.message_id or "",
            reason=reason,
            queue=queue,
            type=kind,
            size=len(delivery.body),
            sender=sender,
            moved_by=moved_by,
        )


def _first_death(headers: dict[str, Any]) -> dict[str, Any] | None:
    """The broker's latest dead-lettering of the message: the first ``x-death`` entry
    (RabbitMQ puts its own first, whatever a sender put in the header)."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list | tuple) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


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


async def peek(
    broker: Broker, *, searcher_user: str | None = None, quiet_s: float = 0.5
) -> list[DeadLetter]:
    """The dead letters (the first 1,000), left in the queue.

    ``searcher_user``: the searcher's broker user (default: this connection's own, as in
    a set-up where every process uses one user).
    """
    searcher = broker.username if searcher_user is None else searcher_user
    held, subscription = await _hold_all(broker, quiet_s)
    await _put_back(held, subscription)
    return [DeadLetter.of(d, searcher_user=searcher, operator_user=broker.username) for d in held]


async def _put_back(held: list[Delivery], subscription: Subscription) -> None:
    await subscription.cancel()  # first, or they would come straight back to us
    for delivery in held:
        await delivery.requeue()


def _destination(
    broker: Broker, letter: DeadLetter, delivery: Delivery, searcher_user: str
) -> tuple[str, str]:
    """Where ``letter`` may go back to, as (exchange, routing key); else why not."""
    t = broker.topology
    name = f"dead letter {letter.message_id!r}"
    if letter.moved_by == "unknown":
        raise DeadLetterError(
            f"{name} was moved to the dead queue neither by the searcher ({searcher_user!r}) "
            f"nor by the broker (it was published by {letter.sender or 'an unknown user'!r}):"
            " its reason and origin are claims, and rung dlq sends none of it back"
        )
    try:
        body = decode(delivery.body).body
    except DecodeError as exc:
        raise DeadLetterError(
            f"{name} does not decode ({exc}): only a valid message goes back"
        ) from None
    if not letter.sender:
        raise DeadLetterError(
            f"{name} has no validated sender (no user_id): nobody vouches for it, and it "
            "is not sent back"
        )
    if isinstance(body, _COMMANDS):
        if letter.queue in (t.events_queue, t.rpc_queue, t.heartbeats_queue, t.dead_queue):
            raise DeadLetterError(
                f"{name} is a {body.type} that died in {letter.queue or 'an unknown queue'}, "
                "not in a work queue or a worker's control queue: it is not sent anywhere"
            )
        if letter.sender != searcher_user:
            raise DeadLetterError(
                f"{name} is a {body.type} sent by {letter.sender!r}, not by the searcher "
                f"({searcher_user!r}): only the searcher's commands are sent back, and "
                "nothing anyone else sent ever becomes a command"
            )
        return t.commands_exchange, ""  # the searcher sends it again: ResendCommand
    if letter.queue == t.events_queue and isinstance(body, _EVENTS):
        return t.events_exchange, t.EVENTS_KEY
    if letter.queue == t.rpc_queue and isinstance(body, _REQUESTS):
        return t.rpc_exchange, t.RPC_KEY
    raise DeadLetterError(
        f"{name} is a {body.type} that died in {letter.queue or 'an unknown queue'}: rung dlq "
        f"sends back a run_trial to its work queue (if the searcher sent it), an event to "
        f"{t.events_queue} and a request to {t.rpc_queue}, nothing else"
    )


async def _resend_command(broker: Broker, message_id: str, timeout_s: float) -> None:
    """Ask the searcher to publish again the command it logged as ``message_id``."""
    rpc = RpcClient(broker)
    try:
        reply = await rpc.call(ResendCommand(message_id=message_id), timeout=timeout_s)
    except RpcTimeoutError as exc:
        raise DeadLetterError(
            f"command {message_id!r} goes back through the searcher, which did not answer: {exc}"
        ) from None
    if not reply.ok:
        why = reply.error.message if reply.error is not None else "no reason given"
        raise DeadLetterError(f"the searcher did not send command {message_id!r} again: {why}")


async def requeue(
    broker: Broker,
    message_id: str,
    *,
    searcher_user: str | None = None,
    quiet_s: float = 0.5,
    rpc_timeout_s: float = 30.0,
) -> DeadLetter:
    """Send one dead letter back to the queue it died in; it leaves the dead queue.

    An event or request goes out as this connection's user (an operator), with the
    validated user_id of its original sender in ``x-rung-original-user``. A command the
    searcher sent goes back through the searcher: it publishes again the command its log
    holds under the letter's message id (``ResendCommand``; an operator may not write the
    commands exchange). Raises :class:`DeadLetterError`, with the reason, for what may
    not go back; the letter then stays in the dead queue.
    """
    searcher = broker.username if searcher_user is None else searcher_user
    held, subscription = await _hold_all(broker, quiet_s)
    try:
        match = next((d for d in held if d.message_id == message_id), None)
        if match is None:
            known = ", ".join(d.message_id or "?" for d in held[:10]) or "none"
            raise DeadLetterError(
                f"no dead letter with id {message_id!r} (dead letters: {known}); see rung dlq list"
            )
        letter = DeadLetter.of(match, searcher_user=searcher, operator_user=broker.username)
        exchange, key = _destination(broker, letter, match, searcher or "")
        if exchange == broker.topology.commands_exchange:
            await _resend_command(broker, message_id, rpc_timeout_s)
        else:
            headers = {k: v for k, v in match.headers.items() if k not in _DEAD_HEADERS}
            headers[ORIGINAL_USER_HEADER] = letter.sender
            await broker.publish(exchange, key, match.body, message_id=message_id, headers=headers)
        await match.ack()
        held.remove(match)
        return letter
    finally:
        await _put_back(held, subscription)
