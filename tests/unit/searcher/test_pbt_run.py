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
    assert due.message_id == f"{EXP}/timer/round/0/1"
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


def test_a_timed_out_round_stops_its_stragglers_so_the_experiment_can_end() -> None:
    """Trial 2 hangs: the timeout kills it (a hung process would hold its slot for
    ever) and it ends CANCELED, replaced by a copy of trial 1."""
    run = make_run(PBT)
    run.start()
    for body in (started(1), saved(1, uid(1, 0), 10), completed(1, 10, 0.1)):
        run.on_event(body)
    run.on_event(started(2, worker="w2"))
    step = run.on_event(RoundTimeout(experiment_id=EXP, round=0, after_s=30))
    kills = [(c.worker_id, c.body.trial_id) for c in step.commands if c.body.type == "kill_trial"]
    assert kills == [("w2", 2)]
    assert run.by_id[2].state == "CANCELED"
    assert "round 0 of the search timed out" in run.by_id[2].logs[-1]
    (copy,) = [b for b in bodies(step, RunTrial) if b.trial_id == 3]
    assert copy.latest_checkpoint == uid(1, 0)
    # The experiment ends once the rest of the population has finished the last round.
    run.on_event(exited(1, ExitReason.COMPLETED))
    for trial_id in (1, 3):
        attempt = run.by_id[trial_id].attempt
        for body in (
            started(trial_id, attempt=attempt),
            saved(trial_id, uid(trial_id, 5), 20, attempt=attempt),
            completed(trial_id, 20, 0.05, attempt=attempt),
            exited(trial_id, ExitReason.COMPLETED, attempt=attempt),
        ):
            run.on_event(body)
    assert run.state == "COMPLETED"


def test_a_straggler_still_waiting_for_a_worker_is_dropped_and_never_trains() -> None:
    run = make_run(PBT)
    run.start()
    for body in (started(1), saved(1, uid(1, 0), 10), completed(1, 10, 0.1)):
        run.on_event(body)
    step = run.on_event(RoundTimeout(experiment_id=EXP, round=0, after_s=30))
    assert not [c for c in step.commands if c.body.type == "kill_trial"]  # nothing runs
    assert run.by_id[2].state == "CANCELED"
    # Should a worker take its run_trial after all, the process is killed at its start.
    late = run.on_event(started(2, worker="w2"))
    assert [(c.worker_id, c.body.type) for c in late.commands] == [("w2", "kill_trial")]


def test_a_round_timeout_refused_while_paused_fires_again_under_a_new_id() -> None:
    run = make_run(PBT)
    run.start()
    timer = RoundTimer()
    timer.due([run], now=0.0)
    (first,) = timer.due([run], now=31.0)
    run.on_control("pause")  # between the timer's check and the input
    assert run.on_event(first.body).ignored == "round_timeout: the experiment is PAUSED"
    run.on_control("activate")
    timer.due([run], now=40.0)
    (again,) = timer.due([run], now=71.0)
    assert again.message_id != first.message_id
    assert run.on_event(again.body).ignored is None


def test_a_trial_cannot_report_another_trials_checkpoint() -> None:
    run = make_run(PBT)
    run.start()
    run.on_event(started(1))
    run.on_event(saved(1, uid(1, 0), 10))
    run.on_event(started(2, worker="w2"))
    step = run.on_event(saved(2, uid(1, 0), 10**12, worker="w2"))
    assert step.ignored is not None
    assert "was saved by trial 1" in step.ignored
    assert run.by_id[2].checkpoints == {}
    # Steps past the operation's length reach no method: they are no round's end.
    far = run.on_event(saved(2, uid(2, 0), 10**12, worker="w2"))
    assert far.ignored is None
    assert run.by_id[2].latest_checkpoint == uid(2, 0)
    member = run.experiment.method.state.members[run.by_id[2].request_id]
    assert member.checkpoint is None


def test_a_straggler_still_waiting_for_admission_ends_canceled_too() -> None:
    """With max_concurrent_trials below the population, members' operations may still
    wait for admission when the round times out: they end CANCELED, with the reason in
    their logs, and never run."""
    config = PBT.replace("population_size: 2", "population_size: 4").replace(
        "round_timeout: 30}", "round_timeout: 30, max_concurrent_trials: 1}"
    )
    run = make_run(config)
    assert [b.trial_id for b in bodies(run.start(), RunTrial)] == [1]  # the others wait
    for body in (started(1), saved(1, uid(1, 0), 10), completed(1, 10, 0.1)):
        run.on_event(body)
    run.on_event(exited(1, ExitReason.COMPLETED))
    waiting = [t for t in (3, 4) if run.experiment.trials[run.by_id[t].request_id].queued]
    assert waiting == [3, 4]  # trial 2 was admitted when trial 1 finished
    step = run.on_event(RoundTimeout(experiment_id=EXP, round=0, after_s=30))
    for trial_id in (2, 3, 4):
        assert run.by_id[trial_id].state == "CANCELED"
        assert "round 0 of the search timed out" in run.by_id[trial_id].logs[-1]
    copies = [b.trial_id for b in bodies(step, RunTrial)]
    assert copies  # copies of trial 1 take the freed slot; nothing of 3 and 4 ever runs
    assert min(copies) >= 5
