"""One attempt of one trial on this worker: the training process and its local channel.

The worker starts the entrypoint as a subprocess in its own process group, in a private
copy of the experiment context, pinned to its GPUs with ``CUDA_VISIBLE_DEVICES``. The
process talks to :class:`TrialRun` over a Unix socket (``RUNG_CHANNEL``); each report
becomes an event that is published (and confirmed) before the script is answered.
When the process ends, the exit is classified with Determined's meanings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

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
from rung.worker.spawn import ExecSpawner, Spawner, SpawnError, TrialProcess

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
_SCRUBBED = (
    "RUNG_BROKER_URL",
    "RUNG_BROKER_PASSWORD_FILE",
    "RUNG_TEST_AMQP_URL",
    "AMQP_URL",
    "RUNG_TLS_CA",
    "RUNG_TLS_CERT",
    "RUNG_TLS_KEY",
)
_TAIL = 30


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
    ) -> None:
        self.cmd = cmd
        self.ask_again_after_s = ask_again_after_s
        self._spawner: Spawner = spawner or ExecSpawner()
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
        self._server: asyncio.Server | None = None
        # The script's open connections, each served by its own task.
        self._connections: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._socket_path = Path(tempfile.gettempdir()) / f"rung-{uuid.uuid4().hex[:12]}.sock"
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
        self._lines: list[LogLine] = []
        self._flushing = asyncio.Lock()

    @property
    def key(self) -> tuple[str, int, int]:
        return self.cmd.experiment_id, self.cmd.trial_id, self.cmd.attempt

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
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
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
            "unit": cmd.unit,
            "worker_id": self.worker_id,
            "slot_ids": self.slot_ids,
            "gpus": self.gpus,
        }
        env.update(
            {
                "RUNG_TRIAL_INFO": json.dumps(info),
                "RUNG_CHANNEL": str(self._socket_path),
                "PYTHONUNBUFFERED": "1",
                "CUDA_VISIBLE_DEVICES": ",".join(self.gpus),
            }
        )
        return env

    async def start(self) -> bool:
        """Start the process; False (with the trial already reported as exited) if it can't."""
        self._last_call = time.monotonic()
        command = self._command()
        await self._emit(
            TrialStarted(
                **self._ids(),
                slots=len(self.slot_ids),
                gpus=self.gpus,
            )
        )
        if isinstance(command, str):
            self.log.error("cannot start the trial", reason=command)
            await self._add_line("rung", command)
            await self._flush()
            await self._exited(ExitReason.ERRORED, None, command)
            return False
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._socket_path))
        try:
            self.process = await self._spawner.spawn(
                command, cwd=self.run_dir, env=self._environment()
            )
        except (SpawnError, OSError) as exc:
            reason = f"the training process could not be started: {exc}"
            self.log.error("cannot start the trial", reason=reason)  # noqa: TRY400 (no trace)
            await self._add_line("rung", reason)
            await self._flush()
            await self._exited(ExitReason.ERRORED, None, reason)
            return False
        self.log.info(
            "trial started",
            pid=self.process.pid,
            gpus=self.gpus,
            length=self.cmd.length,
            checkpoint=self.cmd.latest_checkpoint,
        )
        return True

    # ------------------------------------------------------------------ the channel
    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called as the connection is made: the writer is known before any await, so
        that the end of the trial closes it even if its task never gets to run."""
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = await self._handle(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"error": f"bad request: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

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
                await self._emit(
                    MetricsReported(
                        **self._ids(),
                        group=request["group"],
                        steps_completed=int(request["steps_completed"]),
                        metrics=request["metrics"],
                    )
                )
                return {}
            case "checkpoint":
                await self._emit(
                    CheckpointSaved(
                        **self._ids(),
                        uuid=request["uuid"],
                        steps_completed=int(request["steps_completed"]),
                        metadata=request["metadata"],
                        size_bytes=int(request["size_bytes"]),
                    )
                )
                return {}
            case "should_preempt":
                return {"preempt": self.preempt_requested}
            case "early_exit":
                self.early_exit = str(request["reason"])
                return {}
            case "best_validation":
                return {"value": await self._best_validation()}
        return {"error": f"unknown request {request['op']!r}"}

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
    async def _add_line(self, stream: str, text: str) -> None:
        self._lines.append(LogLine.model_validate({"stream": stream, "text": text}))
        if len(self._lines) >= 100:
            await self._flush()

    async def _flush(self) -> None:
        async with self._flushing:
            if not self._lines:
                return
            lines, self._lines = self._lines, []
            await self._emit(LogLines(**self._ids(), lines=lines))

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while raw := await stream.readline():
            text = raw.decode(errors="replace").rstrip("\n")
            if name == "stderr":
                self._stderr_tail.append(text)
            await self._add_line(name, text)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._flush()

    # ------------------------------------------------------------------ the end
    def _classify(self, code: int) -> tuple[ExitReason, str]:
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
        """Stream logs until the process ends, then report how it ended."""
        if self.process is None or self.process.stdout is None or self.process.stderr is None:
            raise RuntimeError("wait() before a successful start()")
        flusher = asyncio.create_task(self._flush_periodically())
        watchdog = asyncio.create_task(self._watch_for_hangs())
        try:
            await asyncio.gather(
                self._pump(self.process.stdout, "stdout"),
                self._pump(self.process.stderr, "stderr"),
            )
            code = await self.process.wait()
        finally:
            flusher.cancel()
            watchdog.cancel()
            self._close_channel()  # also when the worker is cancelled while this waits
        reason, message = self._classify(code)
        if reason is ExitReason.USER_REQUESTED_STOP:
            await self._add_line("rung", f"warning: {message}")
        await self._flush()
        await self._exited(reason, code, message)
        return reason

    async def _watch_for_hangs(self) -> None:
        timeout = self.hang_timeout_s
        if not timeout:
            return
        while True:
            await asyncio.sleep(min(timeout / 4, 1.0))
            if self._awaiting_op or time.monotonic() - self._last_call < timeout:
                continue
            self.log.warning("killing a hung training process", hang_timeout_s=timeout)
            self.kill(f"no call to the Core API for {timeout:g} s (rung worker --hang-timeout)")
            return

    def _close_channel(self) -> None:
        """Close the socket server and every connection to it (idempotent)."""
        if self._server is not None:
            self._server.close()
        # A connection whose script died while it waited (for its next operation, say)
        # is never read again: end it, so that its socket is closed.
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        for connection in list(self._connections):
            connection.cancel()
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

    async def _exited(self, reason: ExitReason, code: int | None, message: str) -> None:
        self._close_channel()
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

    def kill(self, because: str) -> None:
        if self.process is not None and self.process.returncode is None:
            self.killed_because = because
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:  # not yet the leader of its own group: just it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
