"""Client requests: create, describe, list, control, read records, workers, contexts.

A request is answered on its ``reply_to`` queue, with its correlation id. A refused
request (bad config, bad context) and one naming what does not exist get typed errors;
any other exception is a bug of the searcher: it propagates, with its traceback, and the
broker's delivery limit puts the request in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import TYPE_CHECKING, Any

import structlog

from rung.broker.contexts import read_archive
from rung.broker.errors import DecodeError, UnroutableError
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
    RpcError,
    RpcReply,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.eventlog.file import StaleOwnerError
from rung.searcher.host import ExperimentBrokenError
from rung.searcher.service.errors import (
    ExperimentNotFoundError,
    RequestRefusedError,
    ServiceStoppedError,
)

if TYPE_CHECKING:
    from rung.searcher.service.service import SearcherService

__all__ = ["Requests"]

log = structlog.get_logger("rung.searcher")


class Requests:
    def __init__(self, service: SearcherService) -> None:
        self.service = service

    async def on_rpc(self, delivery: Delivery) -> None:
        with self.service.intake.busy():  # shutdown waits for it too
            await self._on_rpc(delivery)

    async def _on_rpc(self, delivery: Delivery) -> None:
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
            result = await self.handle(body, delivery)
            reply = RpcReply(ok=True, result=result)
        except ServiceStoppedError:
            return  # fail-stop: unacknowledged, for the next searcher
        except StaleOwnerError:
            # Another searcher took the experiment over while this one applied the
            # request: nothing of it was kept here; the new owner answers it.
            await self.service.leave_to_owner(delivery)
            return
        except RequestRefusedError as exc:
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
                await self.service.broker.publish(
                    "",
                    delivery.reply_to,
                    encode(envelope),
                    message_id=envelope.message_id,
                    correlation_id=delivery.correlation_id,
                )
            except UnroutableError:
                log.info("the client left before its reply", type=body.type)
        await delivery.ack()

    async def handle(self, body: Body, delivery: Delivery) -> dict[str, Any]:
        request_id = delivery.correlation_id or delivery.message_id or ""
        service = self.service
        match body:
            case CreateExperiment():
                # Nothing names the request: it cannot be recognised when sent again.
                key = body.request_key or request_id or f"unnamed/{uuid.uuid4().hex}"
                return await service.create(body, key)
            case ControlExperiment():
                return await self._control(body, request_id)
            case ControlTrial():
                return await self._control_trial(body, request_id)
            case DescribeExperiment():
                return service.summary(body.experiment_id).model_dump(mode="json")
            case ListExperiments():
                return {"experiments": [s.model_dump(mode="json") for s in service.summaries()]}
            case ReadRecords():
                live = service.live(body.experiment_id)
                event_log = live.host.log
                lines = event_log.read_after(body.after_seq, body.limit)
                return {
                    "records": [line.decode() for line in lines],
                    "state": live.host.run.state,
                    "last_seq": event_log.seq,
                }
            case ListWorkers():
                return {"workers": [w.model_dump(mode="json") for w in service.workers.infos()]}
            case GetContext():
                contexts = service.state_dir / "contexts"
                data = await asyncio.to_thread(read_archive, contexts, body.context_hash)
                if data is None:
                    raise ExperimentNotFoundError(f"no context {body.context_hash}")
                return {"context_b64": base64.b64encode(data).decode()}
        raise RequestRefusedError(f"{body.type} is not a request")

    async def _control(self, body: ControlExperiment, request_id: str) -> dict[str, Any]:
        """A user's pause, activate, cancel or kill: an input like any other, logged first."""
        live = self.service.live(body.experiment_id)
        name = f"control/{request_id or uuid.uuid4().hex}"
        ignored = await self._user_input(body, name)
        return {
            "experiment_id": body.experiment_id,
            "state": live.host.run.state,
            "ignored": ignored,
        }

    async def _control_trial(self, body: ControlTrial, request_id: str) -> dict[str, Any]:
        """A user's kill of one trial: an input like any other, logged first."""
        live = self.service.live(body.experiment_id)
        trial = live.host.run.by_id.get(body.trial_id)
        if trial is None:
            raise ExperimentNotFoundError(
                f"experiment {body.experiment_id} has no trial {body.trial_id}"
            )
        name = f"control-trial/{request_id or uuid.uuid4().hex}"
        ignored = await self._user_input(body, name)
        return {
            "experiment_id": body.experiment_id,
            "trial_id": trial.trial_id,
            "state": trial.state,
            "ignored": ignored,
        }

    async def _user_input(self, body: ControlExperiment | ControlTrial, name: str) -> str | None:
        """Apply a user's request once (a re-sent request has the same correlation id);
        return why it changed nothing, or None."""
        live = self.service.live(body.experiment_id)
        applied = await self.service.apply(live, body, f"{body.experiment_id}/{name}")
        step = applied.step
        ignored = step.ignored or step.failed
        log.info(
            "user control",
            action=body.action,
            experiment_id=body.experiment_id,
            trial_id=getattr(body, "trial_id", None),
            state=live.host.run.state,
            ignored=ignored,
        )
        return None if applied.duplicate else ignored
