"""The searcher service: a thin router between the broker and the experiments' hosts.

For every worker event: decode it (a malformed or forged one goes to the dead-letter
queue with its reason), hand it to its experiment's host, which applies it whole or not
at all and writes it to the log, make the log durable, hand what it caused to the outbox,
and only then acknowledge it. Each experiment's inputs take that experiment's lock in
turn; experiments never wait for each other. Requests (:mod:`.requests`), the outbox
(:mod:`.outbox`), the live feed (:mod:`.feed`) and the worker registry (:mod:`.workers`)
live in modules of their own. Who may do what (:mod:`.access`) is checked where messages
come in: every experiment has an owner, and every trial attempt is bound to the worker
that started it (``docs/security.md``).

A storage error (a write or an fsync of a log failed) stops the searcher at once, without
acknowledging anything more (fail-stop): a restart recovers from what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Final, NoReturn

import structlog

from rung.broker.port import Broker, Delivery
from rung.broker.schemas import (
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    Envelope,
    ExperimentSummary,
    OpCompleted,
    TrialExited,
    WorkerLost,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.file import LogClosedError, StaleOwnerError, StorageError
from rung.searcher.failpoints import crash_point
from rung.searcher.host import Applied, BrokenExperiment, ExperimentBrokenError, ExperimentHost
from rung.searcher.service.access import Access, logged_bindings
from rung.searcher.service.creation import CUSTOM_REFUSED, Creator, logged_creation, uses_custom
from rung.searcher.service.errors import ExperimentNotFoundError, ServiceStoppedError
from rung.searcher.service.feed import LiveFeed
from rung.searcher.service.gangs import GangPlanner
from rung.searcher.service.gangwatch import GangWatch
from rung.searcher.service.intake import Intake
from rung.searcher.service.outbox import Live, Outbox
from rung.searcher.service.requests import Requests
from rung.searcher.service.retention import sweep
from rung.searcher.service.rounds import RoundTimer
from rung.searcher.service.statelock import StateDirectoryBusyError, StateLock
from rung.searcher.service.summary import summarise
from rung.searcher.service.workers import WorkerRegistry
from rung.searcher.trials import Command
from rung.searcher.trials.model import ENDED

__all__ = ["EXIT_STORAGE_FAILED", "SearcherService", "StateDirectoryBusyError"]

log = structlog.get_logger("rung.searcher")

# Taking an experiment over in a shared state directory: how often to read its log again
# when the searcher it takes over from appended meanwhile, and how long to wait between
# (times the attempt).
TAKEOVER_ATTEMPTS = 10
# How often queued trials are looked at for a gang (a trial no single worker can take).
GANG_TICK_S = 0.5
TAKEOVER_BACKOFF_S = 0.05

# The searcher's exit status after a storage error (EX_IOERR).
EXIT_STORAGE_FAILED: Final = 74
# How long a finished experiment's contexts are kept, by default: 7 days.
CONTEXT_RETENTION_S: Final = 7 * 24 * 3600.0


def _exit_now(exc: BaseException) -> None:
    """Fail-stop: end the process without a cleanup that could acknowledge anything
    (``exc`` is logged already)."""
    del exc
    sys.stderr.flush()
    os._exit(EXIT_STORAGE_FAILED)


class SearcherService:
    def __init__(
        self,
        broker: Broker,
        state_dir: Path,
        *,
        snapshot_every: int = 200,
        worker_timeout_s: float = 30.0,
        shared_state_dir: bool = False,
        verify_worker_users: bool = True,
        admins: frozenset[str] = frozenset(),
        operators: frozenset[str] = frozenset(),
        workers: frozenset[str] = frozenset(),
        allow_custom_searchers: bool = False,
        context_retention_s: float | None = CONTEXT_RETENTION_S,
        health_file: Path | None = None,
        on_fatal: Callable[[BaseException], None] = _exit_now,
    ) -> None:
        self.broker = broker
        self.state_dir = state_dir
        self.snapshot_every = snapshot_every
        # Touched on every tick of the watchdog: a stale file means a stuck service
        # (rung healthcheck reads it).
        self.health_file = health_file
        # Refuse a worker event whose worker id is not its publisher's (validated) user.
        self.verify_worker_users = verify_worker_users
        # Roles (admins, operators, workers; the rest are clients), owners, bindings.
        self.access = Access(
            searcher_user=broker.username, admins=admins, operators=operators, workers=workers
        )
        # Custom search methods run in this process, with its credentials: off unless
        # an admin allows them (or their creator holds the searcher's credentials).
        self.allow_custom_searchers = allow_custom_searchers
        # How long a finished experiment's contexts are kept (None: for ever).
        self.context_retention_s = context_retention_s
        # Each experiment's owner: the validated user that created it (None: nobody
        # vouched for it, or its log is older than owners).
        self.owners: dict[str, str | None] = {}
        # On shared storage flock cannot be trusted: the owner epochs in the logs fence.
        self.shared_state_dir = shared_state_dir
        self.on_fatal = on_fatal
        self.fatal: BaseException | None = None
        self.owner = f"{socket.gethostname()}/{os.getpid()}"
        self.experiments: dict[str, Live] = {}
        self.broken: dict[str, BrokenExperiment] = {}
        # Experiments another searcher took over: their messages are left to it.
        self.given_up_ids: set[str] = set()
        self.workers = WorkerRegistry(worker_timeout_s)
        self.gangs = GangPlanner()
        self.gang_watch = GangWatch()
        self.rounds = RoundTimer()
        self.feed = LiveFeed(broker, lambda: [live.host for live in self.experiments.values()])
        self.outbox = Outbox(broker, spawn=self._spawn, fatal=self.die, drop=self._drop)
        self.requests = Requests(self)
        self.creator = Creator(
            state_dir,
            self.owner,
            existing=self._request_key_of,
            readable=lambda user: [
                live.host.run
                for live in self.experiments.values()
                if self.access.sees(user, self.owners.get(live.host.experiment_id))
            ],
            allow_custom=self.custom_allowed,
        )
        self.intake = Intake(self)
        self._group: asyncio.TaskGroup | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        # Set once every experiment is recovered and the service takes messages.
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        lock = None if self.shared_state_dir else StateLock(self.state_dir)
        try:
            await self._serve(stop)
        finally:
            if lock is not None:
                lock.release()

    async def _serve(self, stop: asyncio.Event) -> None:
        """One task group holds all the service's own tasks: the watchdog, the live feed
        and the experiments' retry tasks. Shutdown stops intake first, lets the inputs
        under way finish, then cancels the rest."""
        (self.state_dir / "contexts").mkdir(parents=True, exist_ok=True)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await self._recover()
                topology = self.broker.topology
                intake = [
                    await self.broker.subscribe(
                        topology.rpc_queue, self.requests.on_rpc, prefetch=4
                    ),
                    await self.broker.subscribe(
                        topology.events_queue, self.intake.on_event, prefetch=64
                    ),
                    await self.broker.subscribe(
                        topology.heartbeats_queue, self.intake.on_heartbeat, prefetch=64
                    ),
                ]
                log.info("searcher ready", state_dir=str(self.state_dir), prefix=topology.prefix)
                self.ready.set()
                watchdog = self._spawn(self._watch_workers())
                assert watchdog is not None  # noqa: S101 (the group is open, not closing)
                self._spawn(self.feed.pump())
                planner = self._spawn(self._plan_gangs())
                self._spawn(sweep(self))  # contexts past their retention
                self.feed.wake()  # what recovery appended
                await stop.wait()
                # Stop intake (the timer's too), let the inputs under way finish, cancel.
                for subscription in intake:
                    await subscription.cancel()
                watchdog.cancel()
                if planner is not None:
                    planner.cancel()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.intake.idle.wait(), timeout=30)
                self._closing = True  # nothing new is spawned from here on
                for task in list(self._tasks):
                    task.cancel()
        except* ServiceStoppedError:
            pass  # fail-stop: self.fatal says why, below
        if self.fatal is None:
            with contextlib.suppress(TimeoutError):  # the last records, best effort
                await asyncio.wait_for(self.feed.publish(), timeout=10)
        for live in self.experiments.values():
            if self.fatal is None:
                await live.host.log.aclose()
            else:
                live.host.close()
        log.info("searcher stopped")
        if self.fatal is not None:
            raise self.fatal

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run ``work`` in the service's task group; a fail-stop ends it quietly (the
        service is stopping), anything else it raises stops the service. Once shutdown
        has cancelled the service's tasks, nothing new starts (None)."""

        async def guarded() -> None:
            with contextlib.suppress(ServiceStoppedError):
                await work

        if self._group is None or self._closing:
            work.close()
            return None
        task = self._group.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: work.close())  # cancelled before it started
        return task

    async def die(self, exc: BaseException) -> NoReturn:
        """Fail-stop on a storage error: say why, acknowledge nothing more, exit."""
        if self.fatal is None:
            self.fatal = exc
            log.critical(
                "storage failed: the searcher stops without acknowledging anything more; "
                "fix the storage and restart it, it recovers from its logs",
                error=str(exc),
            )
            self._stop.set()
            self.on_fatal(exc)
        raise ServiceStoppedError from exc

    # ------------------------------------------------------------------ recovery
    async def _recover(self) -> None:
        """Open every experiment's host from its log; send what may not have gone out.

        An experiment whose log cannot be used is kept as broken (ERROR, with the
        reason); the searcher serves every other one.
        """
        contexts = self.state_dir / "contexts"
        for path in sorted((self.state_dir / "experiments").glob("*/events.jsonl")):
            created = logged_creation(path)
            if created is not None:
                self.owners[created.experiment_id] = created.owner
                if uses_custom(created) and not self.custom_allowed(created.owner):
                    broken = BrokenExperiment.of(path, CUSTOM_REFUSED)
                    self.broken[broken.experiment_id] = broken
                    log.error("custom searchers are off; not recovered", path=str(path))
                    continue
            try:
                host = await self._open_host(path, contexts)
            except (StorageError, OSError) as exc:
                await self.die(exc)
            except (Exception, SystemExit) as exc:
                broken = BrokenExperiment.of(path, f"{type(exc).__name__}: {exc}")
                self.broken[broken.experiment_id] = broken
                log.exception(
                    "an experiment's log could not be recovered; it is shown as ERROR, and "
                    "the searcher serves the others",
                    experiment_id=broken.experiment_id,
                    error=broken.reason,
                )
                continue
            if host is None:
                continue
            bindings = await asyncio.to_thread(list, logged_bindings(host.log.existing))
            self.access.restore(host.experiment_id, bindings, host.run)
            self.access.prune(host.experiment_id, host.run)  # attempts that ended meanwhile
            live = Live(host)
            self.experiments[host.experiment_id] = live
            await self._settle_or_drop(live)
            log.info(
                "experiment recovered from its log",
                experiment_id=host.experiment_id,
                state=host.run.state,
                records=host.log.seq,
                trials=len(host.run.trials),
            )

    async def _open_host(self, path: Path, contexts: Path) -> ExperimentHost | None:
        """Open an experiment's host; in a shared state directory, try again while the
        searcher it takes over from still appends between this one's read of the log and
        its owner record (that searcher stops at its next append once the record is in)."""
        for attempt in range(1, TAKEOVER_ATTEMPTS + 1):
            try:
                return await asyncio.to_thread(
                    ExperimentHost.open, path, owner=self.owner, context_root=contexts
                )
            except StaleOwnerError as exc:
                if attempt == TAKEOVER_ATTEMPTS:
                    raise
                log.info(
                    "the log grew while this searcher took the experiment over; reading it again",
                    path=str(path),
                    attempt=attempt,
                    error=str(exc),
                )
                await asyncio.sleep(TAKEOVER_BACKOFF_S * attempt)
        return None  # (not reached: the last attempt returns or raises)

    # ------------------------------------------------------------------ inputs
    async def apply(
        self, live: Live, body: Body, message_id: str, *, sender: str | None = None
    ) -> Applied:
        """Apply one input to its experiment; publish what it caused once it is durable.
        ``sender`` (the broker-validated user that sent it) is logged with it.

        The experiment's lock covers the apply only: its next inputs are applied while
        this one's decision is made durable and published (batch after batch, each
        worker's commands in log order, under the experiment's publishing lock), and
        share its fsync. Each record names the oldest decision not confirmed yet, so a
        restart re-sends every decision that may not have gone out. An input that caused
        no command is not synced here: the caller syncs it before acknowledging it.
        """
        async with live.lock:
            if live.dropped is not None:  # while this input waited for the lock
                raise live.dropped
            try:
                applied = live.host.apply(body, message_id, at=time.time(), sender=sender)
                if not applied.duplicate and (
                    isinstance(body, ControlExperiment | ControlTrial | WorkerLost | TrialExited)
                    or live.host.run.state in ENDED
                ):
                    # A kill or a lost worker ends attempts that will never send an exit.
                    self.access.prune(live.host.experiment_id, live.host.run)
                if applied.duplicate:
                    if isinstance(body, OpCompleted):  # best effort, beside the inputs
                        self._spawn(self.outbox.answer_again(live, body))
                    return applied
                await self._maybe_snapshot(live)
            except (StaleOwnerError, ExperimentBrokenError) as exc:
                self._drop(live, exc)
                raise
            except (StorageError, OSError) as exc:
                await self.die(exc)
        host = live.host
        if applied.step.commands or (  # out once durable, after the decisions before it
            # (or decisions nobody is publishing: a flush cut short by a cancellation)
            host.outbox and not live.retrying and not live.publishing.locked()
        ):
            await self._publish(live, upto=applied.seq)
        return applied

    async def _publish(self, live: Live, *, upto: int | None = None) -> None:
        """Make the experiment's waiting decisions durable and publish them (each worker's
        commands in log order), up to record ``upto`` (None: all) and any later one
        already durable; an experiment taken over or broken meanwhile is dropped (and
        raises why)."""
        async with live.publishing:
            if live.dropped is not None:
                raise live.dropped
            try:
                await self._settle(live, upto=upto)
            except (StaleOwnerError, ExperimentBrokenError) as exc:
                self._drop(live, exc)
                raise

    async def make_durable(self, live: Live) -> None:
        """Make what the experiment's inputs appended durable: the fsync an input that
        caused no command waits for (outside the lock, shared with the inputs applied
        meanwhile) before it is acknowledged or answered. A storage error stops the
        searcher; an experiment dropped meanwhile raises why."""
        event_log = live.host.log
        if event_log.durable_seq >= event_log.seq:
            return
        try:
            await event_log.sync_async()
        except LogClosedError:
            if live.dropped is not None:
                raise live.dropped from None
            raise
        except (StorageError, OSError) as exc:
            await self.die(exc)
        crash_point("appended")

    async def _settle_or_drop(self, live: Live) -> None:
        """Settle what a recovery or a creation queued; an experiment taken over or
        broken meanwhile is dropped."""
        with contextlib.suppress(StaleOwnerError, ExperimentBrokenError):
            await self._publish(live)

    async def _settle(self, live: Live, *, upto: int | None = None) -> None:
        """Make what was applied durable, then publish the commands that wait (up to
        record ``upto``, and any later one already durable). The caller holds the
        experiment's publishing lock."""
        try:
            await live.host.log.sync_async()
            crash_point("appended")
            await self.outbox.flush(live, upto=upto)
        except (StorageError, OSError) as exc:
            await self.die(exc)

    async def _maybe_snapshot(self, live: Live) -> None:
        """Store a snapshot when one is due: captured now, written in a thread once the
        log is durable up to it."""
        snapshot = live.host.snapshot_due(self.snapshot_every)
        if snapshot is None:
            return
        try:
            await live.host.log.sync_async()
            await asyncio.to_thread(live.host.log.store_snapshot, snapshot)
        except (StorageError, OSError) as exc:
            await self.die(exc)

    async def create(
        self, body: CreateExperiment, key: str, *, creator: str | None = None
    ) -> dict[str, Any]:
        """Create an experiment owned by ``creator``, or answer with the one this request
        made already."""
        async with self.creator.lock:
            experiment_id, exists = self.creator.experiment_id(key, creator)
            if not exists:
                try:
                    host = await self.creator.create(body, key, experiment_id, creator=creator)
                except (StorageError, OSError) as exc:
                    await self.die(exc)
                self.owners[experiment_id] = creator
                live = Live(host)
                self.experiments[experiment_id] = live
                await self._settle_or_drop(live)
        if experiment_id in self.broken:
            broken = self.broken[experiment_id]
            return {"experiment_id": experiment_id, "warnings": [], "event_log": str(broken.path)}
        host = self.live(experiment_id).host
        return {
            "experiment_id": experiment_id,
            "warnings": list(host.warnings),
            "event_log": str(host.log.path),
        }

    # ------------------------------------------------------------------ lookups
    def live(self, experiment_id: str) -> Live:
        live = self.experiments.get(experiment_id)
        if live is not None:
            return live
        if experiment_id in self.broken:
            raise ExperimentNotFoundError(
                f"experiment {experiment_id} could not be recovered "
                f"({self.broken[experiment_id].reason}); only describe and list show it"
            )
        raise ExperimentNotFoundError(f"no experiment {experiment_id!r}")

    def summary(self, experiment_id: str, *, with_trials: bool = True) -> ExperimentSummary:
        """The experiment as clients see it (``with_trials=False``: less its trials)."""
        owner = self.owners.get(experiment_id)
        if experiment_id in self.broken:
            return self.broken[experiment_id].summary().model_copy(update={"owner": owner})
        host = self.live(experiment_id).host
        summary = summarise(
            host.run,
            str(host.log.path),
            with_trials=with_trials,
            warnings=host.warnings,
            workers=self.workers,
        )
        return summary.model_copy(update={"owner": owner})

    def summaries(self, seen_by: str | None = None) -> Iterator[ExperimentSummary]:
        """Every experiment's summary (without trials) that ``seen_by`` may list."""
        for live in self.experiments.values():
            host = live.host
            owner = self.owners.get(host.experiment_id)
            if self.access.sees(seen_by, owner):
                summary = summarise(
                    host.run, str(host.log.path), with_trials=False, workers=self.workers
                )
                yield summary.model_copy(update={"owner": owner})
        for broken in self.broken.values():
            owner = self.owners.get(broken.experiment_id)
            if self.access.sees(seen_by, owner):
                yield broken.summary().model_copy(update={"owner": owner})

    def owner_of(self, experiment_id: str) -> str | None:
        """The experiment's owner (None: unrecorded); raises if there is no experiment."""
        if experiment_id not in self.broken:
            self.live(experiment_id)
        return self.owners.get(experiment_id)

    def custom_allowed(self, creator: str | None) -> bool:
        """Whether an experiment of ``creator`` may run a custom search method in this
        process: where an admin allows it, or where the creator holds this searcher's
        credentials already (no broker vouches for users, or its own broker user)."""
        return self.allow_custom_searchers or self.access.role(creator) in ("local", "searcher")

    def given_up(self, experiment_id: str | None) -> bool:
        """True for an experiment another searcher took over: its messages are its own."""
        return experiment_id in self.given_up_ids

    def _request_key_of(self, experiment_id: str) -> tuple[str, str | None] | None:
        """The request key and owner of the experiment with this id, or None."""
        owner = self.owners.get(experiment_id)
        if (live := self.experiments.get(experiment_id)) is not None:
            return live.host.request_key, owner
        if (broken := self.broken.get(experiment_id)) is not None:
            return broken.request_key, owner
        if experiment_id in self.given_up_ids:
            return "", None  # another searcher's: never reused
        return None

    def _drop(self, live: Live, exc: SearcherError) -> None:
        """Stop serving an experiment, at once: another searcher took it over
        (``StaleOwnerError``), or its state cannot be rebuilt (``ExperimentBrokenError``:
        it is shown as ERROR, with the reason, until a restart recovers it)."""
        host = live.host
        experiment_id = host.experiment_id
        if self.experiments.get(experiment_id) is not live:
            return  # dropped already
        del self.experiments[experiment_id]
        live.dropped = exc  # inputs waiting for its lock get the same answer
        if live.retry is not None and live.retry is not asyncio.current_task():
            live.retry.cancel()
        if self._spawn(host.log.aclose()) is None:  # after its syncs under way
            host.close()
        if isinstance(exc, ExperimentBrokenError):
            log.error("the experiment cannot go on; it is shown as ERROR", error=str(exc))
            self.broken[experiment_id] = BrokenExperiment(
                experiment_id,
                host.log.path,
                exc.reason,
                name=host.run.experiment.config.name,
                request_key=host.request_key,
            )
            return
        log.error(
            "another searcher took over the experiment; this one stops acting on it",
            experiment_id=experiment_id,
            reason=str(exc),
        )
        self.given_up_ids.add(experiment_id)
        if self.shared_state_dir:
            # A searcher started on a shared directory takes over every experiment in it:
            # this one has lost them all, and leaves the queues to the new owner.
            log.error("another searcher owns this shared state directory now; stopping")
            self._stop.set()

    async def leave_to_owner(self, delivery: Delivery) -> None:
        """A message of an experiment another searcher owns now: back to the queue for
        it, after a pause, so that a message nobody else takes does not spin."""
        await asyncio.sleep(0.5)
        await delivery.requeue()

    # ------------------------------------------------------------------ timers
    async def _plan_gangs(self) -> None:
        """Place the trials no single live worker can take on several workers
        (:mod:`.gangs`), one gang at a time, and watch what the workers hold for them
        (:mod:`.gangwatch`); time the searches' rounds (:mod:`.rounds`). Each plan, each
        part found lost and each round timed out is an input of its experiment."""
        while True:
            await asyncio.sleep(GANG_TICK_S)
            live = self.workers.live()
            runs = {eid: entry.host.run for eid, entry in self.experiments.items()}
            now = time.monotonic()
            parts = {beat.worker_id: self.workers.parts.get(beat.worker_id, {}) for beat in live}
            stale, lost = self.gang_watch.check(
                runs, parts, self.workers.beat_counts, now, broken=self.broken
            )
            for hold in stale:
                log.info(
                    "a worker holds slots for an attempt that no longer asks for them; "
                    "it is told to give them back",
                    experiment_id=hold.body.experiment_id,
                    trial_id=hold.body.trial_id,
                    worker_id=hold.worker_id,
                )
                envelope = Envelope(
                    message_id=hold.message_id,
                    experiment_id=hold.body.experiment_id,
                    body=hold.body,
                )
                await self.outbox.send_once(Command(hold.body, hold.worker_id), envelope)
            inputs: list[tuple[str, Body, str]] = [
                (part.experiment_id, part.body, part.message_id) for part in lost
            ]
            planned = self.gangs.plan(runs.values(), live, now)
            if planned is not None:
                log.info(
                    "a trial no single worker can take is placed on several",
                    experiment_id=planned.experiment_id,
                    trial_id=planned.body.trial_id,
                    parts=[(p.worker_id, p.slots) for p in planned.body.parts],
                )
                inputs.append((planned.experiment_id, planned.body, planned.message_id))
            for due in self.rounds.due(runs.values(), now):
                log.info(
                    "a round of the search timed out",
                    experiment_id=due.experiment_id,
                    round=due.body.round,
                    after_s=due.body.after_s,
                )
                inputs.append((due.experiment_id, due.body, due.message_id))
            for experiment_id, body, message_id in inputs:
                target = self.experiments.get(experiment_id)
                if target is None:
                    continue
                with contextlib.suppress(
                    StaleOwnerError, ExperimentBrokenError, ServiceStoppedError
                ):
                    await self.apply(target, body, message_id)
                    await self.make_durable(target)
            if inputs:
                self.feed.wake()

    async def _watch_workers(self) -> None:
        """Declare lost the workers that went silent while running trials; forget the
        answers nobody will ask for again; touch the health file."""
        tick = max(self.workers.timeout_s / 4, 0.05)
        while True:
            due = time.monotonic() + tick
            await asyncio.sleep(tick)
            self.workers.forgive_own_stall(time.monotonic() - due)
            for live in list(self.experiments.values()):
                live.host.answers.prune(live.host.run)
            runs = [live.host.run for live in self.experiments.values()]
            for lost in self.workers.lost(runs):
                target = self.experiments.get(lost.experiment_id)
                if target is None:
                    continue
                with contextlib.suppress(
                    StaleOwnerError, ExperimentBrokenError, ServiceStoppedError
                ):
                    await self.apply(target, lost.body, lost.message_id)
                    await self.make_durable(target)  # its record, for the feed and a restart
            self.feed.wake()
            if self.health_file is not None:
                self.health_file.touch()
