"""The experiment event log: records, the file backend, and replay."""

from searcher.eventlog.file import EventLogCorruptError, FileEventLog, StaleOwnerError, read_log
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

__all__ = [
    "LOG_VERSION",
    "CommandRecord",
    "CreatedRecord",
    "Divergence",
    "EventLogCorruptError",
    "FailedRecord",
    "FileEventLog",
    "InputRecord",
    "OwnerRecord",
    "Record",
    "Replayed",
    "SnapshotRecord",
    "StaleOwnerError",
    "read_log",
    "replay",
]
