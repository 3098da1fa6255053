"""Who may speak for a trial attempt: only the process the run took the start of.

Every event but a start is ignored unless the trial is RUNNING that attempt on the
event's worker; a start counts only with the start token of its attempt's run_trial,
derived from the experiment's secret (so it replays the same, and only the worker that
received the command knows it)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from rung.broker.schemas import (
    CheckpointSaved,
    ExitReason,
    KillTrial,
    LogLine,
    LogLines,
    MetricsReported,
    OpCompleted,
    PreemptTrial,
    ProgressReported,
    RunTrial,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
)
from rung.broker.schemas.envelope import Body, Envelope
from rung.searcher.eventlog import read_log, replay
from rung.searcher.eventlog.records import CreatedRecord, InputRecord, record_adapter
from rung.searcher.experiment import Experiment
from rung.searcher.host import ExperimentHost
from rung.searcher.service.access import Access, Binding
from rung.searcher.service.intake import _not_its_own
from rung.searcher.trials import ExperimentRun, Step

from .helpers import created_record, make_config

EXP = "exp-1"
SECRET = "0123456789abcdef" * 2
CKPT = "00000000-0000-4000-8000-0000000000aa"
ASHA = (
    "{name: asha, max_length: 4, max_trials: 2, num_rungs: 2, divisor: 2, max_concurrent_trials: 1}"
)


def make_run(
    searcher: str = "{name: single, max_length: 3}", secret: str | None = SECRET
) -> ExperimentRun:
    config = make_config(searcher, entrypoint="python3 train.py")
    return ExperimentRun(
        EXP, Experiment(config), context_hash="0" * 64, checkpoint_root="/ckpt", start_secret=secret
    )


def ids(trial_id: int = 1, attempt: int = 1, worker: str = "w1") -> dict[str, Any]:
    return {"experiment_id": EXP, "trial_id": trial_id, "attempt": attempt, "worker_id": worker}


def runs(step: Step) -> list[RunTrial]:
    return [c.body for c in step.commands if isinstance(c.body, RunTrial)]


def forged(trial_id: int = 1, attempt: int = 1, worker: str = "w2") -> list[Body]:
    """What a worker could send for an attempt: every event but a start."""
    common = ids(trial_id, attempt, worker)
    return [
        CheckpointSaved(**common, uuid=CKPT, steps_completed=99, metadata={}, size_bytes=1),
        MetricsReported(**common, group="validation", steps_completed=99, metrics={"loss": -1.0}),
        ProgressReported(**common, units=1.0),
        OpCompleted(**common, length=3, metric=-1.0),
        LogLines(**common, lines=[LogLine(stream="stdout", text="forged")]),
        TrialExited(**common, reason=ExitReason.ERRORED, message="forged"),
    ]


def test_each_attempts_token_is_the_hmac_of_its_name_under_the_experiments_secret() -> None:
    run = make_run()
    (cmd,) = runs(run.start())
    expected = hmac.new(SECRET.encode(), f"{EXP}/1/1".encode(), hashlib.sha256).hexdigest()
    assert cmd.start_token == expected[:32]
    assert run.start_token(1, 2) not in (None, cmd.start_token)
    # Another secret, other tokens: they cannot be guessed from the ids.
    assert make_run(secret="f" * 32).start_token(1, 1) != cmd.start_token
    # A log older than start tokens has none.
    (old,) = runs(make_run(secret=None).start())
    assert old.start_token is None


def test_no_event_of_a_queued_attempt_touches_the_trial() -> None:
    """Before its start is taken, nobody speaks for an attempt: no checkpoint, no
    validation metric, no progress, no completion, no exit."""
    run = make_run()
    run.start()
    before = run.by_id[1].model_dump()
    for body in forged(worker="w2") + forged(worker="w1"):
        step = run.on_event(body)
        assert step.ignored is not None
        assert "QUEUED, not running" in step.ignored, step.ignored
        assert not step.commands
        assert not step.ops
    assert run.by_id[1].model_dump() == before
    assert run.by_id[1].latest_checkpoint is None


def test_a_promoted_trials_next_attempt_is_fenced_until_its_start() -> None:
    run = make_run(ASHA)
    run.start()
    token = run.start_token
    run.on_event(TrialStarted(**ids(1), slots=1, start_token=token(1, 1)))
    run.on_event(OpCompleted(**ids(1), length=2, metric=0.1))
    run.on_event(TrialExited(**ids(1), reason=ExitReason.OUT_OF_OPS))
    run.on_event(TrialStarted(**ids(2, worker="w2"), slots=1, start_token=token(2, 1)))
    step = run.on_event(OpCompleted(**ids(2, worker="w2"), length=2, metric=0.5))
    (resume,) = runs(step)
    assert (resume.trial_id, resume.attempt) == (1, 2)
    trial = run.by_id[1]
    assert trial.state == "QUEUED"
    for body in forged(1, 2, worker="w3"):
        assert run.on_event(body).ignored is not None
    assert trial.latest_checkpoint is None
    assert trial.validation_metrics == {}
    # Its real start is taken; from then on only its worker speaks for it.
    run.on_event(TrialStarted(**ids(1, 2, "w1"), slots=1, start_token=resume.start_token))
    assert (trial.state, trial.worker_id) == ("RUNNING", "w1")
    saved = CheckpointSaved(
        **ids(1, 2, "w1"), uuid=CKPT, steps_completed=3, metadata={}, size_bytes=1
    )
    assert run.on_event(saved).ignored is None
    assert trial.latest_checkpoint == CKPT


def test_a_start_without_its_attempts_token_is_ignored_and_stops_nothing() -> None:
    """A worker that knows the experiment id cannot claim work it never received; no
    command goes out on its word (the worker it names may really run the trial)."""
    run = make_run()
    (cmd,) = runs(run.start())
    wrong = run.start_token(1, 2)  # a real token, of another attempt
    for token in (None, wrong, "0" * 32):
        step = run.on_event(TrialStarted(**ids(worker="w2"), slots=1, start_token=token))
        assert step.ignored is not None
        assert "start token" in step.ignored, step.ignored
        assert not step.commands
        assert run.by_id[1].state == "QUEUED"
    step = run.on_event(TrialStarted(**ids(worker="w1"), slots=1, start_token=cmd.start_token))
    assert step.ignored is None
    assert (run.by_id[1].state, run.by_id[1].worker_id) == ("RUNNING", "w1")
    # A second process of the attempt (the run_trial re-sent) has the token: it is
    # asked to stop, as before; a forged second start is just ignored.
    again = run.on_event(TrialStarted(**ids(worker="w3"), slots=1, start_token=cmd.start_token))
    assert [(type(c.body), c.worker_id) for c in again.commands] == [(PreemptTrial, "w3")]
    fake = run.on_event(TrialStarted(**ids(worker="w4"), slots=1))
    assert not fake.commands


def test_a_log_without_a_secret_keeps_the_rules_it_was_written_under() -> None:
    """An older log replays to the state its searcher had: a checkpoint of a queued
    attempt counted then (only an exit and a completion were fenced), any start too."""
    run = make_run(secret=None)
    run.start()
    saved, *_ = forged(worker="w2")
    assert run.on_event(saved).ignored is None
    assert run.by_id[1].latest_checkpoint == CKPT
    exited = forged(worker="w2")[-1]
    assert run.on_event(exited).ignored is not None
    step = run.on_event(TrialStarted(**ids(), slots=1))
    assert step.ignored is None
    assert run.by_id[1].state == "RUNNING"


def test_after_its_exit_an_attempts_late_events_are_ignored() -> None:
    """The exit is an attempt's last event; a worker declared lost reports into the void."""
    run = make_run("{name: single, max_length: 3}")
    run.start()
    run.on_event(TrialStarted(**ids(), slots=1, start_token=run.start_token(1, 1)))
    run.on_event(TrialExited(**ids(), reason=ExitReason.COMPLETED))  # exited early: requeued
    assert run.by_id[1].state == "QUEUED"
    saved = CheckpointSaved(**ids(), uuid=CKPT, steps_completed=3, metadata={}, size_bytes=1)
    assert run.on_event(saved).ignored is not None
    assert run.by_id[1].latest_checkpoint is None


