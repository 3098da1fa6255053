"""The worker-lost timer input: a silent worker's trials resume elsewhere."""

from __future__ import annotations

from rung.broker.schemas import ExitReason, KillTrial, WorkerLost

from .test_control import told, two_running
from .test_trials import EXP, checkpoint_saved, exited, runs, started


def lost(worker: str = "w1") -> WorkerLost:
    return WorkerLost(experiment_id=EXP, worker_id=worker, silent_s=31.0)


def test_a_lost_worker_s_trial_resumes_from_its_checkpoint_without_a_restart() -> None:
    run = two_running()
    run.on_event(checkpoint_saved(1, "00000000-0000-4000-8000-000000000001", 2))
    step = run.on_event(lost())
    (again,) = runs(step)
    checkpoint = "00000000-0000-4000-8000-000000000001"
    assert (again.trial_id, again.attempt, again.latest_checkpoint) == (1, 2, checkpoint)
    # Should the worker come back, its process is killed; its reports are fenced off.
    assert told(step, KillTrial) == [(1, 1, "w1")]
    assert run.by_id[1].restarts == 0
    assert run.by_id[1].state == "QUEUED"
    assert "worker w1 lost: nothing from it for 31 s" in run.by_id[1].logs[-1]
    assert exited(run, 1, ExitReason.ERRORED, attempt=1).ignored is not None
    assert run.by_id[1].restarts == 0
    started(run, 1, attempt=2, worker="w2")
    assert run.by_id[1].worker_id == "w2"


def test_a_lost_worker_that_runs_nothing_here_changes_nothing() -> None:
    run = two_running()
    step = run.on_event(lost("w7"))
    assert step.ignored == "worker w7 runs no trial of this experiment"
    assert step.commands == []
    assert run.by_id[1].state == "RUNNING"
