"""How a worker starts training processes: by exec (a fresh interpreter) or a fork server.

Both give a :class:`TrialProcess`: a pid that leads its own process group, stdout and
stderr as streams, and an exit code as ``asyncio`` reports it (negative for a signal).
Both tie the process to the worker, so that it dies when the worker is killed outright.

* ``exec``: ``python -m rung.worker.launch WORKER_PID ARGV...``, a fresh process per trial.
* ``fork-server`` (the default): a warm process with the Core API imported forks each
  training process (:mod:`worker.forkserver`). A Python entrypoint then starts in a few
  milliseconds instead of about a hundred; other entrypoints are exec'd from the fork.

Credentials never reach a training process by either way. The fork server starts from an
allowlisted environment (:func:`worker.environment.trial_environment`), so its original
environment block, which a forked child's ``/proc/self/environ`` shows, holds nothing of
the worker's; it makes itself non-dumpable. Whatever environment a caller hands
:meth:`Spawner.spawn`, the names of :func:`worker.environment.is_secret` are dropped from it.
With a :class:`~worker.privileges.TrialUser` (``rung worker --trial-user``) the process
runs as that user: its working directory and its Core API socket are handed to it first,
then the process drops its groups, gid and uid before running anything of the trial's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from rung.worker.environment import is_secret, trial_environment
from rung.worker.privileges import TrialUser, give_to, open_path_to
from rung.worker.settle import to_its_end

__all__ = [
    "START_METHODS",
    "ExecSpawner",
    "ForkServer",
    "SpawnError",
    "Spawner",
    "StartMethod",
    "TrialProcess",
    "exit_code",
    "make_spawner",
]

StartMethod = Literal["fork-server", "exec"]
START_METHODS: tuple[StartMethod, ...] = ("fork-server", "exec")
_LIMIT = 1 << 20
# How long a fork server may take to be ready (an interpreter and the Core API's imports:
# about 0.1 s on an idle machine; far longer on a loaded one, or from a network disk).
START_TIMEOUT_S = 120.0


class SpawnError(RuntimeError):
    """The training process could not be started."""


class TrialProcess(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> asyncio.StreamReader | None: ...
    @property
    def stderr(self) -> asyncio.StreamReader | None: ...
    async def wait(self) -> int: ...


class Spawner(Protocol):
    async def start(self) -> None: ...
    async def spawn(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> TrialProcess: ...
    async def close(self) -> None: ...


def _trial_env(env: dict[str, str], user: TrialUser | None) -> dict[str, str]:
    """The environment a training process gets: never a name of Rung's own secrets, and
    under ``--trial-user`` that user's home and name."""
    final = {k: v for k, v in env.items() if not is_secret(k)}
    if user is not None:
        final.update(user.environment())
    return final


def _hand_over(cwd: Path, env: dict[str, str], user: TrialUser | None) -> None:
    """Give the trial's own files to its user: the run directory (and a way through the
    directories above it), and the Core API socket with its directory when that is
    private to the trial (owned by this process and closed to everyone else; never a
    shared directory such as /tmp, nor the worker's socket, whose directory is 0710)."""
    if user is None:
        return
    opened = open_path_to(cwd, user)
    if opened:
        structlog.get_logger("rung.worker").info(
            "opened directories for the trial user to pass through (o+x, no listing)",
            trial_user=user.name,
            directories=[str(d) for d in opened],
        )
    give_to(cwd, user)
    channel = env.get("RUNG_CHANNEL")
    if not channel:
        return
    # A worker's shared socket is the trial user's group's already (rung.worker.channels),
    # in a directory the trial may not change; one private to this trial is given to it.
    socket_path = Path(channel)
    parent = socket_path.parent
    info = parent.lstat()
    private = info.st_uid == os.geteuid() and info.st_mode & 0o7077 == 0
    if private and parent.resolve() != Path(tempfile.gettempdir()).resolve():
        if socket_path.exists():
            os.chown(socket_path, user.uid, user.gid, follow_symlinks=False)
        os.chown(parent, user.uid, user.gid, follow_symlinks=False)


