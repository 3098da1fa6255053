"""``DistributedContext``: the ranks of one trial and their collectives, as Determined 0.37
has them (``rank``, ``size``, ``local_rank``, ``local_size``, ``cross_rank``,
``cross_size``, ``chief_ip``; ``gather``, ``allgather``, ``broadcast`` and their
``_local`` forms).

The transport is TCP to a chief, one connection per rank, opened when the context is
made and kept: the global chief (rank 0) listens on ``chief_ip:pub_port``, and each
host's local chief (local rank 0) on ``127.0.0.1:pull_port`` (``+ port_offset``) for
the local collectives. A collective is one message up from each rank and one down,
with no broker round trip: collectives are for a handful of values a step (an
``op.length``, a preemption flag, a metric), not for tensors (use the framework's own,
NCCL or gloo, for those). Why not ZeroMQ, as Determined: one dependency less, and
plain sockets do this little. Two distributed trials on one machine need different
ports: ``port_offset`` (default ``$RUNG_DIST_PORT_OFFSET``, else 0) moves both.

Payloads are JSON, never pickle: what a rank sends must be JSON (numbers, strings,
booleans, None, lists, dicts with string keys). Anything else raises ``TypeError``
naming what was sent and the fix. A message is a 4-byte big-endian length and that many
bytes of UTF-8 JSON, at most ``MAX_MESSAGE`` bytes.

Collectives block, as Determined's do, and every rank must call the same ones in the
same order. The ranks must meet within ``timeout`` seconds (``$RUNG_DIST_TIMEOUT``,
600) or fail with ``DistributedError`` naming who is missing; a collective then waits
without limit (a member waits while the chief validates), and a rank that dies is seen
by its connection closing. Each member proves it belongs to the trial with the token
its worker gives the trial (``$RUNG_DIST_TOKEN``): a stranger on the port is closed and
the chief goes on accepting.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import struct
import time
from typing import Any, Final

__all__ = ["MAX_MESSAGE", "DistributedContext", "DistributedError"]

MAX_MESSAGE: Final = 64 * 1024 * 1024
_DEFAULT_PUB_PORT: Final = 12360  # Determined's defaults
_DEFAULT_PULL_PORT: Final = 12376
_HEADER: Final = struct.Struct(">I")
# A member's hello: how long the chief waits for it, and how large it may be.
_HELLO_S: Final = 5.0
_HELLO_BYTES: Final = 1024


class DistributedError(RuntimeError):
    """A collective or the ranks' connection failed: a rank is missing, or broke off."""


def _encode(stuff: Any) -> bytes:
    try:
        body = json.dumps(stuff, allow_nan=True, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"a collective sends JSON only (numbers, strings, booleans, None, lists, dicts "
            f"with string keys), and {type(stuff).__name__} is not ({exc}); send plain "
            "values (tensor.tolist(), float(x)), or use the framework's own collectives "
            "for tensors"
        ) from exc
    if len(body) > MAX_MESSAGE:
        raise ValueError(
            f"a collective's message is {len(body)} bytes, above the {MAX_MESSAGE}-byte "
            "limit; send less (collectives are for a few values, not for tensors)"
        )
    return _HEADER.pack(len(body)) + body


