"""The experiment event log: records, the file backend, and replay; the compact set of
applied message ids, and the trial log store kept apart from the log."""

from rung.searcher.eventlog.file import FileEventLog, StaleOwnerError
from rung.searcher.eventlog.reader import EventLogCorruptError, LogRecords, lost_race, read_log
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
from rung.searcher.eventlog.seen import SeenIds
from rung.searcher.eventlog.snapshots import SNAPSHOT_FILE, StoredSnapshot, read_snapshot
from rung.searcher.eventlog.trial_logs import TRIAL_LOG_FILE, TrialLogStore

__all__ = [
    "LOG_VERSION",
    "SNAPSHOT_FILE",
    "TRIAL_LOG_FILE",
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
    "SeenIds",
    "SnapshotRecord",
    "StaleOwnerError",
    "StoredSnapshot",
    "TrialLogStore",
    "lost_race",
    "read_log",
    "read_snapshot",
    "replay",
]
