"""A worker starts its fork server before it takes work, and a start that fails or is
stopped leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rung.broker import MemoryBroker
from rung.broker.errors import BrokerError
from rung.broker.schemas import ExitReason, ReserveSlots, TrialExited, decode
from rung.worker.agent import Worker
from rung.worker.spawn import ForkServer, SpawnError
from tests.support import fork_server_site, gated_fork_servers, wait_for
from tests.unit.worker.test_agent_buckets import control


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    made = MemoryBroker()
    await made.start()
    yield made
    await made.close()


def _worker(broker: MemoryBroker, tmp_path: Path, slots: int = 1) -> tuple[Worker, ForkServer]:
    worker = Worker(broker, worker_id="w1", slots=slots, work_dir=tmp_path / "w1")
    assert isinstance(worker.spawner, ForkServer)
    return worker, worker.spawner


def _left_nothing(worker: Worker, server: ForkServer) -> None:
    assert not worker.ready.is_set()
    assert server.pid is None  # no fork server left running
    assert worker.run_dirs._owner_fd is None  # nor its run directories held


async def test_a_worker_is_ready_once_its_fork_server_is(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker, server = _worker(broker, tmp_path)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        assert server.pid is not None  # started before any trial asked for it
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    assert server.pid is None


async def test_a_worker_whose_fork_server_cannot_start_takes_no_work(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its trials would all fail to start (and spend their restarts): it stops instead,
    saying why and what to do, before it has consumed anything."""
    fork_server_site(tmp_path, monkeypatch, "import os; os._exit(3)")
    worker, server = _worker(broker, tmp_path)
    with pytest.raises(SpawnError, match="takes no work without it") as raised:
        await asyncio.wait_for(worker.run(asyncio.Event()), 60)
    assert "--start-method exec" in str(raised.value)
    assert "exited before it was ready" in str(raised.value)
    assert worker._control_queue is None  # no queue of its own, no work consumed
    _left_nothing(worker, server)


async def test_a_worker_told_to_stop_as_its_fork_server_starts_stops_at_once(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM during a slow start is not held until the server is ready."""
    gate, waiting = gated_fork_servers(tmp_path, monkeypatch)
    worker, server = _worker(broker, tmp_path)
    stop = asyncio.Event()
    try:
        running = asyncio.create_task(worker.run(stop))
        await wait_for(waiting.exists, 30, "the fork server at its gate")
        stop.set()
        await asyncio.wait_for(running, 30)  # the gate is still shut
        assert worker._control_queue is None
        _left_nothing(worker, server)
    finally:
        gate.touch()


async def test_a_worker_stopped_before_it_runs_starts_nothing(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, server = _worker(broker, tmp_path)
    started: list[float] = []

    async def start(timeout: float = 0) -> None:
        started.append(timeout)

    monkeypatch.setattr(server, "start", start)
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(worker.run(stop), 30)
    assert started == []
    assert not worker.ready.is_set()


async def test_a_worker_that_fails_after_its_fork_server_started_leaves_nothing(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, server = _worker(broker, tmp_path)

    async def gone(*_: object) -> str:
        raise BrokerError("the broker went away")

    monkeypatch.setattr(broker, "declare_private_queue", gone)
    with pytest.raises(BrokerError, match="went away"):
        await asyncio.wait_for(worker.run(asyncio.Event()), 60)
    _left_nothing(worker, server)


async def test_a_worker_told_to_stop_while_the_broker_is_slow_stops(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its fork server, a worker declares its queue: a broker that never answers
    (away, reconnecting) does not hold its stop."""
    worker, server = _worker(broker, tmp_path)
    asked = asyncio.Event()

    async def never(*_: object) -> str:
        asked.set()
        await asyncio.Event().wait()
        raise AssertionError  # (never reached)

    monkeypatch.setattr(broker, "declare_private_queue", never)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(asked.wait(), 60)
    stop.set()
    await asyncio.wait_for(running, 30)
    _left_nothing(worker, server)


async def test_a_worker_cancelled_as_it_claims_its_run_directories_leaves_none(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim runs in a thread, which a cancellation does not stop: the worker waits
    for it before it lets the directories go."""
    worker, server = _worker(broker, tmp_path)
    entered, release = threading.Event(), threading.Event()
    claim = worker.run_dirs.claim

    def slow_claim() -> list[Path]:
        entered.set()
        release.wait(30)
        return claim()

    monkeypatch.setattr(worker.run_dirs, "claim", slow_claim)
    try:
        running = asyncio.create_task(worker.run(asyncio.Event()))
        await wait_for(entered.is_set, 60, "the claim, in its thread")
        running.cancel()
        await wait_for(lambda: worker._stopping, 30, "the start undone")
        assert worker.run_dirs._owner_fd is None  # (the claim has not made it yet)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 30)
    finally:
        release.set()
    _left_nothing(worker, server)
    assert not worker.run_dirs.session.exists()


async def test_a_worker_that_fails_as_it_subscribes_consumes_nothing_more(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after its own queue and some work queues were consumed: they are let
    go, so no command reaches a worker that nobody runs."""
    worker, server = _worker(broker, tmp_path, slots=2)
    subscribe = broker.subscribe
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:  # its own queue, the first work bucket, then this
            raise BrokerError("the broker went away")
        return await subscribe(*args, **kwargs)

    monkeypatch.setattr(broker, "subscribe", flaky)
    with pytest.raises(BrokerError, match="went away"):
        await asyncio.wait_for(worker.run(asyncio.Event()), 60)
    assert calls == 3
    assert worker._work == {}
    assert worker._control_queue is not None
    assert worker._control_queue not in broker.queues
    assert not any(queue.consumers for queue in broker.queues.values())
    _left_nothing(worker, server)


async def test_work_taken_before_a_start_is_undone_goes_back(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own queue is consumed first: a command can come in while the work queues are
    still being consumed. Stopped then, the worker lets it go as a stop does: here the
    slots it held for a part of a trial go back, and the searcher is told."""
    worker, server = _worker(broker, tmp_path)
    subscribe = broker.subscribe
    calls = 0
    stuck = asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first work queue: the broker is slow to answer
            stuck.set()
            await asyncio.Event().wait()
        return await subscribe(*args, **kwargs)

    monkeypatch.setattr(broker, "subscribe", slow)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(stuck.wait(), 60)
    part = ReserveSlots(experiment_id="e1", trial_id=9, attempt=1, part=0, slots=1)
    await control(broker, worker, part)
    await wait_for(lambda: len(worker.reservations) == 1, 30, "the slots held for the part")
    stop.set()
    await asyncio.wait_for(running, 60)
    assert len(worker.reservations) == 0
    queue = broker.queues[broker.topology.events_queue]
    bodies = [decode(m.body).body for m in queue.messages]
    (told,) = [body for body in bodies if isinstance(body, TrialExited)]
    assert (told.trial_id, told.reason) == (9, ExitReason.PREEMPTED)
    assert not any(q.consumers for q in broker.queues.values())
    _left_nothing(worker, server)
