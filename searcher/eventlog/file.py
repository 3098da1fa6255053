"""The local file backend: JSON lines, each appended and fsync'd before it counts.

On open, a torn last line (a crash in the middle of a write) is dropped with a warning
and cut off the file; a record that is corrupt anywhere else is an error that names it.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from pydantic import ValidationError

from searcher.errors import SearcherError
from searcher.eventlog.records import OwnerRecord, Record, record_adapter

__all__ = ["EventLogCorruptError", "FileEventLog", "StaleOwnerError", "read_log"]

log = structlog.get_logger("rung.eventlog")


class EventLogCorruptError(SearcherError):
    """A record in the middle of a log cannot be read."""


class StaleOwnerError(SearcherError):
    """Another searcher has written to this log since we last did: we no longer own it."""


def _parse(line: bytes) -> Record:
    return record_adapter.validate_json(line)


def read_log(path: Path, *, repair: bool = False) -> list[Record]:
    """Every record of the log; a torn last line is dropped (and cut off with ``repair``)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    records: list[Record] = []
    good_bytes = 0
    for number, line in enumerate(complete, start=1):
        try:
            record = _parse(line)
        except (ValueError, ValidationError) as exc:
            last = number == len(complete) and not tail
            if not last:
                raise EventLogCorruptError(
                    f"{path}: record {number} (line {number}) is corrupt: "
                    f"{str(exc).splitlines()[0]}; the records after it cannot be trusted"
                ) from None
            tail = line  # a torn final line that happens to end in a newline
            break
        if record.seq != number:
            raise EventLogCorruptError(
                f"{path}: line {number} holds record {record.seq}; records must be numbered "
                "1, 2, 3... without gaps"
            )
        records.append(record)
        good_bytes += len(line) + 1
    if tail:
        log.warning(
            "dropping a torn last record (a crash during a write)",
            path=str(path),
            record=len(records) + 1,
            bytes=len(tail),
        )
        if repair:
            with path.open("r+b") as handle:
                handle.truncate(good_bytes)
                os.fsync(handle.fileno())
    return records


class FileEventLog:
    """Append-only; ``append`` returns once the record is on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = read_log(path, repair=True) if path.exists() else []
        # What was on disk when the log was opened (for a restart to rebuild from).
        self.existing: list[Record] = existing
        self.seq = existing[-1].seq if existing else 0
        self.epoch = max((r.epoch for r in existing if isinstance(r, OwnerRecord)), default=0)
        self._file = path.open("ab")
        self._size = os.fstat(self._file.fileno()).st_size

    def take_over(self, owner: str) -> OwnerRecord:
        """Claim the log with the next epoch; the previous owner's next append fails."""
        record = OwnerRecord(seq=self.seq + 1, epoch=self.epoch + 1, owner=owner)
        self.append(record)
        return record

    def append(self, record: Record) -> Record:
        if record.seq != self.seq + 1:
            raise SearcherError(f"record {record.seq} appended after {self.seq}")
        size = os.fstat(self._file.fileno()).st_size
        if size != self._size:
            raise StaleOwnerError(
                f"{self.path} was written by another searcher (it has {size} bytes, this one "
                f"wrote {self._size}); this searcher no longer owns the experiment"
            )
        data = record.model_dump_json().encode() + b"\n"
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.seq = record.seq
        self._size += len(data)
        if isinstance(record, OwnerRecord):
            self.epoch = record.epoch
        return record

    def close(self) -> None:
        self._file.close()
