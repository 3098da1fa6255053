"""The dashboard's view of one experiment: a fold over its event log.

:class:`ExperimentView` takes the experiment's records in order (``apply``) and keeps
what the pages draw: each trial's attempts and where they ran, its results and metric
curves, its checkpoints, the searcher's decisions about it with their reasons, the best
result so far against length trained and against time, and the search method's own
state (the rungs), by folding the same pure core the searcher runs
(:func:`rung.searcher.eventlog.replay.fold`). Folding records it has seen is a no-op, so
a view fed from the history and then from a live stream that overlaps it stays exact.

It is pure: no I/O, no clock. Times come from the records' ``at``. Where the search
cannot be rebuilt (a custom search method whose module is not at hand, or a fold that
raises), the view goes on with what the records say, without the searcher's reasons and
rungs, and says why in :attr:`ExperimentView.unexplained`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import JsonValue

from rung.broker.schemas import (
    CheckpointSaved,
    ControlTrial,
    ExitReason,
    MetricsReported,
    OpCompleted,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.commands import RunTrial
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.eventlog import CreatedRecord, FailedRecord, InputRecord, Record
from rung.searcher.eventlog.explain import (
    NOISE,
    asha_brackets,
    decisions,
    describe_input,
    quota,
)
from rung.searcher.eventlog.replay import build_run, describe_error, fold
from rung.searcher.methods import AdaptiveASHA
from rung.searcher.trials import ExperimentRun, Step

__all__ = [
    "Attempt",
    "Checkpoint",
    "ExperimentView",
    "Piece",
    "Result",
    "RungPoint",
    "RungState",
    "TrialView",
]

# How many timeline entries (decisions) the view keeps for the activity feed.
ACTIVITY: Final = 2000
# How many decisions each trial keeps (its page shows them).
TRIAL_DECISIONS: Final = 200
# Decisions that are not a reason for a rung's outcome (the trial page still lists them).
_NOT_A_REASON: Final = (
    " created: ",
    " hyperparameters ",
    "-> work queue: run trial",
    " continues to length ",
)
_OUTCOME: Final = {
    ExitReason.COMPLETED: "completed",
    ExitReason.OUT_OF_OPS: "paused",
    ExitReason.PREEMPTED: "preempted",
    ExitReason.ERRORED: "errored",
    ExitReason.INVALID_HP: "errored",
    ExitReason.USER_REQUESTED_STOP: "stopped",
}


@dataclass(frozen=True)
class Result:
    """A validation the searcher took: the trial's metric at ``length`` (in the user's
    sign), at time ``at`` (seconds since the experiment started)."""

    trial_id: int
    length: int
    value: float
    at: float
    seq: int
    trained: int  # length trained by every trial when this result came


@dataclass
class Piece:
    """A stretch of an attempt on its slot: from its start or its last validation to its
    next validation or its exit."""

    start: float
    end: float | None = None
    length: int | None = None  # the length validated at its end
    outcome: str = "running"


@dataclass
class Attempt:
    attempt: int
    worker_id: str
    lane: str
    slots: int
    gpus: list[str]
    started_at: float
    ended_at: float | None = None
    reason: str | None = None
    exit_code: int | None = None
    message: str = ""
    pieces: list[Piece] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpoint:
    uuid: str
    attempt: int
    steps_completed: int
    size_bytes: int
    at: float


@dataclass
class TrialView:
    trial_id: int
    request_id: str
    hparams: dict[str, JsonValue]
    created_at: float
    state: str = "PENDING"
    bracket: int = 0
    restarts: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    # (group, metric name) -> [(steps_completed, value)], finite numbers only.
    curves: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # (seq, seconds since the start, text): the searcher's decisions about this trial.
    decisions: deque[tuple[int, float, str]] = field(
        default_factory=lambda: deque(maxlen=TRIAL_DECISIONS)
    )
    # Rung index -> the decisions taken while its newest result was at that rung.
    reasons: dict[int, list[str]] = field(default_factory=dict)

    @property
    def latest(self) -> Result | None:
        return self.results[-1] if self.results else None

    @property
    def length(self) -> int:
        return self.results[-1].length if self.results else 0


@dataclass(frozen=True)
class RungPoint:
    trial_id: int
    value: float  # in the user's sign
    rank: int  # 1 = best
    outcome: str  # promoted, completed, paused, stopped, waiting


@dataclass(frozen=True)
class RungState:
    """One rung of one bracket, as the search method has it now."""

    bracket: int
    rung: int
    length: int
    points: list[RungPoint]
    quota: int
    cutoff: float | None  # the quota-th best value (user's sign); None when quota is 0
    training: int


class ExperimentView:
    """Everything the pages show about one experiment, folded from its records."""

    def __init__(self, created: CreatedRecord, *, context_root: Path | None = None) -> None:
        self.created = created
        self.experiment_id = created.experiment_id
        self.config: ExperimentConfig = parse_config(created.config).config
        searcher = self.config.searcher
        self.metric: str = str(getattr(searcher, "metric", ""))
        self.smaller_is_better: bool = bool(getattr(searcher, "smaller_is_better", True))
        self.max_length: int | None = _units(getattr(searcher, "max_length", None))
        self.seq = created.seq
        self.started_at = created.at
        self.last_at = created.at
        self.state = "ACTIVE"
        self.progress = 0.0
        self.trials: dict[int, TrialView] = {}
        self.results: list[Result] = []
        self.best: list[Result] = []  # each result that improved on every earlier one
        self.trained = 0
        self.activity: deque[dict[str, Any]] = deque(maxlen=ACTIVITY)
        self.failure: str | None = None
        self.unexplained: str | None = None
        self._by_request: dict[str, int] = {}
        self._busy: dict[str, set[int]] = {}  # worker -> slot lanes in use
        self.run: ExperimentRun | None = None
        try:
            self.run = build_run(created, context_root)
        except Exception as exc:  # noqa: BLE001 (a custom method that cannot load)
            self.unexplained = (
                f"the search method could not be rebuilt ({describe_error(exc)}); "
                "reasons and rungs are not shown"
            )

    # ------------------------------------------------------------------ folding
    def apply(self, record: Record) -> bool:
        """Fold one record; False (and nothing changes) if it was folded before."""
        if record.seq <= self.seq:
            return False
        self.seq = record.seq
        self.last_at = max(self.last_at, record.at)
        if isinstance(record, FailedRecord):
            self.failure = record.error
            if self.run is not None:
                self.run.fail(record.error)
                self.state = self.run.state
            return True
        if not isinstance(record, InputRecord):
            return True  # snapshots and owner records change nothing shown
        step = self._fold(record)
        self._take(record, step)
        if self.run is not None:
            self.state = self.run.state
            self.progress = self.run.experiment.progress()
            for trial_id in self._touched(record):
                runtime = self.run.by_id.get(trial_id)
                trial = self.trials.get(trial_id)
                if runtime is not None and trial is not None:
                    trial.state, trial.restarts = runtime.state, runtime.restarts
        return True

    def _touched(self, record: InputRecord) -> set[int]:
        """The trials whose state the record may have changed: the input's, and those
        of its operations and commands (every trial, when the experiment ended)."""
        if self.run is not None and self.run.state in ("COMPLETED", "ERROR", "CANCELED"):
            return set(self.trials)
        touched = {getattr(record.input, "trial_id", None)}
        touched.update(getattr(c.body, "trial_id", None) for c in record.commands)
        touched.update(self._by_request.get(getattr(op, "request_id", "")) for op in record.ops)
        return {t for t in touched if isinstance(t, int)}

    def _fold(self, record: InputRecord) -> Step | None:
        run = self.run
        if run is None:
            return None
        try:
            step = fold(run, record)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 (the search's own failure)
            self.run = None
            self.unexplained = (
                f"folding record {record.seq} raised ({describe_error(exc)}); the view "
                "goes on from the records alone"
            )
            return None
        if record.failed is not None:
            self.failure = record.failed
        return step

    def _at(self, record: Record) -> float:
        return max(0.0, record.at - self.started_at)

    def _take(self, record: InputRecord, step: Step | None) -> None:
        at = self._at(record)
        for command in record.commands:
            body = command.body
            if isinstance(body, RunTrial) and body.trial_id not in self.trials:
                self._new_trial(body, at)
        if record.ignored is None:
            self._input(record, at)
        if step is not None and self.run is not None:
            self._explain(record, step, at)
        elif record.ignored is None and record.input is None:
            self.activity.append({"seq": record.seq, "at": at, "event": "started", "decisions": []})

    def _new_trial(self, body: RunTrial, at: float) -> None:
        hparams: dict[str, JsonValue] = dict(body.hparams)
        trial = TrialView(body.trial_id, body.request_id, hparams, created_at=at)
        method = self.run.experiment.method if self.run is not None else None
        if isinstance(method, AdaptiveASHA):
            trial.bracket = method.state.trial_brackets.get(body.request_id, 0)
        self.trials[body.trial_id] = trial
        self._by_request[body.request_id] = body.trial_id

    def _input(self, record: InputRecord, at: float) -> None:
        body = record.input
        trial = self.trials.get(getattr(body, "trial_id", -1))
        if trial is None:
            return
        match body:
            case TrialStarted():
                self._started(trial, body, at)
            case MetricsReported():
                for name, value in body.metrics.items():
                    number = _finite(value)
                    if number is not None:
                        curve = trial.curves.setdefault((body.group, name), [])
                        curve.append((body.steps_completed, number))
            case OpCompleted():
                self._result(trial, body, at, record.seq)
            case CheckpointSaved():
                trial.checkpoints.append(
                    Checkpoint(body.uuid, body.attempt, body.steps_completed, body.size_bytes, at)
                )
            case TrialExited():
                self._exited(trial, body, at)
            case ControlTrial():
                pass

    def _started(self, trial: TrialView, body: TrialStarted, at: float) -> None:
        if any(a.attempt == body.attempt for a in trial.attempts):
            return  # a second process of the attempt: the run stops it
        if body.gpus:
            lane = f"{body.worker_id}/gpu {','.join(body.gpus)}"
            slot = -1
        else:
            busy = self._busy.setdefault(body.worker_id, set())
            slot = next(i for i in range(len(busy) + 1) if i not in busy)
            busy.add(slot)
            lane = f"{body.worker_id}/slot {slot}"
        attempt = Attempt(
            body.attempt, body.worker_id, lane, body.slots, list(body.gpus), started_at=at
        )
        attempt.pieces.append(Piece(start=at))
        trial.attempts.append(attempt)

    def _current(self, trial: TrialView, attempt: int) -> Attempt | None:
        for candidate in reversed(trial.attempts):
            if candidate.attempt == attempt:
                return candidate if candidate.ended_at is None else None
        return None

    def _result(self, trial: TrialView, body: OpCompleted, at: float, seq: int) -> None:
        value = _finite(body.metric)
        previous = trial.length
        if value is None or body.length <= previous:
            return
        self.trained += body.length - previous
        result = Result(trial.trial_id, body.length, value, at, seq, self.trained)
        trial.results.append(result)
        self.results.append(result)
        if not self.best or self._better(value, self.best[-1].value):
            self.best.append(result)
        attempt = self._current(trial, body.attempt)
        if attempt is not None and attempt.pieces and attempt.pieces[-1].end is None:
            piece = attempt.pieces[-1]
            piece.end, piece.length, piece.outcome = at, body.length, "validated"
            attempt.pieces.append(Piece(start=at))

    def _exited(self, trial: TrialView, body: TrialExited, at: float) -> None:
        attempt = self._current(trial, body.attempt)
        if attempt is None:
            return
        attempt.ended_at, attempt.exit_code = at, body.exit_code
        attempt.reason, attempt.message = body.reason.value, body.message
        if attempt.pieces and attempt.pieces[-1].end is None:
            piece = attempt.pieces[-1]
            piece.end, piece.outcome = at, _OUTCOME.get(body.reason, "stopped")
        if not attempt.gpus:
            slot = int(attempt.lane.rsplit(" ", 1)[1])
            self._busy.get(attempt.worker_id, set()).discard(slot)

    def _explain(self, record: InputRecord, step: Step, at: float) -> None:
        run = self.run
        if run is None:
            return
        decided = decisions(record, step, run)
        if not isinstance(record.input, NOISE) or decided:
            trial_id = getattr(record.input, "trial_id", None)
            self.activity.append(
                {
                    "seq": record.seq,
                    "at": at,
                    "event": describe_input(record, run),
                    "decisions": [text for _, text in decided],
                    "trial_id": trial_id if isinstance(trial_id, int) else None,
                }
            )
        for trial_id, text in decided:
            trial = self.trials.get(trial_id) if trial_id is not None else None
            if trial is None:
                continue
            trial.decisions.append((record.seq, at, text))
            repeated = text.startswith("-> ") and text.endswith(" closed")  # the op said it
            if trial.results and not repeated and not any(p in text for p in _NOT_A_REASON):
                rung = self._rung_of(trial, trial.results[-1].length)
                trial.reasons.setdefault(rung, []).append(text)

    # ------------------------------------------------------------------ reading
    def _better(self, value: float, than: float) -> bool:
        return value < than if self.smaller_is_better else value > than

    def _rung_of(self, trial: TrialView, length: int) -> int:
        brackets = asha_brackets(self.run.experiment.method) if self.run is not None else []
        if trial.bracket < len(brackets):
            for index, rung in enumerate(brackets[trial.bracket].state.rungs):
                if rung.length >= length:
                    return index
        return 0

    def rung_lengths(self) -> list[list[int]]:
        """Each bracket's rung lengths (none for a method without rungs)."""
        if self.run is None:
            return []
        return [
            [rung.length for rung in bracket.state.rungs]
            for bracket in asha_brackets(self.run.experiment.method)
        ]

    def rungs(self) -> list[RungState]:
        """Every rung of every bracket: its results ranked, the cutoff, each outcome."""
        if self.run is None:
            return []
        out: list[RungState] = []
        sign = 1.0 if self.smaller_is_better else -1.0
        for b, bracket in enumerate(asha_brackets(self.run.experiment.method)):
            state = bracket.state
            top = len(state.rungs) - 1
            for r, rung in enumerate(state.rungs):
                count = len(rung.results)
                cut = quota(bracket, count)
                points: list[RungPoint] = []
                for rank, result in enumerate(rung.results, start=1):
                    trial_id = self._by_request.get(result.request_id)
                    if trial_id is None:
                        continue
                    reached = state.trial_rungs.get(result.request_id, 0)
                    outcome = self._outcome(trial_id, r, reached, top=top)
                    if outcome == "waiting" and result.request_id in state.closed:
                        outcome = "stopped"
                    points.append(RungPoint(trial_id, sign * result.value, rank, outcome))
                cutoff = sign * rung.results[cut - 1].value if 0 < cut <= count else None
                if r == top and not rung.results:
                    points = self._finished(b, rung.length)
                out.append(RungState(b, r, rung.length, points, cut, cutoff, len(rung.running)))
        return out

    def _finished(self, bracket: int, length: int) -> list[RungPoint]:
        """The top rung's results: the search method keeps none (nothing is promoted
        from there), so they are the trials' own results at its length."""
        finished = [
            (result.value, trial.trial_id)
            for trial in self.trials.values()
            if trial.bracket == bracket
            for result in trial.results
            if result.length == length
        ]
        finished.sort(key=lambda item: (item[0] if self.smaller_is_better else -item[0], item[1]))
        return [
            RungPoint(trial_id, value, rank, "completed")
            for rank, (value, trial_id) in enumerate(finished, start=1)
        ]

    def _outcome(self, trial_id: int, rung: int, reached: int, *, top: int) -> str:
        if rung < reached:
            return "promoted"
        if rung == top:
            return "completed"
        trial = self.trials[trial_id]
        if trial.state in ("COMPLETED", "ERRORED", "CANCELED", "INVALID_HP"):
            return "stopped"
        if trial.state == "PAUSED":
            return "paused"
        return "waiting"

    def reason(self, trial_id: int, rung: int) -> str:
        """The searcher's recorded decisions about a trial at a rung, newest last."""
        trial = self.trials.get(trial_id)
        return "; ".join(trial.reasons.get(rung, [])) if trial is not None else ""

    def stopped(self, trial: TrialView) -> bool:
        """Ended before the longest training the search asks for (ASHA stopped it, it
        failed, or it was canceled)."""
        if trial.state not in ("COMPLETED", "ERRORED", "CANCELED", "INVALID_HP"):
            return False
        if trial.state != "COMPLETED":
            return True
        return self.max_length is not None and trial.length < self.max_length

    def best_result(self) -> Result | None:
        return self.best[-1] if self.best else None

    def counts(self) -> dict[str, int]:
        """Trials by state."""
        out: dict[str, int] = {}
        for trial in self.trials.values():
            out[trial.state] = out.get(trial.state, 0) + 1
        return out

    def ended(self) -> bool:
        return self.state in ("COMPLETED", "ERROR", "CANCELED")


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _units(length: object) -> int | None:
    units = getattr(length, "units", length)
    return units if isinstance(units, int) else None


def trial_hparams(trial: TrialView) -> Mapping[str, JsonValue]:
    return trial.hparams
