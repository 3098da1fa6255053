"""The experiment event log: records, the file backend, and replay."""

from rung.searcher.eventlog.file import FileEventLog, StaleOwnerError
from rung.searcher.eventlog.reader import EventLogCorruptError, LogRecords, read_log
from rung.searcher.eventlog.records import (
    LOG_VERSION,
    CommandRecord,
    CreatedRecord,
    FailedRecord,
    InputRecord,
    OwnerRecord,
    Record,
    SnapshotRecord,
)
from rung.searcher.eventlog.replay import Divergence, Replayed, replay
from rung.searcher.eventlog.snapshots import SNAPSHOT_FILE, StoredSnapshot, read_snapshot

__all__ = [
    "LOG_VERSION",
    "SNAPSHOT_FILE",
    "CommandRecord",
    "CreatedRecord",
    "Divergence",
    "EventLogCorruptError",
    "FailedRecord",
    "FileEventLog",
    "InputRecord",
    "LogRecords",
    "OwnerRecord",
    "Record",
    "Replayed",
    "SnapshotRecord",
    "StaleOwnerError",
    "StoredSnapshot",
    "read_log",
    "read_snapshot",
    "replay",
]
