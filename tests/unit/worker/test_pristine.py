"""Run directories used again (rung.worker.pristine): only one its process left exactly as
its copy was made is kept, for the next process of the same experiment and context."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from rung.worker import pristine
from rung.worker.pristine import KeptRuns, snapshot
from rung.worker.rundirs import RunDirs


def _copy(root: Path) -> Path:
    """A context's copy: a script, a package, a data file."""
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("print('train')\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "data.csv").write_text("a,b\n1,2\n")
    return root


def _rewrite_same_size(root: Path) -> None:
    # Same size, and the times put back: only the contents tell.
    path = root / "train.py"
    before = path.stat()
    path.write_text("print('TRAIN')\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _symlinked(root: Path) -> None:
    (root / "pkg" / "data.csv").unlink()
    (root / "pkg" / "data.csv").symlink_to("/etc/passwd")


CHANGES: dict[str, Callable[[Path], object]] = {
    "a new file": lambda root: (root / "log.txt").write_text("x"),
    "a new file deep down": lambda root: (root / "pkg" / "cache.pyc").write_bytes(b"x"),
    "a removed file": lambda root: (root / "pkg" / "data.csv").unlink(),
    "a new directory": lambda root: (root / "outputs").mkdir(),
    "contents of the same size, times put back": _rewrite_same_size,
    "a mode": lambda root: (root / "train.py").chmod(0o600),
    "a touch": lambda root: os.utime(root / "train.py", ns=(1, 1)),
    "a hard link elsewhere": lambda root: os.link(root / "train.py", root.parent / "link"),
    "a file made a symlink": _symlinked,
    "the directory's mode": lambda root: root.chmod(0o755),
}


def test_an_unchanged_copy_compares_equal_even_renamed(tmp_path: Path) -> None:
    root = _copy(tmp_path / "a")
    taken = snapshot(root)
    assert taken is not None
    (root / "train.py").read_text()  # reading changes nothing
    root.rename(tmp_path / "b")
    assert snapshot(tmp_path / "b") == taken


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_kind_of_change_is_seen(tmp_path: Path, change: str) -> None:
    root = _copy(tmp_path / "run")
    root.chmod(0o700)
    taken = snapshot(root)
    CHANGES[change](root)
    assert snapshot(root) != taken


def test_a_tree_too_large_to_compare_has_no_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy(tmp_path / "run")
    assert snapshot(root) is not None
    monkeypatch.setattr(pristine, "ENTRIES", 3)
    assert snapshot(root) is None
    monkeypatch.setattr(pristine, "ENTRIES", 100)
    monkeypatch.setattr(pristine, "BYTES", 10)
    assert snapshot(root) is None
    assert snapshot(tmp_path / "missing") is None
    assert snapshot(root / "train.py") is None  # not a directory


@pytest.fixture
def kept(tmp_path: Path) -> KeptRuns:
    run_dirs = RunDirs(tmp_path / "work", "session")
    run_dirs.session.mkdir(parents=True)
    return KeptRuns(run_dirs)


async def test_an_unchanged_directory_is_kept_and_used_again(kept: KeptRuns) -> None:
    first = _copy(kept.run_dirs.new("e1", 1, 1))
    taken = snapshot(first)
    assert taken is not None
    await kept.leave(first, "e1/ctx", taken)
    assert not first.exists()
    assert kept.take("e2/ctx") is None  # another experiment's
    found = kept.take("e1/ctx")
    assert found is not None
    path, again = found
    assert again == taken
    assert kept.take("e1/ctx") is None  # taken once
    second = kept.run_dirs.new("e1", 2, 1)
    assert kept.move(path, second, taken)
    assert (second / "train.py").read_text() == "print('train')\n"
    assert snapshot(second) == taken  # so the next one can be kept again


async def test_a_changed_directory_is_removed(kept: KeptRuns) -> None:
    run = _copy(kept.run_dirs.new("e1", 1, 1))
    taken = snapshot(run)
    assert taken is not None
    (run / "checkpoint.pt").write_bytes(b"left behind")
    await kept.leave(run, "e1/ctx", taken)
    assert not run.exists()
    assert kept.take("e1/ctx") is None
    assert not kept.root.exists() or not any(kept.root.iterdir())


async def test_at_most_kept_directories_stay_the_oldest_removed(
    kept: KeptRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pristine, "KEPT", 2)
    for trial in (1, 2, 3):
        run = _copy(kept.run_dirs.new("e1", trial, 1))
        (run / "id").write_text(str(trial))
        taken = snapshot(run)
        assert taken is not None
        await kept.leave(run, f"e1/ctx{trial}", taken)
    assert kept.take("e1/ctx1") is None
    assert len(list(kept.root.iterdir())) == 2
    for trial in (2, 3):
        found = kept.take(f"e1/ctx{trial}")
        assert found is not None
        assert (found[0] / "id").read_text() == str(trial)


async def test_nothing_is_kept_once_closed(kept: KeptRuns) -> None:
    run = _copy(kept.run_dirs.new("e1", 1, 1))
    taken = snapshot(run)
    assert taken is not None
    kept.close()
    await kept.leave(run, "e1/ctx", taken)
    assert not run.exists()
    assert kept.take("e1/ctx") is None


def test_a_directory_that_cannot_be_moved_is_removed(tmp_path: Path, kept: KeptRuns) -> None:
    run = _copy(tmp_path / "kept-one")
    taken = snapshot(run)
    assert taken is not None
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not kept.move(run, blocker / "run", taken)  # its parent is a file
    assert not run.exists()


def test_a_kept_directory_changed_while_kept_is_not_used(tmp_path: Path, kept: KeptRuns) -> None:
    """Without --trial-user any trial of the worker's uid could write into a kept
    directory: it is compared again as it is taken."""
    run = _copy(tmp_path / "kept-one")
    taken = snapshot(run)
    assert taken is not None
    (run / "train.py").write_text("print('another experiment was here')\n")
    assert not kept.move(run, tmp_path / "next", taken)
    assert not run.exists()
    assert not (tmp_path / "next").exists()


def test_an_attribute_name_that_is_not_utf8_is_compared(tmp_path: Path) -> None:
    """Names come back with surrogates; they are hashed as the bytes they are."""
    root = _copy(tmp_path / "run")
    taken = snapshot(root)
    assert taken is not None
    os.setxattr(os.fsencode(root / "train.py"), b"user.\xff", b"x", follow_symlinks=False)
    after = snapshot(root)
    assert after is not None
    assert after != taken


def _retarget(root: Path) -> None:
    (root / "link").unlink()
    (root / "link").symlink_to("pkg/data.tsv")  # a target of the same length


def _root_xattr(root: Path) -> None:
    os.setxattr(root, "user.left", b"by an earlier process", follow_symlinks=False)


def _deep_xattr(root: Path) -> None:
    os.setxattr(root / "pkg" / "data.csv", "user.left", b"x", follow_symlinks=False)


# Each change, and the entry and field that must tell it (not the change times, which
# are coarse on some kernels and file systems): 4 link count, 8 modification time,
# 10 what the entry holds (contents, target, attributes).
MORE: dict[str, tuple[Callable[[Path], object], str, int]] = {
    "a symlink's target, of the same length": (_retarget, "link", 10),
    "an extended attribute of the directory": (_root_xattr, ".", 10),
    "an extended attribute of a file": (_deep_xattr, "pkg/data.csv", 10),
    "the directory's times": (lambda root: os.utime(root, ns=(1, 1)), ".", 8),
    "a hard link made from outside": (
        lambda root: os.link(root / "train.py", root.parent / "outside"),
        "train.py",
        4,
    ),
}


@pytest.mark.parametrize("change", sorted(MORE))
def test_what_change_times_alone_would_miss_is_seen(tmp_path: Path, change: str) -> None:
    root = _copy(tmp_path / "run")
    (root / "link").symlink_to("pkg/data.csv")
    taken = snapshot(root)
    assert taken is not None
    how, name, field = MORE[change]
    how(root)
    after = snapshot(root)
    assert after is not None

    def told(snap: pristine.Snapshot) -> object:
        return next(entry[field] for entry in snap if entry[0] == name)

    assert told(after) != told(taken)


def test_the_directorys_change_time_alone_is_not_compared(tmp_path: Path) -> None:
    """The worker renames the directory into and out of the kept ones: that changes
    only the directory's change time."""
    root = _copy(tmp_path / "run")
    taken = snapshot(root)
    assert taken is not None
    (tmp_path / "elsewhere").mkdir()
    root.rename(tmp_path / "elsewhere" / "run")
    assert snapshot(tmp_path / "elsewhere" / "run") == taken


async def test_a_key_whose_processes_keep_changing_it_is_not_compared_again(
    kept: KeptRuns,
) -> None:
    for trial in range(1, pristine.MISSES + 1):
        assert kept.wanted("e1/ctx")
        run = _copy(kept.run_dirs.new("e1", trial, 1))
        taken = snapshot(run)
        assert taken is not None
        (run / "__pycache__").mkdir()
        await kept.leave(run, "e1/ctx", taken)
    assert not kept.wanted("e1/ctx")
    assert kept.wanted("e1/other")


def test_group_gone() -> None:
    """Gone only once nothing of the group is left: not while a member lives on after
    its leader was reaped."""
    assert not pristine.group_gone(os.getpgid(0))  # this test's own group
    leader = subprocess.Popen(["sleep", "60"], process_group=0)
    member = subprocess.Popen(["sleep", "60"], process_group=leader.pid)
    try:
        leader.kill()
        leader.wait(timeout=30)  # reaped; its group lives on in the member
        assert not pristine.group_gone(leader.pid)
    finally:
        member.kill()
        member.wait(timeout=30)
    assert pristine.group_gone(leader.pid)
