"""The worker's Core API socket (rung.worker.channels): connections go to the trial their
first line names; anything else is closed without an answer, and never waits long."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rung.worker import channels
from rung.worker.channels import ChannelServer
from rung.worker.core._channel import Channel, ChannelError, hello
from tests.support import wait_for
from tests.users import is_root, other_user

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
        (b'{"op": "hello", "token": "' + b"t" * 400 + b'"}\n', "over 256 bytes"),
        (b"no end of line", "no first line"),
    ],
)
async def test_a_connection_that_names_no_trial_is_closed_without_an_answer(
    server: ChannelServer, first: bytes, why: str
) -> None:
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    assert server.path is not None
    with capture_logs() as logs:
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        try:
            writer.write(first)
            if not first.endswith(b"\n"):
                writer.write_eof()
            assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        finally:
            writer.close()
    assert accepted.lines == []
    assert any(why in str(log.get("reason")) for log in logs), logs


async def test_a_forgotten_token_is_refused(server: ChannelServer) -> None:
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    server.forget(TOKEN)
    server.forget(TOKEN)  # idempotent
    assert server.path is not None
    assert await _exchange(server.path, hello(TOKEN) + b'{"op": "x"}\n') == b""
    assert accepted.lines == []


async def test_a_silent_connection_is_closed_after_hello_s(
    server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channels, "HELLO_S", 0.5)
    assert server.path is not None
    with capture_logs() as logs:
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        try:
            assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        finally:
            writer.close()
    assert any("(HELLO_S)" in str(log.get("reason")) for log in logs), logs


async def test_a_flood_closes_the_oldest_silent_connection_not_a_trials(
    server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond PENDING connections waiting to name their trial, a new one closes the
    oldest: a trial that connects during a flood of silent connections still gets in."""
    monkeypatch.setattr(channels, "PENDING", 2)
    assert server.path is not None
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    silent = []
    try:
        with capture_logs() as logs:
            for n in range(1, 4):
                silent.append(await asyncio.open_unix_connection(str(server.path)))
                waiting = min(n, 2)
                await wait_for(
                    lambda: len(server._pending) == waiting,  # noqa: B023 (awaited here)
                    30,
                    f"{waiting} connections waiting",
                )
            # The first was closed for the third.
            assert await asyncio.wait_for(silent[0][0].read(), timeout=30) == b""
            reply = await _exchange(server.path, hello(TOKEN) + b'{"op": "x"}\n')
        assert reply == b'{"ok": true}\n'
        assert accepted.lines == [b'{"op": "x"}\n']
        assert any("(PENDING)" in str(log.get("reason")) for log in logs), logs
    finally:
        for _, writer in silent:
            writer.close()


async def test_a_first_request_may_be_longer_than_a_first_line(server: ChannelServer) -> None:
    """The hello is read under a limit of a few hundred bytes; the trial's requests
    after it under CHANNEL_REQUEST_BYTES."""
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    assert server.path is not None
    request = b'{"op": "metrics", "x": "' + b"m" * 100_000 + b'"}\n'
    assert await _exchange(server.path, hello(TOKEN) + request) == b'{"ok": true}\n'
    assert accepted.lines == [request]


async def test_a_removed_or_replaced_socket_is_made_again(server: ChannelServer) -> None:
    """A trial of the worker's own uid may remove the socket (or bind its own in its
    place): the next start makes a new one, in a new private directory."""
    first = server.path
    assert first is not None
    first.unlink()
    with capture_logs() as logs:
        second = await server.start()
    assert second != first
    assert stat.S_ISSOCK(second.stat().st_mode)
    assert not first.parent.exists()
    assert any("removed or replaced" in log["event"] for log in logs), logs
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    assert await _exchange(second, hello(TOKEN) + b'{"op": "x"}\n') == b'{"ok": true}\n'


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
    try:
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed by close()
    finally:
        writer.close()
    assert not first.parent.exists()
    with pytest.raises(OSError, match="the worker is stopping"):
        await server.start()


# An interpreter any user may run (the tests' own may sit in root's private home).
SYSTEM_PYTHON = "/usr/bin/python3"
CHILD = """
import os, socket, sys
path = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
print("connect: ok")
for name, attempt in (
    ("list", lambda: os.listdir(os.path.dirname(path))),
    ("unlink", lambda: os.unlink(path)),
    ("rename", lambda: os.rename(path, path + ".x")),
    ("chmod", lambda: os.chmod(path, 0o777)),
):
    try:
        attempt()
        print(name + ": done")
    except OSError as exc:
        print(name + ": " + type(exc).__name__)
"""


@pytest.mark.skipif(not is_root(), reason="gives a file to another group: needs root")
@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"no {SYSTEM_PYTHON} for the user")
async def test_a_trial_user_may_connect_but_not_change_the_directory() -> None:
    """Under --trial-user: the worker's directory, 0710 of the trial user's group, and
    the socket 0660 of it. A process of that user (no other groups, as the fork server
    makes it) connects, and can neither list, remove, rename nor chmod anything."""
    with other_user() as user:
        server = ChannelServer(trial_user=user)
        path = await server.start()
        try:
            directory = path.parent.stat()
            assert (directory.st_uid, directory.st_gid) == (os.geteuid(), user.gid)
            assert stat.S_IMODE(directory.st_mode) == 0o710
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            done = await asyncio.to_thread(
                subprocess.run,
                [SYSTEM_PYTHON, "-c", CHILD, str(path)],
                user=user.uid,
                group=user.gid,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.split("\n")[:5] == [
                "connect: ok",
                "list: PermissionError",
                "unlink: PermissionError",
                "rename: PermissionError",
                "chmod: PermissionError",
            ]
            assert path.exists()
        finally:
            server.close()
    assert not path.parent.exists()


async def test_the_core_apis_channel_names_its_trial_as_it_connects(
    server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script may take minutes between det.core.init() and its first call: its
    connection is handed to the trial before any request, so HELLO_S never cuts it."""
    monkeypatch.setattr(channels, "HELLO_S", 0.5)
    accepted = Accepted()
    server.serve(TOKEN, accepted)
    assert server.path is not None
    channel = await asyncio.to_thread(Channel, str(server.path), TOKEN)
    try:
        await wait_for(lambda: len(accepted.writers) == 1, 30, "the connection handed over")
        assert server._pending == {}
        assert await asyncio.to_thread(channel.request, "should_preempt") == {"ok": True}
        assert accepted.lines == [b'{"op": "should_preempt"}\n']
    finally:
        channel.close()


async def test_a_refused_channel_says_so(server: ChannelServer) -> None:
    """A token of no trial: the request gets ChannelError, not a bare socket error."""
    assert server.path is not None
    channel = await asyncio.to_thread(Channel, str(server.path), "f" * 32)
    try:
        with pytest.raises(ChannelError, match="the worker closed the channel"):
            await asyncio.to_thread(channel.request, "should_preempt")
    finally:
        channel.close()
