"""``rung.Client``: create, watch and control experiments from Python, asynchronously.

A client talks to a running searcher over the broker (request and reply, with
correlation ids and timeouts), or, made with ``Client.local()``, to a searcher and
workers embedded in the same process on the in-memory broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import structlog

from rung.broker import Broker, BrokerError, TlsSettings, Topology, connect_broker, redact
from rung.broker.port import Delivery
from rung.broker.schemas import CheckpointSaved, LogLines, MetricsReported, ReadTrialLogs
from rung.client._local import LocalCluster
from rung.client._models import (
    Checkpoint,
    Clone,
    Event,
    ExperimentSummary,
    LogEntry,
    MetricReport,
    TrialSummary,
    WorkerInfo,
)
from rung.searcher.client import (
    TERMINAL_STATES,
    ClientError,
    ConnectionLostError,
    NotFoundError,
    RefusedError,
    RequestTimeoutError,
    SearcherClient,
)
from rung.searcher.config import ExperimentConfig
from rung.searcher.eventlog import InputRecord
from rung.worker.settle import to_its_end
from rung.worker.spawn import StartMethod

__all__ = ["Client", "Experiment", "Trial", "lineage_of"]

ConfigSource = str | Path | dict[str, Any] | ExperimentConfig
FINAL_STATES = frozenset({"COMPLETED", "ERRORED", "CANCELED", "INVALID_HP"})

log = structlog.get_logger("rung.client")


class Client:
    """An async client of a Rung searcher.

    ``url`` is the broker's (``amqp://`` or ``amqps://``); without one,
    ``$RUNG_BROKER_URL``. Use it as ``async with rung.Client(url) as client:``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        tls: TlsSettings | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 15.0,
    ) -> None:
        self.url = url or os.environ.get("RUNG_BROKER_URL")
        self.namespace = namespace or os.environ.get("RUNG_NAMESPACE", "rung")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._tls = tls
        self._local: LocalCluster | None = None
        self._broker: Broker | None = None
        self._rpc: SearcherClient | None = None

    @classmethod
    def local(
        cls,
        state_dir: str | Path | None = None,
        *,
        workers: int = 1,
        slots: int = 1,
        gpus: list[str] | None = None,
        broker_url: str | None = None,
        tls: TlsSettings | None = None,
        namespace: str = "rung",
        trial_env: Iterable[str] = (),
        start_method: StartMethod = "fork-server",
    ) -> Client:
        """A client of a searcher and workers embedded in this process, on the in-memory
        broker: nothing to install or start. Trials still run as subprocesses. The event
        logs go to ``state_dir`` (default: a temporary directory, removed on close).
        With ``broker_url``, the embedded parts talk over that RabbitMQ instead. Trials
        get an allowlisted environment (docs/security.md); ``trial_env`` names more
        variables of this process's environment to pass on. ``start_method``: how the
        workers start training processes, as ``rung worker --start-method``
        (``"fork-server"``, or ``"exec"``: a fresh interpreter each)."""
        client = cls(timeout=60.0)
        client._local = LocalCluster(
            Path(state_dir) if state_dir is not None else None,
            workers=workers,
            slots=slots,
            gpus=gpus,
            broker_url=broker_url,
            tls=tls,
            namespace=namespace,
            trial_env=trial_env,
            start_method=start_method,
        )
        return client

    # ------------------------------------------------------------------ connection
    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._rpc is not None:
            return
        if self._local is not None:
            self._broker = await self._local.start()
        else:
            if not self.url:
                raise ClientError(
                    "no broker URL: pass rung.Client(url), set RUNG_BROKER_URL, or use "
                    "rung.Client.local() for a searcher in this process"
                )
            broker = connect_broker(
                self.url, Topology(self.namespace), name="rung-client", tls=self._tls
            )
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await broker.start()
            except (TimeoutError, BrokerError) as exc:
                with contextlib.suppress(Exception):
                    await broker.close()
                raise ConnectionLostError(
                    f"cannot reach the broker at {redact(self.url)} within "
                    f"{self.connect_timeout:g} s ({str(exc) or type(exc).__name__}); check the URL "
                    "and that RabbitMQ is running"
                ) from exc
            self._broker = broker
        self._rpc = SearcherClient(self._broker, timeout=self.timeout)

    async def close(self) -> None:
        if self._local is not None:
            await to_its_end(self._local.stop())  # (a Ctrl-C does not cut it short)
        elif self._broker is not None:
            await self._broker.close()
        self._broker = None
        self._rpc = None

    @property
    def rpc(self) -> SearcherClient:
        if self._rpc is None:
            raise ClientError("the client is not connected: use `async with rung.Client(...)`")
        return self._rpc

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise ClientError("the client is not connected: use `async with rung.Client(...)`")
        return self._broker

    # ------------------------------------------------------------------ experiments
    async def create_experiment(
        self, config: ConfigSource, context_dir: str | Path, *, key: str | None = None
    ) -> Experiment:
        """Send the config (a path, a dict or an ``ExperimentConfig``) and the directory
        with the training script; return the new experiment. A config that breaks a rule
        raises ``RefusedError`` listing every problem, each with its field.

        ``key`` names the request: creating again with the same key (after a timeout, or
        from another process) returns the experiment the first create made. Lost answers
        are retried with the request's key, so a retry never makes a second experiment.
        """
        if isinstance(config, ExperimentConfig):
            config = config.model_dump(mode="json", exclude_none=True, by_alias=True)
        created = await self.rpc.create_experiment(config, context_dir, key=key)
        return Experiment(self, created["experiment_id"])

    async def list_experiments(
        self, *, state: str | Iterable[str] | None = None, label: str | None = None
    ) -> list[ExperimentSummary]:
        """Every experiment the searcher has, without their trials; filtered by state
        (one or several) and by label when given."""
        states = {state} if isinstance(state, str) else set(state) if state else None
        return [
            summary
            for summary in await self.rpc.list_experiments()
            if (states is None or summary.state in states)
            and (label is None or label in summary.labels)
        ]

    async def get_experiment(self, experiment_id: str) -> Experiment:
        """The experiment with that id; ``NotFoundError`` if the searcher has none."""
        await self.rpc.describe(experiment_id)
        return Experiment(self, experiment_id)

    def experiment(self, experiment_id: str) -> Experiment:
        """A handle on an experiment, without asking the searcher whether it exists."""
        return Experiment(self, experiment_id)

    async def list_workers(self) -> list[WorkerInfo]:
        """Workers heard from recently: their slots, GPUs, what they run, last heartbeat."""
        return await self.rpc.list_workers()


