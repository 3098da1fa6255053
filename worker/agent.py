"""The worker agent: one per machine, one slot per GPU (or ``--slots`` CPU slots).

It takes ``RunTrial`` commands from the shared work queue only while it has free slots:
it consumes with prefetch 1, and stops consuming when its slots are full. A command is
acknowledged as soon as the trial has started and ``trial_started`` is confirmed, so a
trial that trains for days never trips RabbitMQ's ``consumer_timeout``; from then on the
trial's own events report its life. Commands for a running trial come on this worker's
private control queue, which disappears with the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import uuid
from collections import deque
from pathlib import Path

import structlog

from rung.broker.errors import (
    BrokerError,
    BrokerUnavailableError,
    DecodeError,
    PublishTimeoutError,
)
from rung.broker.port import Broker, Delivery, Subscription
from rung.broker.rpc import RpcClient
from rung.broker.schemas import (
    CloseTrial,
    ContinueTrial,
    DescribeExperiment,
    Envelope,
    KillTrial,
    PauseTrial,
    PreemptTrial,
    RunTrial,
    WorkerHeartbeat,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body
from rung.worker.contexts import ContextCache
from rung.worker.spawn import Spawner, StartMethod, make_spawner
from rung.worker.trial_run import TrialRun

__all__ = ["Worker", "default_worker_id"]


def default_worker_id(username: str | None = None) -> str:
    """``<host>-<pid>-<n>``; behind a broker user other than guest, prefixed with
    ``<user>.``, which is what that user's topic permissions and the searcher's
    ``--verify-worker-users`` allow it (a pool of workers can share one user)."""
    base = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    return f"{username}.{base}" if username and username != "guest" else base


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
    ) -> None:
        self.broker = broker
        # Touched after every heartbeat the broker confirmed (rung healthcheck reads it).
        self.health_file = health_file
        self.worker_id = worker_id or default_worker_id(broker.username)
        self.gpus = list(gpus or [])
        # One slot per GPU when there are GPUs; otherwise --slots CPU slots.
        self.total_slots = len(self.gpus) if self.gpus else max(slots, 1)
        self.free = list(range(self.total_slots))
        self.work_dir = work_dir or Path.home() / ".rung" / "worker" / self.worker_id
        self.heartbeat_s = heartbeat_s
        self.hang_timeout_s = hang_timeout_s
        self.start_method: StartMethod = start_method
        self.spawner: Spawner = make_spawner(start_method)
        self.rpc = RpcClient(broker)
        self.contexts = ContextCache(self.rpc, self.work_dir / "contexts")
        self.runs: dict[tuple[str, int, int], TrialRun] = {}
        self.log = structlog.get_logger("rung.worker").bind(worker_id=self.worker_id)
        self._work: Subscription | None = None
        self._control_queue: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = itertools.count(1)
        # Message ids must never repeat across restarts of a worker with the same id.
        self._session = uuid.uuid4().hex[:12]
        self._stopping = False
        self._waiting_for_slots = 0
        self._intake_lock = asyncio.Lock()
        # Commands already applied, by message id: a re-sent command is a no-op.
        self._seen: deque[str] = deque(maxlen=10_000)

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
        topology = self.broker.topology
        self._control_queue = await self.broker.declare_private_queue(
            (topology.commands_exchange, topology.worker_key(self.worker_id))
        )
        await self.broker.subscribe(self._control_queue, self._on_control, prefetch=32)
        await self._update_intake()
        self.log.info("worker ready", slots=self.total_slots, gpus=self.gpus)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await stop.wait()
        finally:
            heartbeat.cancel()
            await self.shutdown()

    async def shutdown(self, grace_s: float = 60.0) -> None:
        """Stop intake, ask running trials to checkpoint and stop, then let their work go."""
        self._stopping = True
        await self._pause_intake()
        for run in self.runs.values():
            run.request_preemption()
        if self._tasks:
            self.log.info("waiting for trials to checkpoint and stop", trials=len(self.runs))
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for run in self.runs.values():
                run.kill(f"it did not stop within {grace_s:g} s of the worker's shutdown")
            if pending:
                await asyncio.wait(pending, timeout=10)
        await self.spawner.close()  # after the trials: its children die with it
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
                    )
                )
                if self.health_file is not None:  # healthy: the broker took a heartbeat
                    self.health_file.touch()
            await asyncio.sleep(self.heartbeat_s)

    async def _update_intake(self) -> None:
        """Consume work exactly while a slot is free (and enough for a waiting command).

        While the connection is down, subscribing fails: keep trying, or the worker would
        sit idle with free slots for good.
        """
        async with self._intake_lock:  # one subscription at a time, never two
            await self._set_intake()

    async def _set_intake(self) -> None:
        attempt = 0
        while True:
            want = (
                not self._stopping
                and len(self.free) > 0
                and len(self.free) >= self._waiting_for_slots
            )
            try:
                if want and self._work is None:
                    self._work = await self.broker.subscribe(
                        self.broker.topology.work_queue, self._on_work, prefetch=1
                    )
                elif not want:
                    await self._pause_intake()
            except BrokerUnavailableError as exc:
                attempt += 1
                self.log.warning(
                    "cannot take work yet: the broker connection is down; trying again",
                    attempt=attempt,
                    error=str(exc),
                )
                await asyncio.sleep(1.0)
                continue
            return

    # ------------------------------------------------------------------ work
    async def _on_work(self, delivery: Delivery) -> None:
        try:
            body = decode(delivery.body).body
        except DecodeError as exc:
            self.log.warning("malformed work message", error=str(exc))
            await delivery.dead_letter(f"worker {self.worker_id}: {exc}")
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
        if need > self.total_slots:
            self.log.error(
                "trial needs more slots than this worker has",
                needs=need,
                slots=self.total_slots,
                trial_id=body.trial_id,
            )
        if need > len(self.free) or self._stopping:
            self._waiting_for_slots = need
            # Stop consuming first, so the requeued command goes to another worker.
            await self._pause_intake()
            await delivery.requeue()
            return
        self._waiting_for_slots = 0
        slots, self.free = self.free[:need], self.free[need:]
        if not self.free:
            # Cancel before acknowledging: with prefetch 1, nothing else arrives meanwhile.
            await self._pause_intake()
        try:
            run = await self._start(body, slots)
        except Exception:
            self.free.extend(slots)
            await delivery.requeue()
            await self._update_intake()
            raise
        if run is not None:
            # Watched before the ack: whatever happens to the ack, the trial runs here.
            task = asyncio.create_task(self._watch(run, slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.free.extend(slots)
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

    async def _pause_intake(self) -> None:
        if self._work is not None:
            work, self._work = self._work, None
            await work.cancel()

    async def _start(self, cmd: RunTrial, slots: list[int]) -> TrialRun | None:
        run_dir = (
            self.work_dir
            / "runs"
            / cmd.experiment_id
            / (f"trial-{cmd.trial_id}-attempt-{cmd.attempt}")
        )
        await self.contexts.run_dir(cmd.context_hash, run_dir)
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
        )
        self.runs[run.key] = run
        if not await run.start():
            self.runs.pop(run.key, None)
            return None
        return run

    async def _watch(self, run: TrialRun, slots: list[int]) -> None:
        try:
            await run.wait()
        finally:
            self.runs.pop(run.key, None)
            self.free.extend(slots)
            self.free.sort()
            await self._update_intake()

    async def _best_validation(self, experiment_id: str) -> float | None:
        reply = await self.rpc.call(DescribeExperiment(experiment_id=experiment_id))
        best = (reply.result or {}).get("best_trial") if reply.ok else None
        return None if best is None else best.get("metric")

    # ------------------------------------------------------------------ control
    async def _on_control(self, delivery: Delivery) -> None:
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
        if not isinstance(body, ContinueTrial | PauseTrial | CloseTrial | PreemptTrial | KillTrial):
            self.log.warning("unexpected control message", type=body.type)
            return
        run = self.runs.get((body.experiment_id, body.trial_id, body.attempt))
        if run is None:
            self.log.info(
                "command for a trial attempt not running here; ignored",
                type=body.type,
                trial_id=body.trial_id,
                attempt=body.attempt,
            )
            return
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
