"""The outbox: write first, then publish, even while inputs go on (the retry task, a
flush's batch), and the order of a batch's publishes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from rung.broker import Topology
from rung.broker.errors import BrokerUnavailableError
from rung.broker.schemas import ContinueTrial, OpCompleted, PauseTrial, TrialStarted
from rung.searcher.errors import SearcherError
from rung.searcher.host import ExperimentHost, Outgoing
from rung.searcher.service import outbox as outbox_module
from rung.searcher.service.outbox import Live, Outbox
from rung.searcher.trials import Command
from tests.support import wait_for
from tests.unit.searcher.test_host import EID, fragile_config, new_host


class GatedBroker:
    """Records each publish with how far the log was durable then; the first one waits
    for the gate, as a broker that is slow to confirm."""

    def __init__(self, host: ExperimentHost) -> None:
        self.topology = Topology("outbox-test")
        self.host = host
        self.gate = asyncio.Event()
        self.published: list[tuple[str, int]] = []

    async def publish(self, exchange: str, key: str, body: bytes, **kw: Any) -> None:
        self.published.append((kw["message_id"], self.host.log.durable_seq))
        if len(self.published) == 1:
            await self.gate.wait()


async def test_the_retry_task_publishes_a_decision_only_once_its_record_is_durable(
    tmp_path: Path,
) -> None:
    host = new_host(tmp_path, fragile_config(raise_above=100.0))
    try:
        await host.log.sync_async()
        broker = GatedBroker(host)
        tasks: list[asyncio.Task[None]] = []

        def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            tasks.append(asyncio.get_running_loop().create_task(work))
            return tasks[-1]

        async def fatal(exc: BaseException) -> None:
            raise AssertionError(f"no storage error expected: {exc}")

        def drop(live: Live, exc: SearcherError) -> None:
            raise AssertionError(f"nothing to drop: {exc}")

        outbox = Outbox(broker, spawn=spawn, fatal=fatal, drop=drop)  # type: ignore[arg-type]
        live = Live(host, retrying=True)
        live.retry = spawn(outbox._retry(live, None))
        # (the creation's two trials go out together; the first one's confirm holds both)
        await wait_for(lambda: len(broker.published) >= 1, 10, "the first publish")
        # While the retry task waits for a confirm, the experiment's inputs go on: one
        # decides a command, written to the log but not yet durable.
        for trial_id in (1, 2):
            ids = {"experiment_id": EID, "trial_id": trial_id, "attempt": 1, "worker_id": "w"}
            host.apply(TrialStarted(**ids, slots=1), f"start-{trial_id}", at=0)
        ids = {"experiment_id": EID, "trial_id": 1, "attempt": 1, "worker_id": "w"}
        applied = host.apply(OpCompleted(**ids, length=10, metric=0.5), "done-1", at=0)
        assert applied.step.commands
        assert host.log.durable_seq < applied.seq
        broker.gate.set()
        await wait_for(lambda: not live.retrying, 10, "the outbox drained")
        for message_id, durable in broker.published:
            seq = int(message_id.split("/")[1])
            assert durable >= seq, f"{message_id} published with the log durable to {durable}"
        assert any(m.startswith(f"{EID}/{applied.seq}/") for m, _ in broker.published)
        await asyncio.gather(*tasks)
    finally:
        host.close()


class RefusingBroker:
    """Refuses every publish while ``down``, as an unreachable broker does."""

    def __init__(self) -> None:
        self.topology = Topology("outbox-test")
        self.down = True

    async def publish(self, exchange: str, key: str, body: bytes, **kw: Any) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise BrokerUnavailableError("the broker is down (test)")


async def test_the_unsent_mark_is_written_and_cleared_while_inputs_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark's owner check reads the log's file in a thread: an input appended on the
    event loop meanwhile (inputs go on while decisions are published) must never look
    like another searcher's line. Found by review: the experiment was dropped as taken
    over within a few dozen episodes of a broker going down and coming back."""
    monkeypatch.setattr(outbox_module, "RETRY_FIRST_S", 0.001)
    host = new_host(tmp_path, fragile_config(raise_above=100.0))
    problems: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        tasks.append(asyncio.get_running_loop().create_task(work))
        return tasks[-1]

    async def fatal(exc: BaseException) -> None:
        problems.append(exc)

    def drop(live: Live, exc: SearcherError) -> None:
        problems.append(exc)

    broker = RefusingBroker()
    outbox = Outbox(broker, spawn=spawn, fatal=fatal, drop=drop)  # type: ignore[arg-type]
    live = Live(host)
    waiting = list(host.outbox)
    stop = asyncio.Event()

    async def inputs() -> None:
        """Records appended as inputs are: on the loop, under the experiment's lock."""
        while not stop.is_set():
            async with live.lock:
                host.log.take_over("test", sync=False)
            await asyncio.sleep(0)

    appending = asyncio.create_task(inputs())
    try:
        for _ in range(60):
            host.outbox.clear()
            host.outbox.extend(waiting)
            broker.down = True
            async with live.publishing:
                await outbox.flush(live)  # refused: marked unsent, left to the retry task
            assert live.retrying
            broker.down = False
            await wait_for(lambda: not live.retrying or bool(problems), 10, "the retry task")
            assert problems == []
            assert host.log.unsent_from is None
    finally:
        stop.set()
        await appending
        for task in tasks:
            task.cancel()
        host.close()


