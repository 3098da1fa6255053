"""Forged requests by each role, on RabbitMQ with real users: each is refused (a typed
error naming the rule) or dead-lettered (with its reason), and the experiment they aim at
is untouched. Class ``requests by role`` in the hostile tally."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from rung.broker.schemas import (
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    DescribeExperiment,
    GetContext,
    ListExperiments,
    ListWorkers,
    ProgressReported,
    ReadRecords,
    ReadTrialLogs,
    RpcReply,
    decode,
)
from rung.broker.schemas.envelope import Body, Envelope, encode
from rung.searcher.client import SearcherClient
from rung.searcher.eventlog import read_log
from rung.searcher.service.access import ORIGINAL_USER_HEADER
from tests.hostile.conftest import HostileTally
from tests.roles import (
    SINGLE,
    Roles,
    call,
    connected,
    context_dir,
    dead_letters,
    heartbeat,
    publish_raw,
    refused,
    roles_vhost,
    searcher,
    wait_dead,
)
from tests.support import wait_for

pytestmark = pytest.mark.rabbitmq
CLS = "requests by role"


@pytest.fixture(scope="module")
def roles() -> Iterator[Roles]:
    yield from roles_vhost()


async def _anonymous_call(roles: Roles, request: Body) -> RpcReply:
    """A request published without user_id (which RabbitMQ then does not check)."""
    t = roles.lp.topology
    connection = await aio_pika.connect(roles.url(roles.user("bob")))
    try:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True)
        exchange = await channel.get_exchange(t.rpc_exchange, ensure=False)
        envelope = Envelope(message_id=f"anon-{uuid.uuid4().hex[:8]}", body=request)
        await exchange.publish(
            aio_pika.Message(
                encode(envelope),
                message_id=envelope.message_id,
                reply_to=replies.name,
                correlation_id=envelope.message_id,
            ),
            t.RPC_KEY,
        )
        async with replies.iterator(timeout=30) as messages:
            async for message in messages:
                await message.ack()
                body = decode(message.body).body
                assert isinstance(body, RpcReply)
                return body
    finally:
        await connection.close()
    raise AssertionError("no reply")


async def test_forged_requests_by_each_role_are_refused(
    roles: Roles, tmp_path: Path, hostile: HostileTally
) -> None:
    alice, bob = roles.user("alice"), roles.user("bob")
    pool = roles.lp.user("worker")
    t = roles.lp.topology
    async with (
        searcher(roles, tmp_path / "state") as service,
        connected(roles, alice) as as_alice,
        connected(roles, bob) as as_bob,
        connected(roles, pool) as as_pool,
        connected(roles, roles.w1) as as_w1,
        dead_letters(roles) as dead,
    ):
        created = await SearcherClient(as_alice).create_experiment(SINGLE, context_dir(tmp_path))
        experiment_id = created["experiment_id"]
        context_hash = read_log(Path(created["event_log"]))[0].model_dump()["context_hash"]
        await heartbeat(as_w1, roles.w1)  # w1: a dedicated worker user, heard as one
        await wait_for(lambda: service.access.role(roles.w1) == "worker", 30, "w1 heard")

        mine = {"experiment_id": experiment_id}
        forged: list[tuple[str, object, Body, str]] = [
            (
                "client kills another's experiment",
                as_bob,
                ControlExperiment(**mine, action="kill"),
                "belongs to",
            ),
            (
                "client pauses another's experiment",
                as_bob,
                ControlExperiment(**mine, action="pause"),
                "belongs to",
            ),
            (
                "client kills another's trial",
                as_bob,
                ControlTrial(**mine, trial_id=1),
                "belongs to",
            ),
            (
                "client describes another's experiment",
                as_bob,
                DescribeExperiment(**mine),
                "belongs to",
            ),
            ("client reads another's records", as_bob, ReadRecords(**mine), "belongs to"),
            ("client reads another's trial logs", as_bob, ReadTrialLogs(**mine), "belongs to"),
            (
                "client fetches another's context",
                as_bob,
                GetContext(context_hash=context_hash),
                "may not fetch context",
            ),
            (
                "pool worker creates",
                as_pool,
                CreateExperiment(config=SINGLE, context_b64=""),
                "workers may not create",
            ),
            ("pool worker kills", as_pool, ControlExperiment(**mine, action="kill"), "is a worker"),
            ("pool worker kills a trial", as_pool, ControlTrial(**mine, trial_id=1), "is a worker"),
            ("pool worker reads records", as_pool, ReadRecords(**mine), "is a worker"),
            ("pool worker lists experiments", as_pool, ListExperiments(), "workers may not list"),
            ("pool worker lists workers", as_pool, ListWorkers(), "workers may not list"),
            (
                "dedicated worker creates",
                as_w1,
                CreateExperiment(config=SINGLE, context_b64=""),
                "workers may not create",
            ),
            (
                "dedicated worker cancels",
                as_w1,
                ControlExperiment(**mine, action="cancel"),
                "is a worker",
            ),
        ]
        for case, broker, request, rule in forged:
            started = time.monotonic()
            message = refused(await call(broker, request))  # type: ignore[arg-type]
            assert rule in message, (case, message)
            hostile.record(CLS, case, "refused", time.monotonic() - started)

        started = time.monotonic()
        message = refused(await _anonymous_call(roles, ControlExperiment(**mine, action="kill")))
        assert "has no user_id" in message
        hostile.record(CLS, "request without user_id", "refused", time.monotonic() - started)

        # Dead-lettered, unanswered: forged reply queues, a path, a forged re-send.
        kill = encode(Envelope(message_id="x", body=ControlExperiment(**mine, action="kill")))
        valid = encode(Envelope(message_id="y", body=GetContext(context_hash="0" * 64)))
        dead_cases: list[tuple[str, str, bytes, dict[str, object], str]] = [
            (
                "client names the work queue as reply_to",
                alice,
                kill,
                {"reply_to": t.work_queue},
                "not a private reply queue",
            ),
            (
                "client names another's reply queue",
                bob,
                kill,
                {"reply_to": "rung.private.1"},
                "not a private reply queue",
            ),
            (
                "worker names the events queue as reply_to",
                pool,
                kill,
                {"reply_to": t.events_queue},
                "not a private reply queue",
            ),
            (
                "client asks for ../../x as a context",
                bob,
                valid.replace(b"0" * 64, b"../../x"),
                {"reply_to": f"amq_{uuid.uuid4().hex}"},
                "context_hash",
            ),
            (
                "worker asks for /etc/passwd as a context",
                pool,
                valid.replace(b"0" * 64, b"/etc/passwd"),
                {"reply_to": f"amq_{uuid.uuid4().hex}"},
                "context_hash",
            ),
            (
                "client claims to re-send as an operator",
                bob,
                kill,
                {"reply_to": f"amq_{uuid.uuid4().hex}", "headers": {ORIGINAL_USER_HEADER: alice}},
                "only an operator may re-send",
            ),
        ]
        for case, user, data, properties, rule in dead_cases:
            started = time.monotonic()
            message_id = await publish_raw(
                roles.url(user), t.rpc_exchange, t.RPC_KEY, data, **properties
            )
            reason = await wait_dead(dead, message_id, case)
            assert rule in reason, (case, reason)
            hostile.record(CLS, case, "dead-lettered", time.monotonic() - started)

        # A worker's forged event under another's re-send header: dead-lettered.
        started = time.monotonic()
        event = Envelope(
            message_id="w1/forged-resend",
            body=ProgressReported(**mine, trial_id=1, attempt=1, worker_id=roles.w1, units=1),
        )
        message_id = await publish_raw(
            roles.url(roles.w1),
            t.events_exchange,
            t.events_key(roles.w1),
            encode(event),
            message_id=event.message_id,
            headers={ORIGINAL_USER_HEADER: pool},
        )
        reason = await wait_dead(dead, message_id, "the worker's forged re-send")
        assert "only an operator may re-send" in reason
        hostile.record(
            CLS, "worker claims to re-send an event", "dead-lettered", time.monotonic() - started
        )

        # Beside all that, alice's experiment is untouched: still active, one trial queued.
        after = await SearcherClient(as_alice).describe(experiment_id)
        assert after.state == "ACTIVE"
        assert [trial.state for trial in after.trials] == ["QUEUED"]
        assert after.owner == alice
