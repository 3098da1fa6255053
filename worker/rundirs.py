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
behind: the next worker started on the same work directory removes every session whose
process is gone (each session directory names its process in ``owner``), never one whose
process still runs. ``rung worker --keep-run-dirs`` keeps them all, for debugging.

Removal never stops the worker: a script that took away its own write permission (a
``chmod 000`` directory) is given it back first, symlinks are never followed (the removal
works by directory descriptors), and what still cannot be removed is logged with the
path and the reason.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import stat
from pathlib import Path

import structlog

__all__ = ["RunDirs", "remove_tree"]

log = structlog.get_logger("rung.worker")

# The file of a session directory that names the worker process that owns it.
OWNER = "owner"


def remove_tree(path: Path) -> str | None:
    """Remove ``path`` and everything under it, without following symlinks; None once
    it is gone, else why not. Directories a script closed to its owner are opened (to
    the owner only) and the removal tried again. What another removal took meanwhile is
    passed over, not taken for the end."""
    try:
        shutil.rmtree(path, onerror=_unless_gone)
    except OSError:
        pass
    else:
        return None
    try:
        _open_to_owner(path)
        shutil.rmtree(path, onerror=_unless_gone)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _unless_gone(
    _function: object, _path: str, error: tuple[type[BaseException], BaseException, object]
) -> None:
    if not isinstance(error[1], FileNotFoundError):
        raise error[1]


def _open_to_owner(path: Path) -> None:
    """Give the owner read, write and search rights on every directory under ``path``,
    by directory descriptors (a symlink is never followed, nor changed)."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return
    os.chmod(path, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
    for _, dirs, _, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in dirs:
            child = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(child.st_mode):
                os.chmod(name, stat.S_IMODE(child.st_mode) | stat.S_IRWXU, dir_fd=dir_fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class RunDirs:
    """The run directories of one worker process."""

    def __init__(self, work_dir: Path, session: str, *, keep: bool = False) -> None:
        self.root = work_dir / "runs"
        self.session = self.root / session
        self.keep = keep
        self._count = itertools.count(1)

    def new(self, experiment_id: str, trial_id: int, attempt: int) -> Path:
        """The directory for the next trial process (not made yet)."""
        name = f"trial-{trial_id}-attempt-{attempt}-{next(self._count)}"
        return self.session / experiment_id / name

    def claim(self) -> list[Path]:
        """Make this session's directory, naming this process its owner, and remove the
        sessions of worker processes that are gone; returns those removed."""
        self.session.mkdir(parents=True, exist_ok=True)
        (self.session / OWNER).write_text(f"{os.getpid()}\n")
        if self.keep:
            return []
        removed = []
        for other in sorted(self.root.iterdir()):
            if other == self.session or other.is_symlink() or not other.is_dir():
                continue
            if self._owned_by_live_process(other):
                continue
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
    def _owned_by_live_process(session: Path) -> bool:
        try:
            pid = int((session / OWNER).read_text().strip())
        except (OSError, ValueError):
            return False  # no owner (it died making it), or not a number: nobody's
        return pid != os.getpid() and _alive(pid)

    async def remove(self, path: Path) -> None:
        """Remove one trial process's directory (in a thread), unless kept."""
        if self.keep:
            return
        why = await asyncio.to_thread(remove_tree, path)
        if why is not None:
            log.warning("could not remove a trial's run directory", path=str(path), error=why)

    async def close(self) -> None:
        """Remove this session's directory (its trials have ended), unless kept."""
        if not self.keep:
            await self.remove(self.session)
