"""One experiment's host: everything the searcher keeps about one experiment, in one place.

An :class:`ExperimentHost` owns the experiment's run (the pure state), its event log, the
message ids it has applied (compact: :class:`~rung.searcher.eventlog.seen.SeenIds`), its
trial log store (log lines are kept apart from the event log, never fsync'd: they decide
nothing; see :meth:`ExperimentHost.apply`), its warnings, the last command sent to each
running trial attempt (:class:`~rung.searcher.host.answers.Answers`) and its outbox (the logged
decisions whose commands are not confirmed yet). It is synchronous: it decides and
writes, and the async service around it syncs the log, publishes and acknowledges.

An input applies whole or not at all (:meth:`ExperimentHost.apply`). If the search raises
anything while deciding, the state goes back to exactly what the log says, and the
experiment fails there, with the reason: that failure is the input's outcome, written to
the log like any decision, so replay reproduces it. A storage error (the log could not be
written) is not an outcome: it propagates, and the searcher stops (fail-stop).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import structlog

from rung.broker.schemas import LogLines, TrialExited
from rung.broker.schemas.envelope import Body
from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.file import FileEventLog
from rung.searcher.eventlog.reader import LogRecords, read_log
from rung.searcher.eventlog.records import (
    CreatedRecord,
    FailedRecord,
    InputRecord,
    Record,
    SnapshotRecord,
)
from rung.searcher.eventlog.replay import Replayed, describe_error, replay
from rung.searcher.eventlog.seen import SeenIds
from rung.searcher.eventlog.snapshots import StoredSnapshot
from rung.searcher.eventlog.trial_logs import TRIAL_LOG_FILE, TrialLogStore
from rung.searcher.host.answers import Answers
from rung.searcher.trials import Command, ExperimentRun, Step

__all__ = [
    "ENDED",
    "Applied",
    "ExperimentBrokenError",
    "ExperimentHost",
    "Outgoing",
    "experiment_id_for",
    "recover_seen",
]

log = structlog.get_logger("rung.searcher")

START: Final = "start"
# An experiment in one of these states is over: its context may be removed after the
# retention (rung.searcher.service.retention).
ENDED: Final = ("COMPLETED", "ERROR", "CANCELED")
# What a record of the event log holding a log_lines input has in its line (older logs).
LOG_LINES_MARK: Final = b'"type":"log_lines"'

# The message id of an input record, from its line (the fields' order is the models').
_MESSAGE_ID = re.compile(rb'"kind":"(?:input|failed)","message_id":("(?:[^"\\]|\\.)*")')


class ExperimentBrokenError(SearcherError):
    """The experiment's state cannot be rebuilt from its log in this process."""

    def __init__(self, experiment_id: str, reason: str) -> None:
        super().__init__(
            f"experiment {experiment_id} cannot be rebuilt from its log ({reason}); it is "
            "shown as ERROR until a restart recovers it"
        )
        self.experiment_id = experiment_id
        self.reason = reason


def experiment_id_for(request_key: str, attempt: int = 0) -> str:
    """The experiment id a create request gets: derived from its key, so that a create
    sent again (a retry, a redelivery) names the same experiment. ``attempt`` > 0 draws
    another id when a different request already has this one."""
    digest = hashlib.sha256(f"{request_key}#{attempt}".encode()).hexdigest()
    return f"exp-{digest[:8]}"


@dataclass(frozen=True)
class Outgoing:
    """A logged decision whose commands wait for the broker's confirms."""

    seq: int
    commands: tuple[Command, ...]


@dataclass(frozen=True)
class Applied:
    """What applying one input did: the record written, and what it caused."""

    seq: int
    step: Step
    duplicate: bool = False


