"""Gang scheduling in the pure core and the planner: a trial on several workers at once."""

from __future__ import annotations

from rung.broker.schemas import (
    ExitReason,
    GangPart,
    GangPlanned,
    KillTrial,
    MetricsReported,
    OpCompleted,
    ReserveSlots,
    RunTrial,
    SlotsReserved,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
    WorkerLost,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.eventlog.records import InputRecord, Record
from rung.searcher.eventlog.replay import replay
from rung.searcher.service.gangs import GangPlanner, needs_gang, place
from rung.searcher.service.workers import WorkerRegistry, waiting_reasons
from rung.searcher.trials import ExperimentRun, Step

from .helpers import created_record
from .test_control import told
from .test_trials import EXP, make_run, runs

SINGLE = "{name: single, max_length: 4}"
WORKERS = ("w-a", "w-b")


def gang_run(slots: int = 8, **extra: object) -> ExperimentRun:
    run = make_run(SINGLE, resources={"slots_per_trial": slots}, **extra)
    run.start_secret = "a secret"  # noqa: S105 (parts meet with the attempt's start token)
    return run


def parts(*workers: str, slots: int = 4) -> list[GangPart]:
    return [
        GangPart(worker_id=w, slots=slots, address=f"10.0.0.{i + 1}") for i, w in enumerate(workers)
    ]


def planned(attempt: int = 1, workers: tuple[str, ...] = WORKERS) -> GangPlanned:
    return GangPlanned(experiment_id=EXP, trial_id=1, attempt=attempt, parts=parts(*workers))


def reserved(worker: str, part: int, attempt: int = 2) -> SlotsReserved:
    ports = {"pub_port": 5000, "master_port": 5001} if part == 0 else {}
    return SlotsReserved(
        experiment_id=EXP, trial_id=1, attempt=attempt, worker_id=worker, part=part, **ports
    )


def started(worker: str, attempt: int = 2, run: ExperimentRun | None = None) -> TrialStarted:
    token = run.start_token(1, attempt) if run is not None else None
    return TrialStarted(
        experiment_id=EXP, trial_id=1, attempt=attempt, worker_id=worker, slots=4, start_token=token
    )


def exited(worker: str, reason: ExitReason, attempt: int = 2) -> TrialExited:
    return TrialExited(
        experiment_id=EXP, trial_id=1, attempt=attempt, worker_id=worker, reason=reason
    )


def placed_and_running() -> ExperimentRun:
    """A trial of 8 slots on two workers of 4, its chief's part and its member's started."""
    run = gang_run()
    run.start()
    run.on_event(planned())
    run.on_event(reserved("w-a", 0))
    run.on_event(reserved("w-b", 1))
    run.on_event(started("w-b", run=run))
    run.on_event(started("w-a", run=run))
    return run


def test_a_plan_replaces_the_queued_attempt_and_reserves_each_part() -> None:
    run = gang_run()
    (queued,) = runs(run.start())
    assert (queued.slots, queued.attempt, queued.gang) == (8, 1, None)
    step = run.on_event(planned())
    reserve = [(c.worker_id, c.body) for c in step.commands]
    assert [(w, b.part, b.slots, b.attempt) for w, b in reserve if isinstance(b, ReserveSlots)] == [
        ("w-a", 0, 4, 2),
        ("w-b", 1, 4, 2),
    ]
    trial = run.by_id[1]
    assert (trial.state, trial.attempt) == ("QUEUED", 2)
    # The attempt queued on the work queue is stale now: a worker that starts it is stopped.
    late = run.on_event(started("w-big", attempt=1, run=run))
    assert told(late, KillTrial) == [(1, 1, "w-big")]


def test_every_part_starts_together_once_all_hold_their_slots() -> None:
    run = gang_run()
    run.start()
    run.on_event(planned())
    first = run.on_event(reserved("w-b", 1))
    assert first.commands == []  # not before every part holds its slots
    step = run.on_event(reserved("w-a", 0))
    starts = [(c.worker_id, c.body) for c in step.commands if isinstance(c.body, RunTrial)]
    assert [w for w, _ in starts] == ["w-a", "w-b"]
    for rank, (_, body) in enumerate(starts):
        assert body.gang is not None
        assert body.gang.rank == rank
        assert body.gang.addrs == ["10.0.0.1", "10.0.0.2"]
        assert body.gang.slot_counts == [4, 4]
        assert (body.gang.pub_port, body.gang.master_port) == (5000, 5001)
        assert body.start_token == run.start_token(1, 2)
    # A re-sent reservation changes nothing.
    assert run.on_event(reserved("w-b", 1)).commands == []
    # The member's start changes nothing; the chief's makes the attempt RUNNING.
    run.on_event(started("w-b", run=run))
    assert run.by_id[1].state == "QUEUED"
    run.on_event(started("w-a", run=run))
    assert (run.by_id[1].state, run.by_id[1].worker_id) == ("RUNNING", "w-a")


def test_only_the_chief_reports_and_a_member_s_clean_end_changes_nothing() -> None:
    run = placed_and_running()
    metrics = MetricsReported(
        experiment_id=EXP,
        trial_id=1,
        attempt=2,
        worker_id="w-b",
        group="training",
        steps_completed=1,
        metrics={"x": 1},
    )
    assert "only the chief's part (0) reports" in (run.on_event(metrics).ignored or "")
    step = run.on_event(exited("w-b", ExitReason.COMPLETED))
    assert step.commands == []
    assert run.by_id[1].state == "RUNNING"
    done = OpCompleted(
        experiment_id=EXP, trial_id=1, attempt=2, worker_id="w-a", length=4, metric=0.5
    )
    run.on_event(done)
    end = run.on_event(exited("w-a", ExitReason.COMPLETED))
    # The chief's exit ends the attempt: the member is told to stop (it may hang).
    assert told(end, KillTrial) == [(1, 2, "w-b")]
    ended = run.by_id[1]  # (read afresh: the checker cannot know the calls changed it)
    assert (ended.state, ended.gang) == ("COMPLETED", None)


def test_a_failed_member_ends_the_attempt_and_counts_once() -> None:
    run = gang_run(max_restarts=2)
    run.start()
    run.on_event(planned())
    run.on_event(reserved("w-a", 0))
    run.on_event(reserved("w-b", 1))
    run.on_event(started("w-a", run=run))
    step = run.on_event(exited("w-b", ExitReason.ERRORED))
    assert told(step, KillTrial) == [(1, 2, "w-a")]
    trial = run.by_id[1]
    assert (trial.restarts, trial.state, trial.attempt) == (1, "QUEUED", 3)
    assert "part 1 of attempt 2 (worker w-b) ended it: ERRORED" in trial.logs[-2]
    (again,) = runs(step)  # queued again, to be placed again
    assert (again.attempt, again.gang) == (3, None)
    # The chief, killed, reports its exit: of an old attempt, ignored; no second count.
    assert run.on_event(exited("w-a", ExitReason.ERRORED)).ignored is not None
    assert trial.restarts == 1


def test_a_lost_member_worker_is_a_preemption() -> None:
    run = placed_and_running()
    step = run.on_event(WorkerLost(experiment_id=EXP, worker_id="w-b", silent_s=40))
    # Every part is told to stop: the lost worker's too, should it come back.
    assert told(step, KillTrial) == [(1, 2, "w-a"), (1, 2, "w-b")]
    trial = run.by_id[1]
    assert (trial.restarts, trial.state, trial.attempt) == (0, "QUEUED", 3)


def test_a_lost_worker_while_reserving_gives_the_other_slots_back() -> None:
    run = gang_run()
    run.start()
    run.on_event(planned())
    run.on_event(reserved("w-a", 0))
    step = run.on_event(WorkerLost(experiment_id=EXP, worker_id="w-b", silent_s=40))
    assert told(step, KillTrial) == [(1, 2, "w-a"), (1, 2, "w-b")]
    assert (run.by_id[1].state, run.by_id[1].attempt, run.by_id[1].restarts) == ("QUEUED", 3, 0)
    # What the given-back reservation's worker says later is of an old attempt.
    assert run.on_event(reserved("w-b", 1)).ignored is not None


def test_a_part_that_cannot_hold_its_slots_ends_the_attempt_as_a_preemption() -> None:
    run = gang_run()
    run.start()
    run.on_event(planned())
    step = run.on_event(exited("w-b", ExitReason.PREEMPTED))
    assert told(step, KillTrial) == [(1, 2, "w-a")]
    assert (run.by_id[1].state, run.by_id[1].restarts) == ("QUEUED", 0)


def test_pause_and_kill_give_a_reserving_gang_s_slots_back() -> None:
    run = gang_run()
    run.start()
    run.on_event(planned())
    step = run.on_control("pause")
    assert sorted(told(step, KillTrial)) == [(1, 2, "w-a"), (1, 2, "w-b")]
    assert run.by_id[1].state == "PAUSED"
    assert run.by_id[1].gang is None
    run.on_control("activate")
    run.on_event(planned(attempt=3))
    step = run.on_trial_kill(1)
    assert sorted(told(step, KillTrial)) == [(1, 4, "w-a"), (1, 4, "w-b")]


def test_a_kill_of_a_running_gang_reaches_every_part() -> None:
    run = placed_and_running()
    step = run.on_trial_kill(1)
    assert sorted(told(step, KillTrial)) == [(1, 2, "w-a"), (1, 2, "w-b")]


def test_plans_that_do_not_fit_are_ignored() -> None:
    run = gang_run()
    run.start()
    assert "needs 8" in (run.on_event(planned(workers=("w-a",))).ignored or "")
    assert "not queued at attempt 5" in (run.on_event(planned(attempt=5)).ignored or "")
    run.on_event(planned())
    assert "with a gang" in (run.on_event(planned(attempt=2)).ignored or "")
    outsider = SlotsReserved(experiment_id=EXP, trial_id=1, attempt=2, worker_id="w-x", part=1)
    assert "runs no part of it" in (run.on_event(outsider).ignored or "")
    wrong_part = reserved("w-b", 0)
    assert "its part 1" in (run.on_event(wrong_part).ignored or "")


def test_a_log_with_a_gang_replays_to_the_same_state() -> None:
    fresh = gang_run(max_restarts=1)
    records: list[Record] = [created_record(fresh)]

    def record(message_id: str, body: Body | None, step: Step) -> None:
        records.append(InputRecord.of(len(records) + 1, message_id, body, step))

    record("start", None, fresh.start())
    inputs: list[Body] = [
        planned(),
        reserved("w-a", 0),
        reserved("w-b", 1),
        started("w-a", run=fresh),
        exited("w-b", ExitReason.ERRORED),
        planned(attempt=3),
        reserved("w-b", 0, attempt=4),
    ]
    for index, body in enumerate(inputs):
        record(f"m{index}", body, fresh.on_event(body))
    result = replay(records, verify=True)
    assert result.divergence is None
    assert result.run.snapshot() == fresh.snapshot()
    assert fresh.by_id[1].gang_reserved == []  # w-b is no part 0 of that plan: ignored


# ---------------------------------------------------------------------- the planner
def beat(
    worker: str, slots: int, free: int | None = None, address: str | None = "10.0.0.9"
) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker,
        slots=slots,
        free_slots=slots if free is None else free,
        address=address,
    )


