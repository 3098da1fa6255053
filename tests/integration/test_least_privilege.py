"""The least-privilege users of deploy/rabbitmq, against the real broker: what a worker
user is refused, and the searcher refusing a worker that speaks for another."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import pytest

from rung.broker import RabbitBroker
from rung.broker.definitions import definitions
from rung.broker.schemas import ProgressReported
from rung.broker.schemas.envelope import Envelope, encode
from rung.searcher.service.service import SearcherService
from tests.least_privilege import LeastPrivilege, least_privilege_vhost
from tests.support import wait_for, wait_for_async

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lp() -> Iterator[LeastPrivilege]:
    """One vhost for the module: each rabbitmqctl call costs most of a second."""
    yield from least_privilege_vhost()


@pytest.fixture
async def w1(lp: LeastPrivilege) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(lp.url(lp.workers[0]))
    yield connection
    await connection.close()


Attempt = Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]


async def _refused(connection: aio_pika.abc.AbstractConnection, attempt: Attempt) -> str:
    """Run ``attempt`` on a channel of its own; return the broker's refusal."""
    channel = await connection.channel(publisher_confirms=True)

    async def attempt_and_close() -> None:
        await attempt(channel)
        await asyncio.wait_for(channel.close(), 10)  # a refusal may come after the call

    with pytest.raises(aiormq.exceptions.AMQPError) as refused:
        await attempt_and_close()
    return str(refused.value)


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that takes nothing: the test is whether it may consume at all."""
    await message.reject(requeue=True)


def _message(body: bytes = b"{}", **properties: Any) -> aio_pika.Message:
    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties)


def test_the_committed_definitions_are_the_topologys() -> None:
    """deploy/rabbitmq/definitions.json is `rung broker-definitions`, so they cannot drift."""
    from rung.broker.topology import Topology

    committed = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    assert committed == definitions(Topology("rung"))


async def test_a_worker_user_cannot_publish_operations(
    lp: LeastPrivilege, w1: aio_pika.abc.AbstractConnection
) -> None:
    t = lp.topology

    async def on_commands(channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(t.commands_exchange, ensure=False)
        await exchange.publish(_message(), t.WORK_KEY)

    async def on_default(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.default_exchange.publish(_message(), t.work_queue)

    assert "ACCESS_REFUSED" in await _refused(w1, on_commands)
    assert "amq.default" in await _refused(w1, on_default)


async def test_a_worker_user_cannot_read_what_is_not_its_own(
    lp: LeastPrivilege, w1: aio_pika.abc.AbstractConnection
) -> None:
    t = lp.topology
    own, other = lp.workers

    async def bind(key: str) -> Attempt:
        async def attempt(channel: aio_pika.abc.AbstractChannel) -> None:
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(t.commands_exchange, key)

        return attempt

    async def read_events(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.get_queue(t.events_queue, ensure=False)
        await queue.consume(_ignore)

    # Another worker's control commands: its binding key is refused (topic permissions),
    # and its queue is exclusive to its connection.
    assert "ACCESS_REFUSED" in await _refused(w1, await bind(t.worker_key(other)))
    w2 = await aio_pika.connect(lp.url(other))
    try:
        theirs = await (await w2.channel()).declare_queue(exclusive=True)
        await theirs.bind(t.commands_exchange, t.worker_key(other))

        async def consume_theirs(channel: aio_pika.abc.AbstractChannel) -> None:
            queue = await channel.get_queue(theirs.name, ensure=False)
            await queue.consume(_ignore)

        assert "RESOURCE_LOCKED" in await _refused(w1, consume_theirs)
    finally:
        await w2.close()
    assert "ACCESS_REFUSED" in await _refused(w1, read_events)
    # What is its own works: its control key, and the work queue.
    channel = await w1.channel()
    mine = await channel.declare_queue(exclusive=True)
    await mine.bind(t.commands_exchange, t.worker_key(own))
    work = await channel.get_queue(t.work_queue, ensure=False)
    tag = await work.consume(_ignore)
    await work.cancel(tag)


async def test_nobody_but_the_searcher_writes_the_dead_exchange(lp: LeastPrivilege) -> None:
    """Review finding #8 (probe P10): the worker role could publish to the dead exchange,
    so a forged dead letter could be made to look like a dead run_trial. Now no role but
    the searcher's may: a worker's dead letters are moved by the broker (a rejection)."""
    t = lp.topology

    async def to_dead(channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(t.dead_exchange, ensure=False)
        await exchange.publish(_message(headers={"x-rung-dead-queue": t.work_queue}), "")

    for user in (*lp.workers, lp.user("client"), lp.user("operator")):
        connection = await aio_pika.connect(lp.url(user))
        try:
            refusal = await _refused(connection, to_dead)
        finally:
            await connection.close()
        assert "ACCESS_REFUSED" in refusal, user
        assert t.dead_exchange in refusal, user


async def test_the_operator_takes_dead_letters_and_sends_back_only_events_and_requests(
    lp: LeastPrivilege,
) -> None:
    """The operator role: it reads and purges the dead queue, and writes only what rung
    dlq requeue sends: events with the key ``events``, requests (a dead command goes back
    through the searcher: ResendCommand). Never a command with any key, a heartbeat, an
    event in a worker's name."""
    t = lp.topology
    operator = await aio_pika.connect(lp.url(lp.user("operator")))
    try:
        channel = await operator.channel(publisher_confirms=True)
        dead = await channel.get_queue(t.dead_queue, ensure=False)
        tag = await dead.consume(_ignore)
        await dead.cancel(tag)
        await dead.purge()
        events = await channel.get_exchange(t.events_exchange, ensure=False)
        own = _message(user_id=lp.user("operator"))
        await events.publish(own, t.EVENTS_KEY)  # confirmed: allowed, and routed

        def publish(exchange_name: str, key: str) -> Attempt:
            async def attempt(channel: aio_pika.abc.AbstractChannel) -> None:
                exchange = await channel.get_exchange(exchange_name, ensure=False)
                await exchange.publish(_message(), key)

            return attempt

        async def read(queue_name: str) -> Attempt:
            async def attempt(channel: aio_pika.abc.AbstractChannel) -> None:
                queue = await channel.get_queue(queue_name, ensure=False)
                await queue.consume(_ignore)

            return attempt

        w1 = lp.workers[0]
        for exchange_name, key in (
            (t.commands_exchange, t.WORK_KEY),
            (t.commands_exchange, t.work_key(2)),
            (t.commands_exchange, t.worker_key(w1)),
            (t.events_exchange, t.events_key(w1)),
            (t.events_exchange, t.heartbeat_key(w1)),
            (t.dead_exchange, ""),
        ):
            assert "ACCESS_REFUSED" in await _refused(operator, publish(exchange_name, key)), key
        for queue_name in (t.work_queue, t.events_queue, t.rpc_queue):
            assert "ACCESS_REFUSED" in await _refused(operator, await read(queue_name)), queue_name
    finally:
        await operator.close()
    # What the operator sent to the work queue: taken away, so that other tests find none.
    drain = await aio_pika.connect(_guest_url(lp))
    try:
        channel = await drain.channel()
        for name in t.work_queues:
            await (await channel.get_queue(name, ensure=False)).purge()
        await (await channel.get_queue(t.events_queue, ensure=False)).purge()
    finally:
        await drain.close()


