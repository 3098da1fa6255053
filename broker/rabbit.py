"""RabbitMQ through aio-pika, with the traps of 3.10 designed around.

* Separate robust connections for publishing and consuming: a resource alarm blocks
  publishers, and must not stop a process from consuming (``shared/reference/rabbitmq.md``
  §1.7 item 5).
* Publisher confirms, persistent messages, ``mandatory`` publishes and
  ``on_return_raises``: an unroutable message raises instead of vanishing. Every publish has
  a timeout, so a blocked broker cannot hang a process forever.
* Prefetch is set explicitly per subscription; aio-pika re-applies it on reconnect.
* Strong references to channels, queues and consumers (aio-pika #594).
* The first connection retries while the broker is unreachable, saying what it waits for.
  A TLS certificate the broker presents that fails the checks is not retried: it is a
  setting to fix, and the error says which.
* AMQP heartbeats every 15 s unless the URL says otherwise (aio-pika's default is 60 s,
  which takes aiormq about 3 minutes to notice a dead link).
* Handlers run through the port's :class:`~broker.port.PoisonGuard`: a message whose
  handler keeps raising is dead-lettered after ``delivery_limit`` tries (dropped, on a
  private queue), whatever the queue's type. Classic queues count no deliveries, and a
  quorum queue's count includes the redeliveries of a dropped link, which are not the
  handler's fault: the guard counts the handler's failures itself. A topology Rung
  declares also gives its quorum queues the broker's own, higher, delivery limit, for a
  message that kills its consumer outright (``topology.BROKER_DELIVERY_LIMIT``).
* Dead-lettering: a message of the work queues is rejected, and RabbitMQ moves it to the
  dead exchange (no worker may write there); one of the searcher's queues is published
  there by the searcher, with its reason and its validated sender (``broker.port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelInvalidStateError,
    DeliveryError,
    PublishError,
)
from pamqp.common import FieldTable

from rung.broker.errors import (
    BrokerError,
    BrokerSettingsError,
    BrokerUnavailableError,
    MessageTooLargeError,
    PublishTimeoutError,
    UnroutableError,
)
from rung.broker.limits import BROKER_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES
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
from rung.broker.tls import TlsSettings, ssl_context_for
from rung.broker.topology import Topology

# How long removing a private queue may take before it is left to the connection's end.
_CLEANUP_S = 5.0

__all__ = ["DEFAULT_HEARTBEAT_S", "RabbitBroker", "redact", "refusal_error"]

T = TypeVar("T")
log = structlog.get_logger("rung.broker")

DEFAULT_HEARTBEAT_S = 15


def _with_heartbeat(url: str) -> str:
    """The URL with ``heartbeat=`` added when it has none."""
    if "heartbeat=" in urlsplit(url).query:
        return url
    return f"{url}{'&' if '?' in url else '?'}heartbeat={DEFAULT_HEARTBEAT_S}"


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:******@{host}"


def _verification_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed, wherever in the chain aiormq wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class _RabbitSubscription(Subscription):
    """A consumer on a channel of its own while it consumes. Cancelling stops new
    deliveries at once; the channel is then kept for the next consumer of the same queue
    (a worker stops and starts consuming work with every trial: a cancel and a consume
    on an open channel are two round trips to the broker, a new channel six). A channel
    that closed is dropped instead. The deliveries already received are acked on it
    whenever they settle: it stays open."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        release: Callable[[_RabbitSubscription], Awaitable[None]] | None = None,
        *,
        owns_channel: bool = True,
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.tag: str | None = None
        self.unsettled = 0
        self.cancelled = False
        self._release = release
        # A private queue's consumer shares the queue's channel, which closes with the
        # queue (delete_private_queue), not with the consumer.
        self._owns_channel = owns_channel

    async def settled(self) -> None:
        self.unsettled -= 1
        if self.cancelled and self.unsettled <= 0 and self._release is None:
            await self.close_channel()

    def never_reuse(self) -> None:
        """Close the channel once its deliveries are settled, instead of keeping it."""
        self._release = None

    async def close_channel(self) -> None:
        if not self._owns_channel:
            return
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await self.channel.close()

    async def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self.tag is not None:
            # Bounded: on a connection being restored, the cancel can wait without end; a
            # consumer whose connection is gone is gone with it anyway.
            try:
                await _bounded(self.queue.cancel(self.tag), 10.0)
            except (*CONNECTION_EXCEPTIONS, TimeoutError):
                self.never_reuse()  # not known to be cancelled: never reuse the channel
        if self._release is not None and not self.channel.is_closed:
            await self._release(self)
        elif self.unsettled <= 0:
            await self.close_channel()


