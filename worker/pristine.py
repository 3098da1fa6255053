"""Run directories used again: one left exactly as its copy of the context was made
serves the next process of the same experiment and context (issue 18).

Each trial process gets a private copy of its context to run in (:mod:`.rundirs`).
Making it and removing it afterwards cost a directory and a file per file of the context
on every segment, and on ext4 without a journal each new inode scans the inodes removed
in the last seconds (docs/benchmarks.md, "The hot path, sixth round"). So, once a process
and every process of its group have ended, its directory is compared with what it was
when the copy was made (:func:`snapshot`): every entry's path, device and inode, type
and mode, link count, owner, size, modification and change times, its extended
attributes (ACLs included), a file's contents and a symlink's target; of the directory
itself the same, less its change time (the worker's own renames change it). If nothing
differs, it is kept, under the session's ``.kept`` directory, and the next process of
the same experiment and context gets it by a rename instead of a copy. If anything
differs (the script wrote a log, a cache, a ``__pycache__``; touched, chmod'ed or linked
a file), it is removed, as before. A script never finds what another process left in
its working directory: only an unchanged copy is used again.

Limits: at most :data:`KEPT` directories are kept at once (the oldest goes first); a
context of more than :data:`ENTRIES` entries or :data:`BYTES` bytes of files is not
compared, only removed, and one whose processes changed their directory :data:`MISSES`
times in a row is not compared again. A worker whose trials run as another account
(``--trial-user``) keeps none: handing a directory to that account changes every
entry's change time. A kept directory is compared again as it is taken: without
``--trial-user`` any trial of the worker's uid could have written into it meanwhile.
What is not covered: a process that left its process group (``setsid``, ``setpgid``)
and writes into the directory between the last comparison and the next process's start,
and a file's access time (``relatime``: which files an earlier process read).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import stat
from collections import OrderedDict
from pathlib import Path

import structlog

from rung.worker.rundirs import RunDirs, remove_tree

__all__ = [
    "BYTES",
    "ENTRIES",
    "KEPT",
    "MISSES",
    "KeptRuns",
    "Snapshot",
    "available",
    "group_gone",
    "snapshot",
]

log = structlog.get_logger("rung.worker")

# Directories kept at once for later processes.
KEPT = 4
# A key whose processes changed their directory this many times in a row is not
# compared again (nor its copies snapshotted).
MISSES = 3
# A tree with more entries, or more bytes in its files, is not compared: removed.
ENTRIES = 2_000
BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 20

# Per entry: its path, lstat's device, inode, mode, link count, owner, group, size and
# modification and change times (ns), and what else holds: a file's contents, a
# symlink's target, and every extended attribute (ACLs included), hashed.
Entry = tuple[str, int, int, int, int, int, int, int, int, int, bytes]
Snapshot = tuple[Entry, ...]


def _contents(path: str, info: os.stat_result) -> bytes:
    """The hash of a file's contents, read through a descriptor that must be the very
    file ``info`` describes (never a FIFO, a symlink or a file swapped in meanwhile)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            info.st_dev,
            info.st_ino,
        ):
            raise OSError(f"{path} changed as it was read")
        hashed = hashlib.blake2b(digest_size=16)
        while chunk := os.read(fd, _CHUNK):
            hashed.update(chunk)
        return hashed.digest()
    finally:
        os.close(fd)


def _attributes(path: str) -> bytes:
    """Every extended attribute of ``path`` (not followed), names and values, hashed."""
    names = sorted(os.listxattr(path, follow_symlinks=False))
    if not names:
        return b""
    hashed = hashlib.blake2b(digest_size=16)
    for name in names:
        hashed.update(os.fsencode(name) + b"\0")
        hashed.update(os.getxattr(path, name, follow_symlinks=False) + b"\0")
    return hashed.digest()


def _entry(name: str, path: str, info: os.stat_result, held: bytes, *, root: bool = False) -> Entry:
    return (
        name,
        info.st_dev,
        info.st_ino,
        info.st_mode,
        info.st_nlink,
        info.st_uid,
        info.st_gid,
        info.st_size,
        info.st_mtime_ns,
        0 if root else info.st_ctime_ns,  # the worker's renames change the root's
        held + _attributes(path),
    )


