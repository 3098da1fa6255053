"""Worker events in: decode, refuse what a worker may not send, route to the host.

A malformed event, a ``worker_lost`` (the searcher's own timer input), an event whose
message id is not under its own worker id (``<worker id>/<session>/<n>``), under
``verify_worker_users`` an event whose worker id is not its publisher's user, an event of
a trial attempt that another worker (or broker user) started, and a re-sent dead letter
whose re-sender is not an operator go to the dead-letter queue with the reason. A
re-sent event (``rung dlq requeue``) is checked as its original sender's. Heartbeats only
say who is alive. An event is acknowledged once what it appended to its experiment's log
is durable, with its sender.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog

from rung.broker.errors import DecodeError
from rung.broker.port import Delivery
from rung.broker.schemas import (
    GangPlanned,
    KillTrial,
    RoundTimeout,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
    WorkerLost,
    decode,
)
from rung.broker.schemas.envelope import Body, Envelope
from rung.searcher.eventlog.file import LogClosedError, StaleOwnerError
from rung.searcher.failpoints import crash_point
from rung.searcher.host import BrokenExperiment, ExperimentBrokenError
from rung.searcher.service.access import Binding
from rung.searcher.service.errors import ServiceStoppedError
from rung.searcher.trials import Command
from rung.searcher.trials.model import ENDED

if TYPE_CHECKING:
    from rung.searcher.service.outbox import Live
    from rung.searcher.service.service import SearcherService

__all__ = ["Intake"]

log = structlog.get_logger("rung.searcher")


# How many trial attempts of one broken experiment are told to stop, at most: a flood of
# forged events cannot grow the searcher's memory without bound.
MAX_STOPPED = 10_000


def _reserved(envelope: Envelope) -> str | None:
    """Why a worker's event may not have its message id, or None. The searcher names
    its own inputs ``lost/...`` and ``<experiment id>/...``: an event with such an id
    could make a real one look applied already."""
    message_id = envelope.message_id
    experiment_id = getattr(envelope.body, "experiment_id", "")
    if message_id.startswith("lost/") or (
        experiment_id and message_id.startswith(f"{experiment_id}/")
    ):
        return (
            f"message id {message_id!r} is of the kind the searcher gives its own inputs "
            "(lost/..., <experiment id>/...); a worker names its events "
            "<worker id>/<session>/<n>"
        )
    return None


def _not_its_own(envelope: Envelope) -> str | None:
    """Why a worker's message may not have its message id, or None. A worker names its
    messages ``<worker id>/<session>/<n>``; the searcher keeps the ids applied per
    ``<worker id>/<session>``, so an id under another worker's name could make that
    worker's real message look applied already (and move its watermark)."""
    worker_id = getattr(envelope.body, "worker_id", None)
    if not isinstance(worker_id, str):
        return None
    message_id = envelope.message_id
    prefix = f"{worker_id}/"
    if message_id.startswith(prefix) and message_id.count("/", len(prefix)) == 1:
        return None  # <session>/<n>: one more slash, so no other worker's ids look alike
    return (
        f"message id {message_id[:100]!r} of a {envelope.body.type} from worker "
        f"{worker_id!r} is not of the form <worker id>/<session>/<n> with its own worker "
        f"id; a worker names its messages {worker_id}/<session>/<n>"
    )


