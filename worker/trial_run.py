"""One attempt of one trial on this worker: the training process and its local channel.

The worker starts the entrypoint as a subprocess in its own process group, in a private
copy of the experiment context, pinned to its GPUs with ``CUDA_VISIBLE_DEVICES``. The
process talks to :class:`TrialRun` over the worker's Unix socket (``RUNG_CHANNEL``, in a
private directory: :mod:`rung.worker.channels`), naming itself by a random token
(``RUNG_CHANNEL_TOKEN``); only a process of the trial's process group and uid is served
(``SO_PEERCRED``), and each request is checked against the Core API's limits again
(a script may write to the socket without the Core API). Each report becomes an event that
is published (and confirmed) before the script is answered. Its stdout and stderr are read
in chunks, split into lines (``\\r`` too), cut, rate-limited and shipped in bounded batches
(:mod:`rung.worker.output`): no output can stop the worker supervising it. When the
process ends, its group is killed and the exit is classified with Determined's meanings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import structlog

from rung.broker.limits import (
    CHANNEL_REQUEST_BYTES,
    MAX_CHECKPOINT_METADATA_BYTES,
    MAX_LOG_BATCH_LINES,
    MAX_METRICS_BYTES,
    is_uuid,
)
from rung.broker.schemas import (
    CheckpointSaved,
    ExitReason,
    LogLine,
    LogLines,
    MetricsReported,
    OpCompleted,
    ProgressReported,
    RunTrial,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.launch.wrap_rank import untag
from rung.worker.channels import ChannelServer
from rung.worker.compat import COMPAT_PATH
from rung.worker.core._validate import check_json
from rung.worker.environment import trial_environment
from rung.worker.output import READ_CHUNK_BYTES, LineSplitter, LogGate
from rung.worker.spawn import ExecSpawner, Spawner, SpawnError, TrialProcess, exit_code

__all__ = ["TrialRun"]


class Emit(Protocol):
    """Publish an event until the broker confirms it; return its message id. Given a
    ``message_id``, the event goes out again under that id: a re-sent event."""

    def __call__(self, body: Body, *, message_id: str | None = None) -> Awaitable[str]: ...


# A trial that waits this long for the searcher's answer to a completed operation asks
# again (then twice as long, up to a minute): the answer can be lost with the worker's
# private queue when its connection resets, and nothing else would send it.
ASK_AGAIN_AFTER_S = 5.0
_ASK_AGAIN_MAX_S = 60.0
# The last lines of stderr kept for trial_exited (each at most MAX_LOG_LINE_CHARS and a note).
_TAIL = 30
# Logs go out at least this often while a trial runs.
_SHIP_EVERY_S = 0.5
# How long the training process's output may stay open after it ended and its group was
# killed (a process that left the group).
_DRAIN_S = 5.0
_REAP_S = 30.0


class _RefusedError(ValueError):
    """A Core API request that breaks a rule; the script gets the message as its error."""


def _euid(pid: int) -> int | None:
    """The effective uid of a process, from /proc (readable even when it is not dumpable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _log_line(stream: str, text: str) -> LogLine:
    """A line to ship; a rank tag (``[rank=N] ``, rung.launch.wrap_rank) becomes its rank."""
    rank, text = untag(text)
    return LogLine.model_validate({"stream": stream, "text": text, "rank": rank})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _distributed_environment(cmd: RunTrial) -> dict[str, str]:
    """Ports for a distributed trial's chief, local chief and torch master, and its
    token (``rung.worker.core.DistributedContext`` and ``rung.launch`` read them).

    A part of a trial on several workers (``cmd.gang``) takes the chief's ports from its
    placement, and the attempt's start token (which only the workers that received its
    ``run_trial`` know) as its ranks' token; its local chief listens on
    ``pull_port + cross_rank``, so the pull port is set that much below a free one."""
    gang = cmd.gang
    if gang is None:
        return {
            "RUNG_DIST_TOKEN": secrets.token_hex(16),
            "RUNG_DIST_PUB_PORT": str(_free_port()),
            "RUNG_DIST_PULL_PORT": str(_free_port()),
            "RUNG_DIST_MASTER_PORT": str(_free_port()),
        }
    pull = _free_port()
    while pull - gang.rank < 1:
        pull = _free_port()
    return {
        "RUNG_DIST_TOKEN": cmd.start_token or secrets.token_hex(16),
        "RUNG_DIST_PUB_PORT": str(gang.pub_port),
        "RUNG_DIST_PULL_PORT": str(pull - gang.rank),
        "RUNG_DIST_MASTER_PORT": str(gang.master_port),
    }


def peer_refusal(sock: Any, trial_pid: int) -> str | None:
    """Why the process at the other end of ``sock`` may not use the trial's channel (None:
    it may). Only a process of the trial's own process group (the trial leads it), running
    as the trial's uid, may. Linux only (``SO_PEERCRED``); elsewhere the private directory
    is the only guard."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    if pid <= 0:  # another pid namespace: nothing to check it against
        return f"the peer's pid is unknown ({pid}); it is not in this worker's pid namespace"
    try:
        group = os.getpgid(pid)
    except OSError:
        return f"the peer (pid {pid}) is gone"
    if group != trial_pid:
        return f"the peer (pid {pid}) is in process group {group}, not the trial's ({trial_pid})"
    expected = _euid(trial_pid)
    if expected is None:
        return f"the training process (pid {trial_pid}) is gone"
    if uid != expected:
        return f"the peer (pid {pid}) runs as uid {uid}, not the trial's uid {expected}"
    return None


class TrialRun:
    def __init__(
        self,
        cmd: RunTrial,
        *,
        worker_id: str,
        run_dir: Path,
        gpus: list[str],
        slot_ids: list[int],
        emit: Emit,
        best_validation: Callable[[], Awaitable[float | None]],
        hang_timeout_s: float | None = None,
        spawner: Spawner | None = None,
        ask_again_after_s: float = ASK_AGAIN_AFTER_S,
        trial_env_allow: Iterable[str] = (),
        held_ports: Iterable[socket.socket] = (),
        channels: ChannelServer | None = None,
    ) -> None:
        self.cmd = cmd
        # The chief's ports of a trial on several workers, bound until the process is
        # spawned (then its ranks bind them), so that nothing else takes them meanwhile.
        self._held_ports = list(held_ports)
        self.ask_again_after_s = ask_again_after_s
        self._spawner: Spawner = spawner or ExecSpawner()
        # Names of the worker's environment passed on beyond the allowlist (--trial-env).
        self.trial_env_allow = tuple(trial_env_allow)
        # A script that makes no Core API call for this long is hung and killed.
        self.hang_timeout_s = hang_timeout_s
        self._last_call = time.monotonic()
        self._awaiting_op = False  # blocked in operations() for the searcher: not hung
        self.worker_id = worker_id
        self.run_dir = run_dir
        self.gpus = gpus
        self.slot_ids = slot_ids
        self._emit = emit
        self._best_validation = best_validation
        self.log = structlog.get_logger("rung.worker").bind(
            experiment_id=cmd.experiment_id,
            trial_id=cmd.trial_id,
            attempt=cmd.attempt,
            worker_id=worker_id,
        )
        self.process: TrialProcess | None = None
        self._started = asyncio.Event()  # set once the process is known (or never will be)
        self._channel_closed = False
        # The worker's Core API socket, or one of this run's own (made by start() and
        # removed at the end) where none is given; connections name the run by its token.
        self._own_channels = channels is None
        self._channels = channels or ChannelServer()
        self.channel_token = secrets.token_hex(16)
        # The script's open connections, each served by its own task.
        self._connections: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # Operation bookkeeping: lengths handed to the script, and the next one to hand out.
        self._next: asyncio.Queue[int | None] = asyncio.Queue()
        self._next.put_nowait(cmd.length)
        self.current_length: int | None = None
        self.completed_length: int | None = None
        # The last completion reported, and its message id: the question the searcher
        # answers with continue, pause or close, re-sent if the answer is slow to come.
        self._completion: tuple[OpCompleted, str] | None = None
        self.ended_by: str | None = None  # "pause" or "close" once the script got no more ops
        self.preempt_requested = False
        self.killed_because: str | None = None
        self.early_exit: str | None = None
        self._stderr_tail: deque[str] = deque(maxlen=_TAIL)
        self._gate = LogGate(time.monotonic())
        self._output_ready = asyncio.Event()
        self._shipping = asyncio.Lock()
        self._exit_sent = False
        # Called once the process is reaped and its group killed, before the last logs
        # and trial_exited go out: its slots can take the next trial meanwhile.
        self.on_reaped: Callable[[], None] | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return self.cmd.experiment_id, self.cmd.trial_id, self.cmd.attempt

    @property
    def socket_path(self) -> Path | None:
        """The Core API socket the process is told of, once start() got to it."""
        return self._channels.path

    @property
    def channel_dir(self) -> Path | None:
        """The socket's private directory (0700; 0710 of the trial user's group under
        ``--trial-user``)."""
        return self._channels.directory

    # ------------------------------------------------------------------ commands
    def continue_to(self, length: int) -> None:
        self._next.put_nowait(length)

    def stop_ops(self, how: str) -> None:
        if self.ended_by is None:
            self.ended_by = how
            self._next.put_nowait(None)

    def request_preemption(self) -> None:
        self.preempt_requested = True

    # ------------------------------------------------------------------ start
    def _command(self) -> list[str] | str:
        argv = list(self.cmd.entrypoint)
        if len(argv) == 1:
            argv = shlex.split(argv[0])
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the worker's environment, where rung is installed
        script = next((a for a in argv[1:] if a.endswith(".py")), None)
        if script is not None and not (self.run_dir / script).is_file():
            files = sorted(
                str(p.relative_to(self.run_dir)) for p in self.run_dir.rglob("*") if p.is_file()
            )[:20]
            return (
                f"entrypoint file {script!r} not found in the experiment context "
                f"(it has: {', '.join(files) or 'no files'}); fix entrypoint in the config"
            )
        return argv

    def _environment(self) -> dict[str, str]:
        """The allowlist of :mod:`rung.worker.environment` (and ``trial_env_allow``) over
        the worker's environment, then what Rung tells the trial."""
        cmd = self.cmd
        info = {
            "experiment_id": cmd.experiment_id,
            "trial_id": cmd.trial_id,
            "trial_seed": cmd.trial_seed,
            "hparams": cmd.hparams,
            "attempt": cmd.attempt,
            "latest_checkpoint": cmd.latest_checkpoint,
            "user_data": cmd.user_data,
            "checkpoint_root": cmd.checkpoint_root,
            "source_root": cmd.source_root,
            "unit": cmd.unit,
            "worker_id": self.worker_id,
            "slot_ids": self.slot_ids,
            "gpus": self.gpus,
            # One worker runs the whole trial, its processes meeting on this machine; or
            # this worker runs one part of it (gang scheduling), the chief's part first.
            "container_addrs": list(cmd.gang.addrs) if cmd.gang else ["127.0.0.1"],
            "container_rank": cmd.gang.rank if cmd.gang else 0,
            "container_slot_counts": (
                list(cmd.gang.slot_counts) if cmd.gang else [len(self.slot_ids)]
            ),
        }
        rung_vars = {
            "RUNG_TRIAL_INFO": json.dumps(info),
            "RUNG_CHANNEL": str(self.socket_path or ""),
            "RUNG_CHANNEL_TOKEN": self.channel_token,
            "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": ",".join(self.gpus),
            # A trial of several processes: where its ranks meet (ports free now, so
            # that two trials on one machine, of one worker or two, keep apart), and the
            # token that tells its ranks from anyone else on those ports.
            **_distributed_environment(cmd),
        }
        env = trial_environment(os.environ, rung_vars, allow=self.trial_env_allow)
        # ``determined`` under Rung (``python3 -m determined.launch.wrap_rank`` ...), after
        # what the worker's own PYTHONPATH names: rung/worker/compat/determined.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (env.get("PYTHONPATH"), COMPAT_PATH)))
        # ``python3`` in what the script starts (a launcher's ranks) is the worker's
        # interpreter, as the entrypoint's is: the environment where rung is installed.
        here = os.path.dirname(sys.executable)
        path = env.get("PATH", "")
        if path.split(os.pathsep)[0] != here:
            env["PATH"] = os.pathsep.join(filter(None, (here, path)))
        return env

    async def _cannot_start(self, reason: str) -> bool:
        self.log.error("cannot start the trial", reason=reason)
        self._started.set()
        self._close_channel()
        self._gate.add("rung", reason)
        await self._ship()
        # A member part stopped with its worker before it could start: a preemption.
        stopped = self.member and self.preempt_requested
        await self._exited(ExitReason.PREEMPTED if stopped else ExitReason.ERRORED, None, reason)
        return False

    def release_ports(self) -> None:
        """Let the chief's held ports go (idempotent): its ranks bind them next."""
        for sock in self._held_ports:
            sock.close()
        self._held_ports.clear()

    async def stop_member(self, why: str) -> None:
        """Stop a member part (its ranks cannot see ``should_preempt()``): its exit, a
        preemption, goes out first, so that the searcher takes it before the chief's
        ranks fail for want of it; then its processes are killed."""
        self.request_preemption()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited(ExitReason.PREEMPTED, None, why), timeout=5)
        self.kill(why)

    async def start(self) -> bool:
        """Start the process; False (with the trial already reported as exited) if it can't.

        ``trial_started`` and the process's start overlap: the process is forked while the
        event waits for its confirm, and nothing the script asks is served (no event of
        the trial goes out) before that confirm. If the event cannot go out, the process
        is killed and reaped before the error is raised: the trial never ran here.
        """
        self._last_call = time.monotonic()
        command = self._command()
        announced = asyncio.ensure_future(
            self._emit(
                TrialStarted(
                    **self._ids(),
                    slots=len(self.slot_ids),
                    gpus=self.gpus,
                    # Echoed: it shows the searcher that this worker received the run_trial.
                    start_token=self.cmd.start_token,
                )
            )
        )
        failure: str | None
        try:
            if (killed := self._killed()) is not None:  # told to stop before it started
                failure = f"the trial was killed before it started: {killed}"
            else:
                failure = command if isinstance(command, str) else await self._spawn(command)
                if (killed := self._killed()) is not None:  # ... or while it started
                    self.kill(killed)
        except Exception as exc:  # noqa: BLE001 (the trial's failure, not the worker's)
            # A bug, or an input nothing checked (a NUL byte in an exec'd argument).
            failure = f"the training process could not be started: {exc!r}"
        except BaseException:  # cancelled: the worker is stopping, or its handler was
            announced.cancel()
            if announced.done() and not announced.cancelled():
                announced.exception()  # retrieved: it is this cancellation that counts
            await self._abandon()
            raise
        try:
            await announced
        except BaseException:
            await self._abandon()
            raise
        if failure is not None:
            return await self._cannot_start(failure)
        self._started.set()
        assert self.process is not None  # noqa: S101 (_spawn set it, or said why not)
        self.log.info(
            "trial started",
            pid=self.process.pid,
            gpus=self.gpus,
            length=self.cmd.length,
            checkpoint=self.cmd.latest_checkpoint,
        )
        return True

    async def _spawn(self, command: list[str]) -> str | None:
        """The channel and the process; None, or why they could not be made."""
        try:
            await self._channels.start()
            self._channels.serve(self.channel_token, self._accept)
            self.release_ports()
            self.process = await self._spawner.spawn(
                command, cwd=self.run_dir, env=self._environment()
            )
        except (SpawnError, OSError) as exc:
            return f"the training process could not be started: {exc}"
        return None

    async def _abandon(self) -> None:
        """``trial_started`` did not go out: end the process, if there is one, and its
        channel, as if it never started."""
        self._close_channel()
        process = self.process
        if process is None:
            return
        self.kill("its trial_started could not be published")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exit_code(process), timeout=_REAP_S)

    # ------------------------------------------------------------------ the channel
    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called as the connection is made: the writer is known before any await, so
        that the end of the trial closes it even if its task never gets to run."""
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        # A forked trial can connect before the fork server's answer names its pid, and
        # before its trial_started is confirmed (however long the broker takes): nothing
        # of it is served until then. start() sets _started, or closes the channel,
        # which sets it too and refuses the connection.
        await self._started.wait()
        process = self.process
        if self._channel_closed:
            refusal: str | None = "the trial's channel is closed"
        elif process is None:
            refusal = "the training process is not running"
        else:
            refusal = peer_refusal(writer.get_extra_info("socket"), process.pid)
        if refusal is not None:
            self.log.warning("refused a connection to the trial's channel", reason=refusal)
            return False
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not await self._peer_allowed(writer):
                return
            while (line := await _read_request(reader)) != b"":
                reply = await self._reply(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _reply(self, line: bytes | None) -> dict[str, Any]:
        if line is None:
            return {
                "error": f"request over {CHANNEL_REQUEST_BYTES} bytes (CHANNEL_REQUEST_BYTES), "
                "the limit of one Core API call; report less at once"
            }
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise _RefusedError(f"a request is a JSON object, got {type(request).__name__}")
            return await self._handle(request)
        except RecursionError:
            return {"error": "bad request: JSON nested too deeply (MAX_JSON_DEPTH)"}
        except (ValueError, KeyError, TypeError) as exc:  # _RefusedError, pydantic's too
            return {"error": f"bad request: {exc}"}

    def _ids(self) -> dict[str, Any]:
        return {
            "experiment_id": self.cmd.experiment_id,
            "trial_id": self.cmd.trial_id,
            "attempt": self.cmd.attempt,
            "worker_id": self.worker_id,
        }

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0911
        self._last_call = time.monotonic()
        match request["op"]:
            case "next_op":
                self._awaiting_op = True
                try:
                    length = await self._await_answer()
                finally:
                    self._awaiting_op = False
                    self._last_call = time.monotonic()
                self.current_length = length
                return {"length": length}
            case "completed":
                length = int(request["length"])
                completion = OpCompleted(**self._ids(), length=length, metric=request.get("metric"))
                self._completion = (completion, await self._emit(completion))
                self.completed_length = length
                return {}
            case "progress":
                await self._emit(ProgressReported(**self._ids(), units=float(request["units"])))
                return {}
            case "progress_fraction":
                units = float(request["progress"]) * (self.current_length or self.cmd.length)
                await self._emit(ProgressReported(**self._ids(), units=units))
                return {}
            case "metrics":
                metrics = request["metrics"]
                if not isinstance(metrics, dict):
                    raise _RefusedError(f"metrics must be a mapping, got {type(metrics).__name__}")
                check_json("metrics", metrics, MAX_METRICS_BYTES, "MAX_METRICS_BYTES")
                await self._emit(
                    MetricsReported(
                        **self._ids(),
                        group=request["group"],
                        steps_completed=int(request["steps_completed"]),
                        metrics=metrics,
                    )
                )
                return {}
            case "checkpoint":
                await self._emit(self._checkpoint_saved(request))
                return {}
            case "should_preempt":
                return {"preempt": self.preempt_requested}
            case "early_exit":
                self.early_exit = str(request["reason"])
                return {}
            case "best_validation":
                return {"value": await self._best_validation()}
        return {"error": f"unknown request {request['op']!r}"}

    def _checkpoint_saved(self, request: dict[str, Any]) -> CheckpointSaved:
        storage_id, metadata = request["uuid"], request["metadata"]
        if not isinstance(storage_id, str) or not is_uuid(storage_id):
            raise _RefusedError(
                f"checkpoint uuid {str(storage_id)[:80]!r} is not a lowercase canonical uuid "
                "(UUID_PATTERN); use the storage_id that checkpoint.store_path() gives"
            )
        if not isinstance(metadata, dict):
            kind = type(metadata).__name__
            raise _RefusedError(f"checkpoint metadata must be a mapping, got {kind}")
        check_json(
            "checkpoint metadata",
            metadata,
            MAX_CHECKPOINT_METADATA_BYTES,
            "MAX_CHECKPOINT_METADATA_BYTES",
        )
        return CheckpointSaved(
            **self._ids(),
            uuid=storage_id,
            steps_completed=int(request["steps_completed"]),
            metadata=metadata,
            size_bytes=int(request["size_bytes"]),
        )

    async def _await_answer(self) -> int | None:
        """The next operation's length (None: no more), asking the searcher again while
        its answer to the last completion does not come.

        The answer (continue, pause or close) goes to this worker's private queue, which
        dies with the worker's connection: a command published just before a reset is
        lost. The completion goes out again under its own message id; the searcher knows
        it as a duplicate and re-sends the command it answered with, which this worker
        drops if it already has it.
        """
        answer = asyncio.ensure_future(self._next.get())
        wait_s = self.ask_again_after_s
        try:
            while True:
                done, _ = await asyncio.wait({answer}, timeout=wait_s)
                if done:
                    return answer.result()
                if self._completion is not None:
                    completion, message_id = self._completion
                    self.log.info(
                        "no answer to a completed operation yet; asking the searcher again",
                        length=completion.length,
                        waited_s=wait_s,
                    )
                    await self._emit(completion, message_id=message_id)
                wait_s = min(wait_s * 2, _ASK_AGAIN_MAX_S)
        finally:
            answer.cancel()

    # ------------------------------------------------------------------ logs
    def _take_lines(self, stream: str, lines: list[str]) -> None:
        """Lines read from the process: into the stderr tail, then through the gate (rate
        and buffer bounds; what is over is dropped and counted). Never waits."""
        if not lines:
            return
        if stream == "stderr":
            self._stderr_tail.extend(lines[-_TAIL:])
        now = time.monotonic()
        gate = self._gate
        for line in lines:
            gate.offer(stream, line, now)
        if len(gate) >= MAX_LOG_BATCH_LINES:
            self._output_ready.set()

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        """Read a pipe to its end in chunks: no line, however long, is ever held whole."""
        splitter = LineSplitter()
        while chunk := await stream.read(READ_CHUNK_BYTES):
            self._take_lines(name, splitter.feed(chunk))
        self._take_lines(name, splitter.close())

    async def _ship(self) -> None:
        """Send what the gate holds, in batches within MAX_LOG_BATCH_LINES and _BYTES."""
        async with self._shipping:
            while batch := self._gate.batch():
                lines = [_log_line(stream, text) for stream, text in batch]
                await self._emit(LogLines(**self._ids(), lines=lines))

    async def _ship_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._output_ready.wait(), timeout=_SHIP_EVERY_S)
            self._output_ready.clear()
            await self._ship()

    # ------------------------------------------------------------------ the end
    @property
    def member(self) -> bool:
        """A part of a trial on several workers other than the chief's: its ranks make no
        Core API call here (the chief's part reports), so its clean exit is just its end."""
        return self.cmd.gang is not None and self.cmd.gang.rank > 0

    def _classify(self, code: int) -> tuple[ExitReason, str]:
        if self.member and self.preempt_requested:
            # Its ranks cannot see should_preempt() (only the chief's part asks): it was
            # stopped with its worker, and the attempt resumes from its checkpoint.
            return ExitReason.PREEMPTED, "stopped: its worker is stopping"
        if self.member and code == 0:
            return ExitReason.COMPLETED, f"part {self.cmd.gang.rank if self.cmd.gang else 0} ended"
        if self.early_exit == "INVALID_HP":
            return ExitReason.INVALID_HP, "the script raised InvalidHP"
        if code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if self.killed_because is not None:
                how = f"was killed: {self.killed_because}"
            return ExitReason.ERRORED, f"the training process {how}"
        if self.preempt_requested and self.ended_by is None:
            return ExitReason.PREEMPTED, "the training process stopped after preemption"
        if self.ended_by == "close":
            return ExitReason.COMPLETED, "the trial is done"
        if self.ended_by == "pause":
            return ExitReason.OUT_OF_OPS, "paused: out of operations for now"
        return ExitReason.USER_REQUESTED_STOP, (
            f"the training process exited 0 before finishing its operation to length "
            f"{self.current_length or self.cmd.length}; treated as a user-requested stop"
        )

    async def wait(self) -> ExitReason:
        """Stream logs until the process ends, then report how it ended.

        Whatever happens here (any output, a failure reading it, this task cancelled),
        when ``wait()`` returns or raises the training process's group has been killed
        and the process reaped, so its slots may be given to another trial; and unless
        the worker cancelled it (it is stopping), ``trial_exited`` has gone out, once.
        """
        process = self.process
        if process is None or process.stdout is None or process.stderr is None:
            raise RuntimeError("wait() before a successful start()")
        stop_shipping = asyncio.Event()
        shipper = asyncio.create_task(self._ship_periodically(stop_shipping))
        watchdog = asyncio.create_task(self._watch_for_hangs())
        pumps = asyncio.gather(
            self._pump(process.stdout, "stdout"), self._pump(process.stderr, "stderr")
        )
        code: int | None = None
        try:
            code = await self._supervise(process, pumps)
        except asyncio.CancelledError:
            shipper.cancel()
            raise
        except Exception:  # a bug of ours must not orphan the process: end it all the same
            self.log.exception("supervising the training process failed; killing it")
            self.kill("the worker failed supervising it (see the worker's log)")
        finally:
            watchdog.cancel()
            self._close_channel()  # also when the worker is cancelled while this waits
            await self._end_process(process, pumps)
            stop_shipping.set()
            self._output_ready.set()
            if self.on_reaped is not None and process.returncode is not None:
                self.on_reaped()  # (not if it outlived SIGKILL: then its slots wait)
        if code is None:
            code = process.returncode
        if code is None:
            reason, message = ExitReason.ERRORED, "the training process could not be reaped"
        else:
            reason, message = self._classify(code)
        if reason is ExitReason.USER_REQUESTED_STOP:
            self._gate.add("rung", f"warning: {message}")
        try:
            await shipper
            self._gate.finish()
            await self._ship()
        except Exception:  # the logs are lost, the exit is not
            self.log.exception("could not ship the trial's last logs")
        await self._exited(reason, code, message)
        return reason

    async def _supervise(self, process: TrialProcess, pumps: asyncio.Future[Any]) -> int:
        """Until the process has exited and its output is read: its exit code."""
        exited = asyncio.create_task(exit_code(process))
        try:
            await asyncio.wait({pumps, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                # Its output ended: the process is ending. Look again from 1 ms, not at
                # the backed-off pace of a long run.
                exited.cancel()
                exited = asyncio.create_task(exit_code(process))
            if pumps.done() and pumps.exception() is not None:
                self.log.error(
                    "reading the training process's output failed; killing it",
                    error=repr(pumps.exception()),
                )
                self.kill(f"the worker could not read its output: {pumps.exception()!r}")
            code = await exited
        finally:
            exited.cancel()
        # Whatever the process left running in its group holds its pipes: end it.
        if self._kill_group():
            self._gate.add("rung", "rung: killed what the training process left in its group")
        if not pumps.done():  # (asyncio.wait: neither raises what the pumps raised nor cancels)
            await asyncio.wait({pumps}, timeout=_DRAIN_S)
        if not pumps.done():
            self.log.warning(
                "the training process's output stays open after it ended (a process outside "
                "its group holds it); no longer reading it"
            )
        return code

    async def _end_process(self, process: TrialProcess, pumps: asyncio.Future[Any]) -> None:
        """Kill the group, reap the process (bounded), stop reading: every way out."""
        if process.returncode is None:
            self.kill("the worker stopped supervising it")
        self._kill_group()
        if process.returncode is None:
            try:
                await asyncio.wait_for(asyncio.shield(exit_code(process)), timeout=_REAP_S)
            except TimeoutError:
                self.log.error(  # noqa: TRY400 (no trace to show)
                    "the training process did not die after SIGKILL", pid=process.pid
                )
        if not pumps.done():
            pumps.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumps

    def _kill_group(self) -> bool:
        """SIGKILL the trial's process group; True if anything in it was still there."""
        if self.process is None:
            return False
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def _watch_for_hangs(self) -> None:
        timeout = self.hang_timeout_s
        if not timeout or self.member:  # (a member's ranks never call the Core API here)
            return
        while True:
            await asyncio.sleep(min(timeout / 4, 1.0))
            if self._awaiting_op or time.monotonic() - self._last_call < timeout:
                continue
            self.log.warning("killing a hung training process", hang_timeout_s=timeout)
            self.kill(f"no call to the Core API for {timeout:g} s (rung worker --hang-timeout)")
            return

    def _close_channel(self) -> None:
        """Refuse the token from now on and close every connection of the run (and the
        run's own socket, where it has one: removed with its directory); idempotent. A
        connection accepted after this is refused at once."""
        self.release_ports()
        self._channel_closed = True
        self._started.set()  # wakes a connection that waits for the start: refused
        self._channels.forget(self.channel_token)
        if self._own_channels:
            self._channels.close()
        # A connection whose script died while it waited (for its next operation, say)
        # is never read again: end it, so that its socket is closed.
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        for connection in list(self._connections):
            connection.cancel()

    async def _exited(self, reason: ExitReason, code: int | None, message: str) -> None:
        self._close_channel()
        if self._exit_sent:
            return
        self._exit_sent = True
        self.log.info("trial exited", reason=reason.value, exit_code=code, message=message)
        await self._emit(
            TrialExited(
                **self._ids(),
                reason=reason,
                exit_code=code,
                message=message,
                stderr_tail=list(self._stderr_tail),
            )
        )

    def _killed(self) -> str | None:
        """Why the trial was killed, if it was (read afresh after each await)."""
        return self.killed_because

    def kill(self, because: str) -> None:
        """Kill the process group; before the process exists, remembered, so that
        :meth:`start` does not start it (a kill that came while the trial's context was
        fetched, say) or kills it as soon as it is spawned."""
        if self.process is None:
            self.killed_because = because
        elif self.process.returncode is None:
            self.killed_because = because
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:  # not yet the leader of its own group: just it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The next request line, b"" at the end, None for a line over CHANNEL_REQUEST_BYTES
    (skipped to its end: it is answered with an error, and the channel goes on)."""
    overlong = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return b""
        except asyncio.LimitOverrunError as exc:
            # Drop what is buffered (at most the limit), then look for the line's end.
            await reader.readexactly(exc.consumed)
            overlong = True
            continue
        return None if overlong else line
