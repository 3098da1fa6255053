"""The searcher service on a log whose storage fails (issue 15, item 6), in-process on the
memory broker: the event whose write or fsync failed is not acknowledged, nothing it
caused is published, the service stops (``on_fatal``, then ``run`` raises the error),
and a service restarted on the same directory takes the event again and finishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rung.broker import Delivery, Handler, MemoryBroker, Subscription, Topology
from rung.broker.schemas import CloseTrial, ExitReason, OpCompleted, TrialExited, TrialStarted
from rung.searcher import failpoints
from rung.searcher.client import SearcherClient
from rung.searcher.eventlog import InputRecord, read_log
from rung.searcher.eventlog.file import StorageError
from rung.searcher.service.service import SearcherService
from tests.integration.test_searcher_service import FakeWorker, single_trial_queued
from tests.support import unique_prefix, wait_for
from tests.unit.searcher.test_eventlog_failstop import fill_disk


class EventSpy:
    """Every delivery the service takes from the events queue, to see which it settled."""

    def __init__(self, broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.deliveries: list[Delivery] = []
        self._queue = broker.topology.events_queue
        self._subscribe = broker.subscribe
        monkeypatch.setattr(broker, "subscribe", self.subscribe)

    async def subscribe(
        self, queue: str, handler: Handler, *, prefetch: int, priority: int = 0
    ) -> Subscription:
        if queue != self._queue:
            return await self._subscribe(queue, handler, prefetch=prefetch, priority=priority)

        async def spied(delivery: Delivery) -> None:
            self.deliveries.append(delivery)
            await handler(delivery)

        return await self._subscribe(queue, spied, prefetch=prefetch)

    def settled(self, message_id: str) -> bool:
        return any(d.settled for d in self.deliveries if d.message_id == message_id)

    def delivery(self, message_id: str) -> Delivery:
        return next(d for d in self.deliveries if d.message_id == message_id)


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    instance = MemoryBroker(Topology(unique_prefix()))
    await instance.start()
    yield instance
    await instance.close()


async def _started(
    broker: MemoryBroker, service: SearcherService
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """The service running, once it consumes the events queue."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    events = broker.queues[broker.topology.events_queue]
    await wait_for(lambda: bool(events.consumers) or task.done(), 10, "the service")
    return task, stop


async def _restart_and_finish(
    broker: MemoryBroker,
    state: Path,
    unacknowledged: Delivery,
    worker: FakeWorker,
    client: SearcherClient,
    ids: dict[str, Any],
    fatal: list[BaseException],
) -> None:
    """A new service on ``state`` takes the event again, and the experiment finishes."""
    restarted = SearcherService(broker, state, on_fatal=fatal.append)
    task, stop = await _started(broker, restarted)
    await unacknowledged.requeue()
    await wait_for(lambda: bool(worker.control), 10, "the close command")
    assert all(isinstance(c, CloseTrial) for c in worker.control)
    assert len(set(worker.control_ids)) == 1  # sent again, maybe, but one command
    await worker.send(TrialExited(**ids, reason=ExitReason.COMPLETED))
    summary = await client.wait(ids["experiment_id"], poll_s=0.05, timeout=20)
    assert summary.state == "COMPLETED"
    assert summary.best_trial is not None
    assert summary.best_trial.metric == 0.25
    stop.set()
    await asyncio.wait_for(task, 60)


@pytest.mark.parametrize("failure", ["fsync", "write"])
async def test_a_storage_error_stops_the_service_before_the_ack(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    spy = EventSpy(broker, monkeypatch)
    state = tmp_path / "state"
    fatal: list[BaseException] = []
    service = SearcherService(broker, state, on_fatal=fatal.append)
    first, _ = await _started(broker, service)
    worker, client, created = await single_trial_queued(broker, tmp_path)
    experiment_id = created["experiment_id"]
    ids: dict[str, Any] = {
        "experiment_id": experiment_id,
        "trial_id": worker.work[0].trial_id,
        "attempt": worker.work[0].attempt,
        "worker_id": "fake",
    }
    started = await worker.send(TrialStarted(**ids, slots=1))
    await wait_for(lambda: spy.settled(started), 10, "trial_started to be acknowledged")

    # The disk fails under the next event: its record's fsync (EIO), or its write (full).
    if failure == "fsync":
        monkeypatch.setattr(failpoints, "_counts", {})
        monkeypatch.setenv(failpoints.FSYNC_FAILURE_ENV, "1")
        expected = r"an fsync of .* failed .*injected by"
    else:
        fill_disk(service.experiments[experiment_id].host.log, room=10)
        expected = r"a write of .* failed .*No space left on device"
    size = Path(created["event_log"]).stat().st_size
    with capture_logs() as logs:
        completed = await worker.send(OpCompleted(**ids, length=3, metric=0.25))
        await wait_for(lambda: bool(fatal), 10, "the service to give up")
        with pytest.raises(StorageError, match=expected) as stopped:
            await asyncio.wait_for(first, 60)  # it stops by itself, and says why

    assert fatal == [stopped.value]
    assert not spy.settled(completed)  # never acknowledged: the broker will redeliver it
    assert worker.control == []  # the close it decided was never published
    critical = [e for e in logs if e["log_level"] == "critical"]
    assert [e["event"].split(":")[0] for e in critical] == ["storage failed"]
    assert str(stopped.value) == critical[0]["error"]
    if failure == "write":  # a part of the line reached the file: the torn end
        assert not Path(created["event_log"]).read_bytes().endswith(b"\n")
    else:  # the record was written; only its fsync failed
        assert Path(created["event_log"]).stat().st_size > size

    # The storage is fixed; a new searcher on the same directory. The dead one's broker
    # link would close, and the broker hand the unacknowledged event out again.
    monkeypatch.delenv(failpoints.FSYNC_FAILURE_ENV, raising=False)
    await _restart_and_finish(broker, state, spy.delivery(completed), worker, client, ids, fatal)
    assert fatal == [stopped.value]  # the restarted service had no storage error

    records = read_log(Path(created["event_log"]))
    applied = [r.message_id for r in records if isinstance(r, InputRecord)]
    assert len(applied) == len(set(applied)), f"an input applied twice: {applied}"
    assert applied.count(completed) == 1
    assert started in applied


async def test_a_storage_error_while_recovering_stops_the_service_the_same_way(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    fatal: list[BaseException] = []
    service = SearcherService(broker, state, on_fatal=fatal.append)
    first, stop = await _started(broker, service)
    worker, _, created = await single_trial_queued(broker, tmp_path)
    stop.set()
    await asyncio.wait_for(first, 60)
    size = Path(created["event_log"]).stat().st_size

    # The disk fails at the restart's first fsync of the log: while it recovers.
    monkeypatch.setattr(failpoints, "_counts", {})
    monkeypatch.setenv(failpoints.FSYNC_FAILURE_ENV, "1")
    assert not fatal
    restarted = SearcherService(broker, state, on_fatal=fatal.append)
    expected = r"an fsync of .* failed .*injected by"
    with capture_logs() as logs, pytest.raises(StorageError, match=expected) as stopped:
        await asyncio.wait_for(restarted.run(asyncio.Event()), 60)
    assert fatal == [stopped.value]
    critical = [e for e in logs if e["log_level"] == "critical"]
    assert [e["event"].split(":")[0] for e in critical] == ["storage failed"]
    assert Path(created["event_log"]).stat().st_size == size  # it wrote nothing
    assert not broker.queues[broker.topology.events_queue].consumers  # nor took any input
    assert len(worker.work) == 1
