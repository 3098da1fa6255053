"""Two searchers appending to one log at the same moment (a shared state directory, no
file lock between them): the line written first counts, the other is skipped by every
reader, and its writer learns that its record does not count before it acts on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rung.searcher.eventlog import (
    EventLogCorruptError,
    FileEventLog,
    OwnerRecord,
    SnapshotRecord,
    StaleOwnerError,
    lost_race,
    read_log,
    replay,
)
from rung.searcher.eventlog.reader import LOST_RACE_WINDOW

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "single.v1.jsonl"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    target = tmp_path / "events.jsonl"
    target.write_bytes(GOLDEN.read_bytes())
    return target


class _WriteHook:
    """The log's file, with ``between`` run once just before the next write lands: what
    another searcher does between this one's check of the log and its append."""

    def __init__(self, inner: Any, between: Callable[[], object]) -> None:
        self._inner = inner
        self._between: Callable[[], object] | None = between

    def write(self, data: bytes) -> int:
        if self._between is not None:
            between, self._between = self._between, None
            between()
        return int(self._inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _race(log: FileEventLog, between: Callable[[], object]) -> None:
    log._file = _WriteHook(log._file, between)  # type: ignore[assignment]


def _note(log: FileEventLog) -> SnapshotRecord:
    return SnapshotRecord(seq=log.seq + 1, state={})


def test_the_rule_a_line_at_or_a_little_below_the_count_lost() -> None:
    assert lost_race(3, "input", 3)
    assert lost_race(1, "owner", 3)
    assert not lost_race(4, "input", 3)  # the next record: it counts
    assert not lost_race(1, "input", 1 + LOST_RACE_WINDOW)  # too far behind: corrupt
    assert not lost_race(1, "created", 3)  # a log begins once


def test_a_takeover_landing_first_fences_the_record_written_after_it(path: Path) -> None:
    first = FileEventLog(path)
    first.take_over("machine-a/1")
    count = first.seq
    second = FileEventLog(path)
    # The second takes the log over between the first's check and its write.
    _race(first, lambda: second.take_over("machine-b/7"))
    with pytest.raises(StaleOwnerError, match="was written by another searcher"):
        first.append(_note(first))
    assert first.seq == count  # its record does not count, and it says so
    with pytest.raises(StaleOwnerError):
        first.append(_note(first))  # nor does anything after it
    # The new owner goes on past the line that lost.
    second.append(_note(second))
    second.append(_note(second))
    assert second.read_after(count, 10) == [
        read_log(path).raw(index) for index in range(count, second.seq)
    ]
    first.close()
    second.close()

    records = read_log(path)
    assert len(records) == count + 3
    assert records.skipped == (count + 2,)  # the first's line, after the owner record
    owners = [(r.epoch, r.owner) for r in records if isinstance(r, OwnerRecord)]
    assert owners == [(1, "machine-a/1"), (2, "machine-b/7")]
    assert replay(records, verify=True).divergence is None
    # A searcher that opens the log later reads the same records and appends after them.
    third = FileEventLog(path)
    assert third.seq == count + 3
    assert third.epoch == 2
    third.take_over("machine-c/2")
    third.close()
    assert len(read_log(path)) == count + 4


def test_a_record_landing_first_counts_and_the_takeover_tries_again(path: Path) -> None:
    first = FileEventLog(path)
    first.take_over("machine-a/1")
    second = FileEventLog(path)
    count = first.seq
    # The first appends between the second's check and the write of its owner record.
    _race(second, lambda: first.append(_note(first)))
    with pytest.raises(StaleOwnerError):
        second.take_over("machine-b/7")
    second.close()
    # The first's record counts: it goes on, past the owner line that lost.
    first.append(_note(first))
    assert first.seq == count + 2
    assert len(first.read_after(0, 1000)) == first.seq
    # The second reads the log again and takes it over; now the first is fenced.
    again = FileEventLog(path)
    assert again.seq == count + 2
    again.take_over("machine-b/7")
    with pytest.raises(StaleOwnerError):
        first.append(_note(first))
    first.close()
    again.close()

    records = read_log(path)
    assert records.skipped == (count + 2,)
    assert [r.epoch for r in records if isinstance(r, OwnerRecord)] == [1, 2]
    assert replay(records, verify=True).divergence is None


def test_a_record_landing_after_its_own_counts_past_a_line_that_lost(path: Path) -> None:
    first = FileEventLog(path)
    count = first.seq
    late = FileEventLog(path)  # a searcher that read the log before the first appended
    first.append(_note(first))
    stale_line = (
        SnapshotRecord(seq=count + 1, state={"late": True}).model_dump_json().encode() + b"\n"
    )

    # A line that lost lands between the first's check and its write: the first's
    # record still counts, since every line before it lost.
    def land() -> None:
        with path.open("ab") as handle:
            handle.write(stale_line)

    _race(first, land)
    first.append(_note(first))
    first.append(_note(first))
    assert first.seq == count + 3
    late.close()
    first.close()
    records = read_log(path)
    assert len(records) == count + 3
    assert records.skipped == (count + 2,)


def test_a_gap_is_still_corruption(path: Path) -> None:
    count = len(read_log(path))
    gap = SnapshotRecord(seq=count + 2, state={}).model_dump_json().encode() + b"\n"
    with path.open("ab") as handle:
        handle.write(gap)
    with pytest.raises(EventLogCorruptError, match="without gaps"):
        read_log(path)


def test_a_skipped_line_that_is_torn_at_the_end_is_dropped(path: Path) -> None:
    count = len(read_log(path))
    with path.open("ab") as handle:
        handle.write(b'{"v":1,"seq":1,"at":0.0,"kind":"owner","epoch":}\n')
    records = read_log(path, repair=True)
    assert len(records) == count
    assert records.skipped == ()
    assert path.read_bytes() == GOLDEN.read_bytes()


def test_a_log_put_together_twice_is_corrupt_not_a_race(path: Path) -> None:
    once = path.read_bytes()
    path.write_bytes(once + once)
    with pytest.raises(EventLogCorruptError, match="holds record 1 after record"):
        read_log(path)


def test_a_long_line_that_lost_does_not_stop_the_owner(path: Path) -> None:
    first = FileEventLog(path)
    second = FileEventLog(path)
    count = first.seq
    # The first's line, of 3 MiB (more than is read at once), lands after the second's
    # owner record: the second took the log over between the first's check and write.
    big = SnapshotRecord(seq=count + 1, state={"blob": "x" * (3 << 20)})
    _race(first, lambda: second.take_over("machine-b/7"))
    with pytest.raises(StaleOwnerError):
        first.append(big)
    second.append(_note(second))  # the owner goes on past it
    second.append(_note(second))
    records = read_log(path)
    assert len(records) == count + 3
    assert records.skipped == (count + 2,)
    first.close()
    second.close()


def test_a_line_being_written_is_left_to_judge_after_the_write(path: Path) -> None:
    log = FileEventLog(path)
    count = log.seq
    lost = SnapshotRecord(seq=count, state={"late": True}).model_dump_json().encode()
    with path.open("ab") as handle:
        handle.write(lost[:10])  # another searcher's write, seen half done

        def finish() -> None:
            handle.write(lost[10:] + b"\n")
            handle.flush()

        _race(log, finish)
        log.append(_note(log))  # its line counts: the one before it lost
    assert log.seq == count + 1
    log.append(_note(log))
    log.close()
    assert len(read_log(path)) == count + 2


def test_a_log_cut_under_a_searcher_fences_it(path: Path) -> None:
    log = FileEventLog(path)
    log.append(_note(log))
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])
    with pytest.raises(StaleOwnerError, match="was cut under this searcher"):
        log.append(_note(log))
    log.close()


def test_a_searcher_that_lost_the_log_leaves_the_unsent_marker_alone(path: Path) -> None:
    first = FileEventLog(path)
    first.mark_unsent(first.seq)
    second = FileEventLog(path)
    second.take_over("machine-b/7")
    with pytest.raises(StaleOwnerError):
        first.clear_unsent()
    assert second.unsent_from is not None
    assert path.with_name("unsent.json").exists()
    first.close()
    second.close()
