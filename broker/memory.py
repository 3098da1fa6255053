"""An in-process broker with the same semantics as RabbitMQ for everything Rung uses.

It backs the zero-setup embedded mode (``rung run`` without ``--broker``) and fast tests.
Messages live in memory only: a process that exits takes them along. Handlers run through
the port's :class:`~broker.port.PoisonGuard`, as on RabbitMQ: a message whose handler
keeps raising is dead-lettered after ``delivery_limit`` tries (dropped, on a private queue).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rung.broker.errors import BrokerError, UnroutableError
from rung.broker.port import (
    DELIVERY_LIMIT,
    Broker,
    Delivery,
    Handler,
    PoisonGuard,
    Subscription,
    body_id,
    dead_letter_headers,
)
from rung.broker.topology import Topology

__all__ = ["MemoryBroker"]


@dataclass
class _Message:
    body: bytes
    message_id: str
    headers: dict[str, Any]
    reply_to: str | None
    correlation_id: str | None
    redelivered: bool = False


@dataclass
class _Queue:
    name: str
    dead_letter_exchange: str | None = None
    private: bool = False
    # As RabbitMQ's x-max-length with x-overflow drop-head: past it, the oldest go.
    max_length: int | None = None
    messages: deque[_Message] = field(default_factory=deque)
    consumers: list[_MemorySubscription] = field(default_factory=list)
    cursor: int = 0


class _MemoryDelivery(Delivery):
    def __init__(
        self, broker: MemoryBroker, sub: _MemorySubscription, message: _Message, queue: str
    ) -> None:
        super().__init__(
            body=message.body,
            message_id=message.message_id,
            headers=dict(message.headers),
            reply_to=message.reply_to,
            correlation_id=message.correlation_id,
            redelivered=message.redelivered,
            queue=queue,
        )
        self._broker = broker
        self._sub = sub
        self._message = message

    def _settle(self) -> None:
        if self.settled:
            raise BrokerError("delivery already settled")
        self.settled = True
        self._sub.in_flight -= 1

    async def ack(self) -> None:
        self._settle()
        self._broker.dispatch_queue(self.queue)

    async def requeue(self) -> None:
        self._settle()
        self._message.redelivered = True
        queue = self._broker.queues.get(self.queue)
        if queue is None:
            return  # deleted meanwhile (a private queue): gone with it, as on RabbitMQ
        queue.messages.appendleft(self._message)
        self._broker.dispatch_queue(self.queue)

    async def _move_to_dead_queue(self, reason: str) -> None:
        queue = self._broker.queues[self.queue]
        target = queue.dead_letter_exchange or self._broker.topology.dead_exchange
        headers = dead_letter_headers(self, reason)
        await self._broker.publish(
            target,
            "",
            self._message.body,
            message_id=self._message.message_id or body_id(self._message.body),
            headers=headers,
        )
        await self.ack()


class _MemorySubscription(Subscription):
    def __init__(
        self, broker: MemoryBroker, queue: str, handler: Handler, prefetch: int, priority: int
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.priority = priority
        self.in_flight = 0
        self.active = True
        self.pending: set[_MemoryDelivery] = set()

    async def cancel(self) -> None:
        self.active = False
        queue = self.broker.queues.get(self.queue)
        if queue is not None and self in queue.consumers:
            queue.consumers.remove(self)

    def has_room(self) -> bool:
        return self.active and self.in_flight < self.prefetch


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ's topic matching: words split on dots, ``*`` is one word, ``#`` any number
    of words (none included, so ``events.#`` matches ``events``)."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


class MemoryBroker(Broker):
    def __init__(
        self, topology: Topology | None = None, *, delivery_limit: int = DELIVERY_LIMIT
    ) -> None:
        self.topology = topology or Topology()
        self.guard = PoisonGuard(dead_queue=self.topology.dead_queue, limit=delivery_limit)
        self._exchanges: dict[str, str] = {}
        self._bindings: dict[str, list[tuple[str, str]]] = {}
        self.queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._private = itertools.count(1)
        self._started = False

    async def start(self) -> None:
        for exchange in self.topology.exchanges:
            self._exchanges[exchange.name] = exchange.kind
        for spec in self.topology.queues:
            self.queues.setdefault(
                spec.name,
                _Queue(spec.name, spec.dead_letter_exchange, max_length=spec.max_length),
            )
        for binding in self.topology.bindings:
            self._bind(binding.queue, binding.exchange, binding.routing_key)
        self._started = True

    def _bind(self, queue: str, exchange: str, key: str) -> None:
        routes = self._bindings.setdefault(exchange, [])
        if (key, queue) not in routes:
            routes.append((key, queue))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._started = False

    def _route(self, exchange: str, key: str) -> list[str]:
        if exchange == "":
            return [key] if key in self.queues else []
        kind = self._exchanges.get(exchange)
        if kind is None:
            raise BrokerError(f"no exchange {exchange!r}")
        return [
            q
            for k, q in self._bindings.get(exchange, [])
            if kind == "fanout" or k == key or (kind == "topic" and topic_matches(k, key))
        ]

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        timeout: float = 30.0,
        mandatory: bool = True,
    ) -> None:
        targets = self._route(exchange, routing_key)
        if not targets and not mandatory:
            return
        if not targets:
            raise UnroutableError(f"no queue takes {exchange or 'default'}/{routing_key}")
        for name in targets:
            queue = self.queues[name]
            queue.messages.append(
                _Message(body, message_id, dict(headers or {}), reply_to, correlation_id)
            )
            while queue.max_length is not None and len(queue.messages) > queue.max_length:
                queue.messages.popleft()
            self.dispatch_queue(name)
        await asyncio.sleep(0)

    def dispatch_queue(self, name: str) -> None:
        queue = self.queues.get(name)
        if queue is None:
            return
        while queue.messages:
            ready = [c for c in queue.consumers if c.has_room()]
            if not ready:
                return
            top = max(c.priority for c in ready)  # consumer priorities, as RabbitMQ's
            ready = [c for c in ready if c.priority == top]
            sub = ready[queue.cursor % len(ready)]
            queue.cursor += 1
            message = queue.messages.popleft()
            sub.in_flight += 1
            delivery = _MemoryDelivery(self, sub, message, name)
            task = asyncio.get_running_loop().create_task(self._run(sub, delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, sub: _MemorySubscription, delivery: _MemoryDelivery) -> None:
        queue = self.queues.get(delivery.queue)
        await self.guard.run(sub.handler, delivery, private=queue is not None and queue.private)

    async def subscribe(
        self, queue: str, handler: Handler, *, prefetch: int, priority: int = 0
    ) -> Subscription:
        if queue not in self.queues:
            raise BrokerError(f"no queue {queue!r}")
        sub = _MemorySubscription(self, queue, handler, max(prefetch, 1), priority)
        self.queues[queue].consumers.append(sub)
        self.dispatch_queue(queue)
        return sub

    async def declare_private_queue(self, bind_to: tuple[str, str] | None = None) -> str:
        if bind_to is not None and bind_to[0] not in self._exchanges:
            raise BrokerError(
                f"cannot bind a private queue to exchange {bind_to[0]!r} with key "
                f"{bind_to[1]!r}: no such exchange; check that the topology is declared"
            )
        name = f"{self.topology.prefix}.private.{next(self._private)}"
        self.queues[name] = _Queue(name, private=True)
        if bind_to is not None:
            self._bind(name, *bind_to)
        return name

    async def delete_private_queue(self, name: str) -> None:
        self.queues.pop(name, None)
        for routes in self._bindings.values():
            routes[:] = [(k, q) for k, q in routes if q != name]

    async def delete_topology(self) -> None:
        self.queues.clear()
        self._bindings.clear()
        self._exchanges.clear()

    def depth(self, queue: str) -> int:
        """Messages waiting in a queue (for tests and the CLI)."""
        return len(self.queues[queue].messages)