class Experiment:
    """A handle on one experiment. Every method asks the searcher afresh."""

    def __init__(self, client: Client, experiment_id: str) -> None:
        self.client = client
        self.id = experiment_id

    def __repr__(self) -> str:
        return f"Experiment({self.id!r})"

    async def describe(self) -> ExperimentSummary:
        """Its config's name, state, progress, trials and best trial."""
        return await self.client.rpc.describe(self.id)

    async def trials(self) -> list[TrialSummary]:
        return list((await self.describe()).trials)

    async def best_trial(self) -> TrialSummary | None:
        return (await self.describe()).best_trial

    def trial(self, trial_id: int) -> Trial:
        return Trial(self, trial_id)

    async def history(self, *, after_seq: int = 0) -> list[Event]:
        """The records of the event log so far (after ``after_seq``), without waiting."""
        out: list[Event] = []
        while True:
            records, _, newest = await self.client.rpc.read_records(self.id, after_seq=after_seq)
            out += records
            if records:
                after_seq = records[-1].seq
            if not records or after_seq >= newest:
                return out

    async def watch(self, *, after_seq: int = 0, poll_s: float = 1.0) -> AsyncIterator[Event]:
        """Every record of the experiment's event log, in order: first the history, then
        live ones as the searcher writes them, until the experiment ends.

        Each record has a sequence number (``seq``); records come exactly once, in order,
        also across a lost connection: the live feed is only a hint, and whatever it
        missed is read from the log. Pass ``after_seq`` to resume after a record.
        """
        async for record in _watch(self, after_seq=after_seq, poll_s=poll_s):
            yield record

    async def lineage(self) -> dict[int, Clone]:
        """Where each clone of population-based training comes from, by its trial id:
        the trial whose checkpoint it continues from (``source_trial``), that checkpoint
        (``checkpoint``, and ``length``, its steps), the ``round``, the ``rank`` that
        made the source one to copy, the trial it replaces, and how its hyperparameters
        differ (``changes``), as the searcher logged them. A trial that started afresh
        is not in it; follow ``source_trial`` from any trial to walk its line back.
        One describe: each trial's summary carries its lineage."""
        return lineage_of(await self.describe())

    async def wait(
        self, timeout: float | None = None, *, poll_s: float = 0.5
    ) -> Literal["COMPLETED", "ERROR", "CANCELED"]:
        """Wait until the experiment ends; return its final state. ``TimeoutError``
        (a ``RequestTimeoutError``) if it is still running after ``timeout`` seconds."""
        summary = await self.client.rpc.wait(self.id, poll_s=poll_s, timeout=timeout, whole=False)
        return summary.state  # type: ignore[return-value]

    async def pause(self) -> str:
        """Running trials checkpoint and stop; nothing starts until ``activate()``."""
        return await self._control("pause")

    async def activate(self) -> str:
        """Resume a paused experiment: its trials continue from their checkpoints."""
        return await self._control("activate")

    async def cancel(self) -> str:
        """Stop gracefully: running trials checkpoint and exit, then it is CANCELED."""
        return await self._control("cancel")

    async def kill(self) -> str:
        """Stop at once: trial processes are killed, and it is CANCELED."""
        return await self._control("kill")

    async def _control(self, action: Literal["pause", "activate", "cancel", "kill"]) -> str:
        result = await self.client.rpc.control(self.id, action)
        return str(result["state"])

    async def checkpoints(self, trial_id: int | None = None) -> list[Checkpoint]:
        """Checkpoints reported as saved, oldest first (of one trial, when given)."""
        return [c for c in await self._read(_checkpoint) if trial_id in (None, c.trial_id)]

    async def metrics(self, trial_id: int | None = None) -> list[MetricReport]:
        """Training and validation metrics as reported, in order (of one trial, if given)."""
        return [m for m in await self._read(_metrics) if trial_id in (None, m.trial_id)]

    async def logs(
        self,
        trial_id: int | None = None,
        *,
        follow: bool = False,
        poll_s: float = 1.0,
        rank: int | None = None,
    ) -> AsyncIterator[LogEntry]:
        """The lines the trials' processes wrote (of one trial, when given; of one rank
        of a distributed trial, when given), in the order the searcher stored them; with
        ``follow``, then new ones as they come, until the trial (or, for every trial, the
        experiment) ends. Read page by page with ``read_trial_logs``: the lines are kept
        apart from the event log."""
        async for line in _logs(self, trial_id, follow=follow, poll_s=poll_s, rank=rank):
            yield line

    async def _read(self, convert: Any) -> list[Any]:
        out: list[Any] = []
        for record in await self.history():
            if isinstance(record, InputRecord) and record.ignored is None:
                out.extend(convert(self.id, record))
        return out


