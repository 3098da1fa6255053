"""The worker registry: bounded (silent workers expire, a flood of ids is capped, each
entry is cut to size), and the reasons trials wait for a worker that can fit them."""

from __future__ import annotations

import time

import pytest

from rung.broker.schemas import WorkerHeartbeat
from rung.searcher.config import parse_config
from rung.searcher.experiment import Experiment
from rung.searcher.service.summary import summarise
from rung.searcher.service.workers import (
    MAX_WORKER_INFO_BYTES,
    MAX_WORKERS_TRACKED,
    WorkerRegistry,
    waiting_reasons,
)
from rung.searcher.trials import ExperimentRun

EID = "0123456789abcdef"


def new_run(slots: int = 1) -> ExperimentRun:
    """A random search of 3 trials, started: its trials are queued."""
    config = parse_config(
        {
            "entrypoint": "python3 train.py",
            "searcher": {"name": "random", "metric": "loss", "max_length": 4, "max_trials": 3},
            "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
            "resources": {"slots_per_trial": slots},
        }
    ).config.with_seed(7)
    run = ExperimentRun(EID, Experiment(config), context_hash="0" * 64, checkpoint_root="/ck")
    run.start()
    return run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    return clock


def beat(worker_id: str, slots: int = 1, **extra: object) -> WorkerHeartbeat:
    return WorkerHeartbeat(worker_id=worker_id, slots=slots, free_slots=slots, **extra)


def test_a_worker_silent_past_the_bound_is_forgotten(clock: Clock) -> None:
    registry = WorkerRegistry(timeout_s=30)
    assert registry.forget_after_s == 3600  # at least an hour
    assert WorkerRegistry(timeout_s=600).forget_after_s == 6000  # ten loss timeouts
    registry.beat(beat("old"))
    clock.now += 1800
    registry.beat(beat("new"))
    assert [w.worker_id for w in registry.infos()] == ["new", "old"]
    assert next(w for w in registry.infos() if w.worker_id == "old").lost
    clock.now += 1801  # "old" silent 3601 s, "new" 1801 s
    assert [w.worker_id for w in registry.infos()] == ["new"]
    assert len(registry) == 1
    # A forgotten worker that comes back is simply heard again.
    registry.beat(beat("old"))
    assert sorted(w.worker_id for w in registry.infos()) == ["new", "old"]


def test_a_flood_of_made_up_worker_ids_is_capped_longest_silent_first(clock: Clock) -> None:
    registry = WorkerRegistry(timeout_s=30, max_workers=100)
    registry.beat(beat("real", 4))
    for i in range(1000):
        clock.now += 0.001
        registry.beat(beat(f"rung-worker.flood-{i}"))
    assert len(registry) == 100
    assert len(registry.infos()) == 100
    assert "real" not in {w.worker_id for w in registry.infos()}
    assert "rung-worker.flood-999" in {w.worker_id for w in registry.infos()}
    assert MAX_WORKERS_TRACKED * MAX_WORKER_INFO_BYTES <= 4 * 1024 * 1024


def test_a_worker_that_runs_trials_is_never_dropped_to_make_room(clock: Clock) -> None:
    """Else a flood of new ids could keep a dead worker from ever being declared lost."""
    run = new_run()
    trial = next(iter(run.trials.values()))
    trial.state, trial.worker_id = "RUNNING", "busy"
    registry = WorkerRegistry(timeout_s=30, max_workers=10)
    registry.beat(beat("busy"))
    assert registry.lost([run]) == []
    for i in range(100):
        registry.beat(beat(f"flood-{i}"))
    assert "busy" in {w.worker_id for w in registry.infos()}
    clock.now += 31
    assert [lost.body.worker_id for lost in registry.lost([run])] == ["busy"]


def test_a_heartbeat_is_cut_to_its_bound_and_an_absurd_id_is_ignored(clock: Clock) -> None:
    registry = WorkerRegistry(timeout_s=30)
    registry.beat(beat("w", running=[f"e/{i}/1" for i in range(10_000)], gpus=["g"] * 500))
    (info,) = registry.infos()
    assert len(info.model_dump_json()) <= MAX_WORKER_INFO_BYTES + 100  # beside last_seen_s
    assert info.running[-1].startswith("... ")
    assert info.running[-1].endswith(" more")
    registry.beat(beat("x" * MAX_WORKER_INFO_BYTES))
    assert [w.worker_id for w in registry.infos()] == ["w"]


# ---------------------------------------------------------------- waiting reasons


def queued_run(slots: int) -> ExperimentRun:
    run = new_run(slots)
    assert {t.state for t in run.trials.values()} == {"QUEUED"}
    return run


def test_trials_too_large_for_every_live_worker_wait_with_a_reason() -> None:
    run = queued_run(8)
    ids = sorted(t.trial_id for t in run.trials.values())
    reasons = waiting_reasons(run, [beat("a", 4), beat("b", 2)])
    assert len(reasons) == 1
    assert reasons[0].startswith(f"trial{'s' if len(ids) > 1 else ''} {ids[0]}")
    assert "8 slots; the largest worker has 4 (2 workers)" in reasons[0]
    assert waiting_reasons(run, [beat("a", 8)]) == []
    assert "no worker is live" in waiting_reasons(run, [])[0]


def test_a_trial_waits_for_a_worker_that_holds_its_whole_bucket() -> None:
    """12 slots go to the 16-slot bucket: a 12-slot worker never takes it."""
    run = queued_run(12)
    (reason,) = waiting_reasons(run, [beat("a", 12)])
    assert "12 slots (a worker of at least 16" in reason
    assert "the largest worker has 12 (1 worker)" in reason


def test_nothing_waits_when_no_trial_is_queued_or_the_experiment_is_not_active() -> None:
    run = queued_run(8)
    run.state = "PAUSED"
    assert waiting_reasons(run, [beat("a", 1)]) == []
    run.state = "ACTIVE"
    for trial in run.trials.values():
        trial.state = "RUNNING"
    assert waiting_reasons(run, [beat("a", 1)]) == []


def test_the_summary_carries_the_reasons_given_the_registry(clock: Clock) -> None:
    run = queued_run(4)
    registry = WorkerRegistry(timeout_s=30)
    registry.beat(beat("small", 2))
    summary = summarise(run, "log", workers=registry)
    assert len(summary.waiting) == 1
    assert "the largest worker has 2 (1 worker)" in summary.waiting[0]
    assert summarise(run, "log").waiting == []
    # A lost worker is not counted.
    clock.now += 31
    assert "no worker is live" in summarise(run, "log", workers=registry).waiting[0]
