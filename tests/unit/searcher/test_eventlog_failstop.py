"""Fail-stop event log (issue 15, item 6): once a write or an fsync has failed, the log
takes nothing more and never calls fsync again (after a failed fsync the kernel may have
dropped the dirty pages and report the next one as a success)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rung.searcher import failpoints
from rung.searcher.eventlog import FileEventLog, SnapshotRecord, read_log
from rung.searcher.eventlog import file as file_module
from rung.searcher.eventlog.file import StorageError
from rung.searcher.eventlog.snapshots import StoredSnapshot

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class FsyncCounter:
    """``os.fsync`` that counts its calls and fails the ``fail_at``-th one with EIO."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self._real(fd)


class FullDisk(io.RawIOBase):
    """The log file's raw writes, on a disk with ``room`` bytes left: a write gets what
    fits (a short write), then ENOSPC, as on a file system that filled up."""

    def __init__(self, path: Path, room: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.room = room

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: ReadableBuffer) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        chunk = bytes(memoryview(data))[: self.room]
        written = os.write(self._fd, chunk)
        self.room -= written
        return written

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _record(log: FileEventLog) -> SnapshotRecord:
    return SnapshotRecord(seq=log.seq + 1, state={"n": log.seq + 1})


def _opened(tmp_path: Path, records: int = 3) -> FileEventLog:
    log = FileEventLog(tmp_path / "events.jsonl")
    for _ in range(records):
        log.append(_record(log))
    return log


def fill_disk(log: FileEventLog, room: int) -> None:
    """From now on the log's file is on a disk with ``room`` bytes left."""
    log._file.close()
    log._file = io.BufferedWriter(FullDisk(log.path, room))


async def test_a_failed_fsync_is_final_and_never_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _opened(tmp_path)
    fsync = FsyncCounter(fail_at=1)
    monkeypatch.setattr(os, "fsync", fsync)
    log.append(_record(log), sync=False)
    with pytest.raises(StorageError, match=r"an fsync of .* failed") as failed:
        await log.sync_async()
    assert isinstance(failed.value.__cause__, OSError)
    assert failed.value.__cause__.errno == errno.EIO
    assert log.broken is failed.value
    assert fsync.calls == 1
    assert log.durable_seq == 3  # the record whose fsync failed never counted as durable

    # Everything after it is refused, and nothing reaches fsync again.
    with pytest.raises(StorageError) as again:
        await log.sync_async()
    assert again.value is failed.value
    with pytest.raises(StorageError):
        log.append(_record(log))
    with pytest.raises(StorageError):
        log.append(_record(log), sync=False)
    with pytest.raises(StorageError):
        log.write_snapshot("exp-1", {})
    with pytest.raises(StorageError):
        log.mark_unsent(4)
    assert fsync.calls == 1
    assert log.seq == 4  # nothing appended after the failure
    assert log.durable_seq == 3
    log.close()
    assert [r.seq for r in read_log(log.path)] == [1, 2, 3, 4]


def test_a_failed_fsync_inside_append_poisons_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _opened(tmp_path)
    fsync = FsyncCounter(fail_at=1)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError, match="an fsync"):
        log.append(_record(log))
    assert log.durable_seq == 3
    with pytest.raises(StorageError):
        log.append(_record(log))
    assert fsync.calls == 1
    log.close()


def test_the_failpoint_fails_the_nth_fsync_with_eio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failpoints, "_counts", {})
    monkeypatch.setenv(failpoints.FSYNC_FAILURE_ENV, "3")
    fsync = FsyncCounter()
    monkeypatch.setattr(os, "fsync", fsync)
    log = FileEventLog(tmp_path / "events.jsonl")  # the 1st (the file as it was)
    log.append(_record(log))  # the 2nd
    with pytest.raises(StorageError, match=f"injected by {failpoints.FSYNC_FAILURE_ENV}=3"):
        log.append(_record(log))  # the 3rd: EIO, before os.fsync
    with pytest.raises(StorageError):
        log.append(_record(log))
    # One fsync of the new file's directory, two of the log; the failed one never
    # reached os.fsync, nor did anything after it.
    assert fsync.calls == 1 + 2
    log.close()


def test_a_failed_write_poisons_the_log_and_a_reopen_cuts_the_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _opened(tmp_path)
    fsync = FsyncCounter()
    monkeypatch.setattr(os, "fsync", fsync)
    fill_disk(log, room=10)  # a part of the next line fits, not all of it
    with pytest.raises(StorageError, match=r"a write of .* failed") as failed:
        log.append(_record(log), sync=False)
    assert isinstance(failed.value.__cause__, OSError)
    assert failed.value.__cause__.errno == errno.ENOSPC
    assert log.broken is failed.value
    assert log.seq == 3  # the record that failed to write does not count
    with pytest.raises(StorageError):
        log.append(_record(log))
    assert fsync.calls == 0
    log.close()  # the rest of the line is still buffered: it is dropped, not raised

    monkeypatch.setattr(os, "fsync", FsyncCounter())
    reopened = FileEventLog(log.path)  # the restart, once the disk has room again
    assert reopened.seq == 3
    assert reopened.path.read_bytes().endswith(b"}\n")  # the torn bytes are gone
    reopened.append(_record(reopened))
    reopened.close()
    assert [r.seq for r in read_log(log.path)] == [1, 2, 3, 4]


async def test_a_sync_after_a_failed_write_is_refused_without_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _opened(tmp_path)
    log.append(_record(log), sync=False)  # written, not yet durable
    fsync = FsyncCounter()
    monkeypatch.setattr(os, "fsync", fsync)
    fill_disk(log, room=0)
    with pytest.raises(StorageError, match="a write"):
        log.append(_record(log), sync=False)
    with pytest.raises(StorageError, match="a write"):
        await log.sync_async()
    assert fsync.calls == 0
    assert log.durable_seq == 3
    log.close()


def test_a_failed_snapshot_write_poisons_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _opened(tmp_path)

    def no_room(path: Path, snapshot: StoredSnapshot) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(file_module, "write_snapshot", no_room)
    with pytest.raises(StorageError, match="a snapshot write"):
        log.write_snapshot("exp-1", {"n": 3})
    assert log.snapshot is None
    fsync = FsyncCounter()
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError):
        log.append(_record(log))
    assert fsync.calls == 0
    log.close()
