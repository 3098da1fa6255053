"""The gangs' watch: slots held for nothing are given back, and a part whose command was
lost on the way ends its attempt as a preemption."""

from __future__ import annotations

from rung.broker.schemas import ExitReason, KillTrial, WorkerHeartbeat
from rung.searcher.service.gangwatch import MISSING_BEATS, MISSING_S, GangWatch
from rung.searcher.trials import ExperimentRun

from .test_control import told
from .test_gangs import exited, gang_run, planned, reserved, started
from .test_trials import EXP


def beat(
    worker: str, *, reserved: list[str] | None = None, running: list[str] | None = None
) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker,
        slots=4,
        free_slots=0,
        address="10.0.0.1",
        reserved=reserved,
        running=running or [],
    )


def reserving() -> ExperimentRun:
    run = gang_run()
    run.start()
    run.on_event(planned())
    return run


def watch_for(
    watch: GangWatch,
    run: ExperimentRun,
    beats: dict[str, WorkerHeartbeat],
    *,
    rounds: int,
    start: float = 0.0,
) -> list[object]:
    """Up to ``rounds`` heartbeats of each worker, evenly apart; what the watch first found
    lost (it says so again at each check until the loss is applied)."""
    counts = dict.fromkeys(beats, 0)
    for index in range(rounds):
        counts = {w: n + 1 for w, n in counts.items()}
        at = start + index * MISSING_S / MISSING_BEATS
        _, found = watch.check({EXP: run}, beats, counts, at)
        if found:
            return list(found)
    return []


def test_a_lost_reserve_ends_the_attempt_as_a_preemption() -> None:
    run = reserving()
    entry = f"{EXP}/1/2"
    beats = {"w-a": beat("w-a", reserved=[entry]), "w-b": beat("w-b")}  # w-b never got it
    lost = watch_for(GangWatch(), run, beats, rounds=MISSING_BEATS)
    assert lost == []  # not before the margin: a heartbeat may predate the command
    lost = watch_for(GangWatch(), run, beats, rounds=MISSING_BEATS + 2)
    (part,) = lost
    assert part.body.worker_id == "w-b"  # type: ignore[attr-defined]
    assert part.body.reason is ExitReason.PREEMPTED  # type: ignore[attr-defined]
    assert "its reserve_slots was lost" in part.body.message  # type: ignore[attr-defined]
    assert part.message_id == "lost/1/2/w-b"  # type: ignore[attr-defined]
    step = run.on_event(part.body)  # type: ignore[attr-defined]
    assert told(step, KillTrial) == [(1, 2, "w-a")]
    assert (run.by_id[1].state, run.by_id[1].restarts, run.by_id[1].attempt) == ("QUEUED", 0, 3)


def test_a_lost_run_trial_ends_the_attempt_and_parts_that_show_are_not_lost() -> None:
    run = reserving()
    run.on_event(reserved("w-a", 0))
    run.on_event(reserved("w-b", 1))
    run.on_event(started("w-a", run=run))
    entry = f"{EXP}/1/2"
    shown = {"w-a": beat("w-a", running=[entry]), "w-b": beat("w-b", reserved=[entry])}
    assert watch_for(GangWatch(), run, shown, rounds=3 * MISSING_BEATS) == []
    gone = {"w-a": beat("w-a", running=[entry]), "w-b": beat("w-b")}
    (part,) = watch_for(GangWatch(), run, gone, rounds=MISSING_BEATS + 2)
    assert "its run_trial was lost" in part.body.message  # type: ignore[attr-defined]


def test_a_member_that_ended_is_not_watched() -> None:
    run = reserving()
    run.on_event(reserved("w-a", 0))
    run.on_event(reserved("w-b", 1))
    run.on_event(started("w-a", run=run))
    run.on_event(started("w-b", run=run))
    run.on_event(exited("w-b", ExitReason.COMPLETED))
    assert run.by_id[1].gang_done == [1]
    entry = f"{EXP}/1/2"
    beats = {"w-a": beat("w-a", running=[entry]), "w-b": beat("w-b")}
    assert watch_for(GangWatch(), run, beats, rounds=3 * MISSING_BEATS) == []


def test_slots_held_for_nothing_are_given_back_once_a_while() -> None:
    run = reserving()
    watch = GangWatch()
    beats = {
        "w-a": beat("w-a", reserved=[f"{EXP}/1/2"]),  # asked for: kept
        "w-b": beat("w-b", reserved=[f"{EXP}/1/1", "other-exp/1/1", "garbage", f"{EXP}/x/1"]),
        "w-c": beat("w-c", reserved=[f"{EXP}/1/2"]),  # not a part of it
    }
    stale, _ = watch.check({EXP: run}, beats, {}, 0.0)
    assert sorted((h.worker_id, h.body.attempt) for h in stale) == [("w-b", 1), ("w-c", 2)]
    assert all(isinstance(h.body, KillTrial) for h in stale)
    again, _ = watch.check({EXP: run}, beats, {}, MISSING_S / 2)
    assert again == []  # told just now
    later, _ = watch.check({EXP: run}, beats, {}, MISSING_S * 2)
    assert len(later) == 2  # a kill lost too is told again
    assert len({h.message_id for h in [*stale, *later]}) == 4
