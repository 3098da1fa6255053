"""Trial lifecycle: where trials run, and what workers must be told. Pure and synchronous.

The experiment layer decides *what* each trial trains; this layer decides *how*, from
worker events and the experiment's operations:

* a trial with an operation and no live process is queued as work (``RunTrial``, a new
  attempt, resuming from its latest checkpoint);
* a running trial that completed its operation gets its next one (``ContinueTrial``), or
  is paused (``PauseTrial``: its process exits and frees its slots) or closed
  (``CloseTrial``);
* a paused trial that is promoted later is queued as work again;
* a user's control of the whole experiment: ``pause`` preempts the running trials (they
  checkpoint) and holds every trial that would run until ``activate``; ``cancel``
  preempts them and ends the experiment once they have stopped; ``kill`` stops their
  processes at once, without a checkpoint, and ends it now;
* a failure of the search (any exception from the search method or sampling code, or
  from this layer) is decided here too, by :meth:`ExperimentRun.fail`: the experiment is
  ERROR with the reason, its running trials are killed, its other trials end, and work
  already queued is stopped as soon as a worker starts it;
* exits are handled as Determined does: a non-zero exit restarts the trial from its latest
  checkpoint up to ``max_restarts`` times, counted per trial, then the trial errored; a
  preempted trial resumes without using a restart; InvalidHP and user-requested stops end
  the trial and tell the search method.

Every event carries the trial's attempt number; events from any other attempt are stale
and ignored, which fences off a worker that was presumed dead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from rung.broker.schemas import (
    CheckpointSaved,
    CloseTrial,
    ContinueTrial,
    ControlExperiment,
    ControlTrial,
    ExitReason,
    KillTrial,
    LogLines,
    MetricsReported,
    OpCompleted,
    PauseTrial,
    PreemptTrial,
    ProgressReported,
    RunTrial,
    TrialExited,
    TrialStarted,
    WorkerCommand,
    WorkerLost,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.events import (
    ExitedReason,
    SearchEvent,
    Start,
    TrialClosed,
    TrialExitedEarly,
    TrialProgress,
    ValidationCompleted,
)
from rung.searcher.experiment import Experiment, ExperimentSnapshot
from rung.searcher.ops import Close, Create, Operation, Shutdown, ValidateAfter

__all__ = ["Command", "ExperimentRun", "RunState", "Step", "TrialRuntime", "TrialState"]

TrialState = Literal[
    "PENDING", "QUEUED", "RUNNING", "PAUSED", "COMPLETED", "ERRORED", "CANCELED", "INVALID_HP"
]
TERMINAL = ("COMPLETED", "ERRORED", "CANCELED", "INVALID_HP")
RunState = Literal["ACTIVE", "PAUSED", "STOPPING_CANCELED", "COMPLETED", "ERROR", "CANCELED"]
ENDED: tuple[RunState, ...] = ("COMPLETED", "ERROR", "CANCELED")
ControlAction = Literal["pause", "activate", "cancel", "kill"]
_LOG_TAIL = 200


@dataclass(frozen=True, slots=True)
class Command:
    """A command to publish: to the work queue (``worker_id`` None) or to one worker."""

    body: WorkerCommand
    worker_id: str | None = None


@dataclass
class Step:
    """What one input caused: the search events applied, the operations, the commands."""

    applied: list[SearchEvent] = field(default_factory=list)
    ops: list[Operation] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    ignored: str | None = None
    # Why the input failed the experiment (see :meth:`ExperimentRun.fail`), or None.
    failed: str | None = None


class TrialRuntime(BaseModel):
    trial_id: int
    request_id: str
    state: TrialState = "PENDING"
    attempt: int = 0
    worker_id: str | None = None
    target: int | None = None  # the length of the operation it should be training to
    waiting: bool = False  # running, op done, waiting for what comes next
    stopping: Literal["pause", "close"] | None = None
    closing: bool = False
    restarts: int = 0
    latest_checkpoint: str | None = None
    latest_steps: int = -1
    trained: int = 0
    metric: float | None = None
    validation_metrics: dict[str, Any] = Field(default_factory=dict)
    exit_message: str = ""
    logs: deque[str] = Field(default_factory=lambda: deque(maxlen=_LOG_TAIL))

    @field_validator("logs")
    @classmethod
    def _bounded(cls, value: deque[str]) -> deque[str]:
        return deque(value, maxlen=_LOG_TAIL)


class ExperimentRun:
    def __init__(
        self, experiment_id: str, experiment: Experiment, *, context_hash: str, checkpoint_root: str
    ) -> None:
        self.experiment_id = experiment_id
        self.experiment = experiment
        self.context_hash = context_hash
        self.checkpoint_root = checkpoint_root
        self.trials: dict[str, TrialRuntime] = {}
        self.by_id: dict[int, TrialRuntime] = {}
        self.state: RunState = "ACTIVE"
        # Why the experiment failed (state ERROR), or None.
        self.error: str | None = None

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error": self.error,
            "experiment": self.experiment.snapshot().model_dump(mode="json"),
            "trials": [t.model_dump(mode="json") for t in self.trials.values()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        self.state = data["state"]
        self.error = data.get("error")
        self.experiment = Experiment.restore(
            self.experiment.config,
            ExperimentSnapshot.model_validate(data["experiment"]),
            self.experiment.method,
            owned=True,  # validated just now, from plain data: nobody else holds it
        )
        self.trials = {}
        self.by_id = {}
        for raw in data["trials"]:
            trial = TrialRuntime.model_validate(raw)
            self.trials[trial.request_id] = trial
            self.by_id[trial.trial_id] = trial

    # ------------------------------------------------------------------ entry points
    def start(self) -> Step:
        step = Step()
        self._search(Start(), step)
        return step

    def fail(self, reason: str) -> Step:
        """The search failed: the experiment ends in ERROR, with ``reason``.

        The input that raised is the caller's to undo (the state must be the one before
        it; :class:`rung.searcher.host.ExperimentHost` folds the log again). Running trials
        are killed; every other unfinished trial is canceled, and work already queued is
        killed when a worker starts it (see :meth:`_started`). A killed trial keeps its
        worker until its process exits, so that a user's ``kill`` can stop it again.
        """
        step = Step(failed=reason)
        if self.state == "ERROR":
            step.ignored = f"the experiment has failed already: {self.error}"
            return step
        if self.state in ENDED:  # a late input raised: the result stands
            step.ignored = f"the experiment has ended ({self.state}); the error is logged only"
            return step
        self.state = "ERROR"
        self.error = reason
        for trial in self.trials.values():
            if trial.state in TERMINAL:
                continue
            if trial.state == "RUNNING":
                self._tell(trial, KillTrial, step)
            else:
                trial.worker_id = None
            trial.state = "CANCELED"
            trial.waiting = False
            trial.stopping = None
            trial.logs.append(f"[rung] the experiment failed: {reason}")
        step.ops.append(self.experiment.fail())
        return step

    def _kill_again(self) -> Step:
        """A user's kill of a failed experiment: kill again the processes that have not
        reported their exit yet (the first kill may have been lost with a worker)."""
        step = Step()
        for trial in self.trials.values():
            if trial.worker_id is not None:
                self._tell(trial, KillTrial, step)
        if not step.commands:
            step.ignored = "kill: the experiment has failed, and none of its trials runs"
        return step

    def on_control(self, action: ControlAction) -> Step:
        """A user's pause, activate, cancel or kill of the whole experiment."""
        if action == "kill" and self.state == "ERROR":
            return self._kill_again()
        step = Step()
        refusal = self._refusal(action)
        if refusal is not None:
            step.ignored = f"{action}: {refusal}"
            return step
        live = [t for t in self.trials.values() if t.state not in TERMINAL]
        running = [t for t in live if t.state == "RUNNING"]
        if action == "activate":
            self.state = "ACTIVE"
            for trial in live:
                if trial.state == "PAUSED" and self._holds_op(trial):
                    self._queue(trial, step)
            return step
        for trial in running:
            if action == "kill":
                self._tell(trial, KillTrial, step)
            elif trial.stopping is None:
                self._tell(trial, PreemptTrial, step)  # it checkpoints and exits
        if action == "pause":
            self.state = "PAUSED"
            for trial in live:
                if trial.state == "QUEUED":
                    self._hold(trial)  # if a worker starts it anyway, it is preempted
        else:
            self.state = "STOPPING_CANCELED"
            self._maybe_canceled(step, now=action == "kill")
        return step

    def _refusal(self, action: ControlAction) -> str | None:
        """Why ``action`` does nothing in the current state, or None."""
        if self.state in ENDED:
            return f"the experiment has ended ({self.state})"
        if self.state == "STOPPING_CANCELED" and action != "kill":
            return "the experiment is being canceled"
        if action == "pause" and self.state == "PAUSED":
            return "the experiment is paused already"
        if action == "activate" and self.state != "PAUSED":
            return f"the experiment is {self.state}, not paused"
        return None

    def _tell(
        self,
        trial: TrialRuntime,
        cls: type[PreemptTrial | KillTrial],
        step: Step,
        *,
        worker: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Stop a process of ``trial``: by default its current attempt, on its worker."""
        body = cls(
            experiment_id=self.experiment_id,
            trial_id=trial.trial_id,
            attempt=trial.attempt if attempt is None else attempt,
        )
        step.commands.append(Command(body, worker or trial.worker_id))

    def _hold(self, trial: TrialRuntime) -> None:
        """Keep the trial's operation, but run nothing until the experiment is activated."""
        trial.state = "PAUSED"
        trial.worker_id = None
        trial.waiting = False
        trial.stopping = None

    def _maybe_canceled(self, step: Step, *, now: bool = False) -> None:
        """Once no trial runs (or at once, for a kill), every unfinished trial is canceled."""
        if self.state != "STOPPING_CANCELED":
            return
        live = [t for t in self.trials.values() if t.state not in TERMINAL]
        if not now and any(t.state == "RUNNING" for t in live):
            return
        for trial in live:
            trial.state = "CANCELED"
            trial.worker_id = None
        self.state = "CANCELED"
        step.ops.append(Shutdown(cancel=True))

    def on_trial_kill(self, trial_id: int) -> Step:
        """A user's kill of one trial: its process is killed, the trial is CANCELED, and
        the search method is told it exited early (as ``det trial kill`` does)."""
        step = Step()
        trial = self.by_id.get(trial_id)
        if trial is None:
            step.ignored = f"kill: the experiment has no trial {trial_id}"
            return step
        if trial.state in TERMINAL:
            step.ignored = f"kill: trial {trial_id} has ended ({trial.state})"
            return step
        if self.state in ENDED:
            step.ignored = f"kill: the experiment has ended ({self.state})"
            return step
        if trial.state == "RUNNING":
            self._tell(trial, KillTrial, step)
        trial.state = "CANCELED"
        trial.worker_id = None
        trial.waiting = False
        trial.stopping = None
        trial.logs.append("[rung] killed by the user")
        self._search(
            TrialExitedEarly(request_id=trial.request_id, reason=ExitedReason.USER_CANCELED), step
        )
        return step

    def on_event(self, body: Body) -> Step:
        if isinstance(body, ControlExperiment):
            return self.on_control(body.action)
        if isinstance(body, ControlTrial):
            step = self.on_trial_kill(body.trial_id)
            self._maybe_canceled(step)
            return step
        if isinstance(body, WorkerLost):
            step = self._worker_lost(body)
            self._maybe_canceled(step)
            return step
        step = self._on_trial_event(body)
        self._maybe_canceled(step)
        return step

    def _on_trial_event(self, body: Body) -> Step:
        step = Step()
        trial = self.by_id.get(getattr(body, "trial_id", -1))
        if trial is None:
            step.ignored = f"unknown trial {getattr(body, 'trial_id', '?')}"
            return step
        if self._stale(trial, body, step):
            return step
        if self._after_the_end(trial, body, step):
            return step
        if self._fenced(trial, body, step):
            return step
        match body:
            case TrialStarted():
                self._started(trial, body, step)
            case OpCompleted():
                self._op_completed(trial, body, step)
            case ProgressReported():
                self._search(TrialProgress(request_id=trial.request_id, units=body.units), step)
            case CheckpointSaved():
                if body.steps_completed >= trial.latest_steps:
                    trial.latest_checkpoint = body.uuid
                    trial.latest_steps = body.steps_completed
            case MetricsReported():
                if body.group == "validation":
                    trial.validation_metrics = dict(body.metrics)
            case LogLines():
                trial.logs.extend(f"[{line.stream}] {line.text}" for line in body.lines)
            case TrialExited():
                self._exited(trial, body, step)
            case _:
                step.ignored = f"{body.type} is not a trial event"
        return step

    def _after_the_end(self, trial: TrialRuntime, body: Body, step: Step) -> bool:
        """True (and why in ``step``) when the experiment ended and the event changes
        nothing; a start is still handled: its process is stopped."""
        if isinstance(body, TrialStarted) or self.state not in ("ERROR", "CANCELED"):
            return False
        if self.state == "CANCELED":
            step.ignored = f"trial {trial.trial_id}: the experiment was canceled"
            return True
        if isinstance(body, TrialExited) and body.worker_id == trial.worker_id:
            trial.worker_id = None  # a process killed by the failure has exited
        step.ignored = f"trial {trial.trial_id}: the experiment failed"
        return True

    def _worker_lost(self, body: WorkerLost) -> Step:
        """Its trials' attempts ended: they resume from their checkpoints elsewhere, without
        using a restart, as after a preemption. Should the worker come back, its processes
        are killed, and the attempt numbers fence off anything they report."""
        step = Step()
        lost = [
            t
            for t in self.trials.values()
            if t.state == "RUNNING" and t.worker_id == body.worker_id
        ]
        if not lost:
            step.ignored = f"worker {body.worker_id} runs no trial of this experiment"
            return step
        message = f"worker {body.worker_id} lost: nothing from it for {body.silent_s:.0f} s"
        for trial in lost:
            self._tell(trial, KillTrial, step)
            trial.logs.append(f"[rung] {message}; resuming from the latest checkpoint")
            ended = TrialExited(
                experiment_id=self.experiment_id,
                trial_id=trial.trial_id,
                attempt=trial.attempt,
                worker_id=body.worker_id,
                reason=ExitReason.PREEMPTED,
                message=message,
            )
            self._exited(trial, ended, step)
        return step

    def _stale(self, trial: TrialRuntime, body: Body, step: Step) -> bool:
        """True (and the reason in ``step``) when the event is from another attempt."""
        attempt = getattr(body, "attempt", None)
        if attempt == trial.attempt:
            return False
        step.ignored = (
            f"trial {trial.trial_id}: event from attempt {attempt}, the current one is "
            f"{trial.attempt}"
        )
        if isinstance(body, TrialStarted):
            # A stale attempt's work, started late: nobody listens to it; stop it.
            self._tell(trial, KillTrial, step, worker=body.worker_id, attempt=body.attempt)
        return True

    def _started(self, trial: TrialRuntime, body: TrialStarted, step: Step) -> None:
        if trial.state == "QUEUED":
            trial.state = "RUNNING"
            trial.worker_id = body.worker_id
            return
        # Its work was taken after the trial was held or ended: stop the process.
        cls = KillTrial if trial.state in TERMINAL else PreemptTrial
        step.ignored = f"trial {trial.trial_id} is {trial.state}: its new process is stopped"
        self._tell(trial, cls, step, worker=body.worker_id)

    def _fenced(self, trial: TrialRuntime, body: Body, step: Step) -> bool:
        """True (and the reason in ``step``) when the event must not touch the trial."""
        worker = getattr(body, "worker_id", None)
        if trial.state == "RUNNING" and worker != trial.worker_id:
            # A second process of the same attempt (a re-sent run_trial after a searcher
            # crash): it does not own the trial. Ask it to stop; ignore what it reports.
            step.ignored = (
                f"trial {trial.trial_id} attempt {trial.attempt} runs on "
                f"{trial.worker_id}, not on {worker}"
            )
            if isinstance(body, TrialStarted):
                self._tell(trial, PreemptTrial, step, worker=body.worker_id)
            return True
        if isinstance(body, TrialExited | OpCompleted) and trial.state != "RUNNING":
            step.ignored = f"trial {trial.trial_id} is {trial.state}, not running"
            return True
        return False

    # ------------------------------------------------------------------ the search
    def _search(self, event: SearchEvent, step: Step) -> None:
        pending: deque[SearchEvent] = deque([event])
        while pending:
            current = pending.popleft()
            decision = self.experiment.apply(current)
            if decision.ignored:
                if current is event:
                    step.ignored = decision.ignored
            else:
                step.applied.append(current)
            step.ops += decision.ops
            for op in decision.ops:
                follow = self._operation(op, step)
                if follow is not None:
                    pending.append(follow)

    def _operation(self, op: Operation, step: Step) -> SearchEvent | None:
        match op:
            case Create():
                record = self.experiment.trials[op.request_id]
                runtime = TrialRuntime(
                    trial_id=record.trial_id,
                    request_id=op.request_id,
                    latest_checkpoint=op.checkpoint,
                )
                self.trials[op.request_id] = runtime
                self.by_id[record.trial_id] = runtime
            case ValidateAfter():
                trial = self.trials[op.request_id]
                trial.target = op.length
                if trial.state == "RUNNING" and trial.waiting and trial.stopping is None:
                    trial.waiting = False
                    step.commands.append(
                        Command(
                            ContinueTrial(
                                experiment_id=self.experiment_id,
                                trial_id=trial.trial_id,
                                attempt=trial.attempt,
                                length=op.length,
                            ),
                            trial.worker_id,
                        )
                    )
                elif trial.state in ("PENDING", "PAUSED"):
                    self._queue(trial, step)
                # Running and on its way out (paused or preempted): queued when it exits.
            case Close():
                trial = self.trials[op.request_id]
                trial.closing = True
                if trial.state == "RUNNING" and trial.waiting:
                    self._stop(trial, "close", step)
                elif trial.state in ("PENDING", "PAUSED") and not self._holds_op(trial):
                    # (A trial held by a paused experiment closes after its operation.)
                    trial.state = "COMPLETED"
                    return TrialClosed(request_id=trial.request_id)
            case Shutdown():
                self.state = "ERROR" if op.failure else "CANCELED" if op.cancel else "COMPLETED"
        return None

    def _queue(self, trial: TrialRuntime, step: Step) -> None:
        if trial.target is None:
            return
        if self.state == "PAUSED":
            self._hold(trial)
            return
        if self.state in ("STOPPING_CANCELED", "CANCELED", "ERROR"):
            trial.state = "CANCELED"
            return
        trial.attempt += 1
        trial.state = "QUEUED"
        trial.worker_id = None
        trial.waiting = False
        trial.stopping = None
        config = self.experiment.config
        record = self.experiment.trials[trial.request_id]
        entrypoint = config.entrypoint or []
        max_length = getattr(config.searcher, "max_length", None)
        step.commands.append(
            Command(
                RunTrial(
                    experiment_id=self.experiment_id,
                    trial_id=trial.trial_id,
                    request_id=trial.request_id,
                    attempt=trial.attempt,
                    length=trial.target,
                    hparams=record.hparams,
                    trial_seed=record.create.seed,
                    latest_checkpoint=trial.latest_checkpoint,
                    context_hash=self.context_hash,
                    entrypoint=[entrypoint] if isinstance(entrypoint, str) else list(entrypoint),
                    slots=config.resources.slots_per_trial,
                    unit=max_length.unit if max_length is not None else None,
                    checkpoint_root=self.checkpoint_root,
                    user_data=dict(config.data),
                    max_restarts=config.max_restarts,
                )
            )
        )

    def _stop(self, trial: TrialRuntime, how: Literal["pause", "close"], step: Step) -> None:
        trial.waiting = False
        trial.stopping = how
        cls = CloseTrial if how == "close" else PauseTrial
        step.commands.append(
            Command(
                cls(
                    experiment_id=self.experiment_id, trial_id=trial.trial_id, attempt=trial.attempt
                ),
                trial.worker_id,
            )
        )

    # ------------------------------------------------------------------ worker events
    def _op_completed(self, trial: TrialRuntime, body: OpCompleted, step: Step) -> None:
        if body.length <= trial.trained:
            # A second report of an operation already completed (a duplicate process).
            step.ignored = f"trial {trial.trial_id} completed length {body.length} already"
            return
        if trial.state != "RUNNING" or body.length != trial.target or trial.waiting:
            step.ignored = (
                f"trial {trial.trial_id}: completion of length {body.length} "
                f"does not match its operation ({trial.target})"
            )
            return
        trial.waiting = True
        trial.trained = body.length
        trial.metric = body.metric
        self._search(
            ValidationCompleted(
                request_id=trial.request_id, length=body.length, metric=body.metric
            ),
            step,
        )
        if trial.waiting:
            # No next operation for it now: close it, or pause it to free its slots.
            self._stop(trial, "close" if trial.closing else "pause", step)

    def _holds_op(self, trial: TrialRuntime) -> bool:
        return self.experiment.trials[trial.request_id].holds_op

    def _exited(self, trial: TrialRuntime, body: TrialExited, step: Step) -> None:
        trial.worker_id = None
        trial.waiting = False
        trial.stopping = None
        trial.exit_message = body.message
        reason = body.reason
        if reason is ExitReason.ERRORED:
            trial.restarts += 1
            trial.logs.extend(f"[stderr] {line}" for line in body.stderr_tail[-5:])
            limit = self.experiment.config.max_restarts
            if trial.restarts > limit:
                trial.state = "ERRORED"
                trial.logs.append(
                    f"[rung] trial failed {trial.restarts} times, more than "
                    f"max_restarts={limit}: {body.message}"
                )
                self._search(
                    TrialExitedEarly(request_id=trial.request_id, reason=ExitedReason.ERRORED), step
                )
                return
            trial.logs.append(
                f"[rung] trial failed (restart {trial.restarts}/{limit}): {body.message}"
            )
        elif reason is ExitReason.INVALID_HP:
            trial.state = "INVALID_HP"
            self._search(
                TrialExitedEarly(request_id=trial.request_id, reason=ExitedReason.INVALID_HP), step
            )
            return
        elif reason is ExitReason.USER_REQUESTED_STOP:
            trial.state = "COMPLETED"
            trial.logs.append(f"[rung] warning: {body.message}")
            self._search(
                TrialExitedEarly(
                    request_id=trial.request_id, reason=ExitedReason.USER_REQUESTED_STOP
                ),
                step,
            )
            return
        # COMPLETED, OUT_OF_OPS, PREEMPTED, or an error with restarts left.
        if self._holds_op(trial):
            self._queue(trial, step)  # resume from the latest checkpoint
        elif trial.closing:
            trial.state = "COMPLETED"
            self._search(TrialClosed(request_id=trial.request_id), step)
        else:
            trial.state = "PAUSED"
