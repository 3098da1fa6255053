"""What keeps a worker's secrets from the training code it runs.

* :func:`harden_process`: the process becomes non-dumpable (``PR_SET_DUMPABLE`` 0), so a
  process of the same uid (a trial) can neither read its ``/proc/<pid>/environ``,
  ``mem`` or ``maps``, nor attach a debugger to it; the process leaves no core dump.
  ``rung worker``, ``rung searcher`` and the fork server call it at start. A no-op away
  from Linux.
* :class:`TrialUser`, :func:`resolve_trial_user`, :func:`check_can_switch`: ``rung worker
  --trial-user USER`` runs each trial as another uid, which cannot read the worker's
  password file or its ``/proc`` entries at all. :func:`drop_to` is what a trial's
  process does before running anything of the trial's: no supplementary groups, the
  user's gid, the user's uid.
* :func:`give_to`: hand a trial's own files (its run directory, its socket) to that user.
* :func:`prepare_private_dir` and :func:`private_umask`: state, work and checkpoint
  directories readable by their owner only (0700, umask 077), or with ``--dir-group``
  by one group too (2750, umask 027).
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PrivilegeError",
    "TrialUser",
    "check_can_switch",
    "drop_to",
    "give_to",
    "harden_process",
    "is_dumpable",
    "open_path_to",
    "prepare_private_dir",
    "private_umask",
    "resolve_group",
    "resolve_trial_user",
    "set_dumpable",
]

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
_CAP_CHOWN = 0
_CAP_DAC_OVERRIDE = 1
_CAP_SETGID = 6
_CAP_SETUID = 7
_LINUX = sys.platform.startswith("linux")


class PrivilegeError(RuntimeError):
    """A uid switch, a chown or a process setting that cannot be done."""


@dataclass(frozen=True)
class TrialUser:
    """The account trials run as: ``rung worker --trial-user NAME`` (or a numeric uid)."""

    name: str
    uid: int
    gid: int
    home: str

    def environment(self) -> dict[str, str]:
        """The variables that name the user, for the trial's environment."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def resolve_trial_user(spec: str) -> TrialUser:
    """The user ``spec`` names (a name, or a numeric uid with or without an account)."""
    try:
        entry = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except KeyError:
        if spec.isdigit():  # a bare uid with no account: its own group, no home
            return TrialUser(name=spec, uid=int(spec), gid=int(spec), home="/")
        raise PrivilegeError(
            f"--trial-user {spec!r}: no such user on this machine; create it (useradd "
            "--system rung-trial) or give a numeric uid"
        ) from None
    return TrialUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


def resolve_group(spec: str) -> int:
    """The gid ``spec`` names (a group name or a number)."""
    if spec.isdigit():
        return int(spec)
    try:
        return grp.getgrnam(spec).gr_gid
    except KeyError:
        raise PrivilegeError(
            f"--dir-group {spec!r}: no such group on this machine; create it (groupadd) "
            "or give a numeric gid"
        ) from None


def _effective_capabilities() -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_can_switch(user: TrialUser) -> None:
    """Refuse, with the fix, unless this process may run trials as ``user``."""
    if user.uid == 0:
        raise PrivilegeError(
            "--trial-user must not be root (uid 0): trials would read every secret of the "
            "worker; give an unprivileged account, for example one made with useradd --system"
        )
    if not _LINUX:
        raise PrivilegeError("--trial-user is supported on Linux only")
    if os.geteuid() == 0:
        return
    caps = _effective_capabilities()
    needed = (1 << _CAP_SETUID) | (1 << _CAP_SETGID) | (1 << _CAP_CHOWN) | (1 << _CAP_DAC_OVERRIDE)
    if caps & needed != needed:
        raise PrivilegeError(
            f"--trial-user {user.name}: --trial-user needs the worker to run as root or "
            "with CAP_SETUID/CAP_SETGID (and CAP_CHOWN and CAP_DAC_OVERRIDE, to hand each "
            f"trial its files and remove them afterwards); this worker runs as uid "
            f"{os.geteuid()} without them. Start it as root, or give it those "
            "capabilities, or leave out --trial-user"
        )