def test_placement_takes_equal_parts_on_the_fewest_workers() -> None:
    live = [beat("a", 4), beat("b", 4, free=1), beat("c", 4, free=3), beat("d", 2)]
    chosen = place(8, live)
    assert chosen is not None
    assert [(p.worker_id, p.slots) for p in chosen] == [("a", 4), ("c", 4)]  # most free first
    assert [(p.worker_id, p.slots) for p in place(6, live) or []] == [("a", 2), ("c", 2), ("d", 2)]
    assert place(16, live) is None
    assert place(8, [beat("a", 4), beat("b", 4, address=None)]) is None  # no address, no part
    assert [p.slots for p in place(12, [beat("a", 12)]) or []] == [12]  # bucket 16 > 12


def test_a_gang_is_needed_only_when_no_worker_takes_the_bucket() -> None:
    assert needs_gang(8, [beat("a", 4), beat("b", 4)])
    assert not needs_gang(8, [beat("a", 4), beat("b", 8)])
    assert needs_gang(12, [beat("a", 12)])
    assert not needs_gang(1, [])


def test_the_planner_places_one_gang_at_a_time_in_order() -> None:
    planner = GangPlanner()
    live = [beat("w-a", 4), beat("w-b", 4)]
    first, second = gang_run(), gang_run()
    first.experiment_id, second.experiment_id = "exp-1", "exp-2"
    second.start()
    first.start()
    plan = planner.plan([first, second], live, 0.0)
    assert plan is not None
    # exp-2's trial was queued first: each is seen waiting in the same pass, in run order.
    assert plan.experiment_id == "exp-1"
    assert plan.message_id == "exp-1/timer/gang/1/1"
    first.on_event(plan.body)
    assert planner.plan([first, second], live, 0.0) is None  # one gang reserves at a time
    first.on_event(reserved("w-a", 0))
    first.on_event(reserved("w-b", 1))
    first.on_event(started("w-a", run=first))
    nxt = planner.plan([first, second], live, 0.0)
    assert nxt is not None
    assert nxt.experiment_id == "exp-2"
    # A large enough worker takes it from its bucket: no gang.
    assert planner.plan([second], [*live, beat("w-big", 8)], 0.0) is None


