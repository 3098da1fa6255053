"""Shared helpers for the search-core tests: configs in one line, and event drivers."""

from __future__ import annotations

import json
from collections.abc import Callable
from random import Random
from typing import Any

import yaml

from rung.broker.schemas.envelope import Body
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.eventlog import CreatedRecord, InputRecord, Record
from rung.searcher.events import (
    ExitedReason,
    SearchEvent,
    Start,
    TrialClosed,
    TrialExitedEarly,
    ValidationCompleted,
)
from rung.searcher.experiment import Decision, Experiment
from rung.searcher.methods import RULES
from rung.searcher.ops import Close, Create, Operation, ValidateAfter
from rung.searcher.testing import scripted_event
from rung.searcher.trials import ExperimentRun, Step


def make_config(
    searcher: dict[str, Any] | str,
    hps: dict[str, Any] | str | None = None,
    seed: int | None = 1,
    **extra: Any,
) -> ExperimentConfig:
    raw: dict[str, Any] = {
        "searcher": yaml.safe_load(searcher) if isinstance(searcher, str) else searcher,
        "hyperparameters": (yaml.safe_load(hps) if isinstance(hps, str) else hps)
        or {"x": {"type": "double", "minval": 0, "maxval": 1}},
        **extra,
    }
    raw["searcher"].setdefault("metric", "loss")
    config = parse_config(raw).config
    return config.with_seed(seed) if seed is not None else config


def pbt_searcher(
    population: int = 4,
    rounds: int = 3,
    per_round: int = 10,
    truncate: float | None = 0.25,
    resample: float = 0.2,
    **extra: Any,
) -> dict[str, Any]:
    """A ``pbt`` searcher section (``truncate`` None: no replace_function)."""
    searcher: dict[str, Any] = {
        "name": "pbt",
        "population_size": population,
        "num_rounds": rounds,
        "length_per_round": per_round,
        "explore_function": {"resample_probability": resample, "perturb_factor": 0.2},
        **extra,
    }
    if truncate is not None:
        searcher["replace_function"] = {"truncate_fraction": truncate}
    return searcher


def dump(ops: tuple[Operation, ...] | list[Operation]) -> str:
    return json.dumps([op.model_dump(mode="json") for op in ops], sort_keys=True)


def creates(ops: tuple[Operation, ...] | list[Operation]) -> list[Create]:
    return [op for op in ops if isinstance(op, Create)]


def validates(ops: tuple[Operation, ...] | list[Operation]) -> list[ValidateAfter]:
    return [op for op in ops if isinstance(op, ValidateAfter)]


def closes(ops: tuple[Operation, ...] | list[Operation]) -> list[Close]:
    return [op for op in ops if isinstance(op, Close)]


def holding(experiment: Experiment) -> int:
    return sum(t.holds_op for t in experiment.trials.values())


MetricFn = Callable[[dict[str, Any], int], float]


class Driver:
    """Feeds an experiment the events a well-behaved cluster would send.

    ``rng`` picks which trial reports next, so the same test can explore many orders.
    Each trial's fate (errors, invalid hyperparameters, cancels) is drawn from it too.
    """

    def __init__(
        self,
        experiment: Experiment,
        rng: Random,
        metric: MetricFn | None = None,
        p_error: float = 0.0,
        p_invalid: float = 0.0,
        p_cancel: float = 0.0,
        p_duplicate: float = 0.0,
    ) -> None:
        self.experiment = experiment
        self.rng = rng
        self.metric = metric or (lambda _h, _length: rng.random())
        self.p_error, self.p_invalid, self.p_cancel = p_error, p_invalid, p_cancel
        self.p_duplicate = p_duplicate
        self.sent: list[SearchEvent] = []
        self.decisions: list[Decision] = []
        self.on_step: Callable[[SearchEvent, Decision], None] | None = None

    def send(self, event: SearchEvent) -> Decision:
        decision = self.experiment.apply(event)
        self.sent.append(event)
        self.decisions.append(decision)
        if self.on_step is not None:
            self.on_step(event, decision)
        return decision

    def candidates(self) -> list[SearchEvent]:
        out: list[SearchEvent] = []
        for trial in self.experiment.trials.values():
            if trial.terminal:
                continue
            if trial.holds_op and trial.op is not None:
                out.append(self._outcome(trial.request_id, trial.op.length, trial.hparams))
            elif trial.closing and trial.op_done:
                out.append(TrialClosed(request_id=trial.request_id))
        return out

    def _outcome(self, request_id: str, length: int, hparams: dict[str, Any]) -> SearchEvent:
        roll = self.rng.random()
        for p, reason in (
            (self.p_error, ExitedReason.ERRORED),
            (self.p_invalid, ExitedReason.INVALID_HP),
            (self.p_cancel, ExitedReason.USER_CANCELED),
        ):
            if roll < p:
                return TrialExitedEarly(request_id=request_id, reason=reason)
            roll -= p
        return ValidationCompleted(
            request_id=request_id, length=length, metric=self.metric(hparams, length)
        )

    def run(self, max_steps: int = 100_000) -> None:
        if not self.experiment.state.started:
            self.send(Start())
        for _ in range(max_steps):
            if self.experiment.is_shut_down:
                return
            if self.sent and self.rng.random() < self.p_duplicate:
                self.send(self.rng.choice(self.sent))
                continue
            options = self.candidates()
            if not options:
                return
            self.send(self.rng.choice(options))
        raise AssertionError(f"the search did not finish in {max_steps} steps")


def created_record(run: ExperimentRun) -> CreatedRecord:
    """The first record of ``run``'s event log."""
    return CreatedRecord(
        seq=1,
        experiment_id=run.experiment_id,
        config=run.experiment.config.model_dump(mode="json", by_alias=True),
        context_hash=run.context_hash,
        checkpoint_root=run.checkpoint_root,
        start_secret=run.start_secret,
        rules=RULES,
    )


def live_log(config: ExperimentConfig, order: int) -> tuple[ExperimentRun, list[Record]]:
    """A run of ``config`` driven by scripted cluster events (seeded by ``order``), and the
    event log the searcher would have written for it."""
    run = ExperimentRun("exp", Experiment(config), context_hash="0" * 64, checkpoint_root="/c")
    records: list[Record] = [created_record(run)]

    def record(message_id: str, body: Body | None, step: Step) -> None:
        records.append(InputRecord.of(len(records) + 1, message_id, body, step))

    record("start", None, run.start())
    rng = Random(order)
    for index in range(3000):
        if run.state != "ACTIVE":
            break
        body = scripted_event(run, rng, p_error=0.05, p_preempt=0.03)
        if body is None:
            break
        record(f"m{index}", body, run.on_event(body))
    return run, records
