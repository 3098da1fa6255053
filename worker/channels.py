"""The Core API's socket: one per worker, shared by its trials, each known by a token.

Every training process talks to its worker over a Unix socket (``RUNG_CHANNEL``). The
socket sits in a private directory (0700, made by ``mkdtemp``), so no other account can
reach it. Under ``--trial-user`` the directory is the worker's with the trial user's
group, 0710, and the socket 0660 of that group: trials may pass through and connect, but
may not list, remove or replace anything there (a trial that could would answer the
trials after it). A connection's first line names its trial: ``{"op": "hello",
"token": T}``, where ``T`` is the random token (``RUNG_CHANNEL_TOKEN``, 128 bits) of one
training process. The connection then goes to that trial's
:class:`~rung.worker.trial_run.TrialRun`, which still serves nothing before its process
is known, and only to a process of that process's group and uid (``SO_PEERCRED``).

One socket for the worker's life, not one per process in a directory of its own (issue
18): making and removing a directory and a socket per trial segment cost more CPU than any
other step of a segment in the worker's process on ext4 without a journal, where each
new inode scans past the inodes removed in the last seconds.

The Core API sends that line as it connects. A connection that names no trial, or sends
no first line within :data:`HELLO_S`, is closed without an answer; at most
:data:`PENDING` connections wait for their first line at once (a new one closes the
oldest), each refused once it sends a line over 256 bytes, so a flood of connections
can neither hold the worker's file descriptors and memory nor keep a trial's own
connection out for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from rung.broker.limits import CHANNEL_REQUEST_BYTES
from rung.worker.privileges import TrialUser

__all__ = ["HELLO_S", "PENDING", "SOCKET_NAME", "Accept", "ChannelServer"]

SOCKET_NAME = "channel.sock"
# How long a new connection may take to send its first line.
HELLO_S = 10.0
# Connections waiting for their first line at once.
PENDING = 64
# A first line is short: the op and a token of 32 hex digits.
_HELLO_BYTES = 256

Accept = Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]


class ChannelServer:
    """The socket and the trials it serves, by token. :meth:`start` before the first
    trial, :meth:`close` after the last."""

    def __init__(self, *, trial_user: TrialUser | None = None) -> None:
        self.trial_user = trial_user
        self.directory: Path | None = None
        self._server: asyncio.Server | None = None
        self._bound: tuple[int, int] | None = None  # the socket's (device, inode)
        self._closed = False
        self._trials: dict[str, Accept] = {}
        # Connections still to name their trial, the oldest first.
        self._pending: dict[asyncio.StreamWriter, None] = {}
        self._starting = asyncio.Lock()
        self.log = structlog.get_logger("rung.worker")

    @property
    def path(self) -> Path | None:
        """The socket, once :meth:`start` made it."""
        return None if self.directory is None else self.directory / SOCKET_NAME

    async def start(self) -> Path:
        """Listen on the socket, in a private directory made for it; idempotent while
        the socket is the one this made (one that was removed or replaced, by a trial of
        the worker's own uid, say, is made again). OSError once :meth:`close` ran."""
        async with self._starting:
            if self._closed:
                raise OSError("the worker's Core API socket is closed: the worker is stopping")
            if self._server is not None and self.path is not None:
                if self._intact(self.path):
                    return self.path
                self.log.warning(
                    "the Core API socket was removed or replaced; making a new one",
                    path=str(self.path),
                )
                self._stop_listening()
            return await self._listen()

    def _intact(self, path: Path) -> bool:
        try:
            info = path.lstat()
        except OSError:
            return False
        return stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == self._bound

    async def _listen(self) -> Path:
        # mkdtemp makes it 0700: no other uid can reach the socket inside.
        directory = Path(tempfile.mkdtemp(prefix="rung-channel-"))
        path = directory / SOCKET_NAME
        server: asyncio.Server | None = None
        try:
            # The limit bounds what a connection may buffer before it names its trial;
            # a trial's own connection gets CHANNEL_REQUEST_BYTES once it has.
            server = await asyncio.start_unix_server(
                self._handshake, path=str(path), limit=_HELLO_BYTES
            )
            if self.trial_user is not None:
                group = self.trial_user.gid
                for name, mode in ((path, 0o660), (directory, 0o710)):
                    os.chown(name, -1, group, follow_symlinks=False)
                    os.chmod(name, mode)  # (made just now, by this process)
            info = path.lstat()
        except BaseException:
            if server is not None:
                server.close()
            _remove(directory)
            raise
        self.directory, self._server = directory, server
        self._bound = (info.st_dev, info.st_ino)
        return path

    def serve(self, token: str, accept: Accept) -> None:
        """Hand connections that name ``token`` to ``accept`` (until :meth:`forget`)."""
        self._trials[token] = accept

    def forget(self, token: str) -> None:
        """Connections that name ``token`` are refused from now on (idempotent)."""
        self._trials.pop(token, None)

    def close(self) -> None:
        """Stop listening, close the connections still to name a trial, and remove the
        socket and its directory (idempotent; :meth:`start` fails after it). Connections
        already handed to a trial are the trial's to close."""
        self._closed = True
        self._stop_listening()
        for writer in list(self._pending):
            writer.close()
        self._pending.clear()
        self._trials.clear()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.directory is not None:
            _remove(self.directory)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._pending) >= PENDING:
            # The oldest goes: the Core API names its trial as it connects, so a
            # connection that still has not is the likeliest to be one that never will.
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.close()
            self.log.warning(
                "closed the oldest connection to the Core API socket that had not named its trial",
                reason=f"{PENDING} connections were waiting to (PENDING)",
            )
        self._pending[writer] = None
        try:
            accept, refusal = await self._named(reader)
        except Exception as exc:  # noqa: BLE001 (a connection's end is never the worker's)
            accept, refusal = None, f"its first line could not be read: {exc!r}"
        finally:
            self._pending.pop(writer, None)
        if accept is None:
            self.log.warning("refused a connection to the Core API socket", reason=refusal)
            writer.close()
            return
        # From here on a request may be as long as the Core API allows.
        reader._limit = CHANNEL_REQUEST_BYTES  # type: ignore[attr-defined]  # noqa: SLF001 (no setter)
        accept(reader, writer)

    async def _named(self, reader: asyncio.StreamReader) -> tuple[Accept | None, str]:
        """The trial the connection's first line names, or why none."""
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), HELLO_S)
        except TimeoutError:
            return None, f"no first line within {HELLO_S:g} s (HELLO_S)"
        except asyncio.LimitOverrunError:
            return None, f"a first line over {_HELLO_BYTES} bytes"
        except (asyncio.IncompleteReadError, ConnectionError):
            return None, "no first line"
        try:
            first = json.loads(line)
        except ValueError:
            return None, "a first line that is not JSON"
        token = first.get("token") if isinstance(first, dict) else None
        if not isinstance(first, dict) or first.get("op") != "hello" or not isinstance(token, str):
            return None, 'a first line that is not {"op": "hello", "token": ...}'
        accept = self._trials.get(token)
        if accept is None:
            return None, "a token of no trial running here (it ended, or never was)"
        return accept, ""


def _remove(directory: Path) -> None:
    with contextlib.suppress(OSError):
        (directory / SOCKET_NAME).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