def drop_to(uid: int, gid: int) -> None:
    """Become uid ``uid`` for good: no supplementary groups, gid ``gid``, then the uid (in
    that order: after setuid the process could no longer change its groups). Checked
    afterwards: the process must not be able to become root again."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid or os.getgroups():
        raise PrivilegeError(f"could not become uid {uid} gid {gid}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(f"dropped to uid {uid}, yet could become root again")


def give_to(path: Path, user: TrialUser | None) -> None:
    """Make ``path`` (and everything under it, symlinks themselves never followed) belong
    to ``user``: a trial's run directory or its socket. Nothing to do without a user."""
    if user is None:
        return
    os.chown(path, user.uid, user.gid, follow_symlinks=False)
    if not path.is_dir() or path.is_symlink():
        return
    # By directory descriptors, never by path: a running trial of the same uid may swap a
    # subdirectory for a symlink meanwhile, and no path is resolved again after listing
    # (fwalk opens each directory relative to its parent's descriptor, refusing a symlink).
    for _, dirs, files, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, user.uid, user.gid, dir_fd=dir_fd, follow_symlinks=False)


def _can_traverse(info: os.stat_result, user: TrialUser) -> bool:
    if info.st_uid == user.uid:
        return bool(info.st_mode & 0o100)
    if info.st_gid == user.gid:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def open_path_to(path: Path, user: TrialUser | None) -> list[Path]:
    """Let ``user`` reach ``path``: each directory above it that the user cannot pass
    through, and that this process owns, gets the search bit for others (o+x: pass
    through, never list). Returns the directories changed. A directory in the way that
    belongs to someone else is refused with the fix."""
    if user is None:
        return []
    changed: list[Path] = []
    for directory in path.resolve().parents:
        info = directory.stat()
        if _can_traverse(info, user):
            continue
        if info.st_uid != os.geteuid():
            raise PrivilegeError(
                f"trial user {user.name} cannot reach {path}: {directory} (owner uid "
                f"{info.st_uid}, mode {info.st_mode & 0o7777:04o}) is closed to it; pick a "
                "--work-dir the worker's user owns, or open that directory (chmod o+x)"
            )
        directory.chmod((info.st_mode & 0o7777) | 0o001)
        changed.append(directory)
    return changed


def set_dumpable(on: bool) -> bool:  # noqa: FBT001 (mirrors prctl)
    """``prctl(PR_SET_DUMPABLE, on)``; False where there is no such call (not Linux)."""
    if not _LINUX:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, int(on), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise PrivilegeError(f"prctl(PR_SET_DUMPABLE, {int(on)}) failed: {os.strerror(errno)}")
    return True


def is_dumpable() -> bool | None:
    """Whether this process is dumpable; None away from Linux."""
    if not _LINUX:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def harden_process() -> bool:
    """Make this process non-dumpable: a same-uid process (a trial) can no longer read its
    ``/proc/<pid>/environ``, ``mem`` or ``maps`` or ptrace it, and it leaves no core dump.
    Returns whether it was done (False away from Linux, where there is nothing to do).

    Call it in a process's own entry point (``rung worker``, ``rung searcher``, the fork
    server), never in a library or a test process.
    """
    return set_dumpable(False)


def private_umask(group: int | None = None) -> int:
    """Set the umask for a process that holds state: 077, or 027 with a shared group.
    Returns the previous one."""
    return os.umask(0o027 if group is not None else 0o077)


def prepare_private_dir(path: Path, group: int | None = None) -> Path:
    """Create ``path`` (and its parents) if need be, owned by this process's user and
    readable by no one else (0700); with ``group``, also by that group (2750: new files
    and directories inside inherit the group). An existing directory is tightened the same
    way, unless another user owns it (a directory an administrator made: left as it is).
    Returns ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_uid != os.geteuid():
        return path
    if group is None:
        path.chmod(0o700)
        return path
    try:
        os.chown(path, -1, group)
    except PermissionError:
        raise PrivilegeError(
            f"--dir-group: cannot give {path} to group {group}: this user (uid "
            f"{os.geteuid()}) is not a member of it; add it to the group, or leave out "
            "--dir-group"
        ) from None
    path.chmod(0o2750)
    return path
