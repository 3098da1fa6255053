"""Run directories: a new one for every trial process, removed by descriptors, and the
sessions of worker processes that are gone swept at the next start."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rung.worker.rundirs import RunDirs, remove_tree


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(process.stdout)


@pytest.fixture
def live_pid() -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def _session(root: Path, name: str, owner: str | None) -> Path:
    session = root / "runs" / name
    (session / "exp" / "trial-1-attempt-1-1").mkdir(parents=True)
    (session / "exp" / "trial-1-attempt-1-1" / "train.py").write_text("pass\n")
    if owner is not None:
        (session / "owner").write_text(owner)
    return session


def test_each_trial_process_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    dirs = RunDirs(tmp_path, "s1")
    first, second = dirs.new("exp", 3, 1), dirs.new("exp", 3, 1)
    assert first != second  # a segment's removal never empties the next segment's
    assert first.parent == second.parent == tmp_path / "runs" / "s1" / "exp"
    assert first.name.startswith("trial-3-attempt-1-")


def test_claim_sweeps_the_sessions_of_gone_workers_only(
    tmp_path: Path, dead_pid: int, live_pid: int
) -> None:
    dead = _session(tmp_path, "dead", f"{dead_pid}\n")
    alive = _session(tmp_path, "alive", f"{live_pid}\n")
    ownerless = _session(tmp_path, "ownerless", None)
    garbled = _session(tmp_path, "garbled", "not a pid")
    legacy = tmp_path / "runs" / "exp-old" / "trial-2-attempt-1"  # before sessions
    legacy.mkdir(parents=True)
    stray = tmp_path / "runs" / "stray-file"
    stray.write_text("x")
    dirs = RunDirs(tmp_path, "mine")
    removed = dirs.claim()
    assert sorted(removed) == sorted([dead, ownerless, garbled, legacy.parent])
    assert (alive / "exp" / "trial-1-attempt-1-1" / "train.py").is_file()
    assert (dirs.session / "owner").read_text() == f"{os.getpid()}\n"
    assert stray.is_file()  # not a session: left alone
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"alive", "mine", "stray-file"}


def test_kept_run_directories_are_never_removed(tmp_path: Path, dead_pid: int) -> None:
    dead = _session(tmp_path, "dead", f"{dead_pid}\n")
    dirs = RunDirs(tmp_path, "mine", keep=True)
    assert dirs.claim() == []
    assert dead.is_dir()


async def test_removal_of_a_trial_directory_and_of_the_session(tmp_path: Path) -> None:
    dirs = RunDirs(tmp_path, "mine")
    dirs.claim()
    run = dirs.new("exp", 1, 1)
    run.mkdir(parents=True)
    (run / "out.txt").write_text("x")
    await dirs.remove(run)
    assert not run.exists()
    await dirs.remove(run)  # gone already: nothing to do, nothing raised
    await dirs.close()
    assert list((tmp_path / "runs").iterdir()) == []


def test_remove_tree_opens_closed_directories_and_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "f").write_text("keep")
    os.chmod(outside / "sub", 0o500)  # what a symlinked-to directory's mode was stays
    tree = tmp_path / "tree"
    closed = tree / "a" / "closed"
    closed.mkdir(parents=True)
    (closed / "f").write_text("x")
    os.chmod(closed, 0)
    os.chmod(tree / "a", 0o500)
    (tree / "link").symlink_to(outside)
    (tree / "a" / "file-link").symlink_to(outside / "sub" / "f")
    try:
        assert remove_tree(tree) is None
        assert not tree.exists()
        assert (outside / "sub" / "f").read_text() == "keep"
        assert (outside / "sub").stat().st_mode & 0o777 == 0o500
        assert remove_tree(tree) is None  # gone: None
    finally:
        os.chmod(outside / "sub", 0o700)


def test_remove_tree_says_why_it_could_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    tries: list[Path] = []

    def busy(path: Path, **_: object) -> None:
        tries.append(path)
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    monkeypatch.setattr(shutil, "rmtree", busy)
    why = remove_tree(tree)
    assert why is not None
    assert why.startswith("OSError: [Errno 16] Device or resource busy")
    assert str(tree) in why
    assert tries == [tree, tree]  # tried again once its directories were opened
    assert tree.is_dir()
