"""The experiment event log: records, the file backend, and replay."""

from searcher.eventlog.file import FileEventLog, StaleOwnerError
from searcher.eventlog.reader import EventLogCorruptError, LogRecords, read_log
from searcher.eventlog.records import (
    LOG_VERSION,
    CommandRecord,
    CreatedRecord,
    FailedRecord,
    InputRecord,
    OwnerRecord,
    Record,
    SnapshotRecord,
)
from searcher.eventlog.replay import Divergence, Replayed, replay
from searcher.eventlog.snapshots import SNAPSHOT_FILE, StoredSnapshot, read_snapshot

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