async def _bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """Await ``awaitable`` for at most ``seconds``, then raise TimeoutError.

    Unlike ``asyncio.timeout``, this holds even when the awaited code swallows the
    cancellation that a timeout delivers (aiormq does, on some connection-loss paths):
    the work runs in a task of its own, and this one stops waiting for it.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_forget)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_forget)
        raise TimeoutError
    return task.result()


def refusal_error(
    exc: aiormq.exceptions.ChannelPreconditionFailed, message_id: str, size: int
) -> BrokerError:
    """The permanent error for a publish the broker refused with 406 PRECONDITION_FAILED:
    :class:`MessageTooLargeError` naming the size and the limit when it was over the
    broker's ``max_message_size``, else a :class:`BrokerError` with the broker's reason."""
    text = " ".join(str(arg) for arg in exc.args) or str(exc)
    if "max size" in text or "message size" in text:
        return MessageTooLargeError(
            f"the broker refused {message_id}: the message is {size} bytes, over the "
            f"broker's max_message_size ({text}); Rung keeps messages under "
            f"{MAX_MESSAGE_BYTES} bytes (MAX_MESSAGE_BYTES), so set max_message_size to "
            f"{BROKER_MAX_MESSAGE_BYTES} (BROKER_MAX_MESSAGE_BYTES) as deploy/rabbitmq does"
        )
    return BrokerError(f"the broker refused {message_id} (406 PRECONDITION_FAILED): {text}")


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome, so that nothing reports it unretrieved."""
    if not task.cancelled():
        task.exception()


class _RabbitDelivery(Delivery):
    def __init__(
        self,
        broker: RabbitBroker,
        message: AbstractIncomingMessage,
        queue: str,
        subscription: _RabbitSubscription,
    ) -> None:
        super().__init__(
            body=message.body,
            message_id=message.message_id,
            headers=dict(message.headers or {}),
            reply_to=message.reply_to,
            correlation_id=message.correlation_id,
            redelivered=bool(message.redelivered),
            queue=queue,
            user_id=message.user_id,
        )
        self._broker = broker
        self._message = message
        self._subscription = subscription

    def _settle(self) -> None:
        if self.settled:
            raise BrokerError(f"delivery of {self.message_id} already settled")
        self.settled = True

    def link_lost(self) -> bool:
        try:
            channel = self._message.channel
        except ChannelInvalidStateError:
            return True
        return channel.is_closed

    async def ack(self) -> None:
        self._settle()
        try:
            await self._message.ack()
        except CONNECTION_EXCEPTIONS as exc:
            # Its channel is gone with the connection: the broker will deliver the
            # message again, and whoever gets it must find it a duplicate.
            raise BrokerUnavailableError(
                f"could not acknowledge {self.message_id}: the connection was lost ({exc})"
            ) from exc
        finally:
            await self._subscription.settled()

    async def requeue(self) -> None:
        self._settle()
        try:
            await self._message.nack(requeue=True)
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailableError(
                f"could not requeue {self.message_id}: the connection was lost ({exc})"
            ) from exc
        finally:
            await self._subscription.settled()

    async def _move_to_dead_queue(self, reason: str) -> None:
        if self.queue not in _reasoned_queues(self._broker.topology):
            # A worker (a work queue's consumer) may not write the dead exchange: it
            # rejects the message, and the queue's dead-letter exchange moves it, with
            # the broker's x-death header (queue, reason "rejected") and the sender's
            # validated user_id left as they were. The reason is in the log.
            self._settle()
            try:
                await self._message.reject(requeue=False)
            except CONNECTION_EXCEPTIONS as exc:
                raise BrokerUnavailableError(
                    f"could not dead-letter {self.message_id}: the connection was lost ({exc})"
                ) from exc
            finally:
                await self._subscription.settled()
            return
        await self._broker.publish(
            self._broker.topology.dead_exchange,
            "",
            self.body,
            message_id=self.message_id or body_id(self.body),
            headers=dead_letter_headers(self, reason),
        )
        await self.ack()


