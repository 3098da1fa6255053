"""The outbox: each experiment's logged decisions, published batch after batch (each
worker's commands in log order), with confirms.

Write first: a decision's commands go out only once its record is durable. Each
experiment's decisions are published under its publishing lock, the waiting ones
together: commands to one worker in the order they were logged, each once the one before
it is confirmed; the work queue's commands (taken by many workers in parallel: no order
between them is promised) and different workers' wait for their confirms together. The
experiment's inputs are applied meanwhile, and each record names the oldest decision not
confirmed yet (``unconfirmed_from``), so a restart re-sends every decision that may not
have gone out. Experiments never wait for each other.

When the broker does not take a decision (unreachable, blocked, a publish timeout), the
experiment's log marks it unsent (``unsent.json``, durable before the input that caused
it is acknowledged), and a retry task of that experiment sends it and every later
decision again, in order, with a jittered backoff. Meanwhile the experiment's inputs are
applied, logged and acknowledged as usual: they never wait for the broker (their
decisions join the queue). A restart re-sends from the mark (see
:meth:`ExperimentHost._recover_outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from rung.broker.errors import BrokerError, UnroutableError
from rung.broker.port import Broker
from rung.broker.schemas import (
    DeleteCheckpoints,
    Envelope,
    ExitReason,
    OpCompleted,
    RunTrial,
    TrialExited,
    encode,
)
from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.file import StaleOwnerError, StorageError
from rung.searcher.failpoints import crash_once
from rung.searcher.host import ExperimentBrokenError, ExperimentHost, Outgoing
from rung.searcher.trials import Command

__all__ = ["Live", "Outbox"]

log = structlog.get_logger("rung.searcher")

RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
# How long an input waits for its decision's confirms before it leaves them to the retry
# task (the publish goes on there): a broker that blocks publishers (a resource alarm)
# holds one input of the experiment up for this long, not for the publish timeout.
INPUT_WAIT_S = 2.0
# The most work-queue commands of one batch published at once (their confirms awaited
# together): a restart's or a long outage's whole outbox goes out as one batch.
WORK_IN_FLIGHT = 64


@dataclass(eq=False)
class Live:
    """An experiment the service serves: its host, the lock its inputs take in turn to
    be applied, the lock its decisions take in turn to be published, and whether its
    outbox waits for the broker."""

    host: ExperimentHost
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    publishing: asyncio.Lock = field(default_factory=asyncio.Lock)
    retrying: bool = False
    # The retry task, while one runs (cancelled when the experiment is dropped).
    retry: asyncio.Task[None] | None = None
    # Why the service stopped serving the experiment, once it has.
    dropped: SearcherError | None = None


def _overtaken(host: ExperimentHost, seq: int) -> bool:
    """A record after decision ``seq`` is durable (the ``overtaken`` crash point)."""
    return host.log.durable_seq > seq


class Outbox:
    def __init__(
        self,
        broker: Broker,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None] | None],
        fatal: Callable[[BaseException], Awaitable[object]],
        drop: Callable[[Live, SearcherError], None],
        input_wait_s: float = INPUT_WAIT_S,
    ) -> None:
        self.broker = broker
        self._spawn = spawn
        # A storage error: the searcher stops.
        self._fatal = fatal
        # Another searcher took the experiment over, or it cannot be rebuilt: the
        # service stops serving it.
        self._drop = drop
        self.input_wait_s = input_wait_s

    async def flush(self, live: Live, *, upto: int | None = None) -> None:
        """Publish the experiment's waiting decisions, in order, up to record ``upto``
        (None: every one) and any later one already durable; the caller holds the
        experiment's publishing lock. Inputs are applied meanwhile: each decision's
        record is made durable before its commands go out. On a broker error they wait
        for the retry task."""
        host = live.host
        if not host.outbox:
            return
        await host.log.sync_async()  # write first, then publish
        if live.retrying:  # the retry task sends them, after those before them
            if host.outbox:  # (it may have sent them all while the log synced)
                await self._mark_unsent(live)
            return
        while host.outbox and (upto is None or host.outbox[0].seq <= upto):
            # Every decision waiting up to ``upto`` goes out together, and with them every
            # later one the sync already made durable (applied while the last ones went
            # out): one sync, one round of confirms. Those later inputs' own flushes then
            # find them sent, instead of each taking a round of its own behind this one.
            reach = None if upto is None else max(upto, host.log.durable_seq)
            batch = [d for d in host.outbox if reach is None or d.seq <= reach]
            if host.log.durable_seq < batch[-1].seq:
                await host.log.sync_async()
            await crash_once("overtaken", functools.partial(_overtaken, host, batch[0].seq))
            sending = asyncio.ensure_future(self._publish(host, batch))
            await asyncio.wait({sending}, timeout=self.input_wait_s)
            if not sending.done():
                await self._leave_to_retry(live, sending, "the broker has not confirmed yet")
                return
            try:
                gone = sending.result()
            except BrokerError as exc:
                await self._leave_to_retry(live, None, str(exc))
                return
            if await self._sent(live, gone):
                # What their loss decided goes out in this flush: no input of its own
                # would publish it.
                upto = None if upto is None else host.log.seq
                await host.log.sync_async()
        if not host.outbox and host.log.unsent_from is not None:
            async with live.lock:  # (see _mark_unsent)
                await asyncio.to_thread(host.log.clear_unsent)

    async def _sent(self, live: Live, gone: list[list[Command]]) -> bool:
        """The outbox's first ``len(gone)`` decisions went out: take them off it, and
        apply the loss of the workers their ``gone`` commands were for (True if any),
        under the experiment's lock, as every input is applied."""
        host = live.host
        if not any(gone):
            for _ in gone:
                host.outbox.popleft()
            return False
        async with live.lock:
            applied = False
            for unroutable in gone:
                host.outbox.popleft()
                applied = self._workers_gone(host, unroutable) or applied
            return applied

    async def _mark_unsent(self, live: Live) -> None:
        """Mark the waiting decisions unsent (durably). Under the experiment's lock: the
        mark's owner check reads the log's file in a thread, and an input appended on the
        event loop meanwhile would look like another searcher's line."""
        async with live.lock:
            if live.host.outbox and live.dropped is None:  # (a dropped log is closed)
                await asyncio.to_thread(live.host.log.mark_unsent, live.host.outbox[0].seq)

    async def _leave_to_retry(
        self, live: Live, sending: asyncio.Future[list[list[Command]]] | None, why: str
    ) -> None:
        """Mark the waiting decisions unsent (durably, before the input is acknowledged)
        and hand them to a retry task, with the publish still under way, if any."""
        host = live.host
        await self._mark_unsent(live)
        log.warning(
            "commands not published yet; they go out once the broker takes them",
            experiment_id=host.experiment_id,
            seq=host.outbox[0].seq,
            waiting=len(host.outbox),
            error=why,
        )
        live.retrying = True
        live.retry = self._spawn(self._retry(live, sending))

    async def _retry(self, live: Live, sending: asyncio.Future[list[list[Command]]] | None) -> None:
        """Send the experiment's waiting decisions until the broker takes them all, those
        ``sending`` first (their publish goes on: its outcome comes before any other)."""
        delay = RETRY_FIRST_S
        while True:
            try:
                if sending is not None:
                    gone = await sending
                    sending = None
                    if await self._sent(live, gone):
                        await live.host.log.sync_async()
                else:
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                if await self._drain(live):
                    return
            except BrokerError as exc:
                sending = None
                log.debug("the broker still refuses commands", error=str(exc))
                delay = min(delay * 2, RETRY_MAX_S)
            except (StorageError, OSError) as exc:
                await self._fatal(exc)
                return
            except (StaleOwnerError, ExperimentBrokenError) as exc:
                self._drop(live, exc)
                return

    async def _drain(self, live: Live) -> bool:
        """Publish every waiting decision; True once none waits and the mark is gone.

        Inputs of the experiment are applied meanwhile (this runs outside its lock), so
        each decision's record is made durable before its commands go out."""
        host = live.host
        while host.outbox:
            batch = list(host.outbox)
            if host.log.durable_seq < batch[-1].seq:
                await host.log.sync_async()  # write first, then publish
            await self._sent(live, await self._publish(host, batch))
        async with live.publishing:  # no input publishes while the mark is cleared
            if host.outbox:
                return False
            async with live.lock:  # (see _mark_unsent)
                await asyncio.to_thread(host.log.clear_unsent)
            live.retrying = False
            live.retry = None
        log.info("waiting commands published", experiment_id=host.experiment_id)
        return True

    async def answer_again(self, live: Live, completion: OpCompleted) -> None:
        """A trial re-sent its completion: its answer may have been lost with its
        worker's private queue. Send the command it was answered with again, under its
        own message id (see :mod:`rung.searcher.host.answers`)."""
        host = live.host
        answer = host.answers.to_repeat(host.run, completion)
        if answer is None or host.outbox:  # not answered yet, or the answer still waits
            return
        log.info(
            "a trial asked again for the answer to its completed operation; re-sending it",
            experiment_id=host.experiment_id,
            trial_id=completion.trial_id,
            worker_id=completion.worker_id,
            message_id=answer.message_id,
            type=answer.command.body.type,
        )
        envelope = Envelope(
            message_id=answer.message_id,
            experiment_id=host.experiment_id,
            seq=answer.seq,
            body=answer.command.body,
        )
        try:
            await self._send(answer.command, envelope)
        except UnroutableError:
            pass  # the worker is gone: the watchdog finds out
        except BrokerError as exc:  # the trial asks again later
            log.warning("could not re-send an answer", error=str(exc))

    async def send_once(self, command: Command, envelope: Envelope) -> None:
        """Publish one command that no log holds (best effort: it is logged if lost)."""
        try:
            await self._send(command, envelope)
        except BrokerError as exc:
            log.warning("could not send a command", type=command.body.type, error=str(exc))

    # ------------------------------------------------------------------ publishing
    async def _publish(
        self, host: ExperimentHost, batch: Sequence[Outgoing]
    ) -> list[list[Command]]:
        """Publish the commands of ``batch`` (decisions waiting in the outbox, in log
        order) and wait for their confirms; return, for each decision, the commands whose
        worker is gone (no queue took them).

        Commands to one worker go in log order, each once the one before it is confirmed
        (a publish sent again after a reconnection never overtakes an earlier one: a
        trial's continue, pause or kill must not); the work queue's commands, which its
        consumers take in parallel and between which no order is promised, go out
        together, as different destinations do, and all wait for their confirms together.
        If any fails, the error is raised once all have settled, and every decision of
        the batch is sent again later (its commands keep their ids, so receivers drop
        what they have). A failing work-queue command does not stop the others, so after
        an outage more of them may go out twice: a worker drops a ``run_trial`` it
        already runs, and a copy another worker took is stopped once it reports its start.
        """
        # A chain per worker; each work-queue command a chain of its own.
        by_key: dict[str | tuple[int, int], list[tuple[int, Command, Envelope]]] = {}
        for position, waiting in enumerate(batch):
            for index, command in enumerate(waiting.commands):
                envelope = Envelope(
                    message_id=f"{host.experiment_id}/{waiting.seq}/{index}",
                    experiment_id=host.experiment_id,
                    seq=waiting.seq,
                    body=command.body,
                )
                worker = command.worker_id
                key = worker if worker is not None else (position, index)
                by_key.setdefault(key, []).append((position, command, envelope))
        gone: list[list[Command]] = [[] for _ in batch]
        work_slots = asyncio.Semaphore(WORK_IN_FLIGHT)

        async def in_order(commands: list[tuple[int, Command, Envelope]]) -> None:
            for position, command, envelope in commands:
                bound = work_slots if command.worker_id is None else contextlib.nullcontext()
                try:
                    async with bound:
                        await self._send(command, envelope)
                except UnroutableError:
                    gone[position].append(command)

        outcomes = await asyncio.gather(
            *(in_order(commands) for commands in by_key.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return gone

    async def resend(self, command: Command, envelope: Envelope) -> None:
        """Publish a logged command again, as it was sent (``rung dlq requeue`` of a dead
        command, through the searcher: ``ResendCommand``)."""
        await self._send(command, envelope)

    async def _send(self, command: Command, envelope: Envelope) -> None:
        topology = self.broker.topology
        if command.worker_id is not None:
            key = topology.worker_key(command.worker_id)
        elif isinstance(command.body, RunTrial):
            # To the work bucket of its size: only workers that can fit it ever take it.
            key = topology.work_key(command.body.slots)
        else:
            key = topology.WORK_KEY
        await self.broker.publish(
            topology.commands_exchange, key, encode(envelope), message_id=envelope.message_id
        )

    @staticmethod
    def _workers_gone(host: ExperimentHost, commands: list[Command]) -> bool:
        """The workers these commands were for are gone: their trials' attempts ended,
        and they resume from their checkpoints (an input like any other, logged)."""
        applied = False
        for command in commands:
            body = command.body
            if isinstance(body, DeleteCheckpoints):
                continue  # about storage, not a trial attempt: nothing was lost
            message_id = f"lost/{body.trial_id}/{body.attempt}"
            if message_id in host.seen:
                continue  # applied already: this is a re-send of the same command
            log.warning(
                "the worker running a trial is gone; the trial will resume elsewhere",
                experiment_id=host.experiment_id,
                trial_id=body.trial_id,
                worker_id=command.worker_id,
            )
            lost = TrialExited(
                experiment_id=host.experiment_id,
                trial_id=body.trial_id,
                attempt=body.attempt,
                worker_id=command.worker_id or "",
                reason=ExitReason.PREEMPTED,
                message=f"worker {command.worker_id} is gone",
            )
            host.apply(lost, message_id, at=time.time())
            applied = True
        return applied
