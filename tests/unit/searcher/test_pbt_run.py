"""Population-based training through the run: a clone's ``run_trial`` carries its
source's checkpoint, garbage collection keeps that checkpoint while the clone may resume
from it, pauses and checkpoints reach the method, and the service's round timer."""

from __future__ import annotations

from rung.broker.schemas import CloseTrial, ExitReason, PauseTrial, RoundTimeout, RunTrial
from rung.searcher.eventlog import InputRecord
from rung.searcher.service.rounds import RoundTimer
from rung.searcher.trials import ExperimentRun, Step

from .test_checkpoint_gc import EXP, completed, exited, feed, make_run, saved, started, uid

PBT = (
    "{name: pbt, population_size: 2, num_rounds: 2, length_per_round: 10, "
    "replace_function: {truncate_fraction: 0.5}, "
    "explore_function: {resample_probability: 0.0, perturb_factor: 0.2}, round_timeout: 30}"
)
NO_KEEP = {
    "type": "directory",
    "container_path": "/c",
    "save_experiment_best": 0,
    "save_trial_best": 0,
    "save_trial_latest": 0,
}


def bodies(step: Step, cls: type) -> list:  # type: ignore[type-arg]
    return [c.body for c in step.commands if isinstance(c.body, cls)]


def test_a_clone_runs_from_its_sources_checkpoint_which_is_kept_while_it_may_resume() -> None:
    run = make_run(PBT, checkpoint_storage=NO_KEEP)
    first = run.start()
    assert [b.trial_id for b in bodies(first, RunTrial)] == [1, 2]
    paused = run.on_event(started(1))
    for body in (saved(1, uid(1, 0), 10), completed(1, 10, 0.1)):
        paused = run.on_event(body)
    assert [b.trial_id for b in bodies(paused, PauseTrial)] == [1]  # the round waits
    run.on_event(started(2))
    run.on_event(saved(2, uid(2, 0), 10))
    ended = run.on_event(completed(2, 10, 0.9))
    assert [b.trial_id for b in bodies(ended, CloseTrial)] == [2]
    (clone,) = bodies(ended, RunTrial)
    assert clone.trial_id == 3
    assert clone.latest_checkpoint == uid(1, 0)
    assert clone.source_root is None  # this experiment's own root
    assert clone.length == 20
    assert clone.hparams != run.experiment.trials[run.by_id[1].request_id].hparams
    record = run.experiment.trials[clone.request_id].create.clone
    assert record is not None
    assert record.source_trial == 1
    assert record.replaces_trial == 2
    # Trial 1's process exits (paused): it is queued again from its own checkpoint.
    again = run.on_event(exited(1, ExitReason.COMPLETED))
    (resumed,) = bodies(again, RunTrial)
    assert (resumed.trial_id, resumed.attempt, resumed.length) == (1, 2, 20)
    assert resumed.latest_checkpoint == uid(1, 0)
    # Trial 2 ends: its checkpoint goes; trial 1's stays (trial 1 and its clone may need it).
    assert feed(run, [exited(2, ExitReason.COMPLETED)]) == [uid(2, 0)]
    deleted = feed(
        run,
        [
            started(1, attempt=2),
            saved(1, uid(1, 1), 20, attempt=2),
            completed(1, 20, 0.05, attempt=2),
            exited(1, ExitReason.COMPLETED, attempt=2),
        ],
    )
    # Trial 1 ended, but its clone has not saved a checkpoint of its own yet.
    assert uid(1, 0) not in deleted
    deleted += feed(
        run,
        [
            started(3),
            saved(3, uid(3, 0), 20),
            completed(3, 20, 0.01),
            exited(3, ExitReason.COMPLETED),
        ],
    )
    assert run.state == "COMPLETED"
    assert set(deleted) == {uid(1, 0), uid(1, 1), uid(3, 0)}


def test_the_round_timer_sends_one_input_per_round_and_the_run_applies_it() -> None:
    run = make_run(PBT)
    run.start()
    timer = RoundTimer()
    assert timer.due([run], now=100.0) == []
    assert timer.due([run], now=129.0) == []
    (due,) = timer.due([run], now=130.5)
    assert due.message_id == f"{EXP}/timer/round/0"
    assert (due.body.round, due.body.after_s) == (0, 30.5)
    step = run.on_event(due.body)
    assert step.ignored is None
    # Neither trial reported: both are closed as stragglers; the population is failed.
    assert {b.trial_id for b in bodies(step, CloseTrial)} == set()  # queued, not running
    assert any("round 0 timed out after 30.5 s" in note for note in step.notes)
    assert any("every member of the population failed" in note for note in step.notes)
    assert run.experiment.method.round_limit() is None
    assert timer.due([run], now=1e6) == []
    record = InputRecord.of(2, due.message_id, due.body, step)
    assert record.notes == step.notes
    assert "notes" in record.model_dump(mode="json")


def test_a_paused_experiments_round_is_not_timed() -> None:
    run = make_run(PBT)
    run.start()
    timer = RoundTimer()
    run.on_control("pause")
    assert timer.due([run], now=0.0) == []
    assert timer.due([run], now=1000.0) == []
    step = run.on_event(RoundTimeout(experiment_id=EXP, round=0, after_s=31))
    assert step.ignored == "round_timeout: the experiment is PAUSED"
    run.on_control("activate")
    assert timer.due([run], now=1000.0) == []  # its clock starts again
    assert [d.body.round for d in timer.due([run], now=1031.0)] == [0]


def test_an_input_without_notes_is_written_as_before() -> None:
    run: ExperimentRun = make_run(PBT)
    step = run.start()
    assert step.notes == []
    assert "notes" not in InputRecord.of(1, "m", None, step).model_dump(mode="json")


def test_pause_and_activate_in_the_middle_of_a_round() -> None:
    run = make_run(PBT)
    run.start()
    for body in (started(1), saved(1, uid(1, 0), 10), completed(1, 10, 0.1)):
        run.on_event(body)
    run.on_event(exited(1, ExitReason.COMPLETED))  # trial 1 paused, waiting for the round
    run.on_event(started(2))
    paused = run.on_control("pause")
    # Trial 2 is told to checkpoint and stop; once it has, the experiment holds it.
    assert [c.body.type for c in paused.commands] == ["preempt_trial"]
    run.on_event(saved(2, uid(2, 0), 4))
    run.on_event(exited(2, ExitReason.PREEMPTED))
    assert run.by_id[2].state == "PAUSED"
    activated = run.on_control("activate")
    (again,) = bodies(activated, RunTrial)
    assert (again.trial_id, again.attempt, again.latest_checkpoint) == (2, 2, uid(2, 0))
    # The round goes on where it was: trial 2 finishes it, and the round ends.
    for body in (started(2, attempt=2), saved(2, uid(2, 1), 10, attempt=2)):
        run.on_event(body)
    ended = run.on_event(completed(2, 10, 0.9, attempt=2))
    # Trial 1 (the best) continues from its checkpoint; trial 3 copies it for trial 2.
    runs = {b.trial_id: b for b in bodies(ended, RunTrial)}
    assert sorted(runs) == [1, 3]
    assert (runs[1].attempt, runs[1].latest_checkpoint, runs[1].length) == (2, uid(1, 0), 20)
    assert (runs[3].latest_checkpoint, runs[3].length) == (uid(1, 0), 20)
