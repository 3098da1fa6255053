"""The next trial taken while a slot frees (issue 18): a worker told to stop a trial takes
one command ahead for its slots, at a lower consumer priority than a worker with a slot
free now, copies its context meanwhile, starts it once the slots are free, and gives it
back if they do not free in time, if it stops, or drops it if the attempt was killed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rung.broker.memory import MemoryBroker
from rung.broker.schemas import CloseTrial, Envelope, KillTrial, PauseTrial, RunTrial, encode
from rung.broker.topology import Topology
from rung.worker import upcoming
from rung.worker.trial_run import TrialRun
from tests.support import wait_for

from .test_agent_buckets import FakeWorker, control, listening, publish, run_trial, stop


class AheadWorker(FakeWorker):
    """Records where each trial's context was copied ahead, and where each started."""

    def __init__(self, broker: MemoryBroker, slots: int, tmp_path: Path, name: str) -> None:
        super().__init__(broker, slots, tmp_path / name)
        self.worker_id = name
        self.gate: asyncio.Event | None = None  # the context's copy waits for it, if set
        self.prepared: dict[int, Path] = {}
        self.run_dir_of: dict[int, Path | None] = {}

    async def _prepare(self, cmd: RunTrial) -> Path:
        run_dir = self.run_dirs.new(cmd.experiment_id, cmd.trial_id, cmd.attempt)
        if self.gate is not None:
            await self.gate.wait()
        run_dir.mkdir(parents=True)
        (run_dir / "train.py").write_text("")  # (a context's copy)
        self.prepared[cmd.trial_id] = run_dir
        return run_dir

    async def _start(
        self, cmd: RunTrial, slots: list[int], *, run_dir: Path | None = None
    ) -> TrialRun | None:
        self.run_dir_of[cmd.trial_id] = run_dir
        return await super()._start(cmd, slots, run_dir=run_dir)


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(Topology("ahead"))
    await broker.start()
    yield broker
    await broker.close()


async def ready(
    broker: MemoryBroker, tmp_path: Path, name: str = "w1", slots: int = 1
) -> AheadWorker:
    return await listening(AheadWorker(broker, slots, tmp_path, name))


def held_trial(worker: AheadWorker) -> int | None:
    """The trial of the command the worker holds ahead, if any."""
    held = worker.upcoming.held
    return None if held is None else held.body.trial_id


def work_depth(broker: MemoryBroker) -> int:
    return len(broker.queues[broker.topology.work_queue].messages)


async def busy_and_told_to_stop(
    broker: MemoryBroker, worker: AheadWorker, how: type[PauseTrial | CloseTrial] = PauseTrial
) -> None:
    """The worker's one slot runs trial 1, which the searcher has just told to stop."""
    await publish(broker, run_trial(1, 1))
    free = tuple(range(1, worker.total_slots))  # the buckets its other slots fit
    await wait_for(
        lambda: 1 in worker.started and tuple(sorted(worker._work)) == free, 5, "trial 1 running"
    )
    await control(broker, worker, how(experiment_id="e1", trial_id=1, attempt=1))
    await wait_for(  # (the bucket of all its slots: the free ones and the freeing one)
        lambda: worker._work_priority.get(worker.total_slots) == 0, 5, "a consumer of priority 0"
    )


async def holding_trial_2(broker: MemoryBroker, tmp_path: Path) -> AheadWorker:
    """A one-slot worker whose trial 1 was told to pause, holding trial 2 ahead."""
    worker = await ready(broker, tmp_path)
    await busy_and_told_to_stop(broker, worker)
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: held_trial(worker) == 2, 5, "trial 2 taken ahead")
    return worker


@pytest.mark.parametrize("how", [PauseTrial, CloseTrial])
async def test_the_next_trial_is_taken_while_the_slot_frees_and_starts_there(
    broker: MemoryBroker, tmp_path: Path, how: type[PauseTrial | CloseTrial]
) -> None:
    worker = await ready(broker, tmp_path)
    await busy_and_told_to_stop(broker, worker, how)
    assert worker.started[1].stopped_ops == ["pause" if how is PauseTrial else "close"]
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: 2 in worker.prepared, 5, "trial 2 taken ahead")
    assert held_trial(worker) == 2
    assert 2 not in worker.started  # the slot is not free yet: no second process
    assert worker.prepared[2].name.startswith("trial-2-attempt-1")  # its context, meanwhile
    assert worker.wanted_buckets() == ()  # one taken ahead at most
    assert work_depth(broker) == 0
    worker.finish(1)  # the process of trial 1 is reaped
    await wait_for(lambda: 2 in worker.started, 5, "trial 2 to start in the freed slot")
    assert worker.slots_of[2] == [0]
    assert worker.run_dir_of[2] == worker.prepared[2]  # started where its context went
    assert held_trial(worker) is None
    assert worker.upcoming.leaving == {}
    await stop(worker)


