"""Request and reply over the broker: correlation ids, a private reply queue, timeouts."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from rung.broker.errors import BrokerError
from rung.broker.port import Broker, Delivery
from rung.broker.schemas import Envelope, RpcReply, decode, encode
from rung.broker.schemas.envelope import Body

__all__ = ["RpcClient", "RpcTimeoutError"]


class RpcTimeoutError(BrokerError, TimeoutError):
    """The searcher did not answer in time."""


class RpcClient:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._reply_queue: str | None = None
        self._waiting: dict[str, asyncio.Future[RpcReply]] = {}
        self._ids = itertools.count(1)
        self._session = uuid.uuid4().hex[:12]

    async def _ensure(self) -> str:
        if self._reply_queue is None:
            self._reply_queue = await self.broker.declare_private_queue()
            await self.broker.subscribe(self._reply_queue, self._on_reply, prefetch=16)
        return self._reply_queue

    async def _on_reply(self, delivery: Delivery) -> None:
        await delivery.ack()
        future = self._waiting.pop(delivery.correlation_id or "", None)
        if future is None or future.done():
            return
        try:
            body = decode(delivery.body).body
        except BrokerError as exc:
            future.set_exception(exc)
            return
        if isinstance(body, RpcReply):
            future.set_result(body)
        else:
            future.set_exception(BrokerError(f"expected an rpc_reply, got {body.type}"))

    async def call(self, request: Body, timeout: float = 30.0) -> RpcReply:
        reply_to = await self._ensure()
        correlation = f"{self._session}-{next(self._ids)}"
        future: asyncio.Future[RpcReply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        topology = self.broker.topology
        envelope = Envelope(message_id=correlation, body=request)
        await self.broker.publish(
            topology.rpc_exchange,
            topology.RPC_KEY,
            encode(envelope),
            message_id=correlation,
            reply_to=reply_to,
            correlation_id=correlation,
            timeout=timeout,
        )
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            self._waiting.pop(correlation, None)
            raise RpcTimeoutError(
                f"no answer to {request.type} within {timeout} s; is a searcher "
                f"running on this broker, with namespace {topology.prefix!r}?"
            ) from None
