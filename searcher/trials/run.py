"""The trial lifecycle's rules: what each input (a start, a worker event, a user's
control, a lost worker, a failure of the search) does to an experiment's run. See
:mod:`rung.searcher.trials` for the rules in words."""

from __future__ import annotations

import hmac

from rung.broker.schemas import (
    CheckpointSaved,
    ControlExperiment,
    ControlTrial,
    ExitReason,
    GangPlanned,
    KillTrial,
    LogLines,
    MetricsReported,
    OpCompleted,
    PreemptTrial,
    ProgressReported,
    RoundTimeout,
    SlotsReserved,
    TrialExited,
    TrialStarted,
    WorkerLost,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.events import (
    ExitedReason,
    RoundTimedOut,
    Start,
    TrialCheckpointed,
    TrialClosed,
    TrialExitedEarly,
    TrialPaused,
    TrialProgress,
    ValidationCompleted,
)
from rung.searcher.ops import Close, Shutdown
from rung.searcher.trials.gang import GangRun
from rung.searcher.trials.gc import CheckpointCollector
from rung.searcher.trials.model import (
    ENDED,
    TERMINAL,
    ControlAction,
    Step,
    TrialRuntime,
)

__all__ = ["ExperimentRun"]


class ExperimentRun(CheckpointCollector, GangRun):
    """An experiment's run: inputs in, :class:`Step` out. Pure and synchronous."""

    # ------------------------------------------------------------------ entry points
    def start(self) -> Step:
        step = Step()
        self._search(Start(), step)
        self._collect(step)
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
                self._end_gang(trial, step)
                trial.worker_id = None
            trial.state = "CANCELED"
            trial.waiting = False
            trial.stopping = None
            trial.logs.append(f"[rung] the experiment failed: {reason}")
        step.ops.append(self.experiment.fail())
        self._collect(step)
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
                    self._hold(trial, step)  # if a worker starts it anyway, it is preempted
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

    def _maybe_canceled(self, step: Step, *, now: bool = False) -> None:
        """Once no trial runs (or at once, for a kill), every unfinished trial is canceled."""
        if self.state != "STOPPING_CANCELED":
            return
        live = [t for t in self.trials.values() if t.state not in TERMINAL]
        if not now and any(t.state == "RUNNING" for t in live):
            return
        for trial in live:
            if trial.state != "RUNNING":  # (a running one was killed with its parts)
                self._end_gang(trial, step)
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
        self._cancel_now(trial, step, "[rung] killed by the user")
        return step

    def _cancel_now(
        self, trial: TrialRuntime, step: Step, why: str, *, quiet: bool = False
    ) -> None:
        """End the trial CANCELED now: its process is killed if it runs (every part's,
        on several workers), what is held for it given back otherwise; the search hears
        it exited early (USER_CANCELED). ``quiet``: as for :meth:`_search`."""
        if trial.state == "RUNNING":
            self._tell(trial, KillTrial, step)
        else:
            self._end_gang(trial, step)
        trial.state = "CANCELED"
        trial.worker_id = None
        trial.waiting = False
        trial.stopping = None
        trial.logs.append(why)
        ended = TrialExitedEarly(request_id=trial.request_id, reason=ExitedReason.USER_CANCELED)
        self._search(ended, step, quiet=quiet)

    def on_event(self, body: Body) -> Step:
        step = self._dispatch(body)
        self._collect(step, body)
        return step

    def _dispatch(self, body: Body) -> Step:
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
        if isinstance(body, GangPlanned):
            return self.on_gang_planned(body)
        if isinstance(body, RoundTimeout):
            return self._round_timeout(body)
        step = self._on_trial_event(body)
        self._maybe_canceled(step)
        return step

    def _round_timeout(self, body: RoundTimeout) -> Step:
        """The service's timer: the search's open round has been open its limit. Only an
        active experiment's round times out (a paused one's waits for its activation).
        The stragglers the search closes are stopped now (killed if they run, dropped if
        they wait for a worker) and end CANCELED: they are replaced, and a hung process
        must not hold its slot, nor keep the experiment from ending."""
        step = Step()
        if self.state != "ACTIVE":
            step.ignored = f"round_timeout: the experiment is {self.state}"
            return step
        self._search(RoundTimedOut(round=body.round, after_s=body.after_s), step)
        closed = [op.request_id for op in step.ops if isinstance(op, Close)]
        # Those still waiting for admission first: ending a running one frees its slot,
        # which must go to the next round's trials, not to a straggler about to end.
        queued = self.experiment.state.queue
        closed.sort(key=lambda request_id: request_id not in queued)
        for request_id in closed:
            record = self.experiment.trials[request_id]
            trial = self.trials[request_id]
            if record.terminal or record.op_done or trial.state in TERMINAL:
                continue  # between operations: the close ends it already
            why = (
                f"[rung] stopped: round {body.round} of the search timed out after "
                f"{body.after_s:g} s before this trial finished it; a copy replaces it"
            )
            self._cancel_now(trial, step, why, quiet=True)
        return step

    def _on_trial_event(self, body: Body) -> Step:
        step = Step()
        trial = self.by_id.get(getattr(body, "trial_id", -1))
        if trial is None:
            step.ignored = f"unknown trial {getattr(body, 'trial_id', '?')}"
            return step
        if self._refused(trial, body, step):
            return step
        part = self.part_of(trial, getattr(body, "worker_id", None))
        if part is not None and self._gang_event(trial, body, part, step):
            return step
        match body:
            case TrialStarted():
                self._started(trial, body, step)
            case OpCompleted():
                self._op_completed(trial, body, step)
            case ProgressReported():
                self._search(TrialProgress(request_id=trial.request_id, units=body.units), step)
            case CheckpointSaved():
                self._checkpoint_saved(trial, body, step)
            case MetricsReported():
                if body.group == "validation":
                    trial.validation_metrics = dict(body.metrics)
                    metric = self._searcher_metric(body.metrics)
                    trial.validations.setdefault(body.steps_completed, metric)
            case LogLines():
                trial.logs.extend(f"[{line.stream}] {line.text}" for line in body.lines)
            case TrialExited():
                self._exited(trial, body, step)
            case _:
                step.ignored = f"{body.type} is not a trial event"
        return step

    def _checkpoint_saved(self, trial: TrialRuntime, body: CheckpointSaved, step: Step) -> None:
        owner = self.checkpoint_owner.get(body.uuid)
        if owner is not None and owner != trial.trial_id:
            # A trial reports only checkpoints it saved: one that names another trial's
            # would make that checkpoint its own (resumed from, copied, deleted with it).
            step.ignored = (
                f"trial {trial.trial_id}: checkpoint {body.uuid} was saved by trial {owner}; "
                "a trial reports only the checkpoints it saves"
            )
            return
        if body.steps_completed >= trial.latest_steps:
            trial.latest_checkpoint = body.uuid
            trial.latest_steps = body.steps_completed
        if body.uuid not in trial.checkpoints:
            trial.checkpoints[body.uuid] = body.steps_completed
            self.checkpoint_owner[body.uuid] = trial.trial_id
            self.held_checkpoints += 1
            # A method that copies checkpoints hears of those within the trial's current
            # operation: one saved past it (a script that trains further than asked) is
            # no round's end, and steps a script made up cannot mislead a copy.
            within = trial.target is not None and body.steps_completed <= trial.target
            if self.experiment.method.follows_checkpoints and within:
                saved = TrialCheckpointed(
                    request_id=trial.request_id,
                    uuid=body.uuid,
                    steps=body.steps_completed,
                )
                self._search(saved, step, quiet=True)

    def _refused(self, trial: TrialRuntime, body: Body, step: Step) -> bool:
        """True (and why in ``step``) when the event must not touch the trial: a start
        without its attempt's token, an event of another attempt, after the end, or not
        from the attempt's running process."""
        if isinstance(body, TrialStarted) and self._unsent(trial, body, step):
            return True
        return (
            self._stale(trial, body, step)
            or self._after_the_end(trial, body, step)
            or self._fenced(trial, body, step)
        )

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
            if (t.state == "RUNNING" and t.worker_id == body.worker_id)
            or (t.state in ("QUEUED", "RUNNING") and self.part_of(t, body.worker_id) is not None)
        ]
        if not lost:
            step.ignored = f"worker {body.worker_id} runs no trial of this experiment"
            return step
        message = f"worker {body.worker_id} lost: nothing from it for {body.silent_s:.0f} s"
        for trial in lost:
            # Should the worker come back, its process is killed (every part's, and the
            # slots held for them given back, for a trial on several workers).
            if trial.gang is None:
                self._tell(trial, KillTrial, step)
            else:
                self._end_gang(trial, step)
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

    def _unsent(self, trial: TrialRuntime, body: TrialStarted, step: Step) -> bool:
        """True (and the reason in ``step``) when the start does not carry the token of
        its attempt's ``run_trial``: its sender never received that command (experiments
        older than start tokens have none, and take every start as before). Nothing is
        sent back: the worker it names may be one that really runs the trial."""
        expected = self.start_token(trial.trial_id, body.attempt)
        if expected is None:
            return False
        token = body.start_token
        if token is not None and hmac.compare_digest(token, expected):
            return False
        which = "no start token" if token is None else "a start token that is not its own"
        step.ignored = (
            f"trial {trial.trial_id} attempt {body.attempt}: trial_started from worker "
            f"{body.worker_id} carries {which}; only a worker that received the attempt's "
            "run_trial (and echoes its start_token) may start it"
        )
        return True

    def _fenced(self, trial: TrialRuntime, body: Body, step: Step) -> bool:
        """True (and the reason in ``step``) when the event must not touch the trial.

        Every event but a start must come from the attempt's process: the trial is
        RUNNING, on the worker whose ``trial_started`` the run took. A worker reports an
        attempt's events in order, its start first and its exit last, so nothing of a
        real process arrives before its start was taken, or after its exit (a worker
        declared lost, or a process killed, reports into the void: its trial has left
        RUNNING, or runs another attempt)."""
        worker = getattr(body, "worker_id", None)
        part = self.part_of(trial, worker)
        if part is not None:
            verdict = self._gang_fenced(trial, body, part, step)
            if verdict is not None:
                return verdict
        elif isinstance(body, SlotsReserved):
            step.ignored = (
                f"trial {trial.trial_id} attempt {trial.attempt}: slots_reserved from "
                f"{worker}, which runs no part of it"
            )
            return True
        if trial.state == "RUNNING" and worker != trial.worker_id:
            # A second process of the same attempt (a re-sent run_trial after a searcher
            # crash), or a worker that never ran it: it does not own the trial. Ask a
            # second process to stop; ignore what it reports.
            step.ignored = (
                f"trial {trial.trial_id} attempt {trial.attempt} runs on "
                f"{trial.worker_id}, not on {worker}"
            )
            if isinstance(body, TrialStarted):
                self._tell(trial, PreemptTrial, step, worker=body.worker_id)
            return True
        # Logs older than start tokens (no secret) keep their rule, so that they replay
        # to the state their searcher had: only an exit and a completion were fenced.
        fenced = self.start_secret is not None or isinstance(body, TrialExited | OpCompleted)
        if fenced and not isinstance(body, TrialStarted) and trial.state != "RUNNING":
            # Before the attempt's start was taken (QUEUED), or after it ended: no
            # process of this attempt owns the trial.
            step.ignored = (
                f"trial {trial.trial_id} is {trial.state}, not running: a {body.type} of "
                f"attempt {trial.attempt} from worker {worker} is ignored"
            )
            return True
        return False

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
        trial.validations.setdefault(body.length, body.metric)
        self._search(
            ValidationCompleted(
                request_id=trial.request_id, length=body.length, metric=body.metric
            ),
            step,
        )
        if trial.waiting:
            # No next operation for it now: close it, or pause it to free its slots.
            self._stop(trial, "close" if trial.closing else "pause", step)

    def _exited(self, trial: TrialRuntime, body: TrialExited, step: Step) -> None:
        self._end_gang(trial, step, skip=body.worker_id)
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
            if self.experiment.method.follows_checkpoints:
                self._search(TrialPaused(request_id=trial.request_id), step, quiet=True)