class Intake:
    def __init__(self, service: SearcherService) -> None:
        self.service = service
        # Events under way; shutdown waits for them to settle.
        self.handling = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Count a message under way (an event or a request): shutdown waits for them."""
        self.handling += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.handling -= 1
            if self.handling == 0:
                self.idle.set()

    async def on_event(self, delivery: Delivery) -> None:
        with self.busy(), contextlib.suppress(ServiceStoppedError):
            # (fail-stop: the message stays unacknowledged, for the next searcher)
            await self._handle_event(delivery)

    async def _handle_event(self, delivery: Delivery) -> None:
        accepted = await self._accepted(delivery)
        if accepted is None:
            return
        envelope, sender = accepted
        body = envelope.body
        experiment_id = getattr(body, "experiment_id", "")
        if self.service.given_up(experiment_id):
            await self.service.leave_to_owner(delivery)
            return
        crash_point("consumed")
        live = self.service.experiments.get(experiment_id)
        if live is None:
            if await self._not_served(body, delivery):
                return
        else:
            try:
                applied = await self.service.apply(live, body, envelope.message_id, sender=sender)
                if isinstance(body, TrialStarted):
                    self._bind(live, body, sender)
                elif isinstance(body, TrialExited) or live.host.run.state in ENDED:
                    self.service.access.prune(live.host.experiment_id, live.host.run)
                if not applied.duplicate:
                    crash_point("published")
                # Write first: what this input appended is durable before it is
                # acknowledged (the fsync, shared with the inputs applied meanwhile, is
                # outside the lock).
                await self.service.make_durable(live)
            except (StaleOwnerError, ExperimentBrokenError, LogClosedError):
                await self._dropped(live, delivery)
                return
        if self.service.fatal is not None:
            raise ServiceStoppedError
        self.service.feed.wake()
        await delivery.ack()

    async def _dropped(self, live: Live, delivery: Delivery) -> None:
        """The experiment stopped being served while this input was handled."""
        if isinstance(live.dropped, StaleOwnerError) or live.dropped is None:
            await self.service.leave_to_owner(delivery)  # its new owner takes it
            return
        # Kept, with the reason: a restart that recovers the experiment can take it
        # back from the dead-letter queue (rung dlq requeue).
        await delivery.dead_letter(str(live.dropped))

    def _bind(self, live: Live, body: TrialStarted, sender: str | None) -> None:
        """The run took this start: bind the attempt (or its part on this worker, for a
        trial on several) to its worker and sender."""
        trial = live.host.run.by_id.get(body.trial_id)
        if trial is None or trial.attempt != body.attempt:
            return
        if trial.gang is not None and trial.worker_id != body.worker_id:
            if body.worker_id in {part.worker_id for part in trial.gang}:
                self.service.access.bind_member(
                    live.host.experiment_id, body.trial_id, body.attempt, body.worker_id, sender
                )
            return
        if trial.worker_id != body.worker_id:
            return
        binding = Binding(sender, body.worker_id)
        self.service.access.bind(live.host.experiment_id, body.trial_id, body.attempt, binding)

    async def _accepted(self, delivery: Delivery) -> tuple[Envelope, str | None] | None:
        """The event's envelope and its sender, or None once a bad one was dead-lettered
        or dropped."""
        access = self.service.access
        sender, refused = access.sender(delivery)
        if refused is not None:
            log.warning("refused event sent to the dead-letter queue", reason=refused)
            await delivery.dead_letter(refused)
            return None
        try:
            envelope = decode(delivery.body)
        except DecodeError as exc:
            log.warning(
                "malformed event sent to the dead-letter queue",
                error=str(exc),
                message_id=delivery.message_id,
            )
            await delivery.dead_letter(str(exc))
            return None
        body = envelope.body
        refused = (
            self._impostor(body, sender)
            or _reserved(envelope)
            or access.impostor(body, sender, members=self._gang_members(body))
            or _not_its_own(envelope)
        )
        if isinstance(body, WorkerLost | GangPlanned | RoundTimeout):
            refused = f"{body.type} is the searcher's own timer input; a worker cannot send it"
        if refused is not None:
            log.warning("refused event sent to the dead-letter queue", reason=refused)
            await delivery.dead_letter(refused)
            return None
        access.heard_worker(sender)
        if worker_id := getattr(body, "worker_id", None):
            self.service.workers.heard(worker_id)
        if isinstance(body, WorkerHeartbeat):
            self.service.workers.beat(body)
            await delivery.ack()
            return None
        return envelope, sender

    def _gang_members(self, body: Body) -> frozenset[str]:
        """The workers running the parts of the attempt ``body`` is about, when it runs
        on several (gang scheduling): each may send that attempt's events."""
        live = self.service.experiments.get(getattr(body, "experiment_id", ""))
        trial_id = getattr(body, "trial_id", None)
        if live is None or not isinstance(trial_id, int):
            return frozenset()
        trial = live.host.run.by_id.get(trial_id)
        if trial is None or trial.gang is None or trial.attempt != getattr(body, "attempt", None):
            return frozenset()
        return frozenset(part.worker_id for part in trial.gang)

    async def _not_served(self, body: Body, delivery: Delivery) -> bool:
        """An event of an experiment this searcher does not serve. Unknown: dropped
        (acknowledged: False). Broken: dead-lettered with the reason, kept for a searcher
        that recovers the experiment later (True), and the trial's process is told to
        stop, to free its slots."""
        experiment_id = getattr(body, "experiment_id", None)
        broken = self.service.broken.get(experiment_id or "")
        if broken is None:
            log.warning(
                "event for an unknown experiment; dropped",
                type=body.type,
                experiment_id=experiment_id,
            )
            return False
        await self._stop_trial(broken, body)
        await delivery.dead_letter(
            f"experiment {broken.experiment_id} could not be recovered ({broken.reason}); "
            "this event is kept for a searcher that recovers it"
        )
        return True

    async def _stop_trial(self, broken: BrokenExperiment, body: Body) -> None:
        """Tell the process of the trial attempt that sent ``body`` to stop, once."""
        trial_id, attempt = getattr(body, "trial_id", None), getattr(body, "attempt", None)
        worker_id = getattr(body, "worker_id", None)
        if trial_id is None or attempt is None or not worker_id:
            return
        if (trial_id, attempt) in broken.stopped:
            return
        if len(broken.stopped) >= MAX_STOPPED:
            log.warning(
                "too many trials of a broken experiment reported; not told to stop",
                experiment_id=broken.experiment_id,
                trial_id=trial_id,
            )
            return
        kill = KillTrial(experiment_id=broken.experiment_id, trial_id=trial_id, attempt=attempt)
        envelope = Envelope(
            message_id=f"{broken.experiment_id}/broken/kill/{trial_id}/{attempt}",
            experiment_id=broken.experiment_id,
            body=kill,
        )
        log.warning(
            "a trial of an experiment that could not be recovered is still running; "
            "it is told to stop",
            experiment_id=broken.experiment_id,
            trial_id=trial_id,
            worker_id=worker_id,
        )
        await self.service.outbox.send_once(Command(kill, worker_id), envelope)
        broken.stopped.add((trial_id, attempt))

    def _impostor(self, body: Body, user: str | None) -> str | None:
        """Why a worker's message is refused under ``verify_worker_users``, or None.

        The broker vouches for ``user_id`` (it refuses a message whose user_id is not its
        connection's user); a worker may speak for itself only: its id is its user's
        name, or that name, a dot and a suffix (a pool of workers sharing a user). Where
        no broker vouches for users, or the sender holds the searcher's own credentials,
        there is nobody to tell apart.
        """
        worker_id = getattr(body, "worker_id", None)
        if not self.service.verify_worker_users or worker_id is None:
            return None
        if self.service.access.role(user) in ("local", "searcher"):
            return None
        if user is not None and (worker_id == user or worker_id.startswith(f"{user}.")):
            return None
        return (
            f"worker id {worker_id!r} was sent by broker user {user!r}: a worker may only "
            f"send as itself (worker id = its user, or <user>.<suffix>); start the worker "
            f"with --id {user}.<name>, or with a user of its own"
        )

    async def on_heartbeat(self, delivery: Delivery) -> None:
        """Liveness only: who is alive, with what slots. Nothing to log or apply."""
        try:
            body = decode(delivery.body).body
        except DecodeError as exc:
            log.warning("malformed heartbeat dropped", error=str(exc))
            await delivery.ack()
            return
        sender, refused = self.service.access.sender(delivery)
        if refused is None:
            refused = self._impostor(body, sender)
        if refused is None:
            self.service.access.heard_worker(sender)
        if refused is not None:
            log.warning("refused heartbeat dropped", reason=refused)
        elif isinstance(body, WorkerHeartbeat):
            self.service.workers.beat(body)
        else:
            log.warning("not a heartbeat, on the heartbeats queue; dropped", type=body.type)
        await delivery.ack()