class Trial:
    """A handle on one trial of an experiment."""

    def __init__(self, experiment: Experiment, trial_id: int) -> None:
        self.experiment = experiment
        self.id = trial_id

    def __repr__(self) -> str:
        return f"Trial({self.experiment.id!r}, {self.id})"

    async def describe(self) -> TrialSummary:
        for trial in await self.experiment.trials():
            if trial.trial_id == self.id:
                return trial
        raise NotFoundError(f"experiment {self.experiment.id} has no trial {self.id}")

    async def kill(self) -> str:
        """Kill the trial's process at once; the trial ends CANCELED, the search goes on."""
        result = await self.experiment.client.rpc.control_trial(self.experiment.id, self.id)
        return str(result["state"])

    async def metrics(self) -> list[MetricReport]:
        return await self.experiment.metrics(self.id)

    async def checkpoints(self) -> list[Checkpoint]:
        return await self.experiment.checkpoints(self.id)

    async def logs(
        self, *, follow: bool = False, poll_s: float = 1.0, rank: int | None = None
    ) -> AsyncIterator[LogEntry]:
        """The lines the trial's processes wrote (of rank ``rank`` only, when given), in
        order; with ``follow``, then new ones as they come, until the trial ends.
        ``NotFoundError`` for a trial the experiment does not have."""
        async for line in _logs(self.experiment, self.id, follow=follow, poll_s=poll_s, rank=rank):
            yield line

    async def _logs_from_records(self, *, follow: bool) -> AsyncIterator[LogEntry]:
        """Lines read from the event log's records: for a searcher from before
        ``read_trial_logs`` (it kept them there)."""
        await self.describe()  # NotFoundError, rather than silence, for a wrong id
        if not follow:
            for line in await self.experiment._read(_log_lines):  # noqa: SLF001
                if line.trial_id == self.id:
                    yield line
            return
        async for record in self.experiment.watch():
            if not isinstance(record, InputRecord) or record.ignored is not None:
                continue
            for line in _log_lines(self.experiment.id, record):
                if line.trial_id == self.id:
                    yield line
            if _about_trial(record, self.id) and (await self.describe()).state in FINAL_STATES:
                return


