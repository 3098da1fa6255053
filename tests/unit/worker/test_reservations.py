"""A worker's part of a trial on several workers (gang scheduling): it holds slots for the
part as they come free, before any other work, says so once it holds them all, starts the
part in them, and gives them back when the attempt ends first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rung.broker.memory import MemoryBroker
from rung.broker.schemas import (
    ExitReason,
    GangPlacement,
    KillTrial,
    ReserveSlots,
    RunTrial,
    SlotsReserved,
    TrialExited,
    decode,
)
from rung.broker.schemas.envelope import Body
from rung.broker.topology import Topology
from rung.worker.reservations import Reservations
from tests.support import wait_for

from .test_agent_buckets import FakeWorker, control, listening, publish, run_trial, stop


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(Topology("gangs"))
    await broker.start()
    yield broker
    await broker.close()


async def ready(broker: MemoryBroker, tmp_path: Path, slots: int = 4) -> FakeWorker:
    return await listening(FakeWorker(broker, slots, tmp_path))


def events(broker: MemoryBroker) -> list[Body]:
    queue = broker.queues[broker.topology.events_queue]
    return [decode(message.body).body for message in queue.messages]


def reserve(slots: int, part: int = 0, trial_id: int = 9) -> ReserveSlots:
    return ReserveSlots(experiment_id="e1", trial_id=trial_id, attempt=1, part=part, slots=slots)


def part_run(trial_id: int = 9, rank: int = 0) -> object:
    placement = GangPlacement(
        rank=rank,
        addrs=["10.0.0.1", "10.0.0.2"],
        slot_counts=[4, 4],
        pub_port=5000,
        master_port=5001,
    )
    return run_trial(trial_id, 8).model_copy(update={"gang": placement})


async def test_held_slots_come_as_they_free_and_no_other_work_takes_them(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await ready(broker, tmp_path)
    for trial_id in (1, 2):
        await publish(broker, run_trial(trial_id, 1))
    await wait_for(lambda: {1, 2} <= set(worker.started), 5, "two small trials")
    await control(broker, worker, reserve(4))
    await wait_for(lambda: worker.reservations.held() == 2, 5, "the two free slots held")
    # A small trial that comes now waits: the free slots are the part's.
    await publish(broker, run_trial(3, 1))
    worker.finish(1)
    await wait_for(lambda: worker.reservations.held() == 3, 5, "the freed slot held")
    assert 3 not in worker.started
    assert not any(isinstance(e, SlotsReserved) for e in events(broker))
    worker.finish(2)
    await wait_for(lambda: any(isinstance(e, SlotsReserved) for e in events(broker)), 5, "answer")
    (answer,) = [e for e in events(broker) if isinstance(e, SlotsReserved)]
    assert (answer.part, answer.worker_id) == (0, worker.worker_id)
    assert answer.pub_port is not None
    assert answer.master_port is not None
    assert answer.pub_port != answer.master_port
    assert worker._parts() == {"e1/9/1": "held"}  # what its heartbeats show
    # The part starts in the slots held, all four.
    await control(broker, worker, part_run())  # type: ignore[arg-type]
    await wait_for(lambda: 9 in worker.started, 5, "the part")
    assert sorted(worker.slots_of[9]) == [0, 1, 2, 3]
    assert worker._parts() == {"e1/9/1": "running"}
    assert 3 not in worker.started
    worker.finish(9)
    await wait_for(lambda: 3 in worker.started, 5, "the small trial, after the part")
    assert worker._parts() == {"e1/9/1": "ended"}  # its exit may still be on its way
    await stop(worker)


async def test_a_kill_gives_the_held_slots_back(broker: MemoryBroker, tmp_path: Path) -> None:
    worker = await ready(broker, tmp_path)
    await publish(broker, run_trial(1, 1))
    await wait_for(lambda: 1 in worker.started, 5, "a small trial")
    await control(broker, worker, reserve(4))
    await wait_for(lambda: worker.reservations.held() == 3, 5, "three slots held")
    await publish(broker, run_trial(2, 2))
    await control(broker, worker, KillTrial(experiment_id="e1", trial_id=9, attempt=1))
    await wait_for(lambda: 2 in worker.started, 5, "work on the slots given back")
    assert len(worker.reservations) == 0
    # The run_trial of an attempt whose slots were given back does not run: the searcher
    # is told, and the attempt ends as a preemption.
    await control(broker, worker, part_run())  # type: ignore[arg-type]
    await wait_for(
        lambda: any(isinstance(e, TrialExited) for e in events(broker)), 5, "the part's refusal"
    )
    (refusal,) = [e for e in events(broker) if isinstance(e, TrialExited)]
    assert refusal.reason is ExitReason.PREEMPTED
    assert "holds no slots for part 0 of attempt 1" in refusal.message
    assert 9 not in worker.started
    await stop(worker)


async def test_a_part_larger_than_the_worker_is_refused_and_a_resent_one_held_once(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await ready(broker, tmp_path, slots=2)
    await control(broker, worker, reserve(4, part=1, trial_id=5))
    await wait_for(lambda: bool(events(broker)), 5, "the refusal")
    (refusal,) = events(broker)
    assert isinstance(refusal, TrialExited)
    assert refusal.reason is ExitReason.PREEMPTED
    assert "it has 2 slots, the part needs 4" in refusal.message
    await control(broker, worker, reserve(2, part=1))
    await control(broker, worker, reserve(2, part=1))  # re-sent under another id
    await wait_for(lambda: len(events(broker)) == 2, 5, "the answer")
    assert worker.reservations.held() == 2
    answer = events(broker)[1]
    assert isinstance(answer, SlotsReserved)
    assert (answer.part, answer.pub_port) == (1, None)  # only the chief's part picks ports
    await stop(worker)


async def test_a_stopping_worker_tells_the_searcher_its_parts_will_not_run(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await ready(broker, tmp_path)
    await control(broker, worker, reserve(2))
    await wait_for(lambda: worker.reservations.held() == 2, 5, "the slots held")
    await worker.shutdown(grace_s=1)
    (held, *_), exits = events(broker), [e for e in events(broker) if isinstance(e, TrialExited)]
    assert isinstance(held, SlotsReserved)
    assert [(e.trial_id, e.reason) for e in exits] == [(9, ExitReason.PREEMPTED)]
    assert "stopped" in exits[0].message


def test_reservations_take_slots_in_the_order_they_were_asked_for() -> None:
    reservations = Reservations()
    reservations.add(reserve(2, trial_id=1))
    reservations.add(reserve(3, part=1, trial_id=2))
    left, done = reservations.give([3])
    assert (left, done) == ([], [])
    left, done = reservations.give([1, 0])
    assert ([r.cmd.trial_id for r in done], left) == ([1], [])
    left, done = reservations.give([5, 4, 2])
    assert ([r.cmd.trial_id for r in done], left) == ([2], [5])
    assert sorted(reservations.by_key[("e1", 1, 1)].held) == [0, 3]
    assert sorted(reservations.by_key[("e1", 2, 1)].held) == [1, 2, 4]
    assert reservations.by_key[("e1", 1, 1)].ports is not None  # part 0: the chief's
    assert reservations.by_key[("e1", 2, 1)].ports is None
    chief = reservations.pop(("e1", 1, 1))
    assert chief is not None
    assert chief.sockets == []  # its ports let go as it ends
    assert reservations.pop(("e1", 2, 1)) is not None


async def test_a_kill_that_overtakes_its_reserve_leaves_nothing_held(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    worker = await ready(broker, tmp_path)
    await control(broker, worker, KillTrial(experiment_id="e1", trial_id=9, attempt=1))
    await control(broker, worker, reserve(2))
    await control(broker, worker, part_run())  # type: ignore[arg-type]
    await publish(broker, run_trial(1, 4))  # every slot is free for other work
    await wait_for(lambda: 1 in worker.started, 5, "work on every slot")
    assert len(worker.reservations) == 0
    assert 9 not in worker.started
    assert events(broker) == []  # nothing said of an attempt that has ended
    await stop(worker)


async def test_a_part_that_cannot_start_shows_as_ended_while_its_exit_is_on_its_way(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    class CannotStart(FakeWorker):
        async def _start(
            self, cmd: RunTrial, slots: list[int], *, run_dir: Path | None = None
        ) -> None:
            return None  # (a real one has reported the part's exit, ERRORED)

    worker = CannotStart(broker, 4, tmp_path)
    t = broker.topology
    worker._control_queue = await broker.declare_private_queue(
        (t.commands_exchange, t.worker_key(worker.worker_id))
    )
    await broker.subscribe(worker._control_queue, worker._on_control, prefetch=32)
    await control(broker, worker, reserve(4))
    await wait_for(lambda: worker._parts() == {"e1/9/1": "held"}, 5, "the slots held")
    await control(broker, worker, part_run())  # type: ignore[arg-type]
    await wait_for(lambda: worker._parts() == {"e1/9/1": "ended"}, 5, "the part ended")
    assert sorted(worker.free) == [0, 1, 2, 3]
    await stop(worker)
