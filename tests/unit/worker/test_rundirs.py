"""Run directories: a new one for every trial process, removed by descriptors, and the
sessions of worker processes that are gone swept at the next start."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rung.broker.memory import MemoryBroker
from rung.worker import agent, rundirs
from rung.worker.privileges import TrialUser
from rung.worker.rundirs import RunDirs, remove_tree


def _session(root: Path, name: str, *, owner: bool = True) -> Path:
    """A session directory another worker left (its owner file held by nobody)."""
    session = root / "runs" / name
    (session / "exp" / "trial-1-attempt-1-1").mkdir(parents=True)
    (session / "exp" / "trial-1-attempt-1-1" / "train.py").write_text("pass\n")
    if owner:
        (session / "owner").write_text("12345\n")
    return session


def test_each_trial_process_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    dirs = RunDirs(tmp_path, "s1")
    first, second = dirs.new("exp", 3, 1), dirs.new("exp", 3, 1)
    assert first != second  # a segment's removal never empties the next segment's
    assert first.parent == second.parent == tmp_path / "runs" / "s1" / "exp"
    assert first.name.startswith("trial-3-attempt-1-")


async def test_claim_sweeps_the_sessions_no_live_worker_holds(tmp_path: Path) -> None:
    alive = RunDirs(tmp_path, "alive")  # another worker on the same work dir, running
    alive.claim()
    (alive.session / "exp" / "trial-1-attempt-1-1").mkdir(parents=True)
    dead = _session(tmp_path, "dead")  # its worker was killed: nobody holds its owner
    ownerless = _session(tmp_path, "ownerless", owner=False)  # an older Rung's
    making = _session(tmp_path, ".making", owner=False)  # being made right now
    abandoned = _session(tmp_path, ".abandoned")  # its maker died before naming it
    old = time.time() - 2 * rundirs.PENDING_GRACE_S
    os.utime(abandoned, (old, old))
    legacy = tmp_path / "runs" / "exp-old" / "trial-2-attempt-1"  # before sessions
    legacy.mkdir(parents=True)
    stray = tmp_path / "runs" / "stray-file"
    stray.write_text("x")
    mine = RunDirs(tmp_path, "mine")
    try:
        removed = mine.claim()
        assert sorted(removed) == sorted([dead, ownerless, abandoned, legacy.parent])
        assert (alive.session / "exp" / "trial-1-attempt-1-1").is_dir()
        assert (making / "exp").is_dir()
        assert (mine.session / "owner").read_text() == f"{os.getpid()}\n"
        assert stray.is_file()  # not a session: left alone
        names = {p.name for p in (tmp_path / "runs").iterdir()}
        assert names == {"alive", "mine", ".making", "stray-file"}
        # Once the other worker has stopped, its session is nobody's.
        await alive.close()
        assert not alive.session.exists()
    finally:
        await mine.close()


def test_a_killed_workers_session_is_swept_by_the_next(tmp_path: Path) -> None:
    """A worker's lock dies with it: the next worker on the work dir finds the session
    held by nobody (no pid compared, so pid reuse and pid namespaces do not matter)."""
    code = (
        "import sys; from pathlib import Path; from rung.worker.rundirs import RunDirs; "
        "d = RunDirs(Path(sys.argv[1]), 'killed'); d.claim(); "
        "(d.session / 'exp').mkdir(); print('held', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        first = RunDirs(tmp_path, "first")
        assert first.claim() == []  # the holder runs: its session stays
        assert (tmp_path / "runs" / "killed" / "exp").is_dir()
        asyncio.run(first.close())
        holder.kill()  # kill -9: no cleanup of its own
    second = RunDirs(tmp_path, "second")
    assert second.claim() == [tmp_path / "runs" / "killed"]
    asyncio.run(second.close())


def test_kept_run_directories_are_never_removed(tmp_path: Path) -> None:
    dead = _session(tmp_path, "dead")
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


def test_opening_closed_directories_never_follows_a_symlink(tmp_path: Path) -> None:
    """What a non-root worker does before its second try: each directory under the
    tree gets 0700, through a descriptor that refuses a symlink, whatever it points at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o500)
    tree = tmp_path / "tree"
    closed = tree / "a" / "closed"
    closed.mkdir(parents=True)
    os.chmod(closed, 0)
    os.chmod(tree / "a", 0o500)
    (tree / "a" / "link").symlink_to(outside, target_is_directory=True)
    try:
        rundirs._open_to_owner(tree)
        assert {_mode(d) for d in (tree, tree / "a", closed)} == {0o700}
        assert _mode(outside) == 0o500
    finally:
        os.chmod(outside, 0o700)


def test_a_tree_deeper_than_pythons_recursion_is_removed(tmp_path: Path) -> None:
    """A script that nests directories past the recursion limit: shutil.rmtree raises
    RecursionError, which is no OSError; rm -rf takes the tree."""
    deep = tmp_path / "deep"
    path = deep
    for _ in range(400):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "f").write_text("x")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(250)
    try:
        why = remove_tree(deep)
    finally:
        sys.setrecursionlimit(limit)
    assert why is None
    assert not deep.exists()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_workers_without_a_work_dir_share_one_so_a_restart_finds_what_was_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default work directory was one per worker id, and the default worker id is
    new with every process: a worker killed before it cleaned up left its run
    directories where no later worker would look. Now every worker of a user shares one,
    and the next one's claim removes the session nobody holds any more."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first, second = agent.Worker(MemoryBroker()), agent.Worker(MemoryBroker())
    assert first.worker_id != second.worker_id
    assert first.work_dir == second.work_dir == tmp_path / "home" / ".rung" / "worker"
    first.run_dirs.claim()
    left = first.run_dirs.new("e1", 1, 1)
    left.mkdir(parents=True)
    assert first.run_dirs._owner_fd is not None
    os.close(first.run_dirs._owner_fd)  # killed: its lock dies with its process
    assert second.run_dirs.claim() == [first.run_dirs.session]
    assert not left.exists()
    await second.run_dirs.close()


def test_workers_whose_trials_run_as_another_account_default_to_a_work_dir_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each sets its work directory's mode for its own trials' account and group."""
    monkeypatch.setenv("HOME", str(tmp_path))
    alice = TrialUser(name="alice", uid=1234, gid=1234, home="/home/alice")
    assert agent.default_work_dir() == tmp_path / ".rung" / "worker"
    assert agent.default_work_dir(alice) == tmp_path / ".rung" / "worker-as-1234"
    assert agent.default_work_dir(group=50) == tmp_path / ".rung" / "worker-group-50"
    assert agent.Worker(MemoryBroker(), trial_user=alice).work_dir == agent.default_work_dir(alice)
