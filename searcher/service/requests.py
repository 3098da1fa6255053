"""Client requests: create, describe, list, control, read records, workers, contexts.

A request is answered on its ``reply_to`` queue, with its correlation id; one whose
``reply_to`` is not a private reply queue is dead-lettered, unanswered. A refused
request (bad config, bad context, a role that may not send it: :mod:`.access`) and one
naming what does not exist get typed errors; any other exception is a bug of the
searcher: it propagates, with its traceback, and the broker's delivery limit puts the
request in the dead-letter queue.

Who may send what (``docs/security.md``): a client creates experiments, and describes,
lists, reads and controls its own; an admin all of them; a worker fetches the context of
an experiment that has work queued or running, and reads its best validation metric
(``describe`` answers a worker with that and the state only), nothing more. An operator
(or admin) may ask for a logged command to be published again (``ResendCommand``: ``rung
dlq requeue`` of a dead command); the searcher is the only role that writes commands.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from rung.broker.contexts import archive_path, read_archive
from rung.broker.errors import DecodeError, MessageTooLargeError, UnroutableError
from rung.broker.limits import MAX_REPLY_BYTES
from rung.broker.port import Delivery
from rung.broker.schemas import (
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    DescribeExperiment,
    Envelope,
    GetContext,
    ListExperiments,
    ListWorkers,
    ReadRecords,
    ReadTrialLogs,
    RpcError,
    RpcReply,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body
from rung.broker.schemas.rpc import ResendCommand  # (not yet exported by rung.broker.schemas)
from rung.searcher.eventlog.file import LogClosedError, StaleOwnerError
from rung.searcher.eventlog.records import InputRecord, record_adapter
from rung.searcher.host import ExperimentBrokenError
from rung.searcher.service.errors import (
    AccessRefusedError,
    ExperimentNotFoundError,
    RequestRefusedError,
    ServiceStoppedError,
)
from rung.searcher.service.logs import read_trial_logs
from rung.searcher.service.retention import removed_message
from rung.searcher.trials import Command

if TYPE_CHECKING:
    from rung.searcher.service.outbox import Live
    from rung.searcher.service.service import SearcherService

__all__ = ["WORKER_GRACE_S", "Requests"]

log = structlog.get_logger("rung.searcher")

# A user not yet heard as a worker, asking for the context of work that is queued or
# running, is given this long to be heard (its first heartbeat may come after its first
# request) before it is refused as a client that does not own the experiment.
WORKER_GRACE_S = 10.0

# The trial states of work queued or running: a worker may read what it needs for them.
_ACTIVE = ("QUEUED", "RUNNING")


def _active(live: Live) -> bool:
    return any(t.state in _ACTIVE for t in live.host.run.trials.values())


class Requests:
    def __init__(self, service: SearcherService) -> None:
        self.service = service

    async def on_rpc(self, delivery: Delivery) -> None:
        with self.service.intake.busy():  # shutdown waits for it too
            await self._on_rpc(delivery)

    async def _on_rpc(self, delivery: Delivery) -> None:
        access = self.service.access
        user, refused = access.sender(delivery)
        refused = refused or access.reply_refusal(delivery.reply_to, delivery.user_id)
        if refused is not None:
            log.warning("refused request sent to the dead-letter queue", reason=refused, user=user)
            await delivery.dead_letter(refused)
            return
        try:
            body = decode(delivery.body).body
        except DecodeError as exc:
            log.warning("malformed request sent to the dead-letter queue", error=str(exc))
            await delivery.dead_letter(str(exc))
            return
        if self.service.given_up(getattr(body, "experiment_id", None)):
            await self.service.leave_to_owner(delivery)  # the new owner answers it
            return
        try:
            result = await self.handle(body, delivery, user)
            reply = RpcReply(ok=True, result=result)
        except (ServiceStoppedError, LogClosedError):
            # Fail-stop, or the searcher is stopping (its logs closed after the drain's
            # time ran out): unacknowledged, for the next searcher.
            return
        except StaleOwnerError:
            # Another searcher took the experiment over while this one applied the
            # request: nothing of it was kept here; the new owner answers it.
            await self.service.leave_to_owner(delivery)
            return
        except RequestRefusedError as exc:
            if isinstance(exc, AccessRefusedError):
                log.warning("request refused", type=body.type, user=user, reason=str(exc))
            reply = RpcReply(
                ok=False,
                error=RpcError(
                    kind="refused",
                    message=str(exc),
                    problems=[str(p) for p in exc.problems],
                    paths=[p.path for p in exc.problems],
                ),
            )
        except ExperimentNotFoundError as exc:
            reply = RpcReply(ok=False, error=RpcError(kind="not_found", message=str(exc)))
        except ExperimentBrokenError as exc:
            reply = RpcReply(ok=False, error=RpcError(kind="refused", message=str(exc)))
        finally:
            self.service.feed.wake()
        if delivery.reply_to:
            envelope = Envelope(message_id=f"reply/{delivery.correlation_id}", body=reply)
            try:
                data = encode(envelope)
            except MessageTooLargeError as exc:
                # A reply over the limit is an answer too: the error, not a poison loop.
                error = RpcError(kind="refused", message=f"the reply is too large: {exc}")
                envelope = Envelope(
                    message_id=envelope.message_id, body=RpcReply(ok=False, error=error)
                )
                data = encode(envelope)
            try:
                await self.service.broker.publish(
                    "",
                    delivery.reply_to,
                    data,
                    message_id=envelope.message_id,
                    correlation_id=delivery.correlation_id,
                )
            except UnroutableError:
                log.info("the client left before its reply", type=body.type)
        await delivery.ack()

    async def handle(  # noqa: PLR0911 (one answer per request type)
        self, body: Body, delivery: Delivery, user: str | None = None
    ) -> dict[str, Any]:
        """Carry out one request of ``user`` (the broker-validated sender; None where no
        broker vouches for users)."""
        request_id = delivery.correlation_id or delivery.message_id or ""
        service = self.service
        access = service.access
        access.check_identified(user)
        match body:
            case CreateExperiment():
                access.check_create(user)
                # Nothing names the request: it cannot be recognised when sent again.
                key = body.request_key or request_id or f"unnamed/{uuid.uuid4().hex}"
                return await service.create(body, key, creator=user)
            case ControlExperiment():
                self._check_owner(user, body.experiment_id, body.action)
                return await self._control(body, request_id, user)
            case ControlTrial():
                self._check_owner(user, body.experiment_id, "kill a trial of")
                return await self._control_trial(body, request_id, user)
            case DescribeExperiment():
                return self._describe(user, body.experiment_id, trials=body.trials)
            case ListExperiments():
                access.check_client(user, "list experiments")
                summaries = service.summaries(seen_by=user)
                return {"experiments": [s.model_dump(mode="json") for s in summaries]}
            case ReadRecords():
                self._check_owner(user, body.experiment_id, "read the records of")
                live = service.live(body.experiment_id)
                event_log = live.host.log
                lines = event_log.read_after(body.after_seq, body.limit, max_bytes=MAX_REPLY_BYTES)
                return {
                    "records": [line.decode() for line in lines],
                    "state": live.host.run.state,
                    "last_seq": event_log.seq,
                }
            case ReadTrialLogs():
                self._check_owner(user, body.experiment_id, "read the logs of")
                return await read_trial_logs(service, body)
            case ListWorkers():
                access.check_client(user, "list workers")
                return {"workers": [w.model_dump(mode="json") for w in service.workers.infos()]}
            case ResendCommand():
                return await self._resend(user, body.message_id)
            case GetContext():
                await self._check_context(user, body.context_hash)
                data = await asyncio.to_thread(read_archive, self._contexts(), body.context_hash)
                if data is None:
                    removed = removed_message(self._contexts(), body.context_hash)
                    raise ExperimentNotFoundError(removed or f"no context {body.context_hash}")
                return {"context_b64": base64.b64encode(data).decode()}
        raise RequestRefusedError(f"{body.type} is not a request")

    async def _resend(self, user: str | None, message_id: str) -> dict[str, Any]:
        """Publish again the command logged under ``message_id``
        (``<experiment id>/<seq>/<index>``: the experiment's input record ``seq``, its
        ``commands[index]``), exactly as the outbox sent it: the same envelope, routing
        and message id (so a receiver that has it drops the copy)."""
        if not self.service.access.trusted(user):
            raise AccessRefusedError(
                f"broker user {user!r} may not resend commands: only an operator or an "
                "admin may (rung dlq requeue)"
            )
        experiment_id, _, rest = message_id.rpartition("/")
        experiment_id, _, seq_text = experiment_id.rpartition("/")
        if not (seq_text.isdigit() and rest.isdigit() and experiment_id):
            raise RequestRefusedError(
                f"message id {message_id[:120]!r} does not name a command: a command's id is "
                "<experiment id>/<seq>/<index>"
            )
        seq, index = int(seq_text), int(rest)
        live = self.service.live(experiment_id)  # not found: raises
        host = live.host
        lines = host.log.read_after(seq - 1, 1) if 0 < seq <= host.log.seq else []
        record = record_adapter.validate_json(lines[0]) if lines else None
        if (
            not isinstance(record, InputRecord)
            or record.seq != seq
            or index >= len(record.commands)
        ):
            raise ExperimentNotFoundError(
                f"experiment {experiment_id} logged no command {message_id!r}: only a "
                "command the searcher logged is sent again"
            )
        logged = record.commands[index]
        command = Command(body=logged.body, worker_id=logged.worker_id)
        envelope = Envelope(
            message_id=message_id, experiment_id=experiment_id, seq=seq, body=command.body
        )
        try:
            # The outbox's own routing (work_key(slots) for run_trial, the worker's key
            # for a control command). Change request: a public Outbox.resend.
            await self.service.outbox.resend(command, envelope)
        except UnroutableError:
            raise RequestRefusedError(
                f"command {message_id!r} is for worker {logged.worker_id!r}, which is gone "
                "(no queue took it); the searcher resumes its trial elsewhere"
            ) from None
        log.info(
            "logged command sent again",
            message_id=message_id,
            type=command.body.type,
            worker_id=command.worker_id,
            user=user,
        )
        return {"message_id": message_id, "type": command.body.type, "worker_id": logged.worker_id}

    # ------------------------------------------------------------------ access
    def _check_owner(self, user: str | None, experiment_id: str, action: str) -> None:
        owner = self.service.owner_of(experiment_id)  # not found: raises first
        self.service.access.check_owner(user, experiment_id, owner, action)

    def _describe(
        self, user: str | None, experiment_id: str, *, trials: bool = True
    ) -> dict[str, Any]:
        if (narrow := self._worker_view(user, experiment_id)) is not None:
            return narrow
        self._check_owner(user, experiment_id, "describe")
        return self.service.summary(experiment_id, with_trials=trials).model_dump(mode="json")

    def _worker_view(self, user: str | None, experiment_id: str) -> dict[str, Any] | None:
        """What a worker may read of an experiment it has work of: the state and the best
        validation metric (the Core API's ``best_validation``); None for anyone else."""
        if self.service.access.role(user) != "worker":
            return None
        live = self.service.live(experiment_id)
        if not _active(live):
            raise AccessRefusedError(
                f"experiment {experiment_id} has no work queued or running; a worker (broker "
                f"user {user!r}) may describe only an experiment it runs trials of"
            )
        best = live.host.run.experiment.best_trial()
        return {
            "experiment_id": experiment_id,
            "state": live.host.run.state,
            "best_trial": None if best is None else {"metric": best.metric},
        }

    def _contexts(self) -> Path:
        return (self.service.state_dir / "contexts").resolve()

    async def _check_context(self, user: str | None, context_hash: str) -> None:
        """The context's path stays inside the contexts directory; and the caller is an
        admin, an owner of an experiment with this context, or a worker while such an
        experiment has work queued or running."""
        contexts = self._contexts()
        try:
            path = archive_path(contexts, context_hash).resolve()
        except ValueError as exc:
            raise AccessRefusedError(f"context_hash: {exc}") from None
        if not path.is_relative_to(contexts):
            raise AccessRefusedError(
                f"context_hash {context_hash[:80]!r} names a file outside the contexts "
                "directory; a context hash is 64 lowercase hex digits"
            )
        access = self.service.access
        if access.trusted(user):
            return
        using = [
            (experiment_id, live)
            for experiment_id, live in self.service.experiments.items()
            if live.host.run.context_hash == context_hash
        ]
        if any(self.service.owners.get(e) == user for e, _ in using):
            return
        if any(_active(live) for _, live in using) and await self._worker_soon(user):
            return
        raise AccessRefusedError(
            f"broker user {user!r} may not fetch context {context_hash[:12]}...: a context "
            "is for its experiments' owners, admins, and workers while an experiment using "
            "it has work queued or running"
        )

    async def _worker_soon(self, user: str | None) -> bool:
        """Whether ``user`` is (or within :data:`WORKER_GRACE_S` is heard as) a worker."""
        access = self.service.access
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKER_GRACE_S
        while access.role(user) != "worker":
            remaining = deadline - loop.time()
            if remaining <= 0 or access.role(user) != "client":
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(access.new_worker.wait(), remaining)
        return True

    async def _control(
        self, body: ControlExperiment, request_id: str, user: str | None
    ) -> dict[str, Any]:
        """A user's pause, activate, cancel or kill: an input like any other, logged first."""
        live = self.service.live(body.experiment_id)
        name = f"control/{request_id or uuid.uuid4().hex}"
        ignored = await self._user_input(body, name, user)
        return {
            "experiment_id": body.experiment_id,
            "state": live.host.run.state,
            "ignored": ignored,
        }

    async def _control_trial(
        self, body: ControlTrial, request_id: str, user: str | None
    ) -> dict[str, Any]:
        """A user's kill of one trial: an input like any other, logged first."""
        live = self.service.live(body.experiment_id)
        trial = live.host.run.by_id.get(body.trial_id)
        if trial is None:
            raise ExperimentNotFoundError(
                f"experiment {body.experiment_id} has no trial {body.trial_id}"
            )
        name = f"control-trial/{request_id or uuid.uuid4().hex}"
        ignored = await self._user_input(body, name, user)
        return {
            "experiment_id": body.experiment_id,
            "trial_id": trial.trial_id,
            "state": trial.state,
            "ignored": ignored,
        }

    async def _user_input(
        self, body: ControlExperiment | ControlTrial, name: str, user: str | None
    ) -> str | None:
        """Apply a user's request once (a re-sent request has the same correlation id);
        return why it changed nothing, or None."""
        live = self.service.live(body.experiment_id)
        message_id = f"{body.experiment_id}/{name}"
        applied = await self.service.apply(live, body, message_id, sender=user)
        # Durable before the answer (the user is told it happened), and before the live
        # feed can publish it: an input that ends the experiment may cause no command.
        await self.service.make_durable(live)
        step = applied.step
        ignored = step.ignored or step.failed
        log.info(
            "user control",
            action=body.action,
            experiment_id=body.experiment_id,
            trial_id=getattr(body, "trial_id", None),
            user=user,
            state=live.host.run.state,
            ignored=ignored,
        )
        return None if applied.duplicate else ignored
