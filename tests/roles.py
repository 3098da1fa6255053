"""Real broker users in every role, on a vhost of their own: the least-privilege users of
``broker.definitions`` (searcher, pool worker, dedicated workers w1 and w2) plus clients
``alice`` and ``bob`` and an admin ``root`` (each with the client's permissions), and a
searcher that knows ``root`` as its admin. For the trust-model tests
(``tests/integration/test_access.py``, ``tests/hostile/test_requests.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika

from rung.broker import RabbitBroker
from rung.broker.definitions import definitions
from rung.broker.rpc import RpcClient
from rung.broker.schemas import RpcReply, WorkerHeartbeat
from rung.broker.schemas.envelope import Body, Envelope, encode
from rung.searcher.service.service import SearcherService
from tests.least_privilege import LeastPrivilege, least_privilege_vhost
from tests.support import wait_for

CLIENTS = ("alice", "bob", "root")
SINGLE = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 3},
}


@dataclass(frozen=True)
class Roles:
    lp: LeastPrivilege

    def user(self, name: str) -> str:
        """A client's broker user (alice, bob, root), or a role's (searcher, worker)."""
        return f"{self.lp.users_prefix}{name}"

    @property
    def w1(self) -> str:
        return self.lp.workers[0]

    @property
    def w2(self) -> str:
        return self.lp.workers[1]

    def url(self, user: str) -> str:
        return self.lp.url(user)

    def guest_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{quote(self.lp.vhost, safe='')}"


def _ctl(*args: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")


def roles_vhost() -> Iterator[Roles]:
    """The least-privilege vhost, with clients alice and bob and the admin root added."""
    for lp in least_privilege_vhost():
        document = definitions(
            lp.topology, vhost=lp.vhost, users_prefix=lp.users_prefix, workers=lp.workers
        )
        client = next(p for p in document["permissions"] if p["user"] == lp.user("client"))
        roles = Roles(lp)
        added = []
        try:
            for name in CLIENTS:
                user = roles.user(name)
                _ctl("add_user", user, lp.password)
                added.append(user)
                _ctl(
                    "set_permissions",
                    "-p",
                    lp.vhost,
                    user,
                    client["configure"],
                    client["write"],
                    client["read"],
                )
            yield roles
        finally:
            for user in added:
                with contextlib.suppress(RuntimeError):
                    _ctl("delete_user", user)


@contextlib.asynccontextmanager
async def connected(roles: Roles, user: str) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(roles.url(user), roles.lp.topology, name=f"test-{user}")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


@contextlib.asynccontextmanager
async def searcher(roles: Roles, state: Path, **options: Any) -> AsyncIterator[SearcherService]:
    """A searcher under its own least-privilege user; ``root`` is its admin."""
    options.setdefault("admins", frozenset({roles.user("root")}))
    async with connected(roles, roles.lp.user("searcher")) as broker:
        service = SearcherService(broker, state, **options)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        try:
            await asyncio.wait_for(service.ready.wait(), 30)
            yield service
        finally:
            stop.set()
            await task


async def call(broker: RabbitBroker, request: Body) -> RpcReply:
    return await RpcClient(broker).call(request, timeout=30)


def refused(reply: RpcReply) -> str:
    """The message of a reply that refused the request (asserted)."""
    assert reply.error is not None, f"expected a refusal, got {reply}"
    assert reply.error.kind == "refused", reply.error
    return reply.error.message


async def heartbeat(broker: RabbitBroker, worker_id: str) -> None:
    """A worker's heartbeat, which tells the searcher its user is a worker."""
    t = broker.topology
    body = WorkerHeartbeat(worker_id=worker_id, slots=1, free_slots=1, gpus=[], running=[])
    envelope = Envelope(message_id=f"{worker_id}/hb/{uuid.uuid4().hex[:8]}", body=body)
    await broker.publish(
        t.events_exchange,
        t.heartbeat_key(worker_id),
        encode(envelope),
        message_id=envelope.message_id,
    )


async def send_event(
    broker: RabbitBroker,
    body: Body,
    *,
    key_worker: str,
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """Publish a worker event under ``key_worker``'s routing key; return its id."""
    t = broker.topology
    envelope = Envelope(
        message_id=message_id or f"{key_worker}/t/{uuid.uuid4().hex[:12]}",
        experiment_id=getattr(body, "experiment_id", ""),
        body=body,
    )
    await broker.publish(
        t.events_exchange,
        t.events_key(key_worker),
        encode(envelope),
        message_id=envelope.message_id,
        headers=headers,
    )
    return envelope.message_id


def context_dir(tmp_path: Path) -> Path:
    directory = tmp_path / f"context-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    (directory / "train.py").write_text("pass\n")
    return directory


@contextlib.asynccontextmanager
async def dead_letters(roles: Roles) -> AsyncIterator[dict[str, str]]:
    """The dead queue's messages as they arrive: message id -> the reason."""
    found: dict[str, str] = {}
    connection = await aio_pika.connect(roles.guest_url())
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(roles.lp.topology.dead_queue, ensure=False)

        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            found[str(message.message_id)] = str(headers.get("x-rung-dead-reason", ""))
            await message.ack()

        await queue.consume(collect)
        yield found
    finally:
        await connection.close()


async def publish_raw(
    broker_url: str,
    exchange: str,
    routing_key: str,
    body: dict[str, Any] | bytes,
    **properties: Any,
) -> str:
    """Publish anything, as the user of ``broker_url`` (its user_id stamped); return the
    message id. For requests no schema would let a client build."""
    message_id = str(properties.pop("message_id", f"raw-{uuid.uuid4().hex[:12]}"))
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = await aio_pika.connect(broker_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)
        user = aio_pika.connection.make_url(broker_url).user
        await target.publish(
            aio_pika.Message(data, message_id=message_id, user_id=user, **properties),
            routing_key,
        )
    finally:
        await connection.close()
    return message_id


async def wait_dead(found: dict[str, str], message_id: str, what: str) -> str:
    await wait_for(lambda: message_id in found, 30, what)
    reason: str = found[message_id]
    return reason
