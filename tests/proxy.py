"""A TCP proxy in front of the broker that misbehaves on command, for fault tests.

Debian has no toxiproxy and this kernel has no netem (``shared/reference/rabbitmq.md``
§3.1), so network faults are made here, between the clients and the broker's port:

* ``delay(seconds)``: every chunk arrives that much later, in order, in both directions
  (latency, not a bandwidth cap);
* ``blackhole()``: connections stay open but nothing moves, as in a partition; what was
  sent meanwhile arrives after ``heal()``, as TCP would retransmit it, unless a side has
  given up on the connection by then. New connections are accepted and stall too;
* ``reset()``: every open connection is closed with a TCP RST on both sides, as a
  stateful firewall or a NAT that forgot the flow would do.

With ``tls``, the proxy also terminates TLS: clients connect with ``amqps://`` and the
proxy speaks plain AMQP to the broker, so the client side of TLS is tested for real
without reconfiguring the broker.

It runs its own event loop in a thread, so both sync and async tests can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["FaultProxy"]

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int] = ("127.0.0.1", 5672),
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream = upstream
        self.tls = tls
        self.port = 0
        self.connections = 0  # accepted so far
        self.faults: list[str] = []  # what was injected, in order, for test reports
        self._delay = 0.0
        self._open = threading.Event()  # set: data flows; clear: blackholed
        self._open.set()
        self._flowing: asyncio.Event | None = None
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ control
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def url(self, query: str = "") -> str:
        """The local broker's guest URL, through this proxy."""
        scheme = "amqps" if self.tls else "amqp"
        host = "localhost" if self.tls else "127.0.0.1"  # the certificate names localhost
        return f"{scheme}://guest:guest@{host}:{self.port}/" + (f"?{query}" if query else "")

    def delay(self, seconds: float) -> None:
        self._delay = seconds
        self.faults.append(f"delay {seconds:g} s")

    def blackhole(self) -> None:
        self.faults.append("blackhole")
        self._call(self._set_flowing, False)

    def heal(self) -> None:
        self._delay = 0.0
        self._call(self._set_flowing, True)

    def reset(self) -> int:
        """RST every open connection; return how many there were."""
        self.faults.append("reset")
        if self._loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._reset_all(), self._loop).result(10)

    @contextlib.contextmanager
    def blackholed(self) -> Iterator[None]:
        self.blackhole()
        try:
            yield
        finally:
            self.heal()

    def live_connections(self) -> int:
        return len(self._links)

    def _call(self, function: object, *args: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(function, *args)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._listen())
        self._ready.set()
        loop.run_forever()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for link in self._links for task in link.tasks]
        await self._reset_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let the aborted transports run their connection_lost callbacks, which close
        # their sockets, before the loop stops.
        for _ in range(5):
            await asyncio.sleep(0.01)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Copy one direction, each chunk held until its time (delay) and while blackholed."""
        assert self._flowing is not None
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            assert self._flowing is not None
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await self._flowing.wait()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
            with contextlib.suppress(OSError, RuntimeError):
                sink.close()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                try:
                    data = await source.read(_CHUNK)
                except (OSError, ssl.SSLError):
                    data = b""
                await queue.put((time.monotonic() + self._delay, data))
                if not data:
                    break
            await delivering
        except (OSError, ssl.SSLError):
            pass
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ssl.SSLError):
                await delivering
            for other in link.tasks:
                if other is not asyncio.current_task():
                    other.cancel()
            _abort(link.client)
            _abort(link.upstream)

    async def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            _abort(link.client)
            _abort(link.upstream)
            for task in link.tasks:
                task.cancel()
        return len(links)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError, RuntimeError):
        writer.transport.abort()
