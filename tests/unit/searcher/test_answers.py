"""Which command a trial gets again when it re-sends a completion."""

from __future__ import annotations

from rung.broker.schemas import ContinueTrial, ExitReason, OpCompleted
from rung.searcher.host.answers import Answers

from .test_trials import EXP, completed, exited, make_run, started


def completion(length: int, attempt: int = 1, worker: str = "w1") -> OpCompleted:
    return OpCompleted(
        experiment_id=EXP, trial_id=1, attempt=attempt, worker_id=worker, length=length, metric=0.1
    )


def test_only_a_command_sent_after_the_completion_is_repeated() -> None:
    run = make_run(
        "{name: asha, max_length: 4, max_trials: 1, num_rungs: 2, divisor: 2, stop_once: true}"
    )
    run.start()
    started(run, 1)
    answers = Answers()
    step = completed(run, 1, 2, 0.1)
    (cmd,) = step.commands
    assert isinstance(cmd.body, ContinueTrial)
    answers.note(5, 0, cmd)
    answer = answers.to_repeat(run, completion(2))
    assert answer is not None
    assert (answer.message_id, answer.command) == (f"{EXP}/5/0", cmd)
    # The continue to 4 started the next operation: it answers nothing completed at 4,
    # and nothing from another attempt or another worker.
    assert answers.to_repeat(run, completion(4)) is None
    assert answers.to_repeat(run, completion(2, attempt=2)) is None
    assert answers.to_repeat(run, completion(2, worker="w2")) is None
    step = completed(run, 1, 4, 0.1)
    answers.note(6, 0, step.commands[0])
    repeat = answers.to_repeat(run, completion(4))
    assert repeat is not None
    assert repeat.command.body.type == "close_trial"
    # Once the attempt has exited nothing is kept: the service forgets it on its
    # trial_exited, and pruning forgets an attempt that no longer runs.
    answers.ended(EXP, 1, 1)
    assert answers.to_repeat(run, completion(4)) is None
    answers.note(6, 0, step.commands[0])
    exited(run, 1, ExitReason.COMPLETED)
    answers.prune(run)
    assert len(answers) == 0


def test_a_kill_is_kept_until_the_killed_attempt_exits() -> None:
    run = make_run("{name: single, max_length: 4}")
    run.start()
    started(run, 1)
    step = run.on_trial_kill(1)
    (kill,) = [c for c in step.commands if c.body.type == "kill_trial"]
    answers = Answers()
    answers.note(3, 0, kill)
    answers.prune(run)
    # The trial is CANCELED, but its process may not have had the kill: asked, it is
    # sent again.
    repeat = answers.to_repeat(run, completion(4))
    assert repeat is not None
    assert repeat.command == kill
    answers.ended(EXP, 1, 1)
    assert answers.to_repeat(run, completion(4)) is None