@dataclass
class ExperimentHost:
    run: ExperimentRun
    log: FileEventLog
    context_root: Path | None = None
    request_key: str = ""
    seen: SeenIds = field(default_factory=SeenIds)
    warnings: list[str] = field(default_factory=list)
    answers: Answers = field(default_factory=Answers)
    # Logged decisions whose commands are not confirmed yet, oldest first.
    outbox: deque[Outgoing] = field(default_factory=deque)
    # Records appended and not yet handed to the live feed.
    unfed: list[Record] = field(default_factory=list)
    # Log lines, apart from the event log (trial-logs.jsonl beside it).
    trial_logs: TrialLogStore = field(init=False)
    # Older logs hold log_lines records up to this one (0: none).
    legacy_log_seq: int = 0
    # When the experiment ended (the input that ended it, or, after a restart, the last
    # input of its log); None while it runs.
    ended_at: float | None = None

    def __post_init__(self) -> None:
        if not self.seen.experiment_id:
            self.seen = SeenIds.restore(self.seen.state(), self.run.experiment_id)
        self.trial_logs = TrialLogStore(
            self.log.path.with_name(TRIAL_LOG_FILE), experiment_id=self.run.experiment_id
        )

    @property
    def experiment_id(self) -> str:
        return self.run.experiment_id

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        run: ExperimentRun,
        created: CreatedRecord,
        path: Path,
        *,
        owner: str,
        context_root: Path | None,
        warnings: list[str],
        at: float,
    ) -> ExperimentHost:
        """A new experiment: its log begins with ``created``, and the search starts.

        Nothing is durable yet: the caller syncs the log before it answers.
        """
        event_log = FileEventLog(path)
        host = cls(
            run,
            event_log,
            context_root=context_root,
            request_key=created.request_key,
            warnings=list(warnings),
        )
        host.append(created)
        event_log.take_over(owner, sync=False)
        host.apply(None, f"{run.experiment_id}/{START}", at=at)
        return host

    @classmethod
    def open(cls, path: Path, *, owner: str, context_root: Path | None) -> ExperimentHost | None:
        """Recover the experiment whose log is at ``path`` (None for an empty log).

        Raises what makes the log unusable (a corrupt log, a config or search method
        that cannot be built any more); the caller keeps such an experiment as broken.
        """
        event_log = FileEventLog(path)
        if not event_log.existing:
            event_log.close()
            return None
        try:
            # The owner record first, right after the records just read: a searcher it
            # takes over from, still appending, then has only that short while to do so
            # (replaying a long log in between made every try of a takeover lose).
            event_log.take_over(owner)
            replayed = replay(
                event_log.existing, snapshot=event_log.snapshot, context_root=context_root
            )
        except BaseException:
            event_log.close()
            raise
        try:
            return cls._recovered(event_log, replayed, context_root)
        except BaseException:
            event_log.close()  # (another searcher may take the log over meanwhile)
            raise

    @classmethod
    def _recovered(
        cls, event_log: FileEventLog, replayed: Replayed, context_root: Path | None
    ) -> ExperimentHost:
        host = cls(
            replayed.run,
            event_log,
            context_root=context_root,
            request_key=replayed.created.request_key,
            seen=recover_seen(replayed.run.experiment_id, event_log.existing, event_log.snapshot),
        )
        existing = event_log.existing
        if existing.contains(LOG_LINES_MARK):
            host.legacy_log_seq = len(existing)
        if host.run.state in ENDED:
            last = replayed.last_input
            host.ended_at = last.at if last is not None and last.at else time.time()
        host.answers.recover(host.run, event_log.existing)
        host._recover_outbox(replayed)
        if replayed.failure is not None:
            seq, reason, step = replayed.failure
            host._record_recovery_failure(seq, reason, step)
        if not host.started:  # created, then the searcher stopped before the start
            host.apply(None, f"{host.experiment_id}/{START}", at=time.time())
        return host

    @property
    def unconfirmed_from(self) -> int | None:
        """The oldest logged decision whose commands are not confirmed yet, or None."""
        return self.outbox[0].seq if self.outbox else None

    def _recover_outbox(self, replayed: Replayed) -> None:
        """The logged decisions whose commands may not have reached the broker.

        A decision's commands go out once its record is durable; records are appended
        meanwhile, and each names the oldest decision that was not confirmed when it was
        written (``unconfirmed_from``). ``unsent.json`` durably names the first record
        whose commands wait for the broker's return (the outbox writes it before handing
        them to its retry task). So the decisions that may not have gone out are the last
        input's, and every one from the last input's ``unconfirmed_from`` or the mark on:
        they go out again, in order. They keep their message ids, and receivers drop what
        they have (a ``run_trial`` of an attempt that ended since is stopped when a worker
        takes it, as any stale work is).
        """
        last = replayed.last_input
        marks = [
            m
            for m in (self.log.unsent_from, last.unconfirmed_from if last else None)
            if m is not None
        ]
        first = min(marks) if marks else None
        if first is None:
            records = [last] if last is not None else []
        else:
            existing = self.log.existing
            records = [
                r
                for r in (existing[i] for i in range(first - 1, len(existing)))
                if isinstance(r, InputRecord)
            ]
        for record in records:
            if record.commands:
                commands = tuple(Command(c.body, c.worker_id) for c in record.commands)
                self.outbox.append(Outgoing(record.seq, commands))

    def _record_recovery_failure(self, seq: int, reason: str, step: Step) -> None:
        """Folding the log failed at record ``seq`` (the search code raised on an input
        it had taken before): write the failure down with the kills it decided, as an
        input record without an input, so that a restart sends them again if need be."""
        message_id = f"{self.experiment_id}/recovery-failure/{seq}"
        log.error(
            "experiment failed while its log was replayed; its trials are stopped",
            experiment_id=self.experiment_id,
            seq=seq,
            error=reason,
        )
        record = InputRecord.of(
            self.log.seq + 1,
            message_id,
            None,
            step,
            at=time.time(),
            unconfirmed_from=self.unconfirmed_from,
        )
        self.append(record)
        self.seen.add(message_id)
        self._note_answers(record.seq, step.commands)
        if step.commands:
            self.outbox.append(Outgoing(record.seq, tuple(step.commands)))

    def _note_answers(self, seq: int, commands: list[Command]) -> None:
        """Remember what each running attempt was told, as it is decided (before an exit
        applied while it waits for the broker forgets the attempt; a duplicate completion
        gets no answer again while anything waits in the outbox)."""
        for index, command in enumerate(commands):
            self.answers.note(seq, index, command)

    # ------------------------------------------------------------------ inputs
    def apply(
        self, body: Body | None, message_id: str, *, at: float, sender: str | None = None
    ) -> Applied:
        """Apply one input (None: the experiment's start) and write it to the log, with
        ``sender`` (the broker-validated user that sent it, where one vouches).

        A message applied already changes nothing (``duplicate``). If deciding raises,
        the state is folded again from the log (exactly what it was before the input),
        and the experiment fails with the reason, as the input's outcome.
        """
        if isinstance(body, LogLines):
            return self._store_lines(body, message_id)
        if message_id in self.seen:
            return Applied(self.log.seq, Step(), duplicate=True)
        seq = self.log.seq + 1
        unconfirmed = self.unconfirmed_from
        try:
            step = self.run.start() if body is None else self.run.on_event(body)
            record = InputRecord.of(
                seq, message_id, body, step, at=at, sender=sender, unconfirmed_from=unconfirmed
            )
        except (Exception, SystemExit) as exc:  # a custom method's sys.exit() too
            reason = describe_error(exc)
            log.exception(
                "experiment failed: its search raised on an input; its trials are stopped",
                experiment_id=self.experiment_id,
                message_id=message_id,
                error=reason,
            )
            self.run = self.refold()
            step = self.run.fail(reason)
            record = InputRecord.of(
                seq, message_id, body, step, at=at, sender=sender, unconfirmed_from=unconfirmed
            )
        self.append(record)
        self.seen.add(message_id)
        self._note_answers(seq, step.commands)
        if isinstance(body, TrialExited):
            # The attempt's process exited: nothing waits for an answer any more.
            self.answers.ended(self.experiment_id, body.trial_id, body.attempt)
        if step.commands:
            self.outbox.append(Outgoing(seq, tuple(step.commands)))
        if self.ended_at is None and self.run.state in ENDED:
            self.ended_at = at
        return Applied(seq, step)

    def _store_lines(self, body: LogLines, message_id: str) -> Applied:
        """Log lines go to the trial log store, not to the event log (no record, no
        fsync: they decide nothing). Lines of a trial the experiment does not have, or
        from a process that does not own the running attempt, are not stored."""
        ignored = self._refused_lines(body)
        if ignored is not None:
            return Applied(self.log.seq, Step(ignored=ignored))
        stored = self.trial_logs.append(message_id, body)
        return Applied(self.log.seq, Step(), duplicate=not stored)

    def _refused_lines(self, body: LogLines) -> str | None:
        trial = self.run.by_id.get(body.trial_id)
        if trial is None:
            return f"unknown trial {body.trial_id}"
        if (
            trial.state == "RUNNING"
            and trial.attempt == body.attempt
            and trial.worker_id != body.worker_id
            and self.run.part_of(trial, body.worker_id) is None  # (another part's lines)
        ):
            return (
                f"trial {trial.trial_id} attempt {trial.attempt} runs on {trial.worker_id}, "
                f"not on {body.worker_id}"
            )
        return None

    def append(self, record: Record) -> None:
        """Write ``record`` (durable at the caller's next sync) and queue it for the feed."""
        self.log.append(record, sync=False)
        self.unfed.append(record)

    def refold(self) -> ExperimentRun:
        """The experiment's state as its log has it: the fold of every record written,
        from the snapshot, else from the start. If neither can be folded, the experiment
        cannot go on in this process (:class:`ExperimentBrokenError`): the input that led
        here was not applied, and nothing was written."""
        try:
            records = read_log(self.log.path)
        except Exception as exc:
            raise ExperimentBrokenError(self.experiment_id, describe_error(exc)) from exc
        try:
            return replay(records, snapshot=self.log.snapshot, context_root=self.context_root).run
        except Exception:
            log.exception("folding from the snapshot failed; folding the whole log")
        try:
            return replay(records, context_root=self.context_root).run
        except Exception as exc:
            raise ExperimentBrokenError(self.experiment_id, describe_error(exc)) from exc

    @property
    def started(self) -> bool:
        return f"{self.experiment_id}/{START}" in self.seen

    # ------------------------------------------------------------------ snapshots
    def snapshot_due(self, every: int) -> StoredSnapshot | None:
        """The state to store beside the log, when one is due (the caller stores it, off
        the event loop, once the log is durable up to it)."""
        if not self.log.snapshot_due(every):
            return None
        state = {**self.run.snapshot(), "seen": self.seen.state()}
        return self.log.capture_snapshot(self.experiment_id, state)

    def close(self) -> None:
        self.log.close()
        self.trial_logs.close()