class ExecSpawner:
    """A fresh interpreter for every training process."""

    def __init__(self, *, trial_user: TrialUser | None = None) -> None:
        self.trial_user = trial_user

    async def start(self) -> None:
        """Nothing to start: every process is a fresh interpreter."""

    async def spawn(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> TrialProcess:
        user = self.trial_user
        env = _trial_env(env, user)
        if user is not None:
            await asyncio.to_thread(_hand_over, cwd, env, user)
        switch: dict[str, Any] = (
            {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
        )
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rung.worker.launch",  # the process dies with this worker, even by SIGKILL
            str(os.getpid()),
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=_LIMIT,
            **switch,
        )

    async def close(self) -> None:
        return None


class _Forked:
    """A training process forked by the fork server; its exit code comes from there."""

    def __init__(self, pid: int, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader):
        self._pid = pid
        self._stdout = stdout
        self._stderr = stderr
        self._returncode: int | None = None
        self._done = asyncio.Event()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stderr

    def exited(self, code: int) -> None:
        if self._returncode is None:
            self._returncode = code
            self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None  # noqa: S101 (set before the event)
        return self._returncode


async def exit_code(process: TrialProcess, *, poll_max_s: float = 0.1) -> int:
    """The process's exit code once it has exited and been reaped.

    A forked process's exit comes from the fork server's reply: it is awaited, not
    polled. A process of asyncio's (``exec``) is polled, every millisecond at first and
    backing off to ``poll_max_s``; not ``Process.wait()``, which on Python 3.11 also waits
    for every pipe to close, which a child left running in the background may never do.
    """
    if isinstance(process, _Forked):
        return await process.wait()
    delay = 0.001
    while (code := process.returncode) is None:  # (asyncio has no event for it)
        await asyncio.sleep(delay)
        delay = min(delay * 2, poll_max_s)
    return code


@dataclass
class _Request:
    """A spawn the fork server has not answered yet: who waits, and the pipes' read
    ends, closed here if no process will ever be read from them."""

    future: asyncio.Future[_Forked]
    pipes: list[tuple[asyncio.StreamReader, asyncio.BaseTransport]]

    def unused(self) -> None:
        for _, transport in self.pipes:
            transport.close()


async def _read_pipe(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LIMIT, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0)
    )
    return reader, transport


