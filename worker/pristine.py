"""Run directories used again: one left exactly as its copy of the context was made
serves the next process of the same experiment and context (issue 18).

Each trial process gets a private copy of its context to run in (:mod:`.rundirs`).
Making it and removing it afterwards cost a directory and a file per file of the context
on every segment, and on ext4 without a journal each new inode scans the inodes removed
in the last seconds (docs/benchmarks.md, "The hot path, sixth round"). So, once a process
has ended (reaped, its process group killed), its directory is compared with what it was
when the copy was made: every entry's path, type and mode, owner, size, modification and
change times, inode, and for each file a hash of its contents (:func:`snapshot`). If
nothing differs, it is kept, under the session's ``.kept`` directory, and the next
process of the same experiment and context gets it by a rename instead of a copy. If
anything differs (the script wrote a log, a cache, a ``.pyc``; touched or chmod'ed a
file), it is removed, as before. A script therefore never finds what another process
left in its working directory: only an unchanged copy is used again.

Limits: at most :data:`KEPT` directories are kept at once (the oldest goes first); a
context of more than :data:`ENTRIES` entries or :data:`BYTES` bytes of files is not
compared, only removed. A worker whose trials run as another account
(``--trial-user``) keeps none: handing a directory to that account changes every
entry's change time. What is not covered: a process of the trial that left its process
group (``setsid``) and still writes into the directory after the comparison. That can
only reach the next process of the same experiment, whose code it already is.
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

__all__ = ["BYTES", "ENTRIES", "KEPT", "KeptRuns", "Snapshot", "snapshot"]

log = structlog.get_logger("rung.worker")

# Directories kept at once for later processes.
KEPT = 4
# A tree with more entries, or more bytes in its files, is not compared: removed.
ENTRIES = 2_000
BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 20

# Per entry: path, mode, uid, gid, size, mtime_ns, ctime_ns, inode, and a file's hash.
Entry = tuple[str, int, int, int, int, int, int, int, bytes]
Snapshot = tuple[Entry, ...]


def _digest(path: str) -> bytes:
    hashed = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(_CHUNK):
            hashed.update(chunk)
    return hashed.digest()


def snapshot(root: Path) -> Snapshot | None:
    """What tells whether anything under ``root`` changed (see the module's docstring);
    of ``root`` itself its mode, owner and inode only (its times change as it is
    renamed; what it holds is compared name by name). None where something cannot be
    read, or past :data:`ENTRIES` entries or :data:`BYTES` bytes."""
    try:
        info = root.lstat()
        if not stat.S_ISDIR(info.st_mode):
            return None
        entries: list[Entry] = [
            (".", info.st_mode, info.st_uid, info.st_gid, 0, 0, 0, info.st_ino, b"")
        ]
        total = 0
        stack = [("", str(root))]
        while stack:
            prefix, directory = stack.pop()
            with os.scandir(directory) as listing:
                found = sorted(listing, key=lambda entry: entry.name)
            for entry in found:
                s = entry.stat(follow_symlinks=False)
                name = prefix + entry.name
                digest = b""
                if stat.S_ISREG(s.st_mode):
                    total += s.st_size
                    if total > BYTES:
                        return None
                    digest = _digest(entry.path)
                elif stat.S_ISDIR(s.st_mode):
                    stack.append((name + "/", entry.path))
                entries.append(
                    (
                        name,
                        s.st_mode,
                        s.st_uid,
                        s.st_gid,
                        s.st_size,
                        s.st_mtime_ns,
                        s.st_ctime_ns,
                        s.st_ino,
                        digest,
                    )
                )
                if len(entries) > ENTRIES:
                    return None
    except OSError:
        return None
    return tuple(entries)


class KeptRuns:
    """The directories kept for later processes, by (experiment, context hash)."""

    def __init__(self, run_dirs: RunDirs) -> None:
        self.run_dirs = run_dirs
        self.root = run_dirs.session / ".kept"
        self._kept: OrderedDict[Path, tuple[str, Snapshot]] = OrderedDict()
        self._names = itertools.count(1)
        self._closed = False

    def take(self, key: str) -> tuple[Path, Snapshot] | None:
        """A kept directory of ``key`` and its snapshot, no longer kept (the caller
        moves it into place with :meth:`move`), or None."""
        for path, (kept_key, taken) in self._kept.items():
            if kept_key == key:
                del self._kept[path]
                return path, taken
        return None

    @staticmethod
    def move(path: Path, destination: Path) -> bool:
        """Rename a taken directory to ``destination`` (blocking: call it in a thread);
        False, with ``path`` removed, where that fails."""
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            path.rename(destination)
        except OSError as exc:
            log.warning("could not use a kept run directory again", path=str(path), error=str(exc))
            remove_tree(path)
            return False
        return True

    def close(self) -> None:
        """Keep nothing more: the worker stops, and its session goes with what it kept."""
        self._closed = True
        self._kept.clear()

    async def leave(self, path: Path, key: str, taken: Snapshot) -> None:
        """``path``'s process has ended: keep it for ``key`` if it is as ``taken`` says
        it was made, else remove it (in a thread)."""

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

        kept = await asyncio.to_thread(unchanged_then_kept)
        if kept is None:
            await self.run_dirs.remove(path)
            return
        self._kept[kept] = (key, taken)
        while len(self._kept) > KEPT:
            oldest, _ = self._kept.popitem(last=False)
            await self.run_dirs.remove(oldest)
