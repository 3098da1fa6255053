"""Snapshots: the whole state after one record, in a file beside the log.

A snapshot is a cache of the fold, never a source of truth. It names the record it
follows and that record's SHA-256, so a snapshot that does not belong to the log (a log
restored from a backup, a snapshot from another machine) is noticed and ignored: the
state is then folded from the log's start, which is slower but gives the same result.

It lives in its own file, replaced atomically (write, fsync, rename, fsync the
directory), rather than in the log: the state grows with the experiment, and a copy of
it every N records would make the log grow with the square of its length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rung.searcher.eventlog.durable import replace_durably
from rung.searcher.eventlog.reader import LogRecords
from rung.searcher.eventlog.records import Record

__all__ = ["SNAPSHOT_FILE", "StoredSnapshot", "matches", "read_snapshot", "write_snapshot"]

log = structlog.get_logger("rung.eventlog")

SNAPSHOT_FILE: Final = "snapshot.json"


class StoredSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    experiment_id: str
    seq: int = Field(ge=1, description="the last record the state includes")
    record_sha256: str = Field(description="SHA-256 of that record's line, as written")
    state: dict[str, Any]


def line_digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _line(records: Sequence[Record], index: int) -> bytes:
    if isinstance(records, LogRecords):
        return records.raw(index)
    return records[index].model_dump_json().encode()


def matches(snapshot: StoredSnapshot, records: Sequence[Record]) -> bool:
    """Whether the snapshot follows record ``snapshot.seq`` of exactly these records."""
    return snapshot.seq <= len(records) and snapshot.record_sha256 == line_digest(
        _line(records, snapshot.seq - 1)
    )


def read_snapshot(path: Path) -> StoredSnapshot | None:
    """The snapshot in ``path``; None, with a warning, when it is missing or unreadable."""
    try:
        return StoredSnapshot.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        log.warning(
            "ignoring an unreadable snapshot; the state is folded from the log's start",
            path=str(path),
            error=str(exc).splitlines()[0],
        )
        return None


def write_snapshot(path: Path, snapshot: StoredSnapshot) -> int:
    """Replace the snapshot atomically; return its size in bytes."""
    data = snapshot.model_dump_json().encode()
    replace_durably(path, data)
    return len(data)
