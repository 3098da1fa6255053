"""The searcher's request-and-reply client: one method per request, typed errors.

``rung.Client`` builds its handles on it, and so does the ``rung`` CLI.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import structlog
import yaml

from rung.broker.archive import pack
from rung.broker.errors import BrokerError, BrokerUnavailableError, PublishTimeoutError
from rung.broker.port import Broker, Delivery
from rung.broker.rpc import RpcClient, RpcTimeoutError
from rung.broker.schemas import (
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    DescribeExperiment,
    ExperimentSummary,
    ListExperiments,
    ListWorkers,
    ReadRecords,
    RpcReply,
    WorkerInfo,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.config import load_config_file
from rung.searcher.errors import (
    ClientError,
    ConfigError,
    ConfigProblem,
    ConnectionLostError,
    NotFoundError,
    RefusedError,
    RequestTimeoutError,
)
from rung.searcher.eventlog import Record
from rung.searcher.eventlog.records import record_adapter

__all__ = [
    "TERMINAL_STATES",
    "ClientError",
    "ConnectionLostError",
    "NotFoundError",
    "RefusedError",
    "RequestTimeoutError",
    "SearcherClient",
]

TERMINAL_STATES = ("COMPLETED", "ERROR", "CANCELED")

log = structlog.get_logger("rung.client")


def _read_config(path: Path) -> dict[str, Any]:
    load_config_file(path)
    raw: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return raw


def _problem(text: str, path: str) -> ConfigProblem:
    prefix = f"{path}: "
    return ConfigProblem(path, text.removeprefix(prefix) if path else text)


def _result(reply: RpcReply) -> dict[str, Any]:
    if reply.ok and reply.result is not None:
        return reply.result
    error = reply.error
    if error is not None and error.kind == "refused":
        paths = error.paths or [""] * len(error.problems)
        problems = [_problem(text, path) for text, path in zip(error.problems, paths, strict=False)]
        raise RefusedError(problems or [ConfigProblem("", error.message)])
    if error is not None and error.kind == "not_found":
        raise NotFoundError(error.message)
    raise ClientError(error.message if error else "empty reply from the searcher")


class SearcherClient:
    def __init__(self, broker: Broker, *, timeout: float = 30.0) -> None:
        self.broker = broker
        self.timeout = timeout
        self.rpc = RpcClient(broker)

    async def _call(self, request: Body, timeout: float | None = None) -> dict[str, Any]:
        try:
            reply = await self.rpc.call(request, timeout=timeout or self.timeout)
        except RpcTimeoutError as exc:
            raise RequestTimeoutError(str(exc)) from exc
        except (BrokerUnavailableError, PublishTimeoutError) as exc:
            raise ConnectionLostError(f"the broker cannot be reached: {exc}") from exc
        return _result(reply)

    async def create_experiment(
        self,
        config: str | Path | dict[str, Any],
        context_dir: str | Path,
        *,
        key: str | None = None,
        attempts: int = 3,
    ) -> dict[str, Any]:
        """Validate the config here, send it with the packed context; return the id.

        The request carries ``key`` (a fresh one by default): a create the searcher
        already carried out answers with the same experiment, so a request that timed out
        or lost its connection is sent again, up to ``attempts`` times, without making a
        second experiment.
        """
        if isinstance(config, dict):
            raw, source = config, ""
        else:
            # Fail fast, with the same errors the searcher would give, before any upload.
            try:
                raw = await asyncio.to_thread(_read_config, Path(config))
            except ConfigError as exc:
                raise RefusedError(list(exc.problems), exc.source) from None
            source = str(config)
        data = await asyncio.to_thread(pack, context_dir)
        request = CreateExperiment(
            config=raw,
            context_b64=base64.b64encode(data).decode(),
            config_source=source,
            request_key=key or uuid.uuid4().hex,
        )
        for attempt in range(1, max(attempts, 1) + 1):
            try:
                return await self._call(request, timeout=max(self.timeout, 120))
            except (RequestTimeoutError, ConnectionLostError):
                if attempt >= attempts:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def describe(self, experiment_id: str, *, trials: bool = True) -> ExperimentSummary:
        """The experiment's summary; ``trials=False``: without its trials (``trials`` is
        then empty), a small reply that costs the searcher a fraction of the whole one."""
        result = await self._call(DescribeExperiment(experiment_id=experiment_id, trials=trials))
        return ExperimentSummary.model_validate(result)

    async def control(
        self, experiment_id: str, action: Literal["pause", "activate", "cancel", "kill"]
    ) -> dict[str, Any]:
        """Pause, activate, cancel (trials checkpoint first) or kill an experiment.

        Returns its state after the action, and ``ignored``: why the action changed
        nothing (pausing a paused experiment, say), or None.
        """
        return await self._call(ControlExperiment(experiment_id=experiment_id, action=action))

    async def control_trial(self, experiment_id: str, trial_id: int) -> dict[str, Any]:
        """Kill one trial; returns its state after the kill, and ``ignored`` as above."""
        return await self._call(ControlTrial(experiment_id=experiment_id, trial_id=trial_id))

    async def list_experiments(self) -> list[ExperimentSummary]:
        result = await self._call(ListExperiments())
        return [ExperimentSummary.model_validate(e) for e in result["experiments"]]

    async def list_workers(self) -> list[WorkerInfo]:
        result = await self._call(ListWorkers())
        return [WorkerInfo.model_validate(w) for w in result["workers"]]

    async def read_records(
        self, experiment_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> tuple[list[Record], str, int]:
        """Up to ``limit`` records after ``after_seq``, the experiment's state, and the
        number of its last record."""
        request = ReadRecords(experiment_id=experiment_id, after_seq=after_seq, limit=limit)
        result = await self._call(request)
        records = [record_adapter.validate_json(line) for line in result["records"]]
        return records, str(result["state"]), int(result["last_seq"])

    async def wait(
        self,
        experiment_id: str,
        *,
        poll_s: float = 0.5,
        timeout: float | None = None,
        on_update: Callable[[ExperimentSummary], None] | None = None,
        whole: bool = True,
    ) -> ExperimentSummary:
        """Describe the experiment every ``poll_s`` seconds until it has ended, and at
        once when the live feed's end notice comes; return its whole summary. The notice
        only wakes the wait up: the state is the searcher's answer. A notice the searcher
        contradicts (anyone who may publish on the feed can send one) is the last one
        heeded until the next poll, so a flood of them costs one extra describe a poll.

        The polls ask for the summary without its trials (at 10,000 trials the whole
        summary is 3 MB and 0.2 s of the searcher's time), and the whole one once the
        experiment has ended (``whole=False``: not even then; ``trials`` is empty); with
        ``on_update``, which is shown each one, every poll asks for the whole summary."""
        deadline = None if timeout is None else time.monotonic() + timeout
        every = on_update is not None
        ended = asyncio.Event()

        async def on_notice(_: Delivery) -> None:
            ended.set()

        feed = await self.follow_feed(self.broker.topology.ended_key(experiment_id), on_notice)
        heed = True
        try:
            while True:
                ended.clear()
                summary = await self.describe(experiment_id, trials=every)
                if on_update is not None:
                    on_update(summary)
                if summary.state in TERMINAL_STATES:
                    # (an ended experiment's summary changes no more)
                    if every or not whole:
                        return summary
                    return await self.describe(experiment_id)
                if deadline is not None and time.monotonic() > deadline:
                    raise RequestTimeoutError(
                        f"experiment {experiment_id} is still {summary.state} after {timeout} s"
                    )
                if not heed:  # the last notice was wrong: poll only, this round
                    await asyncio.sleep(poll_s)
                    heed = True
                    continue
                try:
                    await asyncio.wait_for(ended.wait(), poll_s)
                except TimeoutError:
                    continue
                heed = False  # woken by a notice: believed if the searcher agrees
        finally:
            await self.unfollow_feed(feed)

    async def follow_feed(
        self, key: str, on_message: Callable[[Delivery], Awaitable[None]]
    ) -> str | None:
        """A private queue bound to the live feed under ``key`` (an experiment id: its
        records; ``Topology.ended_key``: its end notice), each message acknowledged and
        handed to ``on_message``; None where the broker refuses it (the caller polls)."""

        async def on_delivery(delivery: Delivery) -> None:
            await delivery.ack()
            await on_message(delivery)

        binding = (self.broker.topology.feed_exchange, key)
        queue: str | None = None
        try:
            queue = await self.broker.declare_private_queue(binding)
            await self.broker.subscribe(queue, on_delivery, prefetch=256)
        except BrokerError as exc:
            log.warning("no live feed; polling the searcher instead", key=key, error=str(exc))
            await self.unfollow_feed(queue)  # not left bound, filling up
            return None
        return queue

    async def unfollow_feed(self, queue: str | None) -> None:
        """Delete a queue ``follow_feed`` made (best effort: it goes with the connection)."""
        if queue is not None:
            with contextlib.suppress(BrokerError):
                await self.broker.delete_private_queue(queue)
