"""The worker's intake by work bucket: it takes only work that fits its free slots, and a
trial too large for it never stops it taking work that fits (no head-of-line blocking)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from rung.broker.errors import BrokerUnavailableError
from rung.broker.memory import MemoryBroker
from rung.broker.port import DEAD_REASON_HEADER, Delivery
from rung.broker.schemas import Envelope, RunTrial, encode
from rung.broker.schemas.envelope import Body
from rung.broker.topology import (
    DEAD_QUEUE_MAX_LENGTH,
    MAX_SLOTS_PER_TRIAL,
    Topology,
    work_bucket,
    work_key,
)
from rung.worker.agent import Worker
from rung.worker.trial_run import TrialRun
from tests.support import wait_for

CONTEXT = "0" * 64


class FakeRun:
    """Stands in for a TrialRun: it 'runs' until the test ends it. With ``hold_exit``
    set, its process is 'reaped' when it ends, but its trial_exited is 'on its way' until
    the test releases it."""

    member = False  # the whole trial, or the chief's part of one on several workers

    def __init__(self, cmd: RunTrial, run_dir: Path) -> None:
        self.cmd = cmd
        self.run_dir = run_dir  # never made: no process, no context
        self.key = (cmd.experiment_id, cmd.trial_id, cmd.attempt)
        self.done = asyncio.Event()
        self.hold_exit: asyncio.Event | None = None
        self.on_reaped: Callable[[], None] | None = None
        self.slot_ids: list[int] = []
        self.stopped_ops: list[str] = []

    def stop_ops(self, how: str) -> None:
        self.stopped_ops.append(how)

    async def wait(self) -> None:
        await self.done.wait()
        if self.on_reaped is not None:
            self.on_reaped()
        if self.hold_exit is not None:
            await self.hold_exit.wait()

    def request_preemption(self) -> None:
        self.done.set()

    def kill(self, reason: str) -> None:
        self.done.set()


class FakeWorker(Worker):
    """A worker whose trials are :class:`FakeRun`: no process, no context to fetch."""

    def __init__(self, broker: MemoryBroker, slots: int, tmp_path: Path) -> None:
        super().__init__(broker, worker_id=f"w{slots}", slots=slots, work_dir=tmp_path)
        self.started: dict[int, FakeRun] = {}
        self.slots_of: dict[int, list[int]] = {}

    async def _start(
        self, cmd: RunTrial, slots: list[int], *, run_dir: Path | None = None
    ) -> TrialRun | None:
        run_dir = run_dir or self.run_dirs.new(cmd.experiment_id, cmd.trial_id, cmd.attempt)
        run = FakeRun(cmd, run_dir)
        run.slot_ids = slots
        self.started[cmd.trial_id] = run
        self.slots_of[cmd.trial_id] = slots
        self.runs[run.key] = run  # type: ignore[assignment]
        return run  # type: ignore[return-value]

    def finish(self, trial_id: int) -> None:
        self.started[trial_id].done.set()


def run_trial(trial_id: int, slots: int) -> RunTrial:
    return RunTrial(
        experiment_id="e1",
        trial_id=trial_id,
        request_id=f"r{trial_id}",
        attempt=1,
        length=1,
        hparams={},
        trial_seed=0,
        context_hash=CONTEXT,
        entrypoint=["python", "train.py"],
        slots=slots,
        checkpoint_root="checkpoints",
        max_restarts=0,
    )


async def publish(broker: MemoryBroker, body: RunTrial, key: str | None = None) -> None:
    t = broker.topology
    envelope = Envelope(message_id=f"m{body.trial_id}", experiment_id="e1", body=body)
    await broker.publish(
        t.commands_exchange,
        key if key is not None else work_key(body.slots),
        encode(envelope),
        message_id=envelope.message_id,
    )


_ids = itertools.count(1)
W = TypeVar("W", bound=Worker)


async def listening(worker: W) -> W:
    """The worker with its control queue consumed and its intake open, as ``run`` sets
    them up (on the in-memory broker it was made with)."""
    broker = worker.broker
    t = broker.topology
    worker._control_queue = await broker.declare_private_queue(
        (t.commands_exchange, t.worker_key(worker.worker_id))
    )
    await broker.subscribe(worker._control_queue, worker._on_control, prefetch=32)
    await worker._update_intake()
    return worker


async def control(broker: MemoryBroker, worker: Worker, body: Body) -> None:
    """Send ``body`` to the worker's control queue, as the searcher does."""
    t = broker.topology
    envelope = Envelope(message_id=f"c{next(_ids)}", experiment_id="e1", body=body)
    await broker.publish(
        t.commands_exchange,
        t.worker_key(worker.worker_id),
        encode(envelope),
        message_id=envelope.message_id,
    )


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(Topology("buckets"))
    await broker.start()
    yield broker
    await broker.close()


async def stop(worker: Worker) -> None:
    worker._stopping = True
    await worker._pause_intake()
    for run in list(worker.runs.values()):
        run.kill("test over")
    await asyncio.gather(*worker._tasks)


