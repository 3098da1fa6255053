"""Reading a log fast: frame and number every record, parse only the ones asked for.

A restart needs the first record, the owner records and the tail after the snapshot; a
timeline or ``--verify`` needs every record. So reading is in two steps:

* ``read_log`` scans the file once. For each line it checks the framing (a JSON object
  on one line), the record number and the kind, from the line's header with one regular
  expression: about a microsecond per record. A torn last line is dropped with a warning
  (and cut off the file with ``repair``); a gap in the numbering or a line that is not a
  record is an error that names it. A line numbered at or below the records before it
  lost a race: two searchers on a shared state directory appended at once, and the line
  written first counts (see :func:`lost_race`). It is skipped, with a warning.
* ``LogRecords`` then parses and validates a record when it is read, and names the
  record when it does not validate. Reading every record validates every record.
"""

from __future__ import annotations

import os
import re
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, overload

import structlog
from pydantic import ValidationError

from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.records import Record, record_adapter

__all__ = [
    "LOST_RACE_WINDOW",
    "EventLogCorruptError",
    "LogRecords",
    "line_header",
    "lost_race",
    "read_log",
]

log = structlog.get_logger("rung.eventlog")

KINDS: Final = frozenset({"created", "input", "failed", "snapshot", "owner"})
# How far behind the records before it a line that lost a race can be numbered.
LOST_RACE_WINDOW: Final = 64
# A torn last line is cut off once the file stayed the same this long (and tried again
# this many times while it grows).
_SETTLE_S: Final = 0.1
_SETTLE_TRIES: Final = 50

# The header every record's JSON starts with, in the order the models write their fields.
_HEADER: Final = re.compile(rb'\{"v":1,"seq":(\d+),"at":[-+.0-9eE]+,"kind":"([a-z]+)"')


class EventLogCorruptError(SearcherError):
    """A record in the middle of a log cannot be read."""


def _parse(line: bytes) -> Record:
    return record_adapter.validate_json(line)