async def test_a_worker_with_a_free_slot_takes_work_before_one_whose_slot_is_freeing(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    freeing = await ready(broker, tmp_path, "w-freeing")
    await busy_and_told_to_stop(broker, freeing)
    free = await ready(broker, tmp_path, "w-free")
    assert free._work_priority == {1: 1}
    for trial_id in (2, 3):  # without priorities, round robin gives one to each
        await publish(broker, run_trial(trial_id, 1))
        await wait_for(lambda t=trial_id: t in free.started, 5, f"trial {trial_id} on w-free")  # type: ignore[misc]
        free.finish(trial_id)
        await wait_for(lambda: free.wanted_buckets() == (1,) and 1 in free._work, 5, "w-free")
    assert freeing.upcoming.held is None
    await stop(free)
    await stop(freeing)


async def test_a_command_taken_ahead_goes_back_when_the_slot_does_not_free_in_time(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upcoming, "HOLD_S", 0.05)
    worker = await ready(broker, tmp_path)
    await busy_and_told_to_stop(broker, worker)  # a script that takes its time to leave
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: 2 in worker.prepared, 5, "trial 2 taken ahead")
    await wait_for(lambda: worker.upcoming.held is None, 5, "trial 2 given back")
    assert worker.upcoming.leaving == {}  # the slot that did not free counts no more
    await wait_for(lambda: work_depth(broker) == 1, 5, "trial 2 back on the queue")
    assert worker.wanted_buckets() == ()  # not taken again, and again
    other = await ready(broker, tmp_path, "w2")  # a worker with a slot free takes it
    await wait_for(lambda: 2 in other.started, 5, "trial 2 on the other worker")
    assert 2 not in worker.started
    await wait_for(lambda: not worker.prepared[2].exists(), 5, "its run directory removed")
    await stop(other)
    await stop(worker)


