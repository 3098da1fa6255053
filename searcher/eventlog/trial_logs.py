"""What trials' processes wrote, stored apart from the event log.

Log lines decide nothing, so they are not records of the event log: each experiment keeps
them in ``trial-logs.jsonl`` beside ``events.jsonl``, one JSON object a line (``t`` the
trial, ``a`` the attempt, ``s`` the stream, ``x`` the text, and ``r`` the rank where the
line has one; the first line of each ``log_lines`` event also has its message id
``m``). Each event is one ``write`` to the file (opened for it and closed: nothing stays
open), never fsync'd: a searcher that
crashes keeps what the kernel has; a machine that crashes may lose the last lines, which
is the price of not waiting for the disk once per line.

The store is bounded: once it holds :data:`MAX_TRIAL_LOG_BYTES`, further lines are
dropped and counted, and a marker line (stream ``rung``) says so, once per trial attempt,
within a small reserve above the limit. A ``log_lines`` event delivered twice (same
message id) is stored once: the store keeps the ids it took, compact
(:class:`~rung.searcher.eventlog.seen.SeenIds`), and after a restart it reads them back
from the end of the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import structlog

from rung.broker.limits import MAX_LOG_LINE_CHARS, MAX_REPLY_BYTES, MAX_TRIAL_LOG_BYTES
from rung.broker.schemas import LogLines
from rung.searcher.eventlog.seen import SeenIds

__all__ = [
    "MAX_TRIAL_LOG_BYTES",
    "TRIAL_LOG_FILE",
    "LogPage",
    "TrialLogStore",
]

log = structlog.get_logger("rung.eventlog")

TRIAL_LOG_FILE: Final = "trial-logs.jsonl"
# Room above the limit for the markers that say lines were dropped.
_MARKER_RESERVE: Final = 64 * 1024
# How much of the file's end is read back after a restart, for the ids it holds.
_TAIL_BYTES: Final = 4 * 1024 * 1024


def _entry(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


@dataclass
class LogPage:
    """One page of stored lines: each a dict (trial_id, attempt, stream, text); ``next``
    is the cursor to read on from; ``more`` whether the store had more when read."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    next: int = 0
    more: bool = False


