"""The run directory's import hook, and a context copy's compilation (rung.worker.bytecode)."""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from rung.broker.archive import context_hash, pack
from rung.broker.schemas import GetContext, RpcReply
from rung.worker.bytecode import COMPILE_FILE_BYTES, _within, compile_tree, worth_compiling
from rung.worker.contexts import ContextCache
from rung.worker.pristine import BYTES, ENTRIES, snapshot

ROOM = {"entries": 100, "size": 1 << 20}


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
    assert compile_tree(str(run), **ROOM) == 3  # train, model, pkg/__init__
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


def test_a_script_alone_is_not_worth_compiling(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "data.csv").write_text("1\n")
    assert not worth_compiling(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.py").write_text("X = 1\n")
    assert worth_compiling(tmp_path)


def _pycs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" in p.parts)


def test_the_bytecode_stays_within_the_room_it_is_given(tmp_path: Path) -> None:
    """What a snapshot can still hold: entries (a .pyc, and a new __pycache__) and bytes
    (the .pyc files' own sizes). The first file past either is not left behind."""
    run = tmp_path / "run"
    _tree(run)  # in order: model, train, then pkg/__init__ (a new __pycache__), pkg/broken
    tag = sys.implementation.cache_tag
    assert compile_tree(str(run), entries=3, size=1 << 20) == 2
    assert _pycs(run) == [
        "__pycache__",
        f"__pycache__/model.{tag}.pyc",
        f"__pycache__/train.{tag}.pyc",
    ]
    shutil.rmtree(run / "__pycache__")
    first = len(importlib.util.MAGIC_NUMBER) + 12  # the header: at least this
    assert compile_tree(str(run), entries=100, size=first) == 0  # the first is too large
    assert _pycs(run) == []


class _Rpc:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def call(self, request: GetContext, timeout: float) -> RpcReply:
        return RpcReply(ok=True, result={"context_b64": base64.b64encode(self.data).decode()})


async def _cache(tmp_path: Path, files: dict[str, str]) -> tuple[ContextCache, str]:
    source = tmp_path / "source"
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    data = pack(source)
    return ContextCache(_Rpc(data), tmp_path / "contexts"), context_hash(data)  # type: ignore[arg-type]


async def test_a_copy_is_compiled_before_its_snapshot_with_the_room_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ContextCache.copy: a copy with modules is handed to compile_with with what is left
    of the snapshot's bounds, and snapshotted after it (its bytecode included); a
    script alone is snapshotted at once, compile_with never called."""
    cache, digest = await _cache(tmp_path, {"train.py": "import model\n", "model.py": "X = 1\n"})
    asked: list[tuple[Path, int, int]] = []

    async def compile_with(copy: Path, entries: int, size: int) -> bool:
        asked.append((copy, entries, size))
        assert compile_tree(str(copy), entries=entries, size=size) == 2
        return True

    made = await cache.copy(digest, tmp_path / "run1", compile_with=compile_with)
    sources = len("import model\n") + len("X = 1\n")
    assert asked == [(tmp_path / "run1", ENTRIES - 3, BYTES - sources)]  # root and 2 files
    assert made is not None
    assert sorted(e[0] for e in made if "__pycache__" in e[0]) == [
        "__pycache__",
        f"__pycache__/model.{sys.implementation.cache_tag}.pyc",
        f"__pycache__/train.{sys.implementation.cache_tag}.pyc",
    ]
    assert made == snapshot(tmp_path / "run1")

    alone, alone_digest = await _cache(tmp_path / "alone", {"train.py": "print(1)\n"})
    made = await alone.copy(alone_digest, tmp_path / "run2", compile_with=compile_with)
    assert len(asked) == 1
    assert made == snapshot(tmp_path / "run2")

    killed: list[Path] = []

    async def killed_as_it_wrote(copy: Path, entries: int, size: int) -> bool:
        killed.append(copy)
        for cache in (copy / "__pycache__", copy / "pkg" / "__pycache__"):
            cache.mkdir(exist_ok=True)
            (cache / "model.cpython-311.pyc.140231").write_bytes(b"half")
        (copy / "pkg" / "__pycache__" / "new").mkdir()
        return False  # (failed, or killed at its time limit)

    # A context that ships a __pycache__ (the client never packs one; a hand-made
    # archive may): what it shipped stays, what the compilation wrote goes.
    with monkeypatch.context() as patched:
        patched.setattr("rung.broker.archive._ALWAYS_IGNORED", ())
        shipping, shipping_digest = await _cache(
            tmp_path / "shipping",
            {"train.py": "import model\n", "model.py": "X = 1\n", "pkg/__pycache__/kept.txt": "k"},
        )
    made = await shipping.copy(shipping_digest, tmp_path / "run3", compile_with=killed_as_it_wrote)
    assert killed == [tmp_path / "run3"]
    assert made is not None
    assert sorted(e[0] for e in made) == [
        ".",
        "model.py",
        "pkg",
        "pkg/__pycache__",
        "pkg/__pycache__/kept.txt",
        "train.py",
    ]  # as extracted