# ---------------------------------------------------------------- buckets


def test_a_trial_goes_to_the_smallest_bucket_that_fits_it() -> None:
    cases = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 33, 64)
    assert [work_bucket(n) for n in cases] == [1, 1, 2, 3, 4, 5, 6, 7, 8, 16, 16, 32, 64, 64]
    assert work_key(1) == "work"
    assert work_key(0) == "work"
    assert work_key(3) == "work.3"
    assert work_key(12) == "work.16"
    # Above the largest bucket (refused by the config; a forged or old message): the
    # largest bucket, whose workers dead-letter what they cannot fit.
    assert work_bucket(MAX_SLOTS_PER_TRIAL * 10) == MAX_SLOTS_PER_TRIAL


def test_the_topology_declares_every_bucket_queue_and_binding() -> None:
    t = Topology("x")
    sizes = (2, 3, 4, 5, 6, 7, 8, 16, 32, 64)
    assert t.work_queues == ("x.work", *(f"x.work.{b}" for b in sizes))
    specs = {q.name: q for q in t.queues}
    for name in t.work_queues:
        # As the work queue always was: quorum, dead-lettering, with a delivery limit.
        assert specs[name].declare_arguments() == specs[t.work_queue].declare_arguments()
    bound = {(b.exchange, b.routing_key): b.queue for b in t.bindings}
    assert bound[(t.commands_exchange, "work")] == "x.work"
    assert bound[(t.commands_exchange, "work.8")] == "x.work.8"
    assert specs[t.dead_queue].arguments() == {
        "x-queue-type": "quorum",
        "x-max-length": DEAD_QUEUE_MAX_LENGTH,
        "x-overflow": "drop-head",
    }


async def test_the_memory_broker_drops_the_oldest_dead_letters_past_the_bound() -> None:
    broker = MemoryBroker(Topology("bounded"))
    await broker.start()
    try:
        t = broker.topology
        queue = broker.queues[t.dead_queue]
        assert queue.max_length == DEAD_QUEUE_MAX_LENGTH
        queue.max_length = 3  # the same rule, made small
        for i in range(5):
            await broker.publish(t.dead_exchange, "", f"{i}".encode(), message_id=f"d{i}")
        assert [m.message_id for m in queue.messages] == ["d2", "d3", "d4"]
    finally:
        await broker.close()


# ---------------------------------------------------------------- the agent's intake


def test_a_worker_consumes_the_buckets_that_fit_its_slots(tmp_path: Path) -> None:
    broker = MemoryBroker(Topology("b"))
    assert FakeWorker(broker, 1, tmp_path).buckets == (1,)
    assert FakeWorker(broker, 4, tmp_path).buckets == (1, 2, 3, 4)
    # A worker of an odd size takes trials of its own size (3 or 6 GPUs, say).
    assert FakeWorker(broker, 3, tmp_path).buckets == (1, 2, 3)
    assert FakeWorker(broker, 6, tmp_path).buckets == (1, 2, 3, 4, 5, 6)
    assert FakeWorker(broker, 12, tmp_path).buckets == (1, 2, 3, 4, 5, 6, 7, 8)
    assert FakeWorker(broker, 64, tmp_path).buckets == (1, *range(2, 9), 16, 32, 64)


