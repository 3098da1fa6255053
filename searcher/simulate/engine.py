"""The simulator: the real experiment and search method, with simulated workers.

Time is virtual. A worker that takes a trial's operation trains from the trial's
checkpoint (the length it last validated) to the operation's length, and that costs the
difference in length units. A worker is free again as soon as its operation completes;
operations wait for a free worker first-in, first-out, and simultaneous completions are
handled in the order they started. A paused trial resumes from its checkpoint on
whichever worker is free when it is promoted. Workers are identical and restarts cost
nothing, so which worker continues a trial does not change the result.

Every operation ends with a checkpoint at its length, saved before the validation is
reported. A method that follows checkpoints (population-based training) hears of each
one, and of each trial that pauses; a clone starts at its source checkpoint's length,
and a benchmark with ``evaluate_path`` sees the whole path of hyperparameters that led to
a result (the clone's sources' segments, then its own).
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from rung.searcher.config import ExperimentConfig
from rung.searcher.errors import SimulationError
from rung.searcher.events import (
    SearchEvent,
    Start,
    TrialCheckpointed,
    TrialClosed,
    TrialPaused,
    ValidationCompleted,
)
from rung.searcher.experiment import Experiment
from rung.searcher.methods import SearchMethod
from rung.searcher.ops import Close, Create, Shutdown, ValidateAfter
from rung.searcher.simulate.benchmarks import Benchmark
from rung.searcher.simulate.schedule import Segment

__all__ = ["SimulatedResult", "SimulatedTrial", "SimulationResult", "simulate"]


class SimulatedTrial(BaseModel):
    model_config = ConfigDict(frozen=True)

    trial_id: int
    hparams: dict[str, JsonValue]
    length: int
    metric: float | None


class SimulatedResult(BaseModel):
    """One operation's end: the trial's metric at ``length``, after ``epochs`` in all.

    ``epochs`` counts an operation's length when it starts (with 8 workers, up to 7
    operations' worth ahead of what has been trained); ``trained`` only what has been
    trained by then: ``epochs`` less what the operations under way have still to train.
    A budget of GPU time compares with ``trained``."""

    model_config = ConfigDict(frozen=True)

    epochs: int
    trial_id: int
    length: int
    metric: float
    trained: int


class SimulationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    # BUDGET_SPENT: stopped by the budget before the search ended by itself.
    state: Literal["COMPLETED", "ERROR", "CANCELED", "BUDGET_SPENT"]
    best_metric: float | None
    best_hparams: dict[str, JsonValue] | None
    best_trial_id: int | None
    regret: float | None
    trials: int
    total_length: int
    sim_time: float
    utilization: float
    workers: int
    decisions: int
    trial_details: list[SimulatedTrial]
    # Every operation's result in the order they finished (for regret against budget).
    history: list[SimulatedResult] = []


@dataclass(order=True)
class _Run:
    finish: float
    seq: int
    request_id: str
    length: int


class _Simulation:
    def __init__(
        self, experiment: Experiment, benchmark: Benchmark, workers: int, budget: int | None
    ) -> None:
        self.experiment = experiment
        self.budget = budget
        self.history: list[SimulatedResult] = []
        self.benchmark = benchmark
        self.workers = workers
        self.free = workers
        self.now = 0.0
        self.seq = 0
        self.busy = 0.0
        self.total_length = 0
        self.decisions = 0
        self.ready: deque[str] = deque()
        self.running: list[_Run] = []
        self.events: deque[SearchEvent] = deque([Start()])
        self.follows = experiment.method.follows_checkpoints
        # Each trial's path: the segments trained, with their hyperparameters (a clone's
        # starts with its source's, up to the checkpoint it continues from).
        self.paths: dict[str, list[Segment]] = {}
        self.trained: dict[str, int] = {}

    def _feed(self, event: SearchEvent) -> None:
        decision = self.experiment.apply(event)
        self.decisions += 1
        for op in decision.ops:
            if isinstance(op, Create):
                self._created(op)
            elif isinstance(op, ValidateAfter):
                self.ready.append(op.request_id)
            elif isinstance(op, Close):
                self._close_if_idle(op.request_id)
            elif isinstance(op, Shutdown):
                return
        if isinstance(event, ValidationCompleted):
            self._close_if_idle(event.request_id)
            record = self.experiment.trials[event.request_id]
            if self.follows and record.paused:
                self.events.append(TrialPaused(request_id=event.request_id))

    def _created(self, op: Create) -> None:
        path: list[Segment] = []
        start = 0
        if op.clone is not None:
            start = op.clone.length
            path = [
                (hparams, low, min(high, start))
                for hparams, low, high in self.paths.get(op.clone.source, [])
                if low < start
            ]
        self.paths[op.request_id] = path
        self.trained[op.request_id] = start

    def _evaluate(self, request_id: str, length: int) -> float:
        """The metric at ``length``, after the trial's path has been trained to it."""
        start = self.trained.get(request_id, 0)
        hparams = self.experiment.trials[request_id].hparams
        path = self.paths.setdefault(request_id, [])
        path.append((hparams, start, length))
        self.trained[request_id] = length
        evaluate_path = getattr(self.benchmark, "evaluate_path", None)
        if evaluate_path is not None:
            return float(evaluate_path(path))
        return self.benchmark.evaluate(hparams, length)

    def _close_if_idle(self, request_id: str) -> None:
        record = self.experiment.trials[request_id]
        if record.closing and record.op_done and not record.terminal:
            self.events.append(TrialClosed(request_id=request_id))

    def _dispatch(self) -> None:
        trials = self.experiment.trials
        while self.ready and self.free and not self.spent:
            record = trials[self.ready.popleft()]
            if record.op is None or record.terminal:
                continue
            self.free -= 1
            cost = record.op.length - max(record.trained, self.trained.get(record.request_id, 0))
            self.busy += cost
            self.total_length += cost
            self.seq += 1
            heapq.heappush(
                self.running, _Run(self.now + cost, self.seq, record.request_id, record.op.length)
            )

    @property
    def spent(self) -> bool:
        return self.budget is not None and self.total_length >= self.budget

    def run(self) -> None:
        while True:
            while self.events:
                self._feed(self.events.popleft())
            if self.experiment.is_shut_down:
                return
            self._dispatch()
            if not self.running:
                if self.events:
                    continue
                if self.spent:
                    return
                raise SimulationError(
                    "the search stalled: no trial is training and the experiment has not "
                    "shut down; this is a bug in the search method"
                )
            run = heapq.heappop(self.running)
            self.now = run.finish
            self.free += 1
            ahead = sum(other.finish - self.now for other in self.running)
            metric = self._evaluate(run.request_id, run.length)
            if self.follows:
                name = f"rung-simulated/{run.request_id}/{run.length}"
                self.events.append(
                    TrialCheckpointed(
                        request_id=run.request_id,
                        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                        steps=run.length,
                    )
                )
            trial_id = self.experiment.trials[run.request_id].trial_id
            self.history.append(
                SimulatedResult(
                    epochs=self.total_length,
                    trial_id=trial_id,
                    length=run.length,
                    metric=metric,
                    trained=self.total_length - round(ahead),
                )
            )
            self.events.append(
                ValidationCompleted(request_id=run.request_id, length=run.length, metric=metric)
            )