def test_a_stale_start_is_still_stopped() -> None:
    run = make_run()
    run.start()
    run.on_event(TrialStarted(**ids(), slots=1, start_token=run.start_token(1, 1)))
    run.on_event(TrialExited(**ids(), reason=ExitReason.PREEMPTED))
    late = TrialStarted(**ids(worker="w9"), slots=1, start_token=run.start_token(1, 1))
    step = run.on_event(late)
    assert [(type(c.body), c.worker_id) for c in step.commands] == [(KillTrial, "w9")]


def _host_story(tmp_path: Path, secret: str | None) -> Path:
    """A one-trial experiment, its start token echoed, a forged start and checkpoint in
    between, to completion: the log the real host writes."""
    run = make_run(secret=secret)
    path = tmp_path / "events.jsonl"
    host = ExperimentHost.create(
        run, created_record(run), path, owner="me", context_root=None, warnings=[], at=0.0
    )
    token = run.start_token(1, 1)
    inputs: list[Body] = [
        TrialStarted(**ids(worker="w2"), slots=1),  # forged: no token
        CheckpointSaved(
            **ids(worker="w2"), uuid=CKPT, steps_completed=1, metadata={}, size_bytes=1
        ),
        TrialStarted(**ids(), slots=1, start_token=token),
        OpCompleted(**ids(), length=3, metric=0.25),
        TrialExited(**ids(), reason=ExitReason.COMPLETED),
    ]
    for n, body in enumerate(inputs):
        host.apply(body, f"w/s/{n + 1}", at=0.0)
    assert host.run.state == "COMPLETED"
    host.close()
    return path