def _receive(sock: socket.socket, limit: int = MAX_MESSAGE) -> Any:
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if size > limit:
        raise DistributedError(f"a peer sent a {size}-byte message, above {limit}")
    try:
        return json.loads(_exactly(sock, size))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DistributedError(f"a peer sent a message that is not JSON ({exc})") from exc


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except TimeoutError as exc:
            raise DistributedError(
                "a rank did not answer in time: every rank must call the same "
                "collectives in the same order"
            ) from exc
        except OSError as exc:
            raise DistributedError(f"a rank's connection broke ({exc})") from exc
        if not chunk:
            raise DistributedError("a rank of this trial closed its connection (it exited?)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _keepalive(sock: socket.socket) -> None:
    """Collectives wait without limit (a member waits while the chief validates or the
    searcher decides); a peer that dies is seen by the connection closing, or by TCP's
    keepalive where its machine went away."""
    sock.settimeout(None)
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


class _Group:
    """One chief and its members: the chief holds a socket per member, a member one to
    the chief. ``index`` is the rank within the group (0 the chief).

    A member says who it is in a hello (its index, the group's size and the trial's
    token); the chief takes a hello only within ``_HELLO_S`` and ``_HELLO_BYTES``, from
    an index it does not have yet, with the right size and token, and acknowledges it.
    Anything else (a port scan, a stranger, garbage) is closed and the chief goes on
    accepting: it cannot take a rank's place, nor stop the trial's ranks from meeting."""

    def __init__(
        self, index: int, size: int, host: str, port: int, *, timeout: float, token: str
    ) -> None:
        self.index, self.size, self.timeout, self.token = index, size, timeout, token
        self.members: dict[int, socket.socket] = {}
        self.chief: socket.socket | None = None
        if size == 1:
            return
        try:
            if index == 0:
                self._accept(host, port)
            else:
                self._connect(host, port)
        except BaseException:
            self.close()
            raise

    def _accept(self, host: str, port: int) -> None:
        try:
            server = socket.create_server((host, port), backlog=self.size * 2)
        except OSError as exc:
            raise DistributedError(
                f"the chief cannot listen on {host or '*'}:{port} ({exc.strerror or exc}); "
                "another trial may use that port: give each its own (port_offset, "
                "RUNG_DIST_PORT_OFFSET)"
            ) from exc
        deadline = time.monotonic() + self.timeout
        try:
            while len(self.members) < self.size - 1:
                server.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    conn, _ = server.accept()
                except TimeoutError as exc:
                    missing = sorted(set(range(1, self.size)) - set(self.members))
                    raise DistributedError(
                        f"ranks {missing} did not connect to the chief at {host or '*'}:"
                        f"{port} within {self.timeout:g} s; start every rank with the same "
                        "size and chief address"
                    ) from exc
                self._hello(conn)
        finally:
            server.close()

    def _hello(self, conn: socket.socket) -> None:
        conn.settimeout(_HELLO_S)
        try:
            hello = _receive(conn, limit=_HELLO_BYTES)
            index = hello.get("index") if isinstance(hello, dict) else None
            token = hello.get("token") if isinstance(hello, dict) else None
            if (
                isinstance(index, int)
                and not isinstance(index, bool)
                and 0 < index < self.size
                and index not in self.members
                and hello.get("size") == self.size
                and isinstance(token, str)
                and secrets.compare_digest(token.encode(), self.token.encode())
            ):
                conn.sendall(_encode({"ok": True}))
                _keepalive(conn)
                self.members[index] = conn
                return
        except (DistributedError, OSError):
            pass
        with contextlib.suppress(OSError):
            conn.close()  # not one of ours

    def _connect(self, host: str, port: int) -> None:
        deadline = time.monotonic() + self.timeout
        sock: socket.socket | None = None
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=_HELLO_S)
                sock.sendall(_encode({"index": self.index, "size": self.size, "token": self.token}))
                answer = _receive(sock, limit=_HELLO_BYTES)
                if answer == {"ok": True}:
                    break
                sock.close()
            except (OSError, DistributedError) as exc:
                if time.monotonic() > deadline:
                    raise DistributedError(
                        f"cannot join the chief at {host}:{port} within {self.timeout:g} s "
                        f"({exc}); is rank 0 running, with the same size and token, and is "
                        "chief_ip its address?"
                    ) from exc
            time.sleep(0.05)
        assert sock is not None  # noqa: S101 (the loop ends only once connected)
        _keepalive(sock)
        self.chief = sock

    def gather(self, stuff: Any) -> list[Any] | None:
        message = _encode(stuff)  # refuse what is not JSON on every rank alike
        own = json.loads(message[_HEADER.size :])  # what the others get: the same types
        if self.size == 1:
            return [own]
        if self.index != 0:
            assert self.chief is not None  # noqa: S101 (a member has its chief)
            self.chief.sendall(message)
            _receive(self.chief)  # the chief has everyone's: a barrier, as Determined's
            return None
        out = [own]
        out += [_receive(self.members[i]) for i in range(1, self.size)]
        done = _encode(None)
        for i in range(1, self.size):
            self.members[i].sendall(done)
        return out

    def broadcast(self, stuff: Any) -> Any:
        if self.size == 1:
            return json.loads(_encode(stuff)[_HEADER.size :])
        if self.index != 0:
            assert self.chief is not None  # noqa: S101
            return _receive(self.chief)
        message = _encode(stuff)
        for i in range(1, self.size):
            self.members[i].sendall(message)
        return json.loads(message[_HEADER.size :])

    def close(self) -> None:
        for sock in [*self.members.values(), *([self.chief] if self.chief else [])]:
            with contextlib.suppress(OSError):
                sock.close()
        self.members.clear()
        self.chief = None