def quiet_outbox(broker: object) -> Outbox:
    """An outbox over ``broker`` where a storage error or a drop fails the test."""

    async def fatal(exc: BaseException) -> None:
        raise AssertionError(f"no storage error expected: {exc}")

    def drop(live: Live, exc: SearcherError) -> None:
        raise AssertionError(f"nothing to drop: {exc}")

    return Outbox(broker, spawn=asyncio.create_task, fatal=fatal, drop=drop)  # type: ignore[arg-type]


class RecordingBroker:
    """Records each publish with how far the log was durable then."""

    def __init__(self, host: ExperimentHost) -> None:
        self.topology = Topology("outbox-test")
        self.host = host
        self.published: list[tuple[str, int]] = []

    async def publish(self, exchange: str, key: str, body: bytes, **kw: Any) -> None:
        self.published.append((kw["message_id"], self.host.log.durable_seq))
        await asyncio.sleep(0)


async def test_a_flush_sends_the_later_durable_decisions_with_its_own(tmp_path: Path) -> None:
    """Decisions applied while a flush waited for the publishing lock go out in its round
    once the sync has made them durable, so their own flushes find nothing left to send
    (each took a round of confirms of its own before: on RabbitMQ most of ``continue``'s
    latency). Each is still published only once its record is durable."""
    host = new_host(tmp_path, fragile_config(raise_above=100.0))
    try:
        broker = RecordingBroker(host)

        outbox = quiet_outbox(broker)
        live = Live(host)
        async with live.publishing:
            await outbox.flush(live)  # the creation's decisions
        assert not host.outbox
        sent_before = len(broker.published)
        decisions = []
        for trial_id in (1, 2):
            ids = {"experiment_id": EID, "trial_id": trial_id, "attempt": 1, "worker_id": "w"}
            host.apply(TrialStarted(**ids, slots=1), f"start-{trial_id}", at=0)
            applied = host.apply(
                OpCompleted(**ids, length=10, metric=0.5), f"done-{trial_id}", at=0
            )
            assert applied.step.commands
            decisions.append(applied.seq)
        assert host.log.durable_seq < decisions[0]
        async with live.publishing:
            await outbox.flush(live, upto=decisions[0])
        sent = broker.published[sent_before:]
        for seq in decisions:  # the later decision went out in the first one's flush
            assert any(m.startswith(f"{EID}/{seq}/") for m, _ in sent), (seq, sent)
        for message_id, durable in sent:
            seq = int(message_id.split("/")[1])
            assert durable >= seq, f"{message_id} published with the log durable to {durable}"
        assert not host.outbox
        async with live.publishing:  # the later input's own flush: nothing left
            await outbox.flush(live, upto=decisions[1])
        assert broker.published[sent_before:] == sent
    finally:
        host.close()