async def test_a_trial_too_large_for_every_worker_never_blocks_work_that_fits(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    """The head-of-line blocking of issue 16: a 1-slot worker stopped taking work for good
    once it saw a trial of 8 slots. Now that trial waits in its bucket, untouched."""
    worker = FakeWorker(broker, 1, tmp_path)
    await worker._update_intake()
    await publish(broker, run_trial(1, 8))
    for trial_id in (2, 3):
        await publish(broker, run_trial(trial_id, 1))
    await wait_for(lambda: 2 in worker.started, 5, "the first 1-slot trial")
    worker.finish(2)
    await wait_for(lambda: 3 in worker.started, 5, "the second 1-slot trial")
    assert 1 not in worker.started
    assert broker.depth(broker.topology.bucket_queue(8)) == 1
    await stop(worker)


async def test_a_slot_takes_the_next_trial_once_the_process_is_reaped_not_after_its_exit_event(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    """Issue 18: the last logs and the trial_exited of one trial go out while the next
    trial starts in its slot; the slot is not held through that hop."""
    worker = FakeWorker(broker, 1, tmp_path)
    await worker._update_intake()
    await publish(broker, run_trial(1, 1))
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: 1 in worker.started, 5, "the first trial")
    first = worker.started[1]
    first.hold_exit = asyncio.Event()
    worker.finish(1)
    await wait_for(lambda: 2 in worker.started, 5, "the next trial, in the freed slot")
    assert worker.slots_of[2] == worker.slots_of[1]
    assert first.key in worker.runs  # still reporting its exit: control still reaches it
    first.hold_exit.set()
    await wait_for(lambda: first.key not in worker.runs, 5, "the first trial's end")
    assert worker.free == []  # released once, not twice
    await stop(worker)


async def test_a_start_that_raises_is_forgotten_and_the_command_runs_when_it_comes_again(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command is given back when the start raises (trial_started refused, say);
    the attempt must not stay known here, or its copy would be dropped as a duplicate."""
    calls: list[int] = []

    async def start(self: TrialRun) -> bool:
        calls.append(self.cmd.trial_id)
        if len(calls) == 1:
            raise BrokerUnavailableError("the broker connection is down (the test's)")
        return False  # the second time: it cannot start, and says so (ERRORED)

    async def no_context(digest: str, destination: Path, **_: object) -> None:
        return None  # (copied, too large to compare)

    async def no_run_dir(digest: str, destination: Path) -> Path:
        return destination

    monkeypatch.setattr(TrialRun, "start", start)
    worker = Worker(broker, worker_id="w1", slots=1, work_dir=tmp_path)
    monkeypatch.setattr(worker.contexts, "copy", no_context)
    monkeypatch.setattr(worker.contexts, "run_dir", no_run_dir)
    await worker._update_intake()
    await publish(broker, run_trial(1, 1))
    await wait_for(lambda: len(calls) == 2, 5, "the command, given back, started again")
    await wait_for(lambda: worker.free == [0], 5, "the slot free again")
    assert worker.runs == {}
    await stop(worker)


async def test_a_bucket_is_consumed_only_while_its_trials_fit_the_free_slots(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = FakeWorker(broker, 4, tmp_path)
    t = broker.topology
    await worker._update_intake()
    assert sorted(worker._work) == [1, 2, 3, 4]
    await publish(broker, run_trial(1, 3))  # the 3-slot bucket
    await wait_for(lambda: 1 in worker.started, 5, "the 3-slot trial")
    assert len(worker.slots_of[1]) == 3
    # One slot left: only 1-slot work (the subscriptions change while the trial starts).
    await wait_for(lambda: sorted(worker._work) == [1], 5, "only the 1-slot bucket consumed")
    await publish(broker, run_trial(2, 2))
    await publish(broker, run_trial(3, 1))
    await wait_for(lambda: 3 in worker.started, 5, "the 1-slot trial beside it")
    await wait_for(lambda: sorted(worker._work) == [], 5, "no bucket consumed: no slot free")
    assert 2 not in worker.started
    assert broker.depth(t.bucket_queue(2)) == 1
    # Slots free only when the trial's run ends; then the 2-slot trial fits and runs.
    worker.finish(1)
    await wait_for(lambda: 2 in worker.started, 5, "the 2-slot trial")
    assert sorted(worker.slots_of[2]) == [0, 1]
    await stop(worker)


async def test_two_deliveries_that_race_for_the_same_slots_run_one_after_the_other(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    """Both buckets fit 4 free slots, so both deliver at once; whichever comes second no
    longer fits: it is given back, its bucket paused until slots free, and it runs then."""
    worker = FakeWorker(broker, 4, tmp_path)
    await publish(broker, run_trial(1, 4))
    await publish(broker, run_trial(2, 2))
    await worker._update_intake()
    await wait_for(lambda: len(worker.started) == 1, 5, "one trial")
    first = next(iter(worker.started))
    second = 2 if first == 1 else 1
    queue = broker.topology.bucket_queue(4 if second == 1 else 2)
    await wait_for(lambda: broker.depth(queue) == 1, 5, "the second one given back")
    assert second not in worker.started
    assert all(b <= len(worker.free) for b in worker._work)
    worker.finish(first)
    await wait_for(lambda: second in worker.started, 5, "the other trial, once slots freed")
    await stop(worker)


async def test_a_misrouted_run_trial_is_dead_lettered_not_requeued_for_ever(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = FakeWorker(broker, 1, tmp_path)
    t = broker.topology
    dead: list[str] = []

    async def on_dead(delivery: Delivery) -> None:
        dead.append(str(delivery.headers.get(DEAD_REASON_HEADER)))
        await delivery.ack()

    await broker.subscribe(t.dead_queue, on_dead, prefetch=10)
    await worker._update_intake()
    await publish(broker, run_trial(1, 10**6), key="work")
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: len(dead) == 1, 5, "the dead letter")
    assert "needs 1000000 slots" in dead[0]
    assert "work.64" in dead[0]
    await wait_for(lambda: 2 in worker.started, 5, "the well-routed trial")
    await stop(worker)


async def test_a_stopping_worker_takes_nothing(broker: MemoryBroker, tmp_path: Path) -> None:
    worker = FakeWorker(broker, 2, tmp_path)
    await worker._update_intake()
    await stop(worker)
    assert worker.wanted_buckets() == ()
    assert worker._work == {}
    await publish(broker, run_trial(1, 1))
    assert broker.depth(broker.topology.work_queue) == 1


def test_the_trial_environment_allowlist_is_kept(tmp_path: Path) -> None:
    worker = Worker(MemoryBroker(), slots=1, work_dir=tmp_path, trial_env_allow=["HF_HOME"])
    assert worker.trial_env_allow == ("HF_HOME",)
