"""Reading a log fast: frame and number every record, parse only the ones asked for.

A restart needs the first record, the owner records and the tail after the snapshot; a
timeline or ``--verify`` needs every record. So reading is in two steps:

* ``read_log`` scans the file once. For each line it checks the framing (a JSON object
  on one line), the record number and the kind, from the line's header with one regular
  expression: about a microsecond per record. A torn last line is dropped with a warning
  (and cut off the file with ``repair``); a gap in the numbering or a line that is not a
  record is an error that names it.
* ``LogRecords`` then parses and validates a record when it is read, and names the
  record when it does not validate. Reading every record validates every record.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, overload

import structlog
from pydantic import ValidationError

from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.records import Record, record_adapter

__all__ = ["EventLogCorruptError", "LogRecords", "read_log"]

log = structlog.get_logger("rung.eventlog")

KINDS: Final = frozenset({"created", "input", "failed", "snapshot", "owner"})

# The header every record's JSON starts with, in the order the models write their fields.
_HEADER: Final = re.compile(rb'\{"v":1,"seq":(\d+),"at":[-+.0-9eE]+,"kind":"([a-z]+)"')


class EventLogCorruptError(SearcherError):
    """A record in the middle of a log cannot be read."""


def _parse(line: bytes) -> Record:
    return record_adapter.validate_json(line)


class LogRecords(Sequence[Record]):
    """The records of one log file, each parsed and validated when it is read."""

    def __init__(self, path: Path, data: bytes, starts: array[int], kinds: list[str]) -> None:
        self.path = path
        self._data = data
        self._starts = starts  # where each record starts, then where the last one ended
        self._kinds = kinds

    def __len__(self) -> int:
        return len(self._kinds)

    def kind(self, index: int) -> str:
        """The record's kind, without parsing it."""
        return self._kinds[index]

    def offset(self, count: int) -> int:
        """Where the record after the first ``count`` records starts, in bytes."""
        return self._starts[count]

    def contains(self, needle: bytes) -> bool:
        """Whether any record's line holds ``needle`` (a byte search, nothing parsed)."""
        return needle in self._data

    def raw(self, index: int) -> bytes:
        """The record's line as written, without its newline."""
        return self._data[self._starts[index] : self._starts[index + 1] - 1]

    def _record(self, index: int) -> Record:
        try:
            return _parse(self.raw(index))
        except (ValueError, ValidationError) as exc:
            number = index + 1
            raise EventLogCorruptError(
                f"{self.path}: record {number} (line {number}) is corrupt: "
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


def _header(path: Path, line: bytes, number: int) -> str | None:
    """The kind of a well-formed record numbered ``number``; None when the line is broken."""
    match = _HEADER.match(line)
    if match is None or not line.endswith(b"}"):
        # Not in the form we write: parse it whole (older writers, hand-made logs).
        try:
            record = _parse(line)
        except (ValueError, ValidationError):
            return None
        seq, kind = record.seq, str(record.kind)
    else:
        seq, kind = int(match[1]), match[2].decode()
        if kind not in KINDS:
            return None
    if seq != number:
        raise EventLogCorruptError(
            f"{path}: line {number} holds record {seq}; records must be numbered "
            "1, 2, 3... without gaps"
        )
    return kind


def read_log(path: Path, *, repair: bool = False) -> LogRecords:
    """Every record of the log; a torn last line is dropped (and cut off with ``repair``)."""
    data = path.read_bytes()
    starts = array("q", [0])
    kinds: list[str] = []
    position, size = 0, len(data)
    torn = b""
    while position < size:
        end = data.find(b"\n", position)
        if end < 0:  # the last write stopped before its newline
            torn = data[position:]
            break
        line = data[position:end]
        kind = _header(path, line, len(kinds) + 1)
        if kind is None:
            if end + 1 < size:
                number = len(kinds) + 1
                raise EventLogCorruptError(
                    f"{path}: record {number} (line {number}) is corrupt: it is not a "
                    "complete record; the records after it cannot be trusted"
                )
            torn = line  # a torn final line that happens to end in a newline
            break
        kinds.append(kind)
        position = end + 1
        starts.append(position)
    if kinds and not torn and not _parses(data[starts[-2] : starts[-1] - 1]):
        # The last line is where a crash would have left a broken write: check it whole.
        kinds.pop()
        starts.pop()
        position = starts[-1]
        torn = data[position:]
    if torn:
        log.warning(
            "dropping a torn last record (a crash during a write)",
            path=str(path),
            record=len(kinds) + 1,
            bytes=len(torn),
        )
        if repair:
            with path.open("r+b") as handle:
                handle.truncate(position)
                os.fsync(handle.fileno())
    return LogRecords(path, data, starts, kinds)
