"""``ResendCommand``: an operator's ``rung dlq requeue`` of a dead command goes through
the searcher, which publishes again what its log holds under that message id; nothing
else, and for an operator or an admin only."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rung.broker import MemoryBroker, Topology
from rung.broker.archive import pack
from rung.broker.port import Delivery
from rung.broker.schemas import CreateExperiment, RunTrial, decode
from rung.broker.schemas.envelope import Body, Envelope, encode
from rung.broker.schemas.rpc import ResendCommand
from rung.searcher.eventlog.records import InputRecord, record_adapter
from rung.searcher.service.errors import (
    AccessRefusedError,
    ExperimentNotFoundError,
    RequestRefusedError,
)
from rung.searcher.service.service import SearcherService
from tests.support import wait_for

SEARCHER = "rung-searcher"
SINGLE = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 3},
}


class _Delivery(Delivery):
    async def ack(self) -> None:
        self.settled = True

    async def requeue(self) -> None:
        self.settled = True

    async def _move_to_dead_queue(self, reason: str) -> None:
        self.settled = True


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SearcherService]:
    broker = MemoryBroker(Topology("resend"))
    broker.username = SEARCHER  # as if a broker vouched for users
    await broker.start()
    instance = SearcherService(broker, tmp_path / "state")
    stop = asyncio.Event()
    task = asyncio.create_task(instance.run(stop))
    await asyncio.wait_for(instance.ready.wait(), 10)
    yield instance
    stop.set()
    await task
    await broker.close()


async def _handle(service: SearcherService, body: Body, user: str | None) -> dict[str, Any]:
    envelope = Envelope(message_id="r-1", body=body)
    delivery = _Delivery(encode(envelope), message_id="r-1", user_id=user)
    return await service.requests.handle(body, delivery, user)


async def _run_trial_id(service: SearcherService, tmp_path: Path) -> tuple[str, RunTrial]:
    """Create an experiment as alice; the message id of its first run_trial."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "train.py").write_text("pass\n")
    create = CreateExperiment(config=SINGLE, context_b64=base64.b64encode(pack(context)).decode())
    experiment_id = (await _handle(service, create, "alice"))["experiment_id"]
    log = service.live(experiment_id).host.log
    for line in log.read_after(0, 100):
        record = record_adapter.validate_json(line)
        if isinstance(record, InputRecord):
            for index, command in enumerate(record.commands):
                if isinstance(command.body, RunTrial):
                    return f"{experiment_id}/{record.seq}/{index}", command.body
    raise AssertionError("no run_trial logged")


async def test_a_logged_command_is_published_again_as_the_outbox_did(
    service: SearcherService, tmp_path: Path
) -> None:
    message_id, run_trial = await _run_trial_id(service, tmp_path)
    broker = service.broker
    queue = broker.topology.bucket_queue(1)
    got: list[Delivery] = []

    async def take(delivery: Delivery) -> None:
        got.append(delivery)
        await delivery.ack()

    await broker.subscribe(queue, take, prefetch=10)
    await wait_for(lambda: len(got) == 1, 10, "the run_trial the outbox sent")
    answer = await _handle(service, ResendCommand(message_id=message_id), "rung-operator")
    assert answer == {"message_id": message_id, "type": "run_trial", "worker_id": None}
    await wait_for(lambda: len(got) == 2, 10, "the run_trial sent again")
    first, again = got
    assert again.message_id == first.message_id == message_id
    assert again.body == first.body
    assert decode(again.body).body == run_trial


async def test_only_a_logged_command_is_sent(service: SearcherService, tmp_path: Path) -> None:
    message_id, _ = await _run_trial_id(service, tmp_path)
    experiment_id, seq, _ = message_id.split("/")
    for missing in (f"{experiment_id}/{seq}/9", f"{experiment_id}/999/0", f"{experiment_id}/0/0"):
        with pytest.raises(ExperimentNotFoundError, match="logged no command"):
            await _handle(service, ResendCommand(message_id=missing), "rung-operator")
    with pytest.raises(ExperimentNotFoundError, match="no experiment"):
        await _handle(service, ResendCommand(message_id="exp-00000000/1/0"), "rung-operator")
    with pytest.raises(RequestRefusedError, match="does not name a command"):
        await _handle(service, ResendCommand(message_id="forged-1"), "rung-operator")


@pytest.mark.parametrize("user", ["alice", "rung-worker", "bob"])
async def test_only_an_operator_or_admin_may_resend(
    service: SearcherService, tmp_path: Path, user: str
) -> None:
    message_id, _ = await _run_trial_id(service, tmp_path)
    with pytest.raises(AccessRefusedError, match="may not resend commands"):
        await _handle(service, ResendCommand(message_id=message_id), user)