class LogRecords(Sequence[Record]):
    """The records of one log file, each parsed and validated when it is read."""

    def __init__(
        self,
        path: Path,
        data: bytes,
        starts: array[int],
        ends: array[int],
        kinds: list[str],
        *,
        skipped: tuple[int, ...] = (),
    ) -> None:
        self.path = path
        self._data = data
        self._starts = starts  # where each record starts, then where the lines read end
        self._ends = ends  # where each record's line ends, before its newline
        self._kinds = kinds
        # The line numbers of the lines that lost a race, skipped.
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self._kinds)

    def kind(self, index: int) -> str:
        """The record's kind, without parsing it."""
        return self._kinds[index]

    def offset(self, count: int) -> int:
        """Where the record after the first ``count`` records starts, in bytes; after
        the last, where the complete lines read end (past any skipped line)."""
        return self._starts[count]

    def contains(self, needle: bytes) -> bool:
        """Whether any record's line holds ``needle`` (a byte search, nothing parsed)."""
        return needle in self._data

    def raw(self, index: int) -> bytes:
        """The record's line as written, without its newline."""
        return self._data[self._starts[index] : self._ends[index]]

    def _record(self, index: int) -> Record:
        try:
            return _parse(self.raw(index))
        except (ValueError, ValidationError) as exc:
            line = self._data.count(b"\n", 0, self._starts[index]) + 1
            raise EventLogCorruptError(
                f"{self.path}: record {index + 1} (line {line}) is corrupt: "
                f"{str(exc).splitlines()[0]}; the records after it cannot be trusted"
            ) from None

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self._record(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._record(index)

    def __iter__(self) -> Iterator[Record]:
        return (self._record(i) for i in range(len(self)))


def _parses(line: bytes) -> bool:
    try:
        _parse(line)
    except (ValueError, ValidationError):
        return False
    return True


def lost_race(seq: int, kind: str, count: int) -> bool:
    """Whether a line holding record ``seq`` of ``kind``, after ``count`` records, lost a
    race.

    Two searchers on a shared state directory (no file lock between them) can append at
    the same moment, each numbering its record after the ones it knows. The line that
    lands first counts; a line numbered at or below the records before it was written by
    a searcher that did not know the last of them, and does not count. The writer checks
    where its line landed and acts on its record only when it counts. Such a searcher
    missed only what was appended while it wrote: a line more than
    :data:`LOST_RACE_WINDOW` records behind, or a ``created`` record (never written but
    first), is no race but a log put together wrongly, and an error.
    """
    return kind != "created" and 0 <= count - seq < LOST_RACE_WINDOW


def line_header(line: bytes) -> tuple[int, str] | None:
    """The number and kind of the record on ``line``; None when it is not a complete
    record."""
    match = _HEADER.match(line)
    if match is None or not line.endswith(b"}"):
        # Not in the form we write: parse it whole (older writers, hand-made logs).
        try:
            record = _parse(line)
        except (ValueError, ValidationError):
            return None
        return record.seq, str(record.kind)
    kind = match[2].decode()
    return (int(match[1]), kind) if kind in KINDS else None


def read_log(path: Path, *, repair: bool = False) -> LogRecords:
    """Every record of the log; a torn last line is dropped (and cut off with ``repair``),
    and a line that lost a race between two searchers is skipped.

    With ``repair``, a torn last line is cut off only once the file has stayed the same
    for :data:`_SETTLE_S`: on a shared state directory it may be another searcher's write
    under way, seen half done, which must not be cut."""
    for _ in range(_SETTLE_TRIES):
        data = path.read_bytes()
        records, torn_at = _scan(path, data)
        if torn_at is None or not repair:
            return records
        time.sleep(_SETTLE_S)
        if path.stat().st_size != len(data):
            continue  # it grew: a write under way, not a torn one; read it again
        with path.open("r+b") as handle:
            handle.truncate(torn_at)
            os.fsync(handle.fileno())
        return records
    raise EventLogCorruptError(
        f"{path}: its last line kept changing for {_SETTLE_TRIES * _SETTLE_S:.0f} s while it "
        "was read: another searcher is appending to it; stop that one, or open the log "
        "without repairing it"
    )


def _scan(path: Path, data: bytes) -> tuple[LogRecords, int | None]:
    """The records in ``data``, and where a torn last line starts (None without one)."""
    starts, ends = array("q"), array("q")
    kinds: list[str] = []
    skipped: list[int] = []
    position, size, line_number = 0, len(data), 0
    torn = b""
    while position < size:
        end = data.find(b"\n", position)
        if end < 0:  # the last write stopped before its newline
            torn = data[position:]
            break
        line = data[position:end]
        line_number += 1
        header = line_header(line)
        if header is None:
            if end + 1 < size:
                raise EventLogCorruptError(
                    f"{path}: record {len(kinds) + 1} (line {line_number}) is corrupt: it "
                    "is not a complete record; the records after it cannot be trusted"
                )
            torn = line  # a torn final line that happens to end in a newline
            break
        seq, kind = header
        if seq == len(kinds) + 1:
            kinds.append(kind)
            starts.append(position)
            ends.append(end)
        elif lost_race(seq, kind, len(kinds)):
            skipped.append(line_number)
        else:
            raise EventLogCorruptError(
                f"{path}: line {line_number} holds record {seq} after record {len(kinds)}; "
                "records must be numbered 1, 2, 3... without gaps"
            )
        position = end + 1
    if position and not torn:
        # The last line is where a crash would have left a broken write: check it whole.
        last = data.rfind(b"\n", 0, position - 1) + 1
        if not _parses(data[last : position - 1]):
            if skipped and skipped[-1] == line_number:
                skipped.pop()
            else:
                kinds.pop()
                starts.pop()
                ends.pop()
            position = last
            torn = data[position:]
    if torn:
        log.warning(
            "dropping a torn last record (a crash during a write)",
            path=str(path),
            record=len(kinds) + 1,
            bytes=len(torn),
        )
    if skipped:
        log.warning(
            "skipped lines that lost a race between two searchers (the line written first counts)",
            path=str(path),
            lines=skipped[:10],
            count=len(skipped),
        )
    starts.append(position)
    records = LogRecords(path, data, starts, ends, kinds, skipped=tuple(skipped))
    return records, position if torn else None
