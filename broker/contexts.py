"""Experiment contexts on disk, crash-safe: the stored archive and its extracted directory.

:mod:`rung.broker.archive` checks and unpacks an archive; this module puts one on disk so
that a crash (``kill -9``, power loss) at any moment leaves either nothing or the whole,
durable thing, never a half that is used afterwards:

* :func:`store_archive` writes ``<digest>.tar.gz`` to a temporary file beside it, fsyncs
  it, renames it into place and fsyncs the directory. A file already there is kept if its
  content hashes to its name (and fsync'd again: older versions never did), and replaced
  if not (torn by a crash).
* :func:`extract_atomically` unpacks into a temporary sibling directory, writes the
  completion marker :data:`COMPLETE_MARKER` inside, fsyncs every file and directory, renames
  it into place and fsyncs the parent. A target directory counts only with the marker in
  it: one without (half extracted by an older version, which extracted in place) is
  moved aside, removed and extracted again. Should the target appear meanwhile, complete
  (a concurrent extraction), it is kept and the temporary directory removed.

Each name is worked on under an exclusive ``flock`` on ``.<name>.lock`` beside it, so
temporary files and directories found while holding it are leftovers of a crashed
process: they are removed, never used.

The fsync helpers are small copies of :mod:`rung.searcher.eventlog.durable`'s: the broker
package sits below the searcher and imports nothing from it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from rung.broker.archive import context_hash, extract, validate

__all__ = [
    "COMPLETE_MARKER",
    "archive_path",
    "ensure_extracted",
    "extract_atomically",
    "fsync_directory",
    "is_complete",
    "read_archive",
    "store_archive",
    "store_context",
]

COMPLETE_MARKER = ".rung-context-complete"
"""The file :func:`extract_atomically` writes last into an extracted context directory."""

_DIGEST = re.compile(r"[0-9a-f]{64}")


def archive_path(contexts_dir: str | Path, digest: str) -> Path:
    """Where the archive with this content hash is stored; refuses anything but a digest."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a context hash (64 lowercase hex digits)")
    return Path(contexts_dir) / f"{digest}.tar.gz"


def is_complete(directory: str | Path) -> bool:
    """Whether ``directory`` was extracted whole and renamed into place (has the marker)."""
    path = Path(directory)
    return path.is_dir() and not path.is_symlink() and (path / COMPLETE_MARKER).is_file()


def store_archive(data: bytes, contexts_dir: str | Path) -> str:
    """Store ``data`` durably as ``<contexts_dir>/<digest>.tar.gz``; return the digest.

    Validate ``data`` first (:func:`rung.broker.archive.validate`); this only stores it.
    Idempotent: a file already there with the right content is kept (and fsync'd), one
    with other content (torn by a crash) is replaced.
    """
    digest = context_hash(data)
    directory = Path(contexts_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = archive_path(directory, digest)
    with _locked(directory, path.name):
        _remove_leftovers(directory, path.name)
        if _hash_of(path) == digest:
            _fsync_file(path)
        else:
            temporary = directory / _temporary_name(path.name)
            try:
                with temporary.open("xb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                temporary.replace(path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        fsync_directory(directory)
    return digest


def read_archive(contexts_dir: str | Path, digest: str) -> bytes | None:
    """The stored archive with this content hash, or None if it is missing, its content
    does not match its name (torn), or ``digest`` is not a content hash at all."""
    try:
        path = archive_path(contexts_dir, digest)
        data = path.read_bytes()
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return data if context_hash(data) == digest else None


def extract_atomically(data: bytes, target: str | Path, limit: int | None = None) -> Path:
    """Extract the archive ``data`` to the directory ``target``, all or nothing; return it.

    The archive is validated as it streams (:func:`rung.broker.archive.validate`: sizes,
    entries, ratio, time, members that leave the directory, links and devices) before
    anything is written, and checked the same way again while it is unpacked. A complete
    ``target`` (with :data:`COMPLETE_MARKER`) is returned as it is, without looking at
    ``data``: the caller names the target by the content hash (a worker, whose trials
    could alter it, does not use it: see :mod:`rung.worker.contexts`).
    """
    destination = Path(target)
    if is_complete(destination):
        return destination
    validate(data, limit)
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent, destination.name):
        if is_complete(destination):
            return destination
        _remove_leftovers(parent, destination.name)
        temporary = parent / _temporary_name(destination.name)
        temporary.mkdir()
        try:
            _unpack(data, temporary, limit)
            marker = temporary / COMPLETE_MARKER
            marker.write_bytes(b"")
            _fsync_tree(temporary)
            _install(temporary, destination)
        except BaseException:
            _remove(temporary)
            raise
        fsync_directory(parent)
    return destination


def store_context(data: bytes, contexts_dir: str | Path) -> tuple[str, Path]:
    """:func:`store_archive`, then :func:`extract_atomically` to ``<contexts_dir>/<digest>``:
    ``(digest, directory)``. ``data`` must have been validated (it is again on extraction)."""
    digest = store_archive(data, contexts_dir)
    return digest, extract_atomically(data, Path(contexts_dir) / digest)


def ensure_extracted(contexts_dir: str | Path, digest: str) -> Path | None:
    """``<contexts_dir>/<digest>``, extracted again from the stored archive unless complete;
    None when the archive is missing or torn (see :func:`read_archive`)."""
    directory = Path(contexts_dir) / digest
    if _DIGEST.fullmatch(digest) and is_complete(directory):
        return directory
    data = read_archive(contexts_dir, digest)
    if data is None:
        return None
    return extract_atomically(data, directory)


def fsync_directory(directory: str | Path) -> None:
    """Make the entries of ``directory`` (creations, renames, removals) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unpack(data: bytes, directory: Path, limit: int | None) -> None:
    extract(data, directory, limit)


def _install(temporary: Path, destination: Path) -> None:
    """Rename the extracted ``temporary`` to ``destination``: an incomplete one there is
    moved aside and removed first; a complete one (a concurrent extraction) wins."""
    if os.path.lexists(destination) and not is_complete(destination):
        aside = destination.parent / f".{destination.name}.stale-{uuid.uuid4().hex[:12]}"
        with contextlib.suppress(FileNotFoundError):
            destination.rename(aside)
        _remove(aside)
    try:
        temporary.rename(destination)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not is_complete(destination):
            raise
        _remove(temporary)


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory from the leaves up, under ``root``."""
    for current, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_file(Path(current, name))
        fsync_directory(current)


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _hash_of(path: Path) -> str | None:
    """The content hash of the file at ``path``; None if there is no such file."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _temporary_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _remove_leftovers(parent: Path, name: str) -> None:
    """Remove what crashed processes left of ``name``: call it holding ``name``'s lock."""
    for prefix in (f".{name}.tmp-", f".{name}.stale-"):
        for leftover in parent.glob(f"{glob.escape(prefix)}*"):
            _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(parent: Path, name: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<parent>/.<name>.lock`` (released on any exit,
    a crash included). The lock file stays: removing it would race with other lockers."""
    descriptor = os.open(parent / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
