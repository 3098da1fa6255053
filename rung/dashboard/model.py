"""The dashboard's view of one experiment: a fold over its event log.

:class:`ExperimentView` takes the experiment's records in order (``apply``) and keeps
what the pages draw: each trial's attempts and where they ran, its results and metric
curves, its checkpoints, the searcher's decisions about it with their reasons (and what
the search method noted), its lineage (a clone of population-based training: the trial
whose checkpoint it continues from, and its own clones), the best result so far against
length trained and against time, and the search method's own state (the rungs), by
folding the same pure core the searcher runs (:func:`rung.searcher.eventlog.replay.fold`).
Folding records it has seen is a no-op, so a view fed from the history and then from a
live stream that overlaps it stays exact.

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
    ControlExperiment,
    ControlTrial,
    ExitReason,
    MetricsReported,
    OpCompleted,
    TrialExited,
    TrialStarted,
    WorkerLost,
)
from rung.broker.schemas.commands import KillTrial, RunTrial
from rung.dashboard.errors import DashboardError
from rung.searcher.config import CustomSearcher, ExperimentConfig, parse_config
from rung.searcher.errors import SearcherError
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
from rung.searcher.ops import Clone, Create, Shutdown
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

# A length or step beyond this (2**53: where floats stop counting whole numbers) is no
# point of a chart: a script's 10**400 is not drawn.
_LONGEST: Final = 2**53
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
_EXITED_STATE: Final = {
    ExitReason.COMPLETED: "COMPLETED",
    ExitReason.OUT_OF_OPS: "PAUSED",
    ExitReason.PREEMPTED: "QUEUED",
    ExitReason.ERRORED: "ERRORED",
    ExitReason.INVALID_HP: "INVALID_HP",
    ExitReason.USER_REQUESTED_STOP: "COMPLETED",
}
_ENDED: Final = ("COMPLETED", "ERROR", "CANCELED")
# The experiment's state after a user's control, as far as the records tell.
_CONTROLLED: Final = {
    "pause": "PAUSED",
    "activate": "ACTIVE",
    "cancel": "STOPPING_CANCELED",
    "kill": "STOPPING_CANCELED",
}
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
    # Where it ran: its worker's slot, or each of its GPUs (lane is the first).
    lanes: list[str] = field(default_factory=list)


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
    reached: int = 0  # the longest length it was validated at
    # Population-based training: where it comes from (its Create's ``clone``: the trial
    # whose checkpoint it continues from, and how its hyperparameters differ; None for a
    # trial that started afresh), and the trials cloned from it, in the order made.
    parent: Clone | None = None
    children: list[int] = field(default_factory=list)

    @property
    def latest(self) -> Result | None:
        return self.results[-1] if self.results else None

    @property
    def length(self) -> int:
        """The longest length it was validated at (a result without a value too)."""
        return self.reached


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

    def __init__(
        self,
        created: CreatedRecord,
        *,
        context_root: Path | None = None,
        allow_custom: bool = False,
    ) -> None:
        self.created = created
        self.experiment_id = created.experiment_id
        try:
            self.config: ExperimentConfig = parse_config(created.config).config
        except SearcherError as exc:
            raise DashboardError(
                f"experiment {created.experiment_id}'s config does not load in this version "
                f"of Rung ({exc}); `rung replay` with the version that wrote it explains it"
            ) from exc
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
        # The clones decided whose trial has not been run yet (by request id).
        self._clones: dict[str, Clone] = {}
        self._busy: dict[str, set[int]] = {}  # worker -> slot lanes in use
        # The workers of each attempt that runs on several (gang scheduling), by part.
        self._gangs: dict[tuple[int, int], dict[int, str]] = {}
        self.run: ExperimentRun | None = None
        if isinstance(self.config.searcher, CustomSearcher) and not allow_custom:
            self.unexplained = (
                "a custom search method is the experiment creator's code, which the "
                "dashboard does not run unless told to (rung dashboard "
                "--allow-custom-searchers); reasons and rungs are not shown"
            )
            return
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
        before = self.state
        if isinstance(record, FailedRecord):
            self.failure = record.error
            if self.run is not None:
                try:
                    self.run.fail(record.error)
                except (Exception, SystemExit) as exc:  # noqa: BLE001 (as _fold)
                    self._unexplained(record.seq, exc)
            self.state = self.run.state if self.run is not None else "ERROR"
            self._states(set(self.trials))
            return True
        if not isinstance(record, InputRecord):
            return True  # snapshots and owner records change nothing shown
        step = self._fold(record)
        try:
            self._take(record, step)
        except Exception as exc:  # noqa: BLE001 (one odd record never stops the view)
            self._unexplained(record.seq, exc)
        if self.run is not None:
            self.state = self.run.state
            self.progress = self.run.experiment.progress()
        self._states(self._touched(record, changed=self.state != before))
        return True

    def _unexplained(self, seq: int, exc: BaseException) -> None:
        """Stop folding the search (its state is no longer the searcher's) and say why;
        the records are still shown."""
        self.run = None
        self.unexplained = (
            f"record {seq} could not be folded ({describe_error(exc)}); the view goes on "
            "from the records alone, without the searcher's reasons and rungs"
        )

    def _states(self, trial_ids: set[int]) -> None:
        if self.run is None:
            return
        for trial_id in trial_ids:
            runtime = self.run.by_id.get(trial_id)
            trial = self.trials.get(trial_id)
            if runtime is not None and trial is not None:
                trial.state, trial.restarts = runtime.state, runtime.restarts

    def _touched(self, record: InputRecord, *, changed: bool) -> set[int]:
        """The trials whose state the record may have changed: the input's, and those
        of its operations and commands; every trial after a control of the experiment, a
        lost worker, or a change of the experiment's state (a pause holds queued trials
        without a command)."""
        if changed or isinstance(record.input, ControlExperiment | WorkerLost):
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
            self._unexplained(record.seq, exc)
            return None
        if record.failed is not None:
            self.failure = record.failed
        return step

    def _at(self, record: Record) -> float:
        return max(0.0, record.at - self.started_at)

    def _take(self, record: InputRecord, step: Step | None) -> None:
        at = self._at(record)
        for op in record.ops:
            if isinstance(op, Create) and op.clone is not None:
                self._clones[op.request_id] = op.clone
        for command in record.commands:
            body = command.body
            if isinstance(body, RunTrial) and body.trial_id not in self.trials:
                self._new_trial(body, at)
            if isinstance(body, RunTrial) and body.gang is not None and command.worker_id:
                parts = self._gangs.setdefault((body.trial_id, body.attempt), {})
                parts[body.gang.rank] = command.worker_id
        if record.ignored is None:
            self._input(record, at)
        else:
            self._ignored(record, at)
        if self.run is None:
            self._from_records(record)
        if isinstance(record.input, WorkerLost):
            self._lost(record.input.worker_id, at)
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
        parent = self._clones.pop(body.request_id, None)
        if parent is not None:
            trial.parent = parent
            source = self.trials.get(parent.source_trial)
            if source is not None and source is not trial:
                source.children.append(body.trial_id)

    def _input(self, record: InputRecord, at: float) -> None:
        body = record.input
        trial = self.trials.get(getattr(body, "trial_id", -1))
        if trial is None:
            return
        match body:
            case TrialStarted():
                self._started(trial, body, at)
            case MetricsReported() if 0 <= body.steps_completed <= _LONGEST:
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

    def _from_records(self, record: InputRecord) -> None:
        """Without the search's own state: the experiment's and trials' states as the
        records tell them (a shutdown decided, a process started or exited)."""
        if record.failed is not None:
            self.state = "ERROR"
        for op in record.ops:
            if isinstance(op, Shutdown):
                self.state = "ERROR" if op.failure else "CANCELED" if op.cancel else "COMPLETED"
        if record.ignored is not None:
            return
        body = record.input
        if isinstance(body, ControlExperiment) and self.state not in _ENDED:
            self.state = _CONTROLLED.get(body.action, self.state)
        trial = self.trials.get(getattr(body, "trial_id", -1))
        if trial is not None and isinstance(body, TrialStarted):
            trial.state = "RUNNING"
        elif trial is not None and isinstance(body, TrialExited):
            trial.state = _EXITED_STATE.get(body.reason, "ERRORED")
            trial.restarts += body.reason is ExitReason.ERRORED
        for command in record.commands:
            known = self.trials.get(getattr(command.body, "trial_id", -1))
            if known is not None and isinstance(command.body, RunTrial):
                known.state = "QUEUED"
            elif (
                known is not None
                and isinstance(command.body, KillTrial)
                and not isinstance(body, WorkerLost)  # a lost worker's trial is re-queued
            ):
                known.state = "CANCELED"

    def _ignored(self, record: InputRecord, at: float) -> None:
        """An input the run ignored still says what a process did: the exit of an attempt
        the run had given up on (a killed trial, a canceled experiment) ends it here."""
        body = record.input
        trial = self.trials.get(getattr(body, "trial_id", -1))
        if isinstance(body, TrialExited) and trial is not None:
            attempt = self._current(trial, body.attempt)
            if attempt is not None and attempt.worker_id == body.worker_id:
                self._exited(trial, body, at)

    def _lost(self, worker_id: str, at: float) -> None:
        """A lost worker's attempts end: its processes are gone as far as anyone knows
        (an attempt with a part there too: the other parts are stopped with it)."""
        for trial in self.trials.values():
            for attempt in trial.attempts:
                workers = {attempt.worker_id, *(_lane_worker(lane) for lane in attempt.lanes)}
                if worker_id in workers and attempt.ended_at is None:
                    self._end(attempt, at, "lost", reason="WORKER_LOST")

    def _started(self, trial: TrialView, body: TrialStarted, at: float) -> None:
        gang = self._gangs.get((trial.trial_id, body.attempt), {})
        known = next((a for a in trial.attempts if a.attempt == body.attempt), None)
        if known is not None:
            drawn = {_lane_worker(lane) for lane in known.lanes}
            if body.worker_id in set(gang.values()) - drawn and known.ended_at is None:
                # Another part of an attempt on several workers: drawn on its worker too.
                known.lanes += self._lanes(body)
                known.slots += body.slots
            return  # else a second process of the attempt: the run stops it
        lanes = self._lanes(body)
        worker = gang.get(0, body.worker_id)  # an attempt on several: its chief's
        attempt = Attempt(
            body.attempt, worker, lanes[0], body.slots, list(body.gpus), started_at=at
        )
        attempt.lanes = lanes
        attempt.pieces.append(Piece(start=at))
        trial.attempts.append(attempt)

    def _lanes(self, body: TrialStarted) -> list[str]:
        """The timeline's lanes a process takes: each GPU, or a free slot lane."""
        if body.gpus:
            return [f"{body.worker_id}/gpu {gpu}" for gpu in body.gpus]
        busy = self._busy.setdefault(body.worker_id, set())
        slot = next(i for i in range(len(busy) + 1) if i not in busy)
        busy.add(slot)
        return [f"{body.worker_id}/slot {slot}"]

    def _current(self, trial: TrialView, attempt: int) -> Attempt | None:
        for candidate in reversed(trial.attempts):
            if candidate.attempt == attempt:
                return candidate if candidate.ended_at is None else None
        return None

    def _result(self, trial: TrialView, body: OpCompleted, at: float, seq: int) -> None:
        """A validation the searcher took. One without a finite metric (the search ranks
        it worst) still ends a stretch of training and moves the trial to the rung; it
        is no point of a curve."""
        value = _finite(body.metric)
        if not trial.reached < body.length <= _LONGEST:
            return
        self.trained += body.length - trial.reached
        trial.reached = body.length
        if value is not None:
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
        gang = self._gangs.get((trial.trial_id, body.attempt), {})
        member = (
            body.worker_id != gang.get(0, attempt.worker_id) and body.worker_id in gang.values()
        )
        if member and body.reason in _MEMBER_DONE:
            return  # a member part's clean end: the chief's part runs on
        attempt.exit_code, attempt.message = body.exit_code, body.message
        outcome = _OUTCOME.get(body.reason, "stopped")
        if trial.state == "CANCELED" and body.reason is not ExitReason.COMPLETED:
            outcome = "killed"
        self._end(attempt, at, outcome, reason=body.reason.value)

    def _end(self, attempt: Attempt, at: float, outcome: str, *, reason: str) -> None:
        attempt.ended_at, attempt.reason = at, reason
        if attempt.pieces and attempt.pieces[-1].end is None:
            piece = attempt.pieces[-1]
            piece.end, piece.outcome = at, outcome
        for lane in attempt.lanes or [attempt.lane]:
            worker, _, where = lane.rpartition("/")
            if where.startswith("slot "):
                self._busy.get(worker, set()).discard(int(where.removeprefix("slot ")))

    def _explain(self, record: InputRecord, step: Step, at: float) -> None:
        run = self.run
        if run is None:
            return
        decided = decisions(record, step, run)
        notes = [f"note: {note}" for note in record.notes or ()]
        if not isinstance(record.input, NOISE) or decided or notes:
            trial_id = getattr(record.input, "trial_id", None)
            self.activity.append(
                {
                    "seq": record.seq,
                    "at": at,
                    "event": describe_input(record, run),
                    # What the search method noted (why it decided, or waits), then what
                    # it decided: as `rung replay` prints them.
                    "decisions": notes + [text for _, text in decided],
                    "trial_id": trial_id if isinstance(trial_id, int) else None,
                }
            )
        for trial_id, text in decided:
            trial = self.trials.get(trial_id) if trial_id is not None else None
            if trial is None:
                continue
            trial.decisions.append((record.seq, at, text))
            repeated = text.startswith("-> ") and text.endswith(" closed")  # the op said it
            if trial.reached and not repeated and not any(p in text for p in _NOT_A_REASON):
                rung = self._rung_of(trial, trial.reached)
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
                # Nothing is promoted from the top rung: it has no cutoff.
                cutoff = None
                if r < top and 0 < cut <= count:
                    cutoff = sign * rung.results[cut - 1].value
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
        trial = self.trials[trial_id]
        if rung == top:
            return "stopped" if trial.state in ("ERRORED", "CANCELED") else "completed"
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

    def ancestors(self, trial: TrialView) -> list[TrialView]:
        """The trials it descends from (population-based training): its source first,
        back to a trial that started afresh; the chain ends at a source not in the view."""
        out: list[TrialView] = []
        seen = {trial.trial_id}
        parent = trial.parent
        while parent is not None:
            source = self.trials.get(parent.source_trial)
            if source is None or source.trial_id in seen:
                break
            out.append(source)
            seen.add(source.trial_id)
            parent = source.parent
        return out

    def clones(self) -> int:
        """How many of its trials are clones (population-based training)."""
        return sum(trial.parent is not None for trial in self.trials.values())

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
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float: a script's 10**400
        return None
    return number if math.isfinite(number) else None


def _units(length: object) -> int | None:
    units = getattr(length, "units", length)
    return units if isinstance(units, int) else None


def trial_hparams(trial: TrialView) -> Mapping[str, JsonValue]:
    return trial.hparams


# A member part's exits that leave its attempt running (searcher.trials.gang).
_MEMBER_DONE = (ExitReason.COMPLETED, ExitReason.OUT_OF_OPS, ExitReason.USER_REQUESTED_STOP)


def _lane_worker(lane: str) -> str:
    """The worker of a timeline lane (``<worker>/slot <n>``, ``<worker>/gpu <id>``)."""
    return lane.rpartition("/")[0]