class HeldBroker:
    """Holds every publish until the gate opens, as a broker slow to confirm; records
    each publish's start and its confirm, in the order they happened."""

    def __init__(self) -> None:
        self.topology = Topology("outbox-test")
        self.gate = asyncio.Event()
        self.events: list[tuple[str, str]] = []

    @property
    def started(self) -> list[str]:
        return [message_id for what, message_id in self.events if what == "start"]

    async def publish(self, exchange: str, key: str, body: bytes, **kw: Any) -> None:
        self.events.append(("start", kw["message_id"]))
        await self.gate.wait()
        self.events.append(("confirm", kw["message_id"]))


async def test_work_queue_commands_go_out_together_and_a_workers_in_order(
    tmp_path: Path,
) -> None:
    """The work queue's commands of a batch are not chained one confirm after another
    (its consumers take them in parallel, and no order between them is promised; on
    RabbitMQ a batch of new trials waited a confirm round trip each), while one worker's
    commands still go one at a time, in log order, so a re-sent publish never overtakes
    an earlier one."""
    host = new_host(tmp_path, fragile_config(raise_above=100.0))
    try:
        (created,) = host.outbox
        work = [c for c in created.commands if c.worker_id is None]
        assert len(work) == 2, created.commands
        ids = {"experiment_id": EID, "attempt": 1}
        to_worker = Outgoing(
            seq=created.seq + 1,
            commands=(
                Command(ContinueTrial(**ids, trial_id=1, length=20), worker_id="w"),
                Command(PauseTrial(**ids, trial_id=2), worker_id="w"),
            ),
        )
        broker = HeldBroker()

        outbox = quiet_outbox(broker)
        publishing = asyncio.create_task(outbox._publish(host, [created, to_worker]))
        first, second = f"{EID}/{to_worker.seq}/0", f"{EID}/{to_worker.seq}/1"
        work_ids = [f"{EID}/{created.seq}/{i}" for i in range(len(created.commands))]
        await wait_for(
            lambda: set(work_ids) | {first} <= set(broker.started), 10, "the first publishes"
        )
        assert all(what == "start" for what, _ in broker.events)  # none confirmed yet
        assert second not in broker.started  # behind the first, to the same worker
        broker.gate.set()
        assert await publishing == [[], []]
        events = broker.events
        assert events.index(("confirm", first)) < events.index(("start", second))
    finally:
        host.close()


async def test_a_batch_publishes_at_most_work_in_flight_work_queue_commands_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart's or a long outage's whole outbox is one batch: its work-queue commands
    go out together, but no more than ``WORK_IN_FLIGHT`` at once, the next one as a
    confirm frees a place."""
    monkeypatch.setattr(outbox_module, "WORK_IN_FLIGHT", 2)
    host = new_host(tmp_path, fragile_config(raise_above=100.0))
    try:
        (created,) = host.outbox
        work = tuple(c for c in created.commands if c.worker_id is None)
        many = [Outgoing(seq=created.seq + n, commands=work) for n in range(3)]  # 6 commands
        broker = HeldBroker()

        outbox = quiet_outbox(broker)
        publishing = asyncio.create_task(outbox._publish(host, many))
        await wait_for(lambda: len(broker.started) == 2, 10, "the first two publishes")
        for _ in range(5):  # the loop turns: nothing more starts while both are held
            await asyncio.sleep(0)
        assert len(broker.started) == 2
        broker.gate.set()
        assert await publishing == [[], [], []]
        assert len(broker.started) == 6

        in_flight = most = 0
        for what, _ in broker.events:
            in_flight += 1 if what == "start" else -1
            most = max(most, in_flight)
        assert most == 2
    finally:
        host.close()
