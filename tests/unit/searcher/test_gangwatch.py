"""The gangs' watch: slots held for nothing are given back, and a part whose command was
lost on the way ends its attempt as a preemption; a part that ended is never taken for
lost while its exit is on its way."""

from __future__ import annotations

from rung.broker.schemas import ExitReason, KillTrial, WorkerHeartbeat
from rung.broker.schemas.events import PartState
from rung.searcher.service.gangwatch import MISSING_BEATS, MISSING_S, GangWatch, LostPart
from rung.searcher.service.workers import MAX_PARTS_BYTES, WorkerRegistry
from rung.searcher.trials import ExperimentRun

from .test_control import told
from .test_gangs import exited, gang_run, planned, reserved, started
from .test_trials import EXP

ENTRY = f"{EXP}/1/2"  # the attempt a plan makes
Parts = dict[str, dict[str, PartState]]


def reserving() -> ExperimentRun:
    run = gang_run()
    run.start()
    run.on_event(planned())
    return run


def running() -> ExperimentRun:
    run = reserving()
    run.on_event(reserved("w-a", 0))
    run.on_event(reserved("w-b", 1))
    run.on_event(started("w-a", run=run))
    return run


def first_lost(
    watch: GangWatch, run: ExperimentRun, parts: Parts, *, rounds: int
) -> list[LostPart]:
    """Up to ``rounds`` heartbeats of each worker, evenly apart; what the watch first
    found lost (it says so again at each check until the loss is applied)."""
    counts = dict.fromkeys(parts, 0)
    for index in range(rounds):
        counts = {w: n + 1 for w, n in counts.items()}
        _, found = watch.check({EXP: run}, parts, counts, index * MISSING_S / MISSING_BEATS)
        if found:
            return found
    return []


def test_a_lost_reserve_ends_the_attempt_as_a_preemption() -> None:
    run = reserving()
    parts: Parts = {"w-a": {ENTRY: "held"}, "w-b": {}}  # w-b never got its reserve_slots
    assert first_lost(GangWatch(), run, parts, rounds=MISSING_BEATS) == []  # the margin
    (part,) = first_lost(GangWatch(), run, parts, rounds=MISSING_BEATS + 2)
    assert (part.body.worker_id, part.body.reason) == ("w-b", ExitReason.PREEMPTED)
    assert "its reserve_slots was lost" in part.body.message
    assert part.message_id == "lost/1/2/w-b"
    step = run.on_event(part.body)
    assert told(step, KillTrial) == [(1, 2, "w-a")]
    assert (run.by_id[1].state, run.by_id[1].restarts, run.by_id[1].attempt) == ("QUEUED", 0, 3)


def test_a_lost_run_trial_ends_the_attempt() -> None:
    run = running()
    shown: Parts = {"w-a": {ENTRY: "running"}, "w-b": {ENTRY: "held"}}
    assert first_lost(GangWatch(), run, shown, rounds=3 * MISSING_BEATS) == []
    gone: Parts = {"w-a": {ENTRY: "running"}, "w-b": {}}
    (part,) = first_lost(GangWatch(), run, gone, rounds=MISSING_BEATS + 2)
    assert "its run_trial was lost" in part.body.message


def test_a_part_that_ended_is_never_taken_for_lost() -> None:
    # Its exit may wait behind a backlog of events: the worker shows it as ended.
    run = running()
    parts: Parts = {"w-a": {ENTRY: "running"}, "w-b": {ENTRY: "ended"}}
    assert first_lost(GangWatch(), run, parts, rounds=3 * MISSING_BEATS) == []
    # A member whose clean end the run took is not watched at all.
    run.on_event(started("w-b", run=run))
    run.on_event(exited("w-b", ExitReason.COMPLETED))
    assert run.by_id[1].gang_done == [1]
    quiet: Parts = {"w-a": {ENTRY: "running"}, "w-b": {}}
    assert first_lost(GangWatch(), run, quiet, rounds=3 * MISSING_BEATS) == []


def test_slots_held_for_nothing_are_given_back_once_a_while() -> None:
    run = reserving()
    watch = GangWatch()
    parts: Parts = {
        "w-a": {ENTRY: "held"},  # asked for: kept
        "w-b": {
            f"{EXP}/1/1": "running",  # an older attempt's part: stopped
            f"{EXP}/1/3": "held",  # newer than the run knows: another searcher's, kept
            f"{EXP}/9/1": "held",  # a trial it does not know: kept
            "other-exp/1/1": "held",  # not an experiment it serves: kept
            f"{EXP}/1/0": "ended",  # ended: nothing to give back
            "garbage": "held",
            f"{EXP}/\u0661/1": "held",  # not ASCII digits (ARABIC-INDIC ONE)
        },
        "w-c": {ENTRY: "held"},  # the current attempt, but not a part there
    }
    stale, _ = watch.check({EXP: run}, parts, {}, 0.0)
    assert sorted((h.worker_id, h.body.attempt) for h in stale) == [("w-b", 1), ("w-c", 2)]
    assert all(isinstance(h.body, KillTrial) for h in stale)
    again, _ = watch.check({EXP: run}, parts, {}, MISSING_S / 2)
    assert again == []  # told just now
    later, _ = watch.check({EXP: run}, parts, {}, MISSING_S * 2)
    assert len(later) == 2  # a kill lost too is told again
    assert len({h.message_id for h in [*stale, *later]}) == 4
    # An experiment that could not be recovered: whatever is held for it goes.
    broken, _ = GangWatch().check({}, {"w-d": {"exp-x/1/1": "held"}}, {}, 0.0, broken={"exp-x"})
    assert [(h.worker_id, h.body.experiment_id) for h in broken] == [("w-d", "exp-x")]


def test_the_registry_keeps_each_worker_s_parts_whole_within_a_bound() -> None:
    registry = WorkerRegistry(timeout_s=30)
    many = {f"{EXP}/{n}/1": "running" for n in range(200)}
    beat = WorkerHeartbeat(
        worker_id="w", slots=64, free_slots=0, running=list(many), parts={ENTRY: "held", **many}
    )
    registry.beat(beat)
    kept = registry.parts["w"]
    assert kept[ENTRY] == "held"
    # Ended ones come after, the newest first: their exits may still be on their way.
    ended = {f"{EXP}/{n}/1": "ended" for n in range(300, 500)}
    registry.beat(beat.model_copy(update={"parts": {**ended, ENTRY: "held", "junk": "held"}}))
    kept = registry.parts["w"]
    assert next(iter(kept)) == ENTRY
    assert f"{EXP}/499/1" in kept
    assert f"{EXP}/300/1" not in kept
    assert "junk" not in kept  # not an attempt's name
    assert sum(len(k) + len(v) + 8 for k, v in kept.items()) <= MAX_PARTS_BYTES
    assert registry.beats["w"].parts is None  # (not in the beat kept for list_workers)