async def test_a_worker_user_cannot_speak_for_another(
    lp: LeastPrivilege, w1: aio_pika.abc.AbstractConnection
) -> None:
    t = lp.topology
    own, other = lp.workers

    async def events_as(key_worker: str, user_id: str) -> Attempt:
        async def attempt(channel: aio_pika.abc.AbstractChannel) -> None:
            exchange = await channel.get_exchange(t.events_exchange, ensure=False)
            await exchange.publish(_message(user_id=user_id), t.events_key(key_worker))

        return attempt

    # Another worker's routing key: refused by topic permissions.
    assert "ACCESS_REFUSED" in await _refused(w1, await events_as(other, own))
    # Its own key but another's user_id: the broker validates user_id.
    assert "PRECONDITION_FAILED" in await _refused(w1, await events_as(own, other))


async def test_the_searcher_refuses_an_event_whose_worker_is_not_its_sender(
    lp: LeastPrivilege, tmp_path: Path
) -> None:
    """The one thing the broker cannot check: the worker id inside the message."""
    own, other = lp.workers
    searcher = RabbitBroker(lp.url(lp.user("searcher")), lp.topology, name="lp-searcher")
    worker = RabbitBroker(lp.url(own), lp.topology, name="lp-worker")
    await searcher.start()
    await worker.start()
    service = SearcherService(searcher, tmp_path / "state", verify_worker_users=True)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        async with _dead_letters(lp) as dead:
            truth = f"{own}/0123456789ab/1"  # named as a worker names its events
            for message_id, worker_id in (("lie-1", other), (truth, own)):
                body = ProgressReported(
                    experiment_id="exp-x", trial_id=1, attempt=1, worker_id=worker_id, units=1
                )
                envelope = Envelope(message_id=message_id, experiment_id="exp-x", body=body)
                await worker.publish(  # its own key and user: the broker lets both through
                    lp.topology.events_exchange,
                    lp.topology.events_key(own),
                    encode(envelope),
                    message_id=message_id,
                )
            await wait_for(lambda: "lie-1" in dead, 30, "the lie in the dead-letter queue")
            assert f"was sent by broker user {own!r}" in dead["lie-1"]
            # The truthful one was taken (for an experiment the searcher does not know,
            # it is dropped, not dead-lettered): the queue drains.
            await wait_for_async(
                lambda: _queue_empty(lp, lp.topology.events_queue), 30, "the events queue drained"
            )
            assert truth not in dead
    finally:
        stop.set()
        await task
        await worker.close()
        await searcher.close()


def _guest_url(lp: LeastPrivilege) -> str:
    """guest, which the fixture lets into the vhost to look and clean up."""
    return f"amqp://guest:guest@127.0.0.1:5672/{quote(lp.vhost, safe='')}"


async def _queue_empty(lp: LeastPrivilege, name: str) -> bool:
    connection = await aio_pika.connect(_guest_url(lp))
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count == 0
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _dead_letters(lp: LeastPrivilege) -> AsyncIterator[dict[str, str]]:
    """The dead queue's messages as they arrive: message id -> the reason."""
    found: dict[str, str] = {}
    connection = await aio_pika.connect(_guest_url(lp))
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(lp.topology.dead_queue, ensure=False)

        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            found[str(message.message_id)] = str(headers.get("x-rung-dead-reason", ""))
            await message.ack()

        await queue.consume(collect)
        yield found
    finally:
        await connection.close()
