"""Collectives over a slow link: the ranks' traffic to the chief goes through a proxy that
cuts it into small pieces, holds each piece back and, once, stalls for seconds. Every
rank still gets exactly what the chief gathered and broadcast, large payloads too."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

from rung.worker.core._distributed import _Group
from tests.e2e.test_distributed_context import free_port

TOKEN = "slow-link-token"  # noqa: S105 (a test token)


class SlowProxy:
    """Forwards connections on its own port to ``target``, both ways, in pieces of
    ``piece`` bytes each held back ``delay`` seconds; the first time ``stall_after``
    bytes have gone up, it stalls that direction for ``stall`` seconds."""

    def __init__(
        self, target: int, *, piece: int, delay: float, stall_after: int, stall: float
    ) -> None:
        self.target, self.piece, self.delay = target, piece, delay
        self.stall_after, self.stall = stall_after, stall
        self.stalled = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self._sent = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, sink, up), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while data := source.recv(65536):
                for start in range(0, len(data), self.piece):
                    time.sleep(self.delay)
                    if up:
                        with self._lock:
                            self._sent += self.piece
                            stall = self._sent >= self.stall_after and not self.stalled.is_set()
                            if stall:
                                self.stalled.set()
                        if stall:
                            time.sleep(self.stall)
                    sink.sendall(data[start : start + self.piece])
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@contextmanager
def slow_group(size: int, proxy_args: dict[str, float]) -> Iterator[list[_Group]]:
    """A chief on a free port and ``size - 1`` members that reach it through the proxy."""
    port = free_port()
    made: dict[int, _Group] = {}
    errors: list[BaseException] = []

    def make(index: int, host: str, to: int) -> None:
        try:
            made[index] = _Group(index, size, host, to, timeout=60, token=TOKEN)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    chief = threading.Thread(target=make, args=(0, "127.0.0.1", port))
    chief.start()
    proxy = SlowProxy(port, **proxy_args)  # type: ignore[arg-type]
    members = [
        threading.Thread(target=make, args=(i, "127.0.0.1", proxy.port)) for i in range(1, size)
    ]
    for thread in members:
        thread.start()
    for thread in [chief, *members]:
        thread.join(timeout=90)
    try:
        assert not errors, errors
        yield [made[i] for i in range(size)]
    finally:
        for group in made.values():
            group.close()
        proxy.close()


def _on_every_rank(groups: list[_Group], call: str, values: Sequence[object]) -> list[object]:
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = getattr(groups[index], call)(values[index])
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(groups))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return [results[i] for i in range(len(groups))]


def test_collectives_are_exact_when_every_message_comes_in_three_byte_pieces() -> None:
    size = 3
    proxy = {"piece": 3, "delay": 0.001, "stall_after": 1 << 30, "stall": 0.0}
    with slow_group(size, proxy) as groups:
        assert _on_every_rank(groups, "gather", list(range(size)))[0] == [0, 1, 2]
        told = _on_every_rank(groups, "broadcast", [{"lr": 0.1, "x": [1, 2]}, None, None])
        assert told == [{"lr": 0.1, "x": [1, 2]}] * size


def test_collectives_are_exact_over_a_slow_link_that_stalls() -> None:
    size = 4
    proxy = {"piece": 1000, "delay": 0.001, "stall_after": 20_000, "stall": 3.0}
    with slow_group(size, proxy) as groups:
        assert _on_every_rank(groups, "gather", list(range(size)))[0] == [0, 1, 2, 3]
        # Large payloads, through a stall of 3 s in the middle of them.
        blobs = [{"rank": i, "blob": chr(97 + i) * 50_000} for i in range(size)]
        gathered = _on_every_rank(groups, "gather", blobs)
        assert gathered[0] == blobs
        assert gathered[1:] == [None] * (size - 1)
        everyone = _on_every_rank(groups, "broadcast", [gathered[0], None, None, None])
        assert everyone == [blobs] * size
        # And on after it, in step.
        for step in range(5):
            assert _on_every_rank(groups, "gather", [step] * size)[0] == [step] * size
