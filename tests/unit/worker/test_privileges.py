"""worker/privileges.py: users, private directories, handing files to a trial user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rung.worker.privileges import (
    PrivilegeError,
    TrialUser,
    check_can_switch,
    give_to,
    open_path_to,
    prepare_private_dir,
    resolve_group,
    resolve_trial_user,
)

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown and chgrp: needs root"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_users_and_groups_resolve_or_are_refused_with_the_fix() -> None:
    root = resolve_trial_user("root")
    assert (root.uid, root.gid) == (0, 0)
    assert resolve_trial_user("0") == root
    assert resolve_trial_user("4000000") == TrialUser("4000000", 4000000, 4000000, "/")
    with pytest.raises(PrivilegeError, match="no such user on this machine; create it"):
        resolve_trial_user("no-such-user-here")
    assert resolve_group("0") == 0
    with pytest.raises(PrivilegeError, match="--dir-group 'no-such-group'"):
        resolve_group("no-such-group")


def test_root_is_never_a_trial_user() -> None:
    with pytest.raises(PrivilegeError, match="must not be root"):
        check_can_switch(resolve_trial_user("root"))


def test_private_directories(tmp_path: Path) -> None:
    state = prepare_private_dir(tmp_path / "a" / "state")
    assert _mode(state) == 0o700
    state.chmod(0o755)  # an existing directory is tightened too
    assert _mode(prepare_private_dir(state)) == 0o700
    shared = prepare_private_dir(tmp_path / "shared", group=os.getgid())
    assert (_mode(shared), shared.stat().st_gid) == (0o2750, os.getgid())


@needs_root
def test_give_to_never_follows_a_symlink(tmp_path: Path) -> None:
    nobody = resolve_trial_user("nobody")
    outside = tmp_path / "outside"
    outside.write_text("the worker's")
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "file").write_text("x")
    (run / "link").symlink_to(outside)
    give_to(run, nobody)
    assert {p.lstat().st_uid for p in (run, run / "sub", run / "sub" / "file", run / "link")} == {
        nobody.uid
    }
    assert outside.stat().st_uid == 0
    give_to(outside, None)  # no trial user: nothing to do
    assert outside.stat().st_uid == 0


@needs_root
def test_open_path_to_adds_only_the_search_bit(tmp_path: Path) -> None:
    nobody = resolve_trial_user("nobody")
    top = tmp_path / "work"
    deep = top / "runs" / "exp" / "trial"
    deep.mkdir(parents=True)
    for directory in (top, top / "runs", top / "runs" / "exp"):
        directory.chmod(0o700)
    opened = open_path_to(deep, nobody)
    assert top / "runs" / "exp" in opened
    assert {_mode(d) for d in (top, top / "runs", top / "runs" / "exp")} == {0o701}
    assert open_path_to(deep, nobody) == []  # nothing left to open
    assert open_path_to(deep, None) == []


def test_give_to_resolves_no_path_a_trial_could_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running trial of the same uid swaps a subdirectory for a symlink after it was
    listed: nothing is changed through the symlink (each chown is by directory descriptor)."""
    me = TrialUser("me", os.getuid(), os.getgid(), str(tmp_path))
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("a", "b"):
        (outside / name).write_text("the worker's")
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    for name in ("a", "b"):
        (run / "sub" / name).write_text("x")
    real_chown = os.chown
    changed: list[int] = []

    def chown(path: str, uid: int, gid: int, *, dir_fd: int | None = None, **kw: bool) -> None:
        changed.append(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_ino)
        real_chown(path, uid, gid, dir_fd=dir_fd, **kw)
        if os.path.basename(path) == "a" and not (run / "sub").is_symlink():
            # The trial's move, between the listing of sub and the chown of sub/b.
            (run / "sub").rename(run / "moved")
            (run / "sub").symlink_to(outside)

    monkeypatch.setattr(os, "chown", chown)
    give_to(run, me)
    assert (outside / "a").stat().st_ino not in changed
    assert (outside / "b").stat().st_ino not in changed
    assert (run / "moved" / "b").stat().st_ino in changed
