"""The trial lifecycle: worker events and operations in, commands out."""

from __future__ import annotations

from typing import Any

from rung.broker.schemas import (
    CheckpointSaved,
    CloseTrial,
    ContinueTrial,
    ExitReason,
    OpCompleted,
    PauseTrial,
    RunTrial,
    TrialExited,
    TrialStarted,
)
from rung.searcher.experiment import Experiment
from rung.searcher.trials import ExperimentRun, Step

from .helpers import make_config

EXP = "exp-1"


def make_run(searcher: str, **extra: Any) -> ExperimentRun:
    config = make_config(searcher, entrypoint="python3 train.py", **extra)
    return ExperimentRun(EXP, Experiment(config), context_hash="0" * 64, checkpoint_root="/ckpt")


def runs(step: Step) -> list[RunTrial]:
    return [c.body for c in step.commands if isinstance(c.body, RunTrial)]


def started(run: ExperimentRun, trial_id: int, attempt: int = 1, worker: str = "w1") -> Step:
    return run.on_event(
        TrialStarted(
            experiment_id=EXP, trial_id=trial_id, attempt=attempt, worker_id=worker, slots=1
        )
    )


def completed(
    run: ExperimentRun,
    trial_id: int,
    length: int,
    metric: float,
    attempt: int = 1,
    worker: str = "w1",
) -> Step:
    return run.on_event(
        OpCompleted(
            experiment_id=EXP,
            trial_id=trial_id,
            attempt=attempt,
            worker_id=worker,
            length=length,
            metric=metric,
        )
    )


def checkpoint_saved(trial_id: int, uuid: str, steps: int, attempt: int = 1) -> CheckpointSaved:
    return CheckpointSaved(
        experiment_id=EXP,
        trial_id=trial_id,
        attempt=attempt,
        worker_id="w1",
        uuid=uuid,
        steps_completed=steps,
        metadata={},
        size_bytes=1,
    )


def exited(
    run: ExperimentRun, trial_id: int, reason: ExitReason, attempt: int = 1, worker: str = "w1"
) -> Step:
    return run.on_event(
        TrialExited(
            experiment_id=EXP, trial_id=trial_id, attempt=attempt, worker_id=worker, reason=reason
        )
    )


ASHA = (
    "{name: asha, max_length: 4, max_trials: 2, num_rungs: 2, divisor: 2, max_concurrent_trials: 1}"
)


def test_a_new_trial_is_queued_as_work() -> None:
    run = make_run("{name: single, max_length: 5}")
    (cmd,) = runs(run.start())
    assert (cmd.trial_id, cmd.attempt, cmd.length, cmd.latest_checkpoint) == (1, 1, 5, None)
    assert cmd.entrypoint == ["python3 train.py"]
    assert cmd.checkpoint_root == "/ckpt"


def test_pause_then_resume_from_the_latest_checkpoint() -> None:
    run = make_run(ASHA)
    run.start()
    started(run, 1)
    run.on_event(checkpoint_saved(1, "00000000-0000-4000-8000-000000000002", 2))
    step = completed(run, 1, 2, 0.1)
    # Not promoted yet (one result, quota 0): trial 1 is paused; trial 2 starts.
    pause = [c for c in step.commands if isinstance(c.body, PauseTrial)]
    assert pause[0].worker_id == "w1"
    assert [c.trial_id for c in runs(step)] == [2]
    exited(run, 1, ExitReason.OUT_OF_OPS)
    assert run.by_id[1].state == "PAUSED"
    started(run, 2, worker="w2")
    step = completed(run, 2, 2, 0.5, worker="w2")
    # Trial 1 is promoted: a new attempt, on any worker, from its checkpoint.
    (resume,) = runs(step)
    assert (resume.trial_id, resume.attempt, resume.length) == (1, 2, 4)
    assert resume.latest_checkpoint == "00000000-0000-4000-8000-000000000002"


def test_a_running_trial_continues_in_place() -> None:
    run = make_run(
        "{name: asha, max_length: 4, max_trials: 1, num_rungs: 2, divisor: 2, stop_once: true}"
    )
    run.start()
    started(run, 1)
    step = completed(run, 1, 2, 0.1)
    (cmd,) = step.commands
    assert isinstance(cmd.body, ContinueTrial)
    assert (cmd.body.length, cmd.worker_id) == (4, "w1")
    step = completed(run, 1, 4, 0.1)
    assert isinstance(step.commands[0].body, CloseTrial)
    step = exited(run, 1, ExitReason.COMPLETED)
    assert run.state == "COMPLETED"
    assert run.by_id[1].state == "COMPLETED"


def test_errors_restart_up_to_max_restarts_then_the_trial_errors() -> None:
    run = make_run("{name: single, max_length: 3}", max_restarts=2)
    run.start()
    for attempt in (1, 2, 3):
        started(run, 1, attempt)
        step = exited(run, 1, ExitReason.ERRORED, attempt)
        if attempt <= 2:
            assert [c.attempt for c in runs(step)] == [attempt + 1]
    assert run.by_id[1].state == "ERRORED"
    assert run.by_id[1].restarts == 3
    assert run.state == "ERROR"


def test_preemption_resumes_without_using_a_restart() -> None:
    run = make_run("{name: single, max_length: 3}", max_restarts=0)
    run.start()
    started(run, 1)
    (resume,) = runs(exited(run, 1, ExitReason.PREEMPTED))
    assert resume.attempt == 2
    assert run.by_id[1].restarts == 0


def test_stale_attempts_are_fenced_off() -> None:
    run = make_run("{name: single, max_length: 3}")
    run.start()
    started(run, 1)
    exited(run, 1, ExitReason.PREEMPTED)
    step = completed(run, 1, 3, 0.0, attempt=1)  # the old attempt reports late
    assert step.ignored == "trial 1: event from attempt 1, the current one is 2"
    assert step.commands == []


def test_user_requested_stop_ends_the_trial_and_the_experiment_completes() -> None:
    run = make_run("{name: single, max_length: 3}")
    run.start()
    started(run, 1)
    exited(run, 1, ExitReason.USER_REQUESTED_STOP)
    assert run.by_id[1].state == "COMPLETED"
    assert run.state == "COMPLETED"


def test_invalid_hp_is_replaced_by_random_search() -> None:
    run = make_run("{name: random, max_length: 3, max_trials: 1}")
    run.start()
    started(run, 1)
    step = exited(run, 1, ExitReason.INVALID_HP)
    assert run.by_id[1].state == "INVALID_HP"
    assert [c.trial_id for c in runs(step)] == [2]


def test_a_second_report_of_a_completed_operation_changes_nothing() -> None:
    run = make_run(ASHA)
    run.start()
    started(run, 1)
    first = completed(run, 1, 2, 0.1)
    assert first.applied
    second = completed(run, 1, 2, 0.1)  # e.g. a duplicate process of the same attempt
    assert second.ignored == "trial 1 completed length 2 already"
    assert second.applied == []
    assert second.commands == []
