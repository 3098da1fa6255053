"""The mechanics of an experiment's run: its state and snapshots, the bridge to the
experiment layer (search events in, operations out), and the commands that operations
become (queue a trial, continue, pause or close it, stop a process). The rules that
decide what each input does are in :mod:`rung.searcher.trials.run`."""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from typing import Any, Literal

from rung.broker.schemas import (
    CloseTrial,
    ContinueTrial,
    KillTrial,
    PauseTrial,
    PreemptTrial,
    RunTrial,
)
from rung.searcher.events import (
    SearchEvent,
    TrialClosed,
)
from rung.searcher.experiment import Experiment, ExperimentSnapshot
from rung.searcher.ops import Close, Create, Operation, Shutdown, ValidateAfter
from rung.searcher.trials.model import (
    Command,
    RunState,
    Step,
    TrialRuntime,
)

__all__ = ["RunBase"]


class RunBase:
    """An experiment's trials and state, and the mechanics the lifecycle's rules use."""

    def __init__(
        self,
        experiment_id: str,
        experiment: Experiment,
        *,
        context_hash: str,
        checkpoint_root: str,
        warm_start_root: str | None = None,
        start_secret: str | None = None,
    ) -> None:
        self.experiment_id = experiment_id
        self.experiment = experiment
        self.context_hash = context_hash
        # Where this experiment's trials save checkpoints: ``<storage>/<experiment id>``
        # (a shared ``<storage>`` in logs written before per-experiment roots).
        self.checkpoint_root = checkpoint_root
        # The root of the experiment that holds the warm start's source checkpoint
        # (``searcher.source_checkpoint_uuid``), as the searcher found it at creation.
        self.warm_start_root = warm_start_root
        # The experiment's secret (drawn at creation, in its ``created`` record) that each
        # attempt's start token is derived from; None in logs older than start tokens,
        # whose attempts have no token.
        self.start_secret = start_secret
        self.trials: dict[str, TrialRuntime] = {}
        self.by_id: dict[int, TrialRuntime] = {}
        self.state: RunState = "ACTIVE"
        # Why the experiment failed (state ERROR), or None.
        self.error: str | None = None
        # How many checkpoints the trials hold in all (their ``checkpoints``), kept as
        # they change: garbage collection skips its pass over every trial while none
        # does. Derived, never stored: a restore counts it again.
        self.held_checkpoints = 0
        # Which trial saved each checkpoint the trials hold (derived, like the count).
        self.checkpoint_owner: dict[str, int] = {}
        # What garbage collection needs to decide only the trials that may have changed
        # (rung.searcher.trials.gc), all derived like the count: the trials it has not
        # seen final yet, those an input named since it last decided, those that kept a
        # checkpoint only because it was protected, and which trials were created from
        # each checkpoint (a clone's or a warm start's source).
        self.gc_live: set[int] = set()
        self.gc_named: set[int] = set()
        self.gc_spared: set[int] = set()
        self.gc_sources: dict[str, list[str]] = {}

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
        self.held_checkpoints = sum(len(t.checkpoints) for t in self.trials.values())
        self.checkpoint_owner = {
            uuid: t.trial_id for t in self.trials.values() for uuid in t.checkpoints
        }
        self.gc_live = set(self.by_id)
        self.gc_named = set()
        self.gc_spared = set()
        self.gc_sources = {}
        for request_id, record in self.experiment.trials.items():
            if record.create.checkpoint is not None:
                self.gc_sources.setdefault(record.create.checkpoint, []).append(request_id)

    def start_token(self, trial_id: int, attempt: int) -> str | None:
        """The token a ``run_trial`` for ``attempt`` carries and its ``trial_started``
        must echo: HMAC-SHA256 of the attempt under the experiment's secret, so only a
        worker that received that ``run_trial`` knows it; None without a secret."""
        if self.start_secret is None:
            return None
        message = f"{self.experiment_id}/{trial_id}/{attempt}".encode()
        digest = hmac.new(self.start_secret.encode(), message, hashlib.sha256).hexdigest()
        return digest[:32]

    def _tell(
        self,
        trial: TrialRuntime,
        cls: type[PreemptTrial | KillTrial],
        step: Step,
        *,
        worker: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Stop a process of ``trial``: by default its current attempt, on its worker (a
        kill of an attempt that runs on several workers goes to each of them)."""
        body = cls(
            experiment_id=self.experiment_id,
            trial_id=trial.trial_id,
            attempt=trial.attempt if attempt is None else attempt,
        )
        if worker is None and cls is KillTrial and trial.gang is not None:
            step.commands.extend(Command(body, part.worker_id) for part in trial.gang)
            return
        step.commands.append(Command(body, worker or trial.worker_id))

    def _end_gang(self, trial: TrialRuntime, step: Step, *, skip: str | None = None) -> None:
        """The attempt's parts on several workers end with it: each worker kills its part's
        process, or gives back the slots it holds for it (but ``skip``, whose part ended)."""
        if trial.gang is None:
            return
        kill = KillTrial(
            experiment_id=self.experiment_id, trial_id=trial.trial_id, attempt=trial.attempt
        )
        step.commands.extend(
            Command(kill, part.worker_id) for part in trial.gang if part.worker_id != skip
        )
        trial.gang = None
        trial.gang_reserved = []
        trial.gang_ports = None
        trial.gang_done = []

    def _hold(self, trial: TrialRuntime, step: Step | None = None) -> None:
        """Keep the trial's operation, but run nothing until the experiment is activated."""
        if step is not None:
            self._end_gang(trial, step)
        trial.state = "PAUSED"
        trial.worker_id = None
        trial.waiting = False
        trial.stopping = None

    # ------------------------------------------------------------------ the search
    def _search(self, event: SearchEvent, step: Step, *, quiet: bool = False) -> None:
        """Apply ``event`` and what its operations cause; ``quiet``: an event the run
        adds for the method's sake, whose refusal does not make the input ignored."""
        pending: deque[SearchEvent] = deque([event])
        while pending:
            current = pending.popleft()
            decision = self.experiment.apply(current)
            step.notes += decision.notes
            if decision.ignored:
                if current is event and not quiet:
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
                self.gc_live.add(record.trial_id)
                if op.checkpoint is not None:
                    self.gc_sources.setdefault(op.checkpoint, []).append(op.request_id)
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
                elif (
                    trial.state in ("PENDING", "PAUSED")
                    and not self._holds_op(trial)
                    and not self.experiment.trials[trial.request_id].queued
                ):
                    # (A trial held by a paused experiment, or whose operation waits for
                    # admission, closes after its operation.)
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
        step.commands.append(Command(self._run_trial(trial)))

    def _run_trial(self, trial: TrialRuntime) -> RunTrial:
        """The ``run_trial`` of the trial's current attempt."""
        assert trial.target is not None  # noqa: S101 (queued with an operation only)
        config = self.experiment.config
        record = self.experiment.trials[trial.request_id]
        entrypoint = config.entrypoint or []
        max_length = getattr(config.searcher, "max_length", None)
        source = record.create.checkpoint
        # A warm start's checkpoint lies in another experiment's root; a clone's
        # (population-based training) in this one's.
        warm_start = getattr(config.searcher, "source_checkpoint_uuid", None)
        from_source = source is not None and source == warm_start
        from_source = from_source and trial.latest_checkpoint == source
        return RunTrial(
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
            source_root=self.warm_start_root if from_source else None,
            start_token=self.start_token(trial.trial_id, trial.attempt),
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

    def _holds_op(self, trial: TrialRuntime) -> bool:
        return self.experiment.trials[trial.request_id].holds_op