class TrialLogStore:
    """One experiment's trial log lines, in ``path``; opened at its first use."""

    def __init__(
        self, path: Path, *, experiment_id: str = "", max_bytes: int = MAX_TRIAL_LOG_BYTES
    ) -> None:
        self.path = path
        self.experiment_id = experiment_id
        self.max_bytes = max_bytes
        # Lines dropped since this searcher opened the store (the limit, a write error).
        self.dropped = 0
        self._opened = False
        self._size = 0
        self._seen: SeenIds | None = None
        self._marked: set[tuple[int, int]] = set()
        self._broken: str | None = None

    @property
    def size(self) -> int:
        """Bytes in the store (as this searcher wrote or found them)."""
        if not self._opened:
            try:
                return self.path.stat().st_size
            except OSError:
                return 0
        return self._size

    # ------------------------------------------------------------------ writing
    def _open(self) -> None:
        """At the first append: the size, and the ids of the lines already stored."""
        if self._opened:
            return
        try:
            self._size = self.path.stat().st_size
        except FileNotFoundError:
            self._size = 0
        self._opened = True
        self._seen = SeenIds(self.experiment_id)
        if self._size:
            self._seen.update(_ids_in_tail(self.path, self._size))

    def append(self, message_id: str, body: LogLines) -> bool:
        """Store the lines of one ``log_lines`` event; False if its id was stored already."""
        if self._broken is not None:
            self.dropped += len(body.lines)
            return True
        try:
            self._open()
        except OSError as exc:
            self._fail(exc)
            self.dropped += len(body.lines)
            return True
        assert self._seen is not None  # noqa: S101 (opened above)
        if message_id in self._seen:
            return False
        self._seen.add(message_id)
        chunk, kept = self._encode(message_id, body)
        dropped = len(body.lines) - kept
        if dropped:
            self.dropped += dropped
            chunk += self._marker(body)
        if chunk:
            try:
                with self.path.open("ab", buffering=0) as handle:
                    handle.write(chunk)
            except OSError as exc:
                self._fail(exc)
                self.dropped += kept
                return True
            self._size += len(chunk)
        return True

    def _encode(self, message_id: str, body: LogLines) -> tuple[bytes, int]:
        """The lines that fit under the limit, encoded, and how many they are."""
        parts: list[bytes] = []
        room = self.max_bytes - self._size
        for index, line in enumerate(body.lines):
            data: dict[str, Any] = {"m": message_id} if index == 0 else {}
            data.update(
                t=body.trial_id, a=body.attempt, s=line.stream, x=line.text[:MAX_LOG_LINE_CHARS]
            )
            if line.rank is not None:
                data["r"] = line.rank
            encoded = _entry(data)
            if len(encoded) > room:
                return b"".join(parts), index
            room -= len(encoded)
            parts.append(encoded)
        return b"".join(parts), len(body.lines)

    def _marker(self, body: LogLines) -> bytes:
        """The line that says a trial attempt's lines are dropped, once per attempt."""
        key = (body.trial_id, body.attempt)
        if key in self._marked:
            return b""
        marker = _entry(
            {
                "t": body.trial_id,
                "a": body.attempt,
                "s": "rung",
                "x": (
                    f"[rung] this experiment's trial logs reached their limit "
                    f"({self.max_bytes // (1024 * 1024)} MiB, MAX_TRIAL_LOG_BYTES): later "
                    f"lines of trial {body.trial_id} are dropped"
                ),
            }
        )
        if self._size + len(marker) > self.max_bytes + _MARKER_RESERVE:
            return b""
        self._marked.add(key)
        log.warning(
            "a trial's log lines are dropped: the experiment's trial logs are full",
            experiment_id=self.experiment_id,
            trial_id=body.trial_id,
            limit_bytes=self.max_bytes,
        )
        return marker

    def _fail(self, exc: OSError) -> None:
        """A write failed: the lines are dropped from here on (they decide nothing)."""
        if self._broken is None:
            self._broken = str(exc)
            log.error(
                "cannot write the trial log store; trial log lines are dropped from now on",
                path=str(self.path),
                error=str(exc),
            )

    def close(self) -> None:
        """Nothing stays open between appends; kept for the host's symmetry."""

    # ------------------------------------------------------------------ reading
    def read(
        self,
        after: int = 0,
        *,
        trial_id: int | None = None,
        rank: int | None = None,
        limit: int = 1000,
        max_bytes: int = MAX_REPLY_BYTES,
    ) -> LogPage:
        """Lines after cursor ``after`` (0: from the start), at most ``limit`` of them
        (of trial ``trial_id`` only, and of rank ``rank`` only, when given), from at most
        ``max_bytes`` of the file."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return LogPage(next=0)
        with handle:
            size = handle.seek(0, os.SEEK_END)
            start = _line_start(handle, min(after, size))
            handle.seek(start)
            chunk = handle.read(max(max_bytes, 1))
        end = chunk.rfind(b"\n")
        if end < 0:  # the last line is being written; or a line above a whole page
            whole = len(chunk) >= max_bytes
            return LogPage(next=start + len(chunk) if whole else start, more=whole)
        page = LogPage(next=start)
        # Every line of a trial holds "t":<id>, (its first key, or the one after "m"):
        # lines of other trials are passed over unparsed.
        mark = b'"t":%d,' % trial_id if trial_id is not None else b""
        rank_mark = b'"r":%d' % rank if rank is not None else b""
        for raw in chunk[: end + 1].splitlines():
            page.next += len(raw) + 1
            if mark not in raw or rank_mark not in raw:
                continue
            line = _parse(raw)
            if line is None or (trial_id is not None and line["trial_id"] != trial_id):
                continue
            if rank is not None and line.get("rank") != rank:
                continue
            page.lines.append(line)
            if len(page.lines) >= limit:
                break
        page.more = page.next < size
        return page


def _line_start(handle: BinaryIO, position: int) -> int:
    """``position`` if a line starts there, else where the next one starts."""
    if position <= 0:
        return 0
    handle.seek(position - 1)
    while True:
        block = handle.read(65536)
        if not block:
            return handle.tell()
        newline = block.find(b"\n")
        if newline >= 0:
            return handle.tell() - len(block) + newline + 1


def _parse(raw: bytes) -> dict[str, Any] | None:
    """One stored line as the reader gets it; None for a line that is not one (a write
    torn by a crash)."""
    try:
        data = json.loads(raw)
        line = {
            "trial_id": int(data["t"]),
            "attempt": int(data["a"]),
            "stream": str(data["s"]),
            "text": str(data["x"]),
        }
        if "r" in data:  # only a distributed trial's lines have a rank
            line["rank"] = int(data["r"])
    except (ValueError, KeyError, TypeError):
        return None
    return line


def _ids_in_tail(path: Path, size: int) -> list[str]:
    """The message ids in the last lines of the file (after a restart: a redelivered
    event is not stored twice)."""
    with path.open("rb") as handle:
        begin = max(0, size - _TAIL_BYTES)
        handle.seek(begin)
        data = handle.read(size - begin)
    lines = data.split(b"\n")
    if begin > 0:
        lines = lines[1:]  # the first is cut
    ids = []
    for raw in lines:
        if b'"m":' not in raw:
            continue
        try:
            message_id = json.loads(raw).get("m")
        except ValueError:
            continue
        if isinstance(message_id, str):
            ids.append(message_id)
    return ids