# ---------------------------------------------------------------------- reading logs
async def _logs(
    experiment: Experiment,
    trial_id: int | None,
    *,
    follow: bool,
    poll_s: float,
    rank: int | None = None,
) -> AsyncIterator[LogEntry]:
    """Page through ``read_trial_logs``; when following and caught up, ask again every
    ``poll_s`` until the trial (or the experiment) has ended. The searcher reads the
    states before the lines, so an ended trial with nothing more to read is complete."""
    rpc = experiment.client.rpc
    after, after_seq = 0, 0
    while True:
        request = ReadTrialLogs(
            experiment_id=experiment.id,
            trial_id=trial_id,
            after=after,
            after_seq=after_seq,
            rank=rank,
        )
        try:
            result = await rpc._call(request)  # noqa: SLF001 (the client's own RPC)
        except RefusedError as exc:
            if "is not a request" not in str(exc) or trial_id is None:
                raise
            # A searcher from before read_trial_logs: its lines are in the event log.
            async for line in experiment.trial(trial_id)._logs_from_records(follow=follow):  # noqa: SLF001
                if rank is None or line.rank == rank:
                    yield line
            return
        except (RequestTimeoutError, ConnectionLostError) as exc:
            if not follow:
                raise
            log.warning(
                "logs: the searcher is not answering; trying again",
                experiment_id=experiment.id,
                error=str(exc),
            )
            await asyncio.sleep(poll_s)
            continue
        for line in result["lines"]:
            yield LogEntry(experiment_id=experiment.id, **line)
        after, after_seq = int(result["next"]), int(result["next_seq"])
        if result["more"]:
            continue
        ended = result["state"] in TERMINAL_STATES or (
            trial_id is not None and result.get("trial_state") in FINAL_STATES
        )
        if not follow or ended:
            return
        await asyncio.sleep(poll_s)


# ---------------------------------------------------------------------- reading records
def lineage_of(summary: ExperimentSummary) -> dict[int, Clone]:
    """Each clone's lineage among the summary's trials, by trial id."""
    return {
        trial.trial_id: Clone.model_validate(trial.lineage)
        for trial in summary.trials
        if trial.lineage is not None
    }


def _checkpoint(experiment_id: str, record: InputRecord) -> list[Checkpoint]:
    body = record.input
    if not isinstance(body, CheckpointSaved):
        return []
    fields = body.model_dump(exclude={"type", "experiment_id", "worker_id"})
    return [Checkpoint(**fields, experiment_id=experiment_id, reported_at=record.at)]


def _metrics(experiment_id: str, record: InputRecord) -> list[MetricReport]:
    body = record.input
    if not isinstance(body, MetricsReported):
        return []
    fields = body.model_dump(exclude={"type", "experiment_id", "worker_id"})
    return [MetricReport(**fields, experiment_id=experiment_id, reported_at=record.at)]


def _log_lines(experiment_id: str, record: InputRecord) -> list[LogEntry]:
    body = record.input
    if not isinstance(body, LogLines):
        return []
    return [
        LogEntry(
            experiment_id=experiment_id,
            trial_id=body.trial_id,
            attempt=body.attempt,
            stream=line.stream,
            text=line.text,
            rank=line.rank,
        )
        for line in body.lines
    ]


def _about_trial(record: InputRecord, trial_id: int) -> bool:
    """Whether the record may have ended the trial: its exit, or a user's kill."""
    body = record.input
    return (
        body is not None
        and body.type in ("trial_exited", "control_trial")
        and (getattr(body, "trial_id", None) == trial_id)
    )


async def _watch(experiment: Experiment, *, after_seq: int, poll_s: float) -> AsyncIterator[Event]:
    """Read the log after ``after_seq`` page by page; when caught up, wait for the live
    feed's hint that there is more (or ``poll_s``, whichever comes first), and read again.
    Records come from the log only, so none is missed or repeated, whatever the feed does.
    """
    client = experiment.client
    hints: asyncio.Queue[int] = asyncio.Queue()

    async def on_record(delivery: Delivery) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            hints.put_nowait(int(json.loads(delivery.body)["seq"]))

    feed = await client.rpc.follow_feed(experiment.id, on_record)
    last = after_seq
    try:
        while True:
            try:
                records, state, newest = await client.rpc.read_records(
                    experiment.id, after_seq=last
                )
            except (RequestTimeoutError, ConnectionLostError) as exc:
                log.warning(
                    "watch: the searcher is not answering; trying again",
                    experiment_id=experiment.id,
                    after_seq=last,
                    error=str(exc),
                )
                await asyncio.sleep(poll_s)
                continue
            for record in records:
                yield record
                last = record.seq
            if last < newest:
                continue  # more history to page through
            if state in TERMINAL_STATES:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_s):
                    while await hints.get() <= last:
                        pass
    finally:
        await client.rpc.unfollow_feed(feed)
