"""A new log's directory entries are durable: each new directory, and the log file, is
fsync'd in its parent before anything is written to the log (issue 15, crash gaps)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rung.searcher.eventlog import FileEventLog, durable
from rung.searcher.eventlog import file as file_module


def test_new_directories_and_the_log_are_fsynced_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = durable.fsync_directory

    def record(directory: Path) -> None:
        synced.append(Path(directory))
        real(directory)

    monkeypatch.setattr(file_module, "fsync_directory", record)
    path = tmp_path / "state" / "experiments" / "exp-1" / "events.jsonl"
    event_log = FileEventLog(path)
    event_log.close()
    # Each new directory in its parent, outermost first, then the file in its directory.
    assert synced == [
        tmp_path,
        tmp_path / "state",
        tmp_path / "state" / "experiments",
        tmp_path / "state" / "experiments" / "exp-1",
    ]
    assert path.is_file()


def test_an_existing_log_creates_nothing_and_syncs_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "exp" / "events.jsonl"
    FileEventLog(path).close()
    synced: list[str] = []
    monkeypatch.setattr(file_module, "fsync_directory", lambda d: synced.append(os.fspath(d)))
    FileEventLog(path).close()
    assert synced == []
