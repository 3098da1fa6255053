"""The local file backend: JSON lines, each appended and fsync'd before it counts.

On open, a torn last line (a crash in the middle of a write) is dropped with a warning
and cut off the file; a record that is corrupt anywhere else is an error that names it.
Beside the log, ``snapshot.json`` holds the state after some record, so that a restart
folds only the records after it, and ``unsent.json``, present only while the broker is
unreachable, names the first record whose commands may not have been published yet.

Storage errors are final (fail-stop): once a write or an fsync has failed, the log
refuses every further append and sync with :class:`StorageError`, and never calls fsync
again; after a failed fsync the kernel may have dropped the dirty pages and report the
next one as a success. The searcher exits; a restart recovers from what is on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import IO, Any, Final

import structlog

from rung.broker.limits import MAX_REPLY_BYTES
from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.durable import fsync_directory, replace_durably
from rung.searcher.eventlog.reader import LogRecords, line_header, lost_race, read_log
from rung.searcher.eventlog.records import OwnerRecord, Record
from rung.searcher.eventlog.snapshots import (
    SNAPSHOT_FILE,
    StoredSnapshot,
    line_digest,
    matches,
    read_snapshot,
    write_snapshot,
)
from rung.searcher.failpoints import fsync_failure_point

__all__ = ["UNSENT_FILE", "FileEventLog", "LogClosedError", "StaleOwnerError", "StorageError"]

log = structlog.get_logger("rung.eventlog")

UNSENT_FILE: Final = "unsent.json"
# What another searcher appended is read in pieces of this size to judge it: the lines
# that lost a race are a few records; past them, the first record that counts ends it.
_FOREIGN_READ_BYTES: Final = 1 << 20


class StaleOwnerError(SearcherError):
    """Another searcher has written to this log since we last did: we no longer own it."""


class StorageError(SearcherError):
    """A write or an fsync of the log failed: the log takes nothing more (fail-stop)."""


class LogClosedError(SearcherError):
    """The log was closed (its experiment is no longer served here)."""


def _make_directories(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each entry fsync'd in its parent."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_directory(new.parent)


class FileEventLog:
    """Append-only; ``append`` returns once the record is on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _make_directories(path.parent)
        if not path.exists():
            path.touch()
            fsync_directory(path.parent)
        # The first storage error; from then on the log refuses everything.
        self.broken: StorageError | None = None
        # Set once another searcher's record counts in this log: nothing more is appended.
        self.stale: StaleOwnerError | None = None
        self.closed = False
        existing = read_log(path, repair=True)
        # What was on disk when the log was opened (for a restart to rebuild from).
        self.existing: LogRecords = existing
        self.seq = len(existing)
        owners = (existing[i] for i in range(self.seq) if existing.kind(i) == "owner")
        self.epoch = max((r.epoch for r in owners if isinstance(r, OwnerRecord)), default=0)
        self._snapshot_path = path.with_name(SNAPSHOT_FILE)
        snapshot = read_snapshot(self._snapshot_path)
        # The latest snapshot, when it belongs to this log.
        self.snapshot = snapshot if snapshot and matches(snapshot, existing) else None
        self._last_line = existing.raw(self.seq - 1) if self.seq else b""
        # Where each record appended since opening starts and ends, for reading them back.
        self._spans: list[tuple[int, int]] = []
        # Read too: to judge what another searcher appended.
        self._file: IO[bytes] = path.open("a+b")
        # Where this log's lines end: the file's size, but for lines still to be judged.
        self._size = existing.offset(self.seq)
        # What a previous process wrote may still be only in the page cache.
        try:
            self._fsync()
        except StorageError:
            self._file.close()
            raise
        self.durable_seq = self.seq
        self._syncing = asyncio.Lock()
        # Snapshot cadence: enough records, and at least as many bytes as a snapshot.
        covered = self.snapshot.seq if self.snapshot else 0
        self._since_snapshot = self.seq - covered
        self._bytes_since_snapshot = self._size - existing.offset(covered)
        self._snapshot_bytes = self._snapshot_path.stat().st_size if self.snapshot else 0
        self._unsent_path = path.with_name(UNSENT_FILE)
        # The first record whose commands may not have reached the broker, if any.
        self.unsent_from: int | None = self._read_unsent()

    def _read_unsent(self) -> int | None:
        try:
            value = json.loads(self._unsent_path.read_bytes())["from_seq"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # Unreadable (a crash while it was written): every record may be unsent.
            return 1
        return int(value) if isinstance(value, int) and value >= 1 else 1

    def mark_unsent(self, seq: int) -> None:
        """Remember, durably, that record ``seq``'s commands wait for the broker.

        Only the first mark counts until ``clear_unsent``: a restart re-sends the commands
        of that record and of every record after it, in order.
        """
        if self.unsent_from is not None and self.unsent_from <= seq:
            return
        self._check()
        self._check_owner()
        try:
            replace_durably(self._unsent_path, json.dumps({"from_seq": seq}).encode())
        except OSError as exc:
            raise self._storage_failed("writing the unsent marker", exc) from exc
        self.unsent_from = seq

    def clear_unsent(self) -> None:
        """Every command logged so far has been published."""
        if self.unsent_from is None:
            return
        self._check()
        self._check_owner()  # never the new owner's marker
        try:
            self._unsent_path.unlink(missing_ok=True)
            fsync_directory(self._unsent_path.parent)
        except OSError as exc:
            raise self._storage_failed("removing the unsent marker", exc) from exc
        self.unsent_from = None

    def take_over(self, owner: str, *, sync: bool = True) -> OwnerRecord:
        """Claim the log with the next epoch; the previous owner's next append fails."""
        record = OwnerRecord(seq=self.seq + 1, epoch=self.epoch + 1, owner=owner)
        self.append(record, sync=sync)
        return record

    def _check_owner(self) -> None:
        """StaleOwnerError once another searcher's record counts in this log."""
        if self.stale is not None:
            raise self.stale
        self._judge_foreign_lines(os.fstat(self._file.fileno()).st_size, whole=False)

    def _check(self) -> None:
        if self.broken is not None:
            raise self.broken
        if self.closed:
            raise LogClosedError(f"{self.path} is closed; its experiment is not served here")

    def _storage_failed(self, what: str, exc: OSError) -> StorageError:
        self.broken = StorageError(
            f"{what} of {self.path} failed ({exc}); the log takes nothing more: fix the "
            "storage, then restart the searcher, which recovers from what is on disk"
        )
        return self.broken

    def _fsync(self) -> None:
        self._check()
        try:
            fsync_failure_point()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise self._storage_failed("an fsync", exc) from exc

    async def sync_async(self) -> None:
        """Make every record appended so far durable, with the wait off the event loop.

        ``append(record, sync=False)`` puts a record in the file and in memory at once;
        this is the fsync that must come before anything the record caused is published
        or its input acknowledged. Concurrent callers share one sync where they can.
        """
        target = self.seq
        async with self._syncing:  # one fsync at a time; it covers all written before it
            self._check()
            if self.durable_seq >= target:
                return  # the sync just done covered this caller's records too
            covered = self.seq
            await asyncio.to_thread(self._fsync)
            self.durable_seq = max(self.durable_seq, covered)

    def append(self, record: Record, *, sync: bool = True) -> Record:
        self._check()
        if self.stale is not None:
            raise self.stale
        if record.seq != self.seq + 1:
            raise SearcherError(f"record {record.seq} appended after {self.seq}")
        line = record.model_dump_json().encode()
        fileno = self._file.fileno()
        self._judge_foreign_lines(os.fstat(fileno).st_size, whole=False)
        try:
            self._file.write(line + b"\n")
            self._file.flush()
            # O_APPEND put the line at the end, atomically: the offset is now its end.
            end = os.lseek(fileno, 0, os.SEEK_CUR)
        except OSError as exc:
            # Part of the line may be in the file: nothing may be appended after it.
            raise self._storage_failed("a write", exc) from exc
        start = end - len(line) - 1
        if start != self._size:
            # Another searcher appended between the check and the write: this line
            # counts only if every line before it lost.
            self._judge_foreign_lines(start, whole=True)
        self._spans.append((start, end))
        self.seq = record.seq
        if sync:
            self._fsync()
            self.durable_seq = self.seq
        self._size = end
        self._last_line = line
        self._since_snapshot += 1
        self._bytes_since_snapshot += len(line) + 1
        if isinstance(record, OwnerRecord):
            self.epoch = record.epoch
        return record

    def _judge_foreign_lines(self, stop: int, *, whole: bool) -> None:
        """Go past the lines another searcher appended between the end of this log and
        ``stop`` that lost a race (:func:`~rung.searcher.eventlog.reader.lost_race`).

        Two searchers on one shared state directory hold no lock between them: each
        checks that the log is as it left it before it appends, and the other may append
        between that check and the write. The line written first counts. At a line of
        another searcher that counts, this one no longer owns the log
        (:class:`StaleOwnerError`), and a line it wrote after it does not count. With
        ``whole`` the bytes up to ``stop`` are complete lines (they were appended before
        this searcher's line); else a last line may still be being written, and is left
        to judge after this searcher's write.
        """
        if stop == self._size:
            return  # nobody else wrote: the common case
        if stop < self._size:
            raise self._stale(
                f"{self.path} was cut under this searcher (it has {stop} bytes, this one "
                f"wrote {self._size}): another searcher repaired it"
            )
        fileno, position, pending = self._file.fileno(), self._size, b""
        while position + len(pending) < stop:
            offset = position + len(pending)
            try:
                chunk = os.pread(fileno, min(_FOREIGN_READ_BYTES, stop - offset), offset)
            except OSError as exc:
                raise self._storage_failed("a read", exc) from exc
            if not chunk:
                break
            pending += chunk
            while (cut := pending.find(b"\n")) >= 0:
                header = line_header(pending[:cut])
                if header is None or not lost_race(*header, self.seq):
                    raise self._stale(
                        f"{self.path} was written by another searcher (a record after this "
                        f"one's {self.seq} at byte {position}); this searcher no longer "
                        "owns the experiment"
                    )
                log.warning(
                    "skipping a line another searcher appended that lost a race",
                    path=str(self.path),
                    seq=header[0],
                )
                position += cut + 1
                pending = pending[cut + 1 :]
        if whole and position != stop:
            raise self._stale(f"{self.path} holds a line this searcher cannot judge")
        self._size = position

    def _stale(self, message: str) -> StaleOwnerError:
        self.stale = StaleOwnerError(message)
        return self.stale

    def _start(self, index: int) -> int:
        """Where record ``index`` (0-based) starts; the end of the log past the last."""
        opened = len(self.existing)
        if index < opened:
            return self.existing.offset(index)
        appended = index - opened
        return self._spans[appended][0] if appended < len(self._spans) else self._size

    def read_after(
        self, after_seq: int, limit: int, max_bytes: int = MAX_REPLY_BYTES
    ) -> list[bytes]:
        """The lines of up to ``limit`` records after record ``after_seq``, as written,
        and no more than ``max_bytes`` of them (:data:`~rung.broker.limits.MAX_REPLY_BYTES`),
        but always at least one: the reader asks again after the last it got."""
        first, last = after_seq, min(self.seq, after_seq + limit)
        if first >= last:
            return []
        begin = self._start(first)
        if self._start(last) - begin > max_bytes:
            # The most records after ``first`` that fit, found by bisection (at least one).
            low, high = first + 1, last
            while low < high:
                middle = (low + high + 1) // 2
                if self._start(middle) - begin <= max_bytes:
                    low = middle
                else:
                    high = middle - 1
            last = low
        opened = len(self.existing)
        lines = [self.existing.raw(index) for index in range(first, min(last, opened))]
        if last > opened:
            spans = self._spans[max(first, opened) - opened : last - opened]
            begin = spans[0][0]
            with self.path.open("rb") as handle:
                handle.seek(begin)
                data = handle.read(spans[-1][1] - begin)
            lines.extend(data[start - begin : end - begin - 1] for start, end in spans)
        return lines

    def snapshot_due(self, every: int) -> bool:
        """At least ``every`` records, and as many bytes as the last snapshot, since it.

        The second rule keeps the cost of snapshots proportional to the log's growth when
        the state is large: a restart then reads at most about twice the state's size.
        """
        return self._since_snapshot >= every and self._bytes_since_snapshot >= self._snapshot_bytes

    def capture_snapshot(self, experiment_id: str, state: dict[str, Any]) -> StoredSnapshot:
        """The state after the last record appended, to store once that record is
        durable (:meth:`store_snapshot`, in a thread: it writes and fsyncs a file)."""
        self._since_snapshot = self._bytes_since_snapshot = 0
        return StoredSnapshot(
            experiment_id=experiment_id,
            seq=self.seq,
            record_sha256=line_digest(self._last_line),
            state=state,
        )

    def store_snapshot(self, snapshot: StoredSnapshot) -> None:
        """Replace the snapshot file; never one ahead of the durable log."""
        self._check()
        self._check_owner()
        if self.durable_seq < snapshot.seq:
            raise SearcherError(
                f"snapshot after record {snapshot.seq} stored while the log is durable up "
                f"to {self.durable_seq}; sync the log first"
            )
        try:
            self._snapshot_bytes = write_snapshot(self._snapshot_path, snapshot)
        except OSError as exc:
            raise self._storage_failed("a snapshot write", exc) from exc
        if self.snapshot is None or snapshot.seq > self.snapshot.seq:
            self.snapshot = snapshot

    def write_snapshot(self, experiment_id: str, state: dict[str, Any]) -> StoredSnapshot:
        """Save the state after the last record appended, at once (syncing the log)."""
        if self.durable_seq < self.seq:  # never a snapshot ahead of the durable log
            self._fsync()
            self.durable_seq = self.seq
        snapshot = self.capture_snapshot(experiment_id, state)
        self.store_snapshot(snapshot)
        return snapshot

    async def aclose(self) -> None:
        """Close once no sync is under way, with what was appended made durable first:
        a sync waiting for the disk never finds its file closed under it."""
        async with self._syncing:
            if self.broken is None and not self.closed and self.durable_seq < self.seq:
                await asyncio.to_thread(self._fsync)
                self.durable_seq = self.seq
            self.close()

    def close(self) -> None:
        self.closed = True
        try:
            self._file.close()
        except OSError:
            # The buffered rest of a line that failed to write: nothing to keep of it.
            if self.broken is None:
                raise