def _reasoned_queues(topology: Topology) -> tuple[str, ...]:
    """The queues whose dead letters carry their reason: those only the searcher reads,
    whose broker user alone may write the dead exchange (``broker.definitions``)."""
    return (topology.events_queue, topology.heartbeats_queue, topology.rpc_queue)


class RabbitBroker(Broker):
    def __init__(
        self,
        url: str,
        topology: Topology | None = None,
        *,
        name: str = "rung",
        retry_interval: float = 2.0,
        tls: TlsSettings | None = None,
        delivery_limit: int = DELIVERY_LIMIT,
    ) -> None:
        self.url = _with_heartbeat(url)
        # Checked here, so that a bad setting fails at once and is never retried.
        self._ssl = ssl_context_for(url, tls)
        self.username = unquote(urlsplit(url).username or "") or None
        self.topology = topology or Topology()
        self.name = name
        self.retry_interval = retry_interval
        self.guard = PoisonGuard(
            dead_queue=self.topology.dead_queue,
            limit=delivery_limit,
            link_errors=(aiormq.exceptions.AMQPConnectionError, ChannelInvalidStateError),
        )
        self._publish_conn: AbstractRobustConnection | None = None
        self._consume_conn: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._private: dict[str, tuple[AbstractChannel, AbstractQueue]] = {}
        self._subscriptions: list[_RabbitSubscription] = []
        # Per queue, the channel of a cancelled consumer, kept for the next one.
        self._idle: dict[str, tuple[AbstractChannel, AbstractQueue, int]] = {}
        # Message handlers under way (see _subscribe): cancelled only by close().
        self._handlers: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    async def _connect(self, role: str) -> AbstractRobustConnection:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await aio_pika.connect_robust(
                    self.url,
                    ssl_context=self._ssl,
                    client_properties={"connection_name": f"{self.name}-{role}"},
                    reconnect_interval=self.retry_interval,
                )
            except CONNECTION_EXCEPTIONS as exc:
                if (failed := _verification_failure(exc)) is not None:
                    raise BrokerSettingsError(
                        f"the broker at {redact(self.url)} failed the TLS checks: "
                        f"{failed.verify_message}; give the CA that signed its certificate "
                        "with --tls-ca, and connect by the host name the certificate names"
                    ) from exc
                log.warning(
                    "waiting for the broker",
                    url=redact(self.url),
                    attempt=attempt,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=self.retry_interval,
                )
                await asyncio.sleep(self.retry_interval)

    async def start(self) -> None:
        self._publish_conn = await self._connect("publish")
        self._consume_conn = await self._connect("consume")
        channel = await self._publish_conn.channel(publisher_confirms=True, on_return_raises=True)
        self._channel = channel
        if await self._topology_exists():
            # Made beforehand (deploy/rabbitmq's definitions): a least-privilege user may
            # not declare anything, and needs no more than passive declares.
            for spec in self.topology.exchanges:
                self._exchanges[spec.name] = await channel.get_exchange(spec.name, ensure=False)
        else:
            await self._declare_topology(channel)
        log.info("connected to the broker", url=redact(self.url), prefix=self.topology.prefix)

    async def _topology_exists(self) -> bool:
        """Whether every exchange and queue exists: passive declares, which need no
        permission, on a channel of their own (a missing one closes the channel)."""
        if self._publish_conn is None:
            return False
        channel = await self._publish_conn.channel()
        try:
            for spec in self.topology.exchanges:
                await channel.declare_exchange(spec.name, passive=True)
            for queue_spec in self.topology.queues:
                await channel.declare_queue(queue_spec.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await channel.close()
        return True

    async def _declare_topology(self, channel: AbstractChannel) -> None:
        for spec in self.topology.exchanges:
            kind = aio_pika.ExchangeType(spec.kind)
            self._exchanges[spec.name] = await channel.declare_exchange(
                spec.name, kind, durable=True
            )
        for queue_spec in self.topology.queues:
            await channel.declare_queue(
                queue_spec.name, durable=True, arguments=queue_spec.declare_arguments()
            )
        for binding in self.topology.bindings:
            queue = await channel.get_queue(binding.queue, ensure=False)
            await queue.bind(binding.exchange, binding.routing_key)

    async def close(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        idle = [channel for channel, _, _ in self._idle.values()]
        self._idle.clear()
        for channel in [*(sub.channel for sub in self._subscriptions), *idle]:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()
        for conn in (self._publish_conn, self._consume_conn):
            if conn is not None:
                await conn.close()

    def _exchange(self, name: str) -> AbstractExchange:
        if self._channel is None:
            raise BrokerError("the broker is not started; call start() first")
        if name == "":
            return self._channel.default_exchange
        try:
            return self._exchanges[name]
        except KeyError:
            raise BrokerError(f"no exchange {name!r} in the topology") from None

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
        message = aio_pika.Message(
            body,
            message_id=message_id,
            headers=headers or {},
            reply_to=reply_to,
            correlation_id=correlation_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=self.username,  # the broker refuses it unless it is this connection's
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        retries = 0
        while True:
            left = max(deadline - loop.time(), 0.1)
            try:
                # The whole attempt is bounded, not only the wait for the confirm: a robust
                # channel waits, without a limit, for its connection to be ready again.
                await _bounded(
                    self._exchange(exchange).publish(
                        message, routing_key, mandatory=mandatory, timeout=left
                    ),
                    left,
                )
            except PublishError as exc:
                raise UnroutableError(
                    f"no queue takes {exchange or 'default'}/{routing_key}"
                ) from exc
            except DeliveryError as exc:
                raise BrokerError(f"the broker refused {message_id}: {exc}") from exc
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                # 406: the broker closed the channel over this message (too large, a
                # user_id not ours). Sending it again cannot help: not retried.
                raise refusal_error(exc, message_id, len(body)) from exc
            except TimeoutError as exc:
                raise PublishTimeoutError(
                    f"no confirm for {message_id} within {timeout} s; is the "
                    "broker blocked (disk or memory alarm)?"
                ) from exc
            except CONNECTION_EXCEPTIONS as exc:
                # No confirm came: send it again once the connection is back. The id is the
                # same, so a copy the broker did take is dropped by its consumer.
                if loop.time() >= deadline:
                    raise BrokerUnavailableError(
                        f"could not publish {message_id} within {timeout} s: the connection "
                        f"to the broker is down ({type(exc).__name__}: {exc})"
                    ) from exc
                if retries == 0:
                    log.warning(
                        "connection lost while publishing; waiting for it to come back",
                        message_id=message_id,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                retries += 1
                await asyncio.sleep(min(self.retry_interval / 2, deadline - loop.time()))
            else:
                if retries:
                    log.info("published after the connection came back", message_id=message_id)
                return

    async def _consume_channel(self, prefetch: int) -> AbstractChannel:
        if self._consume_conn is None:
            raise BrokerUnavailableError("the broker is not started; call start() first")
        channel = await self._consume_conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def subscribe(
        self, queue: str, handler: Handler, *, prefetch: int, priority: int = 0
    ) -> Subscription:
        try:
            return await self._subscribe(queue, handler, prefetch, priority)
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailableError(
                f"cannot consume from {queue}: the connection to the broker is down "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    async def _subscribe(
        self, queue: str, handler: Handler, prefetch: int, priority: int
    ) -> Subscription:
        private = self._private.get(queue)
        if private is not None:
            # A private (exclusive) queue dies with its connection. Its consumer must be
            # on the channel that declares it, so that after a reconnect the channel
            # declares the queue again before it consumes; a consumer on another channel
            # could be restored first, find no queue, and be lost for good.
            channel, q = private
            await channel.set_qos(prefetch_count=max(prefetch, 1))
            sub = _RabbitSubscription(channel, q, owns_channel=False)
        else:
            idle = self._idle.pop(queue, None)
            if idle is not None and not idle[0].is_closed:
                channel, q, had = idle
                if had != max(prefetch, 1):
                    await channel.set_qos(prefetch_count=max(prefetch, 1))
            else:
                channel = await self._consume_channel(max(prefetch, 1))
                # A passive declare, not get_queue(ensure=False): a robust channel
                # restores only the queues declared on it, and with them their consumers.
                q = await channel.declare_queue(queue, passive=True)
            sub = _RabbitSubscription(channel, q, self._keep_idle(queue, max(prefetch, 1)))

        async def handle(delivery: _RabbitDelivery) -> None:
            await self.guard.run(handler, delivery, private=private is not None)

        async def on_message(message: AbstractIncomingMessage) -> None:
            sub.unsettled += 1
            # The handler runs in a task of the broker's, not in the client library's
            # callback task: when a connection resets, aiormq cancels its channels'
            # tasks, and a handler cancelled half-way (a trial half-started: announced,
            # never run, its slot never freed) is worse than one that finishes and finds
            # its ack refused (the broker delivers the message again; ids drop the copy).
            task = asyncio.create_task(handle(_RabbitDelivery(self, message, queue, sub)))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
            await asyncio.shield(task)

        # (x-priority 0 is RabbitMQ's default: only other priorities are sent)
        arguments: FieldTable | None = {"x-priority": priority} if priority else None
        sub.tag = await q.consume(on_message, no_ack=False, arguments=arguments)
        self._subscriptions.append(sub)
        return sub

    def _keep_idle(
        self, queue: str, prefetch: int
    ) -> Callable[[_RabbitSubscription], Awaitable[None]]:
        async def release(sub: _RabbitSubscription) -> None:
            with contextlib.suppress(ValueError):
                self._subscriptions.remove(sub)
            previous = self._idle.get(queue)
            if previous is not None and previous[0] is not sub.channel:
                # One idle channel per queue is enough; this one closes once settled.
                sub.never_reuse()
                if sub.unsettled <= 0:
                    await sub.close_channel()
                return
            self._idle[queue] = (sub.channel, sub.queue, prefetch)

        return release

    async def declare_private_queue(self, bind_to: tuple[str, str] | None = None) -> str:
        if self._consume_conn is None:
            raise BrokerUnavailableError("the broker is not started; call start() first")
        try:
            channel = await self._consume_conn.channel()
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailableError(
                f"cannot declare a private queue: the connection to the broker is down "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        name: str | None = None
        try:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            name = queue.name
            if bind_to is not None:
                await queue.bind(bind_to[0], bind_to[1])
        except CONNECTION_EXCEPTIONS as exc:
            # Closed by us: a robust channel the broker closed would come back by itself
            # and declare the queue again. Then the queue goes, on a channel of its own.
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()
            if name is not None:
                await self._delete_queue_quietly(name)
            where = "" if bind_to is None else f" bound to {bind_to[0]!r} with key {bind_to[1]!r}"
            raise BrokerError(
                f"cannot declare a private queue{where}: {type(exc).__name__}: {exc}; check "
                "that the topology is declared and that this user may read from that exchange"
            ) from exc
        self._private[name] = (channel, queue)
        return name

    async def _delete_queue_quietly(self, name: str) -> None:
        """Best effort, bounded: delete a queue on a short-lived channel of its own."""
        if self._consume_conn is None:
            return
        with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
            async with asyncio.timeout(_CLEANUP_S):
                cleanup = await self._consume_conn.channel()
                try:
                    await cleanup.queue_delete(name)
                finally:
                    await cleanup.close()

    async def delete_private_queue(self, name: str) -> None:
        entry = self._private.pop(name, None)
        if entry is None:
            return
        channel, queue = entry
        try:
            async with asyncio.timeout(_CLEANUP_S):
                # Its consumer first: a queue deleted under a consumer makes the broker
                # cancel it, which the client library logs as a warning.
                for sub in [s for s in self._subscriptions if s.queue is queue]:
                    await sub.cancel()
                    self._subscriptions.remove(sub)
                await queue.delete(if_unused=False, if_empty=False)
                await channel.close()
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            # The queue is exclusive: it goes with the connection at the latest.
            raise BrokerUnavailableError(
                f"cannot delete the private queue {name}: {type(exc).__name__}: {exc}"
            ) from exc

    async def delete_topology(self) -> None:
        if self._channel is None:
            return
        for sub in self._subscriptions:
            await sub.cancel()
        for spec in self.topology.queues:
            await self._channel.queue_delete(spec.name)
        for exchange in self.topology.exchanges:
            await self._channel.exchange_delete(exchange.name)