class ForkServer:
    """Starts, feeds and watches one fork server; restarts it if it dies."""

    def __init__(self, *, trial_user: TrialUser | None = None) -> None:
        self.trial_user = trial_user
        self.log = structlog.get_logger("rung.worker")
        self._lock = asyncio.Lock()
        self._requests: socket.socket | None = None
        self._server: asyncio.subprocess.Process | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._live: dict[int, _Forked] = {}
        # Set once the running server has imported what its children start with.
        self._ready: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int | None:
        """The fork server's process id, while one runs."""
        server = self._server
        return server.pid if server is not None and server.returncode is None else None

    async def _ensure_started(self) -> socket.socket:
        task = self._reader_task
        if self._requests is not None and task is not None and not task.done():
            return self._requests
        requests_here, requests_there = socket.socketpair()
        replies_here, replies_there = socket.socketpair()
        user = self.trial_user
        ids = [] if user is None else [str(user.uid), str(user.gid)]
        # This server's own: close() never mistakes it for the last one, ready already.
        self._ready = ready = asyncio.get_running_loop().create_future()
        try:
            self._server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "rung.worker.forkserver",
                str(os.getpid()),
                str(requests_there.fileno()),
                str(replies_there.fileno()),
                *ids,
                "--ready",  # (say when ready: see worker.forkserver)
                # Nothing of the worker's own environment: no broker URL, no password. A
                # forked child's /proc/self/environ shows this block, not its own.
                env=trial_environment(os.environ, {}),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(requests_there.fileno(), replies_there.fileno()),
            )
        except BaseException:
            requests_here.close()
            replies_here.close()
            raise
        finally:
            requests_there.close()
            replies_there.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=replies_here, limit=_LIMIT)
        except BaseException:  # (a cancellation): the server sees its sockets close, and goes
            requests_here.close()
            replies_here.close()
            raise
        self._requests = requests_here
        self._reader_task = asyncio.create_task(self._read_replies(reader, writer, ready))
        self.log.debug("fork server started", pid=self._server.pid)
        return requests_here

    async def _read_replies(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ready: asyncio.Future[None],
    ) -> None:
        """The replies of one server; ``ready``, its own (a later server has another)."""
        try:
            while line := await reader.readline():
                reply: dict[str, Any] = json.loads(line)
                if "ready" in reply:
                    if not ready.done():
                        ready.set_result(None)
                    continue
                if "exited" in reply:
                    forked = self._live.pop(int(reply["exited"]), None)
                    if forked is not None:
                        forked.exited(int(reply["code"]))
                    continue
                entry = self._pending.pop(int(reply["id"]), None)
                if entry is None:
                    continue
                future = entry.future
                if future.done():  # the spawn was cancelled: no one will watch this one
                    entry.unused()
                    if "pid" in reply:
                        _kill_group(int(reply["pid"]))
                    continue
                if "error" in reply:
                    entry.unused()
                    future.set_exception(SpawnError(str(reply["error"])))
                    continue
                (stdout, _), (stderr, _) = entry.pipes
                forked = _Forked(int(reply["pid"]), stdout, stderr)
                self._live[forked.pid] = forked
                future.set_result(forked)
        finally:
            writer.close()
            self._lost(ready)

    def _lost(self, ready: asyncio.Future[None]) -> None:
        """The fork server is gone: its children died with it (PR_SET_PDEATHSIG)."""
        had_children = bool(self._pending or self._live)
        if not ready.done():
            ready.set_exception(SpawnError("the fork server exited before it was ready"))
            ready.exception()  # (retrieved: nobody may be waiting for it)
        for entry in self._pending.values():
            entry.unused()
            if not entry.future.done():
                entry.future.set_exception(SpawnError("the fork server exited"))
        for forked in self._live.values():
            forked.exited(-9)
        self._pending.clear()
        self._live.clear()
        if self._requests is not None:
            self._requests.close()
            self._requests = None
        if had_children:  # last: the state above must not depend on logging working
            self.log.warning("the fork server exited; its training processes died with it")

    async def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the fork server now and wait until it is ready to fork, so that the
        first training process does not wait for its start (an interpreter and the Core
        API's imports: about 100 ms of CPU). A worker calls it before it takes work, so
        that one whose fork server cannot start takes none. ``SpawnError`` says why."""
        async with self._lock:
            try:
                await self._ensure_started()
            except OSError as exc:
                raise SpawnError(f"the fork server could not be started: {exc}") from exc
        ready = self._ready
        assert ready is not None  # noqa: S101 (set by _ensure_started)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(ready)
        except TimeoutError:
            raise SpawnError(
                f"the fork server was not ready within {timeout:g} s of its start"
            ) from None

    async def spawn(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> TrialProcess:
        env = _trial_env(env, self.trial_user)
        if self.trial_user is not None:
            await asyncio.to_thread(_hand_over, cwd, env, self.trial_user)
        return await self._fork({"argv": argv, "cwd": str(cwd), "env": env})

    async def compile(self, directory: Path, *, timeout: float, entries: int, size: int) -> bool:
        """Compile the Python sources of a fresh context copy into its ``__pycache__``, in
        a child of the fork server that runs nothing of theirs, adding at most
        ``entries`` files and directories and ``size`` bytes
        (:func:`rung.worker.bytecode.compile_tree`). False if the child failed, or did
        not end within ``timeout`` seconds of its start (the wait for the fork server
        comes before); :class:`SpawnError` if the fork server could not start it; False
        at once under a trial user (whose child could not write the worker's copy).
        However it ends, cancelled once or more included, the child has exited and been
        reaped by the time this returns: nothing of it writes on."""
        if self.trial_user is not None:
            return False
        request = {"compile": {"entries": entries, "size": size}, "argv": [], "cwd": str(directory)}
        forking = asyncio.ensure_future(self._fork({**request, "env": {}}))
        try:
            process = await asyncio.shield(forking)
        except asyncio.CancelledError:
            # The request went out, or goes: its child, once there, is killed and reaped.
            await to_its_end(_stop_forked(forking))
            raise
        code: int | None = None
        try:
            async with asyncio.timeout(timeout):
                code = await process.wait()
        except TimeoutError:
            pass  # (False: it is killed below)
        finally:  # ended, timed out or cancelled: killed if need be, reaped, pipes read
            await to_its_end(_stop(process))
        return code == 0

    async def _fork(self, fields: dict[str, Any]) -> _Forked:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            request = _Request(asyncio.get_running_loop().create_future(), [])
            try:
                request.pipes.append(await _read_pipe(out_read))
                request.pipes.append(await _read_pipe(err_read))
            except BaseException:
                request.unused()
                raise
            async with self._lock:
                try:
                    requests = await self._ensure_started()
                except BaseException:  # (a cancellation too) no request went out
                    request.unused()
                    raise
                request_id = next(self._ids)
                self._pending[request_id] = request
                payload = json.dumps({"id": request_id, **fields}).encode()
                try:
                    await _send_request(requests, payload + b"\n", [out_write, err_write])
                    # One request in flight at a time: the server reads one message per
                    # request, so its file descriptors never arrive with another's.
                    return await request.future
                except OSError as exc:
                    self._pending.pop(request_id, None)
                    request.unused()
                    raise SpawnError(f"cannot reach the fork server: {exc}") from exc
                except asyncio.CancelledError:
                    _forsake(request)
                    raise
        finally:
            os.close(out_write)
            os.close(err_write)

    async def close(self) -> None:
        """Stop the fork server (its children die with it: stop them first)."""
        if self._requests is not None:
            self._requests.close()
            self._requests = None
        if self._server is not None and self._server.returncode is None:
            ready = self._ready
            if ready is not None and ready.done():  # (else it has no children: killed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server.wait(), timeout=5)
            if self._server.returncode is None:
                self._server.kill()
                await self._server.wait()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


def _kill_group(pid: int) -> None:
    """SIGKILL a training process that nobody will watch, and its group."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


async def _stop(process: _Forked) -> None:
    """Kill a compiling child if it still runs, see it reaped, and read its pipes to
    their end (it writes nothing there, but nothing of it is left open)."""
    if process.returncode is None:  # (once reaped, its pid may be another's)
        _kill_group(process.pid)
    await process.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(process.stdout.read(), process.stderr.read()), 5)


async def _stop_forked(forking: asyncio.Future[_Forked]) -> None:
    """:func:`_stop` the child of a fork request once the fork server has answered it."""
    try:
        process = await forking
    except Exception:  # noqa: BLE001 (no child was started)
        return
    await _stop(process)


def _send_with_fds(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    sent = socket.send_fds(sock, [payload], fds)
    if sent < len(payload):
        sock.sendall(payload[sent:])


async def _send_request(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    """Send a request and its file descriptors to the fork server. A request fits in the
    socket's buffer unless the server is behind: then it is sent at once, without the
    thread hop that a send which may block needs. A send under way in a thread is seen
    to its end even if the caller is cancelled: the descriptors it sends stay open, and
    no other request's bytes come between its own."""
    try:
        sent = socket.send_fds(sock, [payload], fds, socket.MSG_DONTWAIT)
    except BlockingIOError:  # nothing sent: the server is behind; wait for it in a thread
        await to_its_end(asyncio.to_thread(_send_with_fds, sock, payload, fds))
        return
    if sent < len(payload):
        await to_its_end(asyncio.to_thread(sock.sendall, payload[sent:]))


def _forsake(request: _Request) -> None:
    """The spawn waiting for ``request`` was cancelled: the process it asked for, if it
    was started already, is killed and its pipes closed; if not, the reply will say so
    (its future is cancelled: the reader kills what it started)."""
    future = request.future
    if future.done() and not future.cancelled() and future.exception() is None:
        _kill_group(future.result().pid)
        request.unused()
    else:
        future.cancel()


def make_spawner(method: StartMethod, *, trial_user: TrialUser | None = None) -> Spawner:
    """The spawner of ``method``; with ``trial_user``, its processes run as that user."""
    if method == "exec":
        return ExecSpawner(trial_user=trial_user)
    return ForkServer(trial_user=trial_user)
