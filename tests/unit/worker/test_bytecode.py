"""Which paths the run directory's import hook takes (rung.worker.bytecode)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from rung.worker.bytecode import COMPILE_FILE_BYTES, _within, compile_tree, worth_compiling


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


def _tree(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("import model\n")
    (root / "model.py").write_text("VALUE = 1\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "broken.py").write_text("def (:\n")  # its import reports it
    (root / "notes.txt").write_text("not python\n")


def test_a_copy_is_compiled_as_an_import_would_and_nothing_else_is_written(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    _tree(run)
    outside = tmp_path / "outside.py"
    outside.write_text("VALUE = 2\n")
    (run / "linked.py").symlink_to(outside)  # never followed
    (run / "big.py").write_text("X = 0\n" + "#" * COMPILE_FILE_BYTES)
    before = set(run.rglob("*"))
    assert compile_tree(str(run)) == 3  # train, model, pkg/__init__
    added = {p.relative_to(run) for p in run.rglob("*")} - {p.relative_to(run) for p in before}
    tag = sys.implementation.cache_tag
    assert added == {
        Path("__pycache__"),
        Path(f"__pycache__/train.{tag}.pyc"),
        Path(f"__pycache__/model.{tag}.pyc"),
        Path("pkg/__pycache__"),
        Path(f"pkg/__pycache__/__init__.{tag}.pyc"),
    }
    assert not (tmp_path / "__pycache__").exists()
    # What an import checks: this interpreter's magic and the source's time and size.
    data = (run / "__pycache__" / f"model.{tag}.pyc").read_bytes()
    source = (run / "model.py").stat()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == 0  # timestamp-checked
    assert int.from_bytes(data[8:12], "little") == int(source.st_mtime) & 0xFFFFFFFF
    assert int.from_bytes(data[12:16], "little") == source.st_size


def test_a_script_alone_is_not_worth_compiling_nor_what_would_not_fit(tmp_path: Path) -> None:
    """Bytecode must fit in what is left of the snapshot's bounds (a __pycache__ a
    directory, twice the sources' size): else the copy is kept uncompiled, as before."""
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "data.csv").write_text("1\n")
    room = {"entries": 100, "size": 1 << 20}
    assert not worth_compiling(tmp_path, **room)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.py").write_text("X = 1\n")
    assert worth_compiling(tmp_path, **room)
    sources = len("print(1)\n") + len("X = 1\n")
    assert worth_compiling(tmp_path, entries=4, size=2 * sources)
    assert not worth_compiling(tmp_path, entries=3, size=1 << 20)  # 2 files, 2 __pycache__
    assert not worth_compiling(tmp_path, entries=4, size=2 * sources - 1)
