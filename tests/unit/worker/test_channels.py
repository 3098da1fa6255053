"""The worker's Core API socket (rung.worker.channels): connections go to the trial their
first line names; anything else is closed without an answer, and never waits long."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rung.worker import channels
from rung.worker.channels import ChannelServer
from rung.worker.core._channel import hello
from rung.worker.privileges import TrialUser
from tests.support import wait_for

TOKEN = "a" * 32


@pytest.fixture
async def server() -> AsyncIterator[ChannelServer]:
    made = ChannelServer()
    await made.start()
    yield made
    made.close()


class Accepted:
    """What the server handed to one trial: the first request of each connection."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._read(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.lines.append(await reader.readline())
        writer.write(b'{"ok": true}\n')
        await writer.drain()
        writer.close()


async def _exchange(path: Path, data: bytes) -> bytes:
    """Send ``data``; everything the server answers until it closes the connection."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=30)
    except ConnectionError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_connection_goes_to_the_trial_its_first_line_names(
    server: ChannelServer,
) -> None:
    accepted = Accepted()
    other = Accepted()
    server.serve(TOKEN, accepted)
    server.serve("b" * 32, other)
    assert server.path is not None
    # The first request follows the hello in the same write, as the Core API sends it.
    reply = await _exchange(server.path, hello(TOKEN) + b'{"op": "should_preempt"}\n')
    assert reply == b'{"ok": true}\n'
    assert accepted.lines == [b'{"op": "should_preempt"}\n']
    assert other.lines == []


@pytest.mark.parametrize(
    ("first", "why"),
    [
        (hello("c" * 32), "a token of no trial running here"),
        (b'{"op": "should_preempt"}\n', 'not {"op": "hello"'),
        (b'{"op": "hello", "token": 7}\n', 'not {"op": "hello"'),
        (b"[1, 2]\n", 'not {"op": "hello"'),
        (b"\xff\xfe\n", "not JSON"),
        (b'{"op": "hello", "token": "' + b"t" * 400 + b'"}\n', "over 256"),
        (b"no end of line", "no first line"),
    ],
)
async def test_a_connection_that_names_no_trial_is_closed_without_an_answer(
    server: ChannelServer, first: bytes, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    assert server.path is not None
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(first)
    if not first.endswith(b"\n"):
        writer.write_eof()
    assert await asyncio.wait_for(reader.read(), timeout=30) == b""
    writer.close()
    assert accepted.lines == []
    assert why in capsys.readouterr().out


async def test_a_forgotten_token_is_refused(server: ChannelServer) -> None:
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    server.forget(TOKEN)
    server.forget(TOKEN)  # idempotent
    assert server.path is not None
    assert await _exchange(server.path, hello(TOKEN) + b'{"op": "x"}\n') == b""
    assert accepted.lines == []


async def test_silence_and_a_flood_of_connections_are_bounded(
    server: ChannelServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection that never names its trial is closed after HELLO_S; beyond PENDING
    waiting at once, a new one is closed at once, and a trial still gets through once the
    silent ones are gone."""
    monkeypatch.setattr(channels, "PENDING", 2)
    monkeypatch.setattr(channels, "HELLO_S", 1.0)
    assert server.path is not None
    silent = [await asyncio.open_unix_connection(str(server.path)) for _ in range(2)]
    await wait_for(lambda: len(server._pending) == 2, 10, "two connections waiting")
    assert await _exchange(server.path, hello(TOKEN)) == b""  # the third: at once
    assert "connections already wait to name their trial (PENDING)" in capsys.readouterr().out
    for reader, writer in silent:  # then the silent ones, after HELLO_S
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        writer.close()
    assert "no first line within 1 s (HELLO_S)" in capsys.readouterr().out
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    assert await _exchange(server.path, hello(TOKEN) + b'{"op": "x"}\n') == b'{"ok": true}\n'


async def test_start_is_idempotent_and_close_removes_the_socket() -> None:
    server = ChannelServer()
    first, second = await asyncio.gather(server.start(), server.start())
    assert first == second == server.path
    assert stat.S_ISSOCK(first.stat().st_mode)
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
    reader, writer = await asyncio.open_unix_connection(str(first))
    await wait_for(lambda: len(server._pending) == 1, 10, "the connection waits")
    server.close()
    server.close()  # idempotent
    assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed by close()
    writer.close()
    assert not first.parent.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another group: needs root")
async def test_a_trial_users_group_may_connect_but_not_change_the_directory() -> None:
    user = TrialUser(name="nobody", uid=65534, gid=65534, home="/nonexistent")
    server = ChannelServer(trial_user=user)
    path = await server.start()
    try:
        directory = path.parent.stat()
        assert (directory.st_uid, directory.st_gid) == (os.geteuid(), user.gid)
        assert stat.S_IMODE(directory.st_mode) == 0o710  # pass through, no list, no write
        sock = path.stat()
        assert (sock.st_uid, sock.st_gid) == (os.geteuid(), user.gid)
        assert stat.S_IMODE(sock.st_mode) == 0o660
    finally:
        server.close()
    assert not path.parent.exists()