async def test_a_worker_that_stops_gives_back_the_command_it_took_ahead(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await holding_trial_2(broker, tmp_path)
    await worker.shutdown(grace_s=5)
    assert worker.upcoming.held is None
    assert work_depth(broker) == 1  # back on the queue, for another worker
    assert 2 not in worker.started


async def test_a_command_taken_ahead_whose_attempt_was_killed_never_runs(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await holding_trial_2(broker, tmp_path)
    held = worker.upcoming.held
    assert held is not None
    await control(broker, worker, KillTrial(experiment_id="e1", trial_id=2, attempt=1))
    await wait_for(lambda: held.delivery.settled, 5, "trial 2 settled at once")
    assert work_depth(broker) == 0  # acknowledged, not given back: the attempt is over
    assert worker.upcoming.held is None
    await wait_for(lambda: not worker.prepared[2].exists(), 5, "its context's copy removed")
    worker.finish(1)
    await wait_for(lambda: worker._work_priority == {1: 1}, 5, "its free slot consumed")
    assert 2 not in worker.started
    await stop(worker)


async def test_a_slot_that_frees_with_nothing_taken_ahead_is_consumed_at_priority_one(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await ready(broker, tmp_path)
    await busy_and_told_to_stop(broker, worker)
    worker.finish(1)
    await wait_for(lambda: worker._work_priority == {1: 1}, 5, "priority 1")
    assert worker.upcoming.leaving == {}
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: 2 in worker.started, 5, "trial 2")
    assert worker.run_dir_of[2] is None  # taken with its slot free: copied at its start
    await stop(worker)


async def test_a_stop_that_comes_after_the_process_was_reaped_frees_nothing(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    """A trial's process reaped, its trial_exited still on its way: a pause that comes
    now must not count its slot as freeing again (it is free, and maybe taken)."""
    worker = await ready(broker, tmp_path)
    await publish(broker, run_trial(1, 1))
    await wait_for(lambda: 1 in worker.started and not worker._work, 5, "trial 1 running")
    worker.started[1].hold_exit = asyncio.Event()
    worker.finish(1)  # reaped; its exit not yet confirmed: it is still in worker.runs
    await wait_for(lambda: worker._work_priority == {1: 1}, 5, "its slot consumed again")
    assert ("e1", 1, 1) in worker.runs
    await control(broker, worker, PauseTrial(experiment_id="e1", trial_id=1, attempt=1))
    await wait_for(lambda: worker.started[1].stopped_ops == ["pause"], 5, "the pause")
    assert worker.upcoming.leaving == {}
    assert worker.wanted_buckets() == (1,)
    worker.started[1].hold_exit.set()
    await stop(worker)


async def test_the_free_slots_a_held_command_counts_on_are_not_taken_by_smaller_ones(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await ready(broker, tmp_path, slots=2)
    await busy_and_told_to_stop(broker, worker)  # slot 0 freeing, slot 1 free
    assert worker._work_priority == {1: 1, 2: 0}
    await publish(broker, run_trial(2, 2))
    await wait_for(lambda: held_trial(worker) == 2, 5, "the 2-slot trial taken ahead")
    await publish(broker, run_trial(3, 1))
    await wait_for(lambda: worker.wanted_buckets() == () and not worker._work, 5, "no intake")
    assert 3 not in worker.started  # slot 1 is spoken for
    assert work_depth(broker) == 1
    worker.finish(1)
    await wait_for(lambda: 2 in worker.started, 5, "the 2-slot trial")
    assert sorted(worker.slots_of[2]) == [0, 1]
    worker.finish(2)
    await wait_for(lambda: 3 in worker.started, 5, "the 1-slot trial, after it")
    await stop(worker)


async def test_a_command_delivered_often_already_waits_longer_for_the_slot(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each give-back counts toward the work queue's delivery limit, and the broker hands
    a command given back to the next consumer first: one delivered SLOW_AFTER times
    already waits SLOW_HOLD_S for these slots rather than going round again."""
    monkeypatch.setattr(upcoming, "HOLD_S", 0.05)
    worker = await ready(broker, tmp_path)
    await busy_and_told_to_stop(broker, worker)
    t = broker.topology
    envelope = Envelope(message_id="m2", experiment_id="e1", body=run_trial(2, 1))
    await broker.publish(
        t.commands_exchange,
        "work",
        encode(envelope),
        message_id="m2",
        headers={"x-delivery-count": upcoming.SLOW_AFTER},
    )
    await wait_for(lambda: 2 in worker.prepared, 5, "trial 2 taken ahead")
    held = worker.upcoming.held
    assert held is not None
    assert held.timer is not None
    assert held.timer.when() - asyncio.get_running_loop().time() > upcoming.SLOW_HOLD_S / 2
    worker.finish(1)
    await wait_for(lambda: 2 in worker.started, 5, "trial 2 once the slot is free")
    assert worker.run_dir_of[2] == worker.prepared[2]
    await stop(worker)


async def test_a_held_command_whose_start_meets_the_shutdown_goes_back(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await ready(broker, tmp_path)
    worker.gate = asyncio.Event()  # the context's copy takes its time
    await busy_and_told_to_stop(broker, worker)
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: held_trial(worker) == 2, 5, "trial 2 taken ahead")
    worker.finish(1)  # its start now waits for the copy
    await wait_for(lambda: held_trial(worker) is None, 5, "trial 2 taken out to start")
    stopping = asyncio.create_task(worker.shutdown(grace_s=5))
    await wait_for(lambda: worker._stopping, 5, "the shutdown")
    worker.gate.set()
    await stopping
    assert 2 not in worker.started
    assert work_depth(broker) == 1  # back on the queue, for another worker


async def test_a_give_back_does_not_wait_for_the_contexts_copy(
    broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context's copy can wait up to a minute for the searcher: the command goes back
    to the queue at once, and the copy is removed once it has ended."""
    monkeypatch.setattr(upcoming, "HOLD_S", 0.05)
    worker = await ready(broker, tmp_path)
    worker.gate = asyncio.Event()  # the copy does not end
    await busy_and_told_to_stop(broker, worker)
    await publish(broker, run_trial(2, 1))
    await wait_for(lambda: held_trial(worker) == 2, 5, "trial 2 taken ahead")
    await wait_for(lambda: work_depth(broker) == 1, 5, "trial 2 back on the queue")
    assert 2 not in worker.prepared  # its copy is still under way
    worker.gate.set()
    await wait_for(lambda: 2 in worker.prepared, 5, "the copy's end")
    await wait_for(lambda: not worker.prepared[2].exists(), 5, "the copy removed")
    worker.finish(1)
    await stop(worker)