def test_the_registry_watches_every_part_s_worker() -> None:
    run = gang_run()
    run.start()
    run.on_event(planned())
    registry = WorkerRegistry(timeout_s=0.0)
    lost = registry.lost([run])
    assert sorted(entry.body.worker_id for entry in lost) == ["w-a", "w-b"]


def test_a_gang_that_can_be_placed_is_no_reason_to_wait() -> None:
    run = gang_run()
    run.start()
    assert waiting_reasons(run, [beat("a", 4), beat("b", 4)]) == []
    (reason,) = waiting_reasons(run, [beat("a", 4)])
    assert "needs 8 slots" in reason


def test_a_trial_placed_again_waits_longer_each_time_until_its_gang_runs() -> None:
    planner = GangPlanner()
    live = [beat("w-a", 4), beat("w-b", 4)]
    run = gang_run()
    run.start()

    def placed_and_refused(now: float) -> None:
        plan = planner.plan([run], live, now)
        assert plan is not None
        run.on_event(plan.body)
        # A part that cannot hold its slots: the attempt ends, the trial is queued again.
        run.on_event(exited("w-b", ExitReason.PREEMPTED, attempt=run.by_id[1].attempt))

    now = 100.0
    placed_and_refused(now)
    for wait in (1.0, 2.0, 4.0):
        assert planner.plan([run], live, now) is None  # the wait starts when first seen
        assert planner.plan([run], live, now + wait - 0.01) is None
        now += wait
        placed_and_refused(now)
    # A gang that ran: the next placement is at once.
    assert planner.plan([run], live, now) is None
    now += 8.0
    plan = planner.plan([run], live, now)
    assert plan is not None
    run.on_event(plan.body)
    attempt = run.by_id[1].attempt
    run.on_event(reserved("w-a", 0, attempt=attempt))
    run.on_event(reserved("w-b", 1, attempt=attempt))
    run.on_event(started("w-a", attempt=attempt, run=run))
    assert planner.plan([run], live, now) is None
    run.on_event(exited("w-a", ExitReason.PREEMPTED, attempt=attempt))
    assert planner.plan([run], live, now) is not None


def test_a_gang_never_mixes_the_broker_s_machine_with_others() -> None:
    local = [beat("l-1", 4, address="127.0.0.1"), beat("l-2", 4, address="127.0.0.1")]
    remote = [beat("r-1", 4, free=0, address="10.0.0.5")]
    chosen = place(8, [*local, *remote])
    assert [p.worker_id for p in chosen or []] == ["l-1", "l-2"]  # not l-1 (free) and r-1
    both = place(8, [*local, *remote, beat("r-2", 4, address="10.0.0.6")])
    assert [p.worker_id for p in both or []] == ["r-2", "r-1"]


def test_experiments_older_than_start_tokens_are_not_placed() -> None:
    run = make_run(SINGLE, resources={"slots_per_trial": 8})
    run.start()
    assert GangPlanner().plan([run], [beat("w-a", 4), beat("w-b", 4)], 0.0) is None
