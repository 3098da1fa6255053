"""A synthetic event log of an ASHA search, for the dashboard's scale test and benchmark.

The real experiment and trial lifecycle (the pure core the searcher runs) is driven by
simulated workers in virtual time, and every input is written as the searcher writes it
(:meth:`InputRecord.of`), so the log replays and verifies like a real one. ``workers``
workers each take one trial at a time; training costs ``step_s`` seconds per unit of
length; each segment reports a training and a validation metric and completes its
operation; a trial the searcher stops or pauses exits. The metric is a smooth function of
the hyperparameters that improves with length, plus seeded noise.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rung.broker.schemas import (
    ExitReason,
    MetricsReported,
    OpCompleted,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.config import parse_config
from rung.searcher.eventlog import CreatedRecord, InputRecord, Record
from rung.searcher.experiment import Experiment
from rung.searcher.methods import RULES, build_method
from rung.searcher.trials import ExperimentRun, Step

__all__ = ["config", "make_log", "records"]

T0 = 1_800_000_000.0


def config(trials: int, workers: int) -> dict[str, Any]:
    return {
        "name": f"synthetic-asha-{trials}",
        "labels": ["synthetic", "bench"],
        "entrypoint": "python3 train.py",
        "reproducibility": {"experiment_seed": 7},
        "hyperparameters": {
            "lr": {"type": "log", "base": 10, "minval": -5, "maxval": -1},
            "layers": {"type": "int", "minval": 1, "maxval": 8},
            "dropout": {"type": "double", "minval": 0.0, "maxval": 0.5},
            "optimizer": {"type": "categorical", "vals": ["sgd", "adam", "rmsprop"]},
            "batch": {"type": "categorical", "vals": [32, 64, 128]},
        },
        "searcher": {
            "name": "async_halving",
            "metric": "loss",
            "smaller_is_better": True,
            "max_length": 27,
            "max_trials": trials,
            "num_rungs": 4,
            "divisor": 3,
            "max_concurrent_trials": workers,
        },
    }


def _loss(hparams: dict[str, Any], length: int, noise: float) -> float:
    lr = float(hparams["lr"])
    shape = (math.log10(lr) + 3) ** 2 + 0.05 * (int(hparams["layers"]) - 4) ** 2
    shape += {"sgd": 0.4, "adam": 0.0, "rmsprop": 0.2}.get(str(hparams["optimizer"]), 0.0)
    return round(shape * (1 + 3 / length) + noise, 5)


def records(trials: int, *, workers: int = 8, step_s: float = 0.5) -> Iterator[Record]:  # noqa: PLR0915
    """The log's records, in order."""
    raw = config(trials, workers)
    parsed = parse_config(raw).config
    experiment_id = f"exp-synthetic{trials}"
    run = ExperimentRun(
        experiment_id,
        Experiment(parsed, build_method(parsed)),
        context_hash="0" * 64,
        checkpoint_root="/checkpoints",
    )
    rng = random.Random(11)
    yield CreatedRecord(
        seq=1,
        at=T0,
        experiment_id=experiment_id,
        context_hash="0" * 64,
        checkpoint_root="/checkpoints",
        config=parsed.model_dump(mode="json", by_alias=True, exclude_none=True),
        rules=RULES,
    )
    seq, count = 1, 0
    now = 0.0
    free = [f"w-{i}" for i in range(workers)]
    on: dict[int, str] = {}  # trial -> worker
    busy: list[tuple[float, int, int, Body]] = []  # (when, order, trial, event)
    trained: dict[int, int] = {}
    scheduled: set[int] = set()

    # The trials that may have something to do: those the last inputs' commands named,
    # and those on a worker (looking at every trial each time would be quadratic).
    watch: set[int] = set()

    def record(body: Body | None, step: Step) -> InputRecord:
        nonlocal seq, count
        seq += 1
        count += 1
        watch.update(getattr(c.body, "trial_id", 0) for c in step.commands)
        return InputRecord.of(seq, f"m{count}", body, step, at=T0 + now)

    yield record(None, run.start())
    while True:
        # Start what is queued while workers are free; schedule what is running.
        progressed = False
        for trial_id in sorted(watch | on.keys()):
            trial = run.by_id.get(trial_id)
            if trial is None or trial.state not in ("QUEUED", "RUNNING"):
                watch.discard(trial_id)
                continue
            key = {"experiment_id": experiment_id, "trial_id": trial.trial_id}
            if trial.state == "QUEUED" and free and trial.trial_id not in on:
                worker = free.pop(0)
                on[trial.trial_id] = worker
                body: Body = TrialStarted(**key, attempt=trial.attempt, worker_id=worker, slots=1)
                yield record(body, run.on_event(body))
                progressed = True
            elif (
                trial.state == "RUNNING"
                and trial.trial_id in on
                and trial.trial_id not in scheduled
            ):
                worker, attempt = on[trial.trial_id], trial.attempt
                ident = {**key, "attempt": attempt, "worker_id": worker}
                if trial.stopping is not None:
                    reason = (
                        ExitReason.COMPLETED if trial.stopping == "close" else ExitReason.OUT_OF_OPS
                    )
                    event: Body = TrialExited(**ident, reason=reason)
                    heapq.heappush(busy, (now + 0.05, count, trial.trial_id, event))
                    scheduled.add(trial.trial_id)
                elif not trial.waiting and trial.target:
                    length = trial.target
                    cost = (length - trained.get(trial.trial_id, 0)) * step_s
                    hparams = run.experiment.trials[trial.request_id].hparams
                    value = _loss(hparams, length, rng.gauss(0, 0.02))
                    event = OpCompleted(**ident, length=length, metric=value)
                    heapq.heappush(busy, (now + cost, count, trial.trial_id, event))
                    scheduled.add(trial.trial_id)
        if progressed:
            continue
        if not busy:
            return
        when, _, trial_id, body = heapq.heappop(busy)
        scheduled.discard(trial_id)
        now = max(now, when)
        if isinstance(body, OpCompleted):
            trained[trial_id] = body.length
            ident = body.model_dump(include={"experiment_id", "trial_id", "attempt", "worker_id"})
            for group, name in (("training", "train_loss"), ("validation", "loss")):
                metric = body.metric or 0.0
                value = metric if name == "loss" else round(metric * 0.9, 5)
                report = MetricsReported(
                    **ident, group=group, steps_completed=body.length, metrics={name: value}
                )
                yield record(report, run.on_event(report))
        yield record(body, run.on_event(body))
        if isinstance(body, TrialExited):
            free.append(on.pop(trial_id))


def make_log(path: Path, trials: int, *, workers: int = 8) -> int:
    """Write the log to ``path``; return its number of records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", encoding="utf-8") as handle:
        for item in records(trials, workers=workers):
            handle.write(item.model_dump_json() + "\n")
            written += 1
    return written


if __name__ == "__main__":  # pragma: no cover (a tool)
    import sys

    out = Path(sys.argv[1])
    count = make_log(out, int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
    print(json.dumps({"records": count, "path": str(out)}))