def simulate(
    config: ExperimentConfig,
    benchmark: Benchmark,
    workers: int = 4,
    method: SearchMethod[Any] | None = None,
    budget: int | None = None,
) -> SimulationResult:
    """Run the search against ``benchmark`` on ``workers`` simulated workers.

    It runs to its end, or, with a ``budget``, until that many units of length have been
    trained in all (operations under way then still finish).
    """
    if workers < 1:
        raise SimulationError(f"--workers must be at least 1, got {workers}")
    limit = benchmark.max_length
    max_length = getattr(config.searcher, "max_length", None)
    if limit is not None and max_length is not None and max_length.units > limit:
        raise SimulationError(
            f"benchmark {benchmark.name} is defined up to length {limit}, but "
            f"searcher.max_length is {max_length.units}; set max_length to at most {limit}"
        )
    if config.experiment_seed is None:
        config = config.with_seed(0)
    if budget is not None and budget < 1:
        raise SimulationError(f"the budget must be at least 1 unit of length, got {budget}")
    sim = _Simulation(Experiment(config, method), benchmark, workers, budget)
    sim.run()
    return _summarise(sim)


def _summarise(sim: _Simulation) -> SimulationResult:
    experiment = sim.experiment
    details = [
        SimulatedTrial(trial_id=t.trial_id, hparams=t.hparams, length=t.trained, metric=t.metric)
        for t in experiment.trials.values()
    ]
    best = experiment.best_trial()
    shutdown = experiment.state.shutdown
    state: Literal["COMPLETED", "ERROR", "CANCELED", "BUDGET_SPENT"] = "COMPLETED"
    if shutdown is not None and shutdown.failure:
        state = "ERROR"
    elif shutdown is not None and shutdown.cancel:
        state = "CANCELED"
    elif shutdown is None and sim.spent:
        state = "BUDGET_SPENT"
    optimum = sim.benchmark.optimum
    regret = None
    if best is not None and best.metric is not None and optimum is not None:
        regret = best.metric - optimum
    return SimulationResult(
        state=state,
        best_metric=best.metric if best else None,
        best_hparams=best.hparams if best else None,
        best_trial_id=best.trial_id if best else None,
        regret=regret,
        trials=len(details),
        total_length=sim.total_length,
        sim_time=sim.now,
        utilization=sim.busy / (sim.workers * sim.now) if sim.now > 0 else 0.0,
        workers=sim.workers,
        decisions=sim.decisions,
        trial_details=details,
        history=sim.history,
    )