def test_a_log_with_start_tokens_replays_and_verifies(tmp_path: Path) -> None:
    path = _host_story(tmp_path, SECRET)
    records = read_log(path)
    created = records[0]
    assert isinstance(created, CreatedRecord)
    assert created.start_secret == SECRET
    ignored = [r.ignored for r in records if isinstance(r, InputRecord) and r.ignored]
    assert len(ignored) == 2
    assert "start token" in ignored[0]
    assert "QUEUED, not running" in ignored[1]
    result = replay(records, verify=True)
    assert result.divergence is None
    assert result.run.state == "COMPLETED"
    assert result.run.by_id[1].latest_checkpoint is None


def test_the_secret_is_left_out_of_a_created_record_without_one() -> None:
    """Golden logs (no secret) are written back byte for byte."""
    base: dict[str, Any] = {
        "seq": 1,
        "experiment_id": EXP,
        "config": {},
        "context_hash": "0" * 64,
        "checkpoint_root": "/ckpt",
    }
    assert "start_secret" not in json.loads(CreatedRecord(**base).model_dump_json())
    record = CreatedRecord(**base, start_secret=SECRET)
    assert record_adapter.validate_json(record.model_dump_json()) == record


def test_bindings_of_attempts_that_no_longer_run_are_forgotten() -> None:
    run = make_run(ASHA)
    run.start()
    access = Access()
    run.on_event(TrialStarted(**ids(1), slots=1, start_token=run.start_token(1, 1)))
    access.bind(EXP, 1, 1, Binding("u1", "w1"))
    access.bind("other", 1, 1, Binding("u1", "w1"))
    access.prune(EXP, run)
    assert access.bound(EXP, 1, 1) == Binding("u1", "w1")  # still running
    run.on_event(OpCompleted(**ids(1), length=2, metric=0.1))
    run.on_event(TrialExited(**ids(1), reason=ExitReason.OUT_OF_OPS))
    access.prune(EXP, run)
    assert access.bound(EXP, 1, 1) is None
    assert access.bound("other", 1, 1) is not None  # another experiment's stay
    run.state = "COMPLETED"
    access.bind(EXP, 2, 1, Binding("u2", "w2"))
    access.prune(EXP, run)
    assert not [key for key in access.bindings if key[0] == EXP]


@pytest.mark.parametrize(
    ("message_id", "refused"),
    [
        ("w1/abc123/7", False),  # the worker's own form
        ("w2/abc123/7", True),  # another worker's
        ("w1.host/abc123/7", True),  # a worker whose id merely starts like it
        ("w1/7", True),  # not <session>/<n>
        ("w1/a/b/7", True),  # could pass for worker w1/a's
        ("w1", True),
    ],
)
def test_a_workers_message_id_must_be_under_its_own_worker_id(
    message_id: str, refused: bool
) -> None:
    for body in (
        ProgressReported(**ids(), units=1.0),
        LogLines(**ids(), lines=[LogLine(stream="stdout", text="x")]),
        WorkerHeartbeat(worker_id="w1", slots=1, free_slots=1),
    ):
        reason = _not_its_own(Envelope(message_id=message_id, body=body))
        assert (reason is not None) == refused, (message_id, body.type)
        if reason is not None:
            assert "<worker id>/<session>/<n>" in reason
