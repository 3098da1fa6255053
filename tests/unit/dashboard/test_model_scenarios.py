"""Random runs of the real trial lifecycle, with kills, controls, lost workers, errors
and results without a value: after every record, the view's states are the run's."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rung.broker.schemas import (
    ControlExperiment,
    ControlTrial,
    ExitReason,
    OpCompleted,
    TrialExited,
    TrialStarted,
    WorkerLost,
)
from rung.broker.schemas.envelope import Body
from rung.dashboard.model import ExperimentView
from rung.dashboard.pages import Options, experiment_sections
from rung.searcher.config import parse_config
from rung.searcher.eventlog import CreatedRecord, InputRecord, Record
from rung.searcher.experiment import Experiment
from rung.searcher.methods import build_method
from rung.searcher.trials import ExperimentRun, TrialRuntime

T0 = 1_800_000_000.0
WORKERS = ("w-0", "w-1", "w-2")


def config(rng: random.Random) -> dict[str, Any]:
    searcher: dict[str, Any] = {
        "name": "async_halving",
        "metric": "loss",
        "max_length": 9,
        "max_trials": 8,
        "num_rungs": 3,
        "divisor": 3,
        "max_concurrent_trials": 3,
        "stop_once": rng.random() < 0.5,
    }
    if rng.random() < 0.3:
        searcher = {
            "name": "adaptive_asha",
            "metric": "loss",
            "max_length": 9,
            "max_trials": 8,
            "divisor": 3,
            "max_concurrent_trials": 3,
            "max_rungs": 3,
            "mode": "standard",
        }
    return {
        "name": "scenario",
        "entrypoint": "python3 train.py",
        "reproducibility": {"experiment_seed": rng.randrange(1000)},
        "hyperparameters": {"lr": {"type": "double", "minval": 0.0, "maxval": 1.0}},
        "searcher": searcher,
        "max_restarts": 1,
    }


class Driver:
    """A real run, fed by hand; each input written as the searcher writes it."""

    def __init__(self, raw: dict[str, Any], experiment_id: str) -> None:
        parsed = parse_config(raw).config
        self.experiment_id = experiment_id
        self.run = ExperimentRun(
            experiment_id,
            Experiment(parsed, build_method(parsed)),
            context_hash="0" * 64,
            checkpoint_root="/c",
        )
        self.records: list[Record] = [
            CreatedRecord(
                seq=1,
                at=T0,
                experiment_id=experiment_id,
                context_hash="0" * 64,
                checkpoint_root="/c",
                config=parsed.model_dump(mode="json", by_alias=True, exclude_none=True),
            )
        ]
        self.feed(None)

    def feed(self, body: Body | None) -> None:
        seq = len(self.records) + 1
        step = self.run.start() if body is None else self.run.on_event(body)
        self.records.append(InputRecord.of(seq, f"m{seq}", body, step, at=T0 + seq))

    def key(self, trial: TrialRuntime, worker: str | None) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "trial_id": trial.trial_id,
            "attempt": trial.attempt,
            "worker_id": worker or trial.worker_id or "w-0",
        }

    def act(self, rng: random.Random) -> bool:
        """One random thing a worker or a user does; False if nothing could be done."""
        trials = list(self.run.by_id.values())
        queued = [t for t in trials if t.state == "QUEUED"]
        running = [t for t in trials if t.state == "RUNNING"]
        roll = rng.random()
        if queued and roll < 0.35:
            trial = rng.choice(queued)
            token = self.run.start_token(trial.trial_id, trial.attempt)
            worker = rng.choice(WORKERS)
            self.feed(TrialStarted(**self.key(trial, worker), slots=1, start_token=token))
        elif running and roll < 0.75:
            trial = rng.choice(running)
            key = self.key(trial, None)
            if trial.stopping is not None:
                reason = (
                    ExitReason.COMPLETED if trial.stopping == "close" else ExitReason.OUT_OF_OPS
                )
                self.feed(TrialExited(**key, reason=reason))
            elif not trial.waiting and trial.target:
                fault = rng.random()
                if fault < 0.08:
                    self.feed(TrialExited(**key, reason=ExitReason.ERRORED, exit_code=1))
                elif fault < 0.12:
                    self.feed(TrialExited(**key, reason=ExitReason.INVALID_HP))
                else:
                    metric = None if rng.random() < 0.05 else round(rng.random(), 3)
                    self.feed(OpCompleted(**key, length=trial.target, metric=metric))
            else:
                return False
        elif running and roll < 0.8:
            trial = rng.choice(running)
            self.feed(ControlTrial(experiment_id=self.experiment_id, trial_id=trial.trial_id))
        elif roll < 0.83:
            action = rng.choice(["pause", "activate", "cancel", "kill", "activate"])
            self.feed(ControlExperiment(experiment_id=self.experiment_id, action=action))
        elif roll < 0.86:
            worker = rng.choice(WORKERS)
            self.feed(WorkerLost(experiment_id=self.experiment_id, worker_id=worker, silent_s=30))
        else:
            return False
        return True


@pytest.mark.parametrize("seed", range(60))
def test_the_view_follows_the_run_through_faults_and_controls(seed: int) -> None:
    rng = random.Random(seed)
    driver = Driver(config(rng), f"exp-s{seed}")
    created = driver.records[0]
    assert isinstance(created, CreatedRecord)
    view = ExperimentView(created)
    view.apply(driver.records[1])
    for _ in range(150):
        if driver.run.state in ("COMPLETED", "ERROR", "CANCELED"):
            break
        if not driver.act(rng):
            continue
        assert view.apply(driver.records[-1])
        assert view.unexplained is None
        assert view.state == driver.run.state
        for runtime in driver.run.by_id.values():
            trial = view.trials.get(runtime.trial_id)
            if trial is not None:
                assert (trial.state, trial.restarts) == (runtime.state, runtime.restarts), (
                    f"record {len(driver.records)}: trial {runtime.trial_id}"
                )
        # A process the run has given up on is not shown running on two slots at once.
        lanes = [
            lane
            for trial in view.trials.values()
            for attempt in trial.attempts
            if attempt.ended_at is None
            for lane in attempt.lanes
        ]
        assert len(lanes) == len(set(lanes))
    sections = experiment_sections(view, Options())
    assert sections["curves"]
    assert not any(view.apply(record) for record in driver.records)
