"""A searcher and workers in this process: ``rung run`` and ``rung.Client.local()``.

On the in-memory broker by default (nothing to install); with a broker URL, each part
gets its own connection to RabbitMQ, on a namespace of its own. Trials still run as
subprocesses of the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import structlog

from rung.broker import Broker, MemoryBroker, TlsSettings, Topology, connect_broker
from rung.logs import configure_logging
from rung.searcher.service.service import SearcherService
from rung.worker.agent import Worker
from rung.worker.settle import to_its_end
from rung.worker.spawn import START_METHODS, StartMethod

__all__ = ["LocalCluster"]


class LocalCluster:
    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        workers: int = 1,
        slots: int = 1,
        gpus: list[str] | None = None,
        broker_url: str | None = None,
        namespace: str = "rung",
        tls: TlsSettings | None = None,
        trial_env: Iterable[str] = (),
        start_method: StartMethod = "fork-server",
    ) -> None:
        if start_method not in START_METHODS:
            raise ValueError(
                f"start_method {start_method!r} is not one of {', '.join(START_METHODS)}: "
                'use "fork-server" (the default) or "exec" (a fresh interpreter a trial)'
            )
        self._own_state_dir = state_dir is None
        self.start_method: StartMethod = start_method
        # Names of this process's environment that trials get besides the allowlist.
        self.trial_env = tuple(trial_env)
        self.state_dir = (
            Path(tempfile.mkdtemp(prefix="rung-local-")) if state_dir is None else state_dir
        ).resolve()
        self.workers = max(workers, 1)
        self.slots = slots
        self.gpus = list(gpus or [])
        topology = Topology(f"{namespace}-local-{uuid.uuid4().hex[:8]}")
        if broker_url is None:
            shared = MemoryBroker(topology)
            self._brokers: list[Broker] = [shared] * (self.workers + 2)
        else:
            self._brokers = [
                connect_broker(broker_url, topology, name=f"rung-local-{i}", tls=tls)
                for i in range(self.workers + 2)
            ]
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._agents: list[Worker] = []

    @property
    def client_broker(self) -> Broker:
        return self._brokers[1]

    async def start(self) -> Broker:
        """Start the searcher and the workers; return the broker a client should use."""
        if not structlog.is_configured():
            # Embedded in someone's program (a notebook): warnings only, on stderr,
            # unless the program set logging up itself.
            configure_logging("console", "warning")
        try:
            await self._start()
        except BaseException:
            await to_its_end(self.stop())  # (nobody else will: the client never got it)
            raise
        return self.client_broker

    async def _start(self) -> None:
        for broker in dict.fromkeys(self._brokers):
            await broker.start()
        service = SearcherService(self._brokers[0], self.state_dir)
        agents = [
            Worker(
                self._brokers[2 + i],
                worker_id=f"local-{i + 1}",
                slots=self.slots,
                gpus=self.gpus[i :: self.workers] if self.gpus else None,
                work_dir=self.state_dir / "workers" / f"local-{i + 1}",
                trial_env_allow=self.trial_env,
                start_method=self.start_method,
            )
            for i in range(self.workers)
        ]
        self._tasks = [asyncio.create_task(service.run(self.stop_event))]
        self._tasks += [asyncio.create_task(agent.run(self.stop_event)) for agent in agents]
        self._agents = agents
        await self._until_ready([service.ready, *(agent.ready for agent in agents)])

    async def _until_ready(self, readiness: list[asyncio.Event]) -> None:
        """Return once the searcher and every worker take messages (a worker's fork
        server started): an experiment created then does not wait for the cluster's
        start. If a part stops first, raise its error (the caller stops the rest)."""
        parts = list(self._tasks)
        waits = [asyncio.create_task(event.wait()) for event in readiness]
        stopped: asyncio.Task[None] | None = None
        try:
            while stopped is None and not all(event.is_set() for event in readiness):
                await asyncio.wait(
                    [*(w for w in waits if not w.done()), *parts],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                stopped = next((task for task in parts if task.done()), None)
        finally:
            for wait in waits:
                wait.cancel()
        if stopped is None:
            return
        error = None if stopped.cancelled() else stopped.exception()
        if error is not None:
            raise error
        raise RuntimeError("the local cluster was stopped as it started")

    async def stop(self) -> None:
        """Workers drain (trials checkpoint and stop), the searcher stops, all disconnect."""
        self.stop_event.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        unique = list(dict.fromkeys(self._brokers))
        for broker in unique[1:]:
            await broker.close()
        with contextlib.suppress(Exception):
            await unique[0].delete_topology()
        await unique[0].close()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
