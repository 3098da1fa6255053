"""A real searcher and a real worker, in this process, on the local RabbitMQ: what the
hostile tests of messages and archives send their inputs to."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from rung.broker import RabbitBroker, Topology
from rung.broker.deadletters import DeadLetter, peek
from rung.searcher.client import SearcherClient
from rung.searcher.service.service import SearcherService
from rung.worker.agent import Worker
from tests.support import AMQP_URL, unique_prefix, wait_for

__all__ = ["WORKER_ID", "Rig", "describe_latencies", "running_rig"]

# A worker may only send as its broker user, or <user>.<suffix>.
WORKER_ID = "guest.hostile"

SINGLE = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 3},
}


@dataclass
class Rig:
    topology: Topology
    searcher: SearcherService
    worker: Worker | None
    # The attacker's own connection (the same broker user: the role does not matter to
    # what a consumer does with a malformed message).
    attacker: RabbitBroker
    client: SearcherClient
    experiment_id: str = ""
    brokers: list[RabbitBroker] = field(default_factory=list)

    async def dead_letters(self, ids: set[str], timeout: float) -> dict[str, list[DeadLetter]]:
        """The dead letters among ``ids``, once every one of them is there (at most
        ``timeout`` seconds), listed in place."""
        deadline = time.monotonic() + timeout
        while True:
            found: dict[str, list[DeadLetter]] = {}
            for letter in await peek(self.attacker, searcher_user="guest", quiet_s=0.3):
                if letter.message_id in ids:
                    found.setdefault(letter.message_id, []).append(letter)
            if set(found) == ids or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.2)


async def describe_latencies(rig: Rig, done: asyncio.Event) -> list[float]:
    """Describe the well-behaved experiment again and again until ``done``; each
    answer's latency, in seconds."""
    latencies: list[float] = []
    while not done.is_set():
        started = time.monotonic()
        summary = await rig.client.describe(rig.experiment_id)
        assert summary.experiment_id == rig.experiment_id
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.02)
    return latencies


@contextlib.asynccontextmanager
async def running_rig(tmp_path: Path, *, with_worker: bool) -> AsyncIterator[Rig]:
    topology = Topology(unique_prefix())
    brokers = [RabbitBroker(AMQP_URL, topology, name=n) for n in ("searcher", "worker", "bad")]
    searcher_broker, worker_broker, attacker = brokers
    for broker in brokers:
        await broker.start()
    stop = asyncio.Event()
    searcher = SearcherService(searcher_broker, tmp_path / "state")
    tasks = [asyncio.create_task(searcher.run(stop))]
    worker = None
    if with_worker:
        worker = Worker(worker_broker, worker_id=WORKER_ID, slots=1, work_dir=tmp_path / "worker")
        tasks.append(asyncio.create_task(worker.run(stop)))
    client = SearcherClient(attacker, timeout=60)
    rig = Rig(topology, searcher, worker, attacker, client, brokers=brokers)
    try:
        await wait_for((tmp_path / "state" / "contexts").is_dir, 20, "the searcher")
        if worker is not None:
            await wait_for(lambda: worker._control_queue is not None, 20, "the worker")
        context = tmp_path / "context"
        context.mkdir()
        (context / "train.py").write_text("pass\n")
        # A well-behaved experiment, to describe while the hostile inputs are handled
        # (whether its trial runs to the end does not matter here).
        created = await client.create_experiment(SINGLE, context)
        rig.experiment_id = str(created["experiment_id"])
        yield rig
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 90)
        with contextlib.suppress(Exception):
            await attacker.delete_topology()
        for broker in brokers:
            with contextlib.suppress(Exception):
                await broker.close()