def snapshot(root: Path) -> Snapshot | None:
    """What tells whether anything under ``root``, ``root`` included, changed (see the
    module's docstring). None where something cannot be read, or past :data:`ENTRIES`
    entries or :data:`BYTES` bytes of files."""
    try:
        info = root.lstat()
        if not stat.S_ISDIR(info.st_mode):
            return None
        entries: list[Entry] = [_entry(".", str(root), info, b"", root=True)]
        total = 0
        stack = [("", str(root))]
        while stack:
            prefix, directory = stack.pop()
            with os.scandir(directory) as listing:
                found = sorted(listing, key=lambda entry: entry.name)
            if len(entries) + len(found) > ENTRIES:
                return None
            for item in found:
                s = item.stat(follow_symlinks=False)
                name = prefix + item.name
                held = b""
                if stat.S_ISREG(s.st_mode):
                    total += s.st_size
                    if total > BYTES:
                        return None
                    held = _contents(item.path, s)
                elif stat.S_ISLNK(s.st_mode):
                    held = os.fsencode(os.readlink(item.path))
                elif stat.S_ISDIR(s.st_mode):
                    stack.append((name + "/", item.path))
                entries.append(_entry(name, item.path, s, held))
    except (OSError, ValueError):  # (ValueError: a name that cannot be encoded)
        return None
    return tuple(entries)


def available() -> bool:
    """Whether this platform lets :func:`snapshot` see everything it compares (extended
    attributes: Linux); elsewhere no directory is kept."""
    return hasattr(os, "listxattr") and hasattr(os, "getxattr")


def group_gone(pgid: int) -> bool:
    """Whether no process of the process group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # there is one, of another uid
    return False


class KeptRuns:
    """The directories kept for later processes, by (experiment, context hash)."""

    def __init__(self, run_dirs: RunDirs) -> None:
        self.run_dirs = run_dirs
        self.root = run_dirs.session / ".kept"
        self._kept: OrderedDict[Path, tuple[str, Snapshot]] = OrderedDict()
        self._names = itertools.count(1)
        self._closed = False
        # The processes in a row that changed their directory, by key.
        self._misses: dict[str, int] = {}

    def take(self, key: str) -> tuple[Path, Snapshot] | None:
        """A kept directory of ``key`` and its snapshot, no longer kept (the caller
        moves it into place with :meth:`move`), or None."""
        for path, (kept_key, taken) in self._kept.items():
            if kept_key == key:
                del self._kept[path]
                return path, taken
        return None

    @staticmethod
    def move(path: Path, destination: Path, taken: Snapshot) -> bool:
        """Compare a taken directory with ``taken`` again, then rename it to
        ``destination`` (blocking: call it in a thread). While kept, a trial of the
        worker's uid could have changed it (any experiment's, without ``--trial-user``):
        False, with ``path`` removed, where it differs or cannot be moved."""
        if snapshot(path) != taken:
            log.warning("a kept run directory changed while it was kept; copied afresh")
            remove_tree(path)
            return False
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            path.rename(destination)
        except OSError as exc:
            log.warning("could not use a kept run directory again", path=str(path), error=str(exc))
            remove_tree(path)
            return False
        return True

    def unwanted(self, key: str) -> None:
        """Copies of ``key`` are not worth a snapshot (too large to compare)."""
        self._misses[key] = MISSES

    def wanted(self, key: str) -> bool:
        """Whether copies of ``key`` are worth a snapshot: not once :data:`MISSES`
        processes of it in a row changed their directory (a script that writes its logs
        there, say, or, under ``--start-method exec``, one whose imports of the
        context's own modules write ``__pycache__``: rung.worker.bytecode)."""
        return self._misses.get(key, 0) < MISSES

    def close(self) -> None:
        """Keep nothing more: the worker stops, and its session goes with what it kept."""
        self._closed = True
        self._kept.clear()

    async def leave(self, path: Path, key: str, taken: Snapshot) -> None:
        """``path``'s process has ended, and its process group with it: keep it for
        ``key`` if it is as ``taken`` says it was made, else remove it (in a thread)."""

        def unchanged_then_kept() -> Path | None:
            if self._closed or snapshot(path) != taken:
                return None
            kept = self.root / str(next(self._names))
            try:
                self.root.mkdir(exist_ok=True)
                path.rename(kept)
            except OSError:
                return None
            return kept

        done = await asyncio.to_thread(unchanged_then_kept)
        if done is None:
            self._misses[key] = self._misses.get(key, 0) + 1
            await self.run_dirs.remove(path)
            return
        self._misses.pop(key, None)
        kept = done
        if self._closed:
            await self.run_dirs.remove(kept)
            return
        self._kept[kept] = (key, taken)
        while len(self._kept) > KEPT:
            oldest, _ = self._kept.popitem(last=False)
            await self.run_dirs.remove(oldest)
