"""A user's pause, activate, cancel and kill of a whole experiment, in the pure lifecycle."""

from __future__ import annotations

from random import Random

from rung.broker.schemas import (
    ControlExperiment,
    ExitReason,
    KillTrial,
    PreemptTrial,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.eventlog import InputRecord, Record, replay
from rung.searcher.ops import Shutdown
from rung.searcher.testing import scripted_event
from rung.searcher.trials import ExperimentRun, Step

from .helpers import created_record
from .test_trials import EXP, completed, exited, make_run, runs, started

RANDOM = "{name: random, max_length: 4, max_trials: 4, max_concurrent_trials: 2}"


def told(step: Step, kind: type[PreemptTrial | KillTrial]) -> list[tuple[int, int, str | None]]:
    return [
        (c.body.trial_id, c.body.attempt, c.worker_id)
        for c in step.commands
        if isinstance(c.body, kind)
    ]


def state_of(run: ExperimentRun) -> str:
    return run.state  # read afresh: the checker cannot know that a call changed it


def two_running() -> ExperimentRun:
    """Trial 1 runs on w1, trial 2 is queued (its work not taken yet)."""
    run = make_run(RANDOM)
    assert [c.trial_id for c in runs(run.start())] == [1, 2]
    started(run, 1)
    return run


def test_pause_preempts_running_trials_and_holds_queued_ones() -> None:
    run = two_running()
    step = run.on_control("pause")
    assert run.state == "PAUSED"
    assert told(step, PreemptTrial) == [(1, 1, "w1")]
    assert run.by_id[2].state == "PAUSED"  # held: nothing will run it
    # Trial 1 checkpoints and exits: it is held too, not queued again.
    step = exited(run, 1, ExitReason.PREEMPTED)
    assert runs(step) == []
    assert run.by_id[1].state == "PAUSED"
    # Trial 2's work was in the queue already; a worker starts it: it is stopped.
    step = started(run, 2, worker="w2")
    assert told(step, PreemptTrial) == [(2, 1, "w2")]
    assert run.by_id[2].state == "PAUSED"


def test_activate_resumes_held_trials_from_their_checkpoints() -> None:
    run = two_running()
    run.on_control("pause")
    exited(run, 1, ExitReason.PREEMPTED)
    step = run.on_control("activate")
    assert run.state == "ACTIVE"
    assert sorted((c.trial_id, c.attempt) for c in runs(step)) == [(1, 2), (2, 2)]
    # A stale attempt's work, taken late, is killed: nobody listens to it.
    step = started(run, 2, attempt=1, worker="w9")
    assert told(step, KillTrial) == [(2, 1, "w9")]
    # The experiment then finishes normally.
    while (body := scripted_event(run)) is not None:
        run.on_event(body)
    assert state_of(run) == "COMPLETED"


def test_cancel_lets_running_trials_checkpoint_then_ends() -> None:
    run = two_running()
    step = run.on_control("cancel")
    assert told(step, PreemptTrial) == [(1, 1, "w1")]
    assert state_of(run) == "STOPPING_CANCELED"
    assert run.on_control("pause").ignored == "pause: the experiment is being canceled"
    step = exited(run, 1, ExitReason.PREEMPTED)
    assert state_of(run) == "CANCELED"
    assert step.ops == [Shutdown(cancel=True)]
    assert {t.state for t in run.trials.values()} == {"CANCELED"}
    # Late events change nothing; late work is killed.
    assert completed(run, 1, 4, 0.1).ignored is not None
    assert told(started(run, 2, worker="w2"), KillTrial) == [(2, 1, "w2")]


def test_kill_stops_processes_now_and_ends_at_once() -> None:
    run = two_running()
    step = run.on_control("kill")
    assert told(step, KillTrial) == [(1, 1, "w1")]
    assert run.state == "CANCELED"
    assert Shutdown(cancel=True) in step.ops
    assert exited(run, 1, ExitReason.ERRORED).ignored is not None
    assert run.by_id[1].restarts == 0  # a killed process is not an error of the trial


def test_actions_that_do_nothing_say_why() -> None:
    run = two_running()
    assert run.on_control("activate").ignored == "activate: the experiment is ACTIVE, not paused"
    run.on_control("pause")
    assert run.on_control("pause").ignored == "pause: the experiment is paused already"
    run.on_control("kill")
    assert run.on_control("activate").ignored == "activate: the experiment has ended (CANCELED)"


def test_a_log_with_control_records_replays_and_verifies() -> None:
    fresh = make_run(RANDOM)
    records: list[Record] = [created_record(fresh)]

    def record(message_id: str, body: Body | None, step: Step) -> None:
        records.append(InputRecord.of(len(records) + 1, message_id, body, step))

    record("start", None, fresh.start())
    rng = Random(3)
    for index in range(400):
        body: Body | None = scripted_event(fresh, rng, p_preempt=0.1)
        if index % 6 == 5 and fresh.state == "ACTIVE":
            body = ControlExperiment(experiment_id=EXP, action="pause")
        elif body is None and fresh.state == "PAUSED":
            body = ControlExperiment(experiment_id=EXP, action="activate")
        if body is None:
            break
        record(f"m{index}", body, fresh.on_event(body))
    assert fresh.state == "COMPLETED"
    controls = [r.input for r in records if isinstance(r, InputRecord)]
    actions = [c.action for c in controls if isinstance(c, ControlExperiment)]
    assert len(actions) >= 4
    assert set(actions[::2]) == {"pause"}
    assert set(actions[1::2]) == {"activate"}
    result = replay(records, verify=True)
    assert result.divergence is None
    assert result.run.snapshot() == fresh.snapshot()
