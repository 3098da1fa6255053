"""The RabbitMQ topology as declarative values, declared idempotently by every process.

    commands exchange (direct) ──"work"──────────► work queue (quorum)   any worker takes RunTrial
                                └─"worker.<id>"───► <id>'s control queue  (exclusive: dies with it)
    events exchange (direct) ───"events"─────────► events queue (quorum) the searcher consumes
                             └──"heartbeat"──────► heartbeats queue (classic, 60 s TTL): liveness
    rpc exchange (direct) ──────"rpc"────────────► rpc queue (quorum)    clients ask the searcher
    dead exchange (fanout) ──────────────────────► dead queue (quorum)   poison messages + reason
    feed exchange (direct) ─────"<experiment id>"► observers' private queues: log records live

Work, events and rpc queues dead-letter to the dead exchange. Heartbeats have a queue of
their own so that a backlog of events never delays them (a delayed heartbeat would make
a live worker look lost); they expire after a minute, since an old one says nothing.
Every name starts with a prefix (``rung`` by default), so test runs and separate
installations never meet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Binding", "ExchangeSpec", "QueueSpec", "Topology"]


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    kind: Literal["direct", "fanout"]


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    quorum: bool = True
    dead_letter_exchange: str | None = None
    message_ttl_ms: int | None = None

    def arguments(self) -> dict[str, str | int]:
        args: dict[str, str | int] = {}
        if self.quorum:
            args["x-queue-type"] = "quorum"
        if self.dead_letter_exchange:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        if self.message_ttl_ms is not None:
            args["x-message-ttl"] = self.message_ttl_ms
        return args


@dataclass(frozen=True, slots=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True)
class Topology:
    prefix: str = "rung"
    exchanges: tuple[ExchangeSpec, ...] = field(init=False)
    queues: tuple[QueueSpec, ...] = field(init=False)
    bindings: tuple[Binding, ...] = field(init=False)

    WORK_KEY = "work"
    EVENTS_KEY = "events"
    HEARTBEAT_KEY = "heartbeat"
    RPC_KEY = "rpc"

    def __post_init__(self) -> None:
        dead = self.dead_exchange
        object.__setattr__(
            self,
            "exchanges",
            (
                ExchangeSpec(self.commands_exchange, "direct"),
                ExchangeSpec(self.events_exchange, "direct"),
                ExchangeSpec(self.rpc_exchange, "direct"),
                ExchangeSpec(dead, "fanout"),
                ExchangeSpec(self.feed_exchange, "direct"),
            ),
        )
        object.__setattr__(
            self,
            "queues",
            (
                QueueSpec(self.work_queue, dead_letter_exchange=dead),
                QueueSpec(self.events_queue, dead_letter_exchange=dead),
                QueueSpec(self.heartbeats_queue, quorum=False, message_ttl_ms=60_000),
                QueueSpec(self.rpc_queue, dead_letter_exchange=dead),
                QueueSpec(self.dead_queue),
            ),
        )
        object.__setattr__(
            self,
            "bindings",
            (
                Binding(self.work_queue, self.commands_exchange, self.WORK_KEY),
                Binding(self.events_queue, self.events_exchange, self.EVENTS_KEY),
                Binding(self.heartbeats_queue, self.events_exchange, self.HEARTBEAT_KEY),
                Binding(self.rpc_queue, self.rpc_exchange, self.RPC_KEY),
                Binding(self.dead_queue, dead, ""),
            ),
        )

    @property
    def commands_exchange(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def rpc_exchange(self) -> str:
        return f"{self.prefix}.rpc"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def feed_exchange(self) -> str:
        return f"{self.prefix}.feed"

    @property
    def work_queue(self) -> str:
        return f"{self.prefix}.work"

    @property
    def events_queue(self) -> str:
        return f"{self.prefix}.events"

    @property
    def heartbeats_queue(self) -> str:
        return f"{self.prefix}.heartbeats"

    @property
    def rpc_queue(self) -> str:
        return f"{self.prefix}.rpc"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    def worker_queue(self, worker_id: str) -> str:
        return f"{self.prefix}.worker.{worker_id}"

    @staticmethod
    def worker_key(worker_id: str) -> str:
        return f"worker.{worker_id}"
