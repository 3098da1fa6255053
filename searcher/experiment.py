"""The experiment layer: the one place where search events become operations.

It keeps what Determined's ``Searcher`` wrapper keeps (trials requested, created and
closed, exits, failures, cancels, progress, the current operation of every trial) and
adds what a distributed system needs:

* **Idempotence.** A duplicate or stale event changes nothing and says why
  (``Decision.ignored``): a validation for an operation that is complete or not the
  trial's current one, a second close or exit, a second start.
* **One ending per trial.** A trial ends once, by ``TrialClosed`` or by
  ``TrialExitedEarly``; the method hears about exactly one of them.
* **A hard concurrency cap.** At most ``max_concurrent_trials`` trials hold an operation
  (0 means no cap). A ``ValidateAfter`` beyond the cap waits in a FIFO admission queue
  and is emitted when a trial lets go of its operation.
* **Shutdown** once every requested trial has ended; the experiment fails only when every
  trial failed (ERRORED), and is canceled only when every trial was canceled.

It is pure and synchronous: no I/O, no clock, no global randomness.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, Field, JsonValue

from rung.searcher.config import ExperimentConfig, Hyperparameters, SingleSearcher
from rung.searcher.errors import SearcherError, SearchMethodError
from rung.searcher.events import (
    ExitedReason,
    RoundTimedOut,
    SearchEvent,
    Start,
    TrialCheckpointed,
    TrialClosed,
    TrialExitedEarly,
    TrialPaused,
    TrialProgress,
    ValidationCompleted,
)
from rung.searcher.methods import WORST, SearchMethod, build_method, rank_value
from rung.searcher.ops import Clone, Close, Create, Operation, Shutdown, ValidateAfter
from rung.searcher.samplers import Pending, Sampler, SamplerData, Suggested, build_sampler
from rung.searcher.space import draw_trial, flatten

__all__ = [
    "Decision",
    "Experiment",
    "ExperimentSnapshot",
    "ExperimentState",
    "TrialRecord",
    "same_point",
]

SNAPSHOT_VERSION: Final = 1


class TrialRecord(BaseModel):
    """What the experiment knows about one trial."""

    request_id: str
    trial_id: int
    index: int
    create: Create
    op: ValidateAfter | None = None
    op_done: bool = True
    queued: bool = False
    trained: int = 0
    metric: float | None = None
    progress: float = 0.0
    closing: bool = False
    terminal: bool = False
    exited: ExitedReason | None = None

    @property
    def hparams(self) -> dict[str, JsonValue]:
        return self.create.hparams

    @property
    def holds_op(self) -> bool:
        """The trial has an operation it is (or should be) working on."""
        return not self.terminal and self.op is not None and not self.op_done and not self.queued

    @property
    def paused(self) -> bool:
        """Between operations, neither closed nor ended: its slot is free."""
        return not self.terminal and not self.closing and self.op_done and not self.queued


class ExperimentState(BaseModel):
    started: bool = False
    next_index: int = 0
    trials: dict[str, TrialRecord] = Field(default_factory=dict)
    queue: list[str] = Field(default_factory=list)
    holding: int = 0
    ended: int = 0
    failed: int = 0
    canceled: int = 0
    shutdown: Shutdown | None = None


class ExperimentSnapshot(BaseModel):
    """Everything needed to continue an experiment exactly where it was."""

    version: Literal[1] = SNAPSHOT_VERSION
    state: ExperimentState
    method: dict[str, Any]
    # The sampler's results (None for the random sampler, which keeps none).
    sampler: dict[str, Any] | None = None


def _copy(state: ExperimentState) -> ExperimentState:
    """A deep copy: dumped and validated again, far faster than ``copy.deepcopy``."""
    return ExperimentState.model_validate(state.model_dump())


# Early exits that say something about the hyperparameters, for the sampler.
_FAILED = frozenset({ExitedReason.ERRORED, ExitedReason.INVALID_HP})


def same_point(a: Mapping[str, Any], b: Mapping[str, Any], rel_tol: float = 1e-6) -> bool:
    """Equal hyperparameters, numbers within ``rel_tol`` (a recomputed suggestion)."""
    flat_a, flat_b = flatten(a), flatten(b)
    if flat_a.keys() != flat_b.keys():
        return False
    for name, x in flat_a.items():
        y = flat_b[name]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))
        if numbers and (isinstance(x, float) or isinstance(y, float)):
            if not math.isclose(x, y, rel_tol=rel_tol):
                return False
        elif x != y or type(x) is not type(y):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Decision:
    """The operations an event caused, or why it was ignored, and what the search method
    said about it (``notes``: why it decided, or waits, as it does)."""

    ops: tuple[Operation, ...] = ()
    ignored: str | None = None
    notes: tuple[str, ...] = ()


class Experiment:
    """An experiment's search state: events in, operations out."""

    def __init__(
        self,
        config: ExperimentConfig,
        method: SearchMethod[Any] | None = None,
        *,
        context_dir: Path | None = None,
    ) -> None:
        if config.experiment_seed is None:
            raise SearcherError(
                "reproducibility.experiment_seed is not set; the experiment needs it to draw "
                "trials reproducibly; call config.with_seed(seed) first"
            )
        self.config = config
        self.seed: int = config.experiment_seed
        self.method = method if method is not None else build_method(config, context_dir)
        searcher = config.searcher
        self.cap = 1 if isinstance(searcher, SingleSearcher) else searcher.max_concurrent_trials
        self.state = ExperimentState()
        self.sampler: Sampler = build_sampler(config)
        # Replay hands in the recorded ``Create`` operations of the input it folds: a
        # model-based suggestion is then taken from the log (see ``_suggest``).
        self.recorded: Mapping[str, Create] | None = None
        self.verify_recorded = False
        # Indexes over ``state``, never state themselves: rebuilt by ``restore``.
        self._by_index: dict[int, TrialRecord] = {}
        self._training: set[str] = set()
        # The trials created during the current input and not registered yet.
        self._fresh: dict[str, tuple[int, Create]] = {}
        # What the method said during the current input (``note``).
        self._notes: list[str] = []

    # ---------------------------------------------------------------- SearchContext
    @property
    def hyperparameters(self) -> Hyperparameters:
        return self.config.hyperparameters

    @property
    def trials(self) -> Mapping[str, TrialRecord]:
        return self.state.trials

    def note(self, text: str) -> None:
        self._notes.append(text)

    def create(
        self,
        hparams: Mapping[str, JsonValue] | None = None,
        checkpoint: str | None = None,
        *,
        clone: Clone | None = None,
    ) -> Create:
        index = self.state.next_index
        self.state.next_index += 1
        suggested = self._suggest(index) if hparams is None else None
        if suggested is not None:
            hparams = suggested.hparams
        draw = draw_trial(self.seed, index, self.config.hyperparameters, hparams)
        op = Create(
            request_id=draw.request_id,
            hparams=draw.hparams,
            seed=draw.seed,
            checkpoint=checkpoint,
            suggestion=suggested.suggestion if suggested is not None else None,
            clone=clone,
        )
        self._fresh[op.request_id] = (index, op)
        return op

    # ---------------------------------------------------------------- the sampler
    def _suggest(self, index: int) -> Suggested | None:
        """The sampler's suggestion for trial ``index``; when replaying, the logged one.

        A model-based suggestion is floating-point linear algebra, which may differ in
        its last bits from one machine or BLAS to another. The log, not a recomputation,
        is the source of truth: replay takes the logged suggestion, and ``verify``
        recomputes it and accepts it within a tolerance (``same_point``).
        """
        if not self.sampler.keeps_results:
            return None  # the random sampler: the trial's own generator draws the point
        recorded = None
        if self.recorded is not None:
            request_id = draw_trial(self.seed, index, self.config.hyperparameters, {}).request_id
            recorded = self.recorded.get(request_id)
        if recorded is not None and recorded.suggestion is not None:
            logged = Suggested(dict(recorded.hparams), recorded.suggestion)
            if not self.verify_recorded or recorded.suggestion.version != self.sampler.version:
                return logged
            now = self.sampler.suggest(index, self._sampler_data())
            return logged if now is not None and same_point(now.hparams, logged.hparams) else now
        return self.sampler.suggest(index, self._sampler_data())

    def _sampler_data(self) -> SamplerData:
        searcher = self.config.searcher
        max_length = getattr(searcher, "max_length", None)
        pending = [
            Pending(trial.hparams, trial.op.length if trial.op is not None else 0)
            for trial in (self.state.trials[r] for r in sorted(self._training))
        ]
        pending += [Pending(op.hparams, 0) for _, op in self._fresh.values()]
        return SamplerData(
            seed=self.seed,
            hyperparameters=self.config.hyperparameters,
            max_length=max_length.units if max_length is not None else None,
            concurrency=self.cap,
            hparams_of=self._hparams_of,
            pending=pending,
        )

    def _hparams_of(self, index: int) -> Mapping[str, JsonValue]:
        trial = self._by_index.get(index)
        if trial is not None:
            return trial.hparams
        return next(op.hparams for i, op in self._fresh.values() if i == index)

    def _index_of(self, request_id: str) -> int:
        """The index ``ctx.create()`` gave ``request_id``, found again from the seed (for a
        ``Create`` a method copied, or emitted after the input that created it)."""
        for index in range(self.state.next_index - 1, -1, -1):
            if (
                draw_trial(self.seed, index, self.config.hyperparameters, {}).request_id
                == request_id
            ):
                return index
        return self.state.next_index - 1  # not made by ctx.create()

    def _reindex(self) -> None:
        self._by_index = {t.index: t for t in self.state.trials.values()}
        self._training = {
            t.request_id for t in self.state.trials.values() if not t.terminal and not t.op_done
        }
        self._fresh = {}

    # ---------------------------------------------------------------- queries
    @property
    def is_shut_down(self) -> bool:
        return self.state.shutdown is not None

    def progress(self) -> float:
        if self.is_shut_down:
            return 1.0
        value = self.method.progress(self)
        return 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)

    def best_trial(self) -> TrialRecord | None:
        """The best metric among the trials trained furthest (the incumbent)."""
        scored = [
            t
            for t in self.state.trials.values()
            if t.metric is not None and math.isfinite(t.metric)
        ]
        if not scored:
            return None
        furthest = max(t.trained for t in scored)
        finalists = [t for t in scored if t.trained == furthest]
        sign = 1.0 if self.config.searcher.smaller_is_better else -1.0
        return min(finalists, key=lambda t: (sign * (t.metric or 0.0), t.trial_id))

    def outstanding_ops(self) -> list[ValidateAfter]:
        """Operations emitted and not complete: what a restarted service re-publishes."""
        return [t.op for t in self.state.trials.values() if t.holds_op and t.op is not None]

    # ---------------------------------------------------------------- snapshots
    def snapshot(self) -> ExperimentSnapshot:
        return ExperimentSnapshot(
            state=_copy(self.state), method=self.method.snapshot(), sampler=self.sampler.snapshot()
        )

    @classmethod
    def restore(
        cls,
        config: ExperimentConfig,
        snapshot: ExperimentSnapshot,
        method: SearchMethod[Any] | None = None,
        *,
        context_dir: Path | None = None,
        owned: bool = False,
    ) -> Experiment:
        """The experiment as it was; ``owned``: the snapshot is given away, not copied."""
        experiment = cls(config, method, context_dir=context_dir)
        experiment.state = snapshot.state if owned else _copy(snapshot.state)
        experiment.method.restore(snapshot.method)
        experiment.sampler.restore(snapshot.sampler)
        experiment._reindex()
        return experiment

    def fail(self) -> Shutdown:
        """The search failed (its method raised): no more decisions, ever."""
        op = Shutdown(failure=True)
        self.state.shutdown = op
        return op

    # ---------------------------------------------------------------- events
    def apply(self, event: SearchEvent) -> Decision:
        self._notes = []
        if isinstance(event, RoundTimedOut) and not self.is_shut_down:
            self._fresh = {}
            ops = self.method.round_timed_out(self, event.round, event.after_s)
            decision = self._run(ops)
        else:
            decision = self._apply(event)
        if self._notes:
            decision = Decision(decision.ops, decision.ignored, tuple(self._notes))
        return decision

    def _apply(self, event: SearchEvent) -> Decision:
        self._fresh = {}
        if self.is_shut_down:
            return Decision(ignored="the experiment has shut down; no more decisions")
        if isinstance(event, Start):
            return self._start()
        assert not isinstance(event, RoundTimedOut)  # noqa: S101 (applied in apply)
        trial = self.state.trials.get(event.request_id)
        if trial is None:
            return Decision(ignored=f"unknown trial {event.request_id}")
        match event:
            case ValidationCompleted():
                return self._validated(trial, event)
            case TrialClosed():
                return self._ended(trial, None)
            case TrialExitedEarly():
                return self._ended(trial, event.reason)
            case TrialProgress():
                trial.progress = event.units
                return self._run(self.method.trial_progress(self, trial.request_id, event.units))
            case TrialCheckpointed() | TrialPaused():
                return self._followed(trial, event)

    def _followed(self, trial: TrialRecord, event: TrialCheckpointed | TrialPaused) -> Decision:
        """A checkpoint or a pause, for a method that follows them."""
        if not self.method.follows_checkpoints:
            return Decision(ignored=f"the {self.method.name} method does not follow checkpoints")
        if trial.terminal:
            return Decision(ignored=f"trial {trial.trial_id} has ended")
        if isinstance(event, TrialCheckpointed):
            ops = self.method.checkpoint_saved(self, trial.request_id, event.uuid, event.steps)
        else:
            ops = self.method.trial_paused(self, trial.request_id)
        return self._run(ops)

    def _start(self) -> Decision:
        if self.state.started:
            return Decision(ignored="the experiment has started already")
        self.state.started = True
        return self._run(self.method.initial_operations(self))

    def _validated(self, trial: TrialRecord, event: ValidationCompleted) -> Decision:
        op = trial.op
        if trial.terminal:
            return Decision(ignored=f"trial {trial.trial_id} has ended")
        if op is None or op.length != event.length:
            expected = f"length {op.length}" if op else "no operation"
            return Decision(
                ignored=f"trial {trial.trial_id} expected {expected}, "
                f"got a validation at length {event.length}"
            )
        if trial.op_done:
            return Decision(
                ignored=f"trial {trial.trial_id} already completed length {event.length}"
            )
        if trial.queued:
            return Decision(
                ignored=f"trial {trial.trial_id}'s operation to length "
                f"{event.length} was never dispatched"
            )
        trial.op_done = True
        trial.trained = event.length
        trial.metric = event.metric
        self.state.holding -= 1
        self._training.discard(trial.request_id)
        value = rank_value(event.metric, self.config.searcher.smaller_is_better)
        self.sampler.observe(trial.index, event.length, None if value == WORST else value)
        ops = self.method.validation_completed(self, trial.request_id, event.metric, event.length)
        return self._run(ops)

    def _ended(self, trial: TrialRecord, reason: ExitedReason | None) -> Decision:
        if trial.terminal:
            return Decision(ignored=f"trial {trial.trial_id} has ended already")
        was_holding = trial.holds_op
        if reason in _FAILED and trial.op is not None and not trial.op_done:
            self.sampler.observe(trial.index, trial.op.length, None)  # ranks last there
        self._training.discard(trial.request_id)
        trial.terminal = True
        trial.exited = reason
        self.state.ended += 1
        self.state.failed += reason is ExitedReason.ERRORED
        self.state.canceled += reason is ExitedReason.USER_CANCELED
        if was_holding:
            self.state.holding -= 1
        if trial.queued:
            trial.queued = False
            self.state.queue.remove(trial.request_id)
        if reason is None:
            ops = self.method.trial_closed(self, trial.request_id)
        else:
            ops = self.method.trial_exited_early(self, trial.request_id, reason)
        return self._run(ops)

    # ---------------------------------------------------------------- operations
    def _run(self, ops: list[Operation]) -> Decision:
        out: list[Operation] = []
        work = deque(ops)
        while work:
            op = work.popleft()
            if self.is_shut_down:
                break
            match op:
                case Create():
                    self._register(op)
                    out.append(op)
                    work.extendleft(reversed(self.method.trial_created(self, op.request_id)))
                case ValidateAfter():
                    if self._assign(op):
                        out.append(op)
                case Close():
                    self._close(op)
                    out.append(op)
                case Shutdown():
                    self.state.shutdown = op
                    out.append(op)
        out += self._admit()
        out += self._maybe_shutdown()
        return Decision(ops=tuple(out))

    def _register(self, op: Create) -> None:
        if op.request_id in self.state.trials:
            raise SearchMethodError(
                f"Create for request {op.request_id}, which exists already; "
                "create each trial once, through ctx.create()"
            )
        fresh = self._fresh.pop(op.request_id, None)
        record = TrialRecord(
            request_id=op.request_id,
            trial_id=len(self.state.trials) + 1,
            index=fresh[0] if fresh is not None else self._index_of(op.request_id),
            create=op,
        )
        self.state.trials[op.request_id] = record
        self._by_index[record.index] = record

    def _trial_for(self, op: ValidateAfter | Close) -> TrialRecord:
        trial = self.state.trials.get(op.request_id)
        if trial is None:
            raise SearchMethodError(
                f"{type(op).__name__} for unknown request {op.request_id}; "
                "emit the trial's Create first"
            )
        return trial

    def _assign(self, op: ValidateAfter) -> bool:
        """Give the trial its next operation; True if it is dispatched now."""
        trial = self._trial_for(op)
        if trial.terminal or trial.closing:
            raise SearchMethodError(
                f"ValidateAfter for trial {trial.trial_id}, which is "
                "closed; a closed trial gets no more operations"
            )
        if not trial.op_done or trial.queued:
            raise SearchMethodError(
                f"ValidateAfter(length={op.length}) for trial "
                f"{trial.trial_id} while its operation to length "
                f"{trial.op.length if trial.op else '?'} is unfinished"
            )
        if op.length <= trial.trained:
            raise SearchMethodError(
                f"ValidateAfter(length={op.length}) for trial "
                f"{trial.trial_id}, which has trained to {trial.trained} "
                "already; lengths are absolute and must grow"
            )
        trial.op = op
        trial.op_done = False
        self._training.add(trial.request_id)
        if self.cap and (self.state.holding >= self.cap or self.state.queue):
            trial.queued = True
            self.state.queue.append(trial.request_id)
            return False
        self.state.holding += 1
        return True

    def _close(self, op: Close) -> None:
        trial = self._trial_for(op)
        trial.closing = True

    def _admit(self) -> list[Operation]:
        out: list[Operation] = []
        while self.state.queue and (not self.cap or self.state.holding < self.cap):
            trial = self.state.trials[self.state.queue.pop(0)]
            trial.queued = False
            self.state.holding += 1
            if trial.op is not None:
                out.append(trial.op)
        return out

    def _maybe_shutdown(self) -> list[Operation]:
        state = self.state
        count = len(state.trials)
        if self.is_shut_down or state.ended < count:
            return []
        op = Shutdown(
            cancel=count > 0 and state.canceled == count,
            failure=count > 0 and state.failed == count,
        )
        self.state.shutdown = op
        return [op]
