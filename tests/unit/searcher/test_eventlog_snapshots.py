"""Snapshot files beside the log, and the lazy reader a restart uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from rung.searcher.eventlog import (
    SNAPSHOT_FILE,
    EventLogCorruptError,
    FileEventLog,
    InputRecord,
    read_log,
    read_snapshot,
    replay,
)

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
GOLDEN_LOGS = sorted(GOLDEN.glob("*.v1.jsonl"))
# The custom search method of the failed experiment's golden log.
GOLDEN_CONTEXTS = GOLDEN / "contexts"


def _copy_head(path: Path, tmp_path: Path, records: int) -> Path:
    """The first ``records`` records of a golden log, as a fresh log file."""
    lines = path.read_bytes().split(b"\n")[:records]
    target = tmp_path / "events.jsonl"
    target.write_bytes(b"\n".join(lines) + b"\n")
    return target


def _snapshot_at(path: Path, tmp_path: Path, after: int) -> Path:
    """A log holding the golden log's first ``after`` records, with a snapshot after them."""
    log = _copy_head(path, tmp_path, after)
    state = replay(read_log(log), context_root=GOLDEN_CONTEXTS, verify=True)
    opened = FileEventLog(log)
    opened.write_snapshot("exp", {**state.run.snapshot(), "seen": sorted(state.seen)})
    opened.close()
    # Then the rest of the log arrives, as it would have after the snapshot.
    rest = path.read_bytes().split(b"\n")[after:]
    with log.open("ab") as handle:
        handle.write(b"\n".join(rest))
    return log


@pytest.mark.parametrize("path", GOLDEN_LOGS, ids=lambda p: p.name)
def test_a_snapshot_file_plus_the_tail_gives_the_whole_log_state(
    path: Path, tmp_path: Path
) -> None:
    whole = replay(read_log(path), context_root=GOLDEN_CONTEXTS, verify=True)
    total = len(read_log(path))
    for after in (2, total // 2, total):
        directory = tmp_path / str(after)
        directory.mkdir()
        log = _snapshot_at(path, directory, after)
        opened = FileEventLog(log)
        opened.close()
        assert opened.snapshot is not None
        assert opened.snapshot.seq == after
        fast = replay(opened.existing, snapshot=opened.snapshot, context_root=GOLDEN_CONTEXTS)
        assert fast.run.snapshot() == whole.run.snapshot()
        assert fast.seen == whole.seen
        assert fast.records == whole.records
        # The last input's commands are what a restart re-sends, even when the snapshot
        # already covers that input.
        assert fast.last_input == whole.last_input


def test_a_snapshot_of_another_log_is_ignored(tmp_path: Path) -> None:
    log = _snapshot_at(GOLDEN / "random.v1.jsonl", tmp_path, 20)
    # Someone restores an older or different log over this one: record 20 changes.
    lines = log.read_bytes().split(b"\n")
    record = json.loads(lines[19])
    record["at"] = 12345.0
    lines[19] = json.dumps(record, separators=(",", ":")).encode()
    log.write_bytes(b"\n".join(lines))
    opened = FileEventLog(log)
    opened.close()
    assert read_snapshot(log.with_name(SNAPSHOT_FILE)) is not None
    assert opened.snapshot is None  # it does not belong to this log any more
    whole = replay(read_log(GOLDEN / "random.v1.jsonl"), verify=True)
    assert replay(opened.existing).run.snapshot() == whole.run.snapshot()


def test_an_unreadable_snapshot_is_ignored_with_a_warning(tmp_path: Path) -> None:
    log = _snapshot_at(GOLDEN / "asha.v1.jsonl", tmp_path, 10)
    log.with_name(SNAPSHOT_FILE).write_bytes(b'{"v": 1, "experiment_id": "exp", "se')
    with structlog.testing.capture_logs() as logs:
        opened = FileEventLog(log)
    opened.close()
    assert opened.snapshot is None
    assert any("ignoring an unreadable snapshot" in entry["event"] for entry in logs)


def test_snapshots_are_due_after_enough_records_and_enough_bytes(tmp_path: Path) -> None:
    log = FileEventLog(_copy_head(GOLDEN / "random.v1.jsonl", tmp_path, 1))
    records = list(read_log(GOLDEN / "random.v1.jsonl"))
    assert not log.snapshot_due(3)
    for record in records[1:4]:
        log.append(record)
    assert log.snapshot_due(3)
    # A snapshot bigger than three records: three more records are not enough bytes.
    log.write_snapshot("exp", {"padding": "x" * 10_000})
    for record in records[4:7]:
        log.append(record)
    assert not log.snapshot_due(3)
    log.close()


def test_a_record_with_a_sound_header_and_a_corrupt_body_is_named_when_read(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.jsonl"
    lines = (GOLDEN / "random.v1.jsonl").read_bytes().split(b"\n")
    record = json.loads(lines[9])
    assert record["kind"] == "input"
    record["message_id"] = 42  # valid JSON, a well-formed header, an invalid record
    lines[9] = json.dumps(record, separators=(",", ":")).encode()
    log.write_bytes(b"\n".join(lines))
    records = read_log(log)  # the scan checks framing and numbering only
    assert records.kind(9) == "input"
    assert isinstance(records[8], InputRecord)
    with pytest.raises(EventLogCorruptError, match="record 10 \\(line 10\\) is corrupt"):
        _ = records[9]
    with pytest.raises(EventLogCorruptError, match="record 10"):
        replay(records, verify=True)


def test_a_record_in_another_layout_is_read_whole(tmp_path: Path) -> None:
    """A hand-edited or re-serialised record (spaces, other key order) still reads."""
    log = tmp_path / "events.jsonl"
    lines = (GOLDEN / "single.v1.jsonl").read_bytes().split(b"\n")
    record = json.loads(lines[2])
    lines[2] = json.dumps(dict(reversed(record.items()))).encode()
    log.write_bytes(b"\n".join(lines))
    records = read_log(log)
    assert list(records) == list(read_log(GOLDEN / "single.v1.jsonl"))
