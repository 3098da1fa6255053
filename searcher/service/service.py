"""The searcher service: consumes worker events and client requests, decides, publishes.

For every message: decode it (a malformed one goes to the dead-letter queue with its
reason, and the service keeps going), apply it to the experiment's pure state, append the
input and everything it caused to the experiment's event log (written and fsync'd),
publish the resulting commands with confirms, and only then acknowledge the message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from rung.broker.archive import ArchiveError, context_hash, extract, validate
from rung.broker.errors import BrokerError, DecodeError, UnroutableError
from rung.broker.port import Broker, Delivery
from rung.broker.schemas import (
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    DescribeExperiment,
    Envelope,
    ExitReason,
    GetContext,
    ListExperiments,
    ListWorkers,
    OpCompleted,
    ReadRecords,
    RpcError,
    RpcReply,
    TrialExited,
    WorkerHeartbeat,
    WorkerInfo,
    WorkerLost,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body
from rung.broker.topology import Topology
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.errors import ConfigError, ConfigProblem, SearcherError
from rung.searcher.eventlog.file import FileEventLog, StaleOwnerError
from rung.searcher.eventlog.records import (
    CreatedRecord,
    FailedRecord,
    InputRecord,
    Record,
)
from rung.searcher.eventlog.replay import replay
from rung.searcher.experiment import Experiment
from rung.searcher.methods import build_method
from rung.searcher.service.answers import Answer, Answers
from rung.searcher.service.failpoints import crash_point
from rung.searcher.service.statelock import StateDirectoryBusyError, StateLock
from rung.searcher.service.summary import summarise
from rung.searcher.trials import Command, ExperimentRun, Step

__all__ = ["SearcherService", "StateDirectoryBusyError"]

log = structlog.get_logger("rung.searcher")


class _Refused(Exception):  # noqa: N818
    def __init__(self, message: str, problems: list[ConfigProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [ConfigProblem("", message)]


class _NotFound(Exception):  # noqa: N818
    """What a request names does not exist; the message says what."""


class SearcherService:
    def __init__(
        self,
        broker: Broker,
        state_dir: Path,
        *,
        snapshot_every: int = 200,
        worker_timeout_s: float = 30.0,
        shared_state_dir: bool = False,
        verify_worker_users: bool = False,
        health_file: Path | None = None,
    ) -> None:
        # Touched on every tick of the timers, which run under the service's lock: a
        # stale file means a stuck service (rung healthcheck reads it).
        self.health_file = health_file
        self.broker = broker
        # Refuse a worker event whose worker id is not its publisher's (validated) user.
        self.verify_worker_users = verify_worker_users
        self.state_dir = state_dir
        self.snapshot_every = snapshot_every
        self.worker_timeout_s = worker_timeout_s
        # On shared storage flock cannot be trusted: the owner epochs in the logs fence.
        self.shared_state_dir = shared_state_dir
        # When each worker was last heard from (monotonic clock): any event counts.
        self._last_heard: dict[str, float] = {}
        self.runs: dict[str, ExperimentRun] = {}
        self.logs: dict[str, FileEventLog] = {}
        self.warnings: dict[str, list[str]] = {}
        self.workers: dict[str, WorkerHeartbeat] = {}
        self._lock = asyncio.Lock()
        self._feed_wake = asyncio.Event()
        # Event handlers under way; shutdown waits for them to settle.
        self._handling = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._owner = f"{socket.gethostname()}/{os.getpid()}"
        # Experiments another searcher took over: their events are left to it.
        self._given_up: set[str] = set()
        self._feed: list[tuple[str, Record]] = []
        # Per experiment, the ids of the messages already applied (rebuilt from the log).
        self._seen: dict[str, set[str]] = {}
        self._stop = asyncio.Event()
        # Logged decisions whose commands could not be published yet, oldest first.
        self._unsent: list[tuple[ExperimentRun, Step, int]] = []
        self._flushing = False
        # The last command sent to each running trial attempt, to send again when asked.
        self._answers = Answers()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        topology = self.broker.topology
        lock = None if self.shared_state_dir else StateLock(self.state_dir)
        try:
            await self._serve(topology, stop)
        finally:
            if lock is not None:
                lock.release()

    async def _serve(self, topology: Topology, stop: asyncio.Event) -> None:
        (self.state_dir / "contexts").mkdir(parents=True, exist_ok=True)
        await self._recover()
        intake = [
            await self.broker.subscribe(topology.rpc_queue, self._on_rpc, prefetch=4),
            await self.broker.subscribe(topology.events_queue, self._on_event, prefetch=64),
            await self.broker.subscribe(topology.heartbeats_queue, self._on_heartbeat, prefetch=64),
        ]
        log.info("searcher ready", state_dir=str(self.state_dir), prefix=topology.prefix)
        watchdog = asyncio.create_task(self._watch_workers(), name="worker-watchdog")
        feed = asyncio.create_task(self._pump_feed(), name="live-feed")
        self._flush_feed()  # what recovery appended
        await stop.wait()
        # Stop intake and timers, let the message being handled finish, close the logs.
        for subscription in intake:
            await subscription.cancel()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        # Events applied but still settling (syncing, publishing) finish first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=30)
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        with contextlib.suppress(TimeoutError):  # the last records, best effort
            await asyncio.wait_for(self._publish_feed(), timeout=10)
        async with self._lock:
            for event_log in self.logs.values():
                event_log.close()
        log.info("searcher stopped")

    # ------------------------------------------------------------------ recovery
    async def _recover(self) -> None:
        """Rebuild every experiment from its log; re-send what may not have gone out.

        Each input's commands are published before the next input is handled, so
        normally only the last record's commands can be undelivered. While the broker was
        unreachable, ``unsent.json`` marks the first record whose commands waited: all
        from there on go out again, in order. Either way they keep their message ids, and
        workers and the searcher drop the ones they already have.
        """
        for path in sorted((self.state_dir / "experiments").glob("*/events.jsonl")):
            event_log = FileEventLog(path)
            if not event_log.existing:
                event_log.close()
                continue
            replayed = replay(
                event_log.existing,
                snapshot=event_log.snapshot,
                context_root=self.state_dir / "contexts",
            )
            event_log.take_over(self._owner)
            run = replayed.run
            self.runs[run.experiment_id] = run
            self.logs[run.experiment_id] = event_log
            self._seen[run.experiment_id] = replayed.seen
            self._answers.recover(run, event_log.existing)
            resend = self._undelivered(event_log, replayed.last_input)
            for record in resend:
                step = Step(commands=[Command(c.body, c.worker_id) for c in record.commands])
                self._queue(run, step, record.seq)
                await self._flush_unsent()
            log.info(
                "experiment recovered from its log",
                experiment_id=run.experiment_id,
                state=run.state,
                records=event_log.seq,
                trials=len(run.trials),
                resent=sum(len(r.commands) for r in resend),
            )

    @staticmethod
    def _undelivered(event_log: FileEventLog, last: InputRecord | None) -> list[InputRecord]:
        """The logged decisions whose commands may not have reached the broker."""
        first = event_log.unsent_from
        if first is None:
            return [last] if last is not None and last.commands else []
        records = event_log.existing[first - 1 :]
        return [r for r in records if isinstance(r, InputRecord) and r.commands]

    # ------------------------------------------------------------------ publishing
    async def _publish(self, run: ExperimentRun, step: Step, seq: int) -> None:
        """Publish a decision's commands and wait for their confirms.

        Commands to different destinations (the work queue, each worker) wait for their
        confirms together; those to one destination go in order, one after another. If
        any fails, the error is raised once all have settled, and the whole decision is
        sent again later (its commands keep their ids, so receivers drop what they have).
        """
        by_key: dict[str | None, list[tuple[Command, Envelope]]] = {}
        for index, command in enumerate(step.commands):
            envelope = Envelope(
                message_id=f"{run.experiment_id}/{seq}/{index}",
                experiment_id=run.experiment_id,
                seq=seq,
                body=command.body,
            )
            self._answers.note(seq, index, command)
            by_key.setdefault(command.worker_id, []).append((command, envelope))

        async def in_order(commands: list[tuple[Command, Envelope]]) -> None:
            for command, envelope in commands:
                await self._send(run, command, envelope)

        if len(by_key) == 1:
            (commands,) = by_key.values()
            await in_order(commands)
            return
        outcomes = await asyncio.gather(
            *(in_order(commands) for commands in by_key.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _send(self, run: ExperimentRun, command: Command, envelope: Envelope) -> None:
        topology = self.broker.topology
        key = (
            topology.WORK_KEY
            if command.worker_id is None
            else topology.worker_key(command.worker_id)
        )
        try:
            await self.broker.publish(
                topology.commands_exchange,
                key,
                encode(envelope),
                message_id=envelope.message_id,
            )
        except UnroutableError:
            await self._worker_gone(run, command)

    async def _answer_again(self, run: ExperimentRun, completion: OpCompleted) -> None:
        """A trial re-sent its completion: its answer may have been lost with its
        worker's private queue. Send the command it was answered with again, under its
        own message id (see :mod:`searcher.service.answers`)."""
        answer: Answer | None = self._answers.to_repeat(run, completion)
        if answer is None or self._unsent:  # not answered yet, or the answer still waits
            return
        log.info(
            "a trial asked again for the answer to its completed operation; re-sending it",
            experiment_id=run.experiment_id,
            trial_id=completion.trial_id,
            worker_id=completion.worker_id,
            message_id=answer.message_id,
            type=answer.command.body.type,
        )
        envelope = Envelope(
            message_id=answer.message_id,
            experiment_id=run.experiment_id,
            seq=answer.seq,
            body=answer.command.body,
        )
        try:
            await self._send(run, answer.command, envelope)
        except BrokerError as exc:  # the trial asks again later
            log.warning("could not re-send an answer", error=str(exc))

    async def _worker_gone(self, run: ExperimentRun, command: Command) -> None:
        """The trial's worker is gone: its attempt ended; it resumes from its checkpoint."""
        body = command.body
        message_id = f"lost/{body.trial_id}/{body.attempt}"
        if message_id in self._seen.get(run.experiment_id, set()):
            return  # already applied: this is a re-send of the same command
        log.warning(
            "the worker running a trial is gone; the trial will resume elsewhere",
            experiment_id=run.experiment_id,
            trial_id=getattr(body, "trial_id", None),
            worker_id=command.worker_id,
        )
        lost = TrialExited(
            experiment_id=run.experiment_id,
            trial_id=body.trial_id,
            attempt=body.attempt,
            worker_id=command.worker_id or "",
            reason=ExitReason.PREEMPTED,
            message=f"worker {command.worker_id} is gone",
        )
        await self._apply(run, lost, message_id=message_id)

    def _append(self, experiment_id: str, record: Record) -> Record:
        """Append (in the file and in memory), and queue the record for the live feed.

        Not durable yet: :meth:`_durable` is, and it comes before anything the record
        caused is published and before its input is acknowledged. Nothing between the
        two awaits, so a handler cancelled while the disk syncs leaves the record, its
        message id and its commands where the next input or timer tick finds them.
        """
        self.logs[experiment_id].append(record, sync=False)
        self._feed.append((experiment_id, record))
        return record

    def _flush_feed(self) -> None:
        """Have the live feed publish what was appended; it runs beside the handlers, so
        that no input waits for the feed's confirms."""
        self._feed_wake.set()

    async def _pump_feed(self) -> None:
        while True:
            await self._feed_wake.wait()
            self._feed_wake.clear()
            await self._publish_feed()

    async def _publish_feed(self) -> None:
        """Publish the appended records that are durable, in order; nobody listening is
        fine, and a record the feed misses is in the log (observers read it from there)."""
        pending, self._feed = self._feed, []
        ready = []
        for experiment_id, record in pending:
            event_log = self.logs.get(experiment_id)
            if event_log is not None and record.seq > event_log.durable_seq:
                self._feed.append((experiment_id, record))  # next time, once on disk
            else:
                ready.append((experiment_id, record))
        # Sent in order on one channel; their confirms are awaited together.
        await asyncio.gather(*(self._publish_record(eid, record) for eid, record in ready))

    async def _publish_record(self, experiment_id: str, record: Record) -> None:
        try:
            await self.broker.publish(
                self.broker.topology.feed_exchange,
                experiment_id,
                record.model_dump_json().encode(),
                message_id=f"{experiment_id}/record/{record.seq}",
                mandatory=False,
            )
        except BrokerError as exc:
            log.warning(
                "live feed publish failed; the log has the record",
                experiment_id=experiment_id,
                seq=record.seq,
                error=str(exc),
            )

    def _record(self, run: ExperimentRun, step: Step, *, message_id: str, body: Body | None) -> int:
        """Write the input and all it caused; return its sequence number."""
        event_log = self.logs[run.experiment_id]
        record = InputRecord.of(event_log.seq + 1, message_id, body, step, at=time.time())
        seq = self._append(run.experiment_id, record).seq
        # Applied now: a redelivery of this message is a duplicate from here on.
        seen = self._seen.setdefault(run.experiment_id, set())
        seen.add(message_id)
        if event_log.snapshot_due(self.snapshot_every):
            event_log.write_snapshot(run.experiment_id, {**run.snapshot(), "seen": sorted(seen)})
        return seq

    def _queue(self, run: ExperimentRun, step: Step, seq: int) -> None:
        """Queue a logged decision's commands, to go out after any that still wait.

        :meth:`_flush_unsent` publishes them, each once its record is durable. If the
        broker stays unreachable past the publish timeout, they wait here and go out at
        the next input or timer tick: the decision is in the log already, and the message
        that caused it is acknowledged, so it must not be lost or applied again.
        """
        if step.commands:
            self._unsent.append((run, step, seq))

    async def _flush_unsent(self) -> None:
        if self._flushing:
            # Re-entered from a publish (a command to a gone worker is applied as an
            # input): the flush already running sends what that queues, after its own.
            return
        self._flushing = True
        try:
            await self._flush_in_order()
        finally:
            self._flushing = False

    async def _flush_in_order(self) -> None:
        while self._unsent:
            waiting, waiting_step, waiting_seq = self._unsent[0]
            if (event_log := self.logs.get(waiting.experiment_id)) is not None:
                await event_log.sync_async()  # write first, then publish
            try:
                await self._publish(waiting, waiting_step, waiting_seq)
            except BrokerError as exc:
                self._mark_unsent()
                log.warning(
                    "commands not published yet; they go out once the broker is back",
                    experiment_id=waiting.experiment_id,
                    seq=waiting_seq,
                    waiting=len(self._unsent),
                    error=str(exc),
                )
                return
            self._unsent.pop(0)
        for event_log in self.logs.values():
            event_log.clear_unsent()

    def _mark_unsent(self) -> None:
        """Write down, before the input is acknowledged, which decisions still wait: a
        restart re-sends them even if this process dies before the broker is back."""
        for run, _, seq in self._unsent:
            if (event_log := self.logs.get(run.experiment_id)) is not None:
                event_log.mark_unsent(seq)

    async def _apply(
        self, run: ExperimentRun, body: Body, message_id: str, *, defer_sync: bool = False
    ) -> Step | None:
        """Apply one input: decide, write it down, publish what it caused.

        Everything up to the wait for the disk happens with no await, so a handler
        cancelled while the disk syncs leaves the record, its message id and its commands
        where the next input or timer tick finds them. The whole of it runs under the
        service's lock, so that only the last record of a log can have commands not yet
        published: a restart re-sends those (see :meth:`_undelivered`).

        With ``defer_sync``, an input that caused no command (a checkpoint, a metric, a
        start: most inputs) is not synced here: the caller syncs it after releasing the
        lock and before acknowledging it, so that other inputs are applied meanwhile and
        share the fsync. A later decision's sync covers it before that decision goes out.
        """
        try:
            step = run.on_event(body)
        except SearcherError as exc:
            # A search method broke its rules (a custom one, say): the experiment fails,
            # with the reason in its log; the service and other experiments go on.
            run.state = "ERROR"
            event_log = self.logs[run.experiment_id]
            self._append(
                run.experiment_id,
                FailedRecord(
                    seq=event_log.seq + 1,
                    at=time.time(),
                    message_id=message_id,
                    input=body,
                    error=str(exc),
                ),
            )
            self._seen.setdefault(run.experiment_id, set()).add(message_id)
            await self.logs[run.experiment_id].sync_async()
            log.error(  # noqa: TRY400 (the reason is the message; no traceback wanted)
                "experiment failed: its search method broke a rule",
                experiment_id=run.experiment_id,
                error=str(exc),
            )
            return None
        seq = self._record(run, step, message_id=message_id, body=body)
        if isinstance(body, TrialExited) and not step.ignored:
            self._answers.ended(run.experiment_id, body.trial_id, body.attempt)
        self._queue(run, step, seq)
        if step.ignored:
            log.debug("event ignored", experiment_id=run.experiment_id, reason=step.ignored)
        if run.state != "ACTIVE" and any(op.type == "shutdown" for op in step.ops):
            log.info("experiment finished", experiment_id=run.experiment_id, state=run.state)
        if defer_sync and not step.commands and not self._unsent:
            return step
        await self._settle(run)
        return step

    async def _settle(self, run: ExperimentRun) -> None:
        """Make what was applied durable, then publish the commands that wait."""
        if (event_log := self.logs.get(run.experiment_id)) is not None:
            await event_log.sync_async()
        crash_point("appended")
        await self._flush_unsent()

    # ------------------------------------------------------------------ events
    async def _on_event(self, delivery: Delivery) -> None:
        self._handling += 1
        self._idle.clear()
        try:
            await self._handle_event(delivery)
        finally:
            self._handling -= 1
            if self._handling == 0:
                self._idle.set()

    async def _handle_event(self, delivery: Delivery) -> None:
        try:
            envelope = decode(delivery.body)
        except DecodeError as exc:
            log.warning(
                "malformed event sent to the dead-letter queue",
                error=str(exc),
                message_id=delivery.message_id,
            )
            await delivery.dead_letter(str(exc))
            return
        body = envelope.body
        if isinstance(body, WorkerLost):
            reason = "worker_lost is the searcher's own timer input; a worker cannot send it"
            log.warning("refused event sent to the dead-letter queue", reason=reason)
            await delivery.dead_letter(reason)
            return
        if (refused := self._impostor(body, delivery)) is not None:
            log.warning("refused event sent to the dead-letter queue", reason=refused)
            await delivery.dead_letter(refused)
            return
        if worker_id := getattr(body, "worker_id", None):
            self._last_heard[worker_id] = time.monotonic()
        experiment_id = getattr(body, "experiment_id", "")
        if experiment_id in self._given_up:
            # Leave it to the searcher that owns the experiment now (pausing so that a
            # message nobody else takes does not spin).
            await asyncio.sleep(0.5)
            await delivery.requeue()
            return
        if not isinstance(body, WorkerHeartbeat):
            crash_point("consumed")
        async with self._lock:
            run = self.runs.get(experiment_id)
            seen = self._seen.setdefault(run.experiment_id, set()) if run else set()
            if isinstance(body, WorkerHeartbeat):
                self.workers[body.worker_id] = body
            elif run is None:
                log.warning(
                    "event for an unknown experiment; dropped",
                    type=body.type,
                    experiment_id=getattr(body, "experiment_id", None),
                )
            elif envelope.message_id in seen:
                log.debug("duplicate event dropped", message_id=envelope.message_id)
                if isinstance(body, OpCompleted):
                    await self._answer_again(run, body)
            else:
                try:
                    await self._apply(run, body, envelope.message_id, defer_sync=True)
                except StaleOwnerError as exc:
                    self._give_up(run, exc)
                    await delivery.requeue()
                    return
                crash_point("published")
            event_log = self.logs.get(experiment_id)
        # Write first: what this input appended is durable before it is acknowledged
        # (the fsync, shared with the inputs applied meanwhile, is outside the lock).
        if event_log is not None and event_log.durable_seq < event_log.seq:
            await event_log.sync_async()
            crash_point("appended")
        self._flush_feed()
        await delivery.ack()

    def _impostor(self, body: Body, delivery: Delivery) -> str | None:
        """Why a worker's message is refused under ``verify_worker_users``, or None.

        The broker vouches for ``user_id`` (it refuses a message whose user_id is not its
        connection's user); a worker may speak for itself only: its id is its user's
        name, or that name, a dot and a suffix (a pool of workers sharing a user).
        """
        worker_id = getattr(body, "worker_id", None)
        if not self.verify_worker_users or worker_id is None:
            return None
        user = delivery.user_id
        if user is not None and (worker_id == user or worker_id.startswith(f"{user}.")):
            return None
        return (
            f"worker id {worker_id!r} was sent by broker user {user!r}: a worker may only "
            f"send as itself (worker id = its user, or <user>.<suffix>); start the worker "
            f"with --id {user}.<name>, or with a user of its own"
        )

    async def _on_heartbeat(self, delivery: Delivery) -> None:
        """Liveness only: who is alive, with what slots. Nothing to log or apply."""
        try:
            body = decode(delivery.body).body
        except DecodeError as exc:
            log.warning("malformed heartbeat dropped", error=str(exc))
            await delivery.ack()
            return
        if (refused := self._impostor(body, delivery)) is not None:
            log.warning("refused heartbeat dropped", reason=refused)
        elif isinstance(body, WorkerHeartbeat):
            self.workers[body.worker_id] = body
            self._last_heard[body.worker_id] = time.monotonic()
        else:
            log.warning("not a heartbeat, on the heartbeats queue; dropped", type=body.type)
        await delivery.ack()

    # ------------------------------------------------------------------ timers
    async def _watch_workers(self) -> None:
        """Declare lost the workers that went silent while running trials.

        The clock is read here, in the shell; the decision reaches the pure core as a
        ``worker_lost`` input, logged like any other, so replay needs no clock.
        """
        tick = max(self.worker_timeout_s / 4, 0.05)
        while True:
            due = time.monotonic() + tick
            await asyncio.sleep(tick)
            async with self._lock:
                self._forgive_own_stall(time.monotonic() - due)
                await self._flush_unsent()
                for run in list(self.runs.values()):
                    self._answers.prune(run)
                    try:
                        await self._check_workers(run, time.monotonic())
                    except StaleOwnerError as exc:
                        self._give_up(run, exc)
                self._flush_feed()
            if self.health_file is not None:
                self.health_file.touch()

    def _forgive_own_stall(self, late_s: float) -> None:
        """After a stall of the searcher itself (frozen, suspended, starved), give every
        worker a new window: their heartbeats waited in the queue, unheard, and silence
        that the searcher caused must not count against them."""
        if late_s < self.worker_timeout_s / 2:
            return
        log.warning(
            "the searcher itself was stalled; every worker gets a new window before it "
            "can be declared lost",
            stalled_s=round(late_s, 1),
            timeout_s=self.worker_timeout_s,
        )
        now = time.monotonic()
        for worker_id in self._last_heard:
            self._last_heard[worker_id] = now

    async def _check_workers(self, run: ExperimentRun, now: float) -> None:
        running: dict[str, list[str]] = {}
        for trial in run.trials.values():
            if trial.state == "RUNNING" and trial.worker_id:
                running.setdefault(trial.worker_id, []).append(f"{trial.trial_id}.{trial.attempt}")
        for worker_id, attempts in sorted(running.items()):
            # A worker not heard from since this searcher started gets a full window.
            silent = now - self._last_heard.setdefault(worker_id, now)
            if silent < self.worker_timeout_s:
                continue
            log.warning(
                "worker lost: nothing from it in time; its trials resume elsewhere",
                experiment_id=run.experiment_id,
                worker_id=worker_id,
                silent_s=round(silent, 1),
                timeout_s=self.worker_timeout_s,
            )
            message_id = f"{run.experiment_id}/timer/worker-lost/{worker_id}/{','.join(attempts)}"
            body = WorkerLost(
                experiment_id=run.experiment_id, worker_id=worker_id, silent_s=round(silent, 1)
            )
            await self._apply(run, body, message_id)

    def _give_up(self, run: ExperimentRun, exc: StaleOwnerError) -> None:
        """Another searcher owns the experiment now: stop acting on it, at once."""
        log.error(
            "another searcher took over the experiment; this one stops acting on it",
            experiment_id=run.experiment_id,
            reason=str(exc),
        )
        self.runs.pop(run.experiment_id, None)
        self._answers.forget(run.experiment_id)
        self.logs.pop(run.experiment_id).close()
        self._given_up.add(run.experiment_id)
        if self.shared_state_dir:
            # A searcher started on a shared directory takes over every experiment in it:
            # this one has lost them all, and leaves the queues to the new owner.
            log.error("another searcher owns this shared state directory now; stopping")
            self._stop.set()

    # ------------------------------------------------------------------ requests
    async def _on_rpc(self, delivery: Delivery) -> None:
        try:
            body = decode(delivery.body).body
        except DecodeError as exc:
            log.warning("malformed request sent to the dead-letter queue", error=str(exc))
            await delivery.dead_letter(str(exc))
            return
        if getattr(body, "experiment_id", None) in self._given_up:
            await asyncio.sleep(0.5)  # another searcher owns it now: let it answer
            await delivery.requeue()
            return
        try:
            async with self._lock:
                try:
                    result = await self._handle(body, delivery.correlation_id or "")
                finally:
                    self._flush_feed()
            reply = RpcReply(ok=True, result=result)
        except _Refused as exc:
            reply = RpcReply(
                ok=False,
                error=RpcError(
                    kind="refused",
                    message=str(exc),
                    problems=[str(p) for p in exc.problems],
                    paths=[p.path for p in exc.problems],
                ),
            )
        except _NotFound as exc:
            reply = RpcReply(ok=False, error=RpcError(kind="not_found", message=str(exc)))
        except KeyError as exc:
            reply = RpcReply(
                ok=False, error=RpcError(kind="not_found", message=f"no experiment {exc}")
            )
        if delivery.reply_to:
            envelope = Envelope(message_id=f"reply/{delivery.correlation_id}", body=reply)
            try:
                await self.broker.publish(
                    "",
                    delivery.reply_to,
                    encode(envelope),
                    message_id=envelope.message_id,
                    correlation_id=delivery.correlation_id,
                )
            except UnroutableError:
                log.info("the client left before its reply", type=body.type)
        await delivery.ack()

    async def _handle(self, body: Body, request_id: str) -> dict[str, Any]:
        match body:
            case ControlExperiment():
                return await self._control(body, request_id)
            case CreateExperiment():
                return await self._create(body)
            case DescribeExperiment():
                run = self.runs[body.experiment_id]
                summary = summarise(
                    run,
                    str(self.logs[run.experiment_id].path),
                    warnings=self.warnings.get(run.experiment_id),
                )
                return summary.model_dump(mode="json")
            case ListExperiments():
                return {
                    "experiments": [
                        summarise(run, str(self.logs[eid].path), with_trials=False).model_dump(
                            mode="json"
                        )
                        for eid, run in self.runs.items()
                    ]
                }
            case ControlTrial():
                return await self._control_trial(body, request_id)
            case ReadRecords():
                event_log = self.logs[body.experiment_id]
                lines = event_log.read_after(body.after_seq, body.limit)
                return {
                    "records": [line.decode() for line in lines],
                    "state": self.runs[body.experiment_id].state,
                    "last_seq": event_log.seq,
                }
            case ListWorkers():
                return {"workers": [w.model_dump(mode="json") for w in self._worker_infos()]}
            case GetContext():
                path = self.state_dir / "contexts" / f"{body.context_hash}.tar.gz"
                if not path.is_file():
                    raise _NotFound(f"no context {body.context_hash}")
                return {"context_b64": base64.b64encode(path.read_bytes()).decode()}
        raise _Refused(f"{body.type} is not a request")

    async def _control(self, body: ControlExperiment, request_id: str) -> dict[str, Any]:
        """A user's pause, activate, cancel or kill: an input like any other, logged first."""
        run = self.runs[body.experiment_id]
        ignored = await self._user_input(run, body, f"control/{request_id or uuid.uuid4().hex}")
        return {"experiment_id": run.experiment_id, "state": run.state, "ignored": ignored}

    async def _control_trial(self, body: ControlTrial, request_id: str) -> dict[str, Any]:
        """A user's kill of one trial: an input like any other, logged first."""
        run = self.runs[body.experiment_id]
        trial = run.by_id.get(body.trial_id)
        if trial is None:
            raise _NotFound(f"experiment {body.experiment_id} has no trial {body.trial_id}")
        name = f"control-trial/{request_id or uuid.uuid4().hex}"
        ignored = await self._user_input(run, body, name)
        return {
            "experiment_id": run.experiment_id,
            "trial_id": trial.trial_id,
            "state": trial.state,
            "ignored": ignored,
        }

    async def _user_input(
        self, run: ExperimentRun, body: ControlExperiment | ControlTrial, name: str
    ) -> str | None:
        """Apply a user's request once (a re-sent request has the same correlation id);
        return why it changed nothing, or None."""
        message_id = f"{run.experiment_id}/{name}"
        if message_id in self._seen.setdefault(run.experiment_id, set()):
            return None
        step = await self._apply(run, body, message_id)
        ignored = step.ignored if step is not None else "the experiment failed"
        log.info(
            "user control",
            action=body.action,
            experiment_id=run.experiment_id,
            trial_id=getattr(body, "trial_id", None),
            state=run.state,
            ignored=ignored,
        )
        return ignored

    def _worker_infos(self) -> list[WorkerInfo]:
        now = time.monotonic()
        infos = []
        for worker_id, beat in sorted(self.workers.items()):
            silent = now - self._last_heard.get(worker_id, now)
            infos.append(
                WorkerInfo(
                    worker_id=worker_id,
                    slots=beat.slots,
                    free_slots=beat.free_slots,
                    gpus=list(beat.gpus),
                    running=list(beat.running),
                    last_seen_s=round(silent, 1),
                    lost=silent >= self.worker_timeout_s,
                )
            )
        return infos

    def _checkpoint_root(self, config: ExperimentConfig) -> str:
        storage = config.checkpoint_storage
        if storage is None:
            return str((self.state_dir / "checkpoints").resolve())
        if storage.type == "shared_fs" and storage.host_path:
            return str(Path(storage.host_path) / (storage.storage_path or ""))
        return str(storage.container_path)

    async def _create(self, body: CreateExperiment) -> dict[str, Any]:
        try:
            loaded = parse_config(body.config, source=body.config_source or None)
        except ConfigError as exc:
            raise _Refused(str(exc), list(exc.problems)) from None
        config = loaded.config
        if not config.entrypoint:
            missing = ConfigProblem(
                "entrypoint", "required to run trials; add entrypoint: python3 train.py"
            )
            raise _Refused(str(missing), [missing])
        try:
            data = base64.b64decode(body.context_b64, validate=True)
            validate(data)
        except (ArchiveError, ValueError) as exc:
            raise _Refused(f"context: {exc}", [ConfigProblem("context", str(exc))]) from None
        digest = context_hash(data)
        contexts = self.state_dir / "contexts"
        (contexts / f"{digest}.tar.gz").write_bytes(data)
        context_dir = contexts / digest
        if not context_dir.is_dir():
            await asyncio.to_thread(extract, data, context_dir)
        if config.experiment_seed is None:
            config = config.with_seed(secrets.randbelow(2**32))
        experiment_id = f"exp-{uuid.uuid4().hex[:8]}"
        try:
            method = build_method(config, context_dir=context_dir)
            experiment = Experiment(config, method)
        except SearcherError as exc:
            raise _Refused(str(exc), [ConfigProblem("searcher", str(exc))]) from None
        run = ExperimentRun(
            experiment_id,
            experiment,
            context_hash=digest,
            checkpoint_root=self._checkpoint_root(config),
        )
        event_log = FileEventLog(self.state_dir / "experiments" / experiment_id / "events.jsonl")
        self.runs[experiment_id] = run
        self.logs[experiment_id] = event_log
        self.warnings[experiment_id] = list(loaded.warnings)
        self._append(
            experiment_id,
            CreatedRecord(
                seq=1,
                at=time.time(),
                experiment_id=experiment_id,
                context_hash=digest,
                checkpoint_root=run.checkpoint_root,
                config=config.model_dump(mode="json", by_alias=True),
            ),
        )
        event_log.take_over(self._owner)
        step = run.start()
        seq = self._record(run, step, message_id=f"{experiment_id}/start", body=None)
        self._queue(run, step, seq)
        await event_log.sync_async()
        await self._flush_unsent()
        log.info(
            "experiment created",
            experiment_id=experiment_id,
            name=config.name,
            searcher=config.searcher.name,
            seed=config.experiment_seed,
        )
        return {
            "experiment_id": experiment_id,
            "warnings": list(loaded.warnings),
            "event_log": str(event_log.path),
        }
