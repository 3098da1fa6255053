"""The Core API's socket: one per worker, shared by its trials, each known by a token.

Every training process talks to its worker over a Unix socket (``RUNG_CHANNEL``). The
socket sits in a private directory (0700, made by ``mkdtemp``), so no other account can
reach it. Under ``--trial-user`` the directory is the worker's with the trial user's
group, 0710, and the socket 0660 of that group: trials may pass through and connect, but
may not list, remove or replace anything there (a trial that could would answer the
trials after it). A
connection's first line names its trial: ``{"op": "hello", "token": T}``, where ``T`` is
the random token (``RUNG_CHANNEL_TOKEN``, 128 bits) of one training process. The
connection then goes to that trial's :class:`~rung.worker.trial_run.TrialRun`, which
still serves nothing before its process is known, and only to a process of that
process's group and uid (``SO_PEERCRED``).

One socket for the worker's life, not one per process in a directory of its own (issue
18): making and removing a directory and a socket per trial segment cost more CPU than any
other step of a segment in the worker's process on ext4 without a journal, where each
new inode scans past the inodes removed in the last seconds.

A connection that names no trial, or sends no first line within :data:`HELLO_S`, is
closed without an answer; at most :data:`PENDING` connections wait for their first line
at once (more are closed at once), so a flood of connections cannot hold the worker's
file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
        self._trials: dict[str, Accept] = {}
        self._pending: set[asyncio.StreamWriter] = set()
        self._starting = asyncio.Lock()
        self.log = structlog.get_logger("rung.worker")

    @property
    def path(self) -> Path | None:
        """The socket, once :meth:`start` made it."""
        return None if self.directory is None else self.directory / SOCKET_NAME

    async def start(self) -> Path:
        """Make the private directory and listen on the socket in it (idempotent)."""
        async with self._starting:
            if self._server is not None and self.directory is not None:
                return self.directory / SOCKET_NAME
            # mkdtemp makes it 0700: no other uid can reach the socket inside.
            self.directory = Path(tempfile.mkdtemp(prefix="rung-channel-"))
            path = self.directory / SOCKET_NAME
            self._server = await asyncio.start_unix_server(
                self._handshake, path=str(path), limit=CHANNEL_REQUEST_BYTES
            )
            if self.trial_user is not None:
                group = self.trial_user.gid
                for name, mode in ((path, 0o660), (self.directory, 0o710)):
                    os.chown(name, -1, group, follow_symlinks=False)
                    os.chmod(name, mode)  # (made just now, by this process)
            return path

    def serve(self, token: str, accept: Accept) -> None:
        """Hand connections that name ``token`` to ``accept`` (until :meth:`forget`)."""
        self._trials[token] = accept

    def forget(self, token: str) -> None:
        """Connections that name ``token`` are refused from now on (idempotent)."""
        self._trials.pop(token, None)

    def close(self) -> None:
        """Stop listening, close the connections still to name a trial, and remove the
        socket and its directory (idempotent). Connections already handed to a trial are
        the trial's to close."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._pending):
            writer.close()
        self._pending.clear()
        self._trials.clear()
        if self.directory is not None:
            with contextlib.suppress(OSError):
                (self.directory / SOCKET_NAME).unlink()
            with contextlib.suppress(OSError):
                self.directory.rmdir()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._pending) >= PENDING:
            self.log.warning(
                "refused a connection to the Core API socket",
                reason=f"{PENDING} connections already wait to name their trial (PENDING)",
            )
            writer.close()
            return
        self._pending.add(writer)
        try:
            accept, refusal = await self._named(reader)
        finally:
            self._pending.discard(writer)
        if accept is None:
            self.log.warning("refused a connection to the Core API socket", reason=refusal)
            writer.close()
            return
        accept(reader, writer)

    async def _named(self, reader: asyncio.StreamReader) -> tuple[Accept | None, str]:
        """The trial the connection's first line names, or why none."""
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), HELLO_S)
        except TimeoutError:
            return None, f"no first line within {HELLO_S:g} s (HELLO_S)"
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None, "no first line"
        if len(line) > _HELLO_BYTES:
            return None, f"a first line of {len(line)} bytes, over {_HELLO_BYTES}"
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
