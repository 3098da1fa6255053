"""A population-based training run and its event log, with a story the tests know.

Four trials train 10 steps a round. A trial's metric is ``1 / (trial id * length)``
(smaller is better), so the newest trial is always the best: each round the worst trial
is replaced by a clone of the best, and the clones form one line, trial 4 -> 5 -> 6 (with
three rounds). In the first round trial 4 (the best) reports its result before its
checkpoint, so the round waits for that checkpoint, and says so in a note; the
clone is decided when the checkpoint comes.
"""

from __future__ import annotations

import uuid

from rung.broker.schemas import CheckpointSaved, ExitReason, OpCompleted, TrialExited, TrialStarted
from rung.broker.schemas.envelope import Body
from rung.searcher.eventlog import InputRecord, Record
from rung.searcher.experiment import Experiment
from rung.searcher.trials import ExperimentRun, Step, TrialRuntime

from .helpers import created_record, make_config

EXP = "exp-pbt"
HPS = {
    "lr": {"type": "log", "minval": -4, "maxval": 0, "base": 10},
    "width": {"type": "int", "minval": 1, "maxval": 64},
}


def checkpoint(trial_id: int, steps: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{trial_id}/{steps}"))


def metric(trial_id: int, length: int) -> float:
    return 1.0 / (trial_id * length)


def _event(run: ExperimentRun, trial: TrialRuntime, *, late: int | None) -> Body | None:
    key = {
        "experiment_id": EXP,
        "trial_id": trial.trial_id,
        "attempt": trial.attempt,
        "worker_id": "w1",
    }
    if trial.state == "QUEUED":
        return TrialStarted(**key, slots=1)
    if trial.state != "RUNNING":
        return None
    if trial.stopping is not None:
        reason = ExitReason.COMPLETED if trial.stopping == "close" else ExitReason.OUT_OF_OPS
        return TrialExited(**key, reason=reason)
    if trial.waiting or not trial.target:
        return None
    if trial.latest_steps < trial.target and trial.trial_id != late:
        return CheckpointSaved(
            **key,
            uuid=checkpoint(trial.trial_id, trial.target),
            steps_completed=trial.target,
            metadata={},
            size_bytes=1,
        )
    length = trial.target
    return OpCompleted(**key, length=length, metric=metric(trial.trial_id, length))


def pbt_log(rounds: int = 3, *, late: bool = True) -> tuple[ExperimentRun, list[Record]]:
    """The run (ended) and every record the searcher wrote for it."""
    config = make_config(
        {
            "name": "pbt",
            "population_size": 4,
            "num_rounds": rounds,
            "length_per_round": 10,
            "replace_function": {"truncate_fraction": 0.25},
            "explore_function": {"resample_probability": 0.0, "perturb_factor": 0.2},
        },
        HPS,
        entrypoint="python3 train.py",
    )
    run = ExperimentRun(EXP, Experiment(config), context_hash="0" * 64, checkpoint_root="/c")
    records: list[Record] = [created_record(run)]

    def record(body: Body | None, step: Step) -> None:
        records.append(InputRecord.of(len(records) + 1, f"m{len(records)}", body, step))

    record(None, run.start())
    held = 4 if late else None  # trial 4's first checkpoint comes after its result
    for _ in range(1000):
        if run.state != "ACTIVE":
            break
        body: Body | None = None
        if held is not None and run.by_id[held].trained > 0:
            trial = run.by_id[held]
            held = None
            body = CheckpointSaved(
                experiment_id=EXP,
                trial_id=trial.trial_id,
                attempt=trial.attempt,
                worker_id="w1",
                uuid=checkpoint(trial.trial_id, trial.trained),
                steps_completed=trial.trained,
                metadata={},
                size_bytes=1,
            )
        for trial in run.trials.values():
            body = body or _event(run, trial, late=held)
        if body is None:
            break
        record(body, run.on_event(body))
    assert run.state == "COMPLETED", run.state
    return run, records
