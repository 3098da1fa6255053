"""The experiment host: an input applies whole or not at all, and a failure of the
search is the input's outcome, logged, so that live state always equals the fold of the
log."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rung.broker.schemas import (
    ControlExperiment,
    ExitReason,
    KillTrial,
    OpCompleted,
    ProgressReported,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.config import parse_config
from rung.searcher.errors import UnknownRulesError
from rung.searcher.eventlog import CreatedRecord, InputRecord, read_log, replay
from rung.searcher.eventlog.seen import WINDOW
from rung.searcher.experiment import Experiment
from rung.searcher.host import ExperimentBrokenError, ExperimentHost
from rung.searcher.methods import RULES, build_method
from rung.searcher.testing import scripted_event
from rung.searcher.trials import ExperimentRun

EID = "exp-host"
FRAGILE = "tests.unit.searcher.fragile:Fragile"


def fragile_config(**options: Any) -> dict[str, Any]:
    return {
        "entrypoint": "python3 train.py",
        "searcher": {
            "name": "custom",
            "class": FRAGILE,
            "metric": "loss",
            "max_length": 10,
            "max_trials": 6,
            "max_concurrent_trials": 2,
            **options,
        },
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
        "max_restarts": 1,
        "reproducibility": {"experiment_seed": 7},
    }


def new_host(directory: Path, raw: dict[str, Any]) -> ExperimentHost:
    config = parse_config(raw).config
    run = ExperimentRun(EID, Experiment(config), context_hash="0" * 64, checkpoint_root="/ck")
    created = CreatedRecord(
        seq=1,
        experiment_id=EID,
        config=config.model_dump(mode="json", by_alias=True),
        context_hash="0" * 64,
        checkpoint_root="/ck",
        request_key="key",
        rules=RULES,
    )
    return ExperimentHost.create(
        run, created, directory / "events.jsonl", owner="test", context_root=None, warnings=[], at=0
    )


@pytest.fixture
def opened() -> Iterator[list[ExperimentHost]]:
    """Hosts to close once the test is over."""
    hosts: list[ExperimentHost] = []
    yield hosts
    for host in hosts:
        host.close()


def folded(host: ExperimentHost) -> dict[str, Any]:
    """The state that replaying the log from its first record gives."""
    return replay(read_log(host.log.path)).run.snapshot()


def live(host: ExperimentHost) -> dict[str, Any]:
    return host.run.snapshot()


def running(host: ExperimentHost) -> list[int]:
    return [t.trial_id for t in host.run.trials.values() if t.state == "RUNNING"]


def start_all(host: ExperimentHost) -> None:
    for trial in list(host.run.trials.values()):
        if trial.state == "QUEUED":
            ids = {"experiment_id": EID, "trial_id": trial.trial_id, "attempt": trial.attempt}
            host.apply(TrialStarted(**ids, worker_id="w", slots=1), f"s{trial.trial_id}", at=0)


def test_a_method_that_raises_fails_the_experiment_and_kills_its_running_trials(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config(raise_above=0.9))
    opened.append(host)
    start_all(host)
    assert running(host) == [1, 2]
    before = folded(host)
    done = OpCompleted(experiment_id=EID, trial_id=1, attempt=1, worker_id="w", length=10, metric=2)
    applied = host.apply(done, "boom", at=0)
    step = applied.step
    assert step.failed == "ValueError: metric 2.0 is above 0.9"
    # The state is the one before the input, then failed: nothing of the half-applied
    # validation is left (the experiment does not count it, nor does the method).
    assert host.run.state == "ERROR"
    assert host.run.experiment.trials[host.run.by_id[1].request_id].op_done is False
    assert (
        host.run.experiment.method.snapshot()["validations"]
        == before["experiment"]["method"]["validations"]
    )
    kills = [c for c in step.commands if isinstance(c.body, KillTrial)]
    assert sorted(getattr(c.body, "trial_id", 0) for c in kills) == [1, 2]
    assert all(c.worker_id == "w" for c in kills)
    assert [op.model_dump() for op in step.ops] == [
        {"type": "shutdown", "cancel": False, "failure": True}
    ]
    assert {t.state for t in host.run.trials.values()} == {"CANCELED"}
    # The failure is in the log, and the fold reproduces it.
    record = read_log(host.log.path)[-1]
    assert isinstance(record, InputRecord)
    assert record.failed == step.failed
    assert live(host) == folded(host)


def test_an_errored_experiment_queues_no_crashed_trial_and_kill_stops_it_again(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config(raise_above=0.9))
    opened.append(host)
    start_all(host)
    done = OpCompleted(experiment_id=EID, trial_id=1, attempt=1, worker_id="w", length=10, metric=2)
    host.apply(done, "boom", at=0)
    # Trial 2's process crashes before its kill arrives: it is not queued again.
    crash = TrialExited(
        experiment_id=EID, trial_id=2, attempt=1, worker_id="w", reason=ExitReason.ERRORED
    )
    applied = host.apply(crash, "crash", at=0)
    assert applied.step.commands == []
    assert host.run.by_id[2].state == "CANCELED"
    # A user's kill is not refused: trial 1's process has not exited, it is killed again.
    kill = host.apply(ControlExperiment(experiment_id=EID, action="kill"), "kill", at=0)
    assert [(c.body.type, getattr(c.body, "trial_id", None)) for c in kill.step.commands] == [
        ("kill_trial", 1)
    ]
    assert kill.step.ignored is None
    assert live(host) == folded(host)


def test_an_overflow_in_sampling_fails_the_experiment_at_its_start(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config(overflow_after=0))
    opened.append(host)
    assert host.run.state == "ERROR"
    assert host.run.error is not None
    assert host.run.error.startswith("OverflowError")
    assert host.run.trials == {}
    assert live(host) == folded(host)


def test_a_duplicate_changes_nothing_and_writes_nothing(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config())
    opened.append(host)
    start_all(host)
    seq = host.log.seq
    again = host.apply(
        TrialStarted(experiment_id=EID, trial_id=1, attempt=1, worker_id="w", slots=1), "s1", at=0
    )
    assert again.duplicate
    assert host.log.seq == seq


def inputs(host: ExperimentHost, rng: Random, index: int) -> Body | None:
    """A random input: what a cluster sends, faults, poison metrics, stale or bogus
    events, and a user's controls."""
    roll = rng.random()
    ids = {"experiment_id": EID, "worker_id": "w"}
    trials = list(host.run.trials.values())
    if roll < 0.1 and trials:
        trial = rng.choice(trials)
        return OpCompleted(
            **ids, trial_id=trial.trial_id, attempt=max(trial.attempt, 1), length=10, metric=5.0
        )
    if roll < 0.15:
        return OpCompleted(**ids, trial_id=99, attempt=1, length=10, metric=0.1)  # bogus
    if roll < 0.2 and trials:
        trial = rng.choice(trials)
        return ProgressReported(**ids, trial_id=trial.trial_id, attempt=trial.attempt + 1, units=1)
    if roll < 0.25:
        return ControlExperiment(
            experiment_id=EID, action=rng.choice(["pause", "activate", "cancel", "kill"])
        )
    return scripted_event(host.run, rng, p_error=0.2, p_preempt=0.1)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), overflow=st.sampled_from([None, 1, 3]))
