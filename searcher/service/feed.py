"""The live feed: every durable record, published as it is written, for watchers.

It runs beside the input handlers, so that no input waits for the feed's confirms. Nobody
listening is fine, and a record the feed misses is in the log (observers read it from
there, and ``rung.Client.watch`` fills the gap).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from rung.broker.errors import BrokerError
from rung.broker.port import Broker
from rung.searcher.eventlog.records import Record
from rung.searcher.host import ExperimentHost

__all__ = ["LiveFeed"]

log = structlog.get_logger("rung.searcher")


class LiveFeed:
    def __init__(self, broker: Broker, hosts: Callable[[], Iterable[ExperimentHost]]) -> None:
        self.broker = broker
        self._hosts = hosts
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Have the feed publish what was appended (once it is durable)."""
        self._wake.set()

    async def pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.publish()

    async def publish(self) -> None:
        """Publish the appended records that are durable, in order per experiment; those
        not durable yet wait for the next time."""
        ready: list[tuple[str, Record]] = []
        for host in list(self._hosts()):
            durable = host.log.durable_seq
            keep = [r for r in host.unfed if r.seq > durable]
            ready += [(host.experiment_id, r) for r in host.unfed if r.seq <= durable]
            host.unfed = keep
        # Sent in order on one channel; their confirms are awaited together.
        await asyncio.gather(*(self._publish(eid, record) for eid, record in ready))

    async def _publish(self, experiment_id: str, record: Record) -> None:
        try:
            await self.broker.publish(
                self.broker.topology.feed_exchange,
                experiment_id,
                record.model_dump_json().encode(),
                message_id=f"{experiment_id}/record/{record.seq}",
                mandatory=False,
            )
        except BrokerError as exc:
            log.warning(
                "live feed publish failed; the log has the record",
                experiment_id=experiment_id,
                seq=record.seq,
                error=str(exc),
            )