def _message_id(records: LogRecords, index: int) -> str | None:
    """The message id of an input (or older failed) record, read from its line."""
    match = _MESSAGE_ID.search(records.raw(index))
    if match is not None:
        try:
            value = json.loads(match[1])
        except ValueError:
            value = None
        if isinstance(value, str):
            return value
    record = records[index]
    return record.message_id if isinstance(record, InputRecord | FailedRecord) else None


def recover_seen(
    experiment_id: str, records: LogRecords, snapshot: StoredSnapshot | None
) -> SeenIds:
    """The ids the experiment applied, as the log has them: those of the state that
    replay starts from (the snapshot, or a snapshot record of an older log), then those
    of every input record after it. ``snapshot`` must match ``records``."""
    covered, state = 0, None
    if snapshot is not None and snapshot.seq <= len(records):
        covered, state = snapshot.seq, snapshot.state
    for index in range(len(records) - 1, covered, -1):  # a snapshot record, older logs
        if records.kind(index) == "snapshot":
            record = records[index]
            if isinstance(record, SnapshotRecord):
                covered, state = index + 1, record.state
            break
    seen = SeenIds.restore(state.get("seen") if state else None, experiment_id)
    kinds: tuple[Literal["input", "failed"], ...] = ("input", "failed")
    for index in range(covered, len(records)):
        if records.kind(index) in kinds and (message_id := _message_id(records, index)):
            seen.add(message_id)
    return seen