def test_live_state_equals_the_fold_of_the_log_after_every_input(
    seed: int, overflow: int | None
) -> None:
    rng = Random(seed)
    options: dict[str, Any] = {"raise_above": 0.95}
    if overflow is not None:
        options["overflow_after"] = overflow
    with tempfile.TemporaryDirectory() as directory:
        host = new_host(Path(directory), fragile_config(**options))
        assert live(host) == folded(host)
        for index in range(40):
            body = inputs(host, rng, index)
            if body is None:
                break
            # Now and then a message delivered again: a duplicate changes nothing.
            message_id = f"m{index - 1}" if index and rng.random() < 0.1 else f"m{index}"
            host.apply(body, message_id, at=0)
            assert live(host) == folded(host), f"after input {index}: {body!r}"
        host.close()


def test_the_fold_of_a_log_whose_input_now_raises_fails_there(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    """A log written when the input applied cleanly, replayed by code that raises on it
    (or by an older Rung that let the error escape): replay fails the experiment there,
    from the state before that input, and says so."""
    host = new_host(tmp_path, fragile_config(raise_above=100.0))
    opened.append(host)
    start_all(host)
    done = OpCompleted(experiment_id=EID, trial_id=1, attempt=1, worker_id="w", length=10, metric=2)
    host.apply(done, "fine-then", at=0)
    assert host.run.state == "ACTIVE"
    host.close()
    # The same log, with the method's threshold lowered in its created record.
    lines = host.log.path.read_text().splitlines()
    lines[0] = lines[0].replace('"raise_above":100.0', '"raise_above":0.9')
    assert lines[0] != host.log.path.read_text().splitlines()[0]
    host.log.path.write_text("\n".join(lines) + "\n")
    replayed = replay(read_log(host.log.path))
    assert replayed.run.state == "ERROR"
    assert replayed.failure is not None
    seq, reason, step = replayed.failure
    assert seq == 6
    assert reason == "ValueError: metric 2.0 is above 0.9"
    assert sorted(getattr(c.body, "trial_id", 0) for c in step.commands) == [1, 2]
    # A searcher recovering it writes the failure down and sends the kills.
    reopened = ExperimentHost.open(host.log.path, owner="second", context_root=None)
    assert reopened is not None
    opened.append(reopened)
    assert reopened.run.state == "ERROR"
    kills = reopened.outbox[-1].commands
    assert sorted((c.body.type, getattr(c.body, "trial_id", None)) for c in kills) == [
        ("kill_trial", 1),
        ("kill_trial", 2),
    ]
    assert replay(read_log(host.log.path)).failure is None  # written: not found again
    # The kills are in the log: a searcher that dies before sending them sends them
    # again after its restart, and writes the failure down only once.
    reopened.log.path.with_name("unsent.json").unlink(missing_ok=True)
    reopened.close()
    opened.remove(reopened)
    records = len(read_log(host.log.path))
    again = ExperimentHost.open(host.log.path, owner="third", context_root=None)
    assert again is not None
    opened.append(again)
    assert [getattr(c.body, "trial_id", None) for c in again.outbox[-1].commands] == [1, 2]
    assert len(read_log(again.log.path)) == records + 1  # its owner record only


def test_an_experiment_whose_state_cannot_be_rebuilt_changes_nothing_and_says_so(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    """The search raised, and the log cannot be folded again (here: it is gone): the
    input is not applied, nothing is written, and the caller is told."""
    host = new_host(tmp_path, fragile_config(raise_above=0.9))
    opened.append(host)
    start_all(host)
    seq = host.log.seq
    host.log.path.rename(tmp_path / "moved.jsonl")
    done = OpCompleted(experiment_id=EID, trial_id=1, attempt=1, worker_id="w", length=10, metric=2)
    with pytest.raises(ExperimentBrokenError, match="cannot be rebuilt from its log"):
        host.apply(done, "boom", at=0)
    assert host.log.seq == seq
    assert "boom" not in host.seen


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_controls_other_than_kill_are_refused_on_a_failed_experiment(
    tmp_path: Path, action: str, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config(overflow_after=0))
    opened.append(host)
    applied = host.apply(ControlExperiment(experiment_id=EID, action=action), "c", at=0)
    assert applied.step.ignored == f"{action}: the experiment has ended (ERROR)"


def test_the_applied_ids_stay_bounded_and_a_restart_reads_them_from_the_snapshot(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config())
    start_all(host)
    ids = {"experiment_id": EID, "trial_id": 1, "attempt": 1, "worker_id": "w"}
    # A long trial's reports; its worker's other messages (heartbeats, other
    # experiments) take the numbers in between.
    for n in range(1, 12_001):
        host.apply(ProgressReported(**ids, units=0.1), f"w/s1/{3 * n}", at=0)
    assert len(host.seen) <= 2 * WINDOW  # not 12,000
    snapshot = host.snapshot_due(1)
    assert snapshot is not None
    assert snapshot.state["seen"]["v"] == 2
    host.log.write_snapshot(EID, snapshot.state)
    host.apply(ProgressReported(**ids, units=0.1), "w/s1/36003", at=0)  # after the snapshot
    host.close()
    reopened = ExperimentHost.open(host.log.path, owner="second", context_root=None)
    assert reopened is not None
    opened.append(reopened)
    assert reopened.log.snapshot is not None
    for message_id in ("w/s1/3", "w/s1/36000", "w/s1/36003", f"{EID}/start"):
        assert message_id in reopened.seen
        assert reopened.apply(ProgressReported(**ids, units=0.1), message_id, at=0).duplicate
    assert "w/s1/36006" not in reopened.seen
    assert live(reopened) == folded(reopened)


def test_the_host_knows_when_its_experiment_ended(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config())
    opened.append(host)
    start_all(host)
    running_since = host.ended_at
    assert running_since is None
    host.apply(ControlExperiment(experiment_id=EID, action="kill"), "kill", at=1234.0)
    assert host.run.state == "CANCELED"
    assert host.ended_at == 1234.0
    host.close()
    opened.remove(host)
    reopened = ExperimentHost.open(host.log.path, owner="second", context_root=None)
    assert reopened is not None
    opened.append(reopened)
    assert reopened.ended_at is not None
    assert reopened.ended_at >= 1234.0


def test_a_log_of_a_newer_rules_revision_is_refused_with_the_fix(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    """A log whose created record names rules this Rung does not know was decided by
    other rules: replaying it here would not give its decisions, so it is refused (the
    service shows the experiment as ERROR with this reason), never folded under RULES."""
    host = new_host(tmp_path, fragile_config())
    start_all(host)
    host.close()
    path = tmp_path / "events.jsonl"
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert first["kind"] == "created"
    assert first["rules"] == RULES
    first["rules"] = RULES + 1
    path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(UnknownRulesError) as refused:
        replay(read_log(path))
    message = str(refused.value)
    assert f"rule revision {RULES + 1}" in message
    assert f"revisions 1 to {RULES}" in message
    assert "newer Rung" in message
    with pytest.raises(UnknownRulesError):
        ExperimentHost.open(path, owner="test", context_root=None)


@pytest.mark.parametrize("rules", [0, RULES + 1])
def test_build_method_refuses_a_rules_revision_it_does_not_know(rules: int) -> None:
    config = parse_config(fragile_config()).config
    with pytest.raises(UnknownRulesError, match="rules: the experiment decides by rule revision"):
        build_method(config, rules=rules)


def test_a_restart_sends_every_decision_a_later_record_names_unconfirmed(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    """Inputs are applied while a decision's commands wait for the broker's confirms, so
    the last record may be a later one's: it names the oldest decision not confirmed
    (``unconfirmed_from``), and a restart sends every decision from there on again."""
    host = new_host(tmp_path, fragile_config())
    [waiting] = host.outbox  # the start's run_trials: not confirmed (the broker is slow)
    start_all(host)  # inputs that cause no command, applied meanwhile
    host.close()
    path = tmp_path / "events.jsonl"
    records = read_log(path)
    later = [r for r in records if isinstance(r, InputRecord) and r.seq > waiting.seq]
    assert len(later) == 2
    assert {r.unconfirmed_from for r in later} == {waiting.seq}
    assert all(not r.commands for r in later)
    reopened = ExperimentHost.open(path, owner="restarted", context_root=None)
    assert reopened is not None
    opened.append(reopened)
    assert [(o.seq, o.commands) for o in reopened.outbox] == [(waiting.seq, waiting.commands)]


def test_a_record_written_once_every_decision_was_confirmed_names_none(
    tmp_path: Path, opened: list[ExperimentHost]
) -> None:
    host = new_host(tmp_path, fragile_config())
    host.outbox.clear()  # the start's commands confirmed
    start_all(host)
    host.close()
    path = tmp_path / "events.jsonl"
    lines = path.read_text().splitlines()
    assert all('"unconfirmed_from"' not in line for line in lines)  # written as before
    reopened = ExperimentHost.open(path, owner="restarted", context_root=None)
    assert reopened is not None
    opened.append(reopened)
    assert not reopened.outbox  # the last input caused nothing; nothing else waited
