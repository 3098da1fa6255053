"""The live feed: every durable record, published as it is written, for watchers.

It runs beside the input handlers, so that no input waits for the feed's confirms. Nobody
listening is fine, and a record the feed misses is in the log (observers read it from
there, and ``rung.Client.watch`` fills the gap).

Once an experiment has ended and its last record is out, the feed also publishes one
notice under the routing key ``<experiment id>.ended`` (``Topology.ended_key``), which record
watchers never see: it wakes ``wait()`` up at once, instead of at its next poll. It is a
hint like the records: the waiter asks the searcher for the state before it believes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable

import structlog

from rung.broker.errors import BrokerError
from rung.broker.port import Broker
from rung.searcher.eventlog.records import Record
from rung.searcher.host import ExperimentHost
from rung.searcher.trials.model import ENDED

__all__ = ["LiveFeed"]

log = structlog.get_logger("rung.searcher")


class LiveFeed:
    def __init__(self, broker: Broker, hosts: Callable[[], Iterable[ExperimentHost]]) -> None:
        self.broker = broker
        self._hosts = hosts
        self._wake = asyncio.Event()
        # Experiments whose end notice went out (or was tried): one each.
        self._announced: set[str] = set()

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
        ended: list[ExperimentHost] = []
        for host in list(self._hosts()):
            durable = host.log.durable_seq
            keep = [r for r in host.unfed if r.seq > durable]
            ready += [(host.experiment_id, r) for r in host.unfed if r.seq <= durable]
            fed = len(host.unfed) > len(keep)
            host.unfed = keep
            if (
                fed  # its last records go now (a restart does not announce old ends again)
                and not keep
                and host.run.state in ENDED
                and host.experiment_id not in self._announced
            ):
                self._announced.add(host.experiment_id)
                ended.append(host)
        # Sent in order on one channel (the end notices last); their confirms are
        # awaited together.
        await asyncio.gather(
            *(self._publish(eid, record) for eid, record in ready),
            *(self._announce(host) for host in ended),
        )

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

    async def _announce(self, host: ExperimentHost) -> None:
        notice = {
            "kind": "ended",
            "experiment_id": host.experiment_id,
            "state": host.run.state,
            "seq": host.log.durable_seq,
        }
        try:
            await self.broker.publish(
                self.broker.topology.feed_exchange,
                self.broker.topology.ended_key(host.experiment_id),
                json.dumps(notice).encode(),
                message_id=f"{host.experiment_id}/ended",
                mandatory=False,
            )
        except BrokerError as exc:
            log.warning(
                "live feed: the end notice was not published; waiters find out at their next poll",
                experiment_id=host.experiment_id,
                error=str(exc),
            )
