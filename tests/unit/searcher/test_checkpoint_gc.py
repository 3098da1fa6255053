"""Checkpoint garbage collection in the pure core: Determined's ``save_experiment_best``,
``save_trial_best`` and ``save_trial_latest``, decided when a trial or the experiment
ends, logged like any decision, and never touching what a resume or a warm start needs."""

from __future__ import annotations

from random import Random
from typing import Any

import pytest

from rung.broker.schemas import (
    CheckpointSaved,
    ControlExperiment,
    ControlTrial,
    DeleteCheckpoints,
    ExitReason,
    MetricsReported,
    OpCompleted,
    RunTrial,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.config import ExperimentConfig
from rung.searcher.errors import ConfigError
from rung.searcher.eventlog import InputRecord, replay
from rung.searcher.experiment import Experiment
from rung.searcher.testing import scripted_event
from rung.searcher.trials import ExperimentRun, Step
from rung.searcher.trials.gc import Policy, Saved, to_delete

from .helpers import created_record, make_config

EXP = "exp-1"
ROOT = f"/ckpt/{EXP}"


def uid(trial: int, n: int) -> str:
    return f"00000000-0000-4000-8000-{trial:06d}{n:06d}"


def make_run(searcher: str, root: str = ROOT, **extra: Any) -> ExperimentRun:
    config = make_config(searcher, entrypoint="python3 train.py", **extra)
    return ExperimentRun(EXP, Experiment(config), context_hash="0" * 64, checkpoint_root=root)


def _common(trial_id: int, attempt: int = 1, worker: str = "w1") -> dict[str, Any]:
    return {"experiment_id": EXP, "trial_id": trial_id, "attempt": attempt, "worker_id": worker}


def started(trial_id: int, attempt: int = 1, worker: str = "w1") -> Body:
    return TrialStarted(**_common(trial_id, attempt, worker), slots=1)


def saved(trial_id: int, uuid: str, steps: int, attempt: int = 1, worker: str = "w1") -> Body:
    return CheckpointSaved(
        **_common(trial_id, attempt, worker),
        uuid=uuid,
        steps_completed=steps,
        metadata={"steps_completed": steps},
        size_bytes=1,
    )


def validated(trial_id: int, steps: int, loss: float, attempt: int = 1, worker: str = "w1") -> Body:
    return MetricsReported(
        **_common(trial_id, attempt, worker),
        group="validation",
        steps_completed=steps,
        metrics={"loss": loss},
    )


def completed(
    trial_id: int, length: int, metric: float, attempt: int = 1, worker: str = "w1"
) -> Body:
    return OpCompleted(**_common(trial_id, attempt, worker), length=length, metric=metric)


def exited(trial_id: int, reason: ExitReason, attempt: int = 1, worker: str = "w1") -> Body:
    return TrialExited(**_common(trial_id, attempt, worker), reason=reason)


def deletions(step: Step) -> list[str]:
    uuids: list[str] = []
    for command in step.commands:
        if isinstance(command.body, DeleteCheckpoints):
            assert command.worker_id is None  # to the work queue
            assert command.body.checkpoint_root == ROOT
            assert command.body.experiment_id == EXP
            uuids += command.body.uuids
    return uuids


def feed(run: ExperimentRun, bodies: list[Body]) -> list[str]:
    """Apply ``bodies`` in turn; every uuid the run decided to delete, in order."""
    deleted: list[str] = []
    for body in bodies:
        deleted += deletions(run.on_event(body))
    return deleted


def one_trial(
    trial_id: int, points: list[tuple[int, float | None]], worker: str = "w1"
) -> list[Body]:
    """Trial ``trial_id`` saves a checkpoint at each step and validates it (None: not)."""
    bodies: list[Body] = [started(trial_id, worker=worker)]
    for n, (steps, loss) in enumerate(points):
        bodies.append(saved(trial_id, uid(trial_id, n), steps, worker=worker))
        if loss is not None:
            bodies.append(validated(trial_id, steps, loss, worker=worker))
    return bodies


SINGLE = "{name: single, max_length: 30}"


# ---------------------------------------------------------------- the pure rule
def S(trial: int, n: int, steps: int, metric: float | None) -> Saved:  # noqa: N802
    return Saved(trial, uid(trial, n), steps, n, metric)


TABLE: list[tuple[str, Policy, list[Saved], set[int], set[str], set[str]]] = [
    (
        "defaults keep each trial's latest and best",
        Policy(),
        [S(1, 0, 10, 0.3), S(1, 1, 20, 0.6), S(1, 2, 30, 0.9), S(2, 0, 10, 0.1), S(2, 1, 20, 0.2)],
        {1, 2},
        set(),
        {uid(1, 1)},  # trial 2: step 20 is its latest, step 10 its best
    ),
    (
        "only the experiment's best",
        Policy(experiment_best=1, trial_best=0, trial_latest=0),
        [S(1, 0, 10, 0.3), S(1, 1, 20, 0.6), S(2, 0, 10, 0.1), S(2, 1, 20, 0.2)],
        {1, 2},
        set(),
        {uid(1, 0), uid(1, 1), uid(2, 1)},
    ),
    (
        "larger is better",
        Policy(trial_latest=0, smaller_is_better=False),
        [S(1, 0, 10, 0.3), S(1, 1, 20, 0.9), S(1, 2, 30, 0.6)],
        {1},
        set(),
        {uid(1, 0), uid(1, 2)},
    ),
    (
        "a checkpoint without a validation goes unless it is among the latest",
        Policy(experiment_best=5, trial_best=5, trial_latest=1),
        [S(1, 0, 10, None), S(1, 1, 20, 0.5), S(1, 2, 30, None)],
        {1},
        set(),
        {uid(1, 0)},
    ),
    (
        "checkpoints at the same step rank alike among the latest",
        Policy(trial_best=0, trial_latest=1),
        [S(1, 0, 10, 0.1), S(1, 1, 20, 0.2), S(1, 2, 20, 0.2)],
        {1},
        set(),
        {uid(1, 0)},
    ),
    (
        "a trial that is not final keeps everything (it ranks against the others, though)",
        Policy(experiment_best=1, trial_best=0, trial_latest=0),
        [S(1, 0, 10, 0.3), S(2, 0, 10, 0.1), S(2, 1, 20, 0.2)],
        {1},
        set(),
        {uid(1, 0)},
    ),
    (
        "protected: a resume's latest and a warm start's source",
        Policy(trial_best=0, trial_latest=0),
        [S(1, 0, 10, 0.3), S(1, 1, 20, 0.2), S(1, 2, 30, 0.1)],
        {1},
        {uid(1, 0), uid(1, 2)},
        {uid(1, 1)},
    ),
    (
        "ties in the metric go to the lower trial, the earlier step",
        Policy(experiment_best=1, trial_best=0, trial_latest=0),
        [S(2, 0, 10, 0.5), S(1, 0, 20, 0.5), S(1, 1, 10, 0.5)],
        {1, 2},
        set(),
        {uid(2, 0), uid(1, 0)},
    ),
]


@pytest.mark.parametrize(
    ("policy", "checkpoints", "final", "protected", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_the_rule_is_determineds(
    policy: Policy,
    checkpoints: list[Saved],
    final: set[int],
    protected: set[str],
    expected: set[str],
) -> None:
    chosen = to_delete(checkpoints, policy, final=final, protected=protected)
    assert set(chosen) == expected
    assert len(chosen) == len(expected)
    # The order is the trials' and their saves', whatever order they come in.
    assert to_delete(reversed(checkpoints), policy, final=final, protected=protected) == chosen


def test_a_checkpoint_outside_the_experiments_best_stays_outside() -> None:
    """Deciding when a trial ends gives what deciding at the experiment's end gives."""
    policy = Policy(experiment_best=2, trial_best=0, trial_latest=0)
    first = [S(1, 0, 10, 0.5), S(1, 1, 20, 0.4), S(1, 2, 30, 0.9)]
    early = set(to_delete(first, policy, final={1}))
    later = [c for c in first if c.uuid not in early] + [S(2, 0, 10, 0.1), S(2, 1, 20, 0.45)]
    at_the_end = set(to_delete(later, policy, final={1, 2}))
    everything_at_the_end = set(to_delete(first + later[-2:], policy, final={1, 2}))
    assert early | at_the_end == everything_at_the_end


# ---------------------------------------------------------------- in the run
def test_defaults_keep_one_latest_and_one_best_per_trial() -> None:
    run = make_run(SINGLE)
    run.start()
    deleted = feed(run, one_trial(1, [(10, 0.3), (20, 0.6), (30, None)]))
    deleted += feed(run, [completed(1, 30, 0.9)])
    assert deleted == []  # running: nothing is decided yet
    step = run.on_event(exited(1, ExitReason.COMPLETED))
    assert run.state == "COMPLETED"
    # Best: step 10 (0.3); latest: step 30 (whose metric came with op_completed).
    assert deletions(step) == [uid(1, 1)]
    assert list(run.by_id[1].checkpoints) == [uid(1, 0), uid(1, 2)]
    assert run.by_id[1].latest_checkpoint == uid(1, 2)


def test_only_the_experiments_best_with_no_trial_latest_or_best() -> None:
    run = make_run(
        "{name: random, max_length: 20, max_trials: 2, max_concurrent_trials: 2}",
        checkpoint_storage={
            "type": "directory",
            "container_path": "/ckpt",
            "save_experiment_best": 1,
            "save_trial_best": 0,
            "save_trial_latest": 0,
        },
    )
    run.start()
    feed(run, one_trial(1, [(10, 0.3), (20, 0.4)]))
    feed(run, one_trial(2, [(10, 0.2), (20, 0.1)], worker="w2"))
    feed(run, [completed(1, 20, 0.4)])
    deleted = feed(run, [exited(1, ExitReason.COMPLETED)])
    # Trial 2 (still running) holds the experiment's best already: all of trial 1 goes.
    assert deleted == [uid(1, 0), uid(1, 1)]
    assert run.by_id[1].latest_checkpoint is None  # deleted: no longer named
    assert run.by_id[2].checkpoints == {uid(2, 0): 10, uid(2, 1): 20}
    feed(run, [completed(2, 20, 0.1, worker="w2")])
    deleted = feed(run, [exited(2, ExitReason.COMPLETED, worker="w2")])
    assert run.state == "COMPLETED"
    assert deleted == [uid(2, 0)]
    assert run.by_id[2].checkpoints == {uid(2, 1): 20}


def test_larger_is_better() -> None:
    run = make_run(
        "{name: single, max_length: 30, smaller_is_better: false}",
        checkpoint_storage={"type": "directory", "container_path": "/c", "save_trial_latest": 0},
    )
    run.start()
    feed(run, [*one_trial(1, [(10, 0.3), (20, 0.9), (30, 0.6)]), completed(1, 30, 0.6)])
    assert feed(run, [exited(1, ExitReason.COMPLETED)]) == [uid(1, 0), uid(1, 2)]


def test_a_paused_trials_checkpoints_are_kept_while_another_ends() -> None:
    """ASHA pauses trial 1 (promotion-based); trial 2 ends: only trial 2 is collected."""
    run = make_run(
        "{name: asha, max_length: 4, max_trials: 2, num_rungs: 2, divisor: 2,"
        " max_concurrent_trials: 1}",
        checkpoint_storage={
            "type": "directory",
            "container_path": "/c",
            "save_trial_best": 0,
            "save_trial_latest": 0,
        },
    )
    run.start()
    feed(run, [started(1), saved(1, uid(1, 0), 1), saved(1, uid(1, 1), 2), completed(1, 2, 0.9)])
    feed(run, [exited(1, ExitReason.OUT_OF_OPS)])
    assert run.by_id[1].state == "PAUSED"
    feed(run, [started(2, worker="w2"), saved(2, uid(2, 0), 2, worker="w2")])
    feed(run, [completed(2, 2, 0.95, worker="w2")])  # worse: trial 2 is not promoted
    deleted = feed(run, [exited(2, ExitReason.OUT_OF_OPS, worker="w2")])
    # Trial 1 (the better one) is promoted and resumes from its latest checkpoint; trial
    # 2 is closed: its checkpoint goes, trial 1's (a resume needs them) stay.
    assert (run.by_id[1].state, run.by_id[2].state) == ("QUEUED", "COMPLETED")
    assert deleted == [uid(2, 0)]
    assert run.by_id[1].checkpoints == {uid(1, 0): 1, uid(1, 1): 2}
    feed(run, [started(1, attempt=2), saved(1, uid(1, 2), 4, attempt=2)])
    feed(run, [completed(1, 4, 0.5, attempt=2)])
    deleted = feed(run, [exited(1, ExitReason.COMPLETED, attempt=2)])
    assert run.state == "COMPLETED"
    # The experiment ended: with no checkpoint kept by the policy, all go.
    assert deleted == [uid(1, 0), uid(1, 1), uid(1, 2)]


def test_a_restartable_trials_latest_is_kept() -> None:
    run = make_run(
        "{name: random, max_length: 20, max_trials: 2, max_concurrent_trials: 2}",
        max_restarts=1,
        checkpoint_storage={
            "type": "directory",
            "container_path": "/c",
            "save_trial_best": 0,
            "save_trial_latest": 0,
        },
    )
    run.start()
    feed(run, one_trial(1, [(10, 0.3)]))
    feed(run, one_trial(2, [(10, 0.2)], worker="w2"))
    # Trial 1 fails with a restart left: it will resume from its latest checkpoint.
    feed(run, [exited(1, ExitReason.ERRORED)])
    assert run.by_id[1].state == "QUEUED"
    feed(run, [completed(2, 20, 0.2, worker="w2")])
    deleted = feed(run, [exited(2, ExitReason.COMPLETED, worker="w2")])
    assert deleted == [uid(2, 0)]
    assert run.by_id[1].checkpoints == {uid(1, 0): 10}


def test_the_warm_start_source_is_never_deleted() -> None:
    source = "11111111-1111-4111-8111-111111111111"
    run = make_run(
        f"{{name: single, max_length: 20, source_checkpoint_uuid: {source}}}",
        checkpoint_storage={
            "type": "directory",
            "container_path": "/c",
            "save_trial_best": 0,
            "save_trial_latest": 0,
        },
    )
    (cmd,) = [c.body for c in run.start().commands]
    assert getattr(cmd, "latest_checkpoint", None) == source
    # A script that reports the source as its own checkpoint does not get it deleted.
    feed(run, [started(1), saved(1, source, 0), saved(1, uid(1, 0), 10), completed(1, 20, 0.5)])
    assert feed(run, [exited(1, ExitReason.COMPLETED)]) == [uid(1, 0)]


def test_a_canceled_experiment_collects_every_trial() -> None:
    run = make_run(
        "{name: random, max_length: 20, max_trials: 2, max_concurrent_trials: 2}",
        checkpoint_storage={"type": "directory", "container_path": "/c", "save_trial_best": 0},
    )
    run.start()
    feed(run, one_trial(1, [(5, 0.3), (10, 0.5)]))
    feed(run, one_trial(2, [(5, 0.2)], worker="w2"))
    feed(run, [exited(1, ExitReason.PREEMPTED), exited(2, ExitReason.PREEMPTED, worker="w2")])
    assert [t.state for t in run.trials.values()] == ["QUEUED", "QUEUED"]
    assert run.by_id[1].checkpoints == {uid(1, 0): 5, uid(1, 1): 10}  # resumes need them
    step = run.on_event(ControlExperiment(experiment_id=EXP, action="cancel"))
    assert run.state == "CANCELED"
    assert deletions(step) == [uid(1, 0)]  # each trial's latest stays
    assert run.by_id[1].checkpoints == {uid(1, 1): 10}


def test_a_run_whose_root_is_shared_never_deletes() -> None:
    """Logs written before per-experiment roots (a shared root) replay as they were."""
    run = make_run(SINGLE, root="/ckpt")
    run.start()
    feed(run, [*one_trial(1, [(10, 0.3), (20, 0.6), (30, 0.9)]), completed(1, 30, 0.9)])
    step = run.on_event(exited(1, ExitReason.COMPLETED))
    assert run.state == "COMPLETED"
    assert not any(isinstance(c.body, DeleteCheckpoints) for c in step.commands)


def test_the_decisions_are_logged_and_replay_the_same() -> None:
    run = make_run("{name: random, max_length: 20, max_trials: 2, max_concurrent_trials: 2}")
    records: list[Any] = [created_record(run)]
    bodies: list[Body | None] = [
        None,
        *one_trial(1, [(5, 0.3), (10, 0.5), (15, 0.6)]),
        *one_trial(2, [(5, 0.2), (10, 0.1)], worker="w2"),
        completed(1, 20, 0.7),
        exited(1, ExitReason.COMPLETED),
        completed(2, 20, 0.1, worker="w2"),
        exited(2, ExitReason.COMPLETED, worker="w2"),
    ]
    decided: list[str] = []
    for n, body in enumerate(bodies):
        step = run.start() if body is None else run.on_event(body)
        decided += deletions(step)
        records.append(InputRecord.of(n + 2, f"m{n}", body, step))
    assert decided == [uid(1, 1), uid(2, 0)]
    result = replay(records, verify=True)
    assert result.divergence is None, result.divergence.diff()
    again = result.run
    assert {t.trial_id: t.checkpoints for t in again.trials.values()} == {
        t.trial_id: t.checkpoints for t in run.trials.values()
    }
    # A snapshot restored half-way decides the same.
    half = make_run("{name: random, max_length: 20, max_trials: 2, max_concurrent_trials: 2}")
    mid = replay(records, until=len(records) - 3).run
    half.restore(mid.snapshot())
    rest = [b for b in bodies[-3:] if b is not None]
    assert feed(half, rest) == [uid(1, 1), uid(2, 0)]


def _held(run: ExperimentRun) -> int:
    return sum(len(t.checkpoints) for t in run.trials.values())


def test_the_count_of_held_checkpoints_follows_every_save_and_deletion() -> None:
    """Issue 18: collection skips its pass over every trial while the run's count of
    held checkpoints is 0; the count is kept as checkpoints come and go (a save sent
    twice counts once), and a restore counts them again."""
    config = "{name: random, max_length: 20, max_trials: 2, max_concurrent_trials: 2}"
    run = make_run(config)
    run.start()
    assert run.held_checkpoints == 0
    bodies = [
        *one_trial(1, [(5, 0.3), (10, 0.5), (15, 0.6)]),
        saved(1, uid(1, 2), 15),  # the same checkpoint reported again
        *one_trial(2, [(5, 0.2), (10, 0.1)], worker="w2"),
        completed(1, 20, 0.7),
        exited(1, ExitReason.COMPLETED),
        completed(2, 20, 0.1, worker="w2"),
        exited(2, ExitReason.COMPLETED, worker="w2"),
    ]
    counts = []
    for n, body in enumerate(bodies):
        run.on_event(body)
        assert run.held_checkpoints == _held(run), f"after input {n}: {body.type}"
        counts.append(run.held_checkpoints)
        restored = make_run(config)
        restored.restore(run.snapshot())
        assert restored.held_checkpoints == run.held_checkpoints
    assert max(counts) == 5
    assert counts[-1] < max(counts)  # deletions took some away


# ---------------------------------------------------------------- the config
def test_the_policy_defaults_are_determineds() -> None:
    storage = make_config(SINGLE, checkpoint_storage={"type": "directory", "container_path": "/c"})
    assert storage.checkpoint_storage is not None
    policy = storage.checkpoint_storage
    assert (policy.save_experiment_best, policy.save_trial_best, policy.save_trial_latest) == (
        0,
        1,
        1,
    )


@pytest.mark.parametrize("value", [-1, "two", 1.5, True])
def test_the_policy_takes_non_negative_whole_numbers(value: object) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint_storage\.save_trial_latest: must be"):
        make_config(
            SINGLE,
            checkpoint_storage={
                "type": "directory",
                "container_path": "/c",
                "save_trial_latest": value,
            },
        )


def test_a_warm_start_source_must_be_a_checkpoint_uuid() -> None:
    with pytest.raises(ConfigError, match="source_checkpoint_uuid: must be a checkpoint uuid"):
        make_config("{name: single, max_length: 5, source_checkpoint_uuid: ../../etc}")


# ---------------------------------------------------------------- per-experiment roots
def test_trials_save_under_the_experiments_root_and_warm_start_from_the_sources() -> None:
    source = "11111111-1111-4111-8111-111111111111"
    config = make_config(
        f"{{name: single, max_length: 20, source_checkpoint_uuid: {source}}}",
        entrypoint="python3 train.py",
        max_restarts=2,
    )
    run = ExperimentRun(
        EXP,
        Experiment(config),
        context_hash="0" * 64,
        checkpoint_root=ROOT,
        warm_start_root="/ckpt/exp-0",
    )
    (first,) = [c.body for c in run.start().commands]
    assert isinstance(first, RunTrial)
    assert (first.checkpoint_root, first.latest_checkpoint) == (ROOT, source)
    assert first.source_root == "/ckpt/exp-0"
    # It fails before its first checkpoint: it starts again from the source.
    run.on_event(started(1))
    step = run.on_event(exited(1, ExitReason.ERRORED))
    (second,) = [c.body for c in step.commands]
    assert isinstance(second, RunTrial)
    assert (second.attempt, second.source_root) == (2, "/ckpt/exp-0")
    # Once it has a checkpoint of its own, it resumes from that, under its own root.
    run.on_event(started(1, attempt=2))
    run.on_event(saved(1, uid(1, 0), 10, attempt=2))
    (third,) = [c.body for c in run.on_event(exited(1, ExitReason.ERRORED, attempt=2)).commands]
    assert isinstance(third, RunTrial)
    assert (third.latest_checkpoint, third.source_root) == (uid(1, 0), None)


# ---------------------------------------------------------------- settled trials skipped
class _EveryTrialEveryTime(ExperimentRun):
    """Collection as defined: every final trial decided again at every collection, and
    every trial that is not final asked whether its latest checkpoint is protected."""

    def _collect(self, step: Step, body: Body | None = None) -> None:
        self.gc_live = set(self.by_id)
        super()._collect(step, body)
        self.gc_named = set(self.by_id)


def _storage(experiment_best: int, trial_best: int, trial_latest: int) -> dict[str, Any]:
    return {
        "type": "directory",
        "container_path": "/ckpt",
        "save_experiment_best": experiment_best,
        "save_trial_best": trial_best,
        "save_trial_latest": trial_latest,
    }


WARM = uid(999, 0)
SETTLED_SEARCHERS = {
    "asha": (
        "{name: asha, max_length: 27, divisor: 3, num_rungs: 3, max_trials: 40, "
        "max_concurrent_trials: 6}"
    ),
    "pbt": (
        "{name: pbt, population_size: 6, num_rounds: 4, length_per_round: 5, "
        "replace_function: {truncate_fraction: 0.34}, "
        "explore_function: {resample_probability: 0.2, perturb_factor: 0.2}}"
    ),
    "random-warm-start": (
        "{name: random, max_length: 5, max_trials: 30, max_concurrent_trials: 4, "
        f"source_checkpoint_uuid: {WARM}}}"
    ),
}


def _around(run: ExperimentRun, body: Body, rng: Random, count: list[int]) -> list[Body]:
    """``body`` and what else comes with it: a checkpoint before each completion
    (sometimes one or two more before it, and validations); now and then a late checkpoint of
    a trial that has ended, a trial reporting the warm start's source as its own, a user's
    kill of a trial (or of one that does not exist), a pause or an activation."""
    out: list[Body] = []
    if isinstance(body, OpCompleted):
        trial, attempt, worker = body.trial_id, body.attempt, body.worker_id
        extra = [s for s in (body.length - 2, body.length - 1) if s > 0 and rng.random() < 0.4]
        for steps in [*extra, body.length]:
            count[0] += 1
            out.append(saved(trial, uid(trial, count[0]), steps, attempt, worker))
            if rng.random() < 0.5:
                out.append(validated(trial, steps, rng.random(), attempt, worker))
    out.append(body)
    trials = [t for t in run.trials.values() if t.attempt > 0]  # (queued once at least)
    ended = [t for t in trials if t.state in ("COMPLETED", "CANCELED", "ERRORED")]
    roll = rng.random()
    if ended and roll < 0.05:
        late = rng.choice(ended)
        count[0] += 1
        out.append(saved(late.trial_id, uid(late.trial_id, count[0]), 99, late.attempt, "w"))
    elif roll < 0.07 and trials:
        some = rng.choice(trials)
        out.append(saved(some.trial_id, WARM, some.latest_steps + 1, some.attempt, "w"))
    elif roll < 0.09:
        kill = rng.choice([*trials, None])
        out.append(ControlTrial(experiment_id=EXP, trial_id=kill.trial_id if kill else 999))
    elif roll < 0.10:
        out.append(ControlExperiment(experiment_id=EXP, action="pause"))
    elif roll < 0.15 and run.state == "PAUSED":
        out.append(ControlExperiment(experiment_id=EXP, action="activate"))
    return out


@pytest.mark.parametrize("searcher", list(SETTLED_SEARCHERS))
@pytest.mark.parametrize("policy", [(0, 1, 1), (0, 0, 0), (0, 2, 0), (0, 0, 2), (2, 1, 1)], ids=str)
def test_skipping_settled_trials_decides_as_deciding_every_trial(
    searcher: str, policy: tuple[int, int, int]
) -> None:
    """Step by step, the same deletions and the same state as a run that decides every
    final trial at every collection: a settled trial has nothing more to give. Now and
    then the run is restored from its own snapshot (its derived sets start afresh)."""
    config = make_config(
        SETTLED_SEARCHERS[searcher],
        entrypoint="python3 train.py",
        checkpoint_storage=_storage(*policy),
    )
    collected = 0
    for seed in range(4):
        collected += _compare_collections(config, Random(seed))
    assert collected > 0  # the comparison saw deletions, not only empty decisions


def _compare_collections(config: ExperimentConfig, rng: Random) -> int:
    fast = ExperimentRun(EXP, Experiment(config), context_hash="0" * 64, checkpoint_root=ROOT)
    every = _EveryTrialEveryTime(
        EXP, Experiment(config), context_hash="0" * 64, checkpoint_root=ROOT
    )
    assert deletions(fast.start()) == deletions(every.start())
    count, collected = [0], 0
    for _ in range(3000):
        body = scripted_event(fast, rng, p_error=0.05, p_preempt=0.05)
        if body is None or fast.state not in ("ACTIVE", "PAUSED"):
            break
        if rng.random() < 0.02:
            fast.restore(fast.snapshot())
        for each in _around(fast, body, rng, count):
            ours, theirs = deletions(fast.on_event(each)), deletions(every.on_event(each))
            assert ours == theirs
            collected += len(ours)
            assert fast.snapshot() == every.snapshot()
    kill = ControlExperiment(experiment_id=EXP, action="kill")
    assert deletions(fast.on_event(kill)) == deletions(every.on_event(kill))
    assert fast.snapshot() == every.snapshot()
    return collected


def test_an_input_naming_a_trial_that_does_not_exist_leaves_collection_alone() -> None:
    """A user's kill of trial 99, which does not exist, is ignored; the experiment still
    ends and collects (an unknown id among the trials to decide made it raise)."""
    run = make_run(SINGLE, checkpoint_storage=_storage(0, 0, 1))
    run.start()
    feed(run, one_trial(1, [(10, 0.3), (20, 0.6)]))
    step = run.on_event(ControlTrial(experiment_id=EXP, trial_id=99))
    assert step.ignored is not None
    assert "99" in step.ignored
    feed(run, [completed(1, 30, 0.9)])
    assert feed(run, [exited(1, ExitReason.COMPLETED)]) == [uid(1, 0)]
    assert run.state == "COMPLETED"
