"""Which paths the run directory's import hook takes (rung.worker.bytecode)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rung.worker.bytecode import _within


def test_the_run_directory_and_below_and_nothing_else(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "pkg").mkdir(parents=True)
    (tmp_path / "run2").mkdir()
    (tmp_path / "outside").mkdir()
    (run / "link-out").symlink_to(tmp_path / "outside")
    (tmp_path / "link-in").symlink_to(run)
    within = _within({str(run)})
    assert within(str(run))
    assert within(str(run / "pkg"))
    assert within(str(tmp_path / "link-in" / "pkg"))  # into the run directory by a symlink
    assert within(str(run / "link-out"))  # reached through it: no bytecode written there
    assert not within(str(tmp_path / "run2"))  # the same characters, another directory
    assert not within(str(tmp_path / "outside"))
    assert not within(str(tmp_path))


def test_a_relative_entry_once_the_working_directory_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    within = _within({str(gone)})
    assert within("")
    os.rmdir(gone)
    assert not within("")  # declined, so the interpreter's own hook answers as it would
    assert not within("relative")
