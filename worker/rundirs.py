"""Trial run directories: one private copy of the context per trial process, removed
once the process has ended.

Each trial process runs in a directory of its own under the worker's work directory,
``runs/<session>/<experiment id>/trial-<t>-attempt-<a>-<n>``: ``<session>`` is this
worker process's (a restarted worker has a new one), ``<n>`` counts the processes it
started, so a trial's next segment on the same worker never shares the directory that
the previous segment's removal may still be emptying. What a script writes into its
working directory lives as long as its process, as in Determined's containers: results to
keep go into checkpoints, metrics and the trial's logs.

A worker that died (a kill, a crash, a power cut) leaves its session's directories
behind: the next worker started on the same work directory (``--work-dir``, or the
default, ``~/.rung/worker``, shared by a user's workers) removes every session that no
live worker holds. A worker holds its session by an exclusive ``flock`` on the
session's ``owner`` file for as long as it runs (a lock dies with its process: no pid to
be reused, no pid namespace to compare), and makes the session under a dot name that
sweepers pass over, renaming it into place once it holds it. ``rung worker
--keep-run-dirs`` keeps them all, for debugging.

Removal never stops the worker: a script that took away its own write permission (a
``chmod 000`` directory) has it given back first (mode 0700, through a descriptor opened
without following symlinks; not as root, who needs none), symlinks are never followed, a
tree too deep for Python's recursion is left to ``rm -rf --one-file-system``, and what
still cannot be removed is logged with the path and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

import structlog

__all__ = ["RunDirs", "remove_tree"]

log = structlog.get_logger("rung.worker")

# The file of a session directory that its worker holds an exclusive flock on.
OWNER = "owner"
# A session still being made (a dot name) is swept only once it is this old and nobody
# holds it: its worker died between making and naming it.
PENDING_GRACE_S = 600.0
# How long ``rm -rf`` may take over a tree too deep for Python's recursion.
RM_TIMEOUT_S = 300.0


def remove_tree(path: Path) -> str | None:
    """Remove ``path`` and everything under it, without following symlinks; None once
    it is gone, else why not. Never raises. Directories a script closed to its owner are
    opened (0700, to the owner only) and the removal tried again; a tree deeper than
    Python's recursion goes to ``rm -rf``. What another removal took meanwhile is passed
    over, not taken for the end."""
    try:
        shutil.rmtree(path, onerror=_unless_gone)
    except RecursionError:
        return _remove_deep(path)
    except OSError:
        pass
    except Exception as exc:  # noqa: BLE001 (a removal never stops the worker)
        return f"{type(exc).__name__}: {exc}"
    else:
        return None
    try:
        if os.geteuid() != 0:  # root is never refused for a mode: nothing to open
            _open_to_owner(path)
        shutil.rmtree(path, onerror=_unless_gone)
    except FileNotFoundError:
        return None
    except RecursionError:
        return _remove_deep(path)
    except Exception as exc:  # noqa: BLE001 (a removal never stops the worker)
        return f"{type(exc).__name__}: {exc}"
    return None


def _unless_gone(
    _function: object, _path: str, error: tuple[type[BaseException], BaseException, object]
) -> None:
    if not isinstance(error[1], FileNotFoundError):
        raise error[1]


def _remove_deep(path: Path) -> str | None:
    """Remove a tree too deep for Python's recursion with coreutils' ``rm``, which walks
    it without recursing, never follows a symlink and never leaves the file system."""
    try:
        done = subprocess.run(  # noqa: S603 (a fixed program; the path is one argument)
            ["rm", "-rf", "--one-file-system", "--", str(path)],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=RM_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"too deep for Python, and rm -rf failed: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        return f"too deep for Python, and rm -rf exited {done.returncode}: {done.stderr[:300]}"
    return None


def _open_to_owner(path: Path) -> None:
    """Give the owner every right (0700) on each directory under ``path``, ``path``
    included, through a descriptor opened without following symlinks: a directory
    swapped for a symlink meanwhile is passed over, never what it points at."""
    if not hasattr(os, "O_PATH"):
        return
    _chmod_directory(str(path), None)
    for _, dirs, _, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in dirs:
            _chmod_directory(name, dir_fd)


def _chmod_directory(name: str, dir_fd: int | None) -> None:
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
    except OSError:
        return  # a symlink, or gone: nothing of ours to open
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o700)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunDirs:
    """The run directories of one worker process."""

    def __init__(self, work_dir: Path, session: str, *, keep: bool = False) -> None:
        self.root = work_dir / "runs"
        self.session = self.root / session
        self.keep = keep
        self._count = itertools.count(1)
        # The owner file's descriptor, whose flock says this worker holds its session.
        self._owner_fd: int | None = None

    def new(self, experiment_id: str, trial_id: int, attempt: int) -> Path:
        """The directory for the next trial process (not made yet)."""
        name = f"trial-{trial_id}-attempt-{attempt}-{next(self._count)}"
        return self.session / experiment_id / name

    def claim(self) -> list[Path]:
        """Make this session's directory and hold it (an exclusive flock on its owner
        file, for as long as the worker runs), then remove the sessions no live worker
        holds; returns those removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        pending = self.root / f".{self.session.name}"
        pending.mkdir(exist_ok=True)
        fd = os.open(pending / OWNER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            pending.rename(self.session)
        except BaseException:
            os.close(fd)
            raise
        self._owner_fd = fd
        if self.keep:
            return []
        removed = []
        for other in sorted(self.root.iterdir()):
            try:
                if other == self.session or other.is_symlink() or not other.is_dir():
                    continue
                if self._held(other):
                    continue
            except OSError:
                continue  # cannot tell: kept
            why = remove_tree(other)
            if why is None:
                removed.append(other)
            else:
                log.warning(
                    "could not remove the run directories a stopped worker left",
                    path=str(other),
                    error=why,
                )
        return removed

    @staticmethod
    def _held(session: Path) -> bool:
        """Whether a live worker holds ``session`` (or may be making it)."""
        pending = session.name.startswith(".")
        if pending and time.time() - session.lstat().st_mtime < PENDING_GRACE_S:
            return True  # being made, or its maker died only lately
        try:
            fd = os.open(session / OWNER, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False  # a session of an older Rung, or one its maker never held
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # (and with it the lock this took)
        return False

    async def remove(self, path: Path) -> None:
        """Remove one trial process's directory (in a thread), unless kept."""
        if self.keep:
            return
        why = await asyncio.to_thread(remove_tree, path)
        if why is not None:
            log.warning("could not remove a trial's run directory", path=str(path), error=why)

    async def close(self) -> None:
        """Remove this session's directory (its trials have ended), unless kept, and let
        it go."""
        try:
            if not self.keep:
                await self.remove(self.session)
        finally:
            if self._owner_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._owner_fd)
                self._owner_fd = None