class DistributedContext:
    """The ranks of one trial (Determined's ``DistributedContext``)."""

    def __init__(
        self,
        *,
        rank: int = 0,
        size: int = 1,
        local_rank: int = 0,
        local_size: int = 1,
        cross_rank: int = 0,
        cross_size: int = 1,
        chief_ip: str | None = None,
        pub_port: int | None = None,
        pull_port: int | None = None,
        port_offset: int | None = None,
        force_tcp: bool = False,
        timeout: float | None = None,
        token: str | None = None,
    ) -> None:
        _check(
            rank=rank,
            size=size,
            local_rank=local_rank,
            local_size=local_size,
            cross_rank=cross_rank,
            cross_size=cross_size,
        )
        if chief_ip is None and local_size != size:
            raise ValueError(
                f"chief_ip is required when the ranks span hosts (local_size {local_size} "
                f"!= size {size}): pass the address of rank 0's host, e.g. "
                "det.get_cluster_info().container_addrs[0]"
            )
        self.rank, self.size = rank, size
        self.local_rank, self.local_size = local_rank, local_size
        self.cross_rank, self.cross_size = cross_rank, cross_size
        self.chief_ip = chief_ip
        wait = timeout if timeout is not None else float(os.environ.get("RUNG_DIST_TIMEOUT", "600"))
        offset = port_offset if port_offset is not None else _env_offset()
        pub = (pub_port if pub_port is not None else _env_port("PUB", _DEFAULT_PUB_PORT)) + offset
        pull = (
            pull_port if pull_port is not None else _env_port("PULL", _DEFAULT_PULL_PORT)
        ) + offset
        secret = token if token is not None else os.environ.get("RUNG_DIST_TOKEN", "")
        # All on one machine: loopback only. Across machines the chief listens on every
        # address (the token keeps strangers out), and the others dial chief_ip.
        one_host = local_size == size
        # Each host's local group gets a port of its own (+ cross_rank): two parts of a
        # trial on one machine (two workers of a gang there) do not collide.
        self._local = _Group(
            local_rank,
            local_size,
            "127.0.0.1",
            pull + cross_rank,
            timeout=wait,
            token=secret,
        )
        try:
            chief_host = "127.0.0.1" if one_host else ("" if rank == 0 else str(chief_ip))
            self._global = _Group(rank, size, chief_host, pub, timeout=wait, token=secret)
        except BaseException:
            self._local.close()
            raise

    @classmethod
    def from_torch_distributed(cls, chief_ip: str | None = None) -> DistributedContext:
        """From torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, and ``MASTER_ADDR`` as the chief)."""
        env = os.environ
        try:
            size, local_size = int(env["WORLD_SIZE"]), int(env["LOCAL_WORLD_SIZE"])
            return cls(
                rank=int(env["RANK"]),
                size=size,
                local_rank=int(env["LOCAL_RANK"]),
                local_size=local_size,
                cross_rank=int(env["GROUP_RANK"]),
                cross_size=size // local_size,
                chief_ip=chief_ip or env.get("MASTER_ADDR"),
            )
        except KeyError as exc:
            raise RuntimeError(
                f"from_torch_distributed needs torchrun's environment and {exc} is not set: "
                "start the script with torchrun (or rung.launch.torch_distributed)"
            ) from exc

    def get_rank(self) -> int:
        return self.rank

    def get_local_rank(self) -> int:
        return self.local_rank

    def get_size(self) -> int:
        return self.size

    def get_local_size(self) -> int:
        return self.local_size

    def get_cross_rank(self) -> int:
        return self.cross_rank

    def get_cross_size(self) -> int:
        return self.cross_size

    def get_num_agents(self) -> int:
        return self.cross_size

    def gather(self, stuff: Any) -> list[Any] | None:
        """Every rank's ``stuff`` on the chief, in rank order; None elsewhere."""
        return self._global.gather(stuff)

    def gather_local(self, stuff: Any) -> list[Any] | None:
        """This host's ranks' ``stuff`` on its local chief, in local-rank order."""
        return self._local.gather(stuff)

    def allgather(self, stuff: Any) -> list[Any]:
        """Every rank's ``stuff``, in rank order, on every rank."""
        gathered = self._global.gather(stuff)
        return list(self._global.broadcast(gathered))

    def allgather_local(self, stuff: Any) -> list[Any]:
        gathered = self._local.gather(stuff)
        return list(self._local.broadcast(gathered))

    def broadcast(self, stuff: Any) -> Any:
        """The chief's ``stuff``, on every rank (what the others pass is ignored)."""
        return self._global.broadcast(stuff)

    def broadcast_local(self, stuff: Any = None) -> Any:
        return self._local.broadcast(stuff)

    def close(self) -> None:
        self._global.close()
        self._local.close()

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env_port(which: str, default: int) -> int:
    """``RUNG_DIST_PUB_PORT`` / ``RUNG_DIST_PULL_PORT``: the ports the worker chose."""
    text = os.environ.get(f"RUNG_DIST_{which}_PORT", "")
    return int(text) if text.isdigit() else default


def _env_offset() -> int:
    """``RUNG_DIST_PORT_OFFSET``: what keeps two distributed trials on one machine apart."""
    text = os.environ.get("RUNG_DIST_PORT_OFFSET", "0")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"RUNG_DIST_PORT_OFFSET={text!r} is not a whole number of ports") from None


def _check(
    *, rank: int, size: int, local_rank: int, local_size: int, cross_rank: int, cross_size: int
) -> None:
    problems = []
    if not 0 <= rank < size:
        problems.append(f"rank {rank} is not in [0, size {size})")
    if not 0 <= local_rank < local_size:
        problems.append(f"local_rank {local_rank} is not in [0, local_size {local_size})")
    if not 0 <= cross_rank < cross_size:
        problems.append(f"cross_rank {cross_rank} is not in [0, cross_size {cross_size})")
    if local_size * cross_size != size:
        problems.append(
            f"local_size {local_size} x cross_size {cross_size} is not size {size} "
            "(every host runs the same number of ranks)"
        )
    if problems:
        raise ValueError("DistributedContext: " + "; ".join(problems))
