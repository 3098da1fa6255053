"""The worker agent: one per machine, one slot per GPU (or ``--slots`` CPU slots).

It takes ``RunTrial`` commands from the work queues of the sizes it can fit: a worker with
``N`` slots consumes the bucket queues ``b <= N`` (``work`` for trials of 0 or 1 slot,
``work.2``, ``work.4``, ... for trials of up to 2, 4, ... slots), each with prefetch 1 and
only while at least ``b`` of its slots are free, so that every command it receives fits
when it arrives; and, at a lower consumer priority, while the slots of a trial it was
told to stop would fit, to take one command ahead (:mod:`.upcoming`). A trial too large
for it never reaches it, and never stops it taking work that fits (no head-of-line
blocking). A command is
acknowledged as soon as the trial has started and ``trial_started`` is confirmed, so a
trial that trains for days never trips RabbitMQ's ``consumer_timeout``; from then on the
trial's own events report its life. Commands for a running trial come on this worker's
private control queue, which disappears with the worker.

A command is run only if the broker vouches that the searcher sent it: its validated
``user_id`` is the searcher's broker user (``searcher_user``). Work from anyone else is
dead-lettered, a control message dropped, each with the reason in the log. Where no
broker vouches for users (the in-memory broker), everything is local and accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import structlog

from rung.broker.errors import (
    BrokerError,
    BrokerUnavailableError,
    DecodeError,
    PublishTimeoutError,
)
from rung.broker.port import Broker, Delivery, Handler, Subscription
from rung.broker.rpc import RpcClient
from rung.broker.schemas import (
    CloseTrial,
    ContinueTrial,
    DeleteCheckpoints,
    DescribeExperiment,
    Envelope,
    KillTrial,
    PauseTrial,
    PreemptTrial,
    ReserveSlots,
    RunTrial,
    SlotsReserved,
    TrialExited,
    WorkerHeartbeat,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body
from rung.broker.schemas.events import MAX_PARTS_SHOWN, ExitReason, PartState
from rung.broker.topology import WORK_BUCKETS, work_key
from rung.worker.address import route_address
from rung.worker.bytecode import COMPILE_S
from rung.worker.channels import ChannelServer
from rung.worker.checkpoint_gc import CheckpointGCRefusedError, delete_checkpoints
from rung.worker.contexts import ContextCache
from rung.worker.pristine import KeptRuns, Snapshot, group_gone
from rung.worker.pristine import available as kept_available
from rung.worker.privileges import TrialUser
from rung.worker.reservations import Reservation, Reservations
from rung.worker.rundirs import RunDirs
from rung.worker.settle import to_its_end
from rung.worker.spawn import ForkServer, Spawner, SpawnError, StartMethod, make_spawner
from rung.worker.trial_run import TrialRun
from rung.worker.upcoming import Held, Upcoming, hold_s

__all__ = ["Worker", "default_work_dir", "default_worker_id", "searcher_user_for_worker"]


def default_work_dir(trial_user: TrialUser | None = None, group: int | None = None) -> Path:
    """Where a worker caches contexts and runs its trials when no --work-dir is given:
    ``~/.rung/worker``, shared by this user's workers on the machine; workers whose
    trials run as another account (``--trial-user``) or whose directory a group may read
    (``--dir-group``) get one per account and group, since each sets the directory's
    mode for its own."""
    name = "worker"
    if trial_user is not None:
        name += f"-as-{trial_user.uid}"
    if group is not None:
        name += f"-group-{group}"
    return Path.home() / ".rung" / name


# The control commands for a trial attempt running on this worker.
RunCommand = ContinueTrial | PauseTrial | CloseTrial | PreemptTrial | KillTrial

# How long a start undone lets the broker take back its subscriptions (one that is away
# may never answer).
ABANDON_S = 15.0


def default_worker_id(username: str | None = None) -> str:
    """``<host>-<pid>-<n>``; behind a broker user other than guest, prefixed with
    ``<user>.``, which is what that user's topic permissions and the searcher's
    ``--verify-worker-users`` allow it (a pool of workers can share one user)."""
    base = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    return f"{username}.{base}" if username and username != "guest" else base


def searcher_user_for_worker(worker_user: str | None) -> str | None:
    """The searcher's broker user, by the naming rule of ``rung broker-definitions``,
    beside a worker's own: ``<prefix>worker`` -> ``<prefix>searcher``; ``guest`` (a
    development broker where one user plays every role) -> ``guest``; a dedicated worker
    user -> ``rung-searcher`` (pass ``--searcher-user`` for another prefix); None where
    no broker vouches for users."""
    if worker_user is None:
        return None
    if worker_user == "guest":
        return worker_user
    if worker_user.endswith("worker"):
        return worker_user.removesuffix("worker") + "searcher"
    return "rung-searcher"


class Worker:
    def __init__(
        self,
        broker: Broker,
        *,
        worker_id: str | None = None,
        slots: int = 1,
        gpus: list[str] | None = None,
        work_dir: Path | None = None,
        heartbeat_s: float = 5.0,
        hang_timeout_s: float | None = None,
        start_method: StartMethod = "fork-server",
        health_file: Path | None = None,
        trial_env_allow: Iterable[str] = (),
        trial_user: TrialUser | None = None,
        searcher_user: str | None = None,
        checkpoint_storage: Path | None = None,
        address: str | None = None,
        keep_run_dirs: bool = False,
    ) -> None:
        self.broker = broker
        # Where the ranks of a trial's other parts reach this worker (gang scheduling).
        self.address = address or route_address(getattr(broker, "url", None))
        # Slots held for parts of trials on several workers, as they come free.
        self.reservations = Reservations()
        # Commands are believed only from this broker user (the searcher's): the broker
        # validates every message's user_id. None where no broker vouches for users.
        self.searcher_user = searcher_user or searcher_user_for_worker(broker.username)
        # Checkpoint deletion stays inside this directory (rung worker --checkpoint-storage).
        self.checkpoint_storage = checkpoint_storage
        # Touched after every heartbeat the broker confirmed (rung healthcheck reads it).
        self.health_file = health_file
        self.worker_id = worker_id or default_worker_id(broker.username)
        self.gpus = list(gpus or [])
        # One slot per GPU when there are GPUs; otherwise --slots CPU slots.
        self.total_slots = len(self.gpus) if self.gpus else max(slots, 1)
        self.free = list(range(self.total_slots))
        # The work buckets it consumes: every one whose trials can fit in its slots.
        self.buckets = tuple(b for b in (1, *WORK_BUCKETS) if b <= self.total_slots)
        # Names of environment variables (beyond the built-in allowlist) trials may see.
        self.trial_env_allow = tuple(trial_env_allow)
        # One per user by default, shared by its worker processes on this machine (the
        # context cache is content-addressed and locked; each process's run directories
        # are a session of its own), so that a worker started again removes what one
        # killed before it left (RunDirs.claim) and reuses the contexts it fetched.
        self.work_dir = work_dir or default_work_dir(trial_user)
        self.heartbeat_s = heartbeat_s
        self.hang_timeout_s = hang_timeout_s
        self.start_method: StartMethod = start_method
        # With trial_user, trials run as that account (rung worker --trial-user).
        self.spawner: Spawner = make_spawner(start_method, trial_user=trial_user)
        # The Core API's socket, one for all of this worker's trials.
        self.channels = ChannelServer(trial_user=trial_user)
        self.rpc = RpcClient(broker)
        self.contexts = ContextCache(self.rpc, self.work_dir / "contexts")
        self.runs: dict[tuple[str, int, int], TrialRun] = {}
        self.log = structlog.get_logger("rung.worker").bind(worker_id=self.worker_id)
        # The bucket subscriptions open now: bucket b while at least b slots are free.
        self._work: dict[int, Subscription] = {}
        # Each one's consumer priority: 1 if its trials fit the slots free when it began,
        # 0 if they fit only with the slots of trials told to stop (see .upcoming).
        self._work_priority: dict[int, int] = {}
        # The trials told to stop, and the one command taken ahead for their slots.
        self.upcoming = Upcoming()
        # Set once the worker takes work (its fork server started, its queues consumed).
        self.ready = asyncio.Event()
        self._control_queue: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = itertools.count(1)
        # Message ids must never repeat across restarts of a worker with the same id.
        self._session = uuid.uuid4().hex[:12]
        # Each trial process's private copy of its context, removed once it has ended.
        self.run_dirs = RunDirs(self.work_dir, self._session, keep=keep_run_dirs)
        # Run directories their processes left unchanged, used again (issue 18): not
        # where all are kept, nor where a trial user is handed every entry (it changes
        # each one's change time).
        self.kept = (
            KeptRuns(self.run_dirs)
            if trial_user is None and not keep_run_dirs and kept_available()
            else None
        )
        # Each context copy's key and snapshot, by run directory, until its process ends.
        self._copies: dict[Path, tuple[str, Snapshot]] = {}
        self._leaving: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._intake_lock = asyncio.Lock()
        # Commands already applied, by message id: a re-sent command is a no-op.
        self._seen: deque[str] = deque(maxlen=10_000)
        # Attempts the searcher ended before their part reached this worker (a kill_trial
        # handled before the reserve_slots or run_trial it overtook): never held or run.
        self._ended: deque[tuple[str, int, int]] = deque(maxlen=10_000)
        # Its parts of trials on several workers that ended lately (their exits may
        # still be on their way), which heartbeats show; and the chief's ports a part
        # about to start takes over.
        self._parts_ended: deque[tuple[str, int, int]] = deque(maxlen=64)
        self._held_ports: dict[tuple[str, int, int], list[socket.socket]] = {}

    # ------------------------------------------------------------------ publishing
    async def emit(self, body: Body, *, message_id: str | None = None) -> str:
        """Publish an event to the searcher (heartbeats on their own queue); return its
        message id. Given one, the event is a re-send of the event sent under that id."""
        experiment_id = getattr(body, "experiment_id", "")
        envelope = Envelope(
            message_id=message_id or f"{self.worker_id}/{self._session}/{next(self._seq)}",
            experiment_id=experiment_id,
            body=body,
        )
        topology = self.broker.topology
        if isinstance(body, WorkerHeartbeat):  # the next beat replaces a lost one
            await self.broker.publish(
                topology.events_exchange,
                topology.heartbeat_key(self.worker_id),
                encode(envelope),
                message_id=envelope.message_id,
            )
            return envelope.message_id
        # An event is never dropped: while the broker is away the caller (a trial's Core
        # API call) waits, and the same message id goes out again until it is confirmed.
        attempt = 0
        while True:
            try:
                await self.broker.publish(
                    topology.events_exchange,
                    topology.events_key(self.worker_id),
                    encode(envelope),
                    message_id=envelope.message_id,
                )
            except (BrokerUnavailableError, PublishTimeoutError) as exc:
                attempt += 1
                self.log.warning(
                    "event not confirmed by the broker yet; sending it again",
                    message_id=envelope.message_id,
                    type=body.type,
                    attempt=attempt,
                    error=str(exc),
                )
                await asyncio.sleep(1.0)
            else:
                return envelope.message_id

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        if self.health_file is not None:  # (a restarted worker's last one is not news)
            self.health_file.unlink(missing_ok=True)
        # First: a worker that cannot start its training processes takes no work.
        if stop.is_set() or not await self._start_spawner(stop):
            return  # told to stop as it started: nothing taken, nothing held
        claiming = asyncio.ensure_future(asyncio.to_thread(self.run_dirs.claim))
        taking = asyncio.ensure_future(self._take_work(claiming))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopped = not taking.done()  # (told to stop while the broker was slow)
            if not stopped:
                taking.result()
        except BaseException:  # (a broker gone as the worker starts, or a cancellation)
            await to_its_end(self._abandon_start(claiming, taking))
            raise
        finally:
            stopping.cancel()
        if stopped:
            await to_its_end(self._abandon_start(claiming, taking))
            return
        self.log.info("worker ready", slots=self.total_slots, gpus=self.gpus)
        self.ready.set()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await stop.wait()
        finally:
            heartbeat.cancel()
            await self.shutdown()

    async def _take_work(self, claiming: asyncio.Future[list[Path]]) -> None:
        """Hold this session's run directories, then consume this worker's own queue
        and the work it fits."""
        removed = await asyncio.shield(claiming)  # (a thread: never left running)
        if removed:
            self.log.info(
                "removed the run directories of worker processes that stopped",
                sessions=len(removed),
            )
        topology = self.broker.topology
        self._control_queue = await self.broker.declare_private_queue(
            (topology.commands_exchange, topology.worker_key(self.worker_id))
        )
        await self.broker.subscribe(self._control_queue, self._on_control, prefetch=32)
        await self._update_intake()

    async def _start_spawner(self, stop: asyncio.Event) -> bool:
        """Start the fork server before taking any work: the first trial does not wait
        for its start, and a worker whose training processes cannot start takes none.
        False if ``stop`` came first; then, as on any failure, the server is stopped."""
        starting = asyncio.ensure_future(self.spawner.start())
        stopping = asyncio.ensure_future(stop.wait())
        started = False
        try:
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                starting.result()
                started = True
        except SpawnError as exc:
            raise SpawnError(
                f"{exc}; this worker takes no work without it. Check that its Python can "
                "run `python -m rung.worker.forkserver` (a server that fails writes why "
                "on the worker's stderr), or use the exec start method: --start-method "
                'exec (rung worker, rung run), start_method="exec" (rung.Client.local)'
            ) from exc
        finally:
            stopping.cancel()
            if not started:
                starting.cancel()
                await to_its_end(self._stop_spawner(starting))
        return started

    async def _stop_spawner(self, starting: asyncio.Future[None]) -> None:
        await asyncio.gather(starting, return_exceptions=True)
        await self.spawner.close()

    async def _abandon_start(
        self, claiming: asyncio.Future[list[Path]], taking: asyncio.Future[None]
    ) -> None:
        """Undo a start that failed or was stopped before the worker was ready: nothing
        consumes for it, work that came in meanwhile goes back as a stop lets it go, and
        neither its fork server nor its claim on the run directories is left. The
        broker's part is bounded (a broker that is away may never answer); what it could
        not undo goes with the connection."""
        self._stopping = True
        taking.cancel()
        letting_go = asyncio.ensure_future(self._let_work_go(taking))
        try:
            done, _ = await asyncio.wait({letting_go}, timeout=ABANDON_S)
            if not done:
                letting_go.cancel()
                self._work.clear()
                self.log.warning(
                    "the broker did not answer as the worker stopped starting; its "
                    "subscriptions end with its connection",
                    within_s=ABANDON_S,
                )
                for run in self.runs.values():  # (what it took goes back with them too)
                    run.kill("the worker stopped as it started, its broker away")
            elif self._took_work():
                # Work came in before the start was undone: let it go as a stop does
                # (trials checkpoint and stop, held commands and slots go back).
                try:
                    await self.shutdown()
                except Exception:  # the start's own error is the one raised
                    self.log.exception("could not let go of the work taken as it started")
        finally:
            try:
                await self.spawner.close()
            finally:
                await asyncio.wait({claiming})  # (its thread has ended: nothing races it)
                await self.run_dirs.close()

    def _took_work(self) -> bool:
        return bool(
            self._tasks or self.runs or self.reservations.by_key or self.upcoming.held is not None
        )

    async def _let_work_go(self, taking: asyncio.Future[None]) -> None:
        await asyncio.gather(taking, return_exceptions=True)
        try:
            await self._pause_intake()
            if self._control_queue is not None:
                await self.broker.delete_private_queue(self._control_queue)
        except Exception as exc:  # noqa: BLE001 (best effort: the original error is raised)
            self.log.warning("could not let go of the worker's queues", error=str(exc))

    async def shutdown(self, grace_s: float = 60.0) -> None:
        """Stop intake, ask running trials to checkpoint and stop, then let their work go."""
        self._stopping = True
        await self._pause_intake()
        if (held := self.upcoming.held) is not None:
            await self._give_back_held(held)
        for key in list(self.reservations.by_key):
            reservation = self.reservations.pop(key)
            if reservation is not None:
                with contextlib.suppress(BrokerError, TimeoutError):  # (else: found lost)
                    why = f"worker {self.worker_id} stopped"
                    await asyncio.wait_for(self._part_ended(reservation.cmd, why), timeout=5)
        for run in self.runs.values():
            run.request_preemption()
        # A member part's ranks never see should_preempt() (the chief's part asks): each
        # says PREEMPTED first, then is stopped; the attempt resumes from its checkpoint.
        why = f"worker {self.worker_id} is stopping"
        await asyncio.gather(
            *(run.stop_member(why) for run in list(self.runs.values()) if run.member)
        )
        if self._tasks:
            self.log.info("waiting for trials to checkpoint and stop", trials=len(self.runs))
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for run in self.runs.values():
                run.kill(f"it did not stop within {grace_s:g} s of the worker's shutdown")
            if pending:
                await asyncio.wait(pending, timeout=10)
        await self.spawner.close()  # after the trials: its children die with it
        self.channels.close()
        if self.kept is not None:
            self.kept.close()  # (directories ending now are removed, not compared)
        if self._leaving:  # (before the session goes)
            await asyncio.wait(self._leaving, timeout=30)
        await self.run_dirs.close()
        if self._control_queue is not None:
            with contextlib.suppress(BrokerError):
                await self.broker.delete_private_queue(self._control_queue)

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(BrokerError):
                await self.emit(
                    WorkerHeartbeat(
                        worker_id=self.worker_id,
                        slots=self.total_slots,
                        free_slots=len(self.free),
                        gpus=self.gpus,
                        running=[f"{e}/{t}/{a}" for e, t, a in self.runs],
                        address=self.address,
                        parts=self._parts() or None,
                    )
                )
                if self.health_file is not None:  # healthy: the broker took a heartbeat
                    self.health_file.touch()
            await asyncio.sleep(self.heartbeat_s)

    def _parts(self) -> dict[str, PartState]:
        """Its parts of trials on several workers, as its heartbeat shows them."""
        parts: dict[str, PartState] = {}
        for e, t, a in self._parts_ended:
            parts[f"{e}/{t}/{a}"] = "ended"
        for e, t, a in self.reservations.by_key:
            parts[f"{e}/{t}/{a}"] = "held"
        for (e, t, a), run in self.runs.items():
            if run.cmd.gang is not None:
                parts[f"{e}/{t}/{a}"] = "running"
        # The newest first, should it be cut: held and running ones are at most a slot each.
        return dict(list(parts.items())[-MAX_PARTS_SHOWN:])

    def wanted_buckets(self) -> tuple[int, ...]:
        """The buckets to consume now: those whose largest trial fits the free slots, or
        the free slots and those of the trials told to stop (one command taken ahead at
        most, and none while slots are held for a part of a trial on several workers:
        those take the slots that free first)."""
        if self._stopping:
            return ()
        room = self._spare() + (0 if len(self.reservations) else self.upcoming.room())
        return tuple(b for b in self.buckets if b <= room)

    def _spare(self) -> int:
        """Free slots, less those the command taken ahead counts on."""
        return max(0, len(self.free) - self.upcoming.spoken_for())

    def _priority(self, bucket: int) -> int:
        """A bucket's consumer priority now: 1 if its trials fit the free slots, else 0."""
        return 1 if bucket <= self._spare() else 0

    async def _update_intake(self) -> None:
        """Consume each bucket exactly while its trials fit the free slots.

        While the connection is down, subscribing fails: keep trying, or the worker would
        sit idle with free slots for good.
        """
        async with self._intake_lock:  # one change of subscriptions at a time
            await self._set_intake()

    async def _set_intake(self) -> None:
        attempt = 0
        topology = self.broker.topology
        while True:
            try:
                # Stop what no longer fits first, then take up what fits again: the
                # largest first, each only if it still fits (a delivery of one taken up
                # already may have taken slots meanwhile), so that fewer deliveries race.
                for bucket in sorted(self._work, reverse=True):
                    wanted = bucket in self.wanted_buckets()
                    if not wanted or self._work_priority.get(bucket) != self._priority(bucket):
                        # (one of the wrong priority is consumed again with the right one)
                        self._work_priority.pop(bucket, None)
                        await self._work.pop(bucket).cancel()
                for bucket in reversed(self.buckets):
                    if bucket in self.wanted_buckets() and bucket not in self._work:
                        priority = self._priority(bucket)
                        self._work[bucket] = await self.broker.subscribe(
                            topology.bucket_queue(bucket),
                            self._work_handler(bucket),
                            prefetch=1,
                            priority=priority,
                        )
                        self._work_priority[bucket] = priority
            except BrokerUnavailableError as exc:
                attempt += 1
                self.log.warning(
                    "cannot take work yet: the broker connection is down; trying again",
                    attempt=attempt,
                    error=str(exc),
                )
                await asyncio.sleep(1.0)
                continue
            if self.wanted_buckets() != tuple(sorted(self._work)) or any(
                self._work_priority.get(b) != self._priority(b) for b in self._work
            ):
                continue  # slots were taken or freed meanwhile
            return

    def _work_handler(self, bucket: int) -> Handler:
        async def handle(delivery: Delivery) -> None:
            await self._on_work(delivery, bucket)

        return handle

    # ------------------------------------------------------------------ work
    def _forged(self, delivery: Delivery) -> str | None:
        """Why ``delivery`` is not a command of the searcher's, or None if it is.

        The broker stamps (and checks) the publisher's user on every message; only the
        searcher's user sends commands. Where no broker vouches for users (the in-memory
        broker: no user_id, and the worker's own broker has no username), everything is
        local and accepted."""
        sender = delivery.user_id
        if sender is None and self.broker.username is None:
            return None
        if self.searcher_user is not None and sender == self.searcher_user:
            return None
        return (
            f"worker {self.worker_id}: a command must come from the searcher's broker user "
            f"{self.searcher_user!r}, this one came from {sender!r}; commands from anyone "
            "else are never run (set rung worker --searcher-user if the searcher uses "
            "another user)"
        )

    async def _delete_checkpoints(self, delivery: Delivery, body: DeleteCheckpoints) -> None:
        """Checkpoint garbage collection, in a thread, without taking a slot. A command
        this worker refuses (or cannot run) is dead-lettered with the reason."""
        try:
            deleted = await asyncio.to_thread(
                delete_checkpoints, body, allowed_root=self.checkpoint_storage
            )
        except (CheckpointGCRefusedError, OSError) as exc:
            self.log.warning(
                "checkpoint deletion refused or failed",
                experiment_id=body.experiment_id,
                error=str(exc),
            )
            await delivery.dead_letter(f"worker {self.worker_id}: {exc}")
            return
        self.log.info(
            "checkpoints deleted",
            experiment_id=body.experiment_id,
            deleted=len(deleted),
            asked=len(body.uuids),
        )
        await delivery.ack()

    async def _on_work(self, delivery: Delivery, bucket: int = 1) -> None:
        if (forged := self._forged(delivery)) is not None:
            self.log.warning("work message not from the searcher dead-lettered", reason=forged)
            await delivery.dead_letter(forged)
            return
        try:
            body = decode(delivery.body).body
        except DecodeError as exc:
            self.log.warning("malformed work message", error=str(exc))
            await delivery.dead_letter(f"worker {self.worker_id}: {exc}")
            return
        if isinstance(body, DeleteCheckpoints):
            await self._delete_checkpoints(delivery, body)
            return
        if not isinstance(body, RunTrial):
            await delivery.dead_letter(f"expected run_trial on the work queue, got {body.type}")
            return
        if (body.experiment_id, body.trial_id, body.attempt) in self.runs:
            # The same attempt again (re-sent by a restarted searcher): it runs here already.
            self.log.info(
                "duplicate run_trial dropped", trial_id=body.trial_id, attempt=body.attempt
            )
            await delivery.ack()
            return
        need = max(body.slots, 1)
        if need > bucket:
            # Not the searcher's routing: taken here it could block this bucket for good.
            reason = (
                f"run_trial needs {need} slots but came on {delivery.queue or 'the work queue'}, "
                f"which holds trials of at most {bucket} slot(s); the searcher publishes it "
                f"with routing key {work_key(need)!r}"
            )
            self.log.warning("misrouted run_trial dead-lettered", reason=reason)
            await delivery.dead_letter(reason)
            return
        if need > self._spare() and not self._stopping and self._may_hold(need):
            await self._hold(delivery, body)
            return
        if need > self._spare() or self._stopping:
            # Another bucket's command took the slots first: stop consuming what no longer
            # fits, then give this one back (to another worker, or to this one once slots
            # free up).
            await self._update_intake()
            await delivery.requeue()
            return
        slots, self.free = self.free[:need], self.free[need:]
        await self._take(delivery, body, slots)

    async def _take(
        self, delivery: Delivery, body: RunTrial, slots: list[int], *, run_dir: Path | None = None
    ) -> None:
        """Start the trial in ``slots`` (taken already), watch it, acknowledge its command;
        give the command back if the start raised. ``run_dir``: its context, copied there
        already."""
        # Stop consuming what no longer fits before acknowledging (until then prefetch
        # holds further deliveries back), while the trial starts: not one after the other.
        intake = asyncio.ensure_future(self._update_intake())
        try:
            run = await self._start(body, slots, run_dir=run_dir)
        except Exception:
            with contextlib.suppress(Exception):
                await intake
            self._release(slots)
            await delivery.requeue()
            await self._update_intake()
            raise
        except BaseException:  # cancelled: the worker's handler is being stopped
            intake.cancel()
            raise
        try:
            await intake
        except Exception:  # the trial runs; its subscriptions are set right again later
            self.log.exception("could not update the work subscriptions after a start")
        if run is not None:
            # Watched before the ack: whatever happens to the ack, the trial runs here.
            task = asyncio.create_task(self._watch(run, slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._release(slots)
            await self._update_intake()
        try:
            await delivery.ack()
        except BrokerUnavailableError as exc:
            # The broker will hand the command to someone again; the searcher knows this
            # worker runs the attempt (its trial_started is confirmed) and fences the copy.
            self.log.warning(
                "could not acknowledge run_trial; the trial runs here all the same",
                trial_id=body.trial_id,
                attempt=body.attempt,
                error=str(exc),
            )

    def _release(self, slots: list[int]) -> None:
        """Slots come free: the reservations waiting for slots take them first, then the
        command taken ahead for them, if any."""
        self.free, completed = self.reservations.give([*self.free, *slots])
        for reservation in completed:
            self._spawn_task(self._answer_reserved(reservation))
        if self._stopping:
            return
        held = self.upcoming.take(len(self.free))
        if held is not None:
            taken, self.free = self.free[: held.need], self.free[held.need :]
            self._spawn_task(self._start_held(held, taken))

    # ------------------------------------------------------------------ taken ahead
    def _may_hold(self, need: int) -> bool:
        """Whether a command that does not fit the free slots now may wait here for the
        slots of the trials told to stop (see :mod:`.upcoming`)."""
        return not len(self.reservations) and need <= self._spare() + self.upcoming.room()

    async def _hold(self, delivery: Delivery, body: RunTrial) -> None:
        """Take ``body`` ahead of its slots: copy its context meanwhile, start it when the
        slots free (:meth:`_release`), give it back if they have not freed in time
        (:func:`.upcoming.hold_s`)."""
        held = self.upcoming.hold(delivery, body)
        held.prepared = asyncio.create_task(self._prepare(body))
        held.timer = asyncio.get_running_loop().call_later(
            hold_s(delivery), lambda: self._spawn_task(self._give_back_held(held, expired=True))
        )
        self.log.debug(
            "run_trial taken ahead, for the slots of a trial told to stop",
            experiment_id=body.experiment_id,
            trial_id=body.trial_id,
            attempt=body.attempt,
        )
        try:
            await self._update_intake()  # the room it took is consumed no more
        except Exception:  # held all the same: raising would requeue a command held here
            self.log.exception("could not update the work subscriptions after taking ahead")

    async def _prepare(self, cmd: RunTrial) -> Path:
        run_dir = self.run_dirs.new(cmd.experiment_id, cmd.trial_id, cmd.attempt)
        try:
            return await self._copy_context(cmd, run_dir)
        except BaseException:
            self._spawn_task(self._discard(run_dir))
            raise

    async def _copy_context(self, cmd: RunTrial, run_dir: Path) -> Path:
        """The context's copy for one process, at ``run_dir``: a directory kept from an
        earlier process of the same experiment and context (moved there), or a new copy,
        whose snapshot says afterwards whether its process left it unchanged."""
        if self.kept is None:
            return await self.contexts.run_dir(cmd.context_hash, run_dir)
        key = f"{cmd.experiment_id}/{cmd.context_hash}"
        if not self.kept.wanted(key):
            return await self.contexts.run_dir(cmd.context_hash, run_dir)
        if (found := self.kept.take(key)) is not None:
            path, taken = found
            if await asyncio.to_thread(self.kept.move, path, run_dir, taken):
                self._copies[run_dir] = (key, taken)
                return run_dir
        compile_with = self._compile if isinstance(self.spawner, ForkServer) else None
        made = await self.contexts.copy(cmd.context_hash, run_dir, compile_with=compile_with)
        if made is None:
            self.kept.unwanted(key)
        else:
            self._copies[run_dir] = (key, made)
        return run_dir

    async def _compile(self, run_dir: Path, entries: int, size: int) -> bool:
        """A fresh copy's modules compiled before its snapshot, so that its processes
        neither compile them again nor change it (rung.worker.bytecode), adding at most
        ``entries`` entries and ``size`` bytes. False where that failed."""
        assert isinstance(self.spawner, ForkServer)  # noqa: S101 (its only caller checks)
        try:
            compiled = await self.spawner.compile(
                run_dir, timeout=COMPILE_S, entries=entries, size=size
            )
        except Exception as exc:  # noqa: BLE001 (the copy is used all the same)
            self.log.warning("could not compile a context's copy", error=str(exc))
            return False
        if not compiled:
            self.log.warning(
                "compiling a context's copy failed or took too long; its processes "
                "compile its modules themselves",
                timeout_s=COMPILE_S,
            )
        return compiled

    async def _discard(self, run_dir: Path) -> None:
        """Remove a run directory no process ran in (never kept)."""
        self._copies.pop(run_dir, None)
        await self.run_dirs.remove(run_dir)

    async def _leave(self, run: TrialRun) -> None:
        """A run ended: its directory kept for the next process of its experiment and
        context if its process was reaped, nothing of its process group is left, and it
        left the directory as its copy was made; else removed."""
        copy = self._copies.pop(run.run_dir, None)
        process = run.process
        gone = process is not None and process.returncode is not None and group_gone(process.pid)
        if self.kept is None or copy is None or not gone:
            await self.run_dirs.remove(run.run_dir)
            return
        try:
            await self.kept.leave(run.run_dir, *copy)
        except Exception:  # a script's doing must never leave its directory behind
            self.log.exception("could not compare a run directory; removing it")
            await self.run_dirs.remove(run.run_dir)

    async def _start_held(self, held: Held, slots: list[int]) -> None:
        """Its slots are free: start the command taken ahead (or give it back if its link
        to the broker was lost meanwhile: the broker hands it to a worker again)."""
        run_dir = await held.run_dir()
        ended = held.key in self._ended  # killed while it waited: never run
        if ended or self._stopping or held.delivery.link_lost():
            if run_dir is not None:
                self._spawn_task(self._discard(run_dir))
            self._release(slots)
            await self._update_intake()
            with contextlib.suppress(BrokerError):  # (a lost link gives it back by itself)
                if ended:
                    await held.delivery.ack()
                elif self._stopping:
                    await held.delivery.requeue()
            return
        await self._take(held.delivery, held.body, slots, run_dir=run_dir)

    async def _drop_held(self, held: Held) -> None:
        """The attempt of the command taken ahead was killed: acknowledge it, never run."""
        if self.upcoming.held is not held:
            return  # (started or given back meanwhile: the start checks for the kill)
        self.upcoming.drop()
        self._spawn_task(self._remove_prepared(held))
        with contextlib.suppress(BrokerError):
            await held.delivery.ack()
        await self._update_intake()

    async def _remove_prepared(self, held: Held) -> None:
        """Remove the run directory a held command's context went to, once its copy (in
        a thread) has ended."""
        run_dir = await held.run_dir()
        if run_dir is not None:
            await self._discard(run_dir)

    async def _give_back_held(self, held: Held, *, expired: bool = False) -> None:
        """Send the command taken ahead back to the queue, if it is still held: the slots
        it waited for did not free in time (``expired``), or the worker stops. Settled
        first: its context's copy is removed once it has ended, beside."""
        if self.upcoming.held is not held:
            return
        self.upcoming.drop(expired=expired)
        self.log.info(
            "run_trial taken ahead given back",
            experiment_id=held.body.experiment_id,
            trial_id=held.body.trial_id,
            attempt=held.body.attempt,
            why="the slots did not free in time" if expired else "the worker is stopping",
        )
        self._spawn_task(self._remove_prepared(held))
        with contextlib.suppress(BrokerError):  # (a lost link gives it back by itself)
            await held.delivery.requeue()
        await self._update_intake()

    def _spawn_task(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log.error("a task of the worker failed", error=repr(error))

    async def _pause_intake(self) -> None:
        """Stop consuming every bucket."""
        async with self._intake_lock:
            while self._work:
                _, work = self._work.popitem()
                await work.cancel()

    async def _start(
        self, cmd: RunTrial, slots: list[int], *, run_dir: Path | None = None
    ) -> TrialRun | None:
        """Start the trial in ``slots``; ``run_dir``: where its context was copied already
        (else it is copied now)."""
        prepared = run_dir is not None
        run_dir = run_dir or self.run_dirs.new(cmd.experiment_id, cmd.trial_id, cmd.attempt)
        gpus = [self.gpus[i] for i in slots] if self.gpus else []
        run = TrialRun(
            cmd,
            worker_id=self.worker_id,
            run_dir=run_dir,
            gpus=gpus,
            slot_ids=slots,
            emit=self.emit,
            best_validation=lambda: self._best_validation(cmd.experiment_id),
            hang_timeout_s=self.hang_timeout_s,
            spawner=self.spawner,
            channels=self.channels,
            trial_env_allow=self.trial_env_allow,
            held_ports=self._held_ports.pop((cmd.experiment_id, cmd.trial_id, cmd.attempt), ()),
        )
        # Known from the first await on: a copy of the command delivered meanwhile is a
        # duplicate. Forgotten again if the start fails or raises, so that the command,
        # given back, runs when it comes again.
        self.runs[run.key] = run
        try:
            if not prepared:
                await self._copy_context(cmd, run_dir)
            started = await run.start()
        except BaseException:
            self.runs.pop(run.key, None)
            self.upcoming.never_started(run.key)  # (told to stop meanwhile: slots free)
            self._spawn_task(self._discard(run_dir))
            raise
        if not started:
            self.runs.pop(run.key, None)
            self.upcoming.never_started(run.key)
            self._spawn_task(self._discard(run_dir))
            return None
        return run

    async def _watch(self, run: TrialRun, slots: list[int]) -> None:
        released = False

        def release() -> None:
            # The process is reaped: its slots are free, although its last logs and its
            # trial_exited are still on their way. The next trial starts meanwhile.
            nonlocal released
            if released:
                return
            released = True
            self.upcoming.left(run.key)
            self._release(slots)
            task = asyncio.create_task(self._update_intake())
            self._tasks.add(task)
            task.add_done_callback(self._intake_updated)

        run.on_reaped = release
        try:
            await run.wait()  # returns or raises once the trial's process is reaped
        finally:
            self.runs.pop(run.key, None)
            leaving = self._spawn_task(self._leave(run))
            self._leaving.add(leaving)
            leaving.add_done_callback(self._leaving.discard)
            if run.cmd.gang is not None:
                self._parts_ended.append(run.key)
            if not released:
                released = True
                self.upcoming.left(run.key)
                self._release(slots)
                await self._update_intake()

    def _intake_updated(self, task: asyncio.Task[None]) -> None:
        """A subscription change run beside the trials ended: say so if it failed (the
        next slot change, or a delivery that no longer fits, sets them right again)."""
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log.error("could not update the work subscriptions", error=repr(error))

    async def _best_validation(self, experiment_id: str) -> float | None:
        reply = await self.rpc.call(DescribeExperiment(experiment_id=experiment_id))
        best = (reply.result or {}).get("best_trial") if reply.ok else None
        return None if best is None else best.get("metric")

    # ------------------------------------------------------------------ gangs
    async def _reserve(self, body: ReserveSlots) -> None:
        """Hold slots for a part of a trial on several workers, as they come free."""
        key = (body.experiment_id, body.trial_id, body.attempt)
        if key in self.runs or key in self.reservations or key in self._ended:
            return  # it runs here, holds its slots already (a re-sent command), or ended
        if body.slots > self.total_slots or self._stopping:
            why = (
                "it is stopping"
                if self._stopping
                else f"it has {self.total_slots} slots, the part needs {body.slots}"
            )
            await self._part_ended(
                body, f"worker {self.worker_id} cannot hold part {body.part}: {why}"
            )
            return
        self.reservations.add(body)
        self.log.info(
            "holding slots for a part of a trial on several workers",
            experiment_id=body.experiment_id,
            trial_id=body.trial_id,
            attempt=body.attempt,
            part=body.part,
            slots=body.slots,
        )
        self._release([])  # it takes the free slots now; the rest as they come free
        await self._update_intake()

    async def _answer_reserved(self, reservation: Reservation) -> None:
        cmd = reservation.cmd
        if reservation.failed is not None:
            if await self._give_back(reservation.key, reservation.failed):  # (not ended since)
                await self._part_ended(cmd, f"worker {self.worker_id}: {reservation.failed}")
            return
        pub, master = reservation.ports or (None, None)
        await self.emit(
            SlotsReserved(
                experiment_id=cmd.experiment_id,
                trial_id=cmd.trial_id,
                attempt=cmd.attempt,
                worker_id=self.worker_id,
                part=cmd.part,
                pub_port=pub,
                master_port=master,
            )
        )

    async def _give_back(self, key: tuple[str, int, int], why: str) -> bool:
        """Give back the slots held for a part; False if none were (any more)."""
        reservation = self.reservations.pop(key)
        if reservation is None:
            return False
        self.log.info("slots held for a part given back", trial_id=key[1], attempt=key[2], why=why)
        self._release(reservation.held)
        await self._update_intake()
        return True

    async def _part_ended(
        self,
        body: ReserveSlots | RunTrial,
        why: str,
        *,
        reason: ExitReason = ExitReason.PREEMPTED,
    ) -> None:
        """Tell the searcher this worker's part of an attempt will not run: the attempt
        ends, by default as a preemption (the trial resumes, without a restart counted)."""
        self._parts_ended.append((body.experiment_id, body.trial_id, body.attempt))
        self.log.warning("a part of a trial will not run here", trial_id=body.trial_id, why=why)
        await self.emit(
            TrialExited(
                experiment_id=body.experiment_id,
                trial_id=body.trial_id,
                attempt=body.attempt,
                worker_id=self.worker_id,
                reason=reason,
                message=why,
            )
        )

    async def _run_part(self, body: RunTrial) -> None:
        """Start this worker's part of a trial on several workers, in the slots held."""
        key = (body.experiment_id, body.trial_id, body.attempt)
        if body.gang is None:
            self.log.warning("run_trial without a placement on the control queue; ignored")
            return
        if key in self.runs or key in self._ended:
            return  # (a re-sent command, or the attempt ended before it came)
        reservation = self.reservations.pop(key, keep_ports=True)
        if reservation is None or not reservation.complete or self._stopping:
            if reservation is not None:
                reservation.release_ports()
                self._release(reservation.held)
                await self._update_intake()
            why = (
                "is stopping"
                if self._stopping
                else f"holds no slots for part {body.gang.rank} of attempt {body.attempt} "
                "(it restarted, or gave them back)"
            )
            await self._part_ended(body, f"worker {self.worker_id} {why}")
            return
        slots = reservation.held
        self._held_ports[key] = reservation.sockets  # the part lets them go as it spawns
        try:
            run = await self._start(body, slots)
        except Exception as exc:  # noqa: BLE001 (the part's failure, not the worker's)
            self._release(slots)
            await self._update_intake()
            why = f"worker {self.worker_id} could not start it: {exc!r}"
            # A failure, counted: the same cause on every try must not place it for ever.
            await self._part_ended(body, why, reason=ExitReason.ERRORED)
            return
        except BaseException:
            self._release(slots)
            raise
        finally:
            reservation.release_ports()  # (the part's own copy let them go already)
            self._held_ports.pop(key, None)
        if run is None:  # it could not start, and said so: its exit is on its way
            self._parts_ended.append(key)
            self._release(slots)
            await self._update_intake()
            return
        task = asyncio.create_task(self._watch(run, slots))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ control
    async def _on_control(self, delivery: Delivery) -> None:
        if (forged := self._forged(delivery)) is not None:
            # A control queue has no dead-letter exchange: dropped, with the reason logged.
            self.log.warning("control message not from the searcher dropped", reason=forged)
            await delivery.ack()
            return
        try:
            envelope = decode(delivery.body)
        except DecodeError as exc:
            await delivery.dead_letter(f"worker {self.worker_id}: {exc}")
            return
        await delivery.ack()
        if envelope.message_id in self._seen:
            self.log.info("duplicate command dropped", message_id=envelope.message_id)
            return
        self._seen.append(envelope.message_id)
        body = envelope.body
        if isinstance(body, ReserveSlots | RunTrial):
            await (self._reserve(body) if isinstance(body, ReserveSlots) else self._run_part(body))
            return
        if not isinstance(body, RunCommand):
            self.log.warning("unexpected control message", type=body.type)
            return
        key = (body.experiment_id, body.trial_id, body.attempt)
        if isinstance(body, KillTrial) and key in self.reservations:
            await self._give_back(key, "the searcher ended the attempt")
            return
        run = self.runs.get(key)
        if run is None and isinstance(body, KillTrial):
            self._ended.append(key)
            held = self.upcoming.held
            if held is not None and held.key == key:  # taken ahead: never to run
                self._spawn_task(self._drop_held(held))
        if run is None:
            self.log.info(
                "command for a trial attempt not running here; ignored",
                type=body.type,
                trial_id=body.trial_id,
                attempt=body.attempt,
            )
            return
        self._tell(run, body)

    def _tell(self, run: TrialRun, body: RunCommand) -> None:
        """Hand a control command to the trial attempt running here that it names."""
        match body:
            case ContinueTrial():
                run.continue_to(body.length)
            case PauseTrial():
                run.stop_ops("pause")
            case CloseTrial():
                run.stop_ops("close")
            case PreemptTrial():
                run.request_preemption()
            case KillTrial():
                self.log.info("killing a trial's process", trial_id=body.trial_id)
                run.kill("the searcher asked (the experiment was killed, or the attempt is stale)")
        if isinstance(body, PauseTrial | CloseTrial | KillTrial) and run.cmd.gang is None:
            # Its slots free once its process ends: the next command may be taken ahead
            # (the subscriptions change beside the control queue's next messages).
            self.upcoming.stopping(run.key, len(run.slot_ids))
            task = asyncio.create_task(self._update_intake())
            self._tasks.add(task)
            task.add_done_callback(self._intake_updated)
