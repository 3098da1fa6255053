"""A worker starts its fork server before it takes work."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rung.broker import MemoryBroker
from rung.broker.errors import BrokerError
from rung.worker.agent import Worker
from rung.worker.spawn import ForkServer, SpawnError
from tests.support import fork_server_site, gated_fork_servers, wait_for


def _worker(broker: MemoryBroker, tmp_path: Path) -> tuple[Worker, ForkServer]:
    worker = Worker(broker, worker_id="w1", work_dir=tmp_path / "w1")
    assert isinstance(worker.spawner, ForkServer)
    return worker, worker.spawner


async def test_a_worker_is_ready_once_its_fork_server_is(tmp_path: Path) -> None:
    broker = MemoryBroker()
    await broker.start()
    worker, server = _worker(broker, tmp_path)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        assert server.pid is not None  # started before any trial asked for it
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
        await broker.close()
    assert server.pid is None


async def test_a_worker_whose_fork_server_cannot_start_takes_no_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its trials would all fail to start (and spend their restarts): it stops instead,
    saying why and what to do, before it has consumed anything."""
    fork_server_site(tmp_path, monkeypatch, "import os; os._exit(3)")
    broker = MemoryBroker()
    await broker.start()
    worker, server = _worker(broker, tmp_path)
    try:
        with pytest.raises(SpawnError, match="takes no work without it") as raised:
            await asyncio.wait_for(worker.run(asyncio.Event()), 60)
    finally:
        await broker.close()
    assert "--start-method exec" in str(raised.value)
    assert "exited before it was ready" in str(raised.value)
    assert not worker.ready.is_set()
    assert worker._control_queue is None  # no queue of its own, no work consumed
    assert server.pid is None  # nothing left running
    assert worker.run_dirs._owner_fd is None  # nor its run directories claimed


async def test_a_worker_told_to_stop_as_its_fork_server_starts_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM during a slow start is not held until the server is ready."""
    gate, waiting = gated_fork_servers(tmp_path, monkeypatch)
    broker = MemoryBroker()
    await broker.start()
    worker, server = _worker(broker, tmp_path)
    stop = asyncio.Event()
    try:
        running = asyncio.create_task(worker.run(stop))
        await wait_for(waiting.exists, 30, "the fork server at its gate")
        stop.set()
        await asyncio.wait_for(running, 30)  # the gate is still shut
        assert not worker.ready.is_set()
        assert worker._control_queue is None
        assert server.pid is None
    finally:
        gate.touch()
        await broker.close()


async def test_a_worker_that_fails_after_its_fork_server_started_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = MemoryBroker()
    await broker.start()
    worker, server = _worker(broker, tmp_path)

    async def gone(*_: object) -> str:
        raise BrokerError("the broker went away")

    monkeypatch.setattr(broker, "declare_private_queue", gone)
    try:
        with pytest.raises(BrokerError, match="went away"):
            await asyncio.wait_for(worker.run(asyncio.Event()), 60)
    finally:
        await broker.close()
    assert server.pid is None
    assert worker.run_dirs._owner_fd is None
